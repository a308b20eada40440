//! The embedded default: one SQLite file in WAL mode.
//!
//! Claims run in `BEGIN IMMEDIATE` with `synchronous=FULL`, so they are on
//! disk before the child starts; outcomes likewise before idem exits. The
//! running owner needs no lease here: it holds a lock the kernel releases
//! only once it and its command are gone (`owner_lock`), which any caller
//! on the machine can test, so a renewal writes nothing. Reads
//! (replay, wait, inspect) never take the write lock. The WAL stays between
//! calls (no checkpoint on close: that cost every call two fsyncs); a writer
//! empties it on its way out once it has grown. Before SQLite touches a
//! file, its first 100 bytes are checked: a file that is not SQLite, belongs
//! to another application, or has a newer schema is refused untouched.

mod check;
mod errors;
mod file;
mod journal;
mod name;
mod owner_lock;
mod purge;
mod records;
mod replays;
mod schema;
mod upkeep;

use errors::{describe, describe_at, store_error, store_failure};
use file::{create_file, identify, Creating, Found};
use name::Identity;
use owner_lock::OwnerLocks;
use records::{filter_sql, record_from_row, DECISION_COLUMNS, RECORD_COLUMNS, RECORD_COLUMN_COUNT};

use super::{Chunk, Claim, Filter, Judged, Millis, Mode, Outcome, Record, Store, Stream};
use anyhow::{Context, Result};
use rusqlite::config::DbConfig;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, ToSql};
use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How many expired records a claim deletes on its way.
const CLEANUP_BATCH: i64 = 16;
/// How long contention on the write lock may last before idem gives up.
const LOCK_PATIENCE: Duration = Duration::from_secs(120);
/// Why `inspect` cannot use an empty store file.
const NEVER_INITIALISED: &str = "it was never initialised (run `idem run` once to create it)";

pub struct SqliteStore {
    conn: Connection,
    path: PathBuf,
    /// The file the path named when it was opened.
    identity: Option<Identity>,
    /// Whether this process wrote to the WAL (so may have to empty it).
    wrote: bool,
    /// Whether this process freed pages: the file only shrinks when the
    /// WAL is checkpointed, so it is then emptied whatever its size.
    shrunk: bool,
    /// Whether this process made the store: its first records then go to
    /// the main file at once, whatever the WAL's size.
    created: bool,
    /// Whether anything failed (a corrupt page, a read-only file): then
    /// nothing more is written, not even a checkpoint.
    broken: Cell<bool>,
    /// The `synchronous` level the connection is at, once idem has set it.
    sync: Option<Sync>,
    /// Whether `get` adds the replays not folded into the store yet (for
    /// those who show counts; the decision of a run does not need them).
    exact_counts: bool,
    /// Whether someone else fsyncs the directory, so that the WAL's entry
    /// in it is on disk (the child of a run, before it execs); otherwise a
    /// writer does on its way out (`upkeep`).
    directory_synced: bool,
    /// The owners' lock file beside the store: this process's claims lock
    /// a byte of it, and records in progress are judged by it.
    owner_locks: OwnerLocks,
}

/// How a write reaches the disk. Claims and outcomes are fsynced before
/// their commit returns; journal appends (the outcome's
/// commit makes them durable), purges and replay counts are not worth an
/// fsync (a power loss makes an owner dead anyway; a count is a
/// statistic). Checkpoints fsync at either level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sync {
    Full,
    Normal,
}

