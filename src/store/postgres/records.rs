//! Reading records back: the columns a record is made of, a row turned
//! into a `Record`, and `list`, which pages through a table newest first
//! (keyset pagination on `started_at, key`, so a million records never sit
//! in memory at once, and a slow reader never holds a statement open).

use super::conn::{Conn, CALL_LIMIT};
use crate::owner::{ChildId, Owner};
use crate::store::{Filter, Millis, Record, Status};
use anyhow::Result;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

/// Columns of a record, in the order `record_from_row` reads them. Records
/// written before the journal (schema 2 and older) have no per-stream
/// counts: their output is in the `stdout` and `stderr` columns.
pub const COLUMNS: &str = "key, status, fingerprint, command, cwd, attempt, token, started_at, \
    finished_at, expires_at, lease_until, exit_code, signal, timed_out, replays, owner_host, \
    owner_boot, owner_pid, owner_start, child_pid, child_pgid, child_start, \
    coalesce(stdout_bytes, octet_length(stdout))::bigint, \
    coalesce(stderr_bytes, octet_length(stderr))::bigint, stdout_truncated, stderr_truncated, \
    label, owner_pid_ns";
/// How many records `list` holds in memory at once.
const PAGE: i64 = 500;

/// Calls `each` for every record of `table` that `filter` selects, newest
/// first, a page at a time; `now` is the server's time for `expired`.
pub fn list(
    conn: &mut Conn,
    table: &str,
    filter: &Filter,
    now: Millis,
    each: &mut dyn FnMut(Record) -> Result<()>,
) -> Result<()> {
    let mut left = filter.limit.map(|l| i64::try_from(l).unwrap_or(i64::MAX));
    let mut after: Option<(i64, String)> = None;
    loop {
        let page = left.map_or(PAGE, |l| l.min(PAGE));
        if page <= 0 {
            return Ok(());
        }
        let mut sql = format!("SELECT {COLUMNS} FROM {table} WHERE true");
        let mut params: Vec<&(dyn ToSql + Sync)> = Vec::new();
        if !filter.keys.is_empty() {
            add(&mut sql, &mut params, " AND key = ANY(?)", &filter.keys);
        }
        let status = filter.status.map(Status::as_str);
        if let Some(status) = &status {
            add(&mut sql, &mut params, " AND status = ?", status);
        }
        if filter.expired {
            add(&mut sql, &mut params, " AND expires_at <= ?", &now);
        }
        if let Some(prefix) = &filter.prefix {
            add(&mut sql, &mut params, " AND starts_with(key, ?)", prefix);
        }
        if let Some(before) = &filter.started_before {
            add(&mut sql, &mut params, " AND started_at < ?", before);
        }
        if let Some((started, key)) = &after {
            add(&mut sql, &mut params, " AND (started_at < ?", started);
            add(&mut sql, &mut params, " OR (started_at = ?", started);
            add(&mut sql, &mut params, " AND key > ?))", key);
        }
        sql.push_str(&format!(" ORDER BY started_at DESC, key LIMIT {page}"));
        let rows = conn.call("cannot list records", CALL_LIMIT, async |c| {
            let rows = c.query(&sql, &params).await?;
            rows.iter()
                .filter_map(|row| record_from_row(row, 0).transpose())
                .collect::<Result<Vec<Record>, _>>()
        })?;
        let full = i64::try_from(rows.len()).unwrap_or(0) == page;
        if let Some(last) = rows.last() {
            after = Some((last.started_at, last.key.clone()));
        }
        left = left.map(|l| l - i64::try_from(rows.len()).unwrap_or(0));
        for record in rows {
            each(record)?;
        }
        if !full {
            return Ok(());
        }
    }
}

/// Appends `clause` to `sql` with its `?` bound to `value`.
fn add<'a>(
    sql: &mut String,
    params: &mut Vec<&'a (dyn ToSql + Sync)>,
    clause: &str,
    value: &'a (dyn ToSql + Sync),
) {
    params.push(value);
    sql.push_str(&clause.replace('?', &format!("${}", params.len())));
}

/// The record in the columns of `row` from `at` on (`COLUMNS` order), or
/// `None` when they are NULL (no such record).
pub fn record_from_row(row: &Row, at: usize) -> Result<Option<Record>, tokio_postgres::Error> {
    let Some(key) = row.try_get::<_, Option<String>>(at)? else {
        return Ok(None);
    };
    let get = |i: usize| at + i;
    let status: String = row.try_get(get(1))?;
    let child_pid: Option<i64> = row.try_get(get(19))?;
    Ok(Some(Record {
        key,
        status: Status::parse(&status).unwrap_or(Status::Failed),
        fingerprint: row.try_get(get(2))?,
        command: row.try_get(get(3))?,
        cwd: row.try_get(get(4))?,
        attempt: row.try_get(get(5))?,
        token: row.try_get(get(6))?,
        started_at: row.try_get(get(7))?,
        finished_at: row.try_get(get(8))?,
        expires_at: row.try_get(get(9))?,
        lease_until: row.try_get(get(10))?,
        exit_code: row.try_get(get(11))?,
        signal: row.try_get(get(12))?,
        timed_out: row.try_get(get(13))?,
        replays: row.try_get(get(14))?,
        owner: Owner {
            host: row.try_get(get(15))?,
            boot_id: row.try_get(get(16))?,
            pid_ns: row.try_get(get(27))?,
            pid: row.try_get(get(17))?,
            start: row.try_get(get(18))?,
            child: match child_pid {
                Some(pid) => Some(ChildId {
                    pid,
                    pgid: row.try_get::<_, Option<i64>>(get(20))?.unwrap_or(pid),
                    start: row.try_get::<_, Option<i64>>(get(21))?.unwrap_or(0),
                }),
                None => None,
            },
            lock: None,
        },
        stdout_bytes: row.try_get(get(22))?,
        stderr_bytes: row.try_get(get(23))?,
        stdout_truncated: row.try_get(get(24))?,
        stderr_truncated: row.try_get(get(25))?,
        label: row.try_get(get(26))?,
    }))
}
