#!/usr/bin/env bash
# Record every system call the real mountd binary makes, for checking the unit's SystemCallFilter=.
#
#   scripts/trace-syscalls.sh [--bin DIR] [--out DIR]
#
# Runs, each under `strace -f` (all threads), against the reference remote on loopback:
#   once-export  `mountd --once` (bootstrap through the export), then `mountd status`
#   once-tree    `mountd --once --no-export` into a fresh mirror (tree pull)
#   fuse         the service with a FUSE mount, sd_notify + watchdog socket, metrics endpoint: the
#                mount is listed, stat'ed, read and statfs'ed, a remote write is synced, SIGHUP, SIGTERM
#   fuse-stale   the service killed with SIGKILL (dead mount left behind), then started again on the
#                same mountpoint (stale-mount detection, umount2, remount), then SIGTERM while a file
#                is held open (EBUSY, lazy detach, abort through fusectl when it is mounted)
#   plain        the service with --no-fuse
# and prints the union of the syscall names (one per line) to stdout; per-run lists go to --out
# (default target/syscalls). Needs root, strace, curl, python3, /dev/fuse, and `cargo build --workspace
# --bins` (debug binaries by default; --bin target/release for release ones).
#
# Compare against the unit with systemd-analyze (the result is recorded in systemd/mountd@.service):
#   scripts/trace-syscalls.sh > /tmp/used.txt
#   systemd-analyze syscall-filter @system-service   # the groups the filter allows
set -euo pipefail
# shellcheck source=lib/remote.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/remote.sh"

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
BIN=$ROOT/target/debug
OUT=$ROOT/target/syscalls
while (($#)); do
    case $1 in
    --bin) BIN=$(realpath "$2") && shift 2 ;;
    --out) OUT=$2 && shift 2 ;;
    -h | --help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//' && exit 0 ;;
    *) echo "trace-syscalls.sh: unknown argument $1" >&2 && exit 2 ;;
    esac
done
MOUNTD=$BIN/mountd REMOTE=$BIN/mountd-remote
for t in strace curl python3; do
    command -v $t >/dev/null || { echo "trace-syscalls.sh: $t is required" >&2 && exit 1; }
done
[[ -x $MOUNTD && -x $REMOTE ]] || { echo "trace-syscalls.sh: build first (cargo build --workspace --bins)" >&2 && exit 1; }
[[ $(id -u) -eq 0 ]] || { echo "trace-syscalls.sh: run as root (FUSE mount with mount(2))" >&2 && exit 1; }
mkdir -p "$OUT"
OUT=$(realpath "$OUT")

