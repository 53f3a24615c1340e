#!/usr/bin/env bash
# Memory benchmarks of the release build (`scripts/bench.sh --memory`): the peak RSS (GNU time, max
# resident set) of `mountd --once` into an empty mirror against `mountd-remote` on loopback, per case:
#   tree_256m, tree_1g        one large file (256 MiB, 1 GiB) via the tree pull (--no-export)
#   export_256m, export_1g    the same via the export
#   tree_16x256m              sixteen 256 MiB files fetched concurrently (--read-concurrency 16)
#   export_10k, export_100k   10,000 and 100,000 files of 1 KiB via the export
#   tree_10k, tree_100k       the same via the tree pull
# and (unless --no-slow) a 1 GiB file over a 5 MB/s link (the reference remote's
# file_rate_bytes_per_sec / export_rate_bytes_per_sec faults):
#   slow_tree_idle10          --no-export --bootstrap-idle-timeout 10s
#   slow_default              default settings (export first: its 1 GiB entry misses the export
#                             sub-deadline, the bootstrap falls through to the tree pull)
#   slow_export_idle10        the export first, --bootstrap-idle-timeout 10s
# Each slow case also reports the longest time the state file's mtime stood still (sampled every
# 0.2 s), how many times the file was requested and whether the export fell through.
# The mirror is checked (file count, and the big files' SHA-256 against the remote's tree listing).
# Results are appended as JSON lines to target/bench/results.jsonl and printed as a table.
#
#   scripts/bench-memory.sh [--no-build] [--no-slow] [--only CASE[,CASE...]] [--big-base64]
#     --big-base64: the large files' content is random bytes stored as base64 (default: text lines)
set -euo pipefail
# shellcheck source=lib/remote.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/remote.sh"

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

build=1 slow=1 only='' big_b64=()
while (($#)); do
    case $1 in
    --no-build) build=0; shift ;;
    --no-slow) slow=0; shift ;;
    --only) only=$2; shift 2 ;;
    --big-base64) big_b64=(--big-base64); shift ;;
    -h | --help)
        sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "bench-memory.sh: unknown argument $1 (try --help)" >&2
        exit 2
        ;;
    esac
done
say() { echo "bench-memory.sh: $*" >&2; }
want() { [[ -z $only || ",$only," == *",$1,"* ]]; }

[[ -x /usr/bin/time ]] || {
    say "/usr/bin/time (GNU time) is needed for peak RSS: apt-get install time"
    exit 1
}
command -v curl >/dev/null || {
    say "curl is needed"
    exit 1
}
if [[ $build == 1 ]]; then
    say "building the release binaries"
    cargo build --workspace --release --bins --quiet
