#!/usr/bin/env bash
# Mutation testing of the code that keeps the promise, with cargo-mutants
# (https://mutants.rs; `cargo install --locked cargo-mutants`).
#
#   bench/mutants.sh            the decision code (policy, key, owner, exit)
#                               against the unit tests: ~90 mutants, ~25 min
#                               on 2 cores
#   bench/mutants.sh --full     also cmd/run.rs and the SQLite store, against
#                               the whole suite: ~320 mutants, hours
#
# Results land in mutants.out/ (caught.txt, missed.txt, timeout.txt,
# unviable.txt); the summary line counts them. A missed mutant is a change
# to the code that no test noticed: kill it with a test, or write down in
# bench/RESULTS.md why it is harmless.
set -euo pipefail
cd "$(dirname "$0")/.."

files=(-f src/policy.rs -f src/key.rs -f src/owner.rs -f src/exit.rs)
test_args=(--cargo-test-arg=--bins)
if [ "${1:-}" = --full ]; then
    files+=(-f src/cmd/run.rs -f src/store/sqlite.rs)
    test_args=()
fi
exec cargo mutants --no-shuffle --jobs 1 "${files[@]}" "${test_args[@]}" --output mutants.out
