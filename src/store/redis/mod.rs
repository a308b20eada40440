//! The shared store on Redis: one hash per record under a key prefix, every
//! transition a Lua script conditional on the record's fencing token.
//!
//! Keys under the prefix P (`?prefix=P`, default `idem:`): `P schema` holds
//! the schema version, and each record is a hash named by `keys.rs`. The
//! plain URL of any node of a Redis Cluster works: `INFO cluster` tells, and
//! the client then follows the cluster (MOVED, ASK) as `redis-cli -c` does;
//! every script touches one record's hash slot only. A claim reads the record with the server's `TIME`, lets the
//! shared policy decide, and writes only if the record is still the one it
//! read (same token and revision; every write bumps the revision), else it
//! reads again. All times are the server's. Redis deletes records itself:
//! finished ones at `expires_at`, running ones `GRACE_MS` after their lease,
//! which their owner renews.

mod conn;
mod keys;
mod list;
mod record;
mod target;
#[cfg(test)]
mod tests;
mod warning;

use self::conn::{connect, describe, is_connection_error, Con, Failure, Server, TIME_LIMIT};
use self::keys::{Keys, Layout};
use self::record::{parse_record, FIELDS};
use self::target::Target;
pub use self::warning::persistence_warning;
use super::{Claim, Filter, Millis, Mode, Outcome, Record, Store, Stream};
use crate::owner::ChildId;
use crate::store::{finish_patiently, FinishFailure};
use anyhow::Result;
use redis::{Client, Script};
use std::io::Write;
use std::time::Duration;

/// The layout of keys and fields this build writes (see keys.rs); stores
/// of schema 1 keep theirs.
const SCHEMA_VERSION: i64 = 2;
/// How long idem keeps trying to record an outcome once COMMAND has run.
/// How long an in-progress record outlives its lease in Redis: a crashed
/// run stays visible this long (for `--on-crash block` and an operator),
/// then Redis deletes it, so no record lives without a deadline.
const GRACE_MS: Millis = 7 * 24 * 3600 * 1000;
/// Keeps `now + ttl` exact in Lua's double-precision numbers (about 35,000
/// years).
const MAX_TTL_MS: Millis = 1 << 50;

/// The Lua scripts, sent by SHA1 (`EVALSHA`) and loaded on first use.
struct Scripts {
    read: Script,
    claim: Script,
    renew: Script,
    set_child: Script,
    finish: Script,
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
            set_child: Script::new(include_str!("lua/set_child.lua")),
            finish: Script::new(include_str!("lua/finish.lua")),
            output: Script::new(include_str!("lua/output.lua")),
            count_replay: Script::new(include_str!("lua/count_replay.lua")),
            delete: Script::new(include_str!("lua/delete.lua")),
        }
    }
}

pub struct RedisStore {
    target: Target,
    server: Server,
    keys: Keys,
    /// Dropped after any connection-level error; the next call reconnects.
    con: Option<Con>,
    /// How long connecting, or any one command, may take.
    limit: Duration,
    scripts: Scripts,
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
    let client = match Client::open(target.client_url.as_str()) {
        Ok(client) => client,
        Err(e) => return target.fail(&e.to_string()),
    };
    let server = follow_cluster(&target, client)?;
    let keys = Keys {
        prefix: target.prefix.clone(),
        layout: Layout::V2,
    };
    let mut store = RedisStore {
        target,
        server,
        keys,
        con: None,
        limit: TIME_LIMIT,
        scripts: Scripts::new(),
    };
    let Some(layout) = store.check_schema(mode)? else {
        return Ok(None);
    };
    store.keys.layout = layout;
    Ok(Some(store))
}

