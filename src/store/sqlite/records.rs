//! Reading records back: the columns a record is made of, a row turned
//! into a `Record`, and the SQL of a `Filter` (for `list` and `purge`).
//! Replay counts live in their own table and are added in on reading; the
//! output sizes of records written before the journal come from their
//! `stdout` and `stderr` columns.

use crate::owner::{ChildId, Owner};
use crate::store::{Filter, Millis, Record, Status};
use rusqlite::{Row, ToSql};

/// A record's columns, its replay count being `$replays`.
macro_rules! columns {
    ($replays:literal) => {
        concat!(
            "key, status, fingerprint, command, cwd, attempt, token, started_at, \
            finished_at, expires_at, exit_code, signal, timed_out, ",
            $replays,
            ", owner_host, owner_boot, \
            owner_pid, owner_start, child_pid, child_pgid, child_start, \
            coalesce(stdout_bytes, length(stdout)), coalesce(stderr_bytes, length(stderr)), \
            stdout_truncated, stderr_truncated, label, lease_until, owner_pid_ns"
        )
    };
}

pub(super) const RECORD_COLUMNS: &str = columns!(
    "replays + coalesce((SELECT count FROM replay_counts AS c \
        WHERE c.key = records.key AND c.token = records.token), 0)"
);
/// The same but for the counts in `replay_counts`: what a run decides on
/// (it does not look at counts), a subquery cheaper to prepare (40 k
/// instructions, a twentieth of a replay).
pub(super) const DECISION_COLUMNS: &str = columns!("replays");
/// How many columns `RECORD_COLUMNS` names; a query may add more after them.
pub(super) const RECORD_COLUMN_COUNT: usize = 28;

/// The WHERE clause (without `WHERE`) and its arguments for `filter`.
pub(super) fn filter_sql(filter: &Filter, now: Millis) -> (String, Vec<Box<dyn ToSql>>) {
    let mut sql = String::from("1");
    let mut args: Vec<Box<dyn ToSql>> = Vec::new();
    if !filter.keys.is_empty() {
        let marks = vec!["?"; filter.keys.len()].join(", ");
        sql.push_str(&format!(" AND key IN ({marks})"));
        for key in &filter.keys {
            args.push(Box::new(key.clone()));
        }
    }
    if let Some(status) = filter.status {
        sql.push_str(" AND status = ?");
        args.push(Box::new(status.as_str()));
    }
    if filter.expired {
        sql.push_str(" AND expires_at <= ?");
        args.push(Box::new(now));
    }
    if let Some(prefix) = &filter.prefix {
        sql.push_str(" AND substr(key, 1, length(?)) = ?");
        args.push(Box::new(prefix.clone()));
        args.push(Box::new(prefix.clone()));
    }
    if let Some(before) = filter.started_before {
        sql.push_str(" AND started_at < ?");
        args.push(Box::new(before));
    }
    (sql, args)
}

pub(super) fn record_from_row(row: &Row<'_>) -> rusqlite::Result<Record> {
    let status: String = row.get(1)?;
    let child_pid: Option<i64> = row.get(18)?;
    Ok(Record {
        key: row.get(0)?,
        status: Status::parse(&status).unwrap_or(Status::Failed),
        fingerprint: row.get(2)?,
        command: row.get(3)?,
        cwd: row.get(4)?,
        attempt: row.get(5)?,
        token: row.get(6)?,
        started_at: row.get(7)?,
        finished_at: row.get(8)?,
        expires_at: row.get(9)?,
        exit_code: row.get(10)?,
        signal: row.get(11)?,
        timed_out: row.get(12)?,
        replays: row.get(13)?,
        owner: Owner {
            host: row.get(14)?,
            boot_id: row.get(15)?,
            pid_ns: row.get(27)?,
            pid: row.get(16)?,
            start: row.get(17)?,
            child: match child_pid {
                Some(pid) => Some(ChildId {
                    pid,
                    pgid: row.get::<_, Option<i64>>(19)?.unwrap_or(pid),
                    start: row.get::<_, Option<i64>>(20)?.unwrap_or(0),
                }),
                None => None,
            },
        },
        stdout_bytes: row.get(21)?,
        stderr_bytes: row.get(22)?,
        stdout_truncated: row.get(23)?,
        stderr_truncated: row.get(24)?,
        label: row.get(25)?,
        lease_until: row.get(26)?,
    })
}
