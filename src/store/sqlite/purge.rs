//! Bulk purge for the SQLite store: millions of records in seconds, without
//! locking running jobs out for more than a moment.
//!
//! The table is walked in rowid order, a window of `PURGE_BATCH` rows per
//! write transaction, each resuming where the last stopped (no re-scan, no
//! sort). Finished records are deleted inside SQLite, one statement per
//! window, never decoded; only `in_progress` records are read out, because
//! the caller must judge their owners, and they are deleted by rowid and
//! fencing token, status and lease, so a record claimed again, finished or
//! renewed in the meantime stays. The space
//! is freed at the end: by a `VACUUM` when little is left alive (it copies
//! only what remains, so it is quick), else by incremental vacuum in chunks.
//! Between purges, each claim deletes a few expired records on its way.

use super::{
    describe, filter_sql, now_millis, record_from_row, store_failure, SqliteStore, Sync,
    RECORD_COLUMNS, RECORD_COLUMN_COUNT,
};
use crate::store::{Filter, Record, Status, PURGE_BATCH};
use anyhow::Result;
use rusqlite::{params, Connection, OptionalExtension, ToSql, TransactionBehavior};

/// How many pages one incremental-vacuum transaction gives back.
const VACUUM_CHUNK: u32 = 1024;
/// A store with at most this many pages in use (4 KiB each) after a purge
/// is rebuilt by `VACUUM`, which then takes well under a second.
const VACUUM_MAX_LIVE_PAGES: i64 = 4096;