/// The server behind `client`, or the cluster it is a node of.
fn follow_cluster(target: &Target, client: Client) -> Result<Server> {
    let info = connect(&client, TIME_LIMIT)
        .and_then(|mut con| redis::cmd("INFO").arg("cluster").query::<String>(&mut con));
    let info = match info {
        Ok(info) => info,
        Err(e) => return target.fail(&describe(&Failure::Connect(e), &target.endpoint)),
    };
    if warning::info_field(&info, "cluster_enabled") != Some("1") {
        return Ok(Server::One(client));
    }
    if target.prefix.contains(['{', '}']) {
        return target.fail(
            "on a Redis Cluster, ?prefix= must not contain { or } (idem puts each record's key in braces)",
        );
    }
    let cluster = redis::cluster::ClusterClient::builder(vec![target.client_url.as_str()])
        .connection_timeout(TIME_LIMIT)
        .response_timeout(TIME_LIMIT)
        .build();
    match cluster {
        Ok(cluster) => Ok(Server::Cluster(cluster)),
        Err(e) => target.fail(&format!("cannot follow the cluster: {e}")),
    }
}

fn millis_from_time((secs, micros): (i64, i64)) -> Millis {
    secs * 1000 + micros / 1000
}

impl RedisStore {
    fn record_key(&self, key: &str) -> String {
        self.keys.record_key(key)
    }

    /// Checks (or, for `run`, writes) the schema version under the prefix;
    /// returns the store's key layout. None when there is no store and
    /// `mode` may not create one.
    fn check_schema(&mut self, mode: Mode) -> Result<Option<Layout>> {
        let key = self.keys.schema();
        loop {
            let version: Option<String> = match self.call(&mut |c, _| {
                redis::cmd("GET").arg(&key).query(c.like())
            }) {
                Ok(version) => version,
                Err(Failure::Call(e)) if e.code() == Some("WRONGTYPE") => {
                    return self.target.fail(&format!(
                        "key {key} is not idem's: other data lives under this prefix (choose another ?prefix=)"
                    ))
                }
                Err(failure) => return self.failed("cannot read the schema version", &failure),
            };
            match version.as_deref().map(str::parse::<i64>) {
                Some(Ok(SCHEMA_VERSION)) => return Ok(Some(Layout::V2)),
                Some(Ok(1)) if matches!(self.server, Server::Cluster(_)) => {
                    return self.target.fail(
                        "it has schema version 1, which a Redis Cluster cannot hold (its keys span hash slots)",
                    )
                }
                Some(Ok(1)) => return Ok(Some(Layout::V1)),
                Some(Ok(newer)) if newer > SCHEMA_VERSION => {
                    return self.target.fail(&format!(
                        "it has schema version {newer}, newer than this idem understands ({SCHEMA_VERSION}); upgrade idem"
                    ))
                }
                Some(_) => {
                    return self.target.fail(&format!(
                        "key {key} is not idem's: other data lives under this prefix (choose another ?prefix=)"
                    ))
                }
                None if mode != Mode::Create => return Ok(None),
                None => self.exec("cannot write the schema version", true, |c, _| {
                    redis::cmd("SET")
                        .arg(&key)
                        .arg(SCHEMA_VERSION)
                        .arg("NX")
                        .query::<()>(c.like())
                })?,
            }
        }
    }

    /// The server's time and the record, read together in one round trip.
    fn read_with_time(&mut self, key: &str) -> Result<(Millis, Option<(Record, String)>)> {
        let rkey = self.record_key(key);
        let values: Vec<Option<Vec<u8>>> = self.exec("cannot read a record", true, |c, s| {
            s.read.key(&rkey).arg(&FIELDS[..]).invoke(c.like())
        })?;
        let number = |at: usize| {
            values
                .get(at)
                .and_then(|v| std::str::from_utf8(v.as_deref()?).ok()?.parse().ok())
                .unwrap_or(0)
        };
        let time = (number(0), number(1));
        Ok((
            millis_from_time(time),
            parse_record(key, values.get(2..).unwrap_or_default()),
        ))
    }

