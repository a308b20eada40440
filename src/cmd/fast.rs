//! A fast path for the usual `idem run` command line (issue 15).
//!
//! clap builds the whole command tree (every subcommand, every option) and
//! parses generically on each call: a quarter of a replay's instructions.
//! idem guards commands that may run thousands of times a day, so `parse`
//! reads the plain, well-formed `run` lines itself, in a few microseconds,
//! and returns `None` for anything else: help, version, any error, an
//! unknown or repeated option, a value that starts with `-`, short options
//! glued to their value. Those go to clap, so every message stays clap's.
//! A test checks that wherever the fast path answers, clap answers the same.

use super::run::{self, Args, DEFAULT_LEASE, DEFAULT_MAX_OUTPUT, DEFAULT_TTL};
use super::{byte_size, env_name, positive_duration, Cli, Command};
use clap::ValueEnum;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// The parsed command line, or `None` when clap should parse it.
/// `env` reads an environment variable (`IDEM_DB`, `IDEM_TTL`, `IDEM_LEASE`,
/// `IDEM_REPORT`).
pub fn parse(argv: &[OsString], env: &dyn Fn(&str) -> Option<OsString>) -> Option<Cli> {
    let mut words = argv.iter().skip(1);
    let mut line = Line::default();
    let mut in_run = false;
    loop {
        let word = words.next()?;
        let bytes = word.as_bytes();
        if bytes == b"--" {
            break;
        }
        if !bytes.starts_with(b"-") {
            // The one positional word before `--` is the subcommand.
            if in_run || bytes != b"run" {
                return None;
            }
            in_run = true;
            continue;
        }
        let (name, mut glued) = split_option(word)?;
        let alone = glued.is_none();
        let mut value = || -> Option<OsString> {
            let value = match glued.take() {
                Some(v) => v,
                None => words.next()?.clone(),
            };
            // Empty values and values that look like options: clap decides.
            (!value.is_empty() && !value.as_bytes().starts_with(b"-")).then_some(value)
        };
        match name {
            "--db" => set(&mut line.db, value()?)?,
            "-q" | "--quiet" if alone => set(&mut line.quiet, true)?,
            "-v" | "--verbose" if alone => set(&mut line.verbose, true)?,
            _ if !in_run => return None,
            "-k" | "--key" => set(&mut line.key, utf8(value()?)?)?,
            "--ttl" => set(&mut line.ttl, utf8(value()?)?)?,
            "--on-duplicate" => set(&mut line.on_duplicate, utf8(value()?)?)?,
            "--wait-timeout" => set(&mut line.wait_timeout, utf8(value()?)?)?,
            "--on-failure" => set(&mut line.on_failure, utf8(value()?)?)?,
            "--on-crash" => set(&mut line.on_crash, utf8(value()?)?)?,
            "--max-output" => set(&mut line.max_output, utf8(value()?)?)?,
            "--timeout" => set(&mut line.timeout, utf8(value()?)?)?,
            "--lease" => set(&mut line.lease, utf8(value()?)?)?,
            "--env" => line.env.push(env_name(&utf8(value()?)?).ok()?),
            "--fingerprint-file" => line.fingerprint_file.push(PathBuf::from(value()?)),
            "--label" => set(&mut line.label, run::label(&utf8(value()?)?).ok()?)?,
            "--report" => set(&mut line.report, value()?)?,
            "--cwd" if alone => set(&mut line.cwd, true)?,
            "--fingerprint-stdin" if alone => set(&mut line.fingerprint_stdin, true)?,
            "--allow-mismatch" if alone => set(&mut line.allow_mismatch, true)?,
            _ => return None,
        }
    }
    let command: Vec<OsString> = words.cloned().collect();
    if !in_run || command.is_empty() || (line.quiet.is_some() && line.verbose.is_some()) {
        return None;
    }
    let db = match line.db {
        Some(db) => Some(db),
        None => match env("IDEM_DB") {
            Some(db) if db.is_empty() => return None,
            db => db,
        },
    };
    let report = match line.report {
        Some(report) => Some(report),
        None => match env("IDEM_REPORT") {
            Some(report) if report.is_empty() => return None,
            report => report,
        },
    };
    let ttl = match line.ttl {
        Some(ttl) => ttl,
        None => match env("IDEM_TTL") {
            Some(ttl) => utf8(ttl).filter(|t| !t.is_empty())?,
            None => DEFAULT_TTL.to_owned(),
        },
    };
    let lease = match line.lease {
        Some(lease) => lease,
        None => match env("IDEM_LEASE") {
            Some(lease) => utf8(lease).filter(|l| !l.is_empty())?,
            None => DEFAULT_LEASE.to_owned(),
        },
    };
    let duration = |text: Option<String>| match text {
        Some(text) => positive_duration(&text).ok().map(Some),
        None => Some(None),
    };
    let args = Args {
        key: line.key,
        ttl: positive_duration(&ttl).ok()?,
        on_duplicate: choice(line.on_duplicate)?,
        wait_timeout: duration(line.wait_timeout)?,
        on_failure: choice(line.on_failure)?,
        on_crash: choice(line.on_crash)?,
        max_output: byte_size(line.max_output.as_deref().unwrap_or(DEFAULT_MAX_OUTPUT)).ok()?,
        timeout: duration(line.timeout)?,
        cwd: line.cwd.unwrap_or(false),
        env: line.env,
        fingerprint_stdin: line.fingerprint_stdin.unwrap_or(false),
        fingerprint_file: line.fingerprint_file,
        label: line.label,
        report: report.map(PathBuf::from),
        lease: crate::lease::parse_length(&lease).ok()?,
        allow_mismatch: line.allow_mismatch.unwrap_or(false),
        command,
    };
    Some(Cli {
        db,
        quiet: line.quiet.unwrap_or(false),
        verbose: line.verbose.unwrap_or(false),
        command: Command::Run(args),
    })
}

