//! Replay counts on SQLite, kept off the store's write path.
//!
//! A replay used to count itself with a write transaction: it took the
//! write lock and added a page to the WAL, and every later call that opened
//! the store alone read that page back while it rebuilt the WAL index. Now a
//! replay appends one line, `+TOKEN HEXKEY`, to `<store>-replays` (an open,
//! a shared `flock`, one `write`). The lines are folded into
//! `replay_counts` by a replay that finds the file past `FOLD_AT`, and by
//! every purge, in a write transaction that also records in `counters` how
//! far the file has been folded. Whoever shows counts (`inspect`, `stats`,
//! `--report`) adds the lines not folded yet, as of the same snapshot.
//!
//! The file is emptied only under an exclusive `flock`, which no appender or
//! reader then holds, in the transaction that sets the folded position back
//! to 0. A line torn by a crash runs into the next one, and neither
//! parses: both are skipped. A count is a statistic, never fsynced, here
//! as before. When the file cannot be used (its directory is read-only, the
//! lock stays taken), the replay is counted in the store as before.

use super::file::with_suffix;
use super::{SqliteStore, Sync};
use crate::store::Record;
use anyhow::Result;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Unfolded bytes past which the replay that sees them folds them: about
/// 2,000 replays, read back by `inspect` in well under a millisecond.
pub(super) const FOLD_AT: u64 = 64 * 1024;
/// How long an appender or a reader waits for a fold to let go of the file.
const PATIENCE: Duration = Duration::from_millis(100);
/// How much of the file one read takes while folding or counting.
const READ_SIZE: usize = 256 * 1024;
/// The `counters` row that says how far the file has been folded.
const FOLDED: &str = "replays_folded";

/// Unfolded replays: how many more each claim `(key, token)` has had.
pub(super) type Pending = HashMap<(String, i64), i64>;

fn log_path(store: &Path) -> PathBuf {
    with_suffix(store, "-replays")
}

/// Removes the file of a store that is no more, when a new one is made
/// in its place: its tokens would match the new store's. Only a regular
/// file that is empty or starts like one of these lines is removed.
pub(super) fn forget(store: &Path) {
    let path = log_path(store);
    let Ok(file) = open(&path, OpenOptions::new().read(true)) else {
        return;
    };
    let mut start = [0u8; 2];
    let n = file.read_at(&mut start, 0).unwrap_or(usize::MAX);
    let ours = match n {
        0 => true,
        2 => start[0] == b'+' && start[1].is_ascii_digit(),
        _ => false,
    };
    if ours {
        let _ = std::fs::remove_file(path);
    }
}

/// Appends one replay of the claim `(key, token)`; returns the file's size
/// after it, for the caller to decide on a fold.
pub(super) fn append(store: &Path, key: &str, token: i64) -> io::Result<u64> {
    let path = log_path(store);
    let file = match open(&path, OpenOptions::new().append(true)) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => create(store, &path)?,
        opened => opened?,
    };
    let file = lock(file, FlockArg::LockSharedNonblock)?;
    let line = format!("+{token} {}\n", hex(key.as_bytes()));
    (&*file).write_all(line.as_bytes())?;
    Ok(file.metadata()?.len())
}

/// Opens the file if it is a regular one: never a symlink, and never
/// waits on a FIFO put in its place (nor writes to a device).
fn open(path: &Path, options: &mut OpenOptions) -> io::Result<File> {
    let file = options
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    Ok(file)
}

/// Makes the file with the store's permissions and, as SQLite does for its
/// `-wal` and `-shm`, its owner when root makes it.
fn create(store: &Path, path: &Path) -> io::Result<File> {
    let meta = std::fs::metadata(store)?;
    let file = open(
        path,
        OpenOptions::new()
            .append(true)
            .create(true)
            .mode(meta.mode() & 0o666),
    )?;
    if nix::unistd::geteuid().is_root() {
        std::os::unix::fs::fchown(&file, Some(meta.uid()), Some(meta.gid()))?;
    }
    Ok(file)
}