impl SqliteStore {
    pub fn open(path: &Path, mode: Mode) -> Result<Option<SqliteStore>> {
        let (ready, creating) = match identify(path)? {
            Found::Idem { ready } => (ready, None),
            Found::Missing if mode != Mode::Create => return Ok(None),
            Found::Missing => {
                create_file(path)?;
                // The new file's name on disk, before anything goes in it.
                if let Some(dir) = upkeep::open_directory(path) {
                    let _ = dir.sync_all();
                }
                (false, Some(Creating::lock(path)?))
            }
            Found::Empty if mode == Mode::ReadOnly => return store_error(path, NEVER_INITIALISED),
            Found::Empty => (false, Some(Creating::lock(path)?)),
        };

        // Never SQLITE_OPEN_CREATE: the file exists by now, and a vanished one
        // must not come back empty. `inspect` is kept read-only by query_only.
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).or_else(|e| {
            store_error(path, &format!("cannot open it: {}", describe_at(path, &e)))
        })?;
        conn.busy_handler(Some(wait_for_lock))
            .context("busy handler")?;
        // The last connection to close would checkpoint the WAL (two fsyncs)
        // and delete it with its index, so every call would pay for that and
        // for recreating both. Commits are durable in the WAL already; Drop
        // empties it once it grows (see WAL_LIMIT).
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
            .context("no checkpoint on close")?;
        let mut store = SqliteStore {
            conn,
            identity: Identity::of(path),
            path: path.to_owned(),
            wrote: false,
            shrunk: false,
            created: false,
            broken: Cell::new(false),
            sync: None,
            exact_counts: false,
            directory_synced: false,
            owner_locks: OwnerLocks::beside(path),
        };
        if !ready {
            store.prepare(mode)?;
        }
        drop(creating);
        if mode == Mode::ReadOnly {
            store.pragma("query_only", "1")?;
        }
        Ok(Some(store))
    }

    /// Sets the `synchronous` level for the next commits; a no-op when the
    /// connection is there already. Every write goes through here first,
    /// so the first also sets how the WAL is kept (`upkeep::WAL_PRAGMAS`).
    fn sync(&mut self, level: Sync) -> rusqlite::Result<()> {
        if self.sync.is_none() {
            self.conn.execute_batch(upkeep::WAL_PRAGMAS)?;
        }
        if self.sync != Some(level) {
            let name = match level {
                Sync::Full => "FULL",
                Sync::Normal => "NORMAL",
            };
            self.conn.pragma_update(None, "synchronous", name)?;
            self.sync = Some(level);
        }
        Ok(())
    }

    fn pragma(&self, name: &str, value: &str) -> Result<()> {
        self.conn
            .pragma_update(None, name, value)
            .or_else(|e| self.fail(&format!("cannot set it up: {}", describe(&e))))
    }

    fn fail<T>(&self, what: &str) -> Result<T> {
        Err(self.failure(what))
    }

    /// Exit 125 naming the store; the store is written no more.
    fn failure(&self, what: &str) -> anyhow::Error {
        self.broken.set(true);
        store_failure(&self.path, what)
    }

    /// Maps a SQLite error to exit 125 with the store's name in it.
    fn sql<T>(&self, result: rusqlite::Result<T>, doing: &str) -> Result<T> {
        result.or_else(|e| self.fail(&format!("{doing}: {}", describe_at(&self.path, &e))))
    }
}

impl Store for SqliteStore {
    fn now(&mut self) -> Result<Millis> {
        Ok(now_millis())
    }

    fn get(&mut self, key: &str) -> Result<(Millis, Option<Record>)> {
        let record = if self.exact_counts {
            self.read_record_exactly(key)
        } else {
            self.read_record(key, false)
        };
        let mut record = self.sql(record, "cannot read a record")?;
        if let Some(record) = &mut record {
            self.owner_locks.judge(record);
        }
        Ok((now_millis(), record))
    }

