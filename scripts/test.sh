#!/usr/bin/env bash
# The project's test command: formatting, lints, build, the whole test suite (FUSE tests included:
# they must mount, never skip) and `systemd-analyze verify` of the unit.
#
#   scripts/test.sh
#
# Environment:
#   MOUNTD_TEST_TIMEOUT   seconds allowed for the test run itself (default 720), so a hung mount
#                         cannot hang CI; the whole script stays under 15 minutes on 2 cores.
#   MOUNTD_SKIP_APT=1     never call apt-get, even as root.
#
# Exported to the tests: MOUNTD_REQUIRE_FUSE=1 (FUSE tests must fail, not skip, when they cannot
# mount) and MOUNTD_BIN / MOUNTD_REMOTE_BIN (paths of the debug binaries).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

step() { printf '\n==> %s\n' "$*" >&2; }
warn() { printf 'test.sh: warning: %s\n' "$*" >&2; }
die() {
    printf 'test.sh: error: %s\n' "$*" >&2
    exit 1
}
have() { command -v "$1" >/dev/null 2>&1; }

# ---------------------------------------------------------------------------------------------------
# System dependencies (only as root with apt; otherwise say what is missing)
# ---------------------------------------------------------------------------------------------------
APT_UPDATED=0
apt_install() {
    if [[ ${MOUNTD_SKIP_APT:-0} == 1 || $(id -u) -ne 0 ]] || ! have apt-get; then
        return 1
    fi
    if [[ $APT_UPDATED == 0 ]]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
        APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2
}

ensure_tool() { # ensure_tool COMMAND PACKAGE
    have "$1" && return 0
    step "installing $2 (for $1)"
    apt_install "$2" || warn "$1 is missing and could not be installed (package $2)"
    have "$1"
}

step "system dependencies"
ensure_tool fusermount3 fuse3 || true
ensure_tool systemd-analyze systemd || die "systemd-analyze is required to verify systemd/mountd@.service (install the systemd package)"
ensure_tool pkg-config pkg-config || true

# ---------------------------------------------------------------------------------------------------
# FUSE preflight: the FUSE tests must be able to mount. A machine that cannot is a failed run, not a
# silently smaller one.
# ---------------------------------------------------------------------------------------------------
step "FUSE preflight"
[[ -c /dev/fuse ]] || die "/dev/fuse is missing: the FUSE tests cannot mount (try: mknod /dev/fuse c 10 229; modprobe fuse; in a container: --device /dev/fuse --cap-add SYS_ADMIN)"
grep -qw fuse /proc/filesystems || die "the kernel has no fuse file system (modprobe fuse)"
if [[ $(id -u) -eq 0 ]]; then
    # As root, fuser mounts with mount(2) directly.
    [[ -r /dev/fuse && -w /dev/fuse ]] || die "/dev/fuse is not readable and writable by root here"
else
    [[ -r /dev/fuse && -w /dev/fuse ]] || die "/dev/fuse is not accessible to $(id -un); the FUSE tests must run as root (as CI does)"
    have fusermount3 || die "fusermount3 (package fuse3) is needed to mount as a non-root user"
fi
echo "ok: /dev/fuse usable by $(id -un)" >&2
export MOUNTD_REQUIRE_FUSE=1

# FUSE transports: the FUSE tests run over io_uring where the kernel has it (turned on here as root:
# the fuse module parameter enable_uring), then once more over /dev/fuse. Where io_uring cannot be
# had, they run over /dev/fuse only and the run says so.
URING_PARAM=/sys/module/fuse/parameters/enable_uring
uring_skip=''
if [[ ! -e $URING_PARAM ]]; then
    uring_skip="this kernel has no FUSE over io_uring (Linux >= 6.14 with CONFIG_FUSE_IO_URING)"
elif [[ $(cat "$URING_PARAM") != Y ]]; then
    if [[ $(id -u) -eq 0 ]] && echo Y >"$URING_PARAM" 2>/dev/null; then
        echo "ok: turned on FUSE over io_uring ($URING_PARAM)" >&2
    else
        uring_skip="$URING_PARAM is off and cannot be turned on here (needs root)"
    fi
fi
if [[ -z $uring_skip ]]; then
    export MOUNTD_FUSE_TRANSPORT=uring
    echo "ok: FUSE tests run over io_uring, then over /dev/fuse" >&2
else
    export MOUNTD_FUSE_TRANSPORT=dev
    echo "test.sh: NOTE: the FUSE tests run over /dev/fuse only: $uring_skip" >&2
fi

# ---------------------------------------------------------------------------------------------------
# Rust checks
# ---------------------------------------------------------------------------------------------------
# Lints are not optional: a missing rustfmt or clippy fails the run (.ci/run installs both).
cargo fmt --version >/dev/null 2>&1 || die "rustfmt is not installed (rustup component add rustfmt)"
cargo clippy --version >/dev/null 2>&1 || die "clippy is not installed (rustup component add clippy)"
step "cargo fmt --check"
cargo fmt --all -- --check
step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo build --all-targets"
cargo build --workspace --all-targets --locked
export MOUNTD_BIN=$ROOT/target/debug/mountd
export MOUNTD_REMOTE_BIN=$ROOT/target/debug/mountd-remote

