//! The state machine every backend shares: given the record a call finds,
//! run, replay, wait or refuse.
//!
//! This is the table of SPEC.md "Duplicates" in code. It is pure: the
//! caller supplies the record, the store's clock and the owner's liveness,
//! and calls it both before taking the store's lock (the cheap replay path)
//! and again under the lock (the decision that counts).

use crate::owner::{Here, Place};
use crate::store::{Millis, Record, Status};
use clap::ValueEnum;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum OnDuplicate {
    /// Replay the stored stdout, stderr and exit status.
    #[default]
    Replay,
    /// Exit 76 when the key already completed.
    Fail,
    /// Wait for a running owner to finish, then act on its result.
    Wait,
    /// Exit 0 silently when the key completed or is running (for cron).
    Skip,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum OnCrash {
    /// Take the record over and run COMMAND again (attempt + 1).
    #[default]
    Rerun,
    /// Leave the record and exit 77 for an operator to check.
    Block,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum OnFailure {
    /// A failed run is released: the next call runs COMMAND again.
    #[default]
    Unlock,
    /// A failed run is final like a success: duplicates replay the failure.
    Lock,
}

/// How a call treats the record it finds.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub on_duplicate: OnDuplicate,
    pub on_crash: OnCrash,
    pub allow_mismatch: bool,
}

/// What to do with a key.
#[derive(Debug)]
pub enum Verdict<'a> {
    /// Claim the key and run COMMAND; `crashed` is the dead owner's record
    /// when this is a takeover.
    Run {
        attempt: i64,
        crashed: Option<&'a Record>,
    },
    Replay(&'a Record),
    Wait,
    /// The record was made by a different command (exit 65).
    Mismatch(&'a Record),
    /// In progress under a live owner (exit 75).
    Busy(&'a Record),
    /// Completed and `--on-duplicate fail` (exit 76).
    AlreadyDone(&'a Record),
    /// Completed or running and `--on-duplicate skip` (exit 0, silent).
    Skip(&'a Record),
    /// Its owner crashed and `--on-crash block` (exit 77).
    Blocked(&'a Record),
}

/// Decides what a call with `fingerprint` does about `existing` at `now`.
/// `alive` tells whether an `in_progress` record's owner still lives.
pub fn decide<'a>(
    existing: Option<&'a Record>,
    now: Millis,
    fingerprint: &[u8],
    policy: Policy,
    alive: impl Fn(&Record) -> bool,
) -> Verdict<'a> {
    let Some(record) = existing.filter(|r| !r.is_expired(now)) else {
        return Verdict::Run {
            attempt: 1,
            crashed: None,
        };
    };
    if record.fingerprint != fingerprint && !policy.allow_mismatch {
        return Verdict::Mismatch(record);
    }
    match record.status {
        Status::Failed => Verdict::Run {
            attempt: record.attempt + 1,
            crashed: None,
        },
        Status::Completed => match policy.on_duplicate {
            OnDuplicate::Replay | OnDuplicate::Wait => Verdict::Replay(record),
            OnDuplicate::Fail => Verdict::AlreadyDone(record),
            OnDuplicate::Skip => Verdict::Skip(record),
        },
        Status::InProgress if alive(record) => match policy.on_duplicate {
            OnDuplicate::Wait => Verdict::Wait,
            OnDuplicate::Replay | OnDuplicate::Fail => Verdict::Busy(record),
            OnDuplicate::Skip => Verdict::Skip(record),
        },
        Status::InProgress => match policy.on_crash {
            OnCrash::Rerun => Verdict::Run {
                attempt: record.attempt + 1,
                crashed: Some(record),
            },
            OnCrash::Block => Verdict::Blocked(record),
        },
    }
}

/// Whether the owner of an `in_progress` record still lives, seen from
/// `here` at the store's time `now` (SPEC.md "Crashed owners"). On SQLite
/// the kernel decides: the owner is alive while its lock is held
/// (`Owner::lock`, asked by the store as it read the record), in any PID
/// namespace, whatever the clock. Elsewhere process checks decide only
/// where the owner's pids are ours: same host name, boot id and PID
/// namespace. Everywhere else the lease decides — except that on a local
/// file (`shared` false) the same host name with another boot id is dead
/// at once: that machine rebooted, since a store file belongs to one
/// machine. On a shared store it may be another machine of the same name.
///
/// SQLite records written before idem took that lock (or before it kept a
/// lease, or recorded the PID namespace) fall back to the older rules,
/// never calling a live owner of ours dead: a pid of ours that is alive
/// counts, and without a lease an owner on another host counts as alive.
pub fn owner_alive(record: &Record, here: &Here, now: Millis, shared: bool) -> bool {
    if let Some(lock) = record.owner.lock {
        return lock.held;
    }
    let lease = record.lease_until.map(|until| until > now);
    match record.owner.place(here) {
        Place::Here => record.owner.process_alive(),
        Place::OtherBoot if !shared => false,
        Place::UnknownNamespace => record.owner.process_alive() || lease.unwrap_or(false),
        Place::OtherNamespace | Place::OtherBoot | Place::OtherHost => lease.unwrap_or(true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::owner::Owner;

    fn record(status: Status, expires_at: Option<Millis>) -> Record {
        Record {
            key: "k".into(),
            status,
            fingerprint: vec![1],
            command: b"true".to_vec(),
            cwd: b"/".to_vec(),
            attempt: 2,
            token: 9,
            started_at: 0,
            finished_at: expires_at.map(|_| 0),
            expires_at,
            lease_until: None,
            exit_code: Some(0),
            signal: None,
            timed_out: false,
            replays: 0,
            owner: Owner::default(),
            label: None,
            stdout_bytes: 0,
            stderr_bytes: 0,
            stdout_truncated: false,
            stderr_truncated: false,
        }
    }

    fn verdict(r: Option<&Record>, dup: OnDuplicate, crash: OnCrash, alive: bool) -> String {
        let policy = Policy {
            on_duplicate: dup,
            on_crash: crash,
            allow_mismatch: false,
        };
        let v = decide(r, 100, &[1], policy, |_| alive);
        format!("{v:?}")
            .split([' ', '(', '{'])
            .next()
            .unwrap()
            .to_owned()
    }

    /// SPEC.md "Duplicates", row by row, column by column.
    #[test]
    fn follows_the_duplicates_table() {
        use OnDuplicate::*;
        let done = record(Status::Completed, Some(200));
        let expired = record(Status::Completed, Some(100));
        let failed = record(Status::Failed, Some(200));
        let running = record(Status::InProgress, None);
        for dup in [Replay, Fail, Wait, Skip] {
            for r in [None, Some(&expired), Some(&failed)] {
                assert_eq!(verdict(r, dup, OnCrash::Rerun, true), "Run");
            }
            assert_eq!(verdict(Some(&running), dup, OnCrash::Rerun, false), "Run");
            assert_eq!(
                verdict(Some(&running), dup, OnCrash::Block, false),
                "Blocked"
            );
        }
        assert_eq!(verdict(Some(&done), Replay, OnCrash::Rerun, true), "Replay");
        assert_eq!(
            verdict(Some(&done), Fail, OnCrash::Rerun, true),
            "AlreadyDone"
        );
        assert_eq!(verdict(Some(&done), Wait, OnCrash::Rerun, true), "Replay");
        assert_eq!(
            verdict(Some(&running), Replay, OnCrash::Rerun, true),
            "Busy"
        );
        assert_eq!(verdict(Some(&running), Fail, OnCrash::Rerun, true), "Busy");
        assert_eq!(verdict(Some(&running), Wait, OnCrash::Rerun, true), "Wait");
        assert_eq!(verdict(Some(&done), Skip, OnCrash::Rerun, true), "Skip");
        assert_eq!(verdict(Some(&running), Skip, OnCrash::Rerun, true), "Skip");
    }

    #[test]
    fn attempts_count_reruns_of_the_same_record() {
        let policy = Policy {
            on_duplicate: OnDuplicate::Replay,
            on_crash: OnCrash::Rerun,
            allow_mismatch: false,
        };
        let failed = record(Status::Failed, Some(200));
        assert!(matches!(
            decide(Some(&failed), 100, &[1], policy, |_| true),
            Verdict::Run { attempt: 3, .. }
        ));
        let expired = record(Status::Failed, Some(50));
        assert!(matches!(
            decide(Some(&expired), 100, &[1], policy, |_| true),
            Verdict::Run { attempt: 1, .. }
        ));
        // A takeover of a crashed owner's record is its next attempt too.
        let crashed = record(Status::InProgress, None);
        assert!(matches!(
            decide(Some(&crashed), 100, &[1], policy, |_| false),
            Verdict::Run {
                attempt: 3,
                crashed: Some(_)
            }
        ));
    }

    /// SPEC.md "Crashed owners", place by place, on a local file and on a
    /// shared store, with the lease live, run out, or absent (old records).
    #[test]
    fn owner_liveness_table() {
        let here = Here::detect();
        let ns = here.pid_ns.unwrap();
        // (host, boot, pid namespace, process alive)
        let places: [(&str, &str, Option<i64>, bool); 8] = [
            ("same place, process alive", "", Some(ns), true),
            ("same place, process dead", "", Some(ns), false),
            ("namespace unknown, process alive", "", None, true),
            ("namespace unknown, process dead", "", None, false),
            (
                "other namespace, process id alive here",
                "",
                Some(ns + 1),
                true,
            ),
            ("other boot", "another-boot", Some(ns), true),
            ("other host", "", Some(ns), true),
            ("other host, unknown namespace", "", None, false),
        ];
        // Expected for: lease live, run out, absent; on a file, then shared.
        let expected: [[bool; 6]; 8] = [
            [true, true, true, true, true, true],
            [false, false, false, false, false, false],
            [true, true, true, true, true, true],
            [true, false, false, true, false, false],
            [true, false, true, true, false, true],
            [false, false, false, true, false, true],
            [true, false, true, true, false, true],
            [true, false, true, true, false, true],
        ];
        for (i, (what, boot, pid_ns, alive)) in places.into_iter().enumerate() {
            let mut r = record(Status::InProgress, None);
            r.owner = here.me();
            r.owner.pid_ns = pid_ns;
            if !alive {
                r.owner.start += 1;
            }
            if !boot.is_empty() {
                r.owner.boot_id = boot.into();
            }
            if what.starts_with("other host") {
                r.owner.host = format!("not-{}", here.host);
            }
            let mut got = Vec::new();
            for shared in [false, true] {
                for lease in [Some(101), Some(100), None] {
                    r.lease_until = lease;
                    got.push(owner_alive(&r, &here, 100, shared));
                }
            }
            assert_eq!(got, expected[i], "{what}");
        }
    }

    /// The owner's lock, where the store could ask it, decides alone:
    /// neither the pids nor the lease can overrule the kernel.
    #[test]
    fn the_owners_lock_decides_where_there_is_one() {
        let here = Here::detect();
        let mut r = record(Status::InProgress, None);
        r.owner = here.me();
        let lock = |held| Some(crate::owner::Lock { byte: 7, held });
        r.owner.lock = lock(false);
        r.lease_until = Some(101);
        assert!(
            !owner_alive(&r, &here, 100, false),
            "live pid and lease, lock free"
        );
        r.owner.lock = lock(true);
        r.owner.host = format!("not-{}", here.host);
        r.owner.start += 1;
        r.lease_until = Some(50);
        assert!(
            owner_alive(&r, &here, 100, false),
            "dead pid, lease run out, lock held"
        );
    }

    #[test]
    fn mismatch_refuses_unless_allowed() {
        let done = record(Status::Completed, Some(200));
        let mut policy = Policy {
            on_duplicate: OnDuplicate::Replay,
            on_crash: OnCrash::Rerun,
            allow_mismatch: false,
        };
        assert!(matches!(
            decide(Some(&done), 100, &[2], policy, |_| true),
            Verdict::Mismatch(_)
        ));
        policy.allow_mismatch = true;
        assert!(matches!(
            decide(Some(&done), 100, &[2], policy, |_| true),
            Verdict::Replay(_)
        ));
    }
}
