#!/usr/bin/env bash
# File-system correctness suites against mountd's FUSE view (issue 17 "A writable FUSE view", point 4),
# nightly-style (not part of scripts/test.sh):
#   pjdfstest  the POSIX suite (Rust port), every test but those scripts/fs-suites.exclude lists (one
#              reason each: symlinks, hard links, devices/FIFOs/sockets are unsupported by design), as
#              root with its two dummy users (nobody, tests: created if missing) switching users, so the
#              mount is started with --allow-other; then the script's own extra::* checks of what
#              pjdfstest does not test (O_APPEND, RENAME_NOREPLACE, renames over files and directories,
#              chmod's mode, new modes under a umask, fallocate mode 0, the set-ID bits a write and a
#              chown drop) and of the errno each unsupported operation answers
#              (scripts/lib/fs-suites.py).
#   fsx        N random operations (pread/pwrite, mmap reads and writes, truncate, posix_fallocate,
#              fsync, fdatasync, close/reopen, msync invalidate) on one file in the mount, every read
#              verified by fsx; then mountd's outbox must drain and a fresh `mountd --once` pull of the
#              remote must hold the file's final bytes (cmp).
# Set-up: the release build in ${CARGO_TARGET_DIR:-target} (--debug: the debug build, e.g. the one
# scripts/test.sh made), `mountd-remote` on loopback and the service with --mountpoint --allow-other
# (--sync-mode mirror, the default). Needs root and /dev/fuse. pjdfstest and fsx are installed with
# `cargo install --locked` when missing (about 3 minutes).
# Runtime: see "Tests and benchmarks" in README.md.
#
#   scripts/fs-suites.sh [--only pjdfstest|fsx] [--ops N] [--seed N] [--mountpoint DIR]
#                        [--run-excluded] [--debug] [--no-build] [--keep]
#
#   --only SUITE       run one suite
#   --ops N            fsx operations (default 100000)
#   --seed N           fsx seed (default: random, printed, so a failure can be replayed)
#   --mountpoint DIR   run against DIR (an existing mount, or any directory: useful to check the
#                      harness on ext4 or tmpfs) instead of starting the remote and mountd; no remote check
#   --run-excluded     run the excluded tests too and say which pass (never counted as failures)
#   --debug            use (and build) the debug binaries instead of the release ones
#   --no-build         use the binaries already built
#   --keep             keep the work directory (logs, configs, mirror); it is kept anyway on a failure
# Exit status 0 when everything passed, 1 on any failure, 2 on a usage error. The last line is
# `fs-suites: N passed, N failed` (pjdfstest's and the extra checks' tests, fsx and the remote check).
set -euo pipefail
# shellcheck source=lib/remote.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/remote.sh"
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
HELPER=$ROOT/scripts/lib/fs-suites.py
EXCLUDE=$ROOT/scripts/fs-suites.exclude
PJDFSTEST_VERSION=0.2.2
FSX_VERSION=0.3.2

only='' ops=100000 seed='' target='' run_excluded=0 build=1 keep=0 profile=release
while (($#)); do
    case $1 in
    --only) only=$2; shift 2 ;;
    --ops) ops=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    --mountpoint) target=$2; shift 2 ;;
    --run-excluded) run_excluded=1; shift ;;
    --debug) profile=debug; shift ;;
    --no-build) build=0; shift ;;
    --keep) keep=1; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "fs-suites.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
done
case $only in '' | pjdfstest | fsx) ;; *) echo "fs-suites.sh: --only pjdfstest|fsx" >&2; exit 2 ;; esac
[[ $ops =~ ^[0-9]+$ && $ops -gt 0 ]] || { echo "fs-suites.sh: --ops needs a positive number" >&2; exit 2; }
[[ -z $seed || $seed =~ ^[0-9]+$ ]] || { echo "fs-suites.sh: --seed needs a number" >&2; exit 2; }
say() { printf 'fs-suites: %s\n' "$*" >&2; }
die() { printf 'fs-suites: error: %s\n' "$*" >&2; exit 1; }
runs() { [[ -z $only || $only == "$1" ]]; }
[[ $(id -u) -eq 0 ]] || die "run as root: pjdfstest switches users, the mount needs --allow-other"
[[ -z $target || -d $target ]] || die "--mountpoint $target is not a directory"
command -v python3 >/dev/null || die "python3 is needed"