WORK=$(mktemp -d /tmp/mountd-trace.XXXXXX)
remote_pid='' notify_pid='' svc_pid=''
cleanup() {
    set +e
    [[ -n $svc_pid ]] && kill -KILL "$svc_pid" 2>/dev/null
    [[ -n $remote_pid ]] && kill "$remote_pid" 2>/dev/null
    [[ -n $notify_pid ]] && kill "$notify_pid" 2>/dev/null
    umount -l "$WORK/mnt" 2>/dev/null
    wait 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

# Sample tree: nested dirs, a binary file, an empty file, a unicode name, some small files, one 5 MiB.
S=$WORK/sample
mkdir -p "$S/a/b/c" "$S/bin" "$S/ü ñ"
printf 'hello\n' >"$S/README.md"
printf 'deep\n' >"$S/a/b/c/deep.txt"
: >"$S/empty.txt"
head -c 65536 /dev/urandom >"$S/bin/random.bin"
head -c 5242880 /dev/urandom >"$S/bin/big.bin"
printf 'x\n' >"$S/ü ñ/é.txt"
for n in $(seq 1 50); do printf 'note %s\n' "$n" >"$S/a/note-$n.md"; done

printf 'trace-token\n' >"$WORK/token"
"$REMOTE" --listen 127.0.0.1:0 --root "$S" --token-file "$WORK/token" >"$WORK/remote.out" 2>"$WORK/remote.log" &
remote_pid=$!
wait_remote "$remote_pid" "$WORK/remote.out" "$WORK/remote.log" 10

# sd_notify receiver (the unit has Type=notify, WatchdogSec=): prints every datagram it gets.
python3 - "$WORK/notify.sock" >"$WORK/notify.log" 2>&1 <<'EOF' &
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
while True:
    print(s.recv(4096).decode(errors="replace").replace("\n", " "), flush=True)
EOF
notify_pid=$!

trace() { # trace NAME CMD...: run CMD under strace -f, keep the syscall names
    local name=$1
    shift
    strace -f -qq -o "$WORK/$name.strace" "$@" >&2
}
names() { # syscall names in an strace -f output (resumed lines and signals skipped)
    sed -E -n 's/^[0-9]+ +([a-z_0-9]+)\(.*/\1/p' "$1" | sort -u
}
put_file() { # put_file PATH CONTENT
    curl -sS --fail -o /dev/null -X PUT "$URL/v1/workspaces/trace/fs/file?path=$1" \
        -H "Authorization: Bearer trace-token" -H "X-Correlation-Id: trace_$RANDOM" -H 'If-Match: *' -H 'Content-Type: application/json' \
        -d "{\"contentType\":\"text/plain\",\"content\":\"$2\"}"
}
wait_for() { # wait_for SECONDS TEST...
    local s=$1
    shift
    for _ in $(seq $((s * 10))); do
        "$@" && return 0
        sleep 0.1
    done
    echo "trace-syscalls.sh: timed out waiting for: $*" >&2
    return 1
}
mounted() { grep -qs " $WORK/mnt fuse" /proc/mounts; }
exercise_view() { # exercise_view DIR: what a reader does with the view
    ls -laR "$1" >/dev/null
    find "$1" -type f -exec cat {} + >/dev/null
    stat "$1/README.md" >/dev/null
    df "$1" >/dev/null
    python3 -c 'import os,sys; f=open(sys.argv[1],"rb"); os.lseek(f.fileno(),4096,0); f.read(100)' "$1/bin/big.bin"
}
# Start the service in the background under strace; SVC_ARGS are its extra arguments.
start_service() { # start_service NAME ARGS...
    local name=$1 ready_before
    shift
    ready_before=$(grep -c 'READY=1' "$WORK/notify.log" || true)
    NOTIFY_SOCKET=$WORK/notify.sock WATCHDOG_USEC=2000000 \
        strace -f -qq -o "$WORK/$name.strace" "$MOUNTD" "${COMMON[@]}" --interval 1s "$@" \
        >"$WORK/$name.log" 2>&1 &
    svc_pid=$!
    # Ready = one more READY=1 on the notify socket (a stat of the mountpoint can be answered from the
    # kernel's cache of a dead mount).
    wait_for 60 ready_count_above "$ready_before"
}
ready_count_above() { (($(grep -c 'READY=1' "$WORK/notify.log") > $1)); }
stop_service() { # SIGTERM to mountd (the tracee, child of strace), wait for strace
    local child
    child=$(pgrep -P "$svc_pid" -x mountd || true)
    [[ -n $child ]] && kill -TERM "$child"
    wait "$svc_pid" || true
    svc_pid=''
}
signal_mountd() { kill "-$1" "$(pgrep -P "$svc_pid" -x mountd)"; }

# A free loopback port for the metrics endpoint (mountd does not log the port it bound).
METRICS=127.0.0.1:$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
COMMON=(--base-url "$URL" --workspace trace --token-file "$WORK/token" --local-dir "$WORK/mirror"
    --log-format json --metrics-addr "$METRICS")

echo "== once-export" >&2
trace once-export "$MOUNTD" --once "${COMMON[@]}" --state-file "$WORK/state.json" --progress never
trace status "$MOUNTD" status --local-dir "$WORK/mirror"
trace status-json "$MOUNTD" status --local-dir "$WORK/mirror" --json >/dev/null

echo "== once-tree" >&2
trace once-tree "$MOUNTD" --once --no-export --base-url "$URL" --workspace trace --token-file "$WORK/token" \
    --local-dir "$WORK/mirror2" --progress never

echo "== fuse" >&2
mkdir -p "$WORK/mnt"
start_service fuse --mountpoint "$WORK/mnt" --allow-other
mounted
exercise_view "$WORK/mnt"
put_file /new.txt 'new'
wait_for 30 test -f "$WORK/mnt/new.txt"
cat "$WORK/mnt/new.txt" >/dev/null
signal_mountd HUP
sleep 1.5
curl -sS --fail -o /dev/null "http://$METRICS/metrics"
sleep 2.5 # a watchdog ping or two
stop_service
! mounted || { echo "trace-syscalls.sh: still mounted after SIGTERM" >&2 && exit 1; }

echo "== fuse-stale" >&2
start_service fuse-killed --mountpoint "$WORK/mnt"
signal_mountd KILL
wait "$svc_pid" || true
svc_pid=''
mounted || { echo "trace-syscalls.sh: no dead mount left behind by SIGKILL" >&2 && exit 1; }
start_service fuse-stale --mountpoint "$WORK/mnt"
exercise_view "$WORK/mnt"
# A reader keeps a file open across SIGTERM: umount2 gets EBUSY, mountd detaches lazily and then
# aborts the connection through fusectl (/sys/fs/fuse/connections/<dev>/abort) when it is mounted.
sleep 60 <"$WORK/mnt/README.md" &
holder=$!
stop_service
kill "$holder" 2>/dev/null || true
wait "$holder" 2>/dev/null || true

echo "== plain" >&2
start_service plain --no-fuse
put_file /plain.txt 'plain'
wait_for 30 test -f "$WORK/mirror/plain.txt"
exercise_view "$WORK/mirror"
signal_mountd HUP
sleep 3
stop_service

for f in "$WORK"/*.strace; do
    n=$(basename "$f" .strace)
    names "$f" >"$OUT/$n.txt"
    cp "$f" "$OUT/$n.strace"
done
cp "$WORK/notify.log" "$OUT/notify.log"
cat "$OUT"/*.txt | sort -u | tee "$OUT/all.txt"
echo "trace-syscalls.sh: $(wc -l <"$OUT/all.txt") distinct syscalls; per run in $OUT; notify messages: $(wc -l <"$OUT/notify.log")" >&2
