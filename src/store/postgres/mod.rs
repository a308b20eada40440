//! The PostgreSQL backend: one table on a server that many hosts share.
//!
//! Every time the store compares or stamps is the server's `now()`, never a
//! caller's clock. A claim reads the row `FOR UPDATE` in a transaction, asks
//! the shared policy, and writes conditionally on the token it saw (or on the
//! row still being absent): of many hosts racing, exactly one writes. Each
//! claim takes a fencing token from a sequence; renewals, finish, replay
//! counting and deletion all name that token, so an owner that lost its
//! lease can never overwrite the record of the run that took over.

mod check;
mod conn;
mod libpq;
mod records;
mod schema;
mod target;
#[cfg(test)]
mod tests;
mod tls;

use super::{Claim, Filter, Millis, Mode, Outcome, Record, Store, Stream};
use crate::owner::ChildId;
use crate::store::{finish_patiently, FinishFailure};
use anyhow::Result;
use conn::{Conn, Failure, CALL_LIMIT};
use records::{record_from_row, COLUMNS};
use schema::{Found, Names, SCHEMA_VERSION};
use std::io::Write;
use std::time::Duration;
use target::Target;
use tokio_postgres::types::{ToSql, Type};

/// The server's clock in milliseconds since the epoch.
const NOW: &str = "(extract(epoch FROM now()) * 1000)::bigint";
/// How many expired records a claim deletes on its way.
const CLEANUP_BATCH: i64 = 16;
/// How much stored output one round trip carries during replay.
const CHUNK: i32 = 1024 * 1024;
/// How long `finish` keeps trying to reach the server once COMMAND has run.
/// How many times a claim re-reads after losing a race before giving up.
const CLAIM_ROUNDS: usize = 100;

/// A statement parameter with its type, so that a statement needs one
/// round trip rather than a prepare and an execute.
type Param<'a> = (&'a (dyn ToSql + Sync), Type);

pub struct PgStore {
    conn: Conn,
    names: Names,
}

pub fn open(url: &str, mode: Mode) -> Result<Option<Box<dyn Store>>> {
    Ok(PgStore::open(url, mode)?.map(|s| Box::new(s) as Box<dyn Store>))
}

/// The URL as it may be shown: without its password.
pub fn shown(url: &str) -> String {
    target::redact(url)
}

impl PgStore {
    fn open(url: &str, mode: Mode) -> Result<Option<PgStore>> {
        let target = Target::parse(url, mode == Mode::ReadOnly)?;
        let names = Names::new(&target.table);
        let mut conn = Conn::new(target)?;
        let found = conn.call("cannot read the store", CALL_LIMIT, async |c| {
            schema::inspect(c, &names).await
        })?;
        let found = match (found, mode) {
            (Found::Missing, Mode::Create) => {
                conn.call("cannot create the store", CALL_LIMIT, async |c| {
                    schema::create(c, &names).await
                })?
            }
            (Found::Missing, Mode::Existing | Mode::ReadOnly) => return Ok(None),
            (Found::Older(_), _) => {
                conn.call("cannot upgrade the store", CALL_LIMIT, async |c| {
                    schema::migrate(c, &names).await
                })?
            }
            (found, _) => found,
        };
        match found {
        Found::Ready => Ok(Some(PgStore { conn, names })),
        Found::Missing => conn.fail("it vanished while it was being created; try again"),
        Found::Older(version) => conn.fail(&format!(
            "it still has schema version {version} after an upgrade to {SCHEMA_VERSION}; try again"
        )),
        Found::Newer(version) => conn.fail(&format!(
            "it has schema version {version}, newer than this idem understands ({SCHEMA_VERSION}); upgrade idem"
        )),
        Found::Foreign => conn.fail(&format!(
            "table {} exists but is not an idem store; it was left untouched (choose another ?table=)",
            conn.target.table
        )),
    }
    }