# ---------------------------------------------------------------------------------------------------
# Tools and the dummy users
# ---------------------------------------------------------------------------------------------------
ensure_crate() { # ensure_crate BINARY VERSION
    local have
    have=$("$1" --version 2>/dev/null | awk '{print $2}' || true)
    [[ $have == "$2" ]] && return 0
    say "installing $1 $2 (cargo install: a few minutes)"
    cargo install --locked --quiet --version "$2" "$1" >&2
}
runs pjdfstest && ensure_crate pjdfstest "$PJDFSTEST_VERSION"
runs fsx && ensure_crate fsx "$FSX_VERSION"
if runs pjdfstest; then
    # pjdfstest's [dummy_auth]: two users, each with its primary group, other than root.
    getent passwd nobody >/dev/null || useradd --system --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin nobody
    getent group tests >/dev/null || groupadd --system tests
    getent passwd tests >/dev/null || useradd --system --gid tests --no-create-home --home-dir / \
        --shell /usr/sbin/nologin tests
    nobody_group=$(id -gn nobody)
    [[ $(id -gn tests) == tests ]] || die "the user 'tests' exists but its primary group is not 'tests'"
fi

# ---------------------------------------------------------------------------------------------------
# Set-up: remote + service (or the directory given), a work directory, cleanup
# ---------------------------------------------------------------------------------------------------
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
MOUNTD=$TARGET_DIR/$profile/mountd
REMOTE=$TARGET_DIR/$profile/mountd-remote
WORK=$(mktemp -d "${TMPDIR:-/tmp}/mountd-fs-suites.XXXXXX")
# pjdfstest's dummy users must reach the mountpoint inside it (mktemp makes it 0700).
chmod 0755 "$WORK"
DIR=$WORK/mirror TOKEN=$WORK/token FRESH=$WORK/fresh SECONDARY=$WORK/secondary
MNT=${target:-$WORK/mnt}
remote_pid='' service_pid='' failed_any=0
unmount() { # unmount DIR: quietly, lazily as a last resort
    mountpoint -q "$1" 2>/dev/null || return 0
    umount "$1" 2>/dev/null || fusermount3 -u "$1" 2>/dev/null || umount -l "$1" 2>/dev/null || true
}
cleanup() {
    set +e
    if [[ -n $service_pid ]]; then
        # The service unmounts its view on SIGTERM; the unmount below is the backstop.
        kill -TERM "$service_pid" 2>/dev/null && wait "$service_pid" 2>/dev/null
    fi
    [[ -z $target ]] && unmount "$MNT"
    unmount "$SECONDARY"
    [[ -n $remote_pid ]] && kill -TERM "$remote_pid" 2>/dev/null && wait "$remote_pid" 2>/dev/null
    # Never remove a directory something is still mounted in (the view would pass the deletes on).
    if ((keep || failed_any)) || { [[ -z $target ]] && mountpoint -q "$MNT"; } || mountpoint -q "$SECONDARY"; then
        say "work directory kept: $WORK"
    else
        rm -rf --one-file-system "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [[ -z $target ]]; then
    if ((build)); then
        say "building the $profile binaries"
        if [[ $profile == release ]]; then
            cargo build --workspace --release --bins --quiet
        else
            cargo build --workspace --bins --quiet
        fi
    fi
    [[ -x $MOUNTD && -x $REMOTE ]] || die "$MOUNTD or $REMOTE is missing (build, or drop --no-build)"
    [[ -c /dev/fuse ]] || die "/dev/fuse is missing"
    echo fs-suites-token >"$TOKEN"
    mkdir -p "$MNT"
    # The body cap: fsx's file (256 KiB, base64 in JSON) fits in the default 1 MiB; 16 MiB leaves room.
    "$REMOTE" --listen 127.0.0.1:0 --token-file "$TOKEN" --generate 10 --dirs 1 --max-body-bytes 16M \
        >"$WORK/remote.out" 2>"$WORK/remote.log" &
    remote_pid=$!
    wait_remote "$remote_pid" "$WORK/remote.out" "$WORK/remote.log" 30
    common=(--base-url "$URL" --workspace suites --token-file "$TOKEN" --progress never)
    "$MOUNTD" "${common[@]}" --local-dir "$DIR" --mountpoint "$MNT" --interval 1s --allow-other \
        >"$WORK/service.log" 2>&1 &
    service_pid=$!
    say "waiting for the mount at $MNT"
    for _ in $(seq 300); do
        mountpoint -q "$MNT" && [[ -n $(ls -A "$MNT" 2>/dev/null) ]] && break
        kill -0 "$service_pid" 2>/dev/null || { cat "$WORK/service.log" >&2; die "mountd exited before mounting"; }
        sleep 0.1
    done
    mountpoint -q "$MNT" || { tail -n 20 "$WORK/service.log" >&2; die "mountd did not mount within 30 s"; }
fi
fstype=$(findmnt -n -o FSTYPE --target "$MNT" 2>/dev/null || echo '?')
say "target: $MNT ($fstype)"
mountd_view=0
[[ $fstype == fuse.mountd ]] && mountd_view=1

passed=0 failed=0 summary=()
now() { date +%s.%N; }
elapsed() { python3 -c "print(f'{$(now) - $1:.1f}')"; }

# record PASSED FAILED LINE: add to the totals and the summary.
record() {
    passed=$((passed + $1)) failed=$((failed + $2))
    summary+=("$3")
}
# make_dir DIR SUITE: create a suite's directory in the target, or record why it cannot be.
make_dir() {
    local err
    if ! err=$(mkdir -p "$1" 2>&1); then
        record 0 1 "$2: FAILED: cannot create $1: ${err##*: }"
        return 1
    fi
}

# ---------------------------------------------------------------------------------------------------
# pjdfstest, then the extra checks
# ---------------------------------------------------------------------------------------------------
run_pjdfstest() {
    local t0 conf total ran p f x o selected extra_flags=()
    t0=$(now)
    conf=$WORK/pjdfstest.toml
    # Features: posix_fallocate (mode 0 is supported), utimensat, UTIME_NOW, and rename_ctime (POSIX
    # does not ask rename to change the ctime, Linux file systems do: its tests are optional in the
    # exclusion file); not the BSD ones (chflags, birthtime, NFSv4 ACLs).
    # naptime: the sleep between two changes whose timestamps must differ (FUSE carries nanoseconds).
    cat >"$conf" <<EOF
[features]
posix_fallocate = {}
utimensat = {}
utime_now = {}
rename_ctime = {}

[settings]
naptime = 0.01
allow_remount = false

[dummy_auth]
entries = [["nobody", "$nobody_group"], ["tests", "tests"]]
EOF
    # A second file system for the EXDEV tests: a small tmpfs.
    mkdir -p "$SECONDARY"
    mountpoint -q "$SECONDARY" || mount -t tmpfs -o size=4m fs-suites-secondary "$SECONDARY"
    # pjdfstest cannot list its tests: run them all once in a scratch directory of the work directory
    # (a few seconds on ext4) for their names; then run the selected ones by exact name in the target.
    mkdir -p "$WORK/listing"
    (cd "$WORK" && pjdfstest -c "$conf" -p "$WORK/listing" >"$WORK/pjdfstest-listing.log" 2>&1) || true
    python3 "$HELPER" names "$WORK/pjdfstest-listing.log" >"$WORK/pjdfstest-all.txt"
    total=$(wc -l <"$WORK/pjdfstest-all.txt")
    ((total > 300)) || die "pjdfstest listed only $total tests (see $WORK/pjdfstest-listing.log)"
    python3 "$HELPER" select "$EXCLUDE" "$WORK/pjdfstest-all.txt" "$WORK/pjdfstest-run.txt" \
        "$WORK/pjdfstest-excluded.tsv"
    if ((run_excluded)); then
        cut -f1 "$WORK/pjdfstest-excluded.tsv" | cat - "$WORK/pjdfstest-run.txt" | sort -u >"$WORK/run.txt"
    else
        cp "$WORK/pjdfstest-run.txt" "$WORK/run.txt"
    fi
    # -e compares with the full names, `pjdfstest::tests::` included (it prints them without).
    mapfile -t selected < <(sed 's/^/pjdfstest::tests::/' "$WORK/run.txt")
    make_dir "$MNT/pjdfstest" pjdfstest || return 0
    say "pjdfstest: ${#selected[@]} of $total tests in $MNT/pjdfstest"
    (cd "$WORK" && pjdfstest -c "$conf" -p "$MNT/pjdfstest" -s "$SECONDARY" -e "${selected[@]}" \
        >"$WORK/pjdfstest.log" 2>&1) || true
    ran=$(sed -n 's/^Summary:.* \([0-9]*\) total$/\1/p' "$WORK/pjdfstest.log")
    if [[ $ran != "${#selected[@]}" ]]; then
        tail -n 20 "$WORK/pjdfstest.log" >&2
        record 0 1 "pjdfstest: FAILED: it ran ${ran:-no} tests of ${#selected[@]} (see $WORK/pjdfstest.log)"
        return 0
    fi
    say "extra checks in $MNT/pjdfstest-extra"
    rm -rf "$MNT/pjdfstest-extra"
    : >"$WORK/extra.log"
    if make_dir "$MNT/pjdfstest-extra" "extra checks"; then
        ((mountd_view)) && extra_flags=(--mountd)
        python3 "$HELPER" extras "$MNT/pjdfstest-extra" "${extra_flags[@]}" >"$WORK/extra.log" 2>&1 || true
        rm -rf "$MNT/pjdfstest-extra"
    fi
    python3 "$HELPER" report "$WORK/pjdfstest-excluded.tsv" "$WORK/pjdfstest.log" "$WORK/extra.log" \
        >"$WORK/pjdfstest-report.txt"
    sed '$d' "$WORK/pjdfstest-report.txt"
    read -r p f x o < <(tail -n 1 "$WORK/pjdfstest-report.txt")
    record "$p" "$f" "pjdfstest + extra checks: $p passed, $f failed, $x excluded, $o optional failed ($(elapsed "$t0") s)"
    rmdir "$MNT/pjdfstest" 2>/dev/null || true
}

# ---------------------------------------------------------------------------------------------------
# fsx, then the remote's copy of its file
# ---------------------------------------------------------------------------------------------------
run_fsx() {
    local t0 fconf file fsx_rc=0
    t0=$(now)
    [[ -n $seed ]] || seed=$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')
    fconf=$WORK/fsx.toml
    # A 256 KiB file; every operation fsx has that the view is meant to support, mmap included.
    cat >"$fconf" <<'EOF'
flen = 262144

[weights]
read = 10
write = 10
mapread = 10
mapwrite = 10
truncate = 2
posix_fallocate = 1
fsync = 1
fdatasync = 1
close_open = 1
invalidate = 1
EOF
    mkdir -p "$WORK/fsx-artifacts"
    make_dir "$MNT/fsx" fsx || return 0
    file=$MNT/fsx/fsx.file
    say "fsx: $ops operations on $file (seed $seed)"
    # -v logs every operation: a failure that panics (an unexpected errno) names the operation it hit.
    fsx -v -N "$ops" -S "$seed" -f "$fconf" -P "$WORK/fsx-artifacts" "$file" >"$WORK/fsx.log" 2>&1 || fsx_rc=$?
    if ((fsx_rc == 0)) && grep -q 'All operations completed A-OK' "$WORK/fsx.log"; then
        record 1 0 "fsx: $ops operations, no mismatch (seed $seed, $(elapsed "$t0") s)"
    else
        local why last
        # fsx's own verdict (miscompare, size error), or the panic's message (an unexpected errno).
        why=$(grep -m1 -E 'miscompare|Size error|short (read|write)|unexpectedly|does not support|Result::unwrap' "$WORK/fsx.log" |
            sed 's/^\[ERROR fsx\] *//' || true)
        last=$(grep -E '^\[INFO +fsx\] +[0-9]+ ' "$WORK/fsx.log" | tail -n1 | sed 's/^\[INFO  *fsx\] *//' || true)
        grep -m1 -B2 -A60 -E 'miscompare|Size error|panicked' "$WORK/fsx.log" | grep -v '^\[INFO' | head -n 70 >&2 || true
        record 0 1 "fsx: FAILED (exit $fsx_rc, seed $seed, $(elapsed "$t0") s): ${why:-see $WORK/fsx.log}${last:+; last operation logged: $last}"
    fi
    if [[ -n $target ]]; then
        summary+=("remote check: skipped (--mountpoint)")
        # In a directory given with --mountpoint, leave nothing behind on success.
        if ((fsx_rc == 0)); then rm -rf "$MNT/fsx"; fi
    elif [[ ! -f $file ]]; then
        record 0 1 "remote check: FAILED: $file does not exist"
    else
        check_remote "$file" fsx/fsx.file
    fi
}

# check_remote FILE REL: wait for the outbox to drain, pull the remote into a fresh directory and
# compare its REL with FILE as the mount serves it.
check_remote() {
    local file=$1 rel=$2 t0 drained=0 streak=0 pending='?'
    t0=$(now)
    # Drained: no pending change in three readings in a row, 0.5 s apart (a write is recorded shortly
    # after its close, so one empty reading is not enough).
    for _ in $(seq 240); do
        pending=$("$MOUNTD" status --local-dir "$DIR" --json 2>/dev/null |
            python3 -c 'import json,sys; print(json.load(sys.stdin)["push"]["pending"])' 2>/dev/null || echo '?')
        if [[ $pending == 0 ]]; then
            streak=$((streak + 1))
            ((streak >= 3)) && { drained=1; break; }
        else
            streak=0
        fi
        sleep 0.5
    done
    # The bytes as the mount serves them now, read after dropping this file's cached pages (only its
    # own: the machine is shared).
    python3 - "$file" "$WORK/final" <<'PY'
import os, shutil, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
with os.fdopen(fd, "rb") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
    "$MOUNTD" --once "${common[@]}" --local-dir "$FRESH" >"$WORK/fresh.log" 2>&1 || true
    local size remote verdict
    size=$(stat -c %s "$WORK/final")
    if [[ ! -f $FRESH/$rel ]]; then
        verdict="the remote has no /$rel (see $WORK/fresh.log)" remote=missing
    elif cmp "$WORK/final" "$FRESH/$rel" >"$WORK/cmp.txt" 2>&1; then
        verdict="the remote holds the file's final $size bytes" remote=same
    else
        verdict="the remote's /$rel differs: $(head -n1 "$WORK/cmp.txt") (mount $size bytes, remote $(stat -c %s "$FRESH/$rel"))"
        remote=differs
    fi
    if ((drained)) && [[ $remote == same ]]; then
        record 1 0 "remote check: $verdict (drain + pull $(elapsed "$t0") s)"
    elif ((drained)); then
        record 0 1 "remote check: FAILED: $verdict"
    else
        "$MOUNTD" outbox --local-dir "$DIR" >"$WORK/outbox.txt" 2>&1 || true
        record 0 1 "remote check: FAILED: the outbox did not drain in 120 s ($pending pending, first: $(sed -n '2,4p' "$WORK/outbox.txt" | sed 's/^ *//' | paste -sd';' -)); $verdict"
    fi
}

export NO_COLOR=1 CLICOLOR=0 RUST_BACKTRACE=0
if runs pjdfstest; then run_pjdfstest; fi
if runs fsx; then run_fsx; fi

# ---------------------------------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------------------------------
((failed == 0)) || failed_any=1
if [[ -n $service_pid ]] && ! kill -0 "$service_pid" 2>/dev/null; then
    failed_any=1 failed=$((failed + 1))
    summary+=("mountd: the service exited during the suites (see $WORK/service.log)")
fi
echo
echo "fs-suites summary ($MNT, $fstype):"
printf '  %s\n' "${summary[@]}"
echo "fs-suites: $passed passed, $failed failed"
((failed == 0))
