//! The command line: global flags, subcommands, and the value parsers they
//! share. Each subcommand lives in its own module with its own `Args`.

pub mod check;
pub mod fast;
mod follow;
pub mod generated;
pub mod inspect;
mod json;
pub mod logs;
pub mod purge;
pub mod run;
mod show;
pub mod stats;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueHint};
use std::ffi::OsString;
use std::time::Duration;

/// Run a command at most once per key
///
/// idem runs COMMAND at most once per key within a time window, however many
/// times and from however many processes it is called. A duplicate call does
/// not run COMMAND again: it replays the first run's stdout, stderr and exit
/// status, waits for the run in progress, or refuses, by policy. The records
/// live in a store: one SQLite file by default, or a PostgreSQL or Redis
/// server shared by many hosts.
#[derive(Debug, Parser)]
#[command(name = "idem", version, propagate_version = true, max_term_width = 100)]
#[command(subcommand_value_name = "SUBCOMMAND", after_help = after_help())]
pub struct Cli {
    /// The store: a file path (SQLite), or a postgres:// or redis:// URL.
    /// Default: $XDG_STATE_HOME/idem/idem.db, else ~/.local/state/idem/idem.db
    // The value stays hidden: a URL can carry a password.
    #[arg(long, global = true, env = "IDEM_DB", hide_env_values = true)]
    #[arg(value_name = "PATH|URL", value_hint = ValueHint::FilePath, help_heading = GLOBAL)]
    pub db: Option<OsString>,

    /// Silence notices (errors are still printed)
    #[arg(short, long, global = true, help_heading = GLOBAL)]
    pub quiet: bool,

    /// Explain each decision: run, replay, wait, takeover
    #[arg(short, long, global = true, conflicts_with = "quiet", help_heading = GLOBAL)]
    pub verbose: bool,

    /// How idem writes its own stderr lines: text, or one JSON object per line (level,
    /// message, key, event) for log shippers. COMMAND's output is never changed
    #[arg(long, global = true, env = "IDEM_LOG_FORMAT", hide_env_values = true)]
    #[arg(value_enum, default_value_t, value_name = "FORMAT", help_heading = GLOBAL)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `idem: ...` lines
    #[default]
    Text,
    /// One JSON object per line
    Json,
}

/// The heading that keeps the flags every subcommand takes apart from its own.
const GLOBAL: &str = "Global options";

/// `idem --help`'s footer: where to read more, and every exit status, from
/// the one table of them.
fn after_help() -> String {
    let mut help = String::from(
        "See 'idem help SUBCOMMAND' or 'man idem-SUBCOMMAND' for its options and examples.\n\n\
        Exit status:\n",
    );
    for meaning in crate::exit::MEANINGS {
        let label = meaning
            .status
            .number()
            .map_or(String::new(), |n| n.to_string());
        let text = match meaning.commands {
            [] => meaning.text.to_owned(),
            _ if label.is_empty() => meaning.text.to_owned(),
            names => format!("idem {}: {}", names.join(", idem "), meaning.text),
        };
        let label = if label.is_empty() {
            label
        } else {
            format!("{label:<5}")
        };
        hanging(&mut help, &label, &text);
    }
    hanging(&mut help, "", crate::exit::CHOSEN);
    help.truncate(help.trim_end().len());
    help
}

/// Appends `text` after two spaces and `label`, wrapped at 80 columns with
/// its continuation lines indented under its start (clap would wrap it flush left).
fn hanging(out: &mut String, label: &str, text: &str) {
    let indent = 2 + label.len();
    let mut width = indent;
    out.push_str("  ");
    out.push_str(label);
    for (i, word) in text.split(' ').enumerate() {
        if i > 0 && width + 1 + word.len() > 80 {
            out.push('\n');
            out.push_str(&" ".repeat(indent));
            width = indent;
        } else if i > 0 {
            out.push(' ');
            width += 1;
        }
        out.push_str(word);
        width += word.len();
    }
    out.push('\n');
}

#[derive(Debug, Subcommand)]
pub enum Command {
    Run(run::Args),
    Inspect(inspect::Args),
    Logs(logs::Args),
    Purge(purge::Args),
    Stats(stats::Args),
    Check(check::Args),
    Completions(generated::CompletionsArgs),
    Man(generated::ManArgs),
}

/// What every subcommand gets besides its own arguments.
pub struct Global {
    pub db: Option<OsString>,
    pub quiet: bool,
    pub verbose: bool,
}