/// What the words said, before defaults and value parsing.
#[derive(Default)]
struct Line {
    db: Option<OsString>,
    quiet: Option<bool>,
    verbose: Option<bool>,
    key: Option<String>,
    ttl: Option<String>,
    on_duplicate: Option<String>,
    wait_timeout: Option<String>,
    on_failure: Option<String>,
    on_crash: Option<String>,
    max_output: Option<String>,
    timeout: Option<String>,
    lease: Option<String>,
    env: Vec<OsString>,
    fingerprint_file: Vec<PathBuf>,
    label: Option<String>,
    report: Option<OsString>,
    cwd: Option<bool>,
    fingerprint_stdin: Option<bool>,
    allow_mismatch: Option<bool>,
}

/// `--name=value` into its two halves; `--name` and `-x` whole. Short
/// options with anything glued on (`-kKEY`, `-qv`) are clap's.
fn split_option(word: &OsStr) -> Option<(&str, Option<OsString>)> {
    let bytes = word.as_bytes();
    if bytes.starts_with(b"--") {
        return match bytes.iter().position(|&b| b == b'=') {
            Some(at) => Some((
                std::str::from_utf8(&bytes[..at]).ok()?,
                Some(OsStr::from_bytes(&bytes[at + 1..]).to_owned()),
            )),
            None => Some((word.to_str()?, None)),
        };
    }
    (bytes.len() == 2).then(|| word.to_str().map(|w| (w, None)))?
}

/// Records a value given once; `None` (clap's error) when given again.
fn set<T>(slot: &mut Option<T>, value: T) -> Option<()> {
    if slot.is_some() {
        return None;
    }
    *slot = Some(value);
    Some(())
}

fn utf8(value: OsString) -> Option<String> {
    value.into_string().ok()
}

