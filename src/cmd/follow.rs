//! Writing a record's output journal to idem's own stdout and stderr: once
//! (a replay, `idem logs`), or following a run in progress until it ends
//! (a waiter attached with `--on-duplicate wait`, `idem logs --follow`).
//!
//! Each piece goes straight to file descriptor 1 or 2 in journal order,
//! unbuffered, so `2>&1` shows the interleaving the run had. A reader that
//! went away (`| head -1`) ends the interest in that stream, not the
//! replay: the exit status is still the run's. Any other failure (a full
//! disk under `> file`, `/dev/full`) is exit 125 naming the stream, since
//! the caller did not get what it asked for. A follower
//! reads the record, then the journal past what it wrote, and then waits
//! for the store to say there may be more (a local store is looked at
//! again every 50 ms; a shared one wakes the follower up).

use crate::exit::{child_status, fail, Code};
use crate::store::{Millis, Record, Status, Store, Stream};
use anyhow::Result;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

/// How long a follower waits for a wake-up before it looks at the record
/// again (its owner may have died without a word).
const ROUND: Duration = Duration::from_secs(1);

/// idem's stdout and stderr, written unbuffered.
pub struct Sink {
    out: Option<Target>,
    err: Option<Target>,
    /// What is written, for messages: "replayed output", "output".
    what: &'static str,
}

/// One of the two streams, and how much has been written to it.
struct Target {
    file: File,
    written: usize,
}

/// After this much output to one stream, a pipe behind it is grown to
/// `PIPE_SIZE`: with Linux's default 64 KiB, writer and reader take turns
/// every 64 KiB, and a replay of 48 MiB spent more time switching than
/// copying (1.5x `cat`; 0.8x with the bigger pipe). Small outputs, nearly
/// every replay, cost no extra system call.
const GROW_AFTER: usize = 1 << 20;
/// 64 pages: far below the 16,384 pages an unprivileged user's pipes may
/// hold before Linux makes that user's new pipes small.
const PIPE_SIZE: usize = 256 * 1024;

impl Target {
    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.written < GROW_AFTER && self.written + bytes.len() >= GROW_AFTER {
            grow_pipe(&self.file);
        }
        self.written = self.written.saturating_add(bytes.len());
        let mut rest = bytes;
        while !rest.is_empty() {
            match self.file.write(rest) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => rest = &rest[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // Another process made the shared stdout non-blocking:
                // wait until the reader takes more, as a blocking write would.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
                    let mut fds = [PollFd::new(self.file.as_fd(), PollFlags::POLLOUT)];
                    let _ = poll(&mut fds, PollTimeout::NONE);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Grows the pipe `file` writes to (if it is one) to `PIPE_SIZE`; never
/// shrinks it. Best effort: a refusal leaves the pipe as it was.
fn grow_pipe(file: &File) {
    use nix::fcntl::{fcntl, FcntlArg};
    let fd = file.as_raw_fd();
    if matches!(fcntl(fd, FcntlArg::F_GETPIPE_SZ), Ok(size) if (size as usize) < PIPE_SIZE) {
        let _ = fcntl(fd, FcntlArg::F_SETPIPE_SZ(PIPE_SIZE as libc::c_int));
    }
}

impl Sink {
    pub fn new(what: &'static str) -> Sink {
        let dup = |fd: std::os::fd::BorrowedFd<'_>| {
            let file = File::from(fd.try_clone_to_owned().ok()?);
            Some(Target { file, written: 0 })
        };
        Sink {
            out: dup(io::stdout().as_fd()),
            err: dup(io::stderr().as_fd()),
            what,
        }
    }

    /// Writes a piece of the journal to its stream. A reader that went
    /// away (EPIPE) ends the interest in that stream, not the replay.
    pub fn write(&mut self, stream: Stream, bytes: &[u8]) -> Result<()> {
        let (slot, name) = match stream {
            Stream::Stdout => (&mut self.out, "stdout"),
            Stream::Stderr => (&mut self.err, "stderr"),
        };
        if let Some(target) = slot {
            match target.write(bytes) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => *slot = None,
                Err(e) => {
                    return fail(
                        Code::Internal,
                        format!(
                            "cannot write the {} to {name}: {}",
                            self.what,
                            write_problem(&e)
                        ),
                    )
                }
            }
        }
        Ok(())
    }
}

/// An output error in words, with what to do about it.
fn write_problem(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ENOSPC) => {
            "no space left on device (free some space, or write elsewhere)".into()
        }
        Some(libc::EDQUOT) => "disk quota exceeded (free some space, or write elsewhere)".into(),
        Some(libc::EIO) => "input/output error (check the device)".into(),
        _ => e.to_string(),
    }
}

/// How a followed run ended, as far as the follower could tell.
pub enum End {
    /// It finished: this is its record, outcome included.
    Finished(Record),
    /// Its owner died; this is its record, still `in_progress`.
    Crashed(Record),
    /// The record was purged or taken over meanwhile.
    Gone,
    /// `until` came first.
    TimedOut,
}

/// Writes the journal of `record` (a run in progress) from its start, then
/// live as the run produces more, until it ends. `alive` judges the owner
/// at the store's time.
pub fn follow(
    store: &mut dyn Store,
    record: &Record,
    sink: &mut Sink,
    alive: &dyn Fn(&Record, Millis) -> bool,
    until: Option<Instant>,
) -> Result<End> {
    let (key, token) = (record.key.as_str(), record.token);
    let mut at = 0;
    let mut dead_once = false;
    let mut last = record.clone();
    loop {
        // The record first: once it is finished, the journal read after it
        // is complete.
        let (now, current) = store.get(key)?;
        let Some(current) = current.filter(|r| r.token == token) else {
            // Taken over after a crash that another caller noticed first?
            if !alive(&last, now) {
                return Ok(End::Crashed(last));
            }
            return Ok(End::Gone);
        };
        match store.read_journal(key, token, at, &mut |s, b| sink.write(s, b))? {
            Some(next) => at = next,
            None => return Ok(End::Gone),
        }
        if current.status != Status::InProgress {
            return Ok(End::Finished(current));
        }
        if !alive(&current, now) {
            // The owner may have finished and exited since `get`: only a
            // second look that still finds the record running is a crash.
            if dead_once {
                return Ok(End::Crashed(current));
            }
            dead_once = true;
            continue;
        }
        dead_once = false;
        last = current;
        let mut wait = ROUND;
        if let Some(until) = until {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(End::TimedOut);
            }
            wait = wait.min(left);
        }
        store.await_journal(key, token, at, wait)?;
    }
}

/// The exit status a finished record stands for.
pub fn run_status(record: &Record) -> u8 {
    if record.timed_out {
        u8::from(Code::Timeout)
    } else {
        child_status(record.exit_code, record.signal)
    }
}

/// The one-line warning after output that was cut when it was stored.
pub fn warn_if_cut(record: &Record, shown_key: &str) {
    if record.stdout_truncated || record.stderr_truncated {
        crate::say::notice(format_args!(
            "the output of key {shown_key} was cut at --max-output when it was stored"
        ));
    }
}
