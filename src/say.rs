//! Every line idem writes about itself goes through here.
//!
//! idem's stderr may be a closed pipe (`idem run … 2>&1 | head -1`) or a
//! full disk. The standard printing macros panic on such an error, and a
//! panic between the claim and the outcome would lose the record, so nothing
//! else in idem may print: a lint test (`tests/cli/lint.rs`) fails when
//! those macros appear anywhere in `src/`. Each line is written with a single
//! `write` of the whole `idem: …\n`, and a failed write is dropped.
//!
//! `-q` silences notices, never errors; `-v` adds explanations.

use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;

const NORMAL: u8 = 1;
const QUIET: u8 = 0;
const VERBOSE: u8 = 2;

static LEVEL: AtomicU8 = AtomicU8::new(NORMAL);

/// Where lines go instead of stderr: the stderr writer thread while a child
/// runs (see `child::output`), which drops a line rather than wait.
pub type Diversion = Box<dyn Fn(Vec<u8>) + Send>;

/// While a child runs, lines go to the stderr writer thread instead: a
/// stalled reader of stderr must not block the thread that renews the lease
/// or forwards signals.
static DIVERTED: Mutex<Option<Diversion>> = Mutex::new(None);

/// Sends every later line to `to` (which must never wait), or, with `None`,
/// straight to stderr again.
pub fn divert(to: Option<Diversion>) {
    *DIVERTED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = to;
}

/// Sets the level from `-q` / `-v`, once, before anything is printed.
pub fn configure(quiet: bool, verbose: bool) {
    let level = if quiet {
        QUIET
    } else if verbose {
        VERBOSE
    } else {
        NORMAL
    };
    LEVEL.store(level, Ordering::Relaxed);
}

/// Whether `-v` was given.
pub fn verbose() -> bool {
    LEVEL.load(Ordering::Relaxed) >= VERBOSE
}

/// An error line: always written (`-q` does not hide errors).
pub fn error(what: fmt::Arguments<'_>) {
    write_line(what);
}

/// A notice: a warning the user should see unless they asked for `-q`.
pub fn notice(what: fmt::Arguments<'_>) {
    if LEVEL.load(Ordering::Relaxed) >= NORMAL {
        write_line(what);
    }
}

/// An explanation of a decision, shown with `-v` only.
pub fn explain(what: fmt::Arguments<'_>) {
    if verbose() {
        write_line(what);
    }
}

fn write_line(what: fmt::Arguments<'_>) {
    let line = format!("idem: {what}\n");
    if let Some(diverted) = DIVERTED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .as_ref()
    {
        diverted(line.into_bytes());
        return;
    }
    // One write, so concurrent idems do not interleave within a line; any
    // failure (EPIPE, ENOSPC, EBADF) is dropped: a notice never kills idem.
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}
