//! The journal appender: a thread that holds the store's main connection
//! while the child runs and appends the captured output in batches, at
//! most about 1 s or 1 MiB behind. A slow store slows neither the
//! supervisor nor the lease, which has a connection of its own
//! (`keeper`).

use super::JournalWriter;
use crate::store::{Chunk, Stream};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// The journal is appended when this much is waiting, or `BATCH_AGE` after
/// the oldest waiting chunk was read.
const BATCH_BYTES: usize = 1024 * 1024;
const BATCH_AGE: Duration = Duration::from_secs(1);

/// Appends what comes from `chunks` until the supervisor hangs up.
pub(super) fn append(writer: &mut dyn JournalWriter, chunks: &Receiver<(Stream, Vec<u8>)>) {
    let mut batch: Vec<(Stream, Vec<u8>)> = Vec::new();
    let mut batch_bytes = 0;
    let mut batch_since = Instant::now();
    let mut reported = false;
    let mut write = |writer: &mut dyn JournalWriter, batch: &mut Vec<(Stream, Vec<u8>)>| {
        if let Err(e) = writer.journal(&Chunk::all_of(batch)) {
            if !std::mem::replace(&mut reported, true) {
                crate::say::error(format_args!(
                    "cannot append the output to the store ({e:#}); the command goes on"
                ));
            }
        }
        batch.clear();
    };
    loop {
        let received = if batch.is_empty() {
            chunks.recv().map_err(|_| RecvTimeoutError::Disconnected)
        } else {
            chunks.recv_timeout((batch_since + BATCH_AGE).saturating_duration_since(Instant::now()))
        };
        let hung_up = match received {
            Ok((stream, bytes)) => {
                if batch.is_empty() {
                    batch_since = Instant::now();
                }
                batch_bytes += bytes.len();
                batch.push((stream, bytes));
                false
            }
            Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => true,
        };
        let old = !batch.is_empty() && batch_since.elapsed() >= BATCH_AGE;
        if hung_up || old || batch_bytes >= BATCH_BYTES {
            if !batch.is_empty() {
                write(writer, &mut batch);
            }
            batch_bytes = 0;
        }
        if hung_up {
            return;
        }
    }
}