    fn claim(
        &mut self,
        key: &str,
        decide: &mut dyn FnMut(Option<&Record>, Millis) -> Option<Claim>,
    ) -> Result<Option<i64>> {
        self.wrote = true;
        let mut locked = None;
        let result = (|| {
            self.sync(Sync::Full)?;
            let tx = self
                .conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let mut existing = tx
                .prepare_cached(&format!(
                    "SELECT {DECISION_COLUMNS} FROM records WHERE key = ?1"
                ))?
                .query_row([key], record_from_row)
                .optional()?;
            if let Some(record) = &mut existing {
                self.owner_locks.judge(record);
            }
            let now = now_millis();
            let Some(claim) = decide(existing.as_ref(), now) else {
                return Ok(Ok(None));
            };
            let token = records::next_token(&tx)?;
            // The owner's lock, taken before the claim can be seen: the
            // token is this claim's alone, and so is its byte.
            if let Err(e) = self.owner_locks.lock(token) {
                return Ok(Err(e));
            }
            locked = Some(token);
            records::write_claim(&tx, key, &claim, existing.is_some(), token, now)?;
            tx.commit()?;
            Ok(Ok(Some(token)))
        })();
        if let (Some(byte), Err(_) | Ok(Err(_))) = (locked, &result) {
            self.owner_locks.unlock(byte);
        }
        match self.sql(result, "cannot claim the key")? {
            Ok(token) => Ok(token),
            Err(e) => self.fail(&format!("cannot take the owner's lock: {e}")),
        }
    }

    fn owner_lock(&mut self) -> Option<std::os::fd::OwnedFd> {
        self.owner_locks.share().ok()
    }

    fn directory_to_sync(&mut self) -> Option<std::fs::File> {
        let dir = upkeep::open_directory(&self.path)?;
        self.directory_synced = true;
        Some(dir)
    }

    /// No lease here (the owner's lock says it lives): writes nothing,
    /// and only says whether the claim is still this one (an operator may
    /// have purged it). A read never waits for the write lock.
    fn renew(&mut self, key: &str, token: i64, _lease_ms: Millis) -> Result<bool> {
        let ours = self
            .conn
            .prepare_cached(
                "SELECT 1 FROM records WHERE key = ?1 AND token = ?2 AND status = 'in_progress'",
            )
            .and_then(|mut s| s.exists(params![key, token]));
        self.sql(ours, "cannot read the claim")
    }

    fn finish(&mut self, key: &str, token: i64, outcome: &Outcome) -> Result<bool> {
        self.wrote = true;
        // Written where --db points, or not at all.
        if let Some(what) = self.identity.and_then(|id| id.gone_from(&self.path)) {
            return self.fail(&format!(
                "the store file {what} while the command ran; the outcome was not written \
                 into a file nobody will read, so the next call runs the command again \
                 (move a store only while no idem runs on it)"
            ));
        }
        match self.write_outcome(key, token, outcome, true) {
            Ok(ours) => Ok(ours),
            Err(first) => {
                // The outcome matters more than its output (disk full, say).
                crate::say::notice(format_args!(
                    "could not store the output ({}); recording the outcome without it",
                    describe(&first)
                ));
                let retry = self.write_outcome(key, token, outcome, false);
                self.sql(retry, "cannot record the outcome")
            }
        }
    }