    /// `SELECT` of the server's time and the record of `$1`, if any: one
    /// row either way.
    fn read_sql(&self, lock: bool) -> String {
        format!(
            "SELECT {NOW}, r.* FROM (SELECT 1) AS one LEFT JOIN LATERAL \
             (SELECT {COLUMNS} FROM {} WHERE key = $1{}) AS r ON true",
            self.names.records,
            if lock { " FOR UPDATE" } else { "" }
        )
    }

    fn output_column(stream: Stream) -> &'static str {
        match stream {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }

    /// One attempt to store the outcome; `with_output` false stores it
    /// without the captured bytes (flagged as truncated).
    fn write_outcome(
        &mut self,
        key: &str,
        token: i64,
        outcome: &Outcome,
        with_output: bool,
        limit: Duration,
    ) -> Result<bool, Failure> {
        let sql = format!(
            "UPDATE {} SET status = $3, finished_at = {NOW}, expires_at = {NOW} + $4, \
                exit_code = $5, signal = $6, timed_out = $7, stdout = $8, stderr = $9, \
                stdout_truncated = $10, stderr_truncated = $11, lease_until = NULL \
             WHERE key = $1 AND token = $2",
            self.names.records
        );
        let (out, err): (&[u8], &[u8]) = if with_output {
            (&outcome.stdout.bytes, &outcome.stderr.bytes)
        } else {
            (&[], &[])
        };
        let cut = |c: &super::Captured| c.truncated || (!with_output && !c.bytes.is_empty());
        let (out_cut, err_cut) = (cut(&outcome.stdout), cut(&outcome.stderr));
        self.conn.try_call(limit, async |c| {
            let changed = c
                .execute_typed(
                    &sql,
                    &[
                        (&key, Type::TEXT),
                        (&token, Type::INT8),
                        (&outcome.status.as_str(), Type::TEXT),
                        (&outcome.ttl_ms, Type::INT8),
                        (&outcome.exit_code, Type::INT4),
                        (&outcome.signal, Type::INT4),
                        (&outcome.timed_out, Type::BOOL),
                        (&out, Type::BYTEA),
                        (&err, Type::BYTEA),
                        (&out_cut, Type::BOOL),
                        (&err_cut, Type::BOOL),
                    ],
                )
                .await?;
            Ok(changed == 1)
        })
    }

    /// Runs an `UPDATE … WHERE key = $1 AND token = $2 …` and says whether
    /// it touched the record.
    fn update(
        &mut self,
        doing: &str,
        limit: Duration,
        sql: &str,
        params: &[Param],
    ) -> Result<bool> {
        let changed = self
            .conn
            .call(doing, limit, async |c| c.execute_typed(sql, params).await)?;
        Ok(changed == 1)
    }
}

impl Store for PgStore {
    fn now(&mut self) -> Result<Millis> {
        let sql = format!("SELECT {NOW}");
        self.conn
            .call("cannot read the server's clock", CALL_LIMIT, async |c| {
                Ok(c.query_typed_one(&sql, &[]).await?.get(0))
            })
    }

    fn get(&mut self, key: &str) -> Result<(Millis, Option<Record>)> {
        let sql = self.read_sql(false);
        self.conn
            .call("cannot read a record", CALL_LIMIT, async |c| {
                let row = c.query_typed_one(&sql, &[(&key, Type::TEXT)]).await?;
                Ok((row.try_get(0)?, record_from_row(&row, 1)?))
            })
    }

