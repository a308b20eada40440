//! idem's own stdout and stderr while a child runs: one writer thread each.
//!
//! A write to idem's stdout or stderr can block for as long as the reader
//! likes (a pager, `| sleep 20`, a full terminal). Such a write must never
//! hold up what keeps the promise — lease renewal, `--timeout`, signal
//! forwarding, the record — so the supervisor never writes itself: it hands
//! chunks to these threads through small bounded queues and, when a queue
//! is full, stops reading the child's pipe, which slows the child as a pipe
//! would. idem's own notices go through the stderr queue too (`say::divert`),
//! in order with the child's stderr, and are dropped rather than wait.
//!
//! A reader that went away (EPIPE) ends the copying, never the capture, and
//! never the child. Inherited descriptors stay blocking: other processes
//! share them, so idem never sets O_NONBLOCK on them.

#![allow(unsafe_code)]

use crate::say;
use nix::errno::Errno;
use std::os::fd::BorrowedFd;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Mutex, PoisonError};
use std::thread::JoinHandle;

/// Chunks (of at most 64 KiB) a writer may hold before the supervisor
/// stops reading the child's pipe: 1 MiB.
const QUEUE: usize = 16;

/// The two writer threads.
/// Dropping it writes what is still queued and ends the threads: that
/// blocks as long as a stalled reader does, so drop it once the record is
/// written.
pub struct Output {
    stdout: Option<Writer>,
    stderr: Option<Writer>,
    /// Chunks for after the record: written, waiting, when this is dropped.
    deferred: Mutex<Vec<(i32, Vec<u8>)>>,
}

struct Writer {
    queue: SyncSender<Vec<u8>>,
    thread: JoinHandle<()>,
}

/// The result of offering a chunk to a writer.
pub enum Offer {
    Taken,
    /// The queue is full: offer it again later.
    Full(Vec<u8>),
}

impl Output {
    /// Starts both writers and sends idem's notices through stderr's. Call
    /// it with the forwarded signals blocked, so the threads keep them
    /// blocked too and never take a signal meant for the supervisor.
    pub fn start() -> std::io::Result<Output> {
        let stdout = Writer::start(1)?;
        let stderr = Writer::start(2)?;
        say::divert(Some(stderr.queue.clone()));
        Ok(Output {
            stdout: Some(stdout),
            stderr: Some(stderr),
            deferred: Mutex::new(Vec::new()),
        })
    }

    pub fn offer(&self, fd: i32, chunk: Vec<u8>) -> Offer {
        let writer = if fd == 1 { &self.stdout } else { &self.stderr };
        let Some(writer) = writer else {
            return Offer::Taken;
        };
        match writer.queue.try_send(chunk) {
            Ok(()) => Offer::Taken,
            Err(TrySendError::Full(chunk)) => Offer::Full(chunk),
            // The writer is gone: nothing more can be shown.
            Err(TrySendError::Disconnected(_)) => Offer::Taken,
        }
    }
}

impl Output {
    /// Queues `chunk` for when the record is written: nothing the child
    /// printed is dropped, and nothing waits for a reader before the record.
    pub fn defer(&self, fd: i32, chunk: Vec<u8>) {
        self.deferred
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((fd, chunk));
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        let deferred = std::mem::take(
            self.deferred
                .get_mut()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for (fd, chunk) in deferred {
            let writer = if fd == 1 { &self.stdout } else { &self.stderr };
            if let Some(writer) = writer {
                let _ = writer.queue.send(chunk);
            }
        }
        say::divert(None);
        for writer in [self.stdout.take(), self.stderr.take()]
            .into_iter()
            .flatten()
        {
            drop(writer.queue);
            let _ = writer.thread.join();
        }
    }
}

impl Writer {
    fn start(fd: i32) -> std::io::Result<Writer> {
        let (queue, chunks) = sync_channel(QUEUE);
        let thread = std::thread::Builder::new()
            .name(format!("idem-fd{fd}"))
            .spawn(move || copy(fd, &chunks))?;
        Ok(Writer { queue, thread })
    }
}

/// Writes every chunk to `fd` until the reader is gone, then drops the rest
/// (still taking it, so the supervisor is never held up by a dead reader).
fn copy(fd: i32, chunks: &Receiver<Vec<u8>>) {
    let mut open = true;
    for chunk in chunks {
        if open {
            open = write_all(fd, &chunk);
        }
    }
}

/// Writes all of `bytes` to a raw fd; false once the reader is gone.
fn write_all(fd: i32, mut bytes: &[u8]) -> bool {
    // SAFETY: fds 1 and 2 stay open for idem's whole life.
    let target = unsafe { BorrowedFd::borrow_raw(fd) };
    while !bytes.is_empty() {
        match nix::unistd::write(target, bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(Errno::EINTR | Errno::EAGAIN) => {}
            Err(_) => return false,
        }
    }
    true
}
