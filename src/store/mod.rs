//! The store: where records live, behind one trait.
//!
//! A backend offers atomic primitives only — read, claim under a lock
//! (with the child that will run), renew, append to and read the output journal, finish,
//! list, delete. What to do
//! with a record (run, replay, wait, refuse, take over) is decided by
//! `crate::policy`, which every backend shares. `open` picks the backend from
//! the `--db` value.

#[cfg(test)]
pub mod contract;
mod finish;
pub mod journal;
mod location;
pub mod postgres;
pub mod redis;
pub mod sqlite;

use crate::owner::{ChildId, Owner};
use anyhow::Result;
pub use finish::{final_writes_deadline, finish_patiently, FinishFailure, FINISH_PATIENCE};
pub use location::Location;
use std::time::Duration;

/// Milliseconds since the Unix epoch, by the store's clock.
pub type Millis = i64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    InProgress,
    Completed,
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::InProgress => "in_progress",
            Status::Completed => "completed",
            Status::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        match s {
            "in_progress" => Some(Status::InProgress),
            "completed" => Some(Status::Completed),
            "failed" => Some(Status::Failed),
            _ => None,
        }
    }
}

/// One key's record, as stored (its output is in its journal).
#[derive(Debug, Clone)]
pub struct Record {
    pub key: String,
    pub status: Status,
    pub fingerprint: Vec<u8>,
    /// argv, each element's raw bytes joined by NUL (argv cannot hold NUL).
    pub command: Vec<u8>,
    pub cwd: Vec<u8>,
    pub attempt: i64,
    /// Fencing token of the claim that wrote this record.
    pub token: i64,
    pub started_at: Millis,
    pub finished_at: Option<Millis>,
    pub expires_at: Option<Millis>,
    /// The running owner's lease, by the store's clock: where process
    /// checks cannot tell, the owner is dead once it has passed. `None`
    /// once finished, and on SQLite records older than schema 3.
    pub lease_until: Option<Millis>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub replays: i64,
    pub owner: Owner,
    /// `--label`: what the caller said this run is, for operators.
    pub label: Option<String>,
    /// Bytes of each stream in the journal so far.
    pub stdout_bytes: i64,
    pub stderr_bytes: i64,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
}

impl Record {
    pub fn is_expired(&self, now: Millis) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// argv as separate raw byte strings.
    pub fn argv(&self) -> impl Iterator<Item = &[u8]> {
        self.command.split(|&b| b == 0)
    }
}

/// What a new claim writes: the record starts `in_progress`.
#[derive(Debug, Clone)]
pub struct Claim {
    pub fingerprint: Vec<u8>,
    pub command: Vec<u8>,
    pub cwd: Vec<u8>,
    pub attempt: i64,
    pub owner: Owner,
    pub lease_ms: Millis,
    pub label: Option<String>,
    /// The child, started and held at its gate until the claim is written
    /// (none when COMMAND cannot be started at all).
    pub child: Option<ChildId>,
}

/// A finished run as `finish` stores it (its output is in the journal
/// already).
#[derive(Debug, Clone)]
pub struct Outcome {
    pub status: Status,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub ttl_ms: Millis,
    pub stdout: Captured,
    pub stderr: Captured,
}

/// What became of a stream's stored copy (its bytes are in the journal,
/// and the record counts them as they are appended).
#[derive(Debug, Clone, Copy, Default)]
pub struct Captured {
    /// More than `--max-output` arrived, or the journal could not take it
    /// all: the stored copy is cut.
    pub truncated: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One piece of the output journal: what idem read from one of the child's
/// pipes, in order.
#[derive(Debug, Clone, Copy)]
pub struct Chunk<'a> {
    pub stream: Stream,
    pub bytes: &'a [u8],
}

impl Chunk<'_> {
    /// A batch of captured pieces as the stores take it.
    pub fn all_of(batch: &[(Stream, Vec<u8>)]) -> Vec<Chunk<'_>> {
        batch
            .iter()
            .map(|(stream, bytes)| Chunk {
                stream: *stream,
                bytes,
            })
            .collect()
    }
}

/// How often a follower looks at a local store again (a shared store
/// wakes it up instead).
pub const LOCAL_POLL: Duration = Duration::from_millis(50);

/// How many records one purge transaction deletes: big enough to amortise
/// a commit, small enough that a waiting `idem run` hardly notices
/// (measured on SQLite: 1M purged in ~3 s while concurrent runs took at
/// most ~0.13 s; 2,000 was ~30% slower and no kinder to them).
pub const PURGE_BATCH: usize = 5_000;

