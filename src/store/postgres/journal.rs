//! The output journal on PostgreSQL: one `NAME_journal` row per frame,
//! keyed by the record's key, its claim's token and the frame's number
//! (`seq`, given by the owner: a retried append finds its frame there and
//! writes nothing), and
//! deleted with its record (a foreign key with `ON DELETE CASCADE`; a new
//! claim deletes the old claim's rows itself).
//!
//! An append adds its bytes to the record's per-stream counts in the same
//! statement (which is where it learns whether the claim is still its own)
//! and sends a `NOTIFY` on the channel named after the table, with the key
//! as payload; so does the outcome. A follower `LISTEN`s on that channel
//! and sleeps until a notification for its key arrives (or a second
//! passes, to look at the owner's lease): a waiter costs the server one
//! idle connection, and a round trip per batch of output.

use super::conn::{Failure, CALL_LIMIT};
use super::{Param, PgStore, NOW};
use crate::store::journal;
use crate::store::Chunk;
use crate::store::{Outcome, Stream};
use anyhow::Result;
use std::time::Duration;
use tokio_postgres::types::Type;

/// How much of the journal one round trip carries (at least one frame).
const PAGE_BYTES: i64 = 1024 * 1024;
/// How much of an old record's output column one round trip carries.
const LEGACY_CHUNK: i32 = 1024 * 1024;
/// How long one append may take: a batch that fails waits and goes with
/// the next (its frame number keeps it from being written twice), so a
/// stalled server costs little here, and a run stopped for its lease is
/// not held up for long by an append under way when it ends.
const APPEND_LIMIT: Duration = Duration::from_secs(5);

