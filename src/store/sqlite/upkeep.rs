//! Keeping the store's records in its main file: when the WAL is emptied.
//!
//! idem keeps the WAL between calls (a checkpoint on every close cost every
//! call two fsyncs), but not for long: a store whose records live only in
//! its `-wal` is lost by an operator who copies `idem.db` alone or deletes
//! the `-wal` as a temporary file. So a writer empties the WAL on its way
//! out once the WAL is larger than `WAL_LIMIT`, the process that made the
//! store does after its first run, and `purge` always does. Replays never
//! write the store (see `replays`), so only writers pay for emptying it.
//!
//! A commit fsyncs the WAL, but the WAL's entry in its directory is on disk
//! only once the directory is fsynced too. SQLite would do that in every
//! writing process, on the critical path of its first commit; idem builds
//! it without (`SQLITE_DISABLE_DIRSYNC`) and fsyncs the directory itself:
//! a run's child does, before it may exec (`Store::directory_to_sync`), so
//! in parallel with the claim's own work; any other writer does on its way
//! out.

use super::file::with_suffix;
use super::SqliteStore;
use nix::fcntl::OFlag;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

/// WAL size past which a writer checkpoints and empties it on its way out.
/// A process that opens the store alone rebuilds the WAL index by reading
/// the whole WAL (about 4 k instructions and 2 µs a frame), so a long WAL
/// slows every later call; emptying it costs a writer about 1.5 ms of
/// fsyncs. Only first runs write (7 frames each); with R replays per first
/// run, the two balance at about sqrt(10,500 / (1 + R)) frames: 72 for
/// R = 1, 31 for R = 10. 64 frames of 4 KiB pages: measured in bench/run.sh's
/// mix (one replay per first run), 16 frames made first runs 8% slower and
/// replays no faster.
const WAL_LIMIT: u64 = 64 * (4096 + 24);

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
        let wal = std::fs::metadata(with_suffix(&self.path, "-wal")).map_or(0, |m| m.len());
        if !self.shrunk && !self.created && wal <= WAL_LIMIT {
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
