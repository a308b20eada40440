//! The shared store on Redis: one hash per record under a key prefix, every
//! transition a Lua script conditional on the record's fencing token.
//!
//! Keys under the prefix P (`?prefix=P`, default `idem:`): `P schema` holds
//! the schema version, and each record is a hash named by `keys.rs`, with
//! its output journal beside it in the same hash slot (see journal.rs). The
//! plain URL of any node of a Redis Cluster works: `INFO cluster` tells, and
//! the client then follows the cluster (MOVED, ASK) as `redis-cli -c` does;
//! every script touches one record's hash slot only. A claim reads the record with the server's `TIME`, lets the
//! shared policy decide, and writes only if the record is still the one it
//! read (same token and revision; every write bumps the revision), else it
//! reads again. All times are the server's. Redis deletes finished records
//! itself, at `expires_at`; a record in progress never expires (a crashed
//! one waits for a takeover or an operator). The lease is renewed on a
//! connection of its own (`lease_keeper`).

mod claim;
mod conn;
mod journal;
mod keys;
mod list;
mod migrate;
mod record;
mod schema;
mod target;
#[cfg(test)]
mod tests;
mod warning;

use self::conn::{connect, describe, is_connection_error, Con, Failure, Server, TIME_LIMIT};
use self::keys::{Keys, Layout};
use self::record::{parse_record, FIELDS};
use self::schema::Seen;
use self::schema::SCHEMA_VERSION;
use self::target::Target;
pub use self::warning::persistence_warning;
use super::{
    Chunk, Claim, Filter, Judged, LeaseKeeper, Millis, Mode, Outcome, Record, RenewalsOnly, Store,
    Stream,
};
use crate::lease::Lease;
use crate::store::{finish_patiently, FinishFailure};
use anyhow::Result;
use redis::{Client, IntoConnectionInfo, Script};
use std::time::Duration;

/// Keeps `now + ttl` exact in Lua's double-precision numbers (about 35,000
/// years).
const MAX_TTL_MS: Millis = 1 << 50;

/// count_replay.lua, also sent whole (see `count_replay`).
const COUNT_REPLAY: &str = include_str!("lua/count_replay.lua");

/// The Lua scripts, sent by SHA1 (`EVALSHA`) and loaded on first use.
struct Scripts {
    read: Script,
    claim: Script,
    renew: Script,
    finish: Script,
    append: Script,
    journal: Script,
    output: Script,
    count_replay: Script,
    delete: Script,
}

impl Scripts {
    fn new() -> Scripts {
        Scripts {
            read: Script::new(include_str!("lua/read.lua")),
            claim: Script::new(include_str!("lua/claim.lua")),
            renew: Script::new(include_str!("lua/renew.lua")),
            finish: Script::new(include_str!("lua/finish.lua")),
            append: Script::new(include_str!("lua/append.lua")),
            journal: Script::new(include_str!("lua/journal.lua")),
            output: Script::new(include_str!("lua/output.lua")),
            count_replay: Script::new(COUNT_REPLAY),
            delete: Script::new(include_str!("lua/delete.lua")),
        }
    }
}

pub struct RedisStore {
    target: Target,
    server: Server,
    keys: Keys,
    /// The store's schema version (see `SCHEMA_VERSION`).
    version: i64,
    /// Whether the server's kind (cluster or not) and the schema have been
    /// checked; `run` leaves that to its first read (schema.rs).
    settled: bool,
    /// The last `get`, which a claim of that key that follows at once
    /// decides on instead of reading again (its write is conditional on
    /// the record being as read, so a stale read only costs a retry).
    last_read: Option<(String, Seen)>,
    /// Dropped after any connection-level error; the next call reconnects.
    con: Option<Con>,
    /// How long connecting, or any one command, may take.
    limit: Duration,
    scripts: Scripts,
    /// The `--db` URL, for the lease keeper's own connection.
    url: String,
}

/// Opens the store at a `redis://` or `rediss://` URL; `None` when no idem
/// store lives under the prefix and `mode` forbids creating one.
/// The URL as it may be shown: without its password.
pub fn shown(url: &str) -> String {
    Target::parse(url).map_or_else(|_| "(a URL idem cannot read)".into(), |t| t.shown)
}

pub fn open(url: &str, mode: Mode) -> Result<Option<Box<dyn Store>>> {
    Ok(open_store(url, mode)?.map(|store| Box::new(store) as Box<dyn Store>))
}

