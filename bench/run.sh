#!/usr/bin/env bash
# bench/run.sh: idem against the bare command, flock and bkt (issue 6).
#
# One command from a clean clone: builds idem in release mode, installs
# hyperfine (Debian package) and bkt 0.8.2 (into bench/out/bkt) when missing,
# measures every figure side by side in one run and prints a markdown table
# with each figure's ratio to its baseline. Everything it writes goes under
# bench/out/ (gitignored); the table is also left in bench/out/results.md.
#
# Timed commands run without a shell (hyperfine -N) and interleaved: one call
# of each command per round (--parameter-scan), so load from other users of
# the machine falls on all of them alike. BENCH_RUNS (default 300) sets the
# rounds of the small-command group; BENCH_ROUNDS (default 5) those of the
# slow groups. BENCH_RECORDS (default 1000000) sizes the big stores.
# BENCH_IDEM=PATH measures another idem binary (an older build, say) with
# the same script; the table then names that binary's version.
# valgrind's callgrind, when installed, counts the user-space instructions
# of a replay and a first run (and of bkt's hit and miss): unlike the times,
# those do not move with the machine's load.
# BENCH_BEFORE=PATH also times that binary's replay and first run in the
# same interleaved rounds as the rest, for a before/after comparison.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
out=$root/bench/out
work=$out/work
runs=${BENCH_RUNS:-300}
rounds=${BENCH_ROUNDS:-5}
records=${BENCH_RECORDS:-1000000}

say() { printf '== %s\n' "$*" >&2; }

say "building idem (release)"
(cd "$root" && cargo build --release --quiet)
# .cargo/config.toml builds for the host's target triple, named.
host=$(rustc -vV | sed -n 's/^host: //p')

if ! command -v hyperfine >/dev/null; then
    say "installing hyperfine"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo apt-get install -y hyperfine >/dev/null ||
        { $sudo apt-get update >/dev/null && $sudo apt-get install -y hyperfine >/dev/null; }
fi
if [ ! -x "$out/bkt/bin/bkt" ]; then
    say "installing bkt 0.8.2 into bench/out/bkt"
    cargo install bkt --version 0.8.2 --locked --root "$out/bkt" --quiet
fi

rm -rf "$work"
mkdir -p "$work"
cd "$work"
mkdir -p "$work/bin"
ln -sf "${BENCH_IDEM:-$root/target/$host/release/idem}" "$work/bin/idem"
before=()
if [ -n "${BENCH_BEFORE:-}" ]; then
    ln -sf "$BENCH_BEFORE" "$work/bin/idem-before"
    before=('idem-before --db before.db run --key hot -- true'
        'idem-before --db before.db run --key first-{i} -- true')
fi
export PATH=$work/bin:$out/bkt/bin:$PATH
export BKT_CACHE_DIR=$work/bkt
unset IDEM_DB IDEM_TTL
figures=$work/figures.tsv
: >"$figures"
log=$work/hyperfine.log
fill() { python3 "$root/bench/fill_store.py" "$@"; }
# gnu_time FORMAT COMMAND...: what GNU time's FORMAT says of one command.
gnu_time() { /usr/bin/time -f "$1" -o "$work/time.out" "${@:2}" >/dev/null && cat "$work/time.out"; }
# Wall seconds and peak RSS in KiB of one command: "SECONDS KIB".
measure() { gnu_time '%e %M' "$@"; }

say "preparing stores: empty, and $records records"
idem --db empty.db run --key hot -- true
idem --db big.db run --key hot -- true
fill big.db "$records"
bkt --ttl 1d -- true
for i in 1 2 3; do idem --db empty.db run --key "warm-$i" -- true; done
if [ -n "${BENCH_BEFORE:-}" ]; then
    for i in 1 2 3; do idem-before --db before.db run --key hot -- true; done
fi

say "1-4: replay, first run, flock, bkt, big store ($runs interleaved rounds)"
hyperfine -N --runs 1 -P i 1 "$runs" --export-json small.json \
    'true' \
    'idem --db empty.db run --key hot -- true' \
    'bkt --ttl 1d -- true' \
    'idem --db empty.db run --key first-{i} -- true' \
    'flock lock true' \
    'bkt --ttl 1d --force -- true' \
    'idem --db big.db run --key hot -- true' \
    'idem --db big.db run --key first-{i} -- true' "${before[@]}" >>"$log" 2>&1