/// A record as `purge` judged it: what must still hold for it to go. An
/// owner that finished between the look and the delete changed the
/// status; one that renewed its lease changed `lease_until`; a new claim
/// changed the token (and with it the owner).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judged {
    pub key: String,
    pub token: i64,
    pub status: Status,
    pub lease_until: Option<Millis>,
}

impl From<Record> for Judged {
    fn from(record: Record) -> Judged {
        Judged {
            key: record.key,
            token: record.token,
            status: record.status,
            lease_until: record.lease_until,
        }
    }
}

/// Which records `list` yields. Fields combine with AND.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub keys: Vec<String>,
    pub status: Option<Status>,
    pub expired: bool,
    pub prefix: Option<String>,
    /// Only records started before this time.
    pub started_before: Option<Millis>,
    /// At most this many; any value above `i64::MAX` means no limit, on
    /// every store.
    pub limit: Option<u64>,
}

/// Renews one claim's lease on a store connection of its own, so that no
/// journal append, slow query or stalled reader on the main one can delay
/// a renewal (`child::keeper` drives it from a thread of its own).
pub trait LeaseKeeper: Send {
    /// Extends the lease of `key`'s claim with `token` to `lease_ms` from
    /// the store's now, giving up (an error) after a third of the lease.
    /// False: the record carries another token, is finished, or is gone.
    fn renew(&mut self, key: &str, token: i64, lease_ms: Millis) -> Result<bool>;
}

/// A second connection to a shared store, kept for renewals only: what
/// `Store::lease_keeper` gives on PostgreSQL and Redis.
pub struct RenewalsOnly<S>(pub S);

impl<S: Store> LeaseKeeper for RenewalsOnly<S> {
    fn renew(&mut self, key: &str, token: i64, lease_ms: Millis) -> Result<bool> {
        self.0.renew(key, token, lease_ms)
    }
}

/// The atomic primitives a backend provides. A store moves to the journal
/// thread while the child runs (`child::JournalWriter`), hence `Send`.
pub trait Store: Send {
    /// The store's clock (the server's, for shared stores).
    fn now(&mut self) -> Result<Millis>;

    /// Reads a record, with the store's time, without taking any lock (one
    /// round trip on a shared store: the replay path runs on it). Its
    /// `replays` may be short unless `count_replays_exactly` was called.
    fn get(&mut self, key: &str) -> Result<(Millis, Option<Record>)>;

    /// Under the store's lock for `key`, reads the record and passes it with
    /// the store's time to `decide`; when `decide` returns a claim, writes
    /// it durably and returns its new fencing token.
    fn claim(
        &mut self,
        key: &str,
        decide: &mut dyn FnMut(Option<&Record>, Millis) -> Option<Claim>,
    ) -> Result<Option<i64>>;

    /// A directory to fsync before the claim counts, for a store whose
    /// commits are durable only once their file's entry is (SQLite: the
    /// WAL's). The child fsyncs it before it may exec, in parallel with
    /// idem's own work; the store then owes no sync of its own. None: the
    /// store needs none (a server), or cannot open it (SQLite ignores that
    /// too).
    fn directory_to_sync(&mut self) -> Option<std::fs::File> {
        None
    }

    /// A descriptor that the command's watcher keeps open until COMMAND's
    /// group is gone, whatever ends idem (`child::Guard`): on SQLite, the
    /// owners' lock file, whose byte the claim then locks on the same open
    /// file description (SPEC "Crashed owners"). None: nothing to keep, or
    /// it cannot be opened (the claim then says why).
    fn owner_lock(&mut self) -> Option<std::os::fd::OwnedFd> {
        None
    }

    /// Extends the lease of a running claim. False if it is no longer ours.
    fn renew(&mut self, key: &str, token: i64, lease_ms: Millis) -> Result<bool>;

    /// A connection of its own that renews the lease of a claim of `lease`
    /// (each attempt bounded by `lease.attempt_limit()`, by the server too
    /// where it can be told), for a store judged by leases. None: the store keeps no lease (SQLite, where the
    /// kernel tells whether an owner lives).
    fn lease_keeper(
        &mut self,
        _lease: crate::lease::Lease,
    ) -> Result<Option<Box<dyn LeaseKeeper>>> {
        Ok(None)
    }

    /// Stores the outcome durably, and with it the journal written so far.
    /// False if the claim is no longer ours.
    fn finish(&mut self, key: &str, token: i64, outcome: &Outcome) -> Result<bool>;