TEST_TIMEOUT=${MOUNTD_TEST_TIMEOUT:-720}
passed=0
failed=0
log_dir=$(mktemp -d)
# count LOG: add the passed/failed counts a test runner printed (nextest's summary line, or the
# "test result:" lines of cargo test) to the totals.
count() {
    local p f
    if grep -q 'tests run:' "$1"; then
        # nextest: "Summary [...] N tests run: P passed, F failed, S skipped" (or "P passed, S skipped").
        p=$(grep -E 'tests run:' "$1" | tail -n1 | grep -Eo '[0-9]+ passed' | grep -Eo '[0-9]+' || true)
        f=$(grep -E 'tests run:' "$1" | tail -n1 | grep -Eo '[0-9]+ failed' | grep -Eo '[0-9]+' || true)
    else
        # cargo test: one "test result: ok. P passed; F failed; ..." line per test binary.
        p=$(grep -E '^test result:' "$1" | grep -Eo '[0-9]+ passed' | awk '{s += $1} END {print s + 0}')
        f=$(grep -E '^test result:' "$1" | grep -Eo '[0-9]+ failed' | awk '{s += $1} END {print s + 0}')
    fi
    passed=$((passed + ${p:-0}))
    failed=$((failed + ${f:-0}))
}
rc=0
if cargo nextest --version >/dev/null 2>&1; then
    step "cargo nextest run (timeout ${TEST_TIMEOUT}s)"
    timeout --kill-after=30s "$TEST_TIMEOUT" cargo nextest run --workspace --no-fail-fast --locked 2>&1 |
        tee "$log_dir/nextest.log" || rc=1
    count "$log_dir/nextest.log"
    if [[ $MOUNTD_FUSE_TRANSPORT == uring ]]; then
        step "the FUSE tests again over /dev/fuse (MOUNTD_FUSE_TRANSPORT=dev)"
        MOUNTD_FUSE_TRANSPORT=dev timeout --kill-after=30s 300 cargo nextest run --no-fail-fast --locked \
            --test fuse_view --test fuse_write --test service 2>&1 | tee "$log_dir/nextest-dev.log" || rc=1
        count "$log_dir/nextest-dev.log"
    fi
    # nextest does not run doctests.
    step "cargo test --doc"
    timeout --kill-after=30s 300 cargo test --workspace --doc --locked 2>&1 | tee "$log_dir/doc.log" || rc=1
    count "$log_dir/doc.log"
else
    step "cargo test (timeout ${TEST_TIMEOUT}s; install cargo-nextest for faster, per-test isolated runs)"
    timeout --kill-after=30s "$TEST_TIMEOUT" cargo test --workspace --no-fail-fast --locked 2>&1 |
        tee "$log_dir/test.log" || rc=1
    count "$log_dir/test.log"
    if [[ $MOUNTD_FUSE_TRANSPORT == uring ]]; then
        step "the FUSE tests again over /dev/fuse (MOUNTD_FUSE_TRANSPORT=dev)"
        MOUNTD_FUSE_TRANSPORT=dev timeout --kill-after=30s 300 cargo test --no-fail-fast --locked \
            --test fuse_view --test fuse_write --test service 2>&1 | tee "$log_dir/test-dev.log" || rc=1
        count "$log_dir/test-dev.log"
    fi
fi
if ((rc != 0 && failed == 0)); then
    # The runner failed without counting a failed test (a timeout, a crash): count it as one.
    failed=1
fi

# ---------------------------------------------------------------------------------------------------
# systemd unit: verify a copy whose ExecStart points at the binary just built (verify checks that the
# executable exists) under an instance name. --man=no: Documentation=man:mountd(1) is installed with the
# package, not on a build machine. Unknown keys are only warnings in systemd-analyze, so any
# message about our unit fails the run as well.
# ---------------------------------------------------------------------------------------------------
step "systemd-analyze verify systemd/mountd@.service"
unit_dir=$(mktemp -d)
trap 'rm -rf "$unit_dir"' EXIT
sed "s#^ExecStart=/usr/local/bin/mountd\$#ExecStart=$ROOT/target/debug/mountd#" \
    systemd/mountd@.service >"$unit_dir/mountd@test.service"
grep -q "^ExecStart=$ROOT/target/debug/mountd\$" "$unit_dir/mountd@test.service" ||
    die "systemd/mountd@.service has no 'ExecStart=/usr/local/bin/mountd' line to point at the build"
set +e
verify_out=$(SYSTEMD_LOG_COLOR=0 systemd-analyze verify --man=no "$unit_dir/mountd@test.service" 2>&1)
verify_rc=$?
set -e
[[ -z $verify_out ]] || printf '%s\n' "$verify_out" >&2
[[ $verify_rc -eq 0 ]] || die "systemd-analyze verify failed (exit $verify_rc)"
if grep -q "mountd@test.service" <<<"$verify_out"; then
    die "systemd-analyze verify reported problems with the unit (see above)"
fi

rm -rf "$log_dir"
# The last line: one plain summary over everything this script ran (.ci/run repeats it at its end).
summary="$passed passed, $failed failed"
mkdir -p target
echo "$summary" >target/test-summary.txt
if ((failed > 0)); then
    echo "test.sh: tests failed" >&2
    echo "$summary"
    exit 1
fi
step "all checks passed"
echo "$summary"