fn choice<T: ValueEnum + Default>(text: Option<String>) -> Option<T> {
    match text {
        Some(text) => T::from_str(&text, false).ok(),
        None => Some(T::default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn argv(line: &[&str]) -> Vec<OsString> {
        std::iter::once("idem")
            .chain(line.iter().copied())
            .map(OsString::from)
            .collect()
    }

    fn env(name: &str) -> Option<OsString> {
        std::env::var_os(name)
    }

    /// Wherever the fast path answers, clap must answer the same.
    fn agrees(line: &[&str]) -> bool {
        let argv = argv(line);
        let fast = parse(&argv, &env);
        let clap = Cli::try_parse_from(&argv);
        match (&fast, &clap) {
            (Some(fast), Ok(clap)) => {
                assert_eq!(format!("{fast:?}"), format!("{clap:?}"), "{line:?}");
                true
            }
            (Some(fast), Err(e)) => panic!("{line:?}: fast path said {fast:?}, clap: {e}"),
            (None, _) => false,
        }
    }

    #[test]
    fn common_lines_take_the_fast_path_and_agree_with_clap() {
        let lines: &[&[&str]] = &[
            &["run", "--key", "hot", "--", "true"],
            &["--db", "s.db", "run", "--key", "hot", "--", "true"],
            &[
                "run",
                "--db=s.db",
                "-k",
                "k1",
                "-q",
                "--",
                "sh",
                "-c",
                "echo hi",
            ],
            &[
                "-v",
                "run",
                "--ttl",
                "1h 30m",
                "--on-duplicate",
                "wait",
                "--",
                "x",
            ],
            &[
                "run",
                "--on-failure=lock",
                "--on-crash",
                "block",
                "--",
                "x",
                "--",
            ],
            &["run", "--max-output", "64MiB", "--timeout", "5s", "--", "x"],
            &["run", "--wait-timeout=2m", "--lease", "10s", "--", "x"],
            &["run", "--cwd", "--env", "HOME", "--env=PATH", "--", "x"],
            &["run", "--fingerprint-stdin", "--allow-mismatch", "--", "x"],
            &[
                "run",
                "--on-duplicate",
                "skip",
                "--label",
                "nightly report",
                "--",
                "x",
            ],
            &[
                "run",
                "--fingerprint-file",
                "a.json",
                "--fingerprint-file=b",
                "--",
                "x",
            ],
            &["run", "--report", "/dev/fd/3", "-k", "k", "--", "x"],
            &["run", "--key", "ünïcode key", "--", "x", "-v", "--db", "y"],
            &["run", "--", "--key"],
        ];
        for line in lines {
            assert!(agrees(line), "{line:?} should take the fast path");
        }
    }

    #[test]
    fn everything_else_is_left_to_clap() {
        let lines: &[&[&str]] = &[
            &[],
            &["--help"],
            &["run", "--help"],
            &["--version"],
            &["inspect"],
            &["run", "--key", "k"],
            &["run", "--key", "k", "--"],
            &["run", "--key", "--", "x"],
            &["run", "--key", "-x", "--", "x"],
            &["run", "--key=", "--", "x"],
            &["run", "-kfoo", "--", "x"],
            &["run", "-qv", "--", "x"],
            &["run", "-q", "-v", "--", "x"],
            &["run", "--key", "a", "--key", "b", "--", "x"],
            &["run", "--cwd", "--cwd", "--", "x"],
            &["run", "--cwd=yes", "--", "x"],
            &["run", "--ttl", "0s", "--", "x"],
            &["run", "--ttl", "soon", "--", "x"],
            &["run", "--max-output", "lots", "--", "x"],
            &["run", "--on-duplicate", "REPLAY", "--", "x"],
            &["run", "--on-duplicate", "maybe", "--", "x"],
            &["run", "--env", "A=1", "--", "x"],
            &["run", "--env", "1A", "--", "x"],
            &["run", "--label", "a", "--label", "b", "--", "x"],
            &["run", "--report", "a", "--report=b", "--", "x"],
            &["run", "--ttl", "20000y", "--", "x"],
            &["run", "--unknown", "--", "x"],
            &["run", "extra", "--", "x"],
            &["run", "run", "--", "x"],
            &["--key", "k", "run", "--", "x"],
            &["--db", "a", "run", "--db", "b", "--", "x"],
            &["purge", "--", "x"],
        ];
        for line in lines {
            assert!(!agrees(line), "{line:?} should be left to clap");
        }
    }

    #[test]
    fn environment_defaults_are_read_like_clap() {
        let vars = |db: Option<&str>, ttl: Option<&str>| {
            let (db, ttl) = (db.map(OsString::from), ttl.map(OsString::from));
            move |name: &str| match name {
                "IDEM_DB" => db.clone(),
                "IDEM_TTL" => ttl.clone(),
                "IDEM_REPORT" => Some(OsString::from("r.json")),
                _ => None,
            }
        };
        let line = argv(&["run", "--", "x"]);
        let cli = parse(&line, &vars(Some("e.db"), Some("7d"))).expect("fast path");
        assert_eq!(cli.db, Some(OsString::from("e.db")));
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        assert_eq!(args.ttl, std::time::Duration::from_secs(7 * 86_400));
        assert_eq!(args.report, Some(PathBuf::from("r.json")));
        // The command line wins over the environment.
        let line = argv(&["--db", "a.db", "run", "--ttl", "1s", "--", "x"]);
        let cli = parse(&line, &vars(Some("e.db"), Some("7d"))).expect("fast path");
        assert_eq!(cli.db, Some(OsString::from("a.db")));
        // Empty or bad values in the environment: clap's error.
        assert!(parse(&argv(&["run", "--", "x"]), &vars(Some(""), None)).is_none());
        assert!(parse(&argv(&["run", "--", "x"]), &vars(None, Some("0s"))).is_none());
    }
}
