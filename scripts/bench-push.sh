#!/usr/bin/env bash
# Two-way sync benchmarks of the release build against the reference remote on loopback: the service
# keeps a plain-directory mirror (--no-fuse, --sync-mode mirror) and pushes local changes.
#   push.save          an editor's save (temp file renamed over the target) until the server answers
#                      the new bytes (latency-probe --push): p50, p90, max over SAMPLES saves
#   push.burst_1000    1,000 new 1 KiB files written at once until the server counts them all
#   push.burst_10000, push.burst_20000   the same with 10,000 and 20,000 files, with the service's
#                      peak RSS after each (flat memory: it must not grow with the number of files)
#   push.burst_N.requests          write requests (PUT, bulk, DELETE) the server saw for the burst
# Targets (issue 16): save p50 <= 25 ms (relayfile-mount: 13-15 ms), 1,000 files <= 0.8 s
# (relayfile-mount: 1.5-1.7 s), 10,000 files in flat memory, about one request per batch.
# Results go to target/bench/results.jsonl (appended) as {"name":..., "value":..., "unit":...}.
#
#   scripts/bench-push.sh [--samples N] [--no-build]
set -euo pipefail
# shellcheck source=lib/remote.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/remote.sh"
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

samples=40 build=1
while (($#)); do
    case $1 in
    --samples) samples=$2; shift 2 ;;
    --no-build) build=0; shift ;;
    -h | --help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-push.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
done
say() { printf 'bench-push: %s\n' "$*" >&2; }
if [[ $build == 1 ]]; then
    say "building the release binaries"
    cargo build --workspace --release --bins --quiet
fi
MOUNTD=$ROOT/target/release/mountd
REMOTE=$ROOT/target/release/mountd-remote
PROBE=$ROOT/target/release/latency-probe
OUT_DIR=$ROOT/target/bench
RESULTS=$OUT_DIR/results.jsonl
mkdir -p "$OUT_DIR"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/mountd-bench-push.XXXXXX")
DIR=$WORK/mirror TOKEN=$WORK/token
remote_pid='' service_pid=''
cleanup() {
    set +e
    for p in $service_pid $remote_pid; do
        kill -TERM "$p" 2>/dev/null && wait "$p" 2>/dev/null
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
emit() { # emit NAME VALUE UNIT
    printf '{"name":"%s","value":%s,"unit":"%s"}\n' "$1" "$2" "$3" >>"$RESULTS"
    printf '  %-40s %12s %s\n' "$1" "$2" "$3"
}
echo bench-token >"$TOKEN"

"$REMOTE" --listen 127.0.0.1:0 --token-file "$TOKEN" --generate 1000 --dirs 10 \
    >"$WORK/remote.out" 2>"$WORK/remote.log" &
remote_pid=$!
wait_remote "$remote_pid" "$WORK/remote.out" "$WORK/remote.log" 30
common=(--base-url "$URL" --workspace bench --token-file "$TOKEN" --local-dir "$DIR" --progress never -q)
say "bootstrapping the mirror"
"$MOUNTD" --once "${common[@]}" >/dev/null
"$MOUNTD" --no-fuse "${common[@]}" >"$WORK/service.log" 2>&1 &
service_pid=$!
# Ready once the first pass ran: the service logs nothing at -q, so wait for its state DB's WAL to
# settle by asking the server for one round trip through the mirror (a probe save).
mkdir -p "$DIR/d001"
probe=(--url "$URL" --workspace bench --token-file "$TOKEN" --root "$DIR" --push)
"$PROBE" "${probe[@]}" --samples 1 --pause-ms 0 --label warmup >/dev/null

counts() { curl -s "$URL/_control/counts"; }
writes() { counts | python3 -c 'import json,sys; c=json.load(sys.stdin); print(c["put"]+c["bulk"]+c["delete"])'; }
rss_hwm() { awk '/VmHWM/ {print int($2/1024)}' "/proc/$service_pid/status"; }

say "editor saves: $samples samples"
"$PROBE" "${probe[@]}" --samples "$samples" --pause-ms 100 --label save >"$WORK/save.txt"
read -r p50 p90 pmax < <(python3 - "$WORK/save.txt" <<'PY'
import sys
v = sorted(float(l) for l in open(sys.argv[1]) if l.strip() and l.strip() != "timeout")
n = len(v)
q = lambda p: v[min(n - 1, int(p * n))]
print(f"{q(0.5):.1f} {q(0.9):.1f} {v[-1]:.1f}")
PY
)
timeouts=$(grep -c timeout "$WORK/save.txt" || true)
echo "push benchmarks (release build, loopback):"
emit push.save.p50 "$p50" ms
emit push.save.p90 "$p90" ms
emit push.save.max "$pmax" ms
emit push.save.timeouts "$timeouts" count

for n in 1000 10000 20000; do
    say "burst of $n new files"
    before=$(writes)
    # Polled every 10 ms: a listing of the burst directory is not free for the server.
    t=$("$PROBE" "${probe[@]}" --samples 1 --pause-ms 0 --burst "$n" --label "b$n" --poll-us 10000 --timeout-s 120)
    after=$(writes)
    emit "push.burst_$n" "$(python3 -c "print(round($t / 1000, 3))")" s
    emit "push.burst_$n.requests" "$((after - before))" count
    emit "push.burst_$n.service_peak_rss" "$(rss_hwm)" MiB
done
