/*
 * The shared stores' claim / lease / fencing protocol (PostgreSQL, Redis),
 * as SPEC.md "Leases", "Crashed owners" and "Stores beyond one machine"
 * define it, checked by SPIN. README.md maps each element to the code;
 * check.sh runs every configuration.
 *
 * Time is discrete: one tick of the store's clock is TICK_MS. Every
 * caller keeps its own local clock, which may run 10 % slow or fast
 * against the store's. The store stamps lease_until = its clock + L at a
 * claim or renewal and judges takeovers by its own clock; each claim gets
 * a fencing token (here: the claimer's number, which is enough, since a
 * caller's request is replaced by its next one), and a write with another
 * token is refused.
 *
 * Faults: any request or answer may be delayed (a stalled server, a
 * locked table, a slow network) or lost (a partition); a caller may crash
 * at every step (idem dies: its command's group is killed at once), and
 * its job may be stopped and continued (Ctrl-Z, SIGSTOP). Switches (-D):
 *   N=3            three callers instead of two
 *   BLOCK          --on-crash block instead of rerun
 *   LIVE           callers call again; lost messages are bounded: for the
 *                  liveness property (ltl taken_over)
 *   NO_LOSS        no message is lost, only delayed
 *   FREEZE_HOST    the caller's whole host freezes and resumes (the one
 *                  hole no lease closes: fencing tokens downstream do)
 *   FREEZE_IDEM    idem alone freezes while COMMAND runs on (a debugger)
 *   NO_FENCING     the store does not check tokens
 *   LEGACY_ANCHOR  the lease timed from the answer's arrival; the next
 *                  renewal a third of a lease after the previous returned
 *   LEGACY_NO_STOP COMMAND never stopped for the lease; a refused renewal
 *                  only stops renewing
 *   LEGACY_GIVE_UP renewals stop for good after failing for a whole lease,
 *                  and the outcome is then not written (needs NO_STOP)
 *   LEGACY_LATE_START  COMMAND started however late the claim's answer
 *   LEGACY_ORPHAN  SIGKILL of idem leaves COMMAND running
 *   LEGACY_KEEPER  renewals wait behind journal appends (not on time) and
 *                 stop when COMMAND ends
 *   LEGACY         all the LEGACY_ switches: today's (7729ac2) behaviour
 */

/* ---- The lease's numbers, as src/lease.rs has them (a test there
 * compares these lines with its constants). ---- */
#define TICK_MS 1000
#ifndef L
#define L 30
#endif
#define RENEWALS_PER_LEASE 3
#define DEAD_BY_TENTHS 9
#define GRACE_PER_LEASE 6
#define MAX_GRACE_MS 5000
/* Derived from them, in whole ticks (rounded down where L is not a
 * multiple of 30: see README.md). */
#define RENEW_EVERY (L / RENEWALS_PER_LEASE)
#define ATTEMPT_LIMIT (L / RENEWALS_PER_LEASE)
#define GRACE (MAX_GRACE_MS / TICK_MS < L / GRACE_PER_LEASE -> MAX_GRACE_MS / TICK_MS : L / GRACE_PER_LEASE)
#define DEAD_BY (L * DEAD_BY_TENTHS / 10)
#define STOP_AFTER (DEAD_BY - GRACE)

/* A caller's clocks count store ticks; what its local clock shows after
 * s of them, at worst: 10 % less (slow) or more (fast). */
#define LOCAL(i, s) (drift[i] == SLOW -> (s) - ((s) + 9) / 10 : \
                     (drift[i] == FAST -> (s) + (s) / 10 : (s)))

#ifdef LEGACY
#define LEGACY_ANCHOR
#define LEGACY_NO_STOP
#define LEGACY_GIVE_UP
#define LEGACY_LATE_START
#define LEGACY_ORPHAN
#define LEGACY_KEEPER
#endif
#if defined(LEGACY_GIVE_UP) && !defined(LEGACY_NO_STOP)
#error LEGACY_GIVE_UP needs LEGACY_NO_STOP (the stop deadline comes first)
#endif

