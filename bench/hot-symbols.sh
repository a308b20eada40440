#!/usr/bin/env bash
# bench/hot-symbols.sh: rewrites link/hot-symbols.txt (issues 15, 26).
#
# The file lists the C functions (SQLite's, the C library's) that ordinary
# `idem run` calls execute (a replay, a first run, with and without output,
# and the call that creates a store), the most frequent first. build.rs
# hands it to the linker (lld's --symbol-ordering-file), which lays those
# functions out side by side: a replay takes about 22 % less CPU time, a
# first run 14 % less (bench/RESULTS.md, issue 26). The names come from
# valgrind's callgrind on a release build.
#
# Rust's functions are left out: their names carry hashes that change with
# the compiler, a dependency or idem's own code, so they went stale without
# a sign (112 of 156 were gone a round later), and ordering them bought
# nothing measurable (issue 26). C names change only with SQLite's or the C
# library's version, or when a usual call starts running other C code: the
# layout test (tests/cli/layout.rs, in the plain `cargo test`) fails when a
# listed name is no longer in the program. Run this after such a change,
# or when the calls a replay or a first run makes have changed.
# BENCH_IDEM=PATH traces that release binary instead of building one.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
command -v valgrind >/dev/null || { echo "hot-symbols.sh: needs valgrind" >&2; exit 1; }
if [ -n "${BENCH_IDEM:-}" ]; then
    idem=$BENCH_IDEM
else
    (cd "$root" && cargo build --release --quiet)
    host=$(rustc -vV | sed -n 's/^host: //p')
    idem=$root/target/$host/release/idem
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"

n=0
# trace DB ARGS...: one idem call under callgrind; its exit status is
# ignored (a failing command is one of the calls traced).
trace() {
    n=$((n + 1))
    valgrind --tool=callgrind --demangle=no --callgrind-out-file="$work/$n.%p.cg" \
        "$idem" --db "$work/$1" "${@:2}" >/dev/null 2>&1 || true
}
output='echo out; echo err >&2; exit 3'
# A store with some records, so that lookups descend a B-tree of more than one level.
for i in $(seq 300); do "$idem" --db "$work/store.db" run --key "record-$i" -- true; done
"$idem" --db "$work/store.db" run --key done -- true
"$idem" --db "$work/store.db" run --key output -- sh -c "$output" >/dev/null 2>&1 || true
# The most frequent calls first: each one's functions then lie together.
trace store.db run --key done -- true
trace store.db run --key output -- sh -c "$output"
trace store.db run --key fresh -- true
trace store.db run --key fresh-output -- sh -c "$output"
trace new.db run --key first -- true

# callgrind names a function at its first mention (fn= or cfn=, "(id) name")
# and marks recursion with a 'N suffix. Functions keep the order of the
# first trace that ran them.
nm "$idem" | awk '{print $3}' | sort -u >"$work/symbols"
# Under valgrind, glibc picks the variant of a string function (memcpy,
# strlen) made for valgrind's virtual CPU: every variant of those goes in
# too, so that the ones a real CPU picks are there.
variants() {
    sed -n -E 's/^__([a-z0-9]+)_(sse|avx|evex).*/\1/p' | sort -u |
        sed 's/^memcpy$/memmove/; s/^mempcpy$/memmove/' | sort -u |
        while read -r base; do grep -E "^__${base}_(sse|avx|evex)" "$work/symbols" || true; done
}
# Rust's names: legacy (_ZN...17h<hash>E) and v0 (_R...) mangling.
without_rust() { grep -v -E '^_R|17h[0-9a-f]{16}E$' || true; }
out=$root/link/hot-symbols.txt
{
    cat <<'HEAD'
# The C functions that ordinary `idem run` calls execute, those of the
# most frequent calls (replays, then first runs) first; Rust's, whose
# names change with every compiler, are left out. Written by
# bench/hot-symbols.sh; build.rs passes it to the linker (lld's
# --symbol-ordering-file), which places them side by side;
# tests/cli/layout.rs checks that they are all still there.
HEAD
    # Each trace adds the functions no earlier one ran, sorted by name (the
    # order callgrind lists them in varies from run to run).
    : >"$work/traced"
    for ((i = 1; i <= n; i++)); do
        cat "$work/$i".*.cg | sed -n -E 's/^c?fn=\([0-9]+\) (.*)/\1/p' |
            sed -E "s/'[0-9]+$//" | grep -v -E '^(\(|0x)' | without_rust | LC_ALL=C sort -u |
            { grep -v -x -F -f "$work/traced" || true; } >"$work/new"
        cat "$work/new" >>"$work/traced"
    done
    # Run natively at start-up, not under valgrind.
    printf "%s\n" _dl_new_object _dl_setup_hash frame_dummy
    variants <"$work/traced" | grep -v -x -F -f "$work/traced"
    cat "$work/traced"
} >"$out"
echo "hot-symbols.sh: $(grep -vc '^#' "$out") functions in link/hot-symbols.txt" >&2
