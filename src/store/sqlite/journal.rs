//! The output journal on SQLite: one `journal` row per frame, keyed by the
//! record's key, its claim's token and the frame's number (`seq`, given by
//! the owner: a frame already there is not written again).
//!
//! Frames go in and come out through SQLite's incremental blob I/O: an
//! append reserves a zero blob of the frame's size and writes the chunks
//! into it where they lie, and a reader streams each blob through a small
//! buffer, so no frame (let alone a whole journal) is ever copied whole. An
//! append also adds its bytes to the record's per-stream counts, in the
//! same transaction, which is where it learns whether the claim is still
//! its own. Appends are not fsynced; the outcome's commit is.

use super::{describe, store_failure, SqliteStore, Sync};
use crate::store::journal::{self, Decoder};
use crate::store::Chunk;
use crate::store::Stream;
use anyhow::Result;
use rusqlite::{params, DatabaseName, OptionalExtension, TransactionBehavior};

/// How much of a blob one read takes.
const READ_SIZE: usize = 256 * 1024;
/// Room the journal always leaves free on the store's file system: the
/// outcome's commit (a few pages of the WAL, and the checkpoint that may
/// follow) must fit whatever the output did. Below it, the output stops
/// being stored (and is flagged as cut), and the outcome still fits.
const ROOM_FOR_THE_OUTCOME: u64 = 256 * 1024;

/// Migration 3's journal part: the journal table, and per-stream byte
/// counts on the record (NULL on records written before: their output is
/// still in the `stdout` and `stderr` blobs, which new records leave empty).
pub(super) const SCHEMA: &str = "
    CREATE TABLE journal (
        key TEXT NOT NULL,
        token INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        frame BLOB NOT NULL
    ) STRICT;
    CREATE UNIQUE INDEX journal_order ON journal (key, token, seq);
    ALTER TABLE records ADD COLUMN stdout_bytes INTEGER;
    ALTER TABLE records ADD COLUMN stderr_bytes INTEGER;
";

impl SqliteStore {
    pub(super) fn append(
        &mut self,
        key: &str,
        token: i64,
        seq: u64,
        chunks: &[Chunk<'_>],
    ) -> Result<bool> {
        self.wrote = true;
        let seq = i64::try_from(seq).unwrap_or(i64::MAX);
        let result = (|| {
            self.sync(Sync::Normal)?;
            let (out, err) = journal::stream_lens(chunks);
            let len = journal::frame_len(chunks);
            let room = len == 0 || self.room_for(len);
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let written = tx
                .prepare_cached("SELECT 1 FROM journal WHERE key = ?1 AND token = ?2 AND seq = ?3")?
                .exists(params![key, token, seq])?;
            if written {
                let ours = tx
                    .prepare_cached(
                        "SELECT 1 FROM records WHERE key = ?1 AND token = ?2 AND status = 'in_progress'",
                    )?
                    .exists(params![key, token])?;
                return Ok(ours);
            }
            let ours = tx
                .prepare_cached(
                    "UPDATE records SET stdout_bytes = coalesce(stdout_bytes, 0) + ?3,
                        stderr_bytes = coalesce(stderr_bytes, 0) + ?4
                     WHERE key = ?1 AND token = ?2 AND status = 'in_progress'",
                )?
                .execute(params![key, token, out, err])?
                == 1;
            if !ours {
                return Ok(false);
            }
            if !room {
                return Err(rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
                    Some("the disk is nearly full; the rest is kept for the outcome".into()),
                ));
            }
            if len > 0 {
                tx.prepare_cached(
                    "INSERT INTO journal (key, token, seq, frame) VALUES (?1, ?2, ?3, zeroblob(?4))",
                )?
                .execute(params![key, token, seq, len])?;
                let rowid = tx.last_insert_rowid();
                let mut blob =
                    tx.blob_open(DatabaseName::Main, "journal", "frame", rowid, false)?;
                let mut at = 0;
                journal::write_frame(chunks, &mut |piece: &[u8]| {
                    blob.write_at(piece, at)?;
                    at += piece.len();
                    Ok::<(), rusqlite::Error>(())
                })?;
            }
            tx.commit()?;
            Ok(true)
        })();
        self.sql(result, "cannot store the output")
    }