#ifndef N
#define N 2
#endif
#define MAXN 3
/* Under LIVE, faults (lost messages, crashes) are finite. */
#ifndef MAX_FAULTS
#define MAX_FAULTS 2
#endif
#ifdef LIVE
#define FAULT (faults < MAX_FAULTS)
#define FAULTED faults++
#else
#define FAULT true
#define FAULTED skip
#endif

/* The record's status. */
#define FREE 0 /* absent, failed or released: the next claim runs */
#define RUNNING 1 /* in_progress */
#define DONE 2 /* completed (its ttl never runs out here) */

/* Requests, one slot per caller (a new one replaces one not yet
 * applied), and answers. */
mtype = { none, claim, renewal, finish, release,
          granted, busy, replay, blocked, ok, refused };
#define R_NONE none
#define R_CLAIM claim
#define R_RENEW renewal
#define R_FINISH finish
#define R_RELEASE release
#define A_NONE none
#define A_GRANTED granted
#define A_BUSY busy
#define A_REPLAY replay
#define A_BLOCKED blocked
#define A_OK ok
#define A_REFUSED refused

/* A caller's phase. */
#define IDLE 0 /* not called yet */
#define CLAIMING 1
#define OWNING 2 /* COMMAND started, renewing */
#define FINISHING 3 /* COMMAND ended by itself: writing the outcome */
#define GONE 4 /* idem has exited (or crashed) */

/* Its command. */
#define C_NONE 0
#define C_RUN 1
#define C_TERM 2 /* SIGTERM sent for the lease: still running */

/* Its local clock's drift. */
#define EXACT 0
#define SLOW 1
#define FAST 2

/* Freezes. */
#define HOST_FROZEN 1
#define IDEM_FROZEN 2

/* Counters stop where no threshold lies beyond (a slow clock's L). */
#define SINCE_MAX (L + L / 10 + 1)
#define AGE_MAX (L + L / 10 + 1)

/* The store. */
byte rec_status;
byte rec_owner; /* the token: 1 + the claimer's number; 0 none */
byte lease_left; /* store ticks until lease_until; 0: run out */

/* The network. */
mtype req[MAXN] = none; /* claim, outcome, release */
mtype ans[MAXN] = none;
mtype kreq[MAXN] = none; /* renewals: the keeper's own connection */
mtype kans[MAXN] = none;
#ifdef LIVE
byte faults;
#endif

/* The callers. */
byte phase[MAXN];
byte cmd[MAXN];
byte age[MAXN]; /* store ticks since the last request was sent */
byte since[MAXN]; /* store ticks since the send of the last accepted one */
byte drift[MAXN];
byte frozen[MAXN];
bool stopped[MAXN]; /* job stopped: idem and COMMAND */
#if defined(FREEZE_HOST) || defined(FREEZE_IDEM)
bool was_frozen[MAXN]; /* one freeze each is enough to show the hole */
#endif
#ifdef LEGACY_ANCHOR
bool waiting[MAXN]; /* a renewal attempt is under way */
#endif
#ifdef LEGACY_NO_STOP
bool lost[MAXN]; /* renewals given up: the outcome will not be written */
#endif

/* What the properties watch. */
bool overlap; /* two commands of the key ran at once */
bool after_done; /* a command started after the record completed */
bool stale_write; /* a write under an old token changed the record */
bool twice_blocked; /* under BLOCK, COMMAND ran twice */
bool completed;
byte execs;
bool orphaned; /* in_progress, and its owner is gone */

hidden byte each;
/* The store's clock, for the counterexamples' printout only (hidden: not
 * part of the state). */
hidden short stime;

/* idem cannot act: stopped or frozen. */
#define HELD(i) (stopped[i] || frozen[i] != 0)
/* COMMAND of caller i is executing. */
#define EXEC(i) (cmd[i] != C_NONE && !stopped[i] && frozen[i] != HOST_FROZEN)
#define OTHERS_EXEC(i) ((i != 0 && EXEC(0)) || (i != 1 && EXEC(1)) || (i != 2 && EXEC(2)))

#ifdef LEGACY_NO_STOP
#define RENEWING(i) (!lost[i])
#else
#define RENEWING(i) true
#endif
/* Renewals go on until the outcome is recorded (today's keeper stopped
 * with COMMAND). */
