#!/usr/bin/env bash
# Mutation testing of the code that keeps the promise, with cargo-mutants
# (https://mutants.rs; `cargo install --locked cargo-mutants`). Too slow for
# CI on this machine; run it by hand after changing that code.
#
#   bench/mutants.sh           both phases, one after the other
#   bench/mutants.sh --unit    phase 1: policy.rs, key.rs, owner.rs, exit.rs,
#                              against the unit tests (`--bins`): 95 mutants,
#                              20 min on 2 shared cores (a 6 min first build,
#                              then ~10 s a mutant)
#   bench/mutants.sh --cli     phase 2: the decision path of cmd/run.rs
#                              (Call::run, act, claim, alive, millis), its
#                              finish path (cmd/run/execute.rs) and the
#                              SQLite store's claim and finish (claim, finish,
#                              write_claim, write_outcome, next_token, sync,
#                              set_child, renew), against the unit tests and
#                              the CLI modules that drive them: 51 mutants,
#                              ~45 min (a 5 min first build, then 5-60 s a
#                              mutant; a mutant that hangs a test costs the
#                              50 s timeout; measured: 41 min in two parts)
#
# Results land in mutants.out/unit/mutants.out/ and mutants.out/cli/mutants.out/
# (caught.txt, missed.txt, timeout.txt, unviable.txt); the summary line counts
# them. A missed mutant is a change to the code that no test noticed: kill it
# with a test, or write down in bench/RESULTS.md ("Mutation testing") why it
# is harmless. Needs the servers of no other backend: it runs on SQLite.
set -euo pipefail
cd "$(dirname "$0")/.."

phase=${1:-all}
case $phase in
all | --unit | --cli) ;;
*)
    echo "usage: bench/mutants.sh [--unit | --cli]" >&2
    exit 2
    ;;
esac

if [ "$phase" != --cli ]; then
    cargo mutants --no-shuffle --jobs 1 --output mutants.out/unit \
        -f src/policy.rs -f src/key.rs -f src/owner.rs -f src/exit.rs \
        -- --bins
fi

if [ "$phase" != --unit ]; then
    cargo mutants --no-shuffle --jobs 1 --timeout 50 --output mutants.out/cli \
        -f src/cmd/run.rs -f src/cmd/run/execute.rs -f src/store/sqlite.rs \
        -f src/store/sqlite/purge.rs \
        -F "Call<'_>::(run|act|claim|alive|execute|finish)\b" \
        -F '\bmillis\b' \
        -F 'SqliteStore::(sync|next_token|write_claim|write_outcome)\b' \
        -F '\bdelete_some_expired\b' \
        -F 'SqliteStore>::(claim|finish|set_child|renew)\b' \
        -- --bins --test cli -- \
        run:: running:: crash:: guarantees:: store:: callers:: liveness:: disk:: journal::
fi
