//! idem's own stdout and stderr while a child runs: one writer thread each,
//! started when the stream first has something to write.
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
//! never the child. idem never sets O_NONBLOCK on the descriptors it
//! inherits (other processes share them); when another process did, a
//! full pipe answers EAGAIN, and the writer waits for room with `poll`
//! rather than writing again at once, which would spin at full CPU for as
//! long as the reader is slow.

#![allow(unsafe_code)]

use crate::say;
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow};
use std::os::fd::BorrowedFd;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

/// Chunks (of at most 64 KiB) a writer may hold before the supervisor
/// stops reading the child's pipe: 1 MiB.
const QUEUE: usize = 16;

/// The two writers, each started on its stream's first chunk: a command
/// that prints nothing to a stream costs no thread (a thread, its start and
/// its teardown cost a first run of `true` about 0.24 ms).
/// Dropping it writes what is still queued and ends the threads: that
/// blocks as long as a stalled reader does, so drop it once the record is
/// written.
pub struct Output {
    stdout: Lazy,
    /// Shared with `say`, whose lines go the same way.
    stderr: Arc<Lazy>,
    /// Chunks for after the record: written, waiting, when this is dropped.
    deferred: Mutex<Vec<(i32, Vec<u8>)>>,
}

/// A writer thread for `fd`, once something is offered to it.
struct Lazy {
    fd: i32,
    writer: Mutex<Option<Writer>>,
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
    /// Prepares both writers and sends idem's notices through stderr's.
    pub fn start() -> Output {
        let stderr = Arc::new(Lazy::new(2));
        let notices = Arc::clone(&stderr);
        say::divert(Some(Box::new(move |line| {
            let _ = notices.offer(line);
        })));
        Output {
            stdout: Lazy::new(1),
            stderr,
            deferred: Mutex::new(Vec::new()),
        }
    }

    pub fn offer(&self, fd: i32, chunk: Vec<u8>) -> Offer {
        self.lazy(fd).offer(chunk)
    }

    fn lazy(&self, fd: i32) -> &Lazy {
        if fd == 1 {
            &self.stdout
        } else {
            &self.stderr
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
        say::divert(None);
        for (fd, chunk) in deferred {
            // Waiting is allowed now: the record is written.
            match self.lazy(fd).writer().as_ref() {
                Some(writer) => {
                    let _ = writer.queue.send(chunk);
                }
                None => {
                    write_all(fd, &chunk);
                }
            }
        }
        for lazy in [&self.stdout, &*self.stderr] {
            if let Some(writer) = lazy.writer().take() {
                drop(writer.queue);
                let _ = writer.thread.join();
            }
        }
    }
}

impl Lazy {
    fn new(fd: i32) -> Lazy {
        Lazy {
            fd,
            writer: Mutex::new(None),
        }
    }

    fn writer(&self) -> std::sync::MutexGuard<'_, Option<Writer>> {
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Hands `chunk` to the writer, starting it first if need be. If no
    /// thread can be started (the system is out of them), the chunk is not
    /// shown, as if its reader had gone; the journal keeps it all the same.
    fn offer(&self, chunk: Vec<u8>) -> Offer {
        let mut slot = self.writer();
        if slot.is_none() {
            *slot = Writer::start(self.fd).ok();
        }
        let Some(writer) = slot.as_ref() else {
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

impl Writer {
    /// Starts the thread with every signal blocked, whichever thread starts
    /// it and whatever that thread's mask: signals are the supervisor's
    /// (see `Signals`), and one taken here would end idem before the record.
    fn start(fd: i32) -> std::io::Result<Writer> {
        let (queue, chunks) = sync_channel(QUEUE);
        let mut mask = SigSet::empty();
        let _ = pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&SigSet::all()), Some(&mut mask));
        let thread = std::thread::Builder::new()
            .name(format!("idem-fd{fd}"))
            .spawn(move || copy(fd, &chunks));
        let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&mask), None);
        Ok(Writer {
            queue,
            thread: thread?,
        })
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
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => wait_for_room(target),
            Err(_) => return false,
        }
    }
    true
}

/// Waits until `fd` takes more bytes, or its reader is gone (the next
/// write then says EPIPE). An interrupted wait just returns: the caller
/// writes again, and comes back here if there is still no room.
fn wait_for_room(fd: BorrowedFd<'_>) {
    let mut fds = [PollFd::new(fd, PollFlags::POLLOUT)];
    let _ = poll(&mut fds, PollTimeout::NONE);
}
