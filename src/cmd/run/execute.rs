//! After the claim: on a shared store start the lease's keeper, run
//! COMMAND through the supervisor while holding the claim
//! (`run/owning.rs`), then record its outcome under the claim's fencing
//! token and turn it into idem's exit status; the keeper renews until the
//! outcome is recorded. A command that could not start is recorded as a
//! failure, whatever `--on-failure` says. A claim whose answer came after
//! its stop deadline never starts COMMAND and is released; a run stopped
//! for its lease leaves its record in progress (SPEC.md "Leases"). Either,
//! or an outcome that could not be recorded, is said and exits 125,
//! leaving any newer record alone.

use super::owning::{pause_point, Owning};
use super::{millis, Call};
use crate::child::{self, Finished, Hold, Keeper, LeaseLoss, SpawnError};
use crate::exit::{child_status, fail, Code};
use crate::lease::{Clock, Lease};
use crate::policy::OnFailure;
use crate::store::{Captured, Judged, Outcome, Status, Store};
use crate::text::escape;
use anyhow::Result;
use std::collections::VecDeque;
use std::fs::File;
use std::time::Duration;

/// A claim this call won.
pub(super) struct Claimed {
    /// Its fencing token.
    pub(super) token: i64,
    pub(super) attempt: i64,
    /// When its request was sent: the owner's view of the lease starts
    /// there, no later than the store's stamp.
    pub(super) sent: Clock,
}

