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
use crate::store::{Millis, Record, Status};
use serde_json::Value;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
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
    /// The store's clock when the record was judged (for `retry_after_ms`).
    judged_at: Option<Millis>,
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
            judged_at: None,
        }
    }

    /// The store's time of the decision noted last, for `retry_after_ms`.
    pub(super) fn judged_at(&mut self, now: Millis) {
        self.judged_at = Some(now);
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
        // Leases exist on shared stores only (SQLite's kernel lock needs none).
        let shared = self.store.is_some_and(|kind| kind != "sqlite");
        let lease_until = record
            .filter(|r| shared && r.status == Status::InProgress)
            .and_then(|r| r.lease_until);
        let retry_after = match (outcome, reason, lease_until, self.judged_at) {
            (Outcome::Refused, Some("in_progress"), Some(until), Some(now)) => {
                Value::from(until.saturating_sub(now).max(0))
            }
            _ => Value::Null,
        };
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
            ("lease_until", time(lease_until)),
            ("retry_after_ms", retry_after),
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

/// Writes the report to `path` (created 0600, or replaced). A report that
/// cannot be written is a notice: it never changes the exit status. A
/// usage error writes none (SPEC).
pub(super) fn write(path: &Path, report: &Report, exit_code: u8) {
    if exit_code == u8::from(Code::Usage) {
        return;
    }
    let mut text = String::from("{");
    for (i, (name, value)) in report.object(exit_code).into_iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        text.push_str(&format!("{}:{value}", Value::from(name)));
    }
    text.push_str("}\n");
    if let Err(e) = open_report(path).and_then(|mut file| file.write_all(text.as_bytes())) {
        crate::say::notice(format_args!(
            "cannot write the report to {}: {e}",
            crate::text::escape(path.as_os_str().as_encoded_bytes())
        ));
    }
}

/// Opens the report file for a caller who may be root writing into a
/// shared directory: the last component is never followed as a symlink
/// (a planted link would truncate its target with the caller's rights),
/// and an existing regular file is replaced only when the caller owns it
/// and it has no other name. The descriptors the kernel names under
/// `/dev/fd/N`, `/proc/self/fd/N`, `/dev/stdout` and `/dev/stderr` are
/// the caller's own and are opened as before. Never blocks on a FIFO
/// without a reader.
fn open_report(path: &Path) -> std::io::Result<File> {
    use std::io::{Error, ErrorKind};
    let own_descriptor = ["/dev/fd/", "/proc/self/fd/"].iter().any(|dir| {
        path.strip_prefix(dir)
            .is_ok_and(|n| n.to_str().is_some_and(|n| n.parse::<u32>().is_ok()))
    }) || [Path::new("/dev/stdout"), Path::new("/dev/stderr")].contains(&path);
    if own_descriptor {
        return OpenOptions::new().write(true).truncate(true).open(path);
    }
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                Error::other("it is a symbolic link, which idem does not follow for a report; name the file itself")
            } else {
                e
            }
        })?;
    let meta = file.metadata()?;
    if meta.is_file() {
        let me = nix::unistd::geteuid().as_raw();
        if meta.uid() != me {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                format!(
                    "it belongs to uid {}, not to this user (uid {me}); it was left untouched",
                    meta.uid()
                ),
            ));
        }
        if meta.nlink() > 1 {
            return Err(Error::other(
                "it has other names (hard links); it was left untouched",
            ));
        }
        file.set_len(0)?;
    }
    // A FIFO with a reader, a terminal: written as they come.
    let flags = nix::fcntl::fcntl(
        std::os::fd::AsRawFd::as_raw_fd(&file),
        nix::fcntl::FcntlArg::F_GETFL,
    )?;
    let blocking = nix::fcntl::OFlag::from_bits_truncate(flags) & !nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(
        std::os::fd::AsRawFd::as_raw_fd(&file),
        nix::fcntl::FcntlArg::F_SETFL(blocking),
    )?;
    Ok(file)
}
