//! A call that does not run COMMAND and says why: a mismatched fingerprint,
//! a run in progress, a completed run under `--on-duplicate fail`, a crashed
//! run under `--on-crash block`. Each refusal names the record's owner or
//! times, and the command that lets the call through (another key, a wait,
//! `idem purge`); plus the few words that describe a record (its status, how
//! long ago) that the replay and skip paths share.

use super::report::Outcome as Reported;
use super::Call;
use crate::exit::{fail, Code};
use crate::store::{Millis, Record};
use crate::text::{command_line, escape, shell_word};
use anyhow::Result;
use std::time::Duration;

impl Call<'_> {
    /// A key reused for another command or other fingerprint inputs (exit 65).
    pub(super) fn refuse_mismatch<T>(&self, record: &Record) -> Result<T> {
        self.note(Reported::Refused, Some("mismatch"), record);
        fail(Code::Mismatch, self.mismatch_message(record))
    }

    /// A run in progress under a live owner (exit 75).
    pub(super) fn refuse_busy<T>(&self, record: &Record, now: Millis) -> Result<T> {
        self.note(Reported::Refused, Some("in_progress"), record);
        self.report.borrow_mut().judged_at(now);
        fail(
            Code::InProgress,
            format!(
                "{}; retry later, or use --on-duplicate wait",
                self.busy(Some(record), now)
            ),
        )
    }

    /// A completed run under `--on-duplicate fail` (exit 76).
    pub(super) fn refuse_completed<T>(&self, record: &Record, now: Millis) -> Result<T> {
        self.note(Reported::Refused, Some("completed"), record);
        fail(
            Code::Completed,
            format!(
                "key {} already completed {} (exit status {}); it expires {}; run `{}` to allow a re-run",
                self.shown_key(),
                ago(record.finished_at.unwrap_or(record.started_at), now),
                record_status(record),
                until(record.expires_at, now),
                purge_command(&self.key),
            ),
        )
    }

    /// A crashed run under `--on-crash block` (exit 77).
    pub(super) fn refuse_blocked<T>(&self, record: &Record, now: Millis) -> Result<T> {
        self.note(Reported::Refused, Some("crashed"), record);
        fail(
            Code::Crashed,
            format!(
                "key {}: an earlier run crashed (host {}, pid {}, started {}); check its side effects, then run `{}`",
                self.shown_key(),
                escape(record.owner.host.as_bytes()),
                record.owner.pid,
                ago(record.started_at, now),
                purge_command(&self.key),
            ),
        )
    }

    /// What holds the key: its owner and when its lease runs out unless
    /// renewed.
    pub(super) fn busy(&self, record: Option<&Record>, now: Millis) -> String {
        let owner = record.map_or_else(String::new, |r| {
            let lease = r.lease_until.map_or_else(String::new, |at| {
                format!(
                    "; its lease runs out {} unless its owner renews it",
                    until(Some(at), now)
                )
            });
            format!(
                " (pid {} on {}, attempt {}{lease})",
                r.owner.pid,
                escape(r.owner.host.as_bytes()),
                r.attempt
            )
        });
        format!("key {} is in progress elsewhere{owner}", self.shown_key())
    }

    fn mismatch_message(&self, record: &Record) -> String {
        let stored = command_line(record.argv());
        if stored == self.shown_command() {
            return format!(
                "key {} was used for the same command with other fingerprint inputs \
                 (stdin, --fingerprint-file, --env or --cwd): `{stored}`; use another key, \
                 or --allow-mismatch, or run `idem purge {}` to forget the stored run",
                self.shown_key(),
                shell_word(&self.key)
            );
        }
        format!(
            "key {} was used for a different command: stored `{}`, now `{}`; use another key, \
             or --allow-mismatch, or run `idem purge {}` to forget the stored run",
            self.shown_key(),
            command_line(record.argv()),
            self.shown_command(),
            shell_word(&self.key)
        )
    }
}

pub(super) fn record_status(record: &Record) -> String {
    if record.timed_out {
        "124 (timed out)".into()
    } else if let Some(sig) = record.signal {
        format!("{} (signal {sig})", 128 + sig)
    } else {
        record
            .exit_code
            .map_or_else(|| "unknown".into(), |c| c.to_string())
    }
}

pub(super) fn ago(at: Millis, now: Millis) -> String {
    let ms = u64::try_from(now - at).unwrap_or(0);
    format!("{} ago", crate::text::duration(Duration::from_millis(ms)))
}

fn until(at: Option<Millis>, now: Millis) -> String {
    match at {
        Some(at) => {
            let ms = u64::try_from(at - now).unwrap_or(0);
            format!("in {}", crate::text::duration(Duration::from_millis(ms)))
        }
        None => "never".into(),
    }
}

/// The command that purges `key`, ready to paste.
fn purge_command(key: &str) -> String {
    let end_of_options = if key.starts_with('-') { "-- " } else { "" };
    format!("idem purge {end_of_options}{}", shell_word(key))
}
