//! Every exit status idem chooses itself, in one place.
//!
//! idem follows the wrapper convention of `timeout(1)` and `env(1)`: 124 for a
//! timeout, 125 for idem's own failure, 126/127 for a command that could not be
//! started, and otherwise the child's own status (128 + N for signal N). The
//! codes in between (65, 75, 76, 77) come from `sysexits.h` where one fits.

use std::fmt;

/// A status idem exits with when the child's own status is not the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// `inspect KEY`: there is no record for KEY.
    NoRecord = 1,
    /// Bad flag, bad duration or size, empty command, bad key.
    Usage = 2,
    /// The key was used before with a different fingerprint.
    Mismatch = 65,
    /// The key is in progress elsewhere (and we did not, or could no longer, wait).
    InProgress = 75,
    /// The key already completed and `--on-duplicate fail` was given.
    Completed = 76,
    /// An earlier owner crashed and `--on-crash block` was given.
    Crashed = 77,
    /// `--timeout` ran out.
    Timeout = 124,
    /// idem itself failed: the store is unreadable, corrupt, newer, or full.
    Internal = 125,
    /// COMMAND was found but could not be executed.
    NotExecutable = 126,
    /// COMMAND was not found.
    NotFound = 127,
}

impl From<Code> for u8 {
    fn from(code: Code) -> u8 {
        code as u8
    }
}

/// An error that ends idem with a chosen exit code and one `idem: ` line.
#[derive(Debug)]
pub struct Exit {
    pub code: Code,
    pub message: String,
}

impl Exit {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Exit {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Exit {}

/// Shorthand for `Err(Exit::new(code, message).into())`.
pub fn fail<T>(code: Code, message: impl Into<String>) -> anyhow::Result<T> {
    Err(Exit::new(code, message).into())
}

/// The exit status that reports a child's wait status: its code, or 128 + N.
pub fn child_status(exit_code: Option<i32>, signal: Option<i32>) -> u8 {
    match (exit_code, signal) {
        (_, Some(sig)) => (128 + sig).clamp(0, 255) as u8,
        (Some(code), None) => (code & 0xff) as u8,
        (None, None) => 1,
    }
}
