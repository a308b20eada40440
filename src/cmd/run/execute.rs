//! After the claim: run COMMAND through the supervisor while holding the
//! claim (`run/owning.rs`), then record its outcome under the claim's
//! fencing token and turn it into idem's exit status. A command that could
//! not start is recorded as a failure, whatever `--on-failure` says; an
//! outcome that could not be recorded (the lease was lost, the store
//! failed) is said and exits 125, leaving any newer record alone.

use super::owning::{pause_point, Owning};
use super::{millis, Call};
use crate::child::{self, Finished, SpawnError};
use crate::exit::{child_status, fail, Code};
use crate::policy::OnFailure;
use crate::store::{Captured, Outcome, Status, Store};
use crate::text::escape;
use anyhow::Result;
use std::collections::VecDeque;
use std::fs::File;
use std::time::Instant;

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
        // lease. A --db that is not UTF-8 is left out: the inherited
        // IDEM_DB, if any, is then what the steps see.
        let mut env = vec![
            ("IDEM_KEY", self.key.clone()),
            (
                "IDEM_LEASE",
                humantime::format_duration(self.args.lease).to_string(),
            ),
        ];
        if let Some(db) = self.global.db.as_ref().and_then(|db| db.to_str()) {
            env.push(("IDEM_DB", db.to_owned()));
        }
        child::Spec {
            argv: &self.args.command,
            env,
            late,
            stdin,
            sync_dir: store.directory_to_sync(),
            max_output: self.args.max_output,
            timeout: self.args.timeout,
        }
    }

    pub(super) fn execute(
        &self,
        store: &mut dyn Store,
        token: i64,
        attempt: i64,
        started: std::result::Result<child::Gated, SpawnError>,
        spec: &child::Spec<'_>,
        signals: &child::Signals,
    ) -> Result<u8> {
        // Declared before the claim's holder, so dropped after the record:
        // what the writers still hold waits for no reader before it.
        let output = child::Output::start();
        pause_point("after-claim");
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
            lease: self.args.lease,
            renewed: Instant::now(),
            lost: false,
            output_lost: false,
            pending: VecDeque::new(),
            seq: 0,
        };
        let ran = match started {
            Ok(child) => child::run(child, &late, spec, signals, &output, &mut owner)?,
            Err(e) => Err(e),
        };
        owner.flush();
        let lost_lease = owner.lost;
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
                humantime::format_duration(self.args.timeout.unwrap_or_default())
            ));
        }
        self.finish(store, token, &finished, captured, status, lost_lease)?;
        Ok(exit)
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
