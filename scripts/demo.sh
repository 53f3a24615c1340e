#!/usr/bin/env bash
# A five-minute tour of mountd against the in-repo reference remote, all on loopback:
#   1. build (debug by default; --release for an optimized build),
#   2. make a sample tree (nested dirs, a binary file, an empty file, a unicode name, ~200 small files),
#   3. serve it with `mountd-remote`,
#   4. `mountd --once` into a mirror directory, then `mountd status`; a local edit pushed by the next
#      `mountd --once` (two-way sync),
#   5. run the mount service: as root with /dev/fuse, a writable FUSE mount (ls, find, cat, a file
#      saved through the mount and pushed to the server); else --no-fuse (the mirror directory itself
#      is kept in sync),
#   6. write a file on the remote and watch it appear (the service polls every 2 s).
#
#   scripts/demo.sh [--release] [--keep] [--no-fuse]
#     --keep: leave the temp dir for a look afterwards; --no-fuse: skip FUSE even where it is available
set -euo pipefail
# shellcheck source=lib/remote.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/remote.sh"

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

profile=debug keep=0 use_fuse=1
for a in "$@"; do
    case $a in
    --release) profile=release ;;
    --keep) keep=1 ;;
    --no-fuse) use_fuse=0 ;;
    -h | --help)
        sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "demo.sh: unknown argument $a (try --help)" >&2
        exit 2
        ;;
    esac
done

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() {
    printf '$ %s\n' "$*"
    "$@"
}

say "building ($profile)"
if [[ $profile == release ]]; then
    cargo build --workspace --release --bins
else
    cargo build --workspace --bins
fi
BIN=$ROOT/target/$profile
MOUNTD=$BIN/mountd
REMOTE=$BIN/mountd-remote

WORK=$(mktemp -d "${TMPDIR:-/tmp}/mountd-demo.XXXXXX")
SAMPLE=$WORK/sample MIRROR=$WORK/mirror MNT=$WORK/mnt
TOKEN=$WORK/token STATE=$WORK/initial-sync.state.json
remote_pid='' service_pid=''

is_mounted() { mountpoint -q "$MNT" 2>/dev/null || grep -qs " $MNT fuse" /proc/mounts; }

