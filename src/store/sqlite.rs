//! The embedded default: one SQLite file in WAL mode.
//!
//! Claims run in `BEGIN IMMEDIATE` with `synchronous=FULL`, so they are on
//! disk before the child starts; outcomes likewise before idem exits. The
//! running owner's lease is renewed cheaply (no fsync, a short wait for the
//! lock): it only matters to other PID namespaces sharing the file. Reads
//! (replay, wait, inspect) never take the write lock. The WAL stays between
//! calls (no checkpoint on close: that cost every call two fsyncs); a writer
//! empties it on its way out once it has grown. Before SQLite touches a
//! file, its first 100 bytes are checked: a file that is not SQLite, belongs
//! to another application, or has a newer schema is refused untouched.

mod check;
mod errors;
mod file;
mod purge;
mod upkeep;

use errors::{describe, describe_at, store_error, store_failure};
use file::{check_identity, create_file, identify, Creating, Found};

use super::{Claim, Filter, Millis, Mode, Outcome, Record, Status, Store, Stream};
use crate::owner::{ChildId, Owner};
use anyhow::{Context, Result};
use rusqlite::config::DbConfig;
use rusqlite::{params, Connection, ErrorCode, OpenFlags, OptionalExtension, Row, ToSql};
use std::cell::Cell;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// `PRAGMA application_id`: "idem" in ASCII.
const APPLICATION_ID: i32 = 0x6964_656d;
/// `PRAGMA user_version`: the schema this build writes.
const SCHEMA_VERSION: i32 = 3;
/// How many expired records a claim deletes on its way.
const CLEANUP_BATCH: i64 = 16;
/// How long contention on the write lock may last before idem gives up.
const LOCK_PATIENCE: Duration = Duration::from_secs(120);
/// How long a lease renewal waits for the write lock at most: the owner
/// tries again at its next tick, two more before the lease runs out.
const RENEW_PATIENCE: Duration = Duration::from_millis(200);
/// Why `inspect` cannot use an empty store file.
const NEVER_INITIALISED: &str = "it was never initialised (run `idem run` once to create it)";

/// Schema migrations; entry N brings a store from version N to N + 1.
const MIGRATIONS: &[&str] = &[
    "
    CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) STRICT;
    INSERT INTO counters VALUES ('token', 0);
    CREATE TABLE records (
        key TEXT PRIMARY KEY,
        status TEXT NOT NULL,
        fingerprint BLOB NOT NULL,
        command BLOB NOT NULL,
        cwd BLOB NOT NULL,
        attempt INTEGER NOT NULL,
        token INTEGER NOT NULL,
        started_at INTEGER NOT NULL,
        finished_at INTEGER,
        expires_at INTEGER,
        exit_code INTEGER,
        signal INTEGER,
        timed_out INTEGER NOT NULL DEFAULT 0,
        replays INTEGER NOT NULL DEFAULT 0,
        owner_host TEXT NOT NULL,
        owner_boot TEXT NOT NULL,
        owner_pid INTEGER NOT NULL,
        owner_start INTEGER NOT NULL,
        child_pid INTEGER,
        child_pgid INTEGER,
        child_start INTEGER,
        stdout_truncated INTEGER NOT NULL DEFAULT 0,
        stderr_truncated INTEGER NOT NULL DEFAULT 0,
        stdout BLOB NOT NULL DEFAULT x'',
        stderr BLOB NOT NULL DEFAULT x''
    ) STRICT;
    CREATE INDEX records_expires_at ON records (expires_at) WHERE expires_at IS NOT NULL;
    CREATE INDEX records_started_at ON records (started_at);
",
    "
    -- Replays are counted apart: an UPDATE rewrites the whole records row,
    -- stored output included, so counting there cost a replay of 48 MiB
    -- 100 MiB of memory and 48 MiB of WAL. A count belongs to one claim
    -- (token): a new claim of the key starts again from zero. Whoever
    -- deletes records deletes their counts (a trigger cost a purge of 1M
    -- records three seconds).
    CREATE TABLE replay_counts (
        key TEXT PRIMARY KEY,
        token INTEGER NOT NULL,
        count INTEGER NOT NULL
    ) STRICT;
",
    "
    -- Version 3, the label (issue 14): `--label TEXT`, what the caller says
    -- a run is, so an operator can tell which event a derived `cmd:` key
    -- belongs to. NULL for records written before it existed.
    ALTER TABLE records ADD COLUMN label TEXT;

    -- Version 3, owners (issue 11): the PID namespace (inode of
    -- /proc/self/ns/pid), and a lease that the running owner renews, as on
    -- the shared stores. Containers on one machine that share the file, and
    -- other hosts, are judged by the lease; process checks only within one
    -- PID namespace. Records written before have neither (NULL: unknown,
    -- see policy::owner_alive).
    ALTER TABLE records ADD COLUMN owner_pid_ns INTEGER;
    ALTER TABLE records ADD COLUMN lease_until INTEGER;
