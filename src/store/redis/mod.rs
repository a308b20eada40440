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

mod list;
mod target;
#[cfg(test)]
mod tests;

use self::target::Target;
use super::{Claim, Filter, Millis, Mode, Outcome, Record, Status, Store, Stream};
use crate::owner::{ChildId, Owner};
use anyhow::Result;
use redis::{Client, Connection, RedisError, RedisResult, Script};
use std::io::Write;
use std::time::{Duration, Instant};

/// The layout of keys and fields this build writes.
const SCHEMA_VERSION: i64 = 1;
/// A server that does not answer a connection attempt within this is down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// No reply within this means a dead server or network: lease renewals run
/// on the thread that forwards signals, so a call must never block for long.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long idem keeps trying to record an outcome once COMMAND has run.
const FINISH_PATIENCE: Duration = Duration::from_secs(30);
/// How long an in-progress record outlives its lease in Redis: a crashed
/// run stays visible this long (for `--on-crash block` and an operator),
/// then Redis deletes it, so no record lives without a deadline.
const GRACE_MS: Millis = 7 * 24 * 3600 * 1000;
/// Keeps `now + ttl` exact in Lua's double-precision numbers (about 35,000
/// years).
const MAX_TTL_MS: Millis = 1 << 50;

/// Every field of a record hash except the stored output, in `HMGET` order.
const FIELDS: [&str; 26] = [
    "status",
    "fingerprint",
    "command",
    "cwd",
    "attempt",
    "token",
    "rev",
    "started_at",
    "finished_at",
    "expires_at",
    "lease_until",
    "exit_code",
    "signal",
    "timed_out",
    "replays",
    "owner_host",
    "owner_boot",
    "owner_pid",
    "owner_start",
    "child_pid",
    "child_pgid",
    "child_start",
    "stdout_bytes",
    "stderr_bytes",
    "stdout_truncated",
    "stderr_truncated",
];

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
    scripts: Scripts,
}

/// Why a call to the server failed.
enum Failure {
    Connect(RedisError),
    Call(RedisError),
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
        scripts: Scripts::new(),
    };
    if !store.check_schema(mode)? {
        return Ok(None);
    }
    Ok(Some(Box::new(store)))
}

/// A warning for `-v` when the server may lose records: no persistence at
/// all (a restart forgets every key), or eviction under memory pressure.
pub fn persistence_warning(url: &str) -> Option<String> {
    let target = Target::parse(url).ok()?;
    let client = Client::open(target.client_url.as_str()).ok()?;
    let mut con = connect(&client).ok()?;
    let persistence: String = redis::cmd("INFO").arg("persistence").query(&mut con).ok()?;
    let memory: String = redis::cmd("INFO").arg("memory").query(&mut con).ok()?;
    // CONFIG may be disabled (managed services): then nothing can be said.
    let save: Option<Vec<String>> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("save")
        .query(&mut con)
        .ok();
    let aof = info_field(&persistence, "aof_enabled") == Some("1");
    let rdb = save.map(|pair| pair.get(1).is_some_and(|s| !s.trim().is_empty()));
    let mut problems = Vec::new();
    if !aof && rdb == Some(false) {
        problems.push(
            "the server keeps no AOF and no RDB snapshots, so a restart forgets every record \
             and keys that already ran may run again"
                .to_owned(),
        );
    }
    let limited = info_field(&memory, "maxmemory").is_some_and(|m| m != "0");
    match info_field(&memory, "maxmemory_policy") {
        Some(policy) if limited && policy != "noeviction" => problems.push(format!(
            "maxmemory-policy {policy} may evict records, and an evicted key runs again \
             (set maxmemory-policy noeviction)"
        )),
        _ => {}
    }
    (!problems.is_empty()).then(|| {
        format!(
            "store {}: {} (see docs/many-hosts-redis.md)",
            target.shown,
            problems.join("; ")
        )
    })
}

fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

fn connect(client: &Client) -> RedisResult<Connection> {
    let con = client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
    con.set_read_timeout(Some(IO_TIMEOUT))?;
    con.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(con)
}