    fn append_journal(
        &mut self,
        key: &str,
        token: i64,
        seq: u64,
        chunks: &[Chunk<'_>],
    ) -> Result<bool> {
        self.append(key, token, seq, chunks)
    }

    fn read_journal(
        &mut self,
        key: &str,
        token: i64,
        from: u64,
        each: &mut dyn FnMut(Stream, &[u8]) -> Result<()>,
    ) -> Result<Option<u64>> {
        self.read(key, token, from, each)
    }

    fn count_replay(&mut self, key: &str, token: i64) -> Result<()> {
        match replays::append(&self.path, key, token) {
            Ok(size) if size < replays::FOLD_AT => Ok(()),
            Ok(_) => self.fold_replays(false),
            // No file for counts (a read-only directory, say): in the store.
            Err(_) => self.count_in_store(key, token),
        }
    }

    fn count_replays_exactly(&mut self) {
        self.exact_counts = true;
    }

    fn list(&mut self, filter: &Filter, each: &mut dyn FnMut(Record) -> Result<()>) -> Result<()> {
        let (clause, args) = filter_sql(filter, now_millis());
        let mut sql = format!(
            "SELECT {RECORD_COLUMNS} FROM records WHERE {clause} ORDER BY started_at DESC, key"
        );
        if let Some(limit) = filter.limit {
            // SQLite's LIMIT is an i64; more than that is no limit at all,
            // as on the other stores.
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            sql.push_str(&format!(" LIMIT {limit}"));
        }
        let failed =
            |e: rusqlite::Error| self.failure(&format!("cannot list records: {}", describe(&e)));
        // One snapshot for the records and the replays not folded yet.
        let tx = self.conn.unchecked_transaction().map_err(failed)?;
        let (pending, _lock) = replays::pending(&tx, &self.path).map_err(failed)?;
        let mut stmt = tx.prepare(&sql).map_err(failed)?;
        let params: Vec<&dyn ToSql> = args.iter().map(AsRef::as_ref).collect();
        let mut rows = stmt.query(params.as_slice()).map_err(failed)?;
        while let Some(row) = rows.next().map_err(failed)? {
            let mut record = record_from_row(row).map_err(failed)?;
            self.owner_locks.judge(&mut record);
            replays::add_pending(&mut record, &pending);
            each(record)?;
        }
        Ok(())
    }

    fn delete(&mut self, records: &[Judged]) -> Result<u64> {
        self.wrote = true;
        let result = (|| {
            self.sync(Sync::Full)?;
            let tx = self
                .conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let mut gone = 0;
            {
                let mut stmt = tx.prepare_cached(
                    "DELETE FROM records WHERE key = ?1 AND token = ?2 AND status = ?3 \
                     AND lease_until IS ?4",
                )?;
                let mut counts =
                    tx.prepare_cached("DELETE FROM replay_counts WHERE key = ?1 AND token = ?2")?;
                let mut journals =
                    tx.prepare_cached("DELETE FROM journal WHERE key = ?1 AND token = ?2")?;
                for Judged {
                    key,
                    token,
                    status,
                    lease_until,
                } in records
                {
                    let went = stmt.execute(params![key, token, status.as_str(), lease_until])?;
                    if went > 0 {
                        counts.execute(params![key, token])?;
                        journals.execute(params![key, token])?;
                    }
                    gone += went as u64;
                }
            }
            tx.commit()?;
            self.shrunk = true;
            purge::free_pages(&self.conn, 0)?;
            Ok(gone)
        })();
        self.sql(result, "cannot delete records")
    }

    fn purge(
        &mut self,
        filter: &Filter,
        take_running: &mut dyn FnMut(&Record) -> Result<bool>,
    ) -> Result<u64> {
        self.purge_in_batches(filter, take_running)
    }

    fn is_shared(&self) -> bool {
        false
    }

    /// The file and its WAL.
    fn size(&mut self) -> Result<Option<u64>> {
        let mut wal = self.path.clone().into_os_string();
        wal.push("-wal");
        let len = |path: &Path| std::fs::metadata(path).map_or(0, |m| m.len());
        Ok(Some(len(&self.path) + len(Path::new(&wal))))
    }

    fn check(&mut self) -> Result<Vec<super::Finding>> {
        self.run_checks()
    }
}

/// Waits out contention instead of letting SQLITE_BUSY reach the user.
fn wait_for_lock(attempt: i32) -> bool {
    // Short sleeps: a claim holds the lock for about one fsync. At most
    // 4.5 ms a try, so this many tries outlast LOCK_PATIENCE.
    let tries = LOCK_PATIENCE.as_micros() / 4_500;
    if u128::try_from(attempt).unwrap_or(0) > tries {
        return false;
    }
    let step = u64::try_from(attempt.clamp(0, 16)).unwrap_or(0);
    std::thread::sleep(Duration::from_micros(500 + 250 * step));
    true
}

pub fn now_millis() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