    /// Whether a frame of `len` bytes leaves `ROOM_FOR_THE_OUTCOME` free:
    /// it takes its size twice at most (in the WAL, then in the file once
    /// checkpointed). A file system that cannot say is given the benefit.
    fn room_for(&self, len: usize) -> bool {
        let dir = match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => std::path::Path::new("."),
        };
        let Ok(stat) = nix::sys::statvfs::statvfs(dir) else {
            return true;
        };
        #[allow(clippy::useless_conversion)] // u32 or u64, by platform
        let free =
            u64::from(stat.blocks_available()).saturating_mul(u64::from(stat.fragment_size()));
        let needed = (len as u64).saturating_mul(2) + ROOM_FOR_THE_OUTCOME;
        free >= needed
    }

    pub(super) fn read(
        &mut self,
        key: &str,
        token: i64,
        from: u64,
        each: &mut dyn FnMut(Stream, &[u8]) -> Result<()>,
    ) -> Result<Option<u64>> {
        let path = self.path.clone();
        let failed = |e: rusqlite::Error| {
            store_failure(&path, &format!("cannot read the output: {}", describe(&e)))
        };
        // One read transaction: the record and its journal as of one moment.
        let tx = self.conn.unchecked_transaction().map_err(failed)?;
        let legacy: Option<(i64, i64, i64)> = tx
            .prepare_cached(
                "SELECT rowid, length(stdout), length(stderr) FROM records WHERE key = ?1 AND token = ?2",
            )
            .and_then(|mut s| {
                s.query_row(params![key, token], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .optional()
            })
            .map_err(failed)?;
        let Some((rowid, out_len, err_len)) = legacy else {
            return Ok(None);
        };
        let mut buf = vec![0u8; READ_SIZE];
        // A record from before journals: stdout, then stderr.
        if from == 0 {
            for (stream, column, len) in [
                (Stream::Stdout, "stdout", out_len),
                (Stream::Stderr, "stderr", err_len),
            ] {
                if len > 0 {
                    let blob = tx
                        .blob_open(DatabaseName::Main, "records", column, rowid, true)
                        .map_err(failed)?;
                    stream_blob(&blob, &mut buf, &mut |piece| each(stream, piece))
                        .map_err(|e| e.context(format!("store {}", path.display())))?;
                }
            }
        }
        let mut next = from;
        let mut stmt = tx
            .prepare_cached(
                "SELECT rowid, seq FROM journal WHERE key = ?1 AND token = ?2 AND seq >= ?3 ORDER BY seq",
            )
            .map_err(failed)?;
        let mut rows = stmt
            .query(params![key, token, i64::try_from(from).unwrap_or(i64::MAX)])
            .map_err(failed)?;
        while let Some(row) = rows.next().map_err(failed)? {
            let (rowid, seq): (i64, i64) =
                (row.get(0).map_err(failed)?, row.get(1).map_err(failed)?);
            let blob = tx
                .blob_open(DatabaseName::Main, "journal", "frame", rowid, true)
                .map_err(failed)?;
            let mut decoder = Decoder::default();
            stream_blob(&blob, &mut buf, &mut |piece| decoder.feed(piece, each))?;
            decoder.end()?;
            next = u64::try_from(seq).unwrap_or(0) + 1;
        }
        drop(rows);
        drop(stmt);
        tx.commit().map_err(failed)?;
        Ok(Some(next))
    }
}

/// Reads `blob` through `buf`, passing each piece on.
fn stream_blob(
    blob: &rusqlite::blob::Blob<'_>,
    buf: &mut [u8],
    each: &mut dyn FnMut(&[u8]) -> Result<()>,
) -> Result<()> {
    let mut at = 0;
    while at < blob.len() {
        let n = blob.read_at(buf, at)?;
        if n == 0 {
            break;
        }
        each(&buf[..n])?;
        at += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{contract, Mode, Store};

    #[test]
    fn a_retried_append_writes_nothing_twice() {
        let (_dir, mut store) = scratch();
        let token = contract::claim_key(&mut store, "k");
        let (out, err) = (
            Chunk {
                stream: Stream::Stdout,
                bytes: b"o1",
            },
            Chunk {
                stream: Stream::Stderr,
                bytes: b"e1",
            },
        );
        for (seq, chunks) in [(0, [err, out]), (0, [err, out]), (1, [out, err])] {
            assert!(store.append_journal("k", token, seq, &chunks).unwrap());
        }
        let want = [
            (Stream::Stderr, b"e1".to_vec()),
            (Stream::Stdout, b"o1o1".to_vec()),
            (Stream::Stderr, b"e1".to_vec()),
        ];
        assert_eq!(
            contract::journal(&mut store, "k", token),
            Some(want.to_vec())
        );
        let record = store.get("k").unwrap().1.unwrap();
        assert_eq!((record.stdout_bytes, record.stderr_bytes), (4, 4));
    }

    /// A store in a directory of its own, removed with it.
    fn scratch() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("idem.db"), Mode::Create)
            .unwrap()
            .unwrap();
        (dir, store)
    }

    #[test]
    fn the_journal_comes_back_in_order_byte_exact_for_its_token_only() {
        let (_dir, mut store) = scratch();
        contract::the_journal_comes_back_in_order_byte_exact_for_its_token_only(&mut store);
    }

    #[test]
    fn a_delete_takes_only_what_was_judged() {
        let (_dir, mut store) = scratch();
        contract::a_delete_takes_only_what_was_judged(&mut store);
    }

    #[test]
    fn fencing_refuses_every_write_of_an_old_token() {
        let (_dir, mut store) = scratch();
        contract::fencing_refuses_every_write_of_an_old_token(&mut store);
    }
}