row() { printf 'time\t%s\t%s\tsmall.json\t%s\tsmall.json\t%s\t%s\n' "$@" >>"$figures"; }
row 1 "replay of a completed key" 'idem --db empty.db run --key hot -- true' true -
row 2a "first run (fresh key, durable)" 'idem --db empty.db run --key first-{i} -- true' true -
row 2b "first run (fresh key, durable)" 'idem --db empty.db run --key first-{i} -- true' 'flock lock true' -
row 2c "first run (fresh key, durable)" 'idem --db empty.db run --key first-{i} -- true' 'bkt --ttl 1d --force -- true' 1.3
row 2d "bkt miss (no fsync), for scale" 'bkt --ttl 1d --force -- true' true -
row 3 "replay vs bkt's cached hit" 'idem --db empty.db run --key hot -- true' 'bkt --ttl 1d -- true' 1.0
row 3b "bkt cached hit, for scale" 'bkt --ttl 1d -- true' true -
row 4a "replay, $records-record store" 'idem --db big.db run --key hot -- true' 'idem --db empty.db run --key hot -- true' 1.1
row 4b "first run, $records-record store" 'idem --db big.db run --key first-{i} -- true' 'idem --db empty.db run --key first-{i} -- true' 1.1
if [ -n "${BENCH_BEFORE:-}" ]; then
    row 1x "replay, before ($BENCH_BEFORE)" "${before[0]}" true -
    row 1y "replay, after vs before" 'idem --db empty.db run --key hot -- true' "${before[0]}" -
    row 2x "first run, before" "${before[1]}" true -
    row 2y "first run, after vs before" 'idem --db empty.db run --key first-{i} -- true' "${before[1]}" -
fi

say "5: replay of a 48 MiB output vs cat"
head -c 48MiB /dev/urandom >big.out
idem --db empty.db run --key big --max-output 64MiB -- cat big.out >/dev/null
read -r _ capture_kib < <(measure idem --db empty.db run --key big-capture --max-output 64MiB -- cat big.out)
hyperfine -N --runs 1 -P i 1 $((rounds * 8)) --output=pipe --export-json big.json \
    'cat big.out' 'idem --db empty.db run --key big --max-output 64MiB -- cat big.out' \
    'idem --db empty.db logs big' >>"$log" 2>&1
printf 'time\t5\treplay of 48 MiB (to a pipe)\tbig.json\t%s\tbig.json\tcat big.out\t1.5\n' \
    'idem --db empty.db run --key big --max-output 64MiB -- cat big.out' >>"$figures"
printf 'time\t5d\tidem logs of 48 MiB (to a pipe)\tbig.json\t%s\tbig.json\tcat big.out\t1.5\n' \
    'idem --db empty.db logs big' >>"$figures"
# Into a file (each call truncates it first, as `>` would).
hyperfine -N --runs 1 -P i 1 $((rounds * 4)) --export-json big-file.json \
    "sh -c 'exec cat big.out >out.file'" \
    "sh -c 'exec idem --db empty.db run --key big --max-output 64MiB -- cat big.out >out.file'" \
    >>"$log" 2>&1
printf 'time\t5e\treplay of 48 MiB (into a file)\tbig-file.json\t%s\tbig-file.json\t%s\t1.5\n' \
    "sh -c 'exec idem --db empty.db run --key big --max-output 64MiB -- cat big.out >out.file'" \
    "sh -c 'exec cat big.out >out.file'" >>"$figures"
read -r _ cat_kib < <(measure cat big.out)
rss_kib=0
for _ in 1 2 3; do
    read -r _ kib < <(measure idem --db empty.db run --key big --max-output 64MiB -- cat big.out)
    [ "$kib" -gt "$rss_kib" ] && rss_kib=$kib
done
met=$([ "$rss_kib" -le $((24 * 1024)) ] && echo yes || echo '**no**')
printf 'plain\t5b\tpeak RSS, replay of 48 MiB\t%s MiB\tcat: %s MiB\t\t≤ 24 MiB\t%s\n' \
    "$((rss_kib / 1024))" "$((cat_kib / 1024))" "$met" >>"$figures"
# The capture buffer itself never passes --max-output; this is the whole
# process at its peak, SQLite's copies of the output included.
printf 'plain\t5c\tpeak RSS, first run capturing 48 MiB (--max-output 64MiB)\t%s MiB\t\t\t\t\n' \
    "$((capture_kib / 1024))" >>"$figures"

say "6: 64 callers on one key with a 1 s child, --on-duplicate wait ($rounds rounds)"
hyperfine -N --runs 1 -P i 1 "$rounds" --export-json group.json \
    "bash $root/bench/group.sh empty.db group-{i} 64 1 count-{i}" \
    "sh -c 'echo ran >>\"\$1\"; sleep \"\$2\"' child alone.count 1" >>"$log" 2>&1
python3 - "$figures" <<'EOF'
import json, statistics, sys
results = json.load(open("group.json"))["results"]
group = [t for r in results if "group.sh" in r["command"] for t in r["times"]]
alone = [t for r in results if "group.sh" not in r["command"] for t in r["times"]]
g, a = statistics.mean(group), statistics.mean(alone)
extra = (g - a) * 1000
sd = statistics.stdev(group) * 1000 if len(group) > 1 else 0.0
with open(sys.argv[1], "a") as f:
    f.write(f"plain\t6\t64 callers, wait, 1 s child: whole group\t{g * 1000:.0f} ± {sd:.0f} ms"
            f"\tchild alone: {a * 1000:.0f} ms\t+{extra:.0f} ms\t≤ child + 100 ms"
            f"\t{'yes' if extra <= 100 else '**no**'}\n")