impl PgStore {
    pub(super) fn append(
        &mut self,
        key: &str,
        token: i64,
        seq: u64,
        chunks: &[Chunk<'_>],
    ) -> Result<bool> {
        let (records, table) = (&self.names.records, &self.names.journal);
        // The counts grow only with a frame that is not there yet; should a
        // lost try still be running, the primary key refuses the second
        // insert (and with it this statement, which is tried again later).
        // One row back means ours: written now, or by an earlier try.
        let sql = format!(
            "WITH r AS (UPDATE {records} SET stdout_bytes = coalesce(stdout_bytes, 0) + $3, \
                 stderr_bytes = coalesce(stderr_bytes, 0) + $4 \
               WHERE key = $1 AND token = $2 AND status = 'in_progress' \
                 AND NOT EXISTS (SELECT 1 FROM {table} WHERE key = $1 AND token = $2 AND seq = $7) \
               RETURNING key), \
             j AS (INSERT INTO {table} (key, token, seq, frame) \
               SELECT $1, $2, $7, $5 FROM r WHERE octet_length($5) > 0) \
             SELECT 1 FROM (SELECT pg_notify($6, $1) FROM r) AS woken \
             UNION ALL SELECT 1 FROM {records} \
               WHERE key = $1 AND token = $2 AND status = 'in_progress' \
                 AND EXISTS (SELECT 1 FROM {table} WHERE key = $1 AND token = $2 AND seq = $7)"
        );
        let (out, err) = journal::stream_lens(chunks);
        let frame = journal::frame(chunks);
        let channel = self.names.channel();
        let seq = i64::try_from(seq).unwrap_or(i64::MAX);
        let rows = self
            .conn
            .call("cannot store the output", APPEND_LIMIT, async |c| {
                let params: [Param; 7] = [
                    (&key, Type::TEXT),
                    (&token, Type::INT8),
                    (&out, Type::INT8),
                    (&err, Type::INT8),
                    (&frame, Type::BYTEA),
                    (&channel, Type::TEXT),
                    (&seq, Type::INT8),
                ];
                c.query_typed(&sql, &params).await
            })?;
        Ok(rows.len() == 1)
    }

    /// One attempt to store the outcome; `with_output` false drops the
    /// journal (flagged as cut) — the outcome matters more than its output.
    pub(super) fn write_outcome(
        &mut self,
        key: &str,
        token: i64,
        outcome: &Outcome,
        with_output: bool,
        limit: Duration,
    ) -> Result<bool, Failure> {
        let (records, table) = (&self.names.records, &self.names.journal);
        let sql = format!(
            "WITH d AS (DELETE FROM {table} WHERE key = $1 AND token = $2 AND NOT $8), u AS (UPDATE {records} SET status = $3, finished_at = {NOW}, \
                expires_at = {NOW} + $4, exit_code = $5, signal = $6, timed_out = $7, \
                stdout_truncated = $9 OR (NOT $8 AND coalesce(stdout_bytes, 0) > 0), \
                stderr_truncated = $10 OR (NOT $8 AND coalesce(stderr_bytes, 0) > 0), \
                stdout_bytes = CASE WHEN $8 THEN stdout_bytes ELSE 0 END, \
                stderr_bytes = CASE WHEN $8 THEN stderr_bytes ELSE 0 END, lease_until = NULL \
             WHERE key = $1 AND token = $2 RETURNING key) \
             SELECT pg_notify($11, $1) FROM u"
        );
        let channel = self.names.channel();
        self.conn.try_call(limit, async |c| {
            let rows = c
                .query_typed(
                    &sql,
                    &[
                        (&key, Type::TEXT),
                        (&token, Type::INT8),
                        (&outcome.status.as_str(), Type::TEXT),
                        (&outcome.ttl_ms, Type::INT8),
                        (&outcome.exit_code, Type::INT4),
                        (&outcome.signal, Type::INT4),
                        (&outcome.timed_out, Type::BOOL),
                        (&with_output, Type::BOOL),
                        (&outcome.stdout.truncated, Type::BOOL),
                        (&outcome.stderr.truncated, Type::BOOL),
                        (&channel, Type::TEXT),
                    ],
                )
                .await?;
            Ok(rows.len() == 1)
        })
    }

    pub(super) fn read(
        &mut self,
        key: &str,
        token: i64,
        from: u64,
        each: &mut dyn FnMut(Stream, &[u8]) -> Result<()>,
    ) -> Result<Option<u64>> {
        let (records, table) = (&self.names.records, &self.names.journal);
        // Frames from $3 on, up to about PAGE_BYTES, and how many there are
        // in all.
        let frames = format!(
            "SELECT seq, frame, total FROM (SELECT seq, frame, count(*) OVER () AS total, \
               sum(octet_length(frame)) OVER (ORDER BY seq) - octet_length(frame) AS before \
               FROM {table} WHERE key = r.key AND token = r.token AND seq >= $3 \
               ORDER BY seq LIMIT 256) AS w WHERE before < $4"
        );
        let sql = format!(
            "SELECT octet_length(r.stdout)::bigint, octet_length(r.stderr)::bigint, \
                j.seq, j.frame, j.total \
             FROM {records} AS r LEFT JOIN LATERAL ({frames}) AS j ON true \
             WHERE r.key = $1 AND r.token = $2 ORDER BY j.seq"
        );
        let mut at = i64::try_from(from).unwrap_or(i64::MAX);
        let mut first = true;
        loop {
            let rows = self
                .conn
                .call("cannot read the output", CALL_LIMIT, async |c| {
                    let params: [Param; 4] = [
                        (&key, Type::TEXT),
                        (&token, Type::INT8),
                        (&at, Type::INT8),
                        (&PAGE_BYTES, Type::INT8),
                    ];
                    c.query_typed(&sql, &params).await
                })?;
            let Some(head) = rows.first() else {
                if first {
                    return Ok(None);
                }
                return self
                    .conn
                    .fail("the record was purged or taken over while its output was read");
            };
            if first && from == 0 {
                let (out, err): (i64, i64) = (head.get(0), head.get(1));
                for (stream, len) in [(Stream::Stdout, out), (Stream::Stderr, err)] {
                    if len > 0 {
                        self.read_legacy(key, token, stream, each)?;
                    }
                }
            }
            first = false;
            let mut more = false;
            let mut read = 0;
            for row in &rows {
                let Some(seq) = row.get::<_, Option<i64>>(2) else {
                    continue;
                };
                journal::decode(row.get(3), each)?;
                at = seq + 1;
                read += 1;
                more = row.get::<_, i64>(4) > read;
            }
            if !more {
                return Ok(Some(u64::try_from(at).unwrap_or(0)));
            }
        }
    }

    /// A stream of a record written before journals, a chunk at a time.
    fn read_legacy(
        &mut self,
        key: &str,
        token: i64,
        stream: Stream,
        each: &mut dyn FnMut(Stream, &[u8]) -> Result<()>,
    ) -> Result<()> {
        let sql = format!(
            "SELECT octet_length({column})::bigint, substring({column} FROM $3 FOR $4) \
             FROM {} WHERE key = $1 AND token = $2",
            self.names.records,
            column = match stream {
                Stream::Stdout => "stdout",
                Stream::Stderr => "stderr",
            }
        );
        let mut from: i32 = 1;
        loop {
            let chunk = self
                .conn
                .call("cannot read the output", CALL_LIMIT, async |c| {
                    let params: [Param; 4] = [
                        (&key, Type::TEXT),
                        (&token, Type::INT8),
                        (&from, Type::INT4),
                        (&LEGACY_CHUNK, Type::INT4),
                    ];
                    let rows = c.query_typed(&sql, &params).await?;
                    Ok(rows
                        .first()
                        .map(|r| (r.get::<_, i64>(0), r.get::<_, Vec<u8>>(1))))
                })?;
            let Some((total, bytes)) = chunk else {
                return self
                    .conn
                    .fail("the record was purged or taken over while its output was read");
            };
            each(stream, &bytes)?;
            from = from.saturating_add(LEGACY_CHUNK);
            if i64::from(from) > total || bytes.is_empty() {
                return Ok(());
            }
        }
    }

    /// Sleeps until a notification for `key` arrives or `timeout` passes.
    /// The first call only starts listening (the caller reads again after
    /// it, so nothing sent in between is missed).
    pub(super) fn await_notification(&mut self, key: &str, timeout: Duration) -> Result<()> {
        if self.conn.listening() {
            self.conn.wait_note(key, timeout);
            return Ok(());
        }
        let sql = format!("LISTEN {}", self.names.records);
        self.conn
            .call("cannot wait for the output", CALL_LIMIT, async |c| {
                c.batch_execute(&sql).await
            })?;
        self.conn.set_listening();
        Ok(())
    }
}