/// Runs the chosen subcommand; returns the exit status.
pub fn dispatch(cli: Cli) -> Result<u8> {
    crate::say::configure(cli.quiet, cli.verbose);
    crate::say::use_json(cli.log_format == LogFormat::Json);
    if let Command::Run(run::Args { key: Some(key), .. }) = &cli.command {
        crate::say::about_key(key);
    }
    let global = Global {
        db: cli.db,
        quiet: cli.quiet,
        verbose: cli.verbose,
    };
    match cli.command {
        Command::Run(args) => run::run(&args, &global),
        Command::Inspect(args) => inspect::run(&args, &global),
        Command::Logs(args) => logs::run(&args, &global),
        Command::Purge(args) => purge::run(&args, &global),
        Command::Stats(args) => stats::run(&args, &global),
        Command::Check(args) => check::run(&args, &global),
        Command::Completions(args) => generated::completions(&args, &global),
        Command::Man(args) => generated::man(&args),
    }
}

/// A record status as operators type it (`--status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum StatusArg {
    /// Claimed; the command is running (or its owner crashed)
    InProgress,
    /// Finished; duplicates replay it
    Completed,
    /// Finished with a failure and released
    Failed,
    /// In progress, but its owner is gone
    Crashed,
}

impl From<StatusArg> for crate::store::Status {
    /// The stored status to select by; `crashed` records are `in_progress`
    /// ones, told apart by their owner afterwards.
    fn from(status: StatusArg) -> Self {
        match status {
            StatusArg::InProgress | StatusArg::Crashed => crate::store::Status::InProgress,
            StatusArg::Completed => crate::store::Status::Completed,
            StatusArg::Failed => crate::store::Status::Failed,
        }
    }
}

/// The longest duration any option takes: 10,000 years (humantime's year
/// of 365.25 days). Anything longer means "forever" and is refused as a
/// usage error when the command line is read, so no deadline, lease or
/// expiry computed from it can overflow later, after the command started.
/// A finished record's expiry then stays below year 12,100, which every
/// store holds exactly.
pub const MAX_DURATION: Duration = Duration::from_secs(10_000 * 31_557_600);

/// A humantime duration, greater than zero and at most `MAX_DURATION`.
pub fn positive_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (try 90s, 5m, 1h 30m, 7d)"))?;
    if d.is_zero() {
        return Err("must be greater than zero".into());
    }
    if d > MAX_DURATION {
        return Err("is too long: at most 10000y".into());
    }
    Ok(d)
}

/// `--lease`: a duration of at least one second. Renewals go every third
/// of it and the stop deadline leaves a grace of a sixth: shorter, a
/// round trip to the store would be most of the lease.
pub fn lease_duration(text: &str) -> Result<Duration, String> {
    let lease = positive_duration(text)?;
    if lease < crate::lease::MIN_LEASE {
        return Err("must be at least 1s".into());
    }
    Ok(lease)
}

/// An environment variable's name, `[A-Za-z_][A-Za-z0-9_]*` (`--env`).
pub fn env_name(s: &str) -> Result<OsString, String> {
    let mut chars = s.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid {
        return Ok(OsString::from(s));
    }
    match s.split_once('=') {
        Some((name, _)) if !name.is_empty() => Err(format!(
            "takes a variable name, not an assignment: --env {name}"
        )),
        _ => {
            Err("is not a variable name (letters, digits and _, not starting with a digit)".into())
        }
    }
}

/// A byte size: `0`, `1024`, `64K`, `16MiB`, `1GB` (K/KiB = 1024, KB = 1000).
pub fn byte_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("'{s}' is not a size (try 0, 64K, 16MiB)"))?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "kb" => 1_000,
        "m" | "mib" => 1 << 20,
        "mb" => 1_000_000,
        "g" | "gib" => 1 << 30,
        "gb" => 1_000_000_000,
        _ => return Err(format!("'{s}' is not a size (try 0, 64K, 16MiB)")),
    };
    n.checked_mul(factor)
        .ok_or_else(|| format!("'{s}' is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn verify_cli() {
        Cli::command().debug_assert();
    }

    #[test]
    fn sizes() {
        assert_eq!(byte_size("0"), Ok(0));
        assert_eq!(byte_size("16MiB"), Ok(16 << 20));
        assert_eq!(byte_size("64K"), Ok(65536));
        assert_eq!(byte_size("2MB"), Ok(2_000_000));
        assert!(byte_size("lots").is_err());
        assert!(byte_size("-1").is_err());
        assert!(byte_size("99999999999999999999G").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(positive_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert!(positive_duration("0s").is_err());
        assert!(positive_duration("soon").is_err());
        assert_eq!(positive_duration("10000y"), Ok(MAX_DURATION));
        assert!(positive_duration("10001y").is_err());
        assert!(positive_duration("300000000000y").is_err());
        assert_eq!(lease_duration("1s"), Ok(Duration::from_secs(1)));
        assert!(lease_duration("999ms").is_err());
    }

    #[test]
    fn env_names() {
        assert_eq!(env_name("_A9"), Ok(OsString::from("_A9")));
        assert!(env_name("A=1").unwrap_err().contains("--env A"));
        assert!(env_name("").is_err());
        assert!(env_name("9A").is_err());
        assert!(env_name("A-B").is_err());
        assert!(env_name("=x").is_err());
    }
}