#ifdef LEGACY_KEEPER
#define KEEPING(i) (phase[i] == OWNING)
#else
#define KEEPING(i) (phase[i] == OWNING || phase[i] == FINISHING)
#endif
#ifdef LEGACY_ANCHOR
#define RENEW_DUE(i) (KEEPING(i) && !HELD(i) && RENEWING(i) && \
    ((!waiting[i] && LOCAL(i, age[i]) >= RENEW_EVERY) || \
     (waiting[i] && LOCAL(i, age[i]) >= ATTEMPT_LIMIT)))
#else
#define RENEW_DUE(i) (KEEPING(i) && !HELD(i) && RENEWING(i) && LOCAL(i, age[i]) >= RENEW_EVERY)
#endif
/* The keeper renews on time: time does not pass while a renewal is due. */
#ifdef LEGACY_KEEPER
#define KEEPER_DUE false
#else
#define KEEPER_DUE (RENEW_DUE(0) || RENEW_DUE(1) || RENEW_DUE(2))
#endif
/* A lost outcome is sent again at once (any later time is the network's
 * delay). */
#define RETRY_DUE(i) (phase[i] == FINISHING && req[i] == none && ans[i] == none)
#define RETRIES_DUE (RETRY_DUE(0) || RETRY_DUE(1) || RETRY_DUE(2))
/* Under LIVE the network is eventually timely: a request is applied, and
 * an answer read, before time passes (unless lost). */
#ifdef LIVE
#define PENDING(i) (req[i] != none || kreq[i] != none || \
    ((ans[i] != none || kans[i] != none) && !HELD(i)))
#define URGENT (KEEPER_DUE || RETRIES_DUE || PENDING(0) || PENDING(1) || PENDING(2))
#else
#define URGENT (KEEPER_DUE || RETRIES_DUE)
#endif

#ifdef NO_FENCING
#define FENCED(i) true
#else
#define FENCED(i) (rec_owner == i + 1)
#endif

inline send(i, what) {
  printf("t=%d caller %d sends %e\n", stime, i, what);
  req[i] = what;
  ans[i] = A_NONE
}

inline send_renewal(i) {
  printf("t=%d caller %d sends renewal\n", stime, i);
  kreq[i] = R_RENEW;
  kans[i] = A_NONE;
  age[i] = 0
}

inline answer(i, what) {
  printf("t=%d store: %e from caller %d: %e (lease until t=%d)\n", stime, req[i], i, what,
         stime + lease_left);
  if
  :: phase[i] == CLAIMING || phase[i] == FINISHING -> ans[i] = what
  :: else -> skip
  fi
}

inline kanswer(i, what) {
  printf("t=%d store: renewal from caller %d: %e (lease until t=%d)\n", stime, i, what,
         stime + lease_left);
  if
  :: phase[i] == OWNING || phase[i] == FINISHING -> kans[i] = what
  :: else -> skip
  fi
}

/* A write that changes the record: it must be the current claim's. */
inline write(i, what) {
  if
  :: rec_owner != i + 1 ->
     printf("t=%d store: %e of caller %d applied over the claim of caller %d\n", stime, what, i,
            rec_owner - 1);
     stale_write = true
  :: else -> skip
  fi;
  assert(!stale_write)
}

inline grant(i) {
  rec_status = RUNNING;
  rec_owner = i + 1;
  lease_left = L;
  orphaned = (phase[i] != CLAIMING);
  answer(i, A_GRANTED)
}

/* The store applies caller i's request, atomically, on its own clock. */
inline apply(i) {
  if
  :: req[i] == R_CLAIM ->
     if
     :: rec_status == FREE -> grant(i)
     :: rec_status == DONE -> answer(i, A_REPLAY)
     :: rec_status == RUNNING && lease_left > 0 -> answer(i, A_BUSY)
     :: rec_status == RUNNING && lease_left == 0 ->
#ifdef BLOCK
        answer(i, A_BLOCKED)
#else
        grant(i)
#endif
     fi
  :: req[i] == R_FINISH ->
     if
     :: rec_status == RUNNING && FENCED(i) ->
        write(i, R_FINISH); rec_status = DONE; completed = true; orphaned = false;
        lease_left = 0; answer(i, A_OK)
     /* a retry whose first answer was lost */
     :: rec_status == DONE && rec_owner == i + 1 -> answer(i, A_OK)
     :: else -> answer(i, A_REFUSED)
     fi
  :: req[i] == R_RELEASE ->
     if
     :: rec_status == RUNNING && FENCED(i) ->
        write(i, R_RELEASE); rec_status = FREE; rec_owner = 0; lease_left = 0; orphaned = false
     :: else -> skip
     fi
  fi;
  req[i] = R_NONE
}