/// Errors after which the connection cannot be trusted (a late reply would
/// answer the next command): drop it and reconnect.
fn is_connection_error(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
}

fn millis_from_time((secs, micros): (i64, i64)) -> Millis {
    secs * 1000 + micros / 1000
}

impl RedisStore {
    fn record_key(&self, key: &str) -> String {
        format!("{}rec:{key}", self.target.prefix)
    }

    /// One call on the connection, connecting first when there is none.
    fn call<T>(
        &mut self,
        f: &mut dyn FnMut(&mut Connection, &Scripts) -> RedisResult<T>,
    ) -> std::result::Result<T, Failure> {
        let con = match &mut self.con {
            Some(con) => con,
            None => match connect(&self.client) {
                Ok(con) => self.con.insert(con),
                Err(e) => return Err(Failure::Connect(e)),
            },
        };
        f(con, &self.scripts).map_err(|e| {
            if is_connection_error(&e) {
                self.con = None;
            }
            Failure::Call(e)
        })
    }

    /// A call that fails with exit 125 and a clear message. `retry`: the
    /// call may run twice, so a connection that dropped since the last call
    /// (a server restart) is reconnected once.
    fn exec<T>(
        &mut self,
        doing: &str,
        retry: bool,
        mut f: impl FnMut(&mut Connection, &Scripts) -> RedisResult<T>,
    ) -> Result<T> {
        let mut tries = if retry { 2 } else { 1 };
        loop {
            tries -= 1;
            match self.call(&mut f) {
                Ok(value) => return Ok(value),
                Err(Failure::Call(e)) if tries > 0 && is_connection_error(&e) => {}
                Err(failure) => return self.failed(doing, &failure),
            }
        }
    }

    /// Exit 125; a failed connection says so rather than what it was for.
    fn failed<T>(&self, doing: &str, failure: &Failure) -> Result<T> {
        match failure {
            Failure::Connect(_) => self.target.fail(&describe(failure)),
            Failure::Call(_) => self.target.fail(&format!("{doing}: {}", describe(failure))),
        }
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

    fn read(&mut self, key: &str) -> Result<Option<(Record, String)>> {
        let rkey = self.record_key(key);
        let values: Vec<Option<Vec<u8>>> = self.exec("cannot read a record", true, |c, _| {
            redis::cmd("HMGET").arg(&rkey).arg(&FIELDS[..]).query(c)
        })?;
        Ok(parse_record(key, &values))
    }

    /// The server's time and the record, read together for a claim.
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

    fn get(&mut self, key: &str) -> Result<Option<Record>> {
        Ok(self.read(key)?.map(|(record, _)| record))
    }

    fn claim(
        &mut self,
        key: &str,
        decide: &mut dyn FnMut(Option<&Record>, Millis) -> Option<Claim>,
    ) -> Result<Option<i64>> {
        let rkey = self.record_key(key);
        let counter = format!("{}token", self.target.prefix);
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
                    .arg("owner_pid")
                    .arg(claim.owner.pid)
                    .arg("owner_start")
                    .arg(claim.owner.start)
                    .invoke::<i64>(c)
            })?;
            if new != 0 {
                return Ok(Some(new));
            }
            // The record changed between the read and the claim: decide again.
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

    fn renew(&mut self, key: &str, token: i64, lease_ms: Millis) -> Result<bool> {
        let rkey = self.record_key(key);
        self.exec("cannot renew the lease", true, |c, s| {
            s.renew
                .key(&rkey)
                .arg(token)
                .arg(lease_ms)
                .arg(GRACE_MS)
                .invoke::<i64>(c)
        })
        .map(|ours| ours == 1)
    }