",
];

const RECORD_COLUMNS: &str = "key, status, fingerprint, command, cwd, attempt, token, started_at, \
    finished_at, expires_at, exit_code, signal, timed_out, \
    replays + coalesce((SELECT count FROM replay_counts AS c \
        WHERE c.key = records.key AND c.token = records.token), 0), \
    owner_host, owner_boot, \
    owner_pid, owner_start, child_pid, child_pgid, child_start, length(stdout), length(stderr), \
    stdout_truncated, stderr_truncated, label, lease_until, owner_pid_ns";
/// How many columns `RECORD_COLUMNS` names; a query may add more after them.
const RECORD_COLUMN_COUNT: usize = 28;

pub struct SqliteStore {
    conn: Connection,
    path: PathBuf,
    /// Whether this process wrote to the WAL (so may have to empty it).
    wrote: bool,
    /// Whether this process freed pages: the file only shrinks when the
    /// WAL is checkpointed, so it is then emptied whatever its size.
    shrunk: bool,
    /// Whether anything failed (a corrupt page, a read-only file): then
    /// nothing more is written, not even a checkpoint.
    broken: Cell<bool>,
    /// The `synchronous` level the connection is at, once idem has set it.
    sync: Option<Sync>,
}

/// How a write reaches the disk. Claims and outcomes are fsynced before
/// their commit returns; the child's pid and the replay counter are not
/// worth an fsync (a power loss makes the owner dead anyway; a replay count
/// is a statistic). Checkpoints fsync at either level.
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
            path: path.to_owned(),
            wrote: false,
            shrunk: false,
            broken: Cell::new(false),
            sync: None,
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
    /// connection is there already (the replay path sets it once).
    fn sync(&mut self, level: Sync) -> rusqlite::Result<()> {
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

    /// Makes a new file an idem store, or migrates an older one. Runs under
    /// the write lock, so racing creators see each other's work.
    fn prepare(&mut self, mode: Mode) -> Result<()> {
        let (app, version, tables) = self.identity()?;
        if app == APPLICATION_ID && version == SCHEMA_VERSION {
            return Ok(());
        }
        check_identity(&self.path, app, version, tables)?;
        // An older store is upgraded whoever opens it (inspect included: the
        // upgrades only add to it, under the write lock for a moment); an
        // empty file is left for `run` to make a store of.
        if mode == Mode::ReadOnly && tables == 0 {
            return self.fail(NEVER_INITIALISED);
        }
        if tables == 0 {
            // auto_vacuum must be chosen before the first table exists.
            self.pragma("auto_vacuum", "INCREMENTAL")?;
        }
        if app == 0 {
            // The first write to a new file stamps it idem's (in the main
            // file, before WAL mode): from then on `identify` knows it.
            self.pragma("application_id", &APPLICATION_ID.to_string())?;
        }
        self.switch_to_wal()?;
        let synced = self.sync(Sync::Full);
        self.sql(synced, "cannot set it up")?;
        let path = self.path.clone();
        let fail = |what: &str, e: rusqlite::Error| {
            store_error::<()>(&path, &format!("{what}: {}", describe(&e)))
        };
        let tx = match self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        {
            Ok(tx) => tx,
            Err(e) => return fail("cannot lock it", e),
        };
        let (app, version, tables): (i32, i32, i64) =
            match tx.query_row(IDENTITY_SQL, [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))) {
                Ok(identity) => identity,
                Err(e) => return fail("cannot read it", e),
            };
        check_identity(&path, app, version, tables)?;
        for (from, migration) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            if let Err(e) = tx.execute_batch(migration) {
                return fail(&format!("cannot migrate it from version {from}"), e);
            }
        }
        let stamp = format!(
            "PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = {SCHEMA_VERSION};"
        );
        if let Err(e) = tx.execute_batch(&stamp).and_then(|()| tx.commit()) {
            return fail("cannot initialise it", e);
        }
        // Copy the new schema into the database file now (once per store),
        // so the header `open` reads says "ready": until the first
        // checkpoint, every call would check the schema with SQL again.
        // Passive: best effort, never waits for other processes.
        let _ = self
            .conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
        Ok(())
    }

    fn identity(&self) -> Result<(i32, i32, i64)> {
        self.conn
            .query_row(IDENTITY_SQL, [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .or_else(|e| self.fail(&format!("cannot read it: {e}")))
    }

    /// Several processes may create a store at once; the switch to WAL needs
    /// a moment alone and may report SQLITE_BUSY without waiting.
    fn switch_to_wal(&self) -> Result<()> {
        let deadline = Instant::now() + LOCK_PATIENCE;
        loop {
            let mode: rusqlite::Result<String> =
                self.conn
                    .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0));
            match mode {
                Ok(mode) if mode.eq_ignore_ascii_case("wal") => return Ok(()),
                Ok(mode) => {
                    return self.fail(&format!("cannot switch it to WAL mode (still {mode})"))
                }
                Err(e) if is_busy(&e) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(e) => return self.fail(&format!("cannot switch it to WAL mode: {e}")),
            }
        }
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

    fn read_record(&self, key: &str) -> rusqlite::Result<Option<Record>> {
        self.conn
            .prepare_cached(&format!(
                "SELECT {RECORD_COLUMNS} FROM records WHERE key = ?1"
            ))?
            .query_row([key], record_from_row)
            .optional()
    }

    fn next_token(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<i64> {
        tx.query_row(
            "UPDATE counters SET value = value + 1 WHERE name = 'token' RETURNING value",
            [],
            |r| r.get(0),
        )
    }

    fn write_claim(
        tx: &rusqlite::Transaction<'_>,
        key: &str,
        claim: &Claim,
        token: i64,
        now: Millis,
    ) -> rusqlite::Result<()> {
        tx.prepare_cached(
            "INSERT INTO records (key, status, fingerprint, command, cwd, attempt, token, started_at,
                owner_host, owner_boot, owner_pid, owner_start, label, owner_pid_ns, lease_until)
             VALUES (?1, 'in_progress', ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)
             ON CONFLICT (key) DO UPDATE SET status = 'in_progress', fingerprint = ?2, command = ?3,
                cwd = ?4, attempt = ?5, token = ?6, started_at = ?7, finished_at = NULL,
                expires_at = NULL, exit_code = NULL, signal = NULL, timed_out = 0, replays = 0,
                owner_host = ?8, owner_boot = ?9, owner_pid = ?10, owner_start = ?11,
                owner_pid_ns = ?13, lease_until = ?14,
                child_pid = NULL, child_pgid = NULL, child_start = NULL,
                stdout_truncated = 0, stderr_truncated = 0, stdout = x'', stderr = x'', label = ?12",
        )?
        .execute(params![
            key,
            claim.fingerprint,
            claim.command,
            claim.cwd,
            claim.attempt,
            token,
            now,
            claim.owner.host,
            claim.owner.boot_id,
            claim.owner.pid,
            claim.owner.start,
            claim.label,
            claim.owner.pid_ns,
            now.saturating_add(claim.lease_ms),
        ])?;
        let mut cleanup = tx.prepare_cached(
            "DELETE FROM records WHERE rowid IN
               (SELECT rowid FROM records WHERE expires_at <= ?1 AND key <> ?2 LIMIT ?3)
             RETURNING key",
        )?;
        let gone = cleanup
            .query_map(params![now, key, CLEANUP_BATCH], |r| r.get::<_, String>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        if !gone.is_empty() {
            let mut counts = tx.prepare_cached("DELETE FROM replay_counts WHERE key = ?1")?;
            for key in gone {
                counts.execute([key])?;
            }
        }
        Ok(())
    }

    fn write_outcome(
        &mut self,
        key: &str,
        token: i64,
        outcome: &Outcome,
        with_output: bool,
    ) -> rusqlite::Result<bool> {
        let now = now_millis();
        let (out, err): (&[u8], &[u8]) = if with_output {
            (&outcome.stdout.bytes, &outcome.stderr.bytes)
        } else {
            (&[], &[])
        };
        self.sync(Sync::Full)?;
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let changed = tx.execute(
            "UPDATE records SET status = ?3, finished_at = ?4, expires_at = ?4 + ?5, exit_code = ?6,
                signal = ?7, timed_out = ?8, stdout = ?9, stderr = ?10,
                stdout_truncated = ?11, stderr_truncated = ?12, lease_until = NULL
             WHERE key = ?1 AND token = ?2 AND status = 'in_progress'",
            params![
                key,
                token,
                outcome.status.as_str(),
                now,
                outcome.ttl_ms,
                outcome.exit_code,
                outcome.signal,
                outcome.timed_out,
                out,
                err,
                outcome.stdout.truncated || (!with_output && !outcome.stdout.bytes.is_empty()),
                outcome.stderr.truncated || (!with_output && !outcome.stderr.bytes.is_empty()),
            ],
        )?;
        tx.commit()?;
        Ok(changed == 1)
    }
}

const IDENTITY_SQL: &str = "SELECT (SELECT application_id FROM pragma_application_id), \
    (SELECT user_version FROM pragma_user_version), (SELECT count(*) FROM sqlite_master)";

impl Store for SqliteStore {
    fn now(&mut self) -> Result<Millis> {
        Ok(now_millis())
    }

    fn get(&mut self, key: &str) -> Result<(Millis, Option<Record>)> {
        let record = self.read_record(key);
        Ok((now_millis(), self.sql(record, "cannot read a record")?))
    }

    fn claim(
        &mut self,
        key: &str,
        decide: &mut dyn FnMut(Option<&Record>, Millis) -> Option<Claim>,
    ) -> Result<Option<i64>> {
        self.wrote = true;
        let result = (|| {
            self.sync(Sync::Full)?;
            let tx = self
                .conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let existing = tx
                .prepare_cached(&format!(
                    "SELECT {RECORD_COLUMNS} FROM records WHERE key = ?1"
                ))?
                .query_row([key], record_from_row)
                .optional()?;
            let now = now_millis();
            let Some(claim) = decide(existing.as_ref(), now) else {
                return Ok(None);
            };
            let token = Self::next_token(&tx)?;
            Self::write_claim(&tx, key, &claim, token, now)?;
            tx.commit()?;
            Ok(Some(token))
        })();
        self.sql(result, "cannot claim the key")
    }

    fn set_child(&mut self, key: &str, token: i64, child: ChildId) -> Result<bool> {
        self.wrote = true;
        // A process crash cannot lose this commit (it is in the WAL); a power
        // loss changes the boot id, which makes the owner dead anyway.
        let result = (|| {
            self.sync(Sync::Normal)?;
            self.conn.execute(
                "UPDATE records SET child_pid = ?3, child_pgid = ?4, child_start = ?5
                 WHERE key = ?1 AND token = ?2 AND status = 'in_progress'",
                params![key, token, child.pid, child.pgid, child.start],
            )
        })();
        Ok(self.sql(result, "cannot record the child")? == 1)
    }

    /// Cheap and short: no fsync (a renewal lost to a power loss only makes
    /// the owner look dead sooner, and after a reboot it is dead anyway),
    /// and at most `RENEW_PATIENCE` waiting for the write lock; a failed
    /// renewal is tried again at the owner's next tick.
    fn renew(&mut self, key: &str, token: i64, lease_ms: Millis) -> Result<bool> {
        self.wrote = true;
        let result = self.sync(Sync::Normal).and_then(|()| {
            self.conn.busy_timeout(RENEW_PATIENCE)?;
            let changed = self
                .conn
                .prepare_cached(
                    "UPDATE records SET lease_until = ?3
                     WHERE key = ?1 AND token = ?2 AND status = 'in_progress'",
                )
                .and_then(|mut s| {
                    s.execute(params![key, token, now_millis().saturating_add(lease_ms)])
                });
            self.conn.busy_handler(Some(wait_for_lock))?;
            changed
        });
        Ok(self.sql(result, "cannot renew the lease")? == 1)
    }

    fn finish(&mut self, key: &str, token: i64, outcome: &Outcome) -> Result<bool> {
        self.wrote = true;
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

    fn copy_output(
        &mut self,
        key: &str,
        token: i64,
        stream: Stream,
        out: &mut dyn Write,
    ) -> Result<bool> {
        let column = match stream {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        };
        let tx = self.conn.unchecked_transaction();
        let tx = self.sql(tx, "cannot read the output")?;
        let rowid = tx
            .prepare_cached("SELECT rowid FROM records WHERE key = ?1 AND token = ?2")
            .and_then(|mut s| {
                s.query_row(params![key, token], |r| r.get::<_, i64>(0))
                    .optional()
            });
        let Some(rowid) = self.sql(rowid, "cannot read the output")? else {
            return Ok(false);
        };
        let blob = tx.blob_open(rusqlite::DatabaseName::Main, "records", column, rowid, true);
        let mut blob = self.sql(blob, "cannot read the output")?;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = blob
                .read(&mut buf)
                .or_else(|e| self.fail(&format!("cannot read the output: {e}")))?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n])?;
        }
        drop(blob);
        let done = tx.commit();
        self.sql(done, "cannot read the output")?;
        Ok(true)
    }

    fn count_replay(&mut self, key: &str, token: i64) -> Result<()> {
        self.wrote = true;
        let result = (|| {
            self.sync(Sync::Normal)?;
            // A key replayed before under this claim: a one-row UPDATE,
            // about half the parse of the general statement below.
            let counted = self.conn.execute(
                "UPDATE replay_counts SET count = count + 1 WHERE key = ?1 AND token = ?2",
                params![key, token],
            )?;
            if counted == 1 {
                return Ok(1);
            }
            self.conn.execute(
                "INSERT INTO replay_counts (key, token, count)
                   SELECT key, token, 1 FROM records WHERE key = ?1 AND token = ?2
                 ON CONFLICT (key) DO UPDATE SET token = excluded.token,
                   count = CASE WHEN token = excluded.token THEN count + 1 ELSE 1 END",
                params![key, token],
            )
        })();
        self.sql(result, "cannot count the replay").map(drop)
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
        let mut stmt = self.conn.prepare(&sql).map_err(failed)?;
        let params: Vec<&dyn ToSql> = args.iter().map(AsRef::as_ref).collect();
        let mut rows = stmt.query(params.as_slice()).map_err(failed)?;
        while let Some(row) = rows.next().map_err(failed)? {
            each(record_from_row(row).map_err(failed)?)?;
        }
        Ok(())
    }

    fn delete(&mut self, records: &[(String, i64)]) -> Result<u64> {
        self.wrote = true;
        let result = (|| {
            self.sync(Sync::Full)?;
            let tx = self
                .conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let mut gone = 0;
            {
                let mut stmt =
                    tx.prepare_cached("DELETE FROM records WHERE key = ?1 AND token = ?2")?;
                let mut counts =
                    tx.prepare_cached("DELETE FROM replay_counts WHERE key = ?1 AND token = ?2")?;
                for (key, token) in records {
                    gone += stmt.execute(params![key, token])? as u64;
                    counts.execute(params![key, token])?;
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

/// The WHERE clause (without `WHERE`) and its arguments for `filter`.
fn filter_sql(filter: &Filter, now: Millis) -> (String, Vec<Box<dyn ToSql>>) {
    let mut sql = String::from("1");
    let mut args: Vec<Box<dyn ToSql>> = Vec::new();
    if !filter.keys.is_empty() {
        let marks = vec!["?"; filter.keys.len()].join(", ");
        sql.push_str(&format!(" AND key IN ({marks})"));
        for key in &filter.keys {
            args.push(Box::new(key.clone()));
        }
    }
    if let Some(status) = filter.status {
        sql.push_str(" AND status = ?");
        args.push(Box::new(status.as_str()));
    }
    if filter.expired {
        sql.push_str(" AND expires_at <= ?");
        args.push(Box::new(now));
    }
    if let Some(prefix) = &filter.prefix {
        sql.push_str(" AND substr(key, 1, length(?)) = ?");
        args.push(Box::new(prefix.clone()));
        args.push(Box::new(prefix.clone()));
    }
    if let Some(before) = filter.started_before {
        sql.push_str(" AND started_at < ?");
        args.push(Box::new(before));
    }
    (sql, args)
}

fn record_from_row(row: &Row<'_>) -> rusqlite::Result<Record> {
    let status: String = row.get(1)?;
    let child_pid: Option<i64> = row.get(18)?;
    Ok(Record {
        key: row.get(0)?,
        status: Status::parse(&status).unwrap_or(Status::Failed),
        fingerprint: row.get(2)?,
        command: row.get(3)?,
        cwd: row.get(4)?,
        attempt: row.get(5)?,
        token: row.get(6)?,
        started_at: row.get(7)?,
        finished_at: row.get(8)?,
        expires_at: row.get(9)?,
        exit_code: row.get(10)?,
        signal: row.get(11)?,
        timed_out: row.get(12)?,
        replays: row.get(13)?,
        owner: Owner {
            host: row.get(14)?,
            boot_id: row.get(15)?,
            pid_ns: row.get(27)?,
            pid: row.get(16)?,
            start: row.get(17)?,
            child: match child_pid {
                Some(pid) => Some(ChildId {
                    pid,
                    pgid: row.get::<_, Option<i64>>(19)?.unwrap_or(pid),
                    start: row.get::<_, Option<i64>>(20)?.unwrap_or(0),
                }),
                None => None,
            },
        },
        stdout_bytes: row.get(21)?,
        stderr_bytes: row.get(22)?,
        stdout_truncated: row.get(23)?,
        stderr_truncated: row.get(24)?,
        label: row.get(25)?,
        lease_until: row.get(26)?,
    })
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

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

pub fn now_millis() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