/* The store applies caller i's renewal. */
inline kapply(i) {
  if
  :: rec_status == RUNNING && FENCED(i) -> write(i, R_RENEW); lease_left = L; kanswer(i, A_OK)
  :: else -> kanswer(i, A_REFUSED)
  fi;
  kreq[i] = R_NONE
}

/* idem exits (or dies): what it held stays as it is. */
inline gone(i) {
  printf("t=%d caller %d: idem exits\n", stime, i);
  phase[i] = GONE;
  ans[i] = A_NONE;
  kans[i] = A_NONE;
  age[i] = 0;
  since[i] = 0;
  stopped[i] = false;
  frozen[i] = 0;
#ifdef LEGACY_ANCHOR
  waiting[i] = false;
#endif
#ifdef LEGACY_NO_STOP
  lost[i] = false;
#endif
  if
  :: rec_status == RUNNING && rec_owner == i + 1 -> orphaned = true
  :: else -> skip
  fi
}

inline start(i) {
  printf("t=%d caller %d STARTS COMMAND\n", stime, i);
  if
  :: OTHERS_EXEC(i) -> overlap = true
  :: else -> skip
  fi;
  assert(!overlap);
  if
  :: completed -> after_done = true
  :: else -> skip
  fi;
  assert(!after_done);
  if
  :: execs < 2 -> execs++
  :: else -> skip
  fi;
#ifdef BLOCK
  twice_blocked = (execs > 1);
  assert(!twice_blocked);
#endif
  cmd[i] = C_RUN;
  phase[i] = OWNING
}

/* COMMAND of caller i executes again (thawed or continued). */
inline resumed(i) {
  if
  :: EXEC(i) && OTHERS_EXEC(i) -> overlap = true
  :: else -> skip
  fi;
  assert(!overlap)
}

inline killed(i) {
  printf("t=%d caller %d: lost the lease, no outcome written (exit 125)\n", stime, i);
  cmd[i] = C_NONE;
  gone(i) /* exit 125: lost the lease */
}

/* One store tick: the lease runs down, each caller's clocks move on and
 * idem's deadlines act at once. */
inline advance(i) {
  if
  :: phase[i] == CLAIMING || phase[i] == OWNING || phase[i] == FINISHING ->
     age[i] = (age[i] < AGE_MAX -> age[i] + 1 : AGE_MAX);
     if
     :: phase[i] == OWNING ->
        since[i] = (since[i] < SINCE_MAX -> since[i] + 1 : SINCE_MAX);
#ifndef LEGACY_NO_STOP
        /* The stop deadline: SIGTERM at 0.9 L - G, SIGKILL at 0.9 L. */
        if
        :: HELD(i) -> skip
        :: !HELD(i) && LOCAL(i, since[i]) >= DEAD_BY && cmd[i] != C_NONE ->
           printf("t=%d caller %d: SIGKILL to COMMAND, %d ticks after the last accepted send\n",
                  stime, i, since[i]);
           killed(i)
        :: !HELD(i) && LOCAL(i, since[i]) >= STOP_AFTER && LOCAL(i, since[i]) < DEAD_BY &&
           cmd[i] == C_RUN ->
           cmd[i] = C_TERM;
           printf("t=%d caller %d: SIGTERM to COMMAND, stop deadline\n", stime, i)
        :: else -> skip
        fi
#endif
     :: else -> skip
     fi
#ifdef LIVE
  :: phase[i] == GONE -> age[i] = 1 /* may call again */
#endif
  :: else -> skip
  fi
}

active proctype Clock() {
  do
  :: atomic {
       !URGENT ->
       stime++;
       if
       :: lease_left > 0 -> lease_left--
       :: else -> skip
       fi;
       each = 0;
       do
       :: each < N -> advance(each); each++
       :: else -> break
       od;
       each = 0
     }
  od
}