    fn write_outcome(
        &mut self,
        key: &str,
        token: i64,
        outcome: &Outcome,
        with_output: bool,
    ) -> std::result::Result<bool, Failure> {
        let rkey = self.record_key(key);
        let (out, err): (&[u8], &[u8]) = if with_output {
            (&outcome.stdout.bytes, &outcome.stderr.bytes)
        } else {
            (&[], &[])
        };
        // Output that could not be stored counts as cut.
        let out_cut = outcome.stdout.truncated || out.len() < outcome.stdout.bytes.len();
        let err_cut = outcome.stderr.truncated || err.len() < outcome.stderr.bytes.len();
        self.call(&mut |c, s| {
            let mut script = s.finish.key(&rkey);
            script
                .arg(token)
                .arg(outcome.ttl_ms.clamp(0, MAX_TTL_MS))
                .arg(outcome.status.as_str());
            if let Some(code) = outcome.exit_code {
                script.arg("exit_code").arg(code);
            }
            if let Some(signal) = outcome.signal {
                script.arg("signal").arg(signal);
            }
            script
                .arg("timed_out")
                .arg(i64::from(outcome.timed_out))
                .arg("stdout")
                .arg(out)
                .arg("stderr")
                .arg(err)
                .arg("stdout_bytes")
                .arg(out.len())
                .arg("stderr_bytes")
                .arg(err.len())
                .arg("stdout_truncated")
                .arg(i64::from(out_cut))
                .arg("stderr_truncated")
                .arg(i64::from(err_cut));
            script.invoke::<i64>(c.like()).map(|ours| ours == 1)
        })
    }
}

impl Store for RedisStore {
    fn now(&mut self) -> Result<Millis> {
        let time = self.exec("cannot read the server's time", true, |c, _| {
            redis::cmd("TIME").query(c.like())
        })?;
        Ok(millis_from_time(time))
    }

    fn get(&mut self, key: &str) -> Result<(Millis, Option<Record>)> {
        let (now, seen) = self.read_with_time(key)?;
        Ok((now, seen.map(|(record, _)| record)))
    }

    fn claim(
        &mut self,
        key: &str,
        decide: &mut dyn FnMut(Option<&Record>, Millis) -> Option<Claim>,
    ) -> Result<Option<i64>> {
        let rkey = self.record_key(key);
        let counter = self.keys.counter();
        let mut conflicted = None;
        loop {
            let (now, seen) = self.read_with_time(key)?;
            let Some(claim) = decide(seen.as_ref().map(|(record, _)| record), now) else {
                return Ok(None);
            };
            let (token, rev) = seen.map_or((0, String::new()), |(r, rev)| (r.token, rev));
            // Not retried: a claim whose reply was lost may have been written.
            let new = self.exec("cannot claim the key", false, |c, s| {
                let mut call = s.claim.key(&rkey);
                if let Some(counter) = &counter {
                    call.key(counter);
                }
                call.arg(token)
                    .arg(&rev)
                    .arg(claim.lease_ms)
                    .arg(GRACE_MS)
                    .arg("fingerprint")
                    .arg(&claim.fingerprint)
                    .arg("command")
                    .arg(&claim.command)
                    .arg("cwd")
                    .arg(&claim.cwd)
                    .arg("attempt")
                    .arg(claim.attempt)
                    .arg("replays")
                    .arg(0)
                    .arg("owner_host")
                    .arg(&claim.owner.host)
                    .arg("owner_boot")
                    .arg(&claim.owner.boot_id)
                    .arg("owner_pid_ns")
                    .arg(
                        claim
                            .owner
                            .pid_ns
                            .map_or_else(String::new, |ns| ns.to_string()),
                    )
                    .arg("owner_pid")
                    .arg(claim.owner.pid)
                    .arg("owner_start")
                    .arg(claim.owner.start);
                if let Some(label) = &claim.label {
                    call.arg("label").arg(label);
                }
                call.invoke::<i64>(c.like())
            })?;
            if new != 0 {
                return Ok(Some(new));
            }
            // The record changed between the read and the claim: decide
            // again. Every write changes the token or the revision, so a
            // record that reads the same again is not one idem wrote.
            if conflicted.replace((token, rev.clone())) == Some((token, rev)) {
                return self.target.fail(&format!(
                    "key {rkey} is not an idem record; it was left untouched"
                ));
            }
        }
    }