    /// Appends `chunks` (one batch) to the journal of the running claim as
    /// its frame number `seq` (0, 1, 2, … in order; a number may be skipped).
    /// A frame whose number is there already is not written again: a retry
    /// of an append whose reply was lost writes nothing twice. Not durable
    /// by itself: `finish` makes the whole journal durable. False if the
    /// claim is no longer ours.
    fn append_journal(
        &mut self,
        key: &str,
        token: i64,
        seq: u64,
        chunks: &[Chunk<'_>],
    ) -> Result<bool>;

    /// Passes the journal of the record with `token`, from position `from`
    /// (0: the start), to `each`, a piece at a time, in order, in bounded
    /// memory. A record written before journals existed yields its stdout,
    /// then its stderr. Returns the position after what was read, to resume
    /// from; `None` if the record with `token` is gone.
    fn read_journal(
        &mut self,
        key: &str,
        token: i64,
        from: u64,
        each: &mut dyn FnMut(Stream, &[u8]) -> Result<()>,
    ) -> Result<Option<u64>>;

    /// Returns once the journal of `key` may have grown past `from`, or its
    /// record may have changed, or `timeout` has passed. This default
    /// sleeps a little; a shared store waits for the server to wake it.
    fn await_journal(
        &mut self,
        _key: &str,
        _token: i64,
        _from: u64,
        timeout: Duration,
    ) -> Result<()> {
        std::thread::sleep(timeout.min(LOCAL_POLL));
        Ok(())
    }

    /// Counts one replay (cheaply: not worth an fsync).
    fn count_replay(&mut self, key: &str, token: i64) -> Result<()>;

    /// Makes `get` count every replay so far, for those who show counts
    /// (`inspect`, `--report`). A store that counts with some delay (SQLite
    /// appends replays to a file, folded in now and then) then adds in what
    /// it has not folded yet; `list` always does.
    fn count_replays_exactly(&mut self) {}

    /// Calls `each` for every record the filter selects, newest first.
    fn list(&mut self, filter: &Filter, each: &mut dyn FnMut(Record) -> Result<()>) -> Result<()>;

    /// Deletes each record that is still as it was judged (same token,
    /// status and lease), in one transaction or script per record at
    /// least; returns how many went. A record that finished, was renewed
    /// or was claimed again since the look stays.
    fn delete(&mut self, records: &[Judged]) -> Result<u64>;

    /// Deletes the records `filter` selects, in batches of short
    /// transactions (running jobs are never locked out for long), and frees
    /// their space. Finished records simply go; each `in_progress` one is
    /// shown to `take_running` first and goes only on a yes (the caller
    /// judges its owner). A record claimed again between the look and the
    /// delete stays (its token changed). Returns how many went.
    ///
    /// This default holds the chosen keys in memory; a backend overrides it
    /// with a streaming, bulk version.
    fn purge(
        &mut self,
        filter: &Filter,
        take_running: &mut dyn FnMut(&Record) -> Result<bool>,
    ) -> Result<u64> {
        let mut chosen = Vec::new();
        self.list(filter, &mut |record| {
            if record.status != Status::InProgress || take_running(&record)? {
                chosen.push(Judged::from(record));
            }
            Ok(())
        })?;
        let mut gone = 0;
        for batch in chosen.chunks(PURGE_BATCH) {
            gone += self.delete(batch)?;
        }
        Ok(gone)
    }

    /// Shared stores span machines; a local file belongs to one machine
    /// (so there another boot id means that it rebooted).
    fn is_shared(&self) -> bool;

    /// How many bytes the store takes, where it can say (`idem stats`).
    fn size(&mut self) -> Result<Option<u64>> {
        Ok(None)
    }

    /// The checks only this backend can make, for `idem check`: the file's
    /// integrity, the server's settings. Never changes a record.
    fn check(&mut self) -> Result<Vec<Finding>>;
}

/// How one of `idem check`'s checks came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

/// One line of `idem check`: what was checked and what was found.
#[derive(Debug, Clone)]
pub struct Finding {
    pub level: Level,
    pub name: &'static str,
    pub text: String,
}

impl Finding {
    pub fn new(level: Level, name: &'static str, text: impl Into<String>) -> Finding {
        Finding {
            level,
            name,
            text: text.into(),
        }
    }
}

/// How a command wants the store opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `run`: create the store if it does not exist.
    Create,
    /// `purge`: write, but never create.
    Existing,
    /// `inspect`: never create, never write.
    ReadOnly,
}

/// Opens the store at `location`; `None` when it does not exist and `mode`
/// forbids creating it.
pub fn open(location: &Location, mode: Mode) -> Result<Option<Box<dyn Store>>> {
    match location {
        Location::File(path) => {
            Ok(sqlite::SqliteStore::open(path, mode)?.map(|s| Box::new(s) as Box<dyn Store>))
        }
        Location::Postgres(url) => postgres::open(url, mode),
        Location::Redis(url) => redis::open(url, mode),
    }
}