/* The network to and from caller i, and the store's side of it. */
proctype Net(byte i) {
  do
  :: atomic { req[i] != R_NONE -> apply(i) }
  :: atomic { kreq[i] != R_NONE -> kapply(i) }
#ifndef NO_LOSS
  :: atomic {
       req[i] != R_NONE && FAULT ->
       FAULTED;
       printf("t=%d network: %e of caller %d lost\n", stime, req[i], i);
       req[i] = R_NONE
     }
  :: atomic {
       ans[i] != A_NONE && FAULT ->
       FAULTED;
       printf("t=%d network: answer %e to caller %d lost\n", stime, ans[i], i);
       ans[i] = A_NONE
     }
  :: atomic {
       kreq[i] != R_NONE && FAULT ->
       FAULTED;
       printf("t=%d network: renewal of caller %d lost\n", stime, i);
       kreq[i] = R_NONE
     }
  :: atomic {
       kans[i] != A_NONE && FAULT ->
       FAULTED;
       printf("t=%d network: answer %e to caller %d's renewal lost\n", stime, kans[i], i);
       kans[i] = A_NONE
     }
#endif
  od
}

inline claim_answered(i) {
  if
  :: ans[i] == A_GRANTED ->
     printf("t=%d caller %d: claim granted, sent %d ticks ago\n", stime, i, age[i]);
     ans[i] = A_NONE;
     if
#ifndef LEGACY_LATE_START
     /* Never start COMMAND past the claim's stop deadline: release it. */
     :: LOCAL(i, age[i]) >= STOP_AFTER ->
        printf("t=%d caller %d: claim granted too late (sent %d ticks ago): released unrun\n", stime, i, age[i]);
        req[i] = R_RELEASE;
        gone(i)
#endif
     :: else ->
#ifdef LEGACY_ANCHOR
        since[i] = 0;
        age[i] = 0;
#else
        since[i] = age[i];
#endif
        start(i)
     fi
  :: else -> gone(i) /* busy, replayed, blocked */
  fi
}

inline renewal_due(i) {
#ifdef LEGACY_ANCHOR
  if
  :: waiting[i] ->
     /* The attempt gave up; the next one a third of a lease later. */
     waiting[i] = false;
     kreq[i] = R_NONE;
     kans[i] = A_NONE;
     age[i] = 0
  :: else -> send_renewal(i); waiting[i] = true
  fi;
#ifdef LEGACY_GIVE_UP
  if
  :: LOCAL(i, since[i]) >= L -> lost[i] = true
  :: else -> skip
  fi
#endif
#else
  send_renewal(i)
#endif
}

inline renewal_answered(i) {
  if
  :: kans[i] == A_OK ->
     printf("t=%d caller %d: renewal accepted (sent %d ticks ago)\n", stime, i, age[i]);
#ifdef LEGACY_ANCHOR
     since[i] = 0;
     age[i] = 0;
     waiting[i] = false
#else
     /* (Once COMMAND has ended, no deadline reads it.) */
     since[i] = (phase[i] == OWNING -> age[i] : 0)
#endif
  :: kans[i] == A_REFUSED ->
#ifdef LEGACY_NO_STOP
     lost[i] = true
#else
     /* Another caller took over: SIGTERM now, SIGKILL G later. */
     if
     :: cmd[i] == C_RUN ->
        cmd[i] = C_TERM;
        since[i] = (since[i] < STOP_AFTER -> STOP_AFTER : since[i])
     :: else -> skip
     fi
#endif
  :: else -> skip
  fi;
  kans[i] = A_NONE
}

inline command_ended(i) {
  printf("t=%d caller %d: COMMAND exits\n", stime, i);
  if
#ifdef LEGACY_NO_STOP
  :: cmd[i] == C_RUN && !lost[i] ->
#else
  :: cmd[i] == C_RUN ->
#endif
     cmd[i] = C_NONE;
     phase[i] = FINISHING;
     since[i] = 0;
     send(i, R_FINISH)
  :: else -> killed(i) /* stopped for its lease, or the claim was lost */
  fi
}