    /// COMMAND has run: a lost connection is retried for `FINISH_PATIENCE`
    /// (writing again is harmless, see finish.lua); a server that refuses
    /// the output (out of memory) gets the outcome without it.
    fn finish(&mut self, key: &str, token: i64, outcome: &Outcome) -> Result<bool> {
        let deadline = Instant::now() + FINISH_PATIENCE;
        let mut pause = Duration::from_millis(100);
        let mut with_output = true;
        let mut warned = false;
        loop {
            let failure = match self.write_outcome(key, token, outcome, with_output) {
                Ok(ours) => return Ok(ours),
                Err(failure) => failure,
            };
            let why = self.target.scrub(&describe(&failure));
            match &failure {
                Failure::Call(e) if with_output && !is_connection_error(e) => {
                    eprintln!(
                        "idem: could not store the output ({why}); recording the outcome without it"
                    );
                    with_output = false;
                }
                _ if Instant::now() + pause >= deadline => {
                    return self.target.fail(&format!(
                        "cannot record the outcome: {why} (gave up after {})",
                        humantime::format_duration(FINISH_PATIENCE)
                    ));
                }
                _ => {
                    if !warned {
                        eprintln!(
                            "idem: store {}: cannot record the outcome yet ({why}); retrying for up to {}",
                            self.target.shown,
                            humantime::format_duration(FINISH_PATIENCE)
                        );
                        warned = true;
                    }
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
            }
        }
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

fn describe(failure: &Failure) -> String {
    match failure {
        Failure::Connect(e) => format!("cannot connect: {}", explain(e)),
        Failure::Call(e) => explain(e),
    }
}

/// A server error with a hint where the fix is known.
fn explain(e: &RedisError) -> String {
    if e.kind() == redis::ErrorKind::AuthenticationFailed {
        return "the server refused the user or password in the URL".into();
    }
    let hint = match e.code() {
        Some("NOAUTH" | "WRONGPASS") => " (check the user and password in the URL)",
        Some("OOM") => " (the server is out of memory: raise maxmemory or purge records)",
        Some("READONLY") => " (this is a replica: point --db at the primary)",
        _ if e.is_connection_refusal() => " (is the server running and reachable?)",
        _ => "",
    };
    format!("{e}{hint}")
}

/// A record from its `HMGET` values and its revision; `None` when absent.
fn parse_record(key: &str, values: &[Option<Vec<u8>>]) -> Option<(Record, String)> {
    let field = |name: &str| -> Option<&[u8]> {
        let at = FIELDS.iter().position(|f| *f == name)?;
        values.get(at)?.as_deref()
    };
    let text = |name: &str| String::from_utf8_lossy(field(name).unwrap_or_default()).into_owned();
    let int = |name: &str| -> Option<i64> { std::str::from_utf8(field(name)?).ok()?.parse().ok() };
    let flag = |name: &str| int(name).is_some_and(|v| v != 0);
    let status = field("status")?;
    let child = int("child_pid").map(|pid| ChildId {
        pid,
        pgid: int("child_pgid").unwrap_or(pid),
        start: int("child_start").unwrap_or(0),
    });
    let record = Record {
        key: key.to_owned(),
        status: std::str::from_utf8(status)
            .ok()
            .and_then(Status::parse)
            .unwrap_or(Status::Failed),
        fingerprint: field("fingerprint").unwrap_or_default().to_vec(),
        command: field("command").unwrap_or_default().to_vec(),
        cwd: field("cwd").unwrap_or_default().to_vec(),
        attempt: int("attempt").unwrap_or(1),
        token: int("token").unwrap_or(0),
        started_at: int("started_at").unwrap_or(0),
        finished_at: int("finished_at"),
        expires_at: int("expires_at"),
        lease_until: int("lease_until"),
        exit_code: int("exit_code").and_then(|c| i32::try_from(c).ok()),
        signal: int("signal").and_then(|s| i32::try_from(s).ok()),
        timed_out: flag("timed_out"),
        replays: int("replays").unwrap_or(0),
        owner: Owner {
            host: text("owner_host"),
            boot_id: text("owner_boot"),
            pid: int("owner_pid").unwrap_or(0),
            start: int("owner_start").unwrap_or(0),
            child,
        },
        stdout_bytes: int("stdout_bytes").unwrap_or(0),
        stderr_bytes: int("stderr_bytes").unwrap_or(0),
        stdout_truncated: flag("stdout_truncated"),
        stderr_truncated: flag("stderr_truncated"),
    };
    Some((record, text("rev")))
}
