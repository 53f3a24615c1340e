#!/usr/bin/env bash
# The reference-model / chaos property test (tests/model.rs) with many cases: random remote trees and
# changes, random faults (HTTP errors, throttles, bad hashes, refused listings, hung calls), random
# interruptions and kill -9 (everything in memory lost), forced audits — checked against the model after
# every step.
#
#   scripts/chaos.sh [CASES]        (default 500)
#
# Environment: CARGO_TARGET_DIR as usual; PROPTEST_SEED-free (proptest picks a fresh random seed each
# run and saves failing cases to tests/model.proptest-regressions, replayed first by later runs).
# Prints the number of cases, the time taken and, on failure, the minimal failing case; exits non-zero
# when a case fails.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
CASES=${1:-500}
case $CASES in
'' | *[!0-9]*)
    echo "chaos.sh: CASES must be a positive integer, got '$CASES'" >&2
    exit 2
    ;;
esac

echo "chaos.sh: building the model test" >&2
cargo test --test model --no-run -q 2>&1 | grep -v '^$' >&2 || true

LOG=$(mktemp "${TMPDIR:-/tmp}/mountd-chaos.XXXXXX")
trap 'rm -f "$LOG"' EXIT
echo "chaos.sh: running $CASES cases of tests/model.rs" >&2
start=$(date +%s)
PROPTEST_CASES=$CASES cargo test --test model -q -- --nocapture --test-threads 1 >"$LOG" 2>&1
rc=$?
secs=$(($(date +%s) - start))

if [[ $rc -eq 0 ]]; then
    echo "chaos.sh: PASS: $CASES cases, 0 failures, ${secs}s"
else
    echo "chaos.sh: FAIL after ${secs}s ($CASES cases requested); the failing case (shrunk):"
    grep -E "minimal failing input|Test failed|panicked|step [0-9]+:|final run" "$LOG" | head -40
    echo "--- last lines of the test output:"
    tail -40 "$LOG"
    echo "chaos.sh: 1 or more failures (see tests/model.proptest-regressions for the saved seed)"
fi
exit $rc
