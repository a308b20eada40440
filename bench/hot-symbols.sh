#!/usr/bin/env bash
# bench/hot-symbols.sh: rewrites link/hot-symbols.txt (issues 15, 26), or
# with --check, says whether a release build still has what it lists.
#
# The file lists the functions that ordinary `idem run` calls execute (a
# replay, a first run, with and without output, and the call that creates a
# store), the most frequent first. build.rs hands it to the linker (lld's
# --symbol-ordering-file), which lays those functions out side by side: a
# replay then takes 3-8 % less time on an idle machine and 17-28 % at load
# 8, a first run 2-3 % and 7-16 % (issue 26). The names come from
# valgrind's callgrind on a release build.
#
# The C functions' names (SQLite's, the C library's) change only with their
# versions; tests/cli/layout.rs, in the plain `cargo test`, fails when one
# is gone. Rust's names carry a hash that changes with the compiler, a
# dependency or the function's own code, and a debug build's hashes differ
# from a release build's: `--check` builds for release and fails when more
# than a tenth of the listed Rust functions are gone (a toolchain update
# takes them all) or when the listed functions no longer lie together. Run
# this without --check after such a change; it is the one step that brings
# the list up to date (a release build, then seconds of callgrind).
# BENCH_IDEM=PATH uses that release binary instead of building one.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
list=$root/link/hot-symbols.txt
check=
[ "${1:-}" = --check ] && check=1
[ -n "$check" ] || command -v valgrind >/dev/null ||
    { echo "hot-symbols.sh: needs valgrind" >&2; exit 1; }
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

if [ -n "$check" ]; then
    nm --defined-only --print-size "$idem" >"$work/defined"
    python3 - "$list" "$work/defined" <<'EOF'
import re, sys
listed = [l.strip() for l in open(sys.argv[1]) if l.strip() and not l.startswith("#")]
have, code = set(), {}
for line in open(sys.argv[2]):
    f = line.split()
    have.add(f[-1])
    if len(f) == 4 and f[2] in "tT":
        code[f[3]] = (int(f[0], 16), int(f[1], 16))
rust = [n for n in listed if re.search(r"^_R|17h[0-9a-f]{16}E$", n)]
rust_gone = [n for n in rust if n not in have]
# A C name with a dot is a C compiler's clone (name.part.0): it may go.
c_gone = [n for n in listed if n not in rust and "." not in n and n not in have]
found = [code[n] for n in listed if n in code]
size = sum(s for _, s in found)
span = max(a + s for a, s in found) - min(a for a, _ in found) if found else 0
print(f"hot-symbols.sh: {len(rust_gone)} of {len(rust)} Rust functions gone, "
      f"{len(c_gone)} C functions gone {c_gone[:5]}; the {len(found)} found "
      f"({size} bytes) span {span} bytes", file=sys.stderr)
if len(rust_gone) * 10 > len(rust) or c_gone or not found or span > 2 * size:
    sys.exit("hot-symbols.sh: link/hot-symbols.txt is stale: run bench/hot-symbols.sh")
EOF
    exit
fi

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
out=$list
{
    cat <<'HEAD'
# Functions that ordinary `idem run` calls execute, those of the most
# frequent calls (replays, then first runs) first. Written by
# bench/hot-symbols.sh; build.rs passes it to the linker (lld's
# --symbol-ordering-file), which places them side by side.
# tests/cli/layout.rs checks the C names; `bench/hot-symbols.sh --check`
# (in CI) the Rust names, whose hashes only a release build has.
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
