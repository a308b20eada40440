//! One idem call, declared rather than built by hand: its arguments, its
//! stdin and environment, and what it must do — in the manner of just's
//! `tests/test.rs`.
//!
//! ```ignore
//! env.test().args(["run", "-k", "k"]).sh("echo hi; exit 3")
//!     .status(3).stdout("hi\n").run();
//! ```
//!
//! A call is strict by default: exit 0, nothing on stdout, nothing on
//! stderr. A test names what it expects otherwise; `run` checks all three
//! and returns the output for anything more.

use super::Env;
use std::ffi::OsString;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::process::{Output, Stdio};

/// What a stream must hold.
enum Expect {
    Exactly(Vec<u8>),
    /// Each of these, somewhere.
    Containing(Vec<String>),
    Anything,
}

impl Expect {
    fn check(&self, name: &str, actual: &[u8]) -> Option<String> {
        match self {
            Expect::Exactly(wanted) if actual != wanted => Some(format!(
                "{name} should be {:?}",
                String::from_utf8_lossy(wanted)
            )),
            Expect::Containing(parts) => parts
                .iter()
                .find(|part| !String::from_utf8_lossy(actual).contains(part.as_str()))
                .map(|part| format!("{name} should contain {part:?}")),
            _ => None,
        }
    }

    fn add(&mut self, part: &str) {
        match self {
            Expect::Containing(parts) => parts.push(part.to_owned()),
            _ => *self = Expect::Containing(vec![part.to_owned()]),
        }
    }
}

/// One idem call of a test, against the test's store (see `Env::idem`).
#[must_use = "a Test does nothing until .run()"]
pub struct Test<'a> {
    env: &'a Env,
    args: Vec<OsString>,
    vars: Vec<(OsString, OsString)>,
    /// Where idem runs, when not in the test's directory.
    dir: Option<PathBuf>,
    stdin: Option<Vec<u8>>,
    /// None: any exit code will do.
    status: Option<i32>,
    stdout: Expect,
    stderr: Expect,
    /// stderr must be one `idem: …` line.
    error: bool,
    /// stdout and stderr into one file, as `> file 2>&1` puts them.
    merged: bool,
}

/// What a call printed, once `run` has checked it.
pub struct Ran(Output);

impl Ran {
    /// The exit code (-1 for a death by signal).
    pub fn code(&self) -> i32 {
        self.0.status.code().unwrap_or(-1)
    }

    /// stdout, which must be UTF-8.
    #[track_caller]
    pub fn stdout(&self) -> String {
        String::from_utf8(self.0.stdout.clone()).expect("stdout is UTF-8")
    }

    /// stderr, which must be UTF-8.
    #[track_caller]
    pub fn stderr(&self) -> String {
        String::from_utf8(self.0.stderr.clone()).expect("stderr is UTF-8")
    }
}

impl Env {
    /// An idem call on this test's store, expected to succeed silently
    /// until told otherwise.
    pub fn test(&self) -> Test<'_> {
        Test {
            env: self,
            args: Vec::new(),
            vars: Vec::new(),
            dir: None,
            stdin: None,
            status: Some(0),
            stdout: Expect::Exactly(Vec::new()),
            stderr: Expect::Exactly(Vec::new()),
            error: false,
            merged: false,
        }
    }
}

