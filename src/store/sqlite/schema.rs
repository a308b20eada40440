//! Making a file an idem store, and bringing an older one up to date: the
//! schema as a list of migrations (entry N takes a store from version N to
//! N + 1), applied in one write transaction under `BEGIN IMMEDIATE`, so
//! processes racing to create or upgrade a store see each other's work. The
//! file is stamped with idem's `application_id` and the schema version
//! (`user_version`), which `file.rs` reads before SQLite opens a file.

use super::errors::{describe, is_busy, store_error};
use super::file::check_identity;
use super::{journal, owner_lock, replays, SqliteStore, Sync, LOCK_PATIENCE, NEVER_INITIALISED};
use crate::store::Mode;
use anyhow::Result;
use std::time::{Duration, Instant};

/// `PRAGMA application_id`: "idem" in ASCII.
pub(super) const APPLICATION_ID: i32 = 0x6964_656d;
/// `PRAGMA user_version`: the schema this build writes.
pub(super) const SCHEMA_VERSION: i32 = 5;

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
    // Version 4, the output journal (issue 13, see sqlite/journal.rs). Like
    // replay counts, a journal belongs to one claim (key, token), and
    // whoever deletes or replaces records deletes their journals.
    journal::SCHEMA,
    "
    -- Version 5, the owner's lock (issue 23, see sqlite/owner_lock.rs): the
    -- byte of <store>-locks that the owner holds until its command's group
    -- is gone; the kernel says whether it lives. NULL for records written
    -- before, which are judged as they were (process checks, the lease).
    ALTER TABLE records ADD COLUMN owner_lock INTEGER;
",
];

const IDENTITY_SQL: &str = "SELECT (SELECT application_id FROM pragma_application_id), \
    (SELECT user_version FROM pragma_user_version), (SELECT count(*) FROM sqlite_master)";

impl SqliteStore {
    /// Makes a new file an idem store, or migrates an older one. Runs under
    /// the write lock, so racing creators see each other's work.
    pub(super) fn prepare(&mut self, mode: Mode) -> Result<()> {
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
            self.created = true;
            // Counts left by a store that was here before are not this one's.
            replays::forget(&self.path);
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
        if tables == 0 {
            // Locks left in the file of a store that was here before are
            // not this one's (its tokens start again). Only here, under the
            // write lock with no table yet: a racing creator may already
            // hold a lock in the file this store's claims use.
            owner_lock::forget(&path);
        }
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
}