/// Deletes up to `batch` expired records other than `key`, with their
/// counts and journals, as a claim passes by, so a store does not grow
/// without bound between purges. Every claim prepares this, and most find
/// nothing due: a cheap look first, the delete only when it has work.
pub(super) fn delete_some_expired(
    tx: &rusqlite::Transaction<'_>,
    key: &str,
    now: i64,
    batch: i64,
) -> rusqlite::Result<()> {
    let due: Option<i64> = tx
        .prepare_cached("SELECT 1 FROM records WHERE expires_at <= ?1 AND key <> ?2")?
        .query_row(params![now, key], |r| r.get(0))
        .optional()?;
    if due.is_none() {
        return Ok(());
    }
    let gone = tx
        .prepare(
            "DELETE FROM records WHERE rowid IN
               (SELECT rowid FROM records WHERE expires_at <= ?1 AND key <> ?2 LIMIT ?3)
             RETURNING key",
        )?
        .query_map(params![now, key, batch], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut counts = tx.prepare("DELETE FROM replay_counts WHERE key = ?1")?;
    let mut journals = tx.prepare("DELETE FROM journal WHERE key = ?1")?;
    for key in gone {
        counts.execute([&key])?;
        journals.execute([&key])?;
    }
    Ok(())
}

impl SqliteStore {
    pub(super) fn purge_in_batches(
        &mut self,
        filter: &Filter,
        take_running: &mut dyn FnMut(&Record) -> Result<bool>,
    ) -> Result<u64> {
        // A deletion lost to a power cut only brings the records back, so
        // commits need no fsync. (Checkpoints keep their default pace: a
        // bigger WAL left behind would be checkpointed by the next `idem
        // run` in one long stall; measured, ~0.9 s against ~0.1 s.)
        self.wrote = true;
        self.shrunk = true;
        // Replay counts still in their file go to the records first (and
        // with the records they belong to).
        self.fold_replays(true)?;
        let lazy = self.sync(Sync::Normal);
        self.sql(lazy, "cannot set up the purge")?;
        let mut gone = 0;
        if filter.status.is_none_or(|s| s == Status::InProgress) {
            gone += self.purge_running(filter, take_running)?;
        }
        if filter.status != Some(Status::InProgress) {
            let finished = self.purge_finished(filter);
            gone += self.sql(finished, "cannot delete records")?;
        }
        // Replay counts of claims that are gone (each looked up by key).
        let counts = self.conn.execute(
            "DELETE FROM replay_counts WHERE NOT EXISTS (SELECT 1 FROM records AS r \
             WHERE r.key = replay_counts.key AND r.token = replay_counts.token)",
            [],
        );
        self.sql(counts, "cannot delete replay counts")?;
        // Journals likewise, a bounded batch per transaction.
        let journals = self.purge_journals();
        self.sql(journals, "cannot delete the output of purged records")?;
        let freed = self.reclaim_space();
        self.sql(freed, "cannot free the space of purged records")?;
        let durable = self.sync(Sync::Full);
        self.sql(durable, "cannot finish the purge")?;
        Ok(gone)
    }

    /// Named keys are found by the primary key; anything else walks the
    /// table itself in rowid order.
    fn source(filter: &Filter) -> &'static str {
        if filter.keys.is_empty() {
            "records NOT INDEXED"
        } else {
            "records"
        }
    }

    /// The selected `in_progress` records: each is shown to `take_running`.
    fn purge_running(
        &mut self,
        filter: &Filter,
        take_running: &mut dyn FnMut(&Record) -> Result<bool>,
    ) -> Result<u64> {
        let (clause, args) = filter_sql(filter, now_millis());
        let sql = format!(
            "SELECT {RECORD_COLUMNS}, rowid FROM {} WHERE {clause} AND status = 'in_progress' \
             AND rowid > ? ORDER BY rowid LIMIT {PURGE_BATCH}",
            Self::source(filter)
        );
        // Fields, not `self`: the loop below borrows the connection.
        let failed = |e: rusqlite::Error| {
            self.broken.set(true);
            store_failure(
                &self.path,
                &format!("cannot list records: {}", describe(&e)),
            )
        };
        let mut after = i64::MIN;
        let mut gone = 0;
        loop {
            let mut chosen = Vec::new();
            let mut seen = 0;
            {
                let mut stmt = self.conn.prepare_cached(&sql).map_err(failed)?;
                let mut params: Vec<&dyn ToSql> = args.iter().map(AsRef::as_ref).collect();
                params.push(&after);
                let mut rows = stmt.query(params.as_slice()).map_err(failed)?;
                while let Some(row) = rows.next().map_err(failed)? {
                    let mut record = record_from_row(row).map_err(failed)?;
                    self.owner_locks.judge(&mut record);
                    after = row.get(RECORD_COLUMN_COUNT).map_err(failed)?;
                    seen += 1;
                    if take_running(&record)? {
                        chosen.push((after, record.token, record.lease_until));
                    }
                }
            }
            if seen == 0 {
                return Ok(gone);
            }
            let deleted = delete_running(&mut self.conn, &chosen);
            gone += self.sql(deleted, "cannot delete records")?;
        }
    }

    /// The selected finished records, deleted by SQLite alone, one window
    /// of `PURGE_BATCH` rowids per transaction (named keys: one transaction).
    /// Checking `status` in the statement that deletes keeps a record that
    /// was claimed again meanwhile.
    fn purge_finished(&mut self, filter: &Filter) -> rusqlite::Result<u64> {
        let (clause, args) = filter_sql(filter, now_millis());
        let select = format!("{clause} AND status <> 'in_progress'");
        if !filter.keys.is_empty() {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let params: Vec<&dyn ToSql> = args.iter().map(AsRef::as_ref).collect();
            let gone = tx.execute(
                &format!("DELETE FROM records WHERE {select}"),
                params.as_slice(),
            )?;
            tx.commit()?;
            return Ok(gone as u64);
        }
        // NOT INDEXED: the rowid range must lead, whatever the filter.
        let window_end = format!(
            "SELECT rowid FROM records WHERE rowid > ? ORDER BY rowid LIMIT 1 OFFSET {}",
            PURGE_BATCH - 1
        );
        let delete =
            format!("DELETE FROM records NOT INDEXED WHERE rowid > ? AND rowid <= ? AND {select}");
        let mut after = i64::MIN;
        let mut gone = 0;
        loop {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let end: Option<i64> = tx
                .prepare_cached(&window_end)?
                .query_row([after], |r| r.get(0))
                .optional()?;
            let mut params: Vec<&dyn ToSql> = vec![&after];
            let last = end.unwrap_or(i64::MAX);
            params.push(&last);
            params.extend(args.iter().map(AsRef::as_ref));
            gone += tx.prepare_cached(&delete)?.execute(params.as_slice())? as u64;
            tx.commit()?;
            match end {
                Some(end) => after = end,
                None => return Ok(gone),
            }
        }
    }

    /// Deletes journal rows whose claim is gone.
    fn purge_journals(&mut self) -> rusqlite::Result<()> {
        loop {
            let gone = self.conn.execute(
                &format!(
                    "DELETE FROM journal WHERE rowid IN (SELECT rowid FROM journal AS j \
                     WHERE NOT EXISTS (SELECT 1 FROM records AS r \
                       WHERE r.key = j.key AND r.token = j.token) LIMIT {PURGE_BATCH})"
                ),
                [],
            )?;
            if gone < PURGE_BATCH {
                return Ok(());
            }
        }
    }

    /// Gives the pages of deleted records back to the file system.
    fn reclaim_space(&mut self) -> rusqlite::Result<()> {
        let (pages, free): (i64, i64) = self.conn.query_row(
            "SELECT (SELECT page_count FROM pragma_page_count), \
                    (SELECT freelist_count FROM pragma_freelist_count)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        if free == 0 {
            return Ok(());
        }
        if pages - free <= VACUUM_MAX_LIVE_PAGES {
            return self.conn.execute_batch("VACUUM");
        }
        loop {
            free_pages(&self.conn, VACUUM_CHUNK)?;
            let free: i64 = self
                .conn
                .query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
            if free == 0 {
                return Ok(());
            }
        }
    }
}

/// Deletes each `(rowid, token, lease)` whose row is still the running
/// claim that was judged, in one transaction: an owner that finished (or
/// renewed its lease) between the look and here keeps its record.
fn delete_running(
    conn: &mut Connection,
    rows: &[(i64, i64, Option<i64>)],
) -> rusqlite::Result<u64> {
    if rows.is_empty() {
        return Ok(0);
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut gone = 0;
    {
        let mut stmt = tx.prepare_cached(
            "DELETE FROM records WHERE rowid = ?1 AND token = ?2 \
             AND status = 'in_progress' AND lease_until IS ?3",
        )?;
        for (rowid, token, lease_until) in rows {
            gone += stmt.execute(params![rowid, token, lease_until])? as u64;
        }
    }
    tx.commit()?;
    Ok(gone)
}

/// Gives free pages back to the file system, at most `pages` of them (0:
/// all) in one transaction. The pragma frees one page per step, so it is
/// stepped to the end (a lone `execute_batch` step frees a single page).
pub(super) fn free_pages(conn: &Connection, pages: u32) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached(&format!("PRAGMA incremental_vacuum({pages})"))?;
    let mut rows = stmt.query([])?;
    while rows.next()?.is_some() {}
    Ok(())
}