/// Takes `how` on `file`, retrying a non-blocking lock for `PATIENCE`.
fn lock(mut file: File, how: FlockArg) -> io::Result<Flock<File>> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match Flock::lock(file, how) {
            Ok(locked) => return Ok(locked),
            Err((back, Errno::EWOULDBLOCK)) if Instant::now() < deadline => {
                file = back;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err((_, errno)) => return Err(errno.into()),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &[u8]) -> Option<String> {
    let digit = |c: u8| (c as char).to_digit(16);
    let bytes = text
        .chunks(2)
        .map(|p| match p {
            [hi, lo] => Some((digit(*hi)? * 16 + digit(*lo)?) as u8),
            _ => None,
        })
        .collect::<Option<Vec<u8>>>()?;
    String::from_utf8(bytes).ok()
}

/// One line without its newline; `None` for anything that is not exactly
/// `+TOKEN HEXKEY` (a torn line, run into the next one).
fn parse(line: &[u8]) -> Option<(String, i64)> {
    let rest = line.strip_prefix(b"+")?;
    let space = rest.iter().position(|&c| c == b' ')?;
    let (token, key) = (&rest[..space], &rest[space + 1..]);
    if token.is_empty() || !token.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let token = std::str::from_utf8(token).ok()?.parse().ok()?;
    Some((unhex(key)?, token))
}

/// Reads the file from `from` to its end; returns the counts in its whole
/// lines and where the last whole line ends.
fn read_from(file: &File, from: u64) -> io::Result<(Pending, u64)> {
    let mut pending = Pending::new();
    let mut buf = vec![0u8; READ_SIZE];
    let (mut at, mut carry) = (from, Vec::new());
    let mut done = from;
    loop {
        let n = file.read_at(&mut buf, at)?;
        if n == 0 {
            return Ok((pending, done));
        }
        at += n as u64;
        carry.extend_from_slice(&buf[..n]);
        let mut start = 0;
        while let Some(end) = carry[start..].iter().position(|&c| c == b'\n') {
            if let Some(claim) = parse(&carry[start..start + end]) {
                *pending.entry(claim).or_default() += 1;
            }
            start += end + 1;
        }
        done += start as u64;
        carry.drain(..start);
    }
}

/// How far the file has been folded, as of `conn`'s snapshot.
fn folded(conn: &Connection) -> rusqlite::Result<u64> {
    let at: Option<i64> = conn
        .query_row(
            "SELECT value FROM counters WHERE name = ?1",
            [FOLDED],
            |r| r.get(0),
        )
        .optional()?;
    Ok(at.map_or(0, |at| u64::try_from(at).unwrap_or(0)))
}

/// The replays not folded yet. Run it inside the read transaction that
/// reads the records, so that a fold in between is seen by both or by
/// neither. Best effort: a file that cannot be read counts nothing.
pub(super) fn pending(
    conn: &Connection,
    store: &Path,
) -> rusqlite::Result<(Pending, Option<Flock<File>>)> {
    let Ok(file) = open(&log_path(store), OpenOptions::new().read(true)) else {
        return Ok((Pending::new(), None));
    };
    let Ok(file) = lock(file, FlockArg::LockSharedNonblock) else {
        return Ok((Pending::new(), None));
    };
    let from = folded(conn)?;
    let size = file.metadata().map_or(0, |m| m.len());
    if from > size {
        return Ok((Pending::new(), Some(file)));
    }
    let pending = read_from(&file, from).map_or_else(|_| Pending::new(), |(p, _)| p);
    Ok((pending, Some(file)))
}

/// Folds the unfolded lines into `replay_counts` inside `tx`, a write
/// transaction, and empties the file when no one else has it open for a
/// moment. Hold the returned lock until `tx` has committed.
pub(super) fn fold(tx: &Connection, store: &Path) -> rusqlite::Result<Option<Flock<File>>> {
    let path = log_path(store);
    let Ok(file) = open(&path, OpenOptions::new().read(true).write(true)) else {
        return Ok(None);
    };
    let (file, alone) = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(locked) => (locked, true),
        Err((file, _)) => match lock(file, FlockArg::LockSharedNonblock) {
            Ok(locked) => (locked, false),
            Err(_) => return Ok(None),
        },
    };
    let size = file.metadata().map_or(0, |m| m.len());
    let mut from = folded(tx)?;
    if from > size {
        // The file was replaced (by hand): start again from its beginning.
        from = 0;
    }
    let Ok((pending, done)) = read_from(&file, from) else {
        return Ok(None);
    };
    add(tx, &pending)?;
    let mut at = done;
    if alone && done == size && file.set_len(0).is_ok() {
        at = 0;
    }
    tx.execute(
        "INSERT INTO counters (name, value) VALUES (?1, ?2)
         ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        params![FOLDED, i64::try_from(at).unwrap_or(i64::MAX)],
    )?;
    Ok(Some(file))
}