fn open_store(url: &str, mode: Mode) -> Result<Option<RedisStore>> {
    let target = Target::parse(url)?;
    if target.client_url.starts_with("rediss:") {
        // Fails only when a provider is already installed, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    let client = match target.client_url.as_str().into_connection_info() {
        // No `CLIENT SETINFO` after connecting: a round trip of its own
        // when there is no password to send with it.
        Ok(info) => {
            let settings = info.redis_settings().clone().set_skip_set_lib_name();
            Client::open(info.set_redis_settings(settings))
        }
        Err(e) => Err(e),
    };
    let client = match client {
        Ok(client) => client,
        Err(e) => return target.fail(&e.to_string()),
    };
    let keys = Keys {
        prefix: target.prefix.clone(),
        layout: Layout::V3,
    };
    let mut store = RedisStore {
        target,
        server: Server::One(client),
        settled: false,
        last_read: None,
        keys,
        version: SCHEMA_VERSION,
        con: None,
        limit: TIME_LIMIT,
        scripts: Scripts::new(),
        url: url.to_owned(),
    };
    // `run` may create the store: its first read settles it (schema.rs).
    if mode == Mode::Create {
        return Ok(Some(store));
    }
    Ok(store.settle(mode)?.map(|()| store))
}

fn millis_from_time((secs, micros): (i64, i64)) -> Millis {
    secs * 1000 + micros / 1000
}

/// The reply of read.lua: `{seconds, microseconds, field values...}`.
pub(super) fn seen_from_reply(key: &str, values: &[Option<Vec<u8>>]) -> Seen {
    let number = |at: usize| {
        values
            .get(at)
            .and_then(|v| std::str::from_utf8(v.as_deref()?).ok()?.parse().ok())
            .unwrap_or(0)
    };
    let time = (number(0), number(1));
    (
        millis_from_time(time),
        parse_record(key, values.get(2..).unwrap_or_default()),
    )
}

impl RedisStore {
    fn record_key(&self, key: &str) -> String {
        self.keys.record_key(key)
    }

    /// The record's output journal, in the record's hash slot.
    fn journal_key(&self, key: &str) -> String {
        self.keys.record_part(key, "log")
    }

    /// The server's time and the record, read together in one round trip.
    fn read_with_time(&mut self, key: &str) -> Result<Seen> {
        let rkey = self.record_key(key);
        let values: Vec<Option<Vec<u8>>> = self.exec("cannot read a record", true, |c, s| {
            s.read.key(&rkey).arg(&FIELDS[..]).invoke(c.like())
        })?;
        Ok(seen_from_reply(key, &values))
    }

    /// One try; `with_output` false drops the journal (flagged as cut).
    fn write_outcome(
        &mut self,
        key: &str,
        token: i64,
        outcome: &Outcome,
        with_output: bool,
    ) -> std::result::Result<bool, Failure> {
        let (rkey, jkey) = (self.record_key(key), self.journal_key(key));
        self.call(&mut |c, s| {
            let mut script = s.finish.key(&rkey);
            script
                .key(&jkey)
                .arg(token)
                .arg(outcome.ttl_ms.clamp(0, MAX_TTL_MS))
                .arg(outcome.status.as_str())
                .arg(i64::from(with_output));
            if let Some(code) = outcome.exit_code {
                script.arg("exit_code").arg(code);
            }
            if let Some(signal) = outcome.signal {
                script.arg("signal").arg(signal);
            }
            script
                .arg("timed_out")
                .arg(i64::from(outcome.timed_out))
                .arg("stdout_truncated")
                .arg(i64::from(outcome.stdout.truncated))
                .arg("stderr_truncated")
                .arg(i64::from(outcome.stderr.truncated));
            script.invoke::<i64>(c.like()).map(|ours| ours == 1)
        })
    }
}

impl Store for RedisStore {
    fn now(&mut self) -> Result<Millis> {
        self.ready()?;
        let time = self.exec("cannot read the server's time", true, |c, _| {
            redis::cmd("TIME").query(c.like())
        })?;
        Ok(millis_from_time(time))
    }

    fn get(&mut self, key: &str) -> Result<(Millis, Option<Record>)> {
        let (now, seen) = if self.settled {
            self.read_with_time(key)?
        } else {
            self.settle_reading(key)?
        };
        self.last_read = Some((key.to_owned(), (now, seen.clone())));
        Ok((now, seen.map(|(record, _)| record)))
    }

    fn claim(
        &mut self,
        key: &str,
        decide: &mut dyn FnMut(Option<&Record>, Millis) -> Option<Claim>,
    ) -> Result<Option<i64>> {
        self.claim_key(key, decide)
    }

    /// Within a third of the lease and without a retry: an attempt that
    /// takes longer counts as failed, and the lease keeper sends the next
    /// one at once.
    fn renew(&mut self, key: &str, token: i64, lease_ms: Millis) -> Result<bool> {
        self.ready()?;
        let (rkey, jkey) = (self.record_key(key), self.journal_key(key));
        let limit =
            Lease::new(Duration::from_millis(u64::try_from(lease_ms).unwrap_or(0))).attempt_limit();
        self.within(limit, |store| {
            store.exec("cannot renew the lease", false, |c, s| {
                s.renew
                    .key(&rkey)
                    .key(&jkey)
                    .arg(token)
                    .arg(lease_ms)
                    .invoke::<i64>(c.like())
            })
        })
        .map(|ours| ours == 1)
    }