    fn claim(
        &mut self,
        key: &str,
        decide: &mut dyn FnMut(Option<&Record>, Millis) -> Option<Claim>,
    ) -> Result<Option<i64>> {
        let read = self.read_sql(true);
        let (records, sequence) = (&self.names.records, &self.names.token);
        let fields = "status = 'in_progress', fingerprint = $2, command = $3, cwd = $4, \
            attempt = $5, owner_host = $6, owner_boot = $7, owner_pid = $8, owner_start = $9, label = $11, \
            owner_pid_ns = $12";
        let replace = format!(
            "UPDATE {records} SET {fields}, token = nextval('{sequence}'), started_at = {NOW}, \
                lease_until = {NOW} + $10, finished_at = NULL, expires_at = NULL, \
                exit_code = NULL, signal = NULL, timed_out = false, replays = 0, \
                child_pid = NULL, child_pgid = NULL, child_start = NULL, \
                stdout = '', stderr = '', stdout_truncated = false, stderr_truncated = false \
             WHERE key = $1 AND token = $13 RETURNING token"
        );
        let insert = format!(
            "INSERT INTO {records} (key, status, fingerprint, command, cwd, attempt, owner_host, \
                owner_boot, owner_pid, owner_start, label, token, started_at, lease_until, \
                owner_pid_ns) \
             VALUES ($1, 'in_progress', $2, $3, $4, $5, $6, $7, $8, $9, $11, \
                nextval('{sequence}'), {NOW}, {NOW} + $10, $12) \
             ON CONFLICT (key) DO NOTHING RETURNING token"
        );
        let cleanup = format!(
            "DELETE FROM {records} WHERE key IN (SELECT key FROM {records} \
             WHERE expires_at <= {NOW} AND key <> $1 LIMIT {CLEANUP_BATCH} FOR UPDATE SKIP LOCKED)"
        );
        for _ in 0..CLAIM_ROUNDS {
            // Some(None): decided not to claim. None: lost a race, read again.
            let round = self
                .conn
                .call("cannot claim the key", CALL_LIMIT, async |c| {
                    let tx = c.transaction().await?;
                    let row = tx.query_typed_one(&read, &[(&key, Type::TEXT)]).await?;
                    let existing = record_from_row(&row, 1)?;
                    let Some(claim) = decide(existing.as_ref(), row.get(0)) else {
                        return Ok(Some(None));
                    };
                    let Claim {
                        fingerprint,
                        command,
                        cwd,
                        attempt,
                        owner,
                        lease_ms,
                        label,
                    } = &claim;
                    let mut params: Vec<Param> = vec![
                        (&key, Type::TEXT),
                        (fingerprint, Type::BYTEA),
                        (command, Type::BYTEA),
                        (cwd, Type::BYTEA),
                        (attempt, Type::INT8),
                        (&owner.host, Type::TEXT),
                        (&owner.boot_id, Type::TEXT),
                        (&owner.pid, Type::INT8),
                        (&owner.start, Type::INT8),
                        (lease_ms, Type::INT8),
                        (label, Type::TEXT),
                        (&owner.pid_ns, Type::INT8),
                    ];
                    let observed = existing.as_ref().map(|r| r.token);
                    let written = match &observed {
                        Some(token) => {
                            params.push((token, Type::INT8));
                            tx.query_typed(&replace, &params).await?
                        }
                        None => tx.query_typed(&insert, &params).await?,
                    };
                    let Some(written) = written.first() else {
                        return Ok(None);
                    };
                    tx.execute_typed(&cleanup, &[(&key, Type::TEXT)]).await?;
                    tx.commit().await?;
                    Ok(Some(Some(written.get::<_, i64>(0))))
                })?;
            if let Some(token) = round {
                return Ok(token);
            }
        }
        self.conn
            .fail("cannot claim the key: it kept changing under contention; try again")
    }

    fn set_child(&mut self, key: &str, token: i64, child: ChildId) -> Result<bool> {
        let sql = format!(
            "UPDATE {} SET child_pid = $3, child_pgid = $4, child_start = $5 \
             WHERE key = $1 AND token = $2 AND status = 'in_progress'",
            self.names.records
        );
        self.update(
            "cannot record the child",
            CALL_LIMIT,
            &sql,
            &[
                (&key, Type::TEXT),
                (&token, Type::INT8),
                (&child.pid, Type::INT8),
                (&child.pgid, Type::INT8),
                (&child.start, Type::INT8),
            ],
        )
    }

    fn renew(&mut self, key: &str, token: i64, lease_ms: Millis) -> Result<bool> {
        let sql = format!(
            "UPDATE {} SET lease_until = {NOW} + $3 \
             WHERE key = $1 AND token = $2 AND status = 'in_progress'",
            self.names.records
        );
        // A third of the lease at most (within sane bounds): the run loop
        // forwards signals from this thread and renews again soon.
        let limit = Duration::from_millis(u64::try_from(lease_ms / 3).unwrap_or(0))
            .clamp(Duration::from_secs(1), Duration::from_secs(10));
        self.update(
            "cannot renew the lease",
            limit,
            &sql,
            &[
                (&key, Type::TEXT),
                (&token, Type::INT8),
                (&lease_ms, Type::INT8),
            ],
        )
    }