fi
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
MOUNTD=$TARGET/release/mountd
REMOTE=$TARGET/release/mountd-remote
OUT_DIR=$ROOT/target/bench
RESULTS=$OUT_DIR/results.jsonl
mkdir -p "$OUT_DIR"
touch "$RESULTS"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/mountd-bench-mem.XXXXXX")
remote_pid='' watch_pid=''
stop_remote() {
    if [[ -n $remote_pid ]]; then
        kill -TERM "$remote_pid" 2>/dev/null && wait "$remote_pid" 2>/dev/null
        remote_pid=''
    fi
}
cleanup() {
    local rc=$?
    set +e
    [[ -z $watch_pid ]] || kill "$watch_pid" 2>/dev/null
    stop_remote
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

TOKEN=$WORK/token
printf 'bench-token\n' >"$TOKEN"
URL=''

# start_remote ARGS...: a fresh mountd-remote with these seeding arguments.
start_remote() {
    stop_remote
    say "starting mountd-remote $*"
    "$REMOTE" --listen 127.0.0.1:0 --token-file "$TOKEN" "$@" >"$WORK/remote.out" 2>"$WORK/remote.log" &
    remote_pid=$!
    wait_remote "$remote_pid" "$WORK/remote.out" "$WORK/remote.log" 120
}
faults() { curl -sS -X PUT -H 'content-type: application/json' -d "$1" "$URL/_control/faults" >/dev/null; }
count() { # count ROUTE
    local n
    n=$(curl -sS "$URL/_control/counts" | grep -o "\"$1\":[0-9]*" | head -n1 | cut -d: -f2 || true)
    echo "${n:-0}"
}
reset_counts() { curl -sS -X POST "$URL/_control/reset-counts" >/dev/null; }

rows=()
emit() { printf '{"name":"%s","value":%s,"unit":"%s"}\n' "$1" "$2" "$3" >>"$RESULTS"; }

# verify MIRROR N: N files, and every file of the listing under /big has its listed hash.
verify() {
    local mirror=$1 n=$2 got
    got=$(find "$mirror" -path "$mirror/.mountd" -prune -o -type f -print | wc -l)
    [[ $got -eq $n ]] || {
        say "$mirror holds $got files, expected $n"
        exit 1
    }
    curl -sS -H "authorization: Bearer bench-token" -H 'x-correlation-id: bench' \
        "$URL/v1/workspaces/bench/fs/tree?path=/big&depth=1" |
        { grep -o '"path":"[^"]*","type":"file","revision":"[^"]*","contentHash":"[0-9a-f]*"' || true; } |
        sed 's/"path":"\([^"]*\)".*"contentHash":"\([0-9a-f]*\)"/\2  \1/' |
        while read -r hash path; do
            [[ $(sha256sum "$mirror$path" | cut -d' ' -f1) == "$hash" ]] || {
                say "$mirror$path: wrong bytes"
                exit 1
            }
        done
}

# watch_state FILE OUT: every 0.2 s, the state file's mtime (ns) into OUT, until killed.
watch_state() {
    while :; do
        stat -c %.9Y "$1" 2>/dev/null >>"$2" || true
        sleep 0.2
    done
}

# measure NAME N_FILES [ARGS...]: one `mountd --once` into a new mirror under GNU time.
measure() {
    local name=$1 n=$2
    shift 2
    local mirror=$WORK/m-$name state=$WORK/$name.state.json rc=0
    reset_counts
    : >"$WORK/$name.mtimes"
    watch_state "$state" "$WORK/$name.mtimes" &
    watch_pid=$!
    /usr/bin/time -f '%e %M' -o "$WORK/$name.time" \
        "$MOUNTD" --once --base-url "$URL" --workspace bench --token-file "$TOKEN" \
        --local-dir "$mirror" --state-file "$state" --progress never "$@" \
        >"$WORK/$name.out" 2>"$WORK/$name.log" || rc=$?
    kill "$watch_pid" 2>/dev/null && wait "$watch_pid" 2>/dev/null || true
    watch_pid=''
    if [[ $rc -ne 0 ]]; then
        say "$name: mountd exited $rc:"
        tail -n 8 "$WORK/$name.log" >&2
        exit 1
    fi
    verify "$mirror" "$n"
    local wall kb mib gap fell n_file
    read -r wall kb <"$WORK/$name.time"
    mib=$(awk -v k="$kb" 'BEGIN { printf "%.1f", k / 1024 }')
    # Longest stretch without an mtime change, between the first and the last change seen.
    gap=$(awk 'NR > 1 && $1 != prev { if (last != "" && $1 - last > g) g = $1 - last; last = $1 }
               { prev = $1 } NR == 1 { last = $1 } END { printf "%.1f", g }' "$WORK/$name.mtimes")
    fell=no
    grep -q 'falling through' "$WORK/$name.log" && fell=yes
    n_file=$(count file)
    emit "memory.$name.peak_rss" "$mib" MiB
    emit "memory.$name.wall_time" "$wall" s
    emit "memory.$name.requests.file" "$n_file" count
    emit "memory.$name.state_mtime_max_gap" "$gap" s
    rows+=("$(printf '%-20s %9s %9s %6s %8s %6s' "$name" "$mib" "$wall" "$n_file" "$gap" "$fell")")
    rm -rf "$mirror"
}

if want tree_256m || want export_256m; then
    start_remote --big-file /big/large.dat:256M "${big_b64[@]}"
    want tree_256m && measure tree_256m 1 --no-export
    want export_256m && measure export_256m 1
fi
if want tree_1g || want export_1g; then
    start_remote --big-file /big/large.dat:1G "${big_b64[@]}"
    want tree_1g && measure tree_1g 1 --no-export
    want export_1g && measure export_1g 1
fi
if want tree_16x256m; then
    start_remote --generate-big 16:256M "${big_b64[@]}"
    measure tree_16x256m 16 --no-export --read-concurrency 16
fi
for n in 10000 100000; do
    k=$((n / 1000))k
    if want "export_$k" || want "tree_$k"; then
        start_remote --generate "$n" --file-size 1024 --dirs 100
        want "export_$k" && measure "export_$k" "$n"
        want "tree_$k" && measure "tree_$k" "$n" --no-export
    fi
done
if [[ $slow == 1 ]] && { want slow_tree_idle10 || want slow_default || want slow_export_idle10; }; then
    start_remote --big-file /big/large.dat:1G "${big_b64[@]}"
    faults '{"file_rate_bytes_per_sec":5000000,"export_rate_bytes_per_sec":5000000}'
    want slow_tree_idle10 && measure slow_tree_idle10 1 --no-export --bootstrap-idle-timeout 10s
    want slow_default && measure slow_default 1
    want slow_export_idle10 && measure slow_export_idle10 1 --bootstrap-idle-timeout 10s
fi
stop_remote

printf '\nmountd memory benchmarks: release build, loopback (%s, %s cores), big files as %s\n\n' \
    "$(uname -r)" "$(nproc)" "$([[ ${#big_b64[@]} -gt 0 ]] && echo base64 || echo text)"
printf '%-20s %9s %9s %6s %8s %6s\n' run peak_MiB wall_s files mtime_s fellthru
printf '%s\n' "${rows[@]}"
printf '\npeak_MiB: max RSS of mountd (GNU time); files: /fs/file requests; mtime_s: longest time the\n'
printf 'state file mtime stood still during the run; fellthru: the export fell through to the tree pull\n'
