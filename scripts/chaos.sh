#!/usr/bin/env bash
# The reference-model / chaos property tests with many cases each:
# - tests/model.rs (the pull side): random remote trees and changes, random faults (HTTP errors,
#   throttles, bad hashes, refused listings, hung calls), random interruptions and kill -9 (everything
#   in memory lost), forced audits — checked against the model after every step;
# - tests/model_two_way.rs (two-way sync): random local and remote edits, renames and atomic saves,
#   faults on both directions (lost write answers included), interruptions and kill -9 — checked after
#   quiescence: local == remote, every version either side wrote at its path or in a conflict copy,
#   each change written exactly once.
#
#   scripts/chaos.sh [CASES]        (default 2000, for each of the two tests)
#
# Environment: CARGO_TARGET_DIR as usual; PROPTEST_SEED-free (proptest picks a fresh random seed each
# run and saves failing cases to tests/<test>.proptest-regressions, replayed first by later runs).
# Prints the number of cases, the time taken and, on failure, the minimal failing case; exits non-zero
# when a case fails.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
CASES=${1:-2000}
case $CASES in
'' | *[!0-9]*)
    echo "chaos.sh: CASES must be a positive integer, got '$CASES'" >&2
    exit 2
    ;;
esac

echo "chaos.sh: building the model tests" >&2
cargo test --test model --test model_two_way --no-run -q 2>&1 | grep -v '^$' >&2 || true

LOG=$(mktemp "${TMPDIR:-/tmp}/mountd-chaos.XXXXXX")
trap 'rm -f "$LOG"' EXIT
rc=0
for t in model model_two_way; do
    echo "chaos.sh: running $CASES cases of tests/$t.rs" >&2
    start=$(date +%s)
    PROPTEST_CASES=$CASES cargo test --test "$t" -q -- --nocapture --test-threads 1 >"$LOG" 2>&1
    r=$?
    secs=$(($(date +%s) - start))
    if [[ $r -eq 0 ]]; then
        echo "chaos.sh: PASS: tests/$t.rs: $CASES cases, 0 failures, ${secs}s"
    else
        rc=$r
        echo "chaos.sh: FAIL: tests/$t.rs after ${secs}s ($CASES cases requested); the failing case (shrunk):"
        grep -E "minimal failing input|Test failed|panicked|step [0-9]+:|final run" "$LOG" | head -40
        echo "--- last lines of the test output:"
        tail -40 "$LOG"
        echo "chaos.sh: 1 or more failures (see tests/$t.proptest-regressions for the saved seed)"
    fi
done
exit $rc
