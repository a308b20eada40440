#!/usr/bin/env bash
# bench/group.sh DB KEY CALLERS SECONDS COUNT-FILE
#
# Starts CALLERS `idem run --on-duplicate wait` on one KEY at once, each with
# a child that appends a line to COUNT-FILE and sleeps SECONDS, and waits for
# all of them. Fails unless every caller exits 0 and the child ran once.
set -euo pipefail
db=$1 key=$2 callers=$3 secs=$4 count=$5
: >"$count"
pids=()
for ((c = 0; c < callers; c++)); do
    idem --db "$db" run --key "$key" --on-duplicate wait -- \
        sh -c 'echo ran >>"$1"; sleep "$2"' child "$count" "$secs" >/dev/null &
    pids+=($!)
done
for pid in "${pids[@]}"; do
    wait "$pid"
done
runs=$(wc -l <"$count")
if [ "$runs" -ne 1 ]; then
    echo "group.sh: the child ran $runs times on key $key" >&2
    exit 1
fi
