#!/usr/bin/env bash
# bench/hot-symbols.sh: rewrites link/hot-symbols.txt (issue 15).
#
# The file lists the functions that ordinary `idem run` calls execute (a
# replay, a first run, with and without output, and the call that creates a
# store), the most frequent first. build.rs hands it to the linker (lld's
# --symbol-ordering-file), which lays those functions out side by side: a
# replay then maps 16 pages of code instead of 57, and takes about 15 % less
# time. The names come from valgrind's callgrind on a release build. Rust's
# names carry a hash that changes with the compiler or a dependency's
# version; a name the linker no longer finds is skipped (idem is only
# slower), and bench/run.sh reports how many still match. Run this after
# such an upgrade.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
command -v valgrind >/dev/null || { echo "hot-symbols.sh: needs valgrind" >&2; exit 1; }
(cd "$root" && cargo build --release --quiet)
host=$(rustc -vV | sed -n 's/^host: //p')
idem=$root/target/$host/release/idem
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
# strlen) made for valgrind's virtual CPU, and sha2 its portable code: every
# variant of those goes in too, so that the ones a real CPU picks are there.
variants() {
    sed -n -E 's/^__([a-z0-9]+)_(sse|avx|evex).*/\1/p' | sort -u |
        sed 's/^memcpy$/memmove/; s/^mempcpy$/memmove/' | sort -u |
        while read -r base; do grep -E "^__${base}_(sse|avx|evex)" "$work/symbols" || true; done
    grep -E '4sha26sha256' "$work/symbols" || true
}
out=$root/link/hot-symbols.txt
{
    cat <<'HEAD'
# Functions that ordinary `idem run` calls execute, those of the most
# frequent calls (replays, then first runs) first. Written by
# bench/hot-symbols.sh; build.rs passes it to the linker (lld's
# --symbol-ordering-file), which places them side by side.
HEAD
    # Each trace adds the functions no earlier one ran, sorted by name (the
    # order callgrind lists them in varies from run to run).
    : >"$work/traced"
    for ((i = 1; i <= n; i++)); do
        cat "$work/$i".*.cg | sed -n -E 's/^c?fn=\([0-9]+\) (.*)/\1/p' |
            sed -E "s/'[0-9]+$//" | grep -v -E '^(\(|0x)' | LC_ALL=C sort -u |
            { grep -v -x -F -f "$work/traced" || true; } >"$work/new"
        cat "$work/new" >>"$work/traced"
    done
    # Run natively at start-up, not under valgrind.
    printf "%s\n" _dl_new_object _dl_setup_hash frame_dummy
    variants <"$work/traced" | grep -v -x -F -f "$work/traced"
    cat "$work/traced"
} >"$out"
echo "hot-symbols.sh: $(grep -vc '^#' "$out") functions in link/hot-symbols.txt" >&2
