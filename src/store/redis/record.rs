//! How a record is laid out in its Redis hash, and read back.

use crate::owner::{ChildId, Owner};
use crate::store::{Record, Status};

/// Every field of a record hash except the stored output, in `HMGET` order.
pub(super) const FIELDS: [&str; 28] = [
    "status",
    "fingerprint",
    "command",
    "cwd",
    "attempt",
    "token",
    "rev",
    "started_at",
    "finished_at",
    "expires_at",
    "lease_until",
    "exit_code",
    "signal",
    "timed_out",
    "replays",
    "owner_host",
    "owner_boot",
    "owner_pid_ns",
    "owner_pid",
    "owner_start",
    "child_pid",
    "child_pgid",
    "child_start",
    "stdout_bytes",
    "stderr_bytes",
    "stdout_truncated",
    "stderr_truncated",
    "label",
];

/// A record from its `HMGET` values and its revision; `None` when absent.
pub(super) fn parse_record(key: &str, values: &[Option<Vec<u8>>]) -> Option<(Record, String)> {
    let field = |name: &str| -> Option<&[u8]> {
        let at = FIELDS.iter().position(|f| *f == name)?;
        values.get(at)?.as_deref()
    };
    let text = |name: &str| String::from_utf8_lossy(field(name).unwrap_or_default()).into_owned();
    let int = |name: &str| -> Option<i64> { std::str::from_utf8(field(name)?).ok()?.parse().ok() };
    let flag = |name: &str| int(name).is_some_and(|v| v != 0);
    let status = field("status")?;
    let child = int("child_pid").map(|pid| ChildId {
        pid,
        pgid: int("child_pgid").unwrap_or(pid),
        start: int("child_start").unwrap_or(0),
    });
    let record = Record {
        key: key.to_owned(),
        status: std::str::from_utf8(status)
            .ok()
            .and_then(Status::parse)
            .unwrap_or(Status::Failed),
        fingerprint: field("fingerprint").unwrap_or_default().to_vec(),
        command: field("command").unwrap_or_default().to_vec(),
        cwd: field("cwd").unwrap_or_default().to_vec(),
        attempt: int("attempt").unwrap_or(1),
        token: int("token").unwrap_or(0),
        started_at: int("started_at").unwrap_or(0),
        finished_at: int("finished_at"),
        expires_at: int("expires_at"),
        lease_until: int("lease_until"),
        exit_code: int("exit_code").and_then(|c| i32::try_from(c).ok()),
        signal: int("signal").and_then(|s| i32::try_from(s).ok()),
        timed_out: flag("timed_out"),
        replays: int("replays").unwrap_or(0),
        owner: Owner {
            host: text("owner_host"),
            boot_id: text("owner_boot"),
            // Absent (older records) or empty: unknown.
            pid_ns: int("owner_pid_ns"),
            pid: int("owner_pid").unwrap_or(0),
            start: int("owner_start").unwrap_or(0),
            child,
            lock: None,
        },
        stdout_bytes: int("stdout_bytes").unwrap_or(0),
        stderr_bytes: int("stderr_bytes").unwrap_or(0),
        stdout_truncated: flag("stdout_truncated"),
        stderr_truncated: flag("stderr_truncated"),
        label: field("label").map(|l| String::from_utf8_lossy(l).into_owned()),
    };
    Some((record, text("rev")))
}