    fn finish(&mut self, key: &str, token: i64, outcome: &Outcome) -> Result<bool> {
        let shown = self.conn.target.shown.clone();
        finish_patiently(&shown, |with_output, left| {
            let limit = left.min(CALL_LIMIT).max(Duration::from_secs(1));
            self.write_outcome(key, token, outcome, with_output, limit)
                .map_err(|failure| match failure {
                    Failure::Server(why) => FinishFailure::Output(why),
                    Failure::Lost(why) => FinishFailure::Retry(why),
                })
        })
    }

    fn copy_output(
        &mut self,
        key: &str,
        token: i64,
        stream: Stream,
        out: &mut dyn Write,
    ) -> Result<bool> {
        // Chunk by chunk, each naming the token: the stored bytes of a
        // finished claim never change, and a purge or takeover shows up as
        // a missing row.
        let sql = format!(
            "SELECT octet_length({column})::bigint, substring({column} FROM $3 FOR $4) \
             FROM {} WHERE key = $1 AND token = $2",
            self.names.records,
            column = Self::output_column(stream)
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
                        (&CHUNK, Type::INT4),
                    ];
                    let rows = c.query_typed(&sql, &params).await?;
                    Ok(rows
                        .first()
                        .map(|r| (r.get::<_, i64>(0), r.get::<_, Vec<u8>>(1))))
                })?;
            let Some((total, bytes)) = chunk else {
                if from == 1 {
                    return Ok(false);
                }
                return self
                    .conn
                    .fail("the record was purged or taken over during its replay");
            };
            out.write_all(&bytes)?;
            from = from.saturating_add(CHUNK);
            if i64::from(from) > total || bytes.is_empty() {
                return Ok(true);
            }
        }
    }

    fn count_replay(&mut self, key: &str, token: i64) -> Result<()> {
        let sql = format!(
            "UPDATE {} SET replays = replays + 1 WHERE key = $1 AND token = $2",
            self.names.records
        );
        let params: [Param; 2] = [(&key, Type::TEXT), (&token, Type::INT8)];
        self.update("cannot count the replay", CALL_LIMIT, &sql, &params)
            .map(drop)
    }

    fn list(&mut self, filter: &Filter, each: &mut dyn FnMut(Record) -> Result<()>) -> Result<()> {
        let now = self.now()?;
        records::list(&mut self.conn, &self.names.records, filter, now, each)
    }

    fn delete(&mut self, records: &[(String, i64)]) -> Result<u64> {
        let sql = format!(
            "DELETE FROM {} AS r USING unnest($1::text[], $2::bigint[]) AS d(key, token) \
             WHERE r.key = d.key AND r.token = d.token",
            self.names.records
        );
        let keys: Vec<&str> = records.iter().map(|(k, _)| k.as_str()).collect();
        let tokens: Vec<i64> = records.iter().map(|(_, t)| *t).collect();
        self.conn
            .call("cannot delete records", CALL_LIMIT, async |c| {
                c.execute(&sql, &[&keys, &tokens]).await
            })
    }

    fn is_shared(&self) -> bool {
        true
    }

    /// The records table with its indexes and TOAST (stored output).
    fn size(&mut self) -> Result<Option<u64>> {
        let sql = "SELECT pg_total_relation_size(to_regclass($1))";
        let table = self.names.records.clone();
        let size: Option<i64> =
            self.conn
                .call("cannot read the store's size", CALL_LIMIT, async |c| {
                    Ok(c.query_typed_one(sql, &[(&table, Type::TEXT)])
                        .await?
                        .get(0))
                })?;
        Ok(size.and_then(|s| u64::try_from(s).ok()))
    }

    fn check(&mut self) -> Result<Vec<super::Finding>> {
        self.run_checks()
    }
}
