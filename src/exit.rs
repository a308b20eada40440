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

/// A status as the user sees it: COMMAND's own, a code idem chooses, or a
/// plain number (0, or `check`'s 1) a subcommand returns.
#[derive(Debug, Clone, Copy)]
pub enum Status {
    /// The status of COMMAND, ran or replayed (a paragraph, not a number).
    Child,
    Number(u8),
    Chosen(Code),
}

impl Status {
    /// The number as documented; none for COMMAND's own status.
    pub fn number(self) -> Option<u8> {
        match self {
            Status::Child => None,
            Status::Number(n) => Some(n),
            Status::Chosen(code) => Some(code.into()),
        }
    }
}

/// What one exit status means to the user of some subcommands.
pub struct Meaning {
    pub status: Status,
    /// The subcommands it is about, by name; none: every one (but 0 is left
    /// out where COMMAND's own status is the answer).
    pub commands: &'static [&'static str],
    pub text: &'static str,
}

/// Every exit status of every subcommand, in the order the documentation
/// lists them: `idem --help` and the man pages (each subcommand's page shows
/// the rows that are about it) are written from this table. A new code or a
/// new subcommand with codes of its own gets a row here.
#[rustfmt::skip] // a table reads better one row a line
pub const MEANINGS: &[Meaning] = &[
    Meaning { status: Status::Child, commands: &["run"], text:
        "idem run exits with COMMAND's own status when COMMAND ran or its stored result was \
        replayed (128 + N when it died of signal N), and with 0 when --on-duplicate skip \
        skipped it. Otherwise:" },
    Meaning { status: Status::Child, commands: &["logs"], text:
        "idem logs exits with 0 once it has written the output, and with --follow with the \
        followed run's status when it ends (as idem run would: 128 + N for signal N, \
        124 for a timeout). Otherwise:" },
    Meaning { status: Status::Number(0), commands: &[], text: "Success." },
    Meaning { status: Status::Chosen(Code::NoRecord), commands: &["inspect"], text:
        "KEY was given and there is no record for it." },
    Meaning { status: Status::Chosen(Code::NoRecord), commands: &["logs"], text:
        "There is no record for KEY, or it was purged or taken over while it was followed." },
    Meaning { status: Status::Number(1), commands: &["check"], text:
        "A check failed (a warning is not a failure)." },
    Meaning { status: Status::Chosen(Code::Usage), commands: &[], text:
        "Usage error: a bad flag or value, an empty --db, an empty command, a bad key; \
        the message says which." },
    Meaning { status: Status::Chosen(Code::Mismatch), commands: &["run"], text:
        "The key was used before with a different fingerprint (see --allow-mismatch). \
        Nothing ran." },
    Meaning { status: Status::Chosen(Code::InProgress), commands: &["run"], text:
        "The key is in progress elsewhere: no --on-duplicate wait, or --wait-timeout ran out." },
    Meaning { status: Status::Chosen(Code::InProgress), commands: &["purge"], text:
        "A KEY named on the command line was skipped: its owner is still running \
        (see --force). The rest was done." },
    Meaning { status: Status::Chosen(Code::Completed), commands: &["run"], text:
        "The key already completed and --on-duplicate fail was given." },
    Meaning { status: Status::Chosen(Code::Crashed), commands: &["run"], text:
        "An earlier owner crashed mid-run and --on-crash block was given: \
        check its side effects, then idem purge KEY." },
    Meaning { status: Status::Chosen(Code::Crashed), commands: &["logs"], text:
        "--follow: the run's owner crashed; its output up to then was written." },
    Meaning { status: Status::Chosen(Code::Timeout), commands: &["run"], text:
        "--timeout ran out." },
    Meaning { status: Status::Chosen(Code::Internal), commands: &[], text:
        "idem itself failed: the store is unreachable, unreadable, corrupt, of a newer \
        schema, or full." },
    Meaning { status: Status::Chosen(Code::NotExecutable), commands: &["run"], text:
        "COMMAND was found but is not executable." },
    Meaning { status: Status::Chosen(Code::NotFound), commands: &["run"], text:
        "COMMAND was not found." },
];

/// What every list of statuses says first.
pub const CHOSEN: &str = "Every status but 0 that idem chooses itself comes with one line on \
    standard error, starting with idem:, that says what happened and what to do.";

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_the_documented_numbers() {
        let table = [
            (Code::NoRecord, 1),
            (Code::Usage, 2),
            (Code::Mismatch, 65),
            (Code::InProgress, 75),
            (Code::Completed, 76),
            (Code::Crashed, 77),
            (Code::Timeout, 124),
            (Code::Internal, 125),
            (Code::NotExecutable, 126),
            (Code::NotFound, 127),
        ];
        for (code, number) in table {
            assert_eq!(u8::from(code), number, "{code:?}");
        }
    }

    #[test]
    fn a_status_shows_its_number_and_a_child_status_none() {
        assert_eq!(Status::Child.number(), None);
        assert_eq!(Status::Number(3).number(), Some(3));
        assert_eq!(Status::Chosen(Code::Timeout).number(), Some(124));
    }

    #[test]
    fn a_child_status_is_its_code_or_128_plus_its_signal() {
        assert_eq!(child_status(Some(0), None), 0);
        assert_eq!(child_status(Some(3), None), 3);
        // Only the low byte of a status reaches the parent, as with wait(2).
        assert_eq!(child_status(Some(256 + 7), None), 7);
        assert_eq!(child_status(None, Some(9)), 137);
        assert_eq!(child_status(Some(1), Some(15)), 143);
        assert_eq!(child_status(None, Some(200)), 255);
        assert_eq!(child_status(None, None), 1);
    }

    #[test]
    fn fail_carries_its_code_and_message() {
        let err = fail::<()>(Code::Crashed, "it crashed").unwrap_err();
        let exit = err.downcast_ref::<Exit>().unwrap();
        assert_eq!(exit.code, Code::Crashed);
        assert_eq!(err.to_string(), "it crashed");
    }
}
