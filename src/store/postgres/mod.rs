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
mod journal;
mod libpq;
mod records;
mod schema;
mod target;
#[cfg(test)]
mod tests;
mod tls;

use super::{
    Chunk, Claim, Filter, Judged, LeaseKeeper, Millis, Mode, Outcome, Record, RenewalsOnly, Store,
    Stream,
};
use crate::lease::Lease;
use crate::store::{finish_patiently, FinishFailure};
use anyhow::Result;
use conn::{Conn, Failure, CALL_LIMIT};
use records::{record_from_row, COLUMNS};
use schema::Names;
use std::future::Future;
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;
use target::Target;
use tokio_postgres::types::{ToSql, Type};

/// The server's clock in milliseconds since the epoch.
const NOW: &str = "(extract(epoch FROM now()) * 1000)::bigint";
/// How many expired records a claim deletes on its way.
const CLEANUP_BATCH: i64 = 16;
/// How long `finish` keeps trying to reach the server once COMMAND has run.
/// How many times a claim re-reads after losing a race before giving up.
const CLAIM_ROUNDS: usize = 100;

/// A statement parameter with its type, so that a statement needs one
/// round trip rather than a prepare and an execute.
type Param<'a> = (&'a (dyn ToSql + Sync), Type);

pub struct PgStore {
    conn: Conn,
    names: Names,
    /// Whether the tables are known to be there at this build's version.
    settled: bool,
    /// The `--db` URL, for the lease keeper's own connection.
    url: String,
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
        let mut store = PgStore {
            conn: Conn::new(target)?,
            names,
            settled: false,
            url: url.to_owned(),
        };
        // `run` learns that the store is ready from its first read, in the
        // same round trip; the commands that must not create one look first.
        if mode == Mode::Create {
            return Ok(Some(store));
        }
        Ok(store.settle(mode)?.then_some(store))
    }

    /// `SELECT` of the server's time and the record of `$1`, if any: one
    /// row either way.
    fn read_sql(&self, lock: bool) -> String {
        format!(
            "SELECT {NOW}, r.* FROM (SELECT 1) AS one LEFT JOIN LATERAL \
             (SELECT {} FROM {} WHERE key = $1{}) AS r ON true",
            COLUMNS,
            self.names.records,
            if lock { " FOR UPDATE" } else { "" }
        )
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

/// A third of the lease of `lease_ms`: how long one renewal may take.
fn attempt_limit(lease_ms: Millis) -> Duration {
    Lease::new(Duration::from_millis(u64::try_from(lease_ms).unwrap_or(0))).attempt_limit()
}

/// Polls both futures together, so that their statements are sent in one
/// round trip (the client pipelines what is polled at once), in this order.
async fn both<A: Future, B: Future>(first: A, second: B) -> (A::Output, B::Output) {
    let (mut first, mut second) = (pin!(first), pin!(second));
    let (mut a, mut b) = (None, None);
    std::future::poll_fn(|cx| {
        if a.is_none() {
            a = match first.as_mut().poll(cx) {
                Poll::Ready(out) => Some(out),
                Poll::Pending => None,
            };
        }
        if b.is_none() {
            b = match second.as_mut().poll(cx) {
                Poll::Ready(out) => Some(out),
                Poll::Pending => None,
            };
        }
        match (a.take(), b.take()) {
            (Some(a), Some(b)) => Poll::Ready((a, b)),
            (left, right) => {
                (a, b) = (left, right);
                Poll::Pending
            }
        }
    })
    .await
}

/// Ends the claim's transaction without writing, then gives `result`.
async fn rolled_back<T>(
    client: &tokio_postgres::Client,
    result: Result<T, tokio_postgres::Error>,
) -> Result<T, tokio_postgres::Error> {
    client.batch_execute("ROLLBACK").await?;
    result
}

impl Store for PgStore {
    fn now(&mut self) -> Result<Millis> {
        self.ready()?;
        let sql = format!("SELECT {NOW}");
        self.conn
            .call("cannot read the server's clock", CALL_LIMIT, async |c| {
                Ok(c.query_typed_one(&sql, &[]).await?.get(0))
            })
    }

    fn get(&mut self, key: &str) -> Result<(Millis, Option<Record>)> {
        if !self.settled {
            if let Some(found) = self.first_read(key)? {
                return Ok(found);
            }
            self.ready()?;
        }
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
        self.ready()?;
        let read = self.read_sql(true);
        let (records, sequence) = (&self.names.records, &self.names.token);
        let fields = "status = 'in_progress', fingerprint = $2, command = $3, cwd = $4, \
            attempt = $5, owner_host = $6, owner_boot = $7, owner_pid = $8, owner_start = $9, label = $11, \
            owner_pid_ns = $12, child_pid = $13, child_pgid = $14, child_start = $15";
        let cleanup = format!(
            "c AS (DELETE FROM {records} WHERE key IN (SELECT key FROM {records} \
             WHERE expires_at <= {NOW} AND key <> $1 LIMIT {CLEANUP_BATCH} FOR UPDATE SKIP LOCKED))"
        );
        // A takeover or re-run starts a new journal; expired records go on
        // the way. One statement, so that the write and the commit travel
        // together.
        let replace = format!(
            "WITH w AS (UPDATE {records} SET {fields}, token = nextval('{sequence}'), started_at = {NOW}, \
                lease_until = {NOW} + $10, finished_at = NULL, expires_at = NULL, \
                exit_code = NULL, signal = NULL, timed_out = false, replays = 0, \
                stdout = '', stderr = '', stdout_truncated = false, stderr_truncated = false, \
                stdout_bytes = 0, stderr_bytes = 0 \
             WHERE key = $1 AND token = $16 RETURNING token), \
             f AS (DELETE FROM {} WHERE key = $1 AND EXISTS (SELECT 1 FROM w)), {cleanup} \
             SELECT token FROM w",
            self.names.journal
        );
        let insert = format!(
            "WITH w AS (INSERT INTO {records} (key, status, fingerprint, command, cwd, attempt, owner_host, \
                owner_boot, owner_pid, owner_start, label, token, started_at, lease_until, \
                owner_pid_ns, child_pid, child_pgid, child_start, stdout_bytes, stderr_bytes) \
             VALUES ($1, 'in_progress', $2, $3, $4, $5, $6, $7, $8, $9, $11, \
                nextval('{sequence}'), {NOW}, {NOW} + $10, $12, $13, $14, $15, 0, 0) \
             ON CONFLICT (key) DO NOTHING RETURNING token), {cleanup} SELECT token FROM w"
        );
        for _ in 0..CLAIM_ROUNDS {
            // Some(None): decided not to claim. None: lost a race, read again.
            let round = self
                .conn
                .call("cannot claim the key", CALL_LIMIT, async |c| {
                    // BEGIN and the locking read in one round trip.
                    let key_param: [Param; 1] = [(&key, Type::TEXT)];
                    let (begun, row) =
                        both(c.batch_execute("BEGIN"), c.query_typed(&read, &key_param)).await;
                    let row = match begun.and(row) {
                        Ok(rows) if rows.len() == 1 => rows.into_iter().next(),
                        Ok(_) => None,
                        Err(e) => return rolled_back(c, Err(e)).await,
                    };
                    // The read joins the record to one row: never empty.
                    let Some(row) = row else {
                        return rolled_back(c, Ok(None)).await;
                    };
                    let existing = match record_from_row(&row, 1) {
                        Ok(existing) => existing,
                        Err(e) => return rolled_back(c, Err(e)).await,
                    };
                    let Some(claim) = decide(existing.as_ref(), row.get(0)) else {
                        return rolled_back(c, Ok(Some(None))).await;
                    };
                    let Claim {
                        fingerprint,
                        command,
                        cwd,
                        attempt,
                        owner,
                        lease_ms,
                        label,
                        child,
                    } = &claim;
                    let (child_pid, child_pgid, child_start) = (
                        child.map(|c| c.pid),
                        child.map(|c| c.pgid),
                        child.map(|c| c.start),
                    );
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
                        (&child_pid, Type::INT8),
                        (&child_pgid, Type::INT8),
                        (&child_start, Type::INT8),
                    ];
                    let observed = existing.as_ref().map(|r| r.token);
                    let write = match &observed {
                        Some(token) => {
                            params.push((token, Type::INT8));
                            &replace
                        }
                        None => &insert,
                    };
                    // The write and COMMIT in one round trip: a failed write
                    // aborts the transaction, whose COMMIT then rolls back.
                    let (written, committed) =
                        both(c.query_typed(write, &params), c.batch_execute("COMMIT")).await;
                    let written = written?;
                    committed?;
                    Ok(written.first().map(|row| Some(row.get::<_, i64>(0))))
                })?;
            if let Some(token) = round {
                return Ok(token);
            }
        }
        self.conn
            .fail("cannot claim the key: it kept changing under contention; try again")
    }

    /// Within a third of the lease: an attempt that takes longer counts as
    /// failed, and the lease keeper sends the next one at once.
    fn renew(&mut self, key: &str, token: i64, lease_ms: Millis) -> Result<bool> {
        self.ready()?;
        let sql = format!(
            "UPDATE {} SET lease_until = {NOW} + $3 \
             WHERE key = $1 AND token = $2 AND status = 'in_progress'",
            self.names.records
        );
        let limit = attempt_limit(lease_ms);
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

    /// A connection of its own whose every wait — connecting, a statement,
    /// a lock, an unanswered socket — the server and the client both cut
    /// at a third of the lease.
    fn lease_keeper(&mut self, lease: Lease) -> Result<Option<Box<dyn LeaseKeeper>>> {
        let mut target = Target::parse(&self.url, false)?;
        let limit = lease.attempt_limit();
        let ms = limit.as_millis().max(1);
        let options = format!(
            "{} -c statement_timeout={ms} -c lock_timeout={ms}",
            target.config.get_options().unwrap_or_default()
        );
        target
            .config
            .options(options.trim_start())
            .connect_timeout(limit)
            .tcp_user_timeout(limit);
        Ok(Some(Box::new(RenewalsOnly(PgStore {
            names: Names::new(&target.table),
            conn: Conn::new(target)?,
            settled: true,
            url: self.url.clone(),
        }))))
    }

    fn finish(&mut self, key: &str, token: i64, outcome: &Outcome) -> Result<bool> {
        self.ready()?;
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

    fn append_journal(
        &mut self,
        key: &str,
        token: i64,
        seq: u64,
        chunks: &[Chunk<'_>],
    ) -> Result<bool> {
        self.ready()?;
        self.append(key, token, seq, chunks)
    }

    fn read_journal(
        &mut self,
        key: &str,
        token: i64,
        from: u64,
        each: &mut dyn FnMut(Stream, &[u8]) -> Result<()>,
    ) -> Result<Option<u64>> {
        self.ready()?;
        self.read(key, token, from, each)
    }

    fn await_journal(
        &mut self,
        key: &str,
        _token: i64,
        _from: u64,
        timeout: Duration,
    ) -> Result<()> {
        self.ready()?;
        self.await_notification(key, timeout)
    }

    fn count_replay(&mut self, key: &str, token: i64) -> Result<()> {
        self.ready()?;
        let sql = format!(
            "UPDATE {} SET replays = replays + 1 WHERE key = $1 AND token = $2",
            self.names.records
        );
        let params: [Param; 2] = [(&key, Type::TEXT), (&token, Type::INT8)];
        self.update("cannot count the replay", CALL_LIMIT, &sql, &params)
            .map(drop)
    }

    fn list(&mut self, filter: &Filter, each: &mut dyn FnMut(Record) -> Result<()>) -> Result<()> {
        self.ready()?;
        let now = self.now()?;
        let table = &self.names.records;
        records::list(&mut self.conn, table, filter, now, each)
    }

    fn delete(&mut self, records: &[Judged]) -> Result<u64> {
        self.ready()?;
        // One statement, so one transaction: each row goes only if it is
        // still as judged.
        let sql = format!(
            "DELETE FROM {} AS r USING unnest($1::text[], $2::bigint[], $3::text[], $4::bigint[]) \
                AS d(key, token, status, lease_until) \
             WHERE r.key = d.key AND r.token = d.token AND r.status = d.status \
                AND r.lease_until IS NOT DISTINCT FROM d.lease_until",
            self.names.records
        );
        let keys: Vec<&str> = records.iter().map(|r| r.key.as_str()).collect();
        let tokens: Vec<i64> = records.iter().map(|r| r.token).collect();
        let statuses: Vec<&str> = records.iter().map(|r| r.status.as_str()).collect();
        let leases: Vec<Option<i64>> = records.iter().map(|r| r.lease_until).collect();
        self.conn
            .call("cannot delete records", CALL_LIMIT, async |c| {
                c.execute(&sql, &[&keys, &tokens, &statuses, &leases]).await
            })
    }

    fn is_shared(&self) -> bool {
        true
    }

    /// The records table and the journal, with their indexes and TOAST
    /// (stored output).
    fn size(&mut self) -> Result<Option<u64>> {
        self.ready()?;
        let sql = "SELECT pg_total_relation_size(to_regclass($1)) \
            + coalesce(pg_total_relation_size(to_regclass($2)), 0)";
        let (table, journal) = (self.names.records.clone(), self.names.journal.clone());
        let size: Option<i64> =
            self.conn
                .call("cannot read the store's size", CALL_LIMIT, async |c| {
                    Ok(
                        c.query_typed_one(sql, &[(&table, Type::TEXT), (&journal, Type::TEXT)])
                            .await?
                            .get(0),
                    )
                })?;
        Ok(size.and_then(|s| u64::try_from(s).ok()))
    }

    fn check(&mut self) -> Result<Vec<super::Finding>> {
        self.ready()?;
        self.run_checks()
    }
}
