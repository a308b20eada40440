#!/usr/bin/env bash
# Checks the lease model (lease.pml, see README.md) with SPIN: the current
# protocol must pass every property, and each switch back to an old rule
# (or on to a fault no lease covers) must fail with a counterexample, which
# is printed. Needs spin and a C compiler. Exits non-zero on any surprise.
#
#   model/check.sh            every check
#   model/check.sh NAME...    only those (names as printed)
set -euo pipefail
cd "$(dirname "$0")"

command -v spin >/dev/null || { echo "check.sh: spin is not installed (apt-get install spin)" >&2; exit 2; }
CC=${CC:-cc}
# The lease in ticks: 10, where L/3 and L/6 round down (README.md "Time").
SCALE=${SCALE:--DL=10}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failures=0

# check NAME EXPECT FLAGS...: EXPECT is "pass", "pass-live" (the liveness
# property, with weak fairness), or the pattern a failure must match.
check() {
    local name=$1 expect=$2
    shift 2
    if [ "${#wanted[@]}" -gt 0 ] && [[ ! " ${wanted[*]} " =~ " $name " ]]; then
        return
    fi
    local dir=$work/$name
    mkdir "$dir"
    cp lease.pml "$dir/"
    local start=$SECONDS
    (
        cd "$dir"
        spin -a $SCALE "$@" lease.pml >spin.out 2>&1 || { cat spin.out; exit 1; }
        if [ "$expect" = pass-live ] || [ "$expect" = acceptance ]; then
            $CC -O2 -w -DMEMLIM=2048 -DNFAIR=3 -o pan pan.c || exit 1
            ./pan -m1000000 -a -f >pan.out 2>&1 || true
        else
            # A counterexample comes early: not worth optimising for.
            local opt=-O2
            [ "$expect" = pass ] || opt=-O0
            $CC $opt -w -DMEMLIM=2048 -DSAFETY -o pan pan.c || exit 1
            ./pan -m1000000 >pan.out 2>&1 || true
        fi
    ) || { echo "FAIL $name: could not build the verifier"; failures=$((failures + 1)); return; }
    local out=$dir/pan.out
    local errors states
    errors=$(sed -n 's/.*errors: \([0-9]*\).*/\1/p' "$out")
    states=$(sed -n 's/^ *\([0-9.e+]*\) states, stored.*/\1/p' "$out")
    local took=$((SECONDS - start))s
    if grep -qE 'out of memory|max search depth too small|Search not completed' "$out" && [ "${errors:-1}" = 0 ]; then
        echo "FAIL $name: the search did not complete ($took)"
        grep -E 'out of memory|max search depth|Search not completed' "$out"
        failures=$((failures + 1))
        return
    fi
    case $expect in
    pass | pass-live)
        if [ "$errors" = 0 ]; then
            echo "ok   $name: holds ($states states, $took)"
        else
            echo "FAIL $name: $(grep -m1 -E 'violated|cycle' "$out")"
            (cd "$dir" && spin -t $SCALE "$@" lease.pml | grep -E 't=|violated' | tail -40)
            failures=$((failures + 1))
        fi
        ;;
    *)
        local found
        found=$(grep -m1 -E 'assertion violated|acceptance cycle' "$out" || true)
        if [ "${errors:-0}" != 0 ] && grep -qE "$expect" <<<"$found"; then
            echo "ok   $name: fails as it should, ${found#pan:1: } ($took); counterexample:"
            (cd "$dir" && spin -t $SCALE "$@" lease.pml | grep -E 't=' | sed 's/^ */      /' | tail -30)
        else
            echo "FAIL $name: expected a counterexample matching '$expect', got: ${found:-none}"
            failures=$((failures + 1))
        fi
        ;;
    esac
}

wanted=("$@")
total=$SECONDS

# The protocol as SPEC.md "Leases" has it: every property holds.
check rerun pass
check block pass -DBLOCK
check job-stop pass -DJOBSTOP
check three-callers pass -DN=3 -DNO_DRIFT -DNO_LOSS
check liveness pass-live -DLIVE

# Each old rule brings back an overlap the issue saw (issue 23's items).
check legacy overlap -DLEGACY
check legacy-anchor overlap -DLEGACY_ANCHOR                   # item 6
check legacy-no-stop-partition overlap -DLEGACY_NO_STOP       # item 2
check legacy-no-stop-stalled overlap -DLEGACY_NO_STOP -DNO_LOSS # items 1, 4
check legacy-late-start 'overlap|after_done' -DLEGACY_LATE_START # item 3
check legacy-orphan overlap -DLEGACY_ORPHAN                   # item 5
# Without fencing tokens a stale owner's write lands on the newer claim.
check no-fencing stale_write -DNO_FENCING
# What no lease closes (SPEC.md "Leases", last paragraph): fencing
# downstream does.
check freeze-host overlap -DFREEZE_HOST
check freeze-idem overlap -DFREEZE_IDEM
# Under --on-crash block a crashed record stays until someone looks.
check block-stays acceptance -DLIVE -DBLOCK

echo "model/check.sh: $((SECONDS - total))s, $failures unexpected"
[ "$failures" = 0 ]