    /// A connection of its own (made on its first renewal), each of whose
    /// connects and answers is cut at a third of the lease.
    fn lease_keeper(&mut self, lease: Lease) -> Result<Option<Box<dyn LeaseKeeper>>> {
        Ok(Some(Box::new(RenewalsOnly(RedisStore {
            target: Target::parse(&self.url)?,
            server: self.server.clone(),
            keys: self.keys.clone(),
            version: self.version,
            settled: true,
            last_read: None,
            con: None,
            limit: lease.attempt_limit(),
            scripts: Scripts::new(),
            url: self.url.clone(),
        }))))
    }

    /// COMMAND has run: a lost connection is retried for `FINISH_PATIENCE`
    /// (writing again is harmless, see finish.lua); a server that refuses
    /// the output (out of memory) gets the outcome without it.
    fn finish(&mut self, key: &str, token: i64, outcome: &Outcome) -> Result<bool> {
        self.ready()?;
        let shown = self.target.shown.clone();
        finish_patiently(&shown, |with_output, left| {
            self.within(left, |store| {
                store.write_outcome(key, token, outcome, with_output)
            })
            .map_err(|failure| {
                let why = self
                    .target
                    .scrub(&describe(&failure, &self.target.endpoint));
                match &failure {
                    Failure::Call(e) if !is_connection_error(e) => FinishFailure::Output(why),
                    _ => FinishFailure::Retry(why),
                }
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
        from: u64,
        timeout: Duration,
    ) -> Result<()> {
        self.ready()?;
        self.await_entry(key, from, timeout)
    }

    fn count_replay(&mut self, key: &str, token: i64) -> Result<()> {
        self.ready()?;
        let rkey = self.record_key(key);
        if let Some(Con::One(con)) = &mut self.con {
            // Best effort (SPEC): sent without waiting for the answer, on a
            // connection dropped at once so that no later call reads that
            // answer as its own. The script's text rather than its SHA1: a
            // server that lost its scripts still counts.
            let count = redis::cmd("EVAL")
                .arg(COUNT_REPLAY)
                .arg(1)
                .arg(&rkey)
                .arg(token)
                .get_packed_command();
            let sent = con.send_packed_command(&count);
            self.con = None;
            return sent.or_else(|e| self.failed("cannot count the replay", &Failure::Call(e)));
        }
        self.exec("cannot count the replay", false, |c, s| {
            s.count_replay.key(&rkey).arg(token).invoke::<i64>(c.like())
        })
        .map(drop)
    }

    fn list(&mut self, filter: &Filter, each: &mut dyn FnMut(Record) -> Result<()>) -> Result<()> {
        self.ready()?;
        list::list(self, filter, each)
    }

    fn delete(&mut self, records: &[Judged]) -> Result<u64> {
        self.ready()?;
        let mut gone = 0;
        // One script touches one hash slot on a cluster.
        let per_call = match self.server {
            Server::One(_) => list::PAGE,
            Server::Cluster(_) => 1,
        };
        for chunk in records.chunks(per_call) {
            let keys: Vec<String> = chunk
                .iter()
                .map(|r| self.record_key(&r.key))
                .chain(chunk.iter().map(|r| self.journal_key(&r.key)))
                .collect();
            let mut judged = Vec::with_capacity(chunk.len() * 3);
            for record in chunk {
                judged.push(record.token.to_string());
                judged.push(record.status.as_str().to_owned());
                judged.push(
                    record
                        .lease_until
                        .map_or_else(String::new, |at| at.to_string()),
                );
            }
            gone += self.exec("cannot delete records", true, |c, s| {
                s.delete.key(&keys).arg(&judged).invoke::<u64>(c.like())
            })?;
        }
        Ok(gone)
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn check(&mut self) -> Result<Vec<super::Finding>> {
        self.ready()?;
        let version = self.version;
        let masters = self.masters()?;
        let kind = match self.server {
            Server::One(_) => "a standalone server".to_owned(),
            Server::Cluster(_) => format!("a Redis Cluster of {} masters", masters.len()),
        };
        let mut found = vec![super::Finding::new(
            super::Level::Ok,
            "store",
            format!("{}, schema {version}, on {kind}", self.target.shown),
        )];
        for (node, client) in masters {
            let settings = connect(&client, TIME_LIMIT)
                .map_err(Failure::Connect)
                .and_then(|mut con| warning::settings(&mut con, &node).map_err(Failure::Call));
            match settings {
                Ok(settings) => found.extend(settings),
                Err(failure) => return self.failed("cannot read the server's settings", &failure),
            }
        }
        Ok(found)
    }
}