stop_pid() { # stop_pid PID NAME: SIGTERM, wait up to 10 s, then SIGKILL
    local pid=$1 name=$2
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "demo.sh: $name (pid $pid) did not stop within 10s of SIGTERM; killing it" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    set +e
    stop_pid "$service_pid" "mountd service"
    stop_pid "$remote_pid" "mountd-remote"
    if is_mounted; then
        echo "demo.sh: $MNT is still mounted; detaching it (umount -l)" >&2
        umount -l "$MNT" 2>/dev/null || fusermount3 -uz "$MNT" 2>/dev/null
    fi
    if [[ $keep == 1 ]]; then
        echo "demo.sh: kept $WORK" >&2
    elif is_mounted; then
        echo "demo.sh: not removing $WORK: $MNT is still mounted" >&2
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------------------
say "sample tree in $SAMPLE"
mkdir -p "$SAMPLE/a/b/c/d" "$SAMPLE/images" "$SAMPLE/naïve café"
printf 'Hello from the relayfile workspace "demo".\n' >"$SAMPLE/README.md"
printf 'deep inside\n' >"$SAMPLE/a/b/c/d/deep.txt"
printf 'level one\n' >"$SAMPLE/a/one.txt"
: >"$SAMPLE/empty.txt"
# Not valid UTF-8: the remote stores it base64-encoded, mountd must decode and verify it.
printf '\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe\x00\x01binary\x00tail' >"$SAMPLE/images/logo.png"
head -c 65536 /dev/urandom >"$SAMPLE/images/random.bin"
printf 'unicode names survive\n' >"$SAMPLE/naïve café/résumé 日本語.txt"
for s in $(seq -w 1 10); do
    mkdir -p "$SAMPLE/notes/section-$s"
    for n in $(seq -w 1 20); do
        printf '# Note %s.%s\n\nSome text for note %s of section %s.\n' "$s" "$n" "$n" "$s" \
            >"$SAMPLE/notes/section-$s/note-$n.md"
    done
done
echo "$(find "$SAMPLE" -type f | wc -l) files, $(find "$SAMPLE" -mindepth 1 -type d | wc -l) directories, $(du -sh "$SAMPLE" | cut -f1)"

# ---------------------------------------------------------------------------------------------------
say "starting the reference remote"
printf 'demo-token-%s\n' "$RANDOM$RANDOM" >"$TOKEN"
chmod 600 "$TOKEN"
AUTH="Authorization: Bearer $(cat "$TOKEN")"
"$REMOTE" --listen 127.0.0.1:0 --root "$SAMPLE" --token-file "$TOKEN" \
    >"$WORK/remote.out" 2>"$WORK/remote.log" &
remote_pid=$!
wait_remote "$remote_pid" "$WORK/remote.out" "$WORK/remote.log" 10
echo "mountd-remote (pid $remote_pid) listening on $URL"

COMMON=(--base-url "$URL" --workspace demo --token-file "$TOKEN" --local-dir "$MIRROR")

# ---------------------------------------------------------------------------------------------------
say "initial sync: mountd --once"
set +e
run "$MOUNTD" --once "${COMMON[@]}" --state-file "$STATE" --mount-kind initial-sync
once_rc=$?
set -e
echo "exit code: $once_rc"
if [[ $once_rc -ne 0 ]]; then
    echo "demo.sh: the initial sync failed; remote log:" >&2
    tail -n 20 "$WORK/remote.log" >&2
    exit 1
fi

say "the state file an outer wrapper watches ($STATE)"
cat "$STATE"

say "mountd status"
run "$MOUNTD" status --local-dir "$MIRROR" || true

say "the mirror matches the sample"
if diff -r --exclude=.mountd "$SAMPLE" "$MIRROR"; then
    echo "identical: $(find "$MIRROR" -path "$MIRROR/.mountd" -prune -o -type f -print | wc -l) files"
else
    echo "demo.sh: the mirror differs from the sample" >&2
    exit 1
fi

say "two-way sync: a local edit, pushed by the next mountd --once"
printf '$ echo "edited locally" > %s/hello-from-local.txt\n' "$MIRROR"
echo "edited locally" >"$MIRROR/hello-from-local.txt"
run "$MOUNTD" --once "${COMMON[@]}" || {
    echo "demo.sh: the push failed" >&2
    exit 1
}
printf '$ curl %s/v1/workspaces/demo/fs/file?path=/hello-from-local.txt\n' "$URL"
curl -sS --fail-with-body "$URL/v1/workspaces/demo/fs/file?path=/hello-from-local.txt" \
    -H "$AUTH" -H 'X-Correlation-Id: demo_get_1'
echo

# ---------------------------------------------------------------------------------------------------
put_remote_file() {
    say "writing /hello-from-remote.txt on the remote"
    printf '$ curl -X PUT %s/v1/workspaces/demo/fs/file?path=/hello-from-remote.txt ...\n' "$URL"
    curl -sS --fail-with-body -X PUT "$URL/v1/workspaces/demo/fs/file?path=/hello-from-remote.txt" \
        -H "$AUTH" -H 'X-Correlation-Id: demo_put_1' -H 'If-Match: *' \
        -H 'Content-Type: application/json' \
        -d '{"contentType":"text/plain","content":"hi\n"}'
    echo
}

wait_for_file() { # wait_for_file PATH SECONDS
    for _ in $(seq $(($2 * 10))); do
        [[ -f $1 ]] && return 0
        service_alive || return 1
        sleep 0.1
    done
    return 1
}

service_alive() { [[ -n $service_pid ]] && kill -0 "$service_pid" 2>/dev/null; }

failed=0
fail() {
    echo "demo.sh: $*" >&2
    failed=1
}

service_died() {
    local rc=0
    wait "$service_pid" 2>/dev/null || rc=$?
    service_pid=
    fail "the mount service exited with code $rc:"
    tail -n 5 "$WORK/service.log" >&2
}

if [[ $use_fuse == 1 && $(id -u) -eq 0 && -c /dev/fuse ]]; then
    say "mount service with FUSE at $MNT (polling the events feed every 2s)"
    mkdir -p "$MNT"
    printf '$ %s\n' "$MOUNTD ${COMMON[*]} --mountpoint $MNT --interval 2s &"
    "$MOUNTD" "${COMMON[@]}" --mountpoint "$MNT" --interval 2s 2>"$WORK/service.log" &
    service_pid=$!
    mounted=0
    for _ in $(seq 300); do # 30 s
        if is_mounted; then
            mounted=1
            break
        fi
        service_alive || break
        sleep 0.1
    done
    if [[ $mounted == 1 ]]; then
        echo "mounted (pid $service_pid):"
        grep -s " $MNT " /proc/mounts || true
        say "browsing the mount"
        run ls -la "$MNT"
        printf '$ find %s | head -n 15\n' "$MNT"
        find "$MNT" | head -n 15 || true # head closes the pipe early
        run cat "$MNT/README.md"
        run cat "$MNT/naïve café/résumé 日本語.txt"
        run cmp "$SAMPLE/images/random.bin" "$MNT/images/random.bin"
        echo "binary file identical through the mount"
        say "saving a file through the mount (pushed to the server)"
        printf '$ echo "saved through the mount" > %s/notes/from-the-mount.txt\n' "$MNT"
        mkdir -p "$MNT/notes"
        echo "saved through the mount" >"$MNT/notes/from-the-mount.txt"
        pushed=0
        for _ in $(seq 300); do # 30 s
            if curl -sS --fail "$URL/v1/workspaces/demo/fs/file?path=/notes/from-the-mount.txt" \
                -H "$AUTH" -H 'X-Correlation-Id: demo_get_2' >"$WORK/pushed.json" 2>/dev/null; then
                pushed=1
                break
            fi
            service_alive || break
            sleep 0.1
        done
        if [[ $pushed == 1 ]]; then
            printf '$ curl %s/v1/workspaces/demo/fs/file?path=/notes/from-the-mount.txt\n' "$URL"
            cat "$WORK/pushed.json"
            echo
        else
            fail "/notes/from-the-mount.txt did not reach the server within 30s"
        fi

        put_remote_file
        say "waiting for it to appear under the mount"
        t0=$SECONDS
        if wait_for_file "$MNT/hello-from-remote.txt" 30; then
            echo "appeared after about $((SECONDS - t0))s"
            run cat "$MNT/hello-from-remote.txt"
        else
            fail "/hello-from-remote.txt did not appear under $MNT within 30s"
        fi
    elif service_alive; then
        fail "the mount did not come up within 30s; service log:"
        tail -n 20 "$WORK/service.log" >&2
    else
        service_died
    fi
else
    if [[ $use_fuse == 1 ]]; then
        say "no FUSE here (needs root and /dev/fuse): mount service with --no-fuse, syncing $MIRROR"
    else
        say "mount service with --no-fuse (as asked), syncing $MIRROR"
    fi
    printf '$ %s\n' "$MOUNTD ${COMMON[*]} --no-fuse --interval 2s &"
    "$MOUNTD" "${COMMON[@]}" --no-fuse --interval 2s 2>"$WORK/service.log" &
    service_pid=$!
    sleep 1
    if service_alive; then
        put_remote_file
        say "waiting for it to appear in the mirror"
        t0=$SECONDS
        if wait_for_file "$MIRROR/hello-from-remote.txt" 30; then
            echo "appeared after about $((SECONDS - t0))s"
            run cat "$MIRROR/hello-from-remote.txt"
        else
            fail "/hello-from-remote.txt did not appear in $MIRROR within 30s"
        fi
    else
        service_died
    fi
    say "the mirror directory"
    run ls -la "$MIRROR"
    printf '$ find %s -not -path "*/.mountd*" | head -n 15\n' "$MIRROR"
    find "$MIRROR" -not -path "*/.mountd*" | head -n 15 || true # head closes the pipe early
fi

if [[ $failed == 1 ]]; then
    say "the service part of the demo failed (see above); cleaning up"
    exit 1
fi
say "done (cleaning up)"