proctype Caller(byte i) {
  do
  :: atomic { phase[i] == IDLE -> phase[i] = CLAIMING; send(i, R_CLAIM) }
  :: atomic { phase[i] == CLAIMING && ans[i] != A_NONE -> claim_answered(i) }
  /* The claim's call times out unanswered: idem exits with an error. */
  :: atomic { phase[i] == CLAIMING && age[i] >= AGE_MAX && ans[i] == A_NONE -> gone(i) }
  :: atomic { RENEW_DUE(i) -> renewal_due(i) }
  :: atomic { KEEPING(i) && !HELD(i) && kans[i] != A_NONE -> renewal_answered(i) }
  :: atomic { phase[i] == OWNING && !HELD(i) && cmd[i] != C_NONE -> command_ended(i) }
  /* The outcome's write is tried again until answered. */
  :: atomic { RETRY_DUE(i) -> send(i, R_FINISH) }
  :: atomic { phase[i] == FINISHING && ans[i] != A_NONE -> gone(i) }
  /* A crash at any step: idem dies, and its command's group with it. */
  :: atomic {
       phase[i] != IDLE && phase[i] != GONE && FAULT ->
       FAULTED;
       printf("t=%d caller %d: idem CRASHES\n", stime, i);
#ifdef LEGACY_ORPHAN
       if
       :: cmd[i] != C_NONE -> cmd[i] = C_RUN
       :: else -> skip
       fi;
#else
       cmd[i] = C_NONE;
#endif
       gone(i)
     }
#ifdef JOBSTOP
  /* Ctrl-Z, or SIGSTOP of idem and its command, then SIGCONT: past the
   * stop deadline idem kills COMMAND's group instead of resuming it. */
  :: atomic {
       i == 0 && phase[i] == OWNING && !HELD(i) && cmd[i] != C_NONE ->
       printf("t=%d caller %d: job stopped (Ctrl-Z)\n", stime, i);
       stopped[i] = true
     }
  :: atomic {
       stopped[i] ->
       printf("t=%d caller %d: job continued\n", stime, i);
       stopped[i] = false;
       if
#ifndef LEGACY_NO_STOP
       :: LOCAL(i, since[i]) >= STOP_AFTER ->
          printf("t=%d caller %d: past the stop deadline: COMMAND killed, not resumed\n", stime, i);
          killed(i)
#endif
       :: else -> resumed(i)
       fi
     }
#endif
#ifdef FREEZE_HOST
  :: atomic {
       phase[i] == OWNING && !HELD(i) && cmd[i] != C_NONE && !was_frozen[i] ->
       printf("t=%d caller %d: HOST FROZEN\n", stime, i);
       was_frozen[i] = true;
       frozen[i] = HOST_FROZEN
     }
#endif
#ifdef FREEZE_IDEM
  :: atomic {
       phase[i] == OWNING && !HELD(i) && cmd[i] != C_NONE && !was_frozen[i] ->
       printf("t=%d caller %d: IDEM FROZEN (COMMAND runs on)\n", stime, i);
       was_frozen[i] = true;
       frozen[i] = IDEM_FROZEN
     }
#endif
  :: atomic {
       frozen[i] != 0 ->
       printf("t=%d caller %d: thawed\n", stime, i);
       frozen[i] = 0;
       resumed(i)
     }
#ifdef LEGACY_ORPHAN
  :: atomic { phase[i] == GONE && cmd[i] != C_NONE -> cmd[i] = C_NONE }
#endif
#ifdef LIVE
  /* Called again (cron, a retry): a new idem on the same host. */
  :: atomic { phase[i] == GONE && cmd[i] == C_NONE && age[i] > 0 -> phase[i] = IDLE }
#endif
  od
}

init {
  atomic {
    each = 0;
    do
    :: each < N ->
       if
       :: drift[each] = EXACT
#ifndef NO_DRIFT
       :: drift[each] = SLOW
       :: drift[each] = FAST
#endif
       fi;
       run Net(each);
       run Caller(each);
       each++
    :: else -> break
    od;
    each = 0
  }
}

#ifdef LIVE
/* Every crashed record is eventually taken over (--on-crash rerun). */
ltl taken_over { [] (orphaned -> <> !orphaned) }
#endif
