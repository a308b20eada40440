//! A duplicate call that does not run COMMAND: it replays a finished run's
//! journal, or attaches to a run in progress (`--on-duplicate wait`) and
//! shares its result.

use super::report::Outcome as Reported;
use super::{record_status, Call};
pub(super) use crate::cmd::follow::run_status;
use crate::cmd::follow::{follow, warn_if_cut, End, Sink};
use crate::exit::{fail, Code};
use crate::owner::Place;
use crate::store::{Record, Store};
use crate::text::escape;
use anyhow::Result;
use std::time::Instant;

/// This process's ancestors, parent first, as (pid, start time), up to
/// PID 1 (bounded: a /proc that loops ends it too).
fn ancestors() -> impl Iterator<Item = (i64, i64)> {
    let mut pid = i64::from(nix::unistd::getppid().as_raw());
    std::iter::from_fn(move || {
        if pid <= 1 {
            return None;
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // After the command name: state, ppid, ..., start time (22nd field).
        let fields: Vec<&str> = stat.get(stat.rfind(')')? + 2..)?.split(' ').collect();
        let (ppid, start) = (fields.get(1)?.parse().ok()?, fields.get(19)?.parse().ok()?);
        let this = (pid, start);
        pid = ppid;
        Some(this)
    })
    .take(4096)
}

/// How an attached waiter came away.
pub(super) enum Joined {
    /// The run finished: this is its record, outcome included.
    Done(Box<Record>),
    /// The run ended without an outcome (its owner crashed, or the record
    /// was purged or taken over), which the waiter said in one line: look
    /// at the key again.
    Left,
    /// `--wait-timeout` ran out first.
    TimedOut,
}

impl Call<'_> {
    /// Writes the stored journal; `None` when the record vanished meanwhile.
    pub(super) fn replay(&self, store: &mut dyn Store, record: &Record) -> Result<Option<u8>> {
        self.explain(format_args!(
            "key {} completed earlier (attempt {}); replaying its output and status {}",
            self.shown_key(),
            record.attempt,
            record_status(record)
        ));
        // An empty journal needs no second look at the store.
        if record.stdout_bytes > 0 || record.stderr_bytes > 0 {
            let mut sink = Sink::new("replayed output");
            let read =
                store.read_journal(&self.key, record.token, 0, &mut |s, b| sink.write(s, b))?;
            if read.is_none() {
                return Ok(None);
            }
        }
        warn_if_cut(record, &self.shown_key());
        // A statistic: a store that has become read-only still replays.
        if let Err(e) = store.count_replay(&self.key, record.token) {
            self.explain(format_args!("the replay was not counted: {e:#}"));
        }
        Ok(Some(run_status(record)))
    }

    /// Joins the run of `record`: writes its output from the start and live,
    /// and shares its result, a failure included. A run this very call is
    /// part of is refused at once (exit 75): it would wait for ever, and
    /// its output, captured by that run, would grow the record it reads.
    pub(super) fn attach(
        &self,
        store: &mut dyn Store,
        record: &Record,
        until: Option<Instant>,
    ) -> Result<Joined> {
        if self.waits_for_itself(record) {
            self.note(Reported::Refused, Some("in_progress"), record);
            return fail(
                Code::InProgress,
                format!(
                    "key {} is in progress in the very run this call is part of (its COMMAND, \
                     pid {}, started this call); waiting for it would wait for ever. \
                     Give a nested step a key of its own, such as \"$IDEM_KEY/step\"",
                    self.shown_key(),
                    record.owner.child.map_or(record.owner.pid, |c| c.pid)
                ),
            );
        }
        self.explain(format_args!(
            "key {} is in progress (attempt {}, pid {} on {}); attaching to its output",
            self.shown_key(),
            record.attempt,
            record.owner.pid,
            escape(record.owner.host.as_bytes())
        ));
        let shared = store.is_shared();
        let mut sink = Sink::new("output");
        let alive = |r: &Record, now| self.alive(r, now, shared);
        Ok(match follow(store, record, &mut sink, &alive, until)? {
            End::Finished(done) => {
                self.explain(format_args!(
                    "key {}: the run finished with status {}",
                    self.shown_key(),
                    record_status(&done)
                ));
                warn_if_cut(&done, &self.shown_key());
                Joined::Done(Box::new(done))
            }
            End::Crashed(dead) => {
                self.crashed_notice(&dead);
                Joined::Left
            }
            End::Gone => {
                // Another waiter may have seen the crash first and taken
                // over: a later attempt of the key says so.
                let (_, now) = store.get(&self.key)?;
                if now.is_some_and(|r| r.attempt > record.attempt) {
                    self.crashed_notice(record);
                } else {
                    crate::say::notice(format_args!(
                        "key {}: attempt {} was purged or taken over before it finished; its output so far is shown above",
                        self.shown_key(),
                        record.attempt
                    ));
                }
                Joined::Left
            }
            End::TimedOut => Joined::TimedOut,
        })
    }

    /// Whether the run of `record` is one this call belongs to: its owner
    /// or its child is an ancestor of this process, or this process is in
    /// the child's process group (on this machine, in this PID namespace);
    /// or the environment the run gave its COMMAND names this key and store.
    fn waits_for_itself(&self, record: &Record) -> bool {
        let inherited = std::env::var_os("IDEM_KEY").is_some_and(|k| k == *self.key)
            && std::env::var_os("IDEM_DB").is_some_and(|db| Some(&db) == self.global.db.as_ref());
        if inherited {
            return true;
        }
        if record.owner.place(self.here()) != Place::Here {
            return false;
        }
        let owner = &record.owner;
        let child = owner.child;
        if child.is_some_and(|c| i64::from(nix::unistd::getpgrp().as_raw()) == c.pgid) {
            return true;
        }
        ancestors().any(|(pid, start)| {
            (pid, start) == (owner.pid, owner.start)
                || child.is_some_and(|c| (pid, start) == (c.pid, c.start))
        })
    }

    /// The one line a waiter writes when the run it attached to crashed.
    fn crashed_notice(&self, dead: &Record) {
        crate::say::notice(format_args!(
            "key {}: attempt {} crashed (pid {} on {}); its output so far is shown above",
            self.shown_key(),
            dead.attempt,
            dead.owner.pid,
            escape(dead.owner.host.as_bytes())
        ));
    }
}