impl Test<'_> {
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn args<A: Into<OsString>>(mut self, args: impl IntoIterator<Item = A>) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// `-- sh -c SCRIPT`: the command, after idem's own arguments.
    pub fn sh(self, script: &str) -> Self {
        self.args(["--", "sh", "-c", script])
    }

    pub fn env(mut self, name: &str, value: impl Into<OsString>) -> Self {
        self.vars.push((name.into(), value.into()));
        self
    }

    /// Runs idem in `name`, a directory of the test's temp dir.
    pub fn dir(mut self, name: &str) -> Self {
        self.dir = Some(self.env.path(name));
        self
    }

    /// Bytes on idem's stdin (otherwise stdin is /dev/null).
    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(bytes.into());
        self
    }

    /// stdout and stderr both into one file, as `> file 2>&1` (a CI log, a
    /// webhook server) has them: `stdout` expectations see both, in the
    /// order they were written, and stderr is empty.
    pub fn merged(mut self) -> Self {
        self.merged = true;
        self
    }

    /// The exit code idem must end with (0 unless told).
    pub fn status(mut self, code: i32) -> Self {
        self.status = Some(code);
        self
    }

    /// Whatever the exit code (the test looks at the output only).
    pub fn status_any(mut self) -> Self {
        self.status = None;
        self
    }

    pub fn stdout(mut self, exactly: impl Into<Vec<u8>>) -> Self {
        self.stdout = Expect::Exactly(exactly.into());
        self
    }

    /// Whatever is on stdout (the test looks at it itself, or not at all).
    pub fn stdout_any(mut self) -> Self {
        self.stdout = Expect::Anything;
        self
    }

    pub fn stderr(mut self, exactly: impl Into<Vec<u8>>) -> Self {
        self.stderr = Expect::Exactly(exactly.into());
        self
    }

    /// stderr must contain `part` (and every other part so named).
    pub fn stderr_has(mut self, part: &str) -> Self {
        self.stderr.add(part);
        self
    }

    pub fn stderr_any(mut self) -> Self {
        self.stderr = Expect::Anything;
        self
    }

    /// One `idem: …` line on stderr that contains each of `parts`: how
    /// idem reports every error it chooses.
    pub fn error(mut self, parts: &[&str]) -> Self {
        self.stderr = Expect::Containing(parts.iter().map(|&p| p.to_owned()).collect());
        self.error = true;
        self
    }

    /// Runs idem and checks the exit code and both streams.
    #[track_caller]
    pub fn run(self) -> Ran {
        let mut command = self.env.idem_std();
        command
            .args(&self.args)
            .envs(self.vars.iter().map(|(k, v)| (k, v)))
            .current_dir(self.dir.as_deref().unwrap_or(self.env.dir.path()))
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut log = None;
        if self.merged {
            let file = tempfile::tempfile_in(self.env.dir.path()).expect("a file for the output");
            command
                .stdout(file.try_clone().unwrap())
                .stderr(file.try_clone().unwrap());
            log = Some(file);
        }
        let mut child = command.spawn().expect("start idem");
        if let Some(bytes) = self.stdin {
            let mut pipe = child.stdin.take().unwrap();
            // idem may exit without reading it all (a replay): not an error.
            std::thread::spawn(move || {
                let _ = pipe.write_all(&bytes);
            });
        }
        let mut out = child.wait_with_output().expect("wait for idem");
        if let Some(mut file) = log {
            file.seek(SeekFrom::Start(0)).unwrap();
            file.read_to_end(&mut out.stdout).unwrap();
        }
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let wrong = self
            .status
            .filter(|&code| out.status.code() != Some(code))
            .map(|code| format!("exit code should be {code}"))
            .into_iter()
            .chain(self.stdout.check("stdout", &out.stdout))
            .chain(self.stderr.check("stderr", &out.stderr))
            .chain(
                (self.error && (!stderr.starts_with("idem: ") || stderr.lines().count() != 1))
                    .then(|| "stderr should be one `idem: ` line".to_owned()),
            )
            .collect::<Vec<_>>();
        assert!(
            wrong.is_empty(),
            "idem {:?}: {}\n  got: {}\n  stdout: {stdout:?}\n  stderr: {stderr:?}",
            self.args,
            wrong.join("; "),
            out.status,
        );
        Ran(out)
    }
}

/// Asserts that a finished process exited with `code`, showing its output
/// when it did not.
#[track_caller]
pub fn assert_code(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout {:?}, stderr {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
