//! `--report FILE`: what one call did, as one JSON object, for a caller
//! that cannot tell it from the exit status alone (a webhook server that
//! answers `Idempotent-Replayed: true`, a CI step that logs "replayed").
//!
//! The run loop notes what it decides as it goes (`Report::decided`,
//! `Report::claimed`); `write` turns the notes and idem's exit status into
//! the object of SPEC.md "Telling the caller what happened" when idem is
//! about to exit. Field names and order are pinned by `tests/cli/report.rs`.

use crate::cmd::show::rfc3339;
use crate::exit::{Code, Exit};
use crate::store::Record;
use serde_json::Value;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// What the call did, in the report's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    Ran,
    Replayed,
    Joined,
    Skipped,
    Refused,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Ran => "ran",
            Outcome::Replayed => "replayed",
            Outcome::Joined => "joined",
            Outcome::Skipped => "skipped",
            Outcome::Refused => "refused",
        }
    }
}

/// The notes the run loop takes for the report.
pub(super) struct Report {
    key: String,
    store: Option<&'static str>,
    outcome: Option<Outcome>,
    reason: Option<&'static str>,
    attempt: Option<i64>,
    took_over: bool,
    record: Option<Record>,
}

impl Report {
    pub(super) fn new(key: &str, store: Option<&'static str>) -> Report {
        Report {
            key: key.to_owned(),
            store,
            outcome: None,
            reason: None,
            attempt: None,
            took_over: false,
            record: None,
        }
    }

    /// A decision about an existing record: replay, skip or refuse.
    pub(super) fn decided(
        &mut self,
        outcome: Outcome,
        reason: Option<&'static str>,
        record: &Record,
    ) {
        self.outcome = Some(outcome);
        self.reason = reason;
        self.attempt = Some(record.attempt);
        self.record = Some(record.clone());
    }

    /// This call claimed the key and runs COMMAND.
    pub(super) fn claimed(&mut self, attempt: i64, took_over: bool) {
        self.outcome = Some(Outcome::Ran);
        self.reason = None;
        self.attempt = Some(attempt);
        self.took_over = took_over;
        self.record = None;
    }

    /// COMMAND was stopped for its claim's lease, or never started.
    pub(super) fn lease_lost(&mut self) {
        self.reason = Some("lease_lost");
    }

    /// The record as it stands after this call (for `ran`: after finish).
    pub(super) fn record(&mut self, record: Option<Record>) {
        self.record = record;
    }

    /// The object for an exit with `result`.
    fn object(&self, exit_code: u8) -> Vec<(&'static str, Value)> {
        let (outcome, reason) = match self.outcome {
            Some(outcome) => (outcome, self.reason),
            // Nothing decided: the store failed before a decision.
            None => (Outcome::Refused, Some("store_error")),
        };
        let record = self.record.as_ref();
        let time = |at: Option<i64>| at.map_or(Value::Null, |at| Value::from(rfc3339(at)));
        vec![
            ("key", self.key.clone().into()),
            ("outcome", outcome.as_str().into()),
            ("reason", reason.map_or(Value::Null, Value::from)),
            ("exit_code", exit_code.into()),
            ("attempt", self.attempt.map_or(Value::Null, Value::from)),
            ("took_over", self.took_over.into()),
            (
                "record_status",
                record.map_or(Value::Null, |r| r.status.as_str().into()),
            ),
            ("started_at", time(record.map(|r| r.started_at))),
            ("finished_at", time(record.and_then(|r| r.finished_at))),
            (
                "duration_ms",
                record
                    .and_then(|r| Some(r.finished_at? - r.started_at))
                    .map_or(Value::Null, Value::from),
            ),
            (
                "replays",
                record.map_or(Value::Null, |r| Value::from(r.replays)),
            ),
            ("store", self.store.map_or(Value::Null, Value::from)),
        ]
    }
}

/// The exit status `result` ends idem with (as `main` chooses it).
pub(super) fn exit_code(result: &anyhow::Result<u8>) -> u8 {
    match result {
        Ok(code) => *code,
        // A closed stdout ends idem quietly with 0 (see main).
        Err(e)
            if e.chain().any(|cause| {
                cause
                    .downcast_ref::<std::io::Error>()
                    .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            0
        }
        Err(e) => u8::from(e.downcast_ref::<Exit>().map_or(Code::Internal, |e| e.code)),
    }
}

/// Writes the report to `path` (created 0600, or truncated). A report that
/// cannot be written is a notice: it never changes the exit status.
pub(super) fn write(path: &Path, report: &Report, exit_code: u8) {
    let mut text = String::from("{");
    for (i, (name, value)) in report.object(exit_code).into_iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        text.push_str(&format!("{}:{value}", Value::from(name)));
    }
    text.push_str("}\n");
    let written = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut file| file.write_all(text.as_bytes()));
    if let Err(e) = written {
        crate::say::notice(format_args!(
            "cannot write the report to {}: {e}",
            path.display()
        ));
    }
}
