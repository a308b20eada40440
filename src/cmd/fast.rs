//! A fast path for the usual `idem run` command line (issues 15 and 26).
//!
//! clap builds the whole command tree (every subcommand, every option) and
//! parses generically on each call: a quarter of a replay's instructions.
//! idem guards commands that may run thousands of times a day, so `parse`
//! reads the plain, well-formed `run` lines itself, in a few microseconds,
//! and returns `None` for anything else: help, version, any error, an
//! unknown or repeated option, a value that starts with `-`, short options
//! glued to their value, an empty variable. Those go to clap, so every
//! message stays clap's. What it saves (issue 26, a release build, a
//! replay of `idem run -k hot -- true`): 544k instructions instead of
//! 1,012k under callgrind, clap's command tree and parse being 370k of
//! them; 0.83 ms instead of 1.05 ms (hyperfine -N, medians, `true` 0.67 ms).
//!
//! `OPTIONS` is what the fast path knows of clap's definition: each
//! option's names, variable, default and how it takes values; the value
//! parsers are clap's own functions. The tests (`fast/tests.rs`) walk
//! `Cli::command()` and fail on any difference: an option, alias, `env`,
//! default or conflict added to clap and not here, and any line (from the
//! values each option is tried with, or from a variable) that the two
//! would read differently. Leaving a line to clap is always safe;
//! answering it differently never is.

use super::run::{self, Args};
use super::{byte_size, env_name, lease_duration, positive_duration, Cli, Command};
use clap::ValueEnum;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// How an option takes its value, as clap's `ArgAction` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Takes {
    /// `SetTrue`: no value.
    Flag,
    /// `Set`: one value, at most once.
    Value,
    /// `Append`: one value each time, repeatable.
    Values,
}

/// One option of `idem run` or of every subcommand (`global`), as clap
/// defines it; `id` is its field's name.
struct Opt {
    id: &'static str,
    long: &'static str,
    aliases: &'static [&'static str],
    short: Option<char>,
    takes: Takes,
    env: Option<&'static str>,
    default: Option<&'static str>,
    global: bool,
}

impl Opt {
    fn named(&self, name: &str) -> bool {
        match name.strip_prefix("--") {
            Some(long) => long == self.long || self.aliases.contains(&long),
            None => {
                let mut chars = name.chars();
                chars.next() == Some('-')
                    && chars.next() == self.short
                    && self.short.is_some()
                    && chars.next().is_none()
            }
        }
    }
}

const fn opt(id: &'static str, long: &'static str, takes: Takes) -> Opt {
    Opt {
        id,
        long,
        aliases: &[],
        short: None,
        takes,
        env: None,
        default: None,
        global: false,
    }
}

/// The options the fast path reads, in clap's order.
const OPTIONS: &[Opt] = &[
    Opt {
        env: Some("IDEM_DB"),
        global: true,
        ..opt("db", "db", Takes::Value)
    },
    Opt {
        short: Some('q'),
        global: true,
        ..opt("quiet", "quiet", Takes::Flag)
    },
    Opt {
        short: Some('v'),
        global: true,
        ..opt("verbose", "verbose", Takes::Flag)
    },
    Opt {
        env: Some("IDEM_LOG_FORMAT"),
        default: Some("text"),
        global: true,
        ..opt("log_format", "log-format", Takes::Value)
    },
    Opt {
        short: Some('k'),
        ..opt("key", "key", Takes::Value)
    },
    Opt {
        env: Some("IDEM_TTL"),
        default: Some(run::DEFAULT_TTL),
        ..opt("ttl", "ttl", Takes::Value)
    },
    Opt {
        default: Some("replay"),
        ..opt("on_duplicate", "on-duplicate", Takes::Value)
    },
    opt("wait_timeout", "wait-timeout", Takes::Value),
    Opt {
        default: Some("unlock"),
        ..opt("on_failure", "on-failure", Takes::Value)
    },
    Opt {
        default: Some("rerun"),
        ..opt("on_crash", "on-crash", Takes::Value)
    },
    Opt {
        default: Some(run::DEFAULT_MAX_OUTPUT),
        ..opt("max_output", "max-output", Takes::Value)
    },
    opt("timeout", "timeout", Takes::Value),
    opt("cwd", "cwd", Takes::Flag),
    opt("env", "env", Takes::Values),
    opt("fingerprint_stdin", "fingerprint-stdin", Takes::Flag),
    opt("fingerprint_file", "fingerprint-file", Takes::Values),
    opt("label", "label", Takes::Value),
    Opt {
        env: Some("IDEM_REPORT"),
        ..opt("report", "report", Takes::Value)
    },
    Opt {
        env: Some("IDEM_LEASE"),
        default: Some(run::DEFAULT_LEASE),
        ..opt("lease", "lease", Takes::Value)
    },
    opt("allow_mismatch", "allow-mismatch", Takes::Flag),
];

/// Pairs of options that cannot be given together (clap's `conflicts_with`).
const CONFLICTS: &[(&str, &str)] = &[("verbose", "quiet")];

