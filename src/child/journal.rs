//! The journal appender: a thread that holds the store's main connection
//! while the child runs and appends the captured output in batches, at
//! most about 1 s or 1 MiB behind. A slow store slows neither the
//! supervisor nor the lease, which has a connection of its own
//! (`keeper`). It starts on the first captured chunk: a command that
//! prints nothing costs no thread (a thread's start, join and teardown
//! cost a first run of `true` about 0.15 ms, on the way to its exec).

use super::JournalWriter;
use crate::store::{Chunk, Stream};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::thread::{Scope, ScopedJoinHandle};
use std::time::{Duration, Instant};

/// Captured chunks in flight to the appender before the supervisor waits.
const QUEUE: usize = 16;

/// A captured chunk: which stream, and its bytes.
pub(super) type Captured = (Stream, Vec<u8>);

/// The supervisor's side of the appender, which it starts when there is
/// something to append.
pub(super) struct Appender<'scope, 'env> {
    scope: &'scope Scope<'scope, 'env>,
    state: State<'scope, 'env>,
}

enum State<'scope, 'env> {
    NotStarted(&'env mut dyn JournalWriter),
    Started {
        queue: SyncSender<Captured>,
        thread: ScopedJoinHandle<'scope, ()>,
    },
    /// It could not start: what was captured is not kept.
    Failed,
    Finished,
}

impl<'scope, 'env> Appender<'scope, 'env> {
    pub(super) fn new(
        scope: &'scope Scope<'scope, 'env>,
        writer: &'env mut dyn JournalWriter,
    ) -> Self {
        Appender {
            scope,
            state: State::NotStarted(writer),
        }
    }

    /// Hands `chunk` on without waiting; gives it back when the queue is
    /// full.
    pub(super) fn offer(&mut self, chunk: Captured) -> Option<Captured> {
        match self.queue()?.try_send(chunk) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => None,
            Err(TrySendError::Full(chunk)) => Some(chunk),
        }
    }

    /// Hands `chunk` on, waiting for room (the child is gone by then).
    pub(super) fn send(&mut self, chunk: Captured) {
        if let Some(queue) = self.queue() {
            let _ = queue.send(chunk);
        }
    }

    /// Whether captured output could not be kept for want of a thread.
    pub(super) fn failed(&self) -> bool {
        matches!(self.state, State::Failed)
    }

    /// Starts the thread, if it has not been started.
    fn start(&mut self) {
        if !matches!(self.state, State::NotStarted(_)) {
            return;
        }
        let State::NotStarted(writer) = std::mem::replace(&mut self.state, State::Failed) else {
            return;
        };
        let (queue, chunks) = sync_channel(QUEUE);
        match std::thread::Builder::new()
            .name("idem-journal".into())
            .spawn_scoped(self.scope, move || append(writer, &chunks))
        {
            Ok(thread) => self.state = State::Started { queue, thread },
            Err(e) => crate::say::error(format_args!(
                "cannot start the journal thread ({e}); the output is not kept, the command goes on"
            )),
        }
    }

    /// Waits until everything handed on is appended.
    pub(super) fn finish(&mut self) {
        if let State::Started { queue, thread } =
            std::mem::replace(&mut self.state, State::Finished)
        {
            drop(queue);
            let _ = thread.join();
        }
    }

    /// The queue to the thread, started now if need be; None when it
    /// could not start (said once).
    fn queue(&mut self) -> Option<&SyncSender<Captured>> {
        self.start();
        match &self.state {
            State::Started { queue, .. } => Some(queue),
            _ => None,
        }
    }
}

/// The journal is appended when this much is waiting, or `BATCH_AGE` after
/// the oldest waiting chunk was read.
const BATCH_BYTES: usize = 1024 * 1024;
const BATCH_AGE: Duration = Duration::from_secs(1);

/// Appends what comes from `chunks` until the supervisor hangs up.
fn append(writer: &mut dyn JournalWriter, chunks: &Receiver<Captured>) {
    let mut batch: Vec<Captured> = Vec::new();
    let mut batch_bytes = 0;
    let mut batch_since = Instant::now();
    let mut reported = false;
    let mut write = |writer: &mut dyn JournalWriter, batch: &mut Vec<Captured>| {
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
