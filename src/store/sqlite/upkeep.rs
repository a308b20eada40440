//! Keeping the store's records in its main file, and the WAL short.
//!
//! idem keeps the WAL between calls (a checkpoint on every close cost every
//! call two fsyncs), but not for long: a store whose records live only in
//! its `-wal` is lost by an operator who copies `idem.db` alone or deletes
//! the `-wal` as a temporary file. So the commit that takes the WAL to 64
//! frames copies it into the main file (SQLite's automatic, passive
//! checkpoint), and the next writer then writes the WAL again from its
//! start, over blocks the file already has: the WAL is not truncated.
//! A commit's fsync costs about half as much when it rewrites a file's
//! blocks as when it adds blocks to it (on this machine's ext4, 125-170
//! against 300-360 µs), and a first run makes two. A WAL that a big output
//! grew past 1 MiB is cut back to that when it starts again. The
//! process that made the store, and `purge`, which frees pages (the file
//! only shrinks at a checkpoint), empty the WAL on their way out. Replays
//! never write the store (see `replays`), so only writers pay for any of
//! this.
//!
//! A commit fsyncs the WAL, but the WAL's entry in its directory is on disk
//! only once the directory is fsynced too. SQLite would do that in every
//! writing process, on the critical path of its first commit; idem builds
//! it without (`SQLITE_DISABLE_DIRSYNC`) and fsyncs the directory itself:
//! a run's child does, before it may exec (`Store::directory_to_sync`), so
//! in parallel with the claim's own work; any other writer does on its way
//! out.

use super::SqliteStore;
use nix::fcntl::OFlag;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

/// Set by a connection before its first write: checkpoint once the WAL
/// holds 64 frames, and cut a WAL that grew past 1 MiB back to that when
/// it starts again. A process that opens the
/// store alone rebuilds the WAL index by reading the whole WAL (about 4 k
/// instructions and 2 µs a frame), so a long WAL slows every later call; a
/// checkpoint costs the writer that makes it two fsyncs. Only first runs
/// write (6 frames each); with R replays per first run the two balance at
/// about sqrt(10,500 / (1 + R)) frames: 72 for R = 1, 31 for R = 10.
/// Measured in bench/run.sh's mix, 16 frames made first runs 8% slower and
/// replays no faster.
pub(super) const WAL_PRAGMAS: &str =
    "PRAGMA wal_autocheckpoint = 64; PRAGMA journal_size_limit = 1048576;";

impl Drop for SqliteStore {
    fn drop(&mut self) {
        // A store that failed (corrupt, read-only) gets no more writes.
        if !self.wrote || self.broken.get() {
            return;
        }
        if !self.directory_synced {
            if let Some(dir) = open_directory(&self.path) {
                let _ = dir.sync_all();
            }
        }
        if !self.shrunk && !self.created {
            return;
        }
        // Best effort. A run or a replay never waits for it: readers or a
        // writer at work mean another process will be along to do it. A
        // purge waits a little, to give the space back, but not on a reader
        // that never finishes (an `inspect` stuck on a full pipe).
        if self.shrunk {
            let _ = self.conn.busy_timeout(Duration::from_secs(2));
        } else {
            let _ = self.conn.busy_handler(None);
        }
        let _ = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
    }
}

/// The directory holding the store and its WAL, opened to be fsynced. None
/// when it cannot be opened (no read permission): SQLite, too, skips the
/// sync then.
pub(super) fn open_directory(store: &Path) -> Option<File> {
    let dir = match store.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    OpenOptions::new()
        .read(true)
        .custom_flags(OFlag::O_DIRECTORY.bits())
        .open(dir)
        .ok()
}