EOF

say "7: purge and inspect of $records records"
if idem purge --help >/dev/null 2>&1 && idem inspect --help >/dev/null 2>&1; then
    idem --db purge.db run --key hot -- true
    fill purge.db "$records" --expired
    read -r secs kib < <(measure idem --db purge.db purge --expired)
    printf 'plain\t7a\tidem purge --expired of %s expired records\t%s s, %s MiB\t\t\t≤ 5 s\t%s\n' \
        "$records" "$secs" "$((kib / 1024))" \
        "$(python3 -c "print('yes' if $secs <= 5 else '**no**')")" >>"$figures"
    idem --db small.db run --key hot -- true
    fill small.db 10000
    read -r small_secs small_kib < <(measure idem --db small.db inspect --json)
    read -r secs kib < <(measure idem --db big.db inspect --json)
    printf 'plain\t7b\tidem inspect --json of %s records\t%s s, %s MiB\t10,000 records: %s s, %s MiB\t%s× RSS\tflat memory\t%s\n' \
        "$records" "$secs" "$((kib / 1024))" "$small_secs" "$((small_kib / 1024))" \
        "$(python3 -c "print(f'{$kib / $small_kib:.2f}')")" \
        "$([ "$kib" -le $((small_kib * 3 / 2)) ] && echo yes || echo '**no**')" >>"$figures"
else
    printf 'plain\t7\tpurge / inspect of %s records\tn/a: this idem has no purge or inspect\t\t\t\t\n' \
        "$records" >>"$figures"
fi

say "8: user-space instructions (callgrind), the same from run to run"
# Each on a fresh copy of the store as the timed rounds left it, so the WAL
# the call finds is the one a call in those rounds found.
instructions() { # instructions COMMAND...: prints the count, e.g. 871939
    # Summed over every process the call made: idem forks its child (and
    # that child its watcher) before the exec, bkt its command; valgrind
    # counts each of them apart.
    valgrind --tool=callgrind --callgrind-out-file=/dev/null "$@" 2>&1 >/dev/null |
        awk '/Collected/ { n += $4 } END { print n }'
}
if command -v valgrind >/dev/null; then
    cp empty.db cg.db
    [ -e empty.db-wal ] && cp empty.db-wal cg.db-wal
    replay_ir=$(instructions idem --db cg.db run --key hot -- true)
    first_ir=$(instructions idem --db cg.db run --key cg-first -- true)
    hit_ir=$(instructions bkt --ttl 1d -- true)
    miss_ir=$(instructions bkt --ttl 1d --force -- true)
    ratio() { python3 -c "print(f'{$1 / $2:.2f}×')"; }
    printf 'plain\t8a\tinstructions, replay\t%s\tbkt hit: %s\t%s\t≤ 900,000\t%s\n' \
        "$replay_ir" "$hit_ir" "$(ratio "$replay_ir" "$hit_ir")" \
        "$([ "$replay_ir" -le 900000 ] && echo yes || echo '**no**')" >>"$figures"
    printf 'plain\t8b\tinstructions, first run\t%s\tbkt miss: %s\t%s\t\t\n' \
        "$first_ir" "$miss_ir" "$(ratio "$first_ir" "$miss_ir")" >>"$figures"
else
    printf 'plain\t8\tinstructions\tn/a: valgrind is not installed\t\t\t\t\n' >>"$figures"
fi
# Page faults (minor: the program's pages mapped as it touches them), and
# how many of the functions link/hot-symbols.txt asks the linker to place
# together this build has (fewer after a compiler or dependency upgrade, or
# when the hot code changed: `bench/hot-symbols.sh --check` then fails, and
# bench/hot-symbols.sh rewrites the list).
faults() { gnu_time '%R' "$@"; }
printf 'plain\t8c\tpage faults, replay\t%s\tbkt hit: %s\t\t\t\n' \
    "$(faults idem --db empty.db run --key hot -- true)" "$(faults bkt --ttl 1d -- true)" >>"$figures"
hot=$root/link/hot-symbols.txt
listed=$(grep -vc '^#' "$hot")
present=$(nm --defined-only "$work/bin/idem" | awk '{ print $3 }' | sort -u |
    grep -c -x -F -f <(grep -v '^#' "$hot") || true)
printf 'plain\t8d\tfunctions of link/hot-symbols.txt in this build\t%s of %s\t\t\t\t\n' \
    "$present" "$listed" >>"$figures"

{
    echo "Machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)," \
        "kernel $(uname -r), $(df -T "$work" | awk 'NR == 2 { print $2 " on " $1 }');" \
        "load average $(cut -d' ' -f1-3 /proc/loadavg) at the end;" \
        "idem ${BENCH_IDEM:-$(git -C "$root" describe --always --dirty)}, hyperfine $(hyperfine --version | cut -d' ' -f2)."
    echo
    python3 "$root/bench/table.py" "$figures"
} | tee "$out/results.md"