    fn set_child(&mut self, key: &str, token: i64, child: ChildId) -> Result<bool> {
        let rkey = self.record_key(key);
        self.exec("cannot record the child", true, |c, s| {
            s.set_child
                .key(&rkey)
                .arg(token)
                .arg("child_pid")
                .arg(child.pid)
                .arg("child_pgid")
                .arg(child.pgid)
                .arg("child_start")
                .arg(child.start)
                .invoke::<i64>(c.like())
        })
        .map(|ours| ours == 1)
    }

    /// Within a third of the lease (at most `TIME_LIMIT`) and without a
    /// retry: the run loop waits meanwhile and tries again at its next tick.
    fn renew(&mut self, key: &str, token: i64, lease_ms: Millis) -> Result<bool> {
        let rkey = self.record_key(key);
        let limit = Duration::from_millis(u64::try_from(lease_ms / 3).unwrap_or(0))
            .clamp(Duration::from_millis(100), TIME_LIMIT);
        self.within(limit, |store| {
            store.exec("cannot renew the lease", false, |c, s| {
                s.renew
                    .key(&rkey)
                    .arg(token)
                    .arg(lease_ms)
                    .arg(GRACE_MS)
                    .invoke::<i64>(c.like())
            })
        })
        .map(|ours| ours == 1)
    }

    /// COMMAND has run: a lost connection is retried for `FINISH_PATIENCE`
    /// (writing again is harmless, see finish.lua); a server that refuses
    /// the output (out of memory) gets the outcome without it.
    fn finish(&mut self, key: &str, token: i64, outcome: &Outcome) -> Result<bool> {
        let shown = self.target.shown.clone();
        finish_patiently(&shown, |with_output, _left| {
            self.write_outcome(key, token, outcome, with_output)
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

    fn copy_output(
        &mut self,
        key: &str,
        token: i64,
        stream: Stream,
        out: &mut dyn Write,
    ) -> Result<bool> {
        let rkey = self.record_key(key);
        let field = match stream {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        };
        let bytes: Option<Vec<u8>> = self.exec("cannot read the output", true, |c, s| {
            s.output.key(&rkey).arg(token).arg(field).invoke(c.like())
        })?;
        match bytes {
            Some(bytes) => {
                out.write_all(&bytes)?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn count_replay(&mut self, key: &str, token: i64) -> Result<()> {
        let rkey = self.record_key(key);
        self.exec("cannot count the replay", false, |c, s| {
            s.count_replay.key(&rkey).arg(token).invoke::<i64>(c.like())
        })
        .map(drop)
    }

    fn list(&mut self, filter: &Filter, each: &mut dyn FnMut(Record) -> Result<()>) -> Result<()> {
        list::list(self, filter, each)
    }

    fn delete(&mut self, records: &[(String, i64)]) -> Result<u64> {
        let mut gone = 0;
        // One script touches one hash slot on a cluster.
        let per_call = match self.server {
            Server::One(_) => list::PAGE,
            Server::Cluster(_) => 1,
        };
        for chunk in records.chunks(per_call) {
            let keys: Vec<String> = chunk.iter().map(|(k, _)| self.record_key(k)).collect();
            let tokens: Vec<i64> = chunk.iter().map(|(_, t)| *t).collect();
            gone += self.exec("cannot delete records", true, |c, s| {
                s.delete.key(&keys).arg(&tokens).invoke::<u64>(c.like())
            })?;
        }
        Ok(gone)
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn check(&mut self) -> Result<Vec<super::Finding>> {
        let version = match self.keys.layout {
            Layout::V1 => 1,
            Layout::V2 => SCHEMA_VERSION,
        };
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
