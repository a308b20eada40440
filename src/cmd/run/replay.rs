//! Writing a replay: the stored output to idem's own stdout and stderr.
//!
//! A reader that went away (`| head -1`) ends the interest in the output,
//! not the replay: the exit status is still the stored one. Any other
//! failure (a full disk under `> file`, `/dev/full`) is exit 125 naming the
//! stream, since the caller did not get what it asked for.

use crate::exit::{fail, Code};
use anyhow::Result;
use std::io::{self, Write};

/// A writer for replay that treats a closed reader as the end of interest
/// and remembers any other failure, to say which stream it was.
pub struct ClosedOk<W> {
    out: W,
    failed: Option<io::Error>,
}

impl<W: Write> ClosedOk<W> {
    pub fn new(out: W) -> Self {
        ClosedOk { out, failed: None }
    }

    /// `result`, or exit 125 naming `stream` when writing to it failed (a
    /// full disk under `> file`, `/dev/full`).
    pub fn check<T>(&mut self, result: Result<T>, stream: &str) -> Result<T> {
        match self.failed.take() {
            Some(e) => fail(
                Code::Internal,
                format!(
                    "cannot write the replayed output to {stream}: {}",
                    write_problem(&e)
                ),
            ),
            None => result,
        }
    }

    fn keep<T>(&mut self, result: io::Result<T>, closed: T) -> io::Result<T> {
        match result {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(closed),
            Err(e) => {
                let again = io::Error::new(e.kind(), e.to_string());
                self.failed = Some(e);
                Err(again)
            }
            ok => ok,
        }
    }
}

impl<W: Write> Write for ClosedOk<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let result = self.out.write(buf);
        self.keep(result, buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        let result = self.out.flush();
        self.keep(result, ())
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