/// Adds `pending` to the stored counts of claims that still exist.
pub(super) fn add(conn: &Connection, pending: &Pending) -> rusqlite::Result<()> {
    let mut count = conn.prepare_cached(
        "INSERT INTO replay_counts (key, token, count)
           SELECT key, token, ?3 FROM records WHERE key = ?1 AND token = ?2
         ON CONFLICT (key) DO UPDATE SET token = excluded.token,
           count = CASE WHEN token = excluded.token THEN count + excluded.count
                   ELSE excluded.count END",
    )?;
    for ((key, token), n) in pending {
        count.execute(params![key, token, n])?;
    }
    Ok(())
}

impl SqliteStore {
    /// Folds the file into the store. A replay does not wait for the write
    /// lock (`wait` false: another replay will fold later); a purge does.
    pub(super) fn fold_replays(&mut self, wait: bool) -> Result<()> {
        self.wrote = true;
        if !wait {
            let _ = self.conn.busy_handler(None);
        }
        let result = (|| {
            self.sync(Sync::Normal)?;
            let tx = self
                .conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let lock = fold(&tx, &self.path)?;
            tx.commit()?;
            drop(lock);
            Ok(())
        })();
        if !wait {
            let _ = self.conn.busy_handler(Some(super::wait_for_lock));
            if matches!(&result, Err(e) if super::errors::is_busy(e)) {
                return Ok(());
            }
        }
        self.sql(result, "cannot count the replays")
    }

    /// Counts one replay in the store itself, when the file cannot be used.
    pub(super) fn count_in_store(&mut self, key: &str, token: i64) -> Result<()> {
        self.wrote = true;
        let result = (|| {
            self.sync(Sync::Normal)?;
            add(&self.conn, &[((key.to_owned(), token), 1)].into())
        })();
        self.sql(result, "cannot count the replay")
    }

    /// The record of `key` with the replays not folded yet added in.
    pub(super) fn read_record_exactly(&self, key: &str) -> rusqlite::Result<Option<Record>> {
        let tx = self.conn.unchecked_transaction()?;
        let (pending, _lock) = pending(&tx, &self.path)?;
        let mut record = self.read_record(key, true)?;
        if let Some(record) = &mut record {
            add_pending(record, &pending);
        }
        tx.commit()?;
        Ok(record)
    }
}

/// Adds the replays of `record`'s claim that `pending` holds.
pub(super) fn add_pending(record: &mut Record, pending: &Pending) {
    if !pending.is_empty() {
        let claim = (record.key.clone(), record.token);
        record.replays += pending.get(&claim).copied().unwrap_or(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_lines_count_and_torn_ones_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("idem.db");
        std::fs::write(&store, b"").unwrap();
        for (key, token) in [("a", 1), ("b é", 2), ("a", 1)] {
            append(&store, key, token).unwrap();
        }
        // A crash tore a line; the next append runs into it.
        let mut file = OpenOptions::new()
            .append(true)
            .open(log_path(&store))
            .unwrap();
        file.write_all(b"+7 6").unwrap();
        append(&store, "a", 1).unwrap();
        file.write_all(b"+9 zz\n+3").unwrap();
        let file = File::open(log_path(&store)).unwrap();
        let (pending, done) = read_from(&file, 0).unwrap();
        let want: Pending = [(("a".into(), 1), 2), (("b é".into(), 2), 1)].into();
        assert_eq!(pending, want);
        assert_eq!(done, file.metadata().unwrap().len() - 2);
        assert_eq!(read_from(&file, done).unwrap().0, Pending::new());
    }
}
