//! The records table's SQL: the columns a record is made of, a row turned
//! into a `Record`, the SQL of a `Filter` (for `list` and `purge`), and the
//! writes of a claim and of its outcome.
//! Replay counts live in their own table and are added in on reading; the
//! output sizes of records written before the journal come from their
//! `stdout` and `stderr` columns.

use super::{now_millis, purge, SqliteStore, Sync, CLEANUP_BATCH};
use crate::owner::{ChildId, Lock, Owner};
use crate::store::{Claim, Filter, Millis, Outcome, Record, Status};
use rusqlite::{params, OptionalExtension, Row, ToSql};

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
            stdout_truncated, stderr_truncated, label, lease_until, owner_pid_ns, owner_lock"
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
pub(super) const RECORD_COLUMN_COUNT: usize = 29;

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
            // Held until the store asks the kernel (`OwnerLocks::judge`).
            lock: row
                .get::<_, Option<i64>>(28)?
                .map(|byte| Lock { byte, held: true }),
        },
        stdout_bytes: row.get(21)?,
        stderr_bytes: row.get(22)?,
        stdout_truncated: row.get(23)?,
        stderr_truncated: row.get(24)?,
        label: row.get(25)?,
        lease_until: row.get(26)?,
    })
}

impl SqliteStore {
    /// The record of `key`, its replay count short (see `DECISION_COLUMNS`)
    /// unless `exactly`.
    pub(super) fn read_record(&self, key: &str, exactly: bool) -> rusqlite::Result<Option<Record>> {
        let columns = if exactly {
            RECORD_COLUMNS
        } else {
            DECISION_COLUMNS
        };
        self.conn
            .prepare_cached(&format!("SELECT {columns} FROM records WHERE key = ?1"))?
            .query_row([key], record_from_row)
            .optional()
    }

    /// `with_output` false drops the journal (the outcome matters more
    /// than its output: a full disk) and flags what it held as cut.
    pub(super) fn write_outcome(
        &mut self,
        key: &str,
        token: i64,
        outcome: &Outcome,
        with_output: bool,
    ) -> rusqlite::Result<bool> {
        let now = now_millis();
        self.sync(Sync::Full)?;
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        if !with_output {
            tx.execute(
                "DELETE FROM journal WHERE key = ?1 AND token = ?2",
                params![key, token],
            )?;
        }
        let changed = tx.execute(
            "UPDATE records SET status = ?3, finished_at = ?4, expires_at = ?4 + ?5, exit_code = ?6,
                signal = ?7, timed_out = ?8,
                stdout_truncated = ?9 OR (NOT ?11 AND stdout_bytes > 0),
                stderr_truncated = ?10 OR (NOT ?11 AND stderr_bytes > 0),
                stdout_bytes = CASE WHEN ?11 THEN stdout_bytes ELSE 0 END,
                stderr_bytes = CASE WHEN ?11 THEN stderr_bytes ELSE 0 END, lease_until = NULL
             WHERE key = ?1 AND token = ?2 AND status = 'in_progress'",
            params![
                key,
                token,
                outcome.status.as_str(),
                now,
                outcome.ttl_ms,
                outcome.exit_code,
                outcome.signal,
                outcome.timed_out,
                outcome.stdout.truncated,
                outcome.stderr.truncated,
                with_output,
            ],
        )?;
        tx.commit()?;
        Ok(changed == 1)
    }
}

/// A new fencing token: larger than every one this store gave before.
pub(super) fn next_token(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<i64> {
    tx.query_row(
        "UPDATE counters SET value = value + 1 WHERE name = 'token' RETURNING value",
        [],
        |r| r.get(0),
    )
}

/// Writes the claim; `replacing` when a record of `key` exists (a
/// takeover, a re-run, an expired record). Each statement is prepared
/// by every call, so it is kept simple: a plain `INSERT OR REPLACE`
/// (every column it does not name starts again from its default). The
/// owner's lock is the byte numbered by the token (`owner_lock`); there
/// is no lease (`lease_until` stays NULL).
pub(super) fn write_claim(
    tx: &rusqlite::Transaction<'_>,
    key: &str,
    claim: &Claim,
    replacing: bool,
    token: i64,
    now: Millis,
) -> rusqlite::Result<()> {
    if replacing {
        // A takeover or re-run starts a new journal.
        tx.prepare_cached("DELETE FROM journal WHERE key = ?1")?
            .execute([key])?;
    }
    tx.prepare_cached(
        "INSERT OR REPLACE INTO records (key, status, fingerprint, command, cwd, attempt, token,
            started_at, owner_host, owner_boot, owner_pid, owner_start, label, owner_pid_ns,
            owner_lock, child_pid, child_pgid, child_start, stdout_bytes, stderr_bytes)
         VALUES (?1, 'in_progress', ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14,
            ?15, ?16, ?17, 0, 0)",
    )?
    .execute(params![
        key,
        claim.fingerprint,
        claim.command,
        claim.cwd,
        claim.attempt,
        token,
        now,
        claim.owner.host,
        claim.owner.boot_id,
        claim.owner.pid,
        claim.owner.start,
        claim.label,
        claim.owner.pid_ns,
        token,
        claim.child.map(|c| c.pid),
        claim.child.map(|c| c.pgid),
        claim.child.map(|c| c.start),
    ])?;
    purge::delete_some_expired(tx, key, now, CLEANUP_BATCH)
}
