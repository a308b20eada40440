//! The shared store on Redis: one hash per record under a key prefix, every
//! transition a Lua script conditional on the record's fencing token.
//!
//! Keys under the prefix P (`?prefix=P`, default `idem:`): `P schema` holds
//! the schema version, `P token` the fencing counter, `P rec:KEY` each
//! record. A claim reads the record with the server's `TIME`, lets the
//! shared policy decide, and writes only if the record is still the one it
//! read (same token and revision; every write bumps the revision), else it
//! reads again. All times are the server's. Redis deletes records itself:
//! finished ones at `expires_at`, running ones `GRACE_MS` after their lease,
//! which their owner renews. See docs/many-hosts-redis.md.

mod conn;
mod list;
mod record;
mod target;
#[cfg(test)]
mod tests;
mod warning;

use self::conn::{describe, is_connection_error, Failure, TIME_LIMIT};
use self::record::{parse_record, FIELDS};
use self::target::Target;
pub use self::warning::persistence_warning;
use super::{Claim, Filter, Millis, Mode, Outcome, Record, Store, Stream};
use crate::owner::ChildId;
use crate::store::{finish_patiently, FinishFailure};
use anyhow::Result;
use redis::{Client, Connection, Script};
use std::io::Write;
use std::time::Duration;

/// The layout of keys and fields this build writes.
const SCHEMA_VERSION: i64 = 1;
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
    client: Client,
    /// Dropped after any connection-level error; the next call reconnects.
    con: Option<Connection>,
    /// How long connecting, or any one command, may take.
    limit: Duration,
    scripts: Scripts,
}

/// Opens the store at a `redis://` or `rediss://` URL; `None` when no idem
/// store lives under the prefix and `mode` forbids creating one.
pub fn open(url: &str, mode: Mode) -> Result<Option<Box<dyn Store>>> {
    let target = Target::parse(url)?;
    if target.client_url.starts_with("rediss:") {
        // Fails only when a provider is already installed, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    let client = match Client::open(target.client_url.as_str()) {
        Ok(client) => client,
        Err(e) => return target.fail(&e.to_string()),
    };
    let mut store = RedisStore {
        target,
        client,
        con: None,
        limit: TIME_LIMIT,
        scripts: Scripts::new(),
    };
    if !store.check_schema(mode)? {
        return Ok(None);
    }
    Ok(Some(Box::new(store)))
}

fn millis_from_time((secs, micros): (i64, i64)) -> Millis {
    secs * 1000 + micros / 1000
}

impl RedisStore {
    fn record_key(&self, key: &str) -> String {
        format!("{}rec:{key}", self.target.prefix)
    }

    /// Checks (or, for `run`, writes) the schema version under the prefix.
    /// False when there is no store and `mode` may not create one.
    fn check_schema(&mut self, mode: Mode) -> Result<bool> {
        let key = format!("{}schema", self.target.prefix);
        loop {
            let version: Option<String> = match self.call(&mut |c, _| {
                redis::cmd("GET").arg(&key).query(c)
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
                Some(Ok(SCHEMA_VERSION)) => return Ok(true),
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
                None if mode != Mode::Create => return Ok(false),
                None => self.exec("cannot write the schema version", true, |c, _| {
                    redis::cmd("SET")
                        .arg(&key)
                        .arg(SCHEMA_VERSION)
                        .arg("NX")
                        .query::<()>(c)
                })?,
            }
        }
    }

    /// The server's time and the record, read together in one round trip.
    fn read_with_time(&mut self, key: &str) -> Result<(Millis, Option<(Record, String)>)> {
        let rkey = self.record_key(key);
        let (time, values): ((i64, i64), Vec<Option<Vec<u8>>>) =
            self.exec("cannot read a record", true, |c, _| {
                redis::pipe()
                    .cmd("TIME")
                    .cmd("HMGET")
                    .arg(&rkey)
                    .arg(&FIELDS[..])
                    .query(c)
            })?;
        Ok((millis_from_time(time), parse_record(key, &values)))
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
            script.invoke::<i64>(c).map(|ours| ours == 1)
        })
    }
}

impl Store for RedisStore {
    fn now(&mut self) -> Result<Millis> {
        let time = self.exec("cannot read the server's time", true, |c, _| {
            redis::cmd("TIME").query(c)
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
        let counter = format!("{}token", self.target.prefix);
        let mut conflicted = None;
        loop {
            let (now, seen) = self.read_with_time(key)?;
            let Some(claim) = decide(seen.as_ref().map(|(record, _)| record), now) else {
                return Ok(None);
            };
            let (token, rev) = seen.map_or((0, String::new()), |(r, rev)| (r.token, rev));
            // Not retried: a claim whose reply was lost may have been written.
            let new = self.exec("cannot claim the key", false, |c, s| {
                s.claim
                    .key(&rkey)
                    .key(&counter)
                    .arg(token)
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
                    .arg(claim.owner.start)
                    .invoke::<i64>(c)
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
                .invoke::<i64>(c)
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
                    .invoke::<i64>(c)
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
                    let why = self.target.scrub(&describe(&failure));
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
            s.output.key(&rkey).arg(token).arg(field).invoke(c)
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
            s.count_replay.key(&rkey).arg(token).invoke::<i64>(c)
        })
        .map(drop)
    }

    fn list(&mut self, filter: &Filter, each: &mut dyn FnMut(Record) -> Result<()>) -> Result<()> {
        list::list(self, filter, each)
    }

    fn delete(&mut self, records: &[(String, i64)]) -> Result<u64> {
        let mut gone = 0;
        for chunk in records.chunks(list::PAGE) {
            let keys: Vec<String> = chunk.iter().map(|(k, _)| self.record_key(k)).collect();
            let tokens: Vec<i64> = chunk.iter().map(|(_, t)| *t).collect();
            gone += self.exec("cannot delete records", true, |c, s| {
                s.delete.key(&keys).arg(&tokens).invoke::<u64>(c)
            })?;
        }
        Ok(gone)
    }

    fn is_shared(&self) -> bool {
        true
    }
}