/// The parsed command line, or `None` when clap should parse it.
/// `env` reads an environment variable (those of `OPTIONS`).
pub fn parse(argv: &[OsString], env: &dyn Fn(&str) -> Option<OsString>) -> Option<Cli> {
    let mut given = Given {
        values: OPTIONS.iter().map(|_| Vec::new()).collect(),
        env,
    };
    let mut words = argv.iter().skip(1);
    let mut in_run = false;
    let mut command = Vec::new();
    while let Some(word) = words.next() {
        let bytes = word.as_bytes();
        if in_run && bytes == b"--" {
            command.extend(words.cloned());
            break;
        }
        if !bytes.starts_with(b"-") {
            if in_run {
                // COMMAND starts at the first word that is not an option.
                command.push(word.clone());
                command.extend(words.cloned());
                break;
            }
            // The one positional word before COMMAND is the subcommand.
            if bytes != b"run" {
                return None;
            }
            in_run = true;
            continue;
        }
        let (name, glued) = split_option(word)?;
        let at = OPTIONS
            .iter()
            .position(|o| o.named(name) && (in_run || o.global))?;
        let slot = &mut given.values[at];
        let value = match (OPTIONS[at].takes, glued) {
            (Takes::Flag, Some(_)) => return None,
            (Takes::Flag, None) => OsString::new(),
            (_, Some(value)) => value,
            (_, None) => words.next()?.clone(),
        };
        // Empty values and values that look like options: clap decides.
        let bad_value = OPTIONS[at].takes != Takes::Flag
            && (value.is_empty() || value.as_bytes().starts_with(b"-"));
        if bad_value || (OPTIONS[at].takes != Takes::Values && !slot.is_empty()) {
            return None;
        }
        slot.push(value);
    }
    if command.is_empty() {
        return None;
    }
    for (a, b) in CONFLICTS {
        if given.flag(a)? && given.flag(b)? {
            return None;
        }
    }
    let args = Args {
        key: given.text("key")?,
        ttl: positive_duration(&given.text("ttl")??).ok()?,
        on_duplicate: given.choice("on_duplicate")?,
        wait_timeout: given.parsed("wait_timeout", positive_duration)?,
        on_failure: given.choice("on_failure")?,
        on_crash: given.choice("on_crash")?,
        max_output: byte_size(&given.text("max_output")??).ok()?,
        timeout: given.parsed("timeout", positive_duration)?,
        cwd: given.flag("cwd")?,
        env: given.all("env", env_name)?,
        fingerprint_stdin: given.flag("fingerprint_stdin")?,
        fingerprint_file: given.all("fingerprint_file", |v| Ok(PathBuf::from(v)))?,
        label: given.parsed("label", run::label)?,
        report: given.one("report")?.map(PathBuf::from),
        lease: lease_duration(&given.text("lease")??).ok()?,
        allow_mismatch: given.flag("allow_mismatch")?,
        command,
    };
    Some(Cli {
        db: given.one("db")?,
        quiet: given.flag("quiet")?,
        verbose: given.flag("verbose")?,
        log_format: given.choice("log_format")?,
        command: Command::Run(args),
    })
}

/// The values the line gave each option (by `OPTIONS` index), and the
/// environment for those it did not. Each reader returns `None` when clap
/// should decide.
struct Given<'a> {
    values: Vec<Vec<OsString>>,
    env: &'a dyn Fn(&str) -> Option<OsString>,
}

impl Given<'_> {
    fn index(id: &str) -> Option<usize> {
        OPTIONS.iter().position(|o| o.id == id)
    }

    /// The option's value: from the line, else its variable, else its
    /// default. An empty variable is clap's to judge.
    fn one(&self, id: &str) -> Option<Option<OsString>> {
        let at = Self::index(id)?;
        let opt = &OPTIONS[at];
        if let Some(value) = self.values[at].first() {
            return Some(Some(value.clone()));
        }
        match opt.env.and_then(|var| (self.env)(var)) {
            Some(value) if value.is_empty() => None,
            Some(value) => Some(Some(value)),
            None => Some(opt.default.map(OsString::from)),
        }
    }

    fn text(&self, id: &str) -> Option<Option<String>> {
        match self.one(id)? {
            Some(value) => value.into_string().ok().map(Some),
            None => Some(None),
        }
    }

    fn parsed<T>(&self, id: &str, parser: fn(&str) -> Result<T, String>) -> Option<Option<T>> {
        match self.text(id)? {
            Some(text) => parser(&text).ok().map(Some),
            None => Some(None),
        }
    }

    fn choice<T: ValueEnum>(&self, id: &str) -> Option<T> {
        T::from_str(&self.text(id)??, false).ok()
    }

    /// Every value of a repeatable option, each through `parser`.
    fn all<T>(&self, id: &str, parser: fn(&str) -> Result<T, String>) -> Option<Vec<T>> {
        let at = Self::index(id)?;
        let texts = self.values[at].iter().map(|v| v.to_str());
        texts.map(|text| parser(text?).ok()).collect()
    }

    /// A flag given on the line; one whose variable is set is clap's.
    fn flag(&self, id: &str) -> Option<bool> {
        let at = Self::index(id)?;
        if OPTIONS[at].env.is_some_and(|var| (self.env)(var).is_some()) {
            return None;
        }
        Some(!self.values[at].is_empty())
    }
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

#[cfg(test)]
mod tests;
