#!/usr/bin/env bash
# Release checks that run in CI after scripts/test.sh passed:
#   1. cargo audit of Cargo.lock against the advisory database snapshot in ../shared/advisory-db
#      (no network; any advisory, including "unmaintained"/"unsound" warnings, fails the run);
#   2. the Debian package: cargo deb -p mountd -> target/debian/mountd_<version>-1_<arch>.deb.
# cargo-audit and cargo-deb are installed with `cargo install --locked` at pinned versions when missing
# (about 5 and 3 minutes of compiling on 2 cores; the release build for the package about 7 more).
#
#   scripts/ops-checks.sh [--no-deb]
#
# Environment: MOUNTD_ADVISORY_DB (default ../shared/advisory-db, relative to the repo root).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

CARGO_AUDIT_VERSION=0.22.2
CARGO_DEB_VERSION=3.8.0
DB=${MOUNTD_ADVISORY_DB:-../shared/advisory-db}
deb=1
[[ ${1:-} == --no-deb ]] && deb=0

step() { printf '\n==> %s\n' "$*" >&2; }
ensure_cargo_tool() { # ensure_cargo_tool SUBCOMMAND CRATE VERSION
    cargo "$1" --version >/dev/null 2>&1 && return 0
    step "cargo install --locked $2 --version $3"
    local t0=$SECONDS
    cargo install --locked "$2" --version "$3"
    echo "ops-checks.sh: $2 installed in $((SECONDS - t0))s" >&2
}

step "cargo audit (advisory database: $DB)"
[[ -d $DB/crates ]] || {
    echo "ops-checks.sh: no advisory database at $DB (expected the shared/ snapshot beside the repo)" >&2
    exit 1
}
ensure_cargo_tool audit cargo-audit "$CARGO_AUDIT_VERSION"
cargo audit --version >&2
cargo audit --db "$DB" --no-fetch --stale -D warnings --file Cargo.lock

if [[ $deb == 1 ]]; then
    step "cargo deb -p mountd"
    ensure_cargo_tool deb cargo-deb "$CARGO_DEB_VERSION"
    t0=$SECONDS
    # The man page and completions come from the clap definitions of the binary being packaged.
    cargo build --release --locked -p mountd
    scripts/gen-man.sh "${CARGO_TARGET_DIR:-target}/release/mountd"
    # Stripped: the release profile keeps line tables for profiling (86 MB); the package needs none.
    cargo deb -p mountd --locked --strip
    echo "ops-checks.sh: package built in $((SECONDS - t0))s" >&2
    pkg=$(ls -t "${CARGO_TARGET_DIR:-target}"/debian/mountd_*.deb | head -n1)
    dpkg-deb --info "$pkg" >&2
    # Read the listing once (grep -q on a pipe would stop early and fail the pipeline under pipefail).
    contents=$(dpkg-deb --contents "$pkg")
    # The daemon only: the reference remote must never be packaged.
    if grep -q 'mountd-remote' <<<"$contents"; then
        echo "ops-checks.sh: $pkg contains mountd-remote" >&2
        exit 1
    fi
    bin_size=$(awk '$NF == "./usr/bin/mountd" { print $3 }' <<<"$contents")
    if [[ -z $bin_size ]] || ((bin_size > 40000000)); then
        echo "ops-checks.sh: $pkg: /usr/bin/mountd is ${bin_size:-missing} bytes (not stripped?)" >&2
        exit 1
    fi
    grep -q ' \./usr/share/man/man1/mountd\.1' <<<"$contents" || {
        echo "ops-checks.sh: $pkg has no man page" >&2
        exit 1
    }
    grep -q ' \./usr/bin/mountd$' <<<"$contents" || {
        echo "ops-checks.sh: $pkg has no /usr/bin/mountd" >&2
        exit 1
    }
fi
step "ops checks passed"