impl Call<'_> {
    /// What the child is started from, before the claim.
    pub(super) fn spec<'s>(
        &'s self,
        store: &mut dyn Store,
        stdin: Option<&'s File>,
    ) -> child::Spec<'s> {
        let mut late = vec!["IDEM_ATTEMPT"];
        if store.is_shared() {
            late.push("IDEM_FENCING_TOKEN");
        }
        // Nested steps (`idem run` inside COMMAND) use this call's store and
        // lease, whatever bytes its --db holds.
        let mut env = vec![
            ("IDEM_KEY", self.key.clone().into()),
            (
                "IDEM_LEASE",
                humantime::format_duration(self.args.lease)
                    .to_string()
                    .into(),
            ),
        ];
        if let Some(db) = &self.global.db {
            env.push(("IDEM_DB", db.clone()));
        }
        child::Spec {
            argv: &self.args.command,
            env,
            late,
            stdin,
            sync_dir: store.directory_to_sync(),
            max_output: self.args.max_output,
            timeout: self.args.timeout,
            guard: child::Guard::new(store.owner_lock()),
        }
    }

    /// Runs COMMAND under the claim.
    pub(super) fn execute(
        &self,
        store: &mut dyn Store,
        Claimed {
            token,
            attempt,
            sent,
        }: Claimed,
        started: std::result::Result<child::Gated, SpawnError>,
        spec: &child::Spec<'_>,
        signals: &child::Signals,
    ) -> Result<u8> {
        // Declared before the claim's holder, so dropped after the record:
        // what the writers still hold waits for no reader before it.
        let output = child::Output::start();
        pause_point("after-claim");
        let lease = Lease::new(self.args.lease);
        // Kept until the outcome is recorded: it renews until then.
        let keeper = match store.lease_keeper(lease)? {
            Some(renewer) => {
                let answered = Clock::now();
                if answered >= sent.after(lease.stop_after()) {
                    drop(started);
                    return self.release_late(store, token, answered.since(sent));
                }
                Some(Keeper::start(
                    renewer,
                    &self.key,
                    token,
                    Hold::new(lease, sent)?,
                )?)
            }
            None => None,
        };
        let hold = keeper.as_ref().map(|k| &*k.hold);
        self.explain(format_args!(
            "key {}: running (attempt {attempt})",
            self.shown_key()
        ));
        // The values of `spec.late`, in order.
        let late = [attempt, token][..spec.late.len()]
            .iter()
            .map(i64::to_string)
            .collect::<Vec<_>>();
        let mut owner = Owning {
            store: &mut *store,
            key: &self.key,
            token,
            lost: false,
            hold,
            output_lost: false,
            pending: VecDeque::new(),
            seq: 0,
        };
        let ran = match started {
            Ok(child) => child::run(child, &late, spec, signals, &output, &mut owner, hold)?,
            Err(e) => Err(e),
        };
        if let Ok(Finished {
            lease_lost: Some(loss),
            ..
        }) = ran
        {
            // The record stays in progress for the next call's crash
            // policy; what the journal still waits for is not worth a wait.
            drop(owner);
            drop(keeper);
            return self.lost_lease(loss);
        }
        owner.flush();
        let lost_lease = owner.lost || hold.is_some_and(|h| h.view().refused);
        let output_lost = owner.output_lost;
        pause_point("before-finish");
        let (finished, exit) = match ran {
            Ok(finished) => {
                let exit = if finished.timed_out {
                    u8::from(Code::Timeout)
                } else {
                    child_status(finished.exit_code, finished.signal)
                };
                (finished, exit)
            }
            Err(e) => {
                let (code, message) = match e {
                    SpawnError::NotFound(name) => (
                        Code::NotFound,
                        format!("{}: command not found", escape(name.as_bytes())),
                    ),
                    SpawnError::NotExecutable(why) => (
                        Code::NotExecutable,
                        format!("cannot run {}", escape(why.as_bytes())),
                    ),
                };
                // Could not start at all: never locked, whatever --on-failure says.
                let failed = Finished {
                    exit_code: Some(i32::from(u8::from(code))),
                    ..Finished::default()
                };
                let captured = (Captured::default(), Captured::default());
                self.finish(store, token, &failed, captured, Status::Failed, lost_lease)?;
                return fail(code, message);
            }
        };
        let status = if finished.succeeded() || self.args.on_failure == OnFailure::Lock {
            Status::Completed
        } else {
            Status::Failed
        };
        // A journal that could not be written is cut where it stopped.
        let captured = |tally: child::Tally| Captured {
            truncated: tally.truncated || output_lost,
        };
        let captured = (captured(finished.stdout), captured(finished.stderr));
        if finished.timed_out {
            crate::say::notice(format_args!(
                "{} timed out after {}",
                self.shown_command(),
                crate::text::duration(self.args.timeout.unwrap_or_default())
            ));
        }
        self.finish(store, token, &finished, captured, status, lost_lease)?;
        drop(keeper);
        // Recorded: what is left of the command's group may outlive idem.
        spec.guard.stand_down();
        Ok(exit)
    }

    /// COMMAND was stopped for its lease: exit 125, saying why.
    fn lost_lease(&self, loss: LeaseLoss) -> Result<u8> {
        self.report.borrow_mut().lease_lost();
        let why = match loss {
            LeaseLoss::RunOut { silent_for } => {
                format!("no renewal accepted for {}", seconds(silent_for))
            }
            LeaseLoss::Refused => {
                "another caller took the key over (the store refused this claim's token)".to_owned()
            }
        };
        fail(
            Code::Internal,
            format!(
                "lost the lease on {}: {why}; {} was stopped",
                escape(self.key.as_bytes()),
                self.shown_command()
            ),
        )
    }

    /// The claim's answer came after its stop deadline (`took` after its
    /// send): another caller may already see its lease run out, so COMMAND
    /// never starts (its gated child is gone), and the claim is released.
    fn release_late(&self, store: &mut dyn Store, token: i64, took: Duration) -> Result<u8> {
        self.report.borrow_mut().lease_lost();
        // Deleted as it was read: only this claim's record, unchanged.
        let release = |store: &mut dyn Store| -> Result<u64> {
            match store.get(&self.key)?.1.filter(|r| r.token == token) {
                Some(record) => store.delete(&[Judged::from(record)]),
                None => Ok(0),
            }
        };
        let released = match release(store) {
            Ok(_) => "the claim was released".to_owned(),
            Err(e) => format!("the claim could not be released ({e:#}); it stays in progress"),
        };
        fail(
            Code::Internal,
            format!(
                "lost the lease on {}: the claim's answer came {} after it was sent, past its stop deadline; \
                 nothing ran ({} was not started) and {released}",
                escape(self.key.as_bytes()),
                seconds(took),
                self.shown_command()
            ),
        )
    }

    fn finish(
        &self,
        store: &mut dyn Store,
        token: i64,
        finished: &Finished,
        (stdout, stderr): (Captured, Captured),
        status: Status,
        lost_lease: bool,
    ) -> Result<()> {
        let outcome = Outcome {
            status,
            exit_code: finished.exit_code,
            signal: finished.signal,
            timed_out: finished.timed_out,
            ttl_ms: millis(self.args.ttl),
            stdout,
            stderr,
        };
        let result = if lost_lease {
            Ok(false)
        } else {
            store.finish(&self.key, token, &outcome)
        };
        match result {
            Ok(true) => {
                if self.args.report.is_some() {
                    // The record as stored, by the store's clock.
                    let record = store.get(&self.key).ok().and_then(|(_, r)| r);
                    self.report
                        .borrow_mut()
                        .record(record.filter(|r| r.token == token));
                }
                Ok(())
            }
            Ok(false) => fail(
                Code::Internal,
                format!(
                    "lost the claim on key {} while the command ran (its lease ran out, or it was purged or taken over); \
                     this run's outcome (status {}) was NOT recorded and the newer record was left alone",
                    self.shown_key(),
                    child_status(finished.exit_code, finished.signal)
                ),
            ),
            Err(e) => fail(
                Code::Internal,
                format!(
                    "the command finished (status {}) but its record could NOT be written, so key {} stays in_progress: {e:#}",
                    child_status(finished.exit_code, finished.signal),
                    self.shown_key()
                ),
            ),
        }
    }
}

/// A span as "22s", or "2.2s" under ten seconds.
fn seconds(span: Duration) -> String {
    if span >= Duration::from_secs(10) {
        format!("{}s", span.as_secs())
    } else {
        format!("{:.1}s", span.as_secs_f64())
    }
}
