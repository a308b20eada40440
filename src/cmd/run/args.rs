//! The command line of `idem run`: its flags, their defaults, the examples
//! `--help` shows, and the check of `--label`. `cmd::fast` parses a plain
//! line into the same `Args` without clap, from the table it keeps in step
//! with this one (its tests walk both).

use crate::cmd::{byte_size, env_name, lease_duration, positive_duration};
use crate::policy::{OnCrash, OnDuplicate, OnFailure};
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

/// Run COMMAND at most once per key
///
/// The first call with a key claims it and runs COMMAND, streaming its output
/// live and storing it for replay. Until the record expires (--ttl after
/// COMMAND finished), a duplicate call replays that output byte for byte and
/// exits with the same status. While COMMAND still runs, a duplicate exits 75,
/// or waits for it with --on-duplicate wait. A failed run is released for the
/// next call to try again (--on-failure), and the run of an owner that crashed
/// is taken over or left for an operator (--on-crash).
#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    /// The idempotency key (1 to 1024 bytes). Default: derived from COMMAND,
    /// `cmd:` + 32 hex digits of its fingerprint
    #[arg(short, long, value_name = "KEY")]
    pub key: Option<String>,

    /// How long a finished run suppresses re-runs, counted from its end (90s, 5m, 1h 30m, 7d)
    #[arg(long, env = "IDEM_TTL", hide_env_values = true, default_value = DEFAULT_TTL)]
    #[arg(value_name = "DURATION", value_parser = positive_duration)]
    pub ttl: Duration,

    /// What a duplicate call does
    #[arg(long, value_enum, default_value_t, value_name = "POLICY")]
    pub on_duplicate: OnDuplicate,

    /// With --on-duplicate wait: give up (exit 75) after this long. Default: no bound
    #[arg(long, value_name = "DURATION", value_parser = positive_duration)]
    pub wait_timeout: Option<Duration>,

    /// What a failed run (non-zero exit, signal, timeout) leaves behind
    #[arg(long, value_enum, default_value_t, value_name = "POLICY")]
    pub on_failure: OnFailure,

    /// What to do when the record's owner crashed mid-run
    #[arg(long, value_enum, default_value_t, value_name = "POLICY")]
    pub on_crash: OnCrash,

    /// Store at most this much of each stream for replay (0 stores nothing)
    #[arg(long, default_value = DEFAULT_MAX_OUTPUT, value_name = "SIZE", value_parser = byte_size)]
    pub max_output: u64,

    /// Stop COMMAND after this long: SIGTERM, SIGKILL 5s later, exit 124. Default: no limit
    #[arg(long, value_name = "DURATION", value_parser = positive_duration)]
    pub timeout: Option<Duration>,

    /// Add the working directory to the fingerprint
    #[arg(long)]
    pub cwd: bool,

    /// Add an environment variable to the fingerprint (repeatable; unset differs from empty)
    #[arg(long = "env", value_name = "NAME", value_parser = env_name)]
    pub env: Vec<OsString>,

    /// Read all of stdin, add its SHA-256 to the fingerprint, feed it to COMMAND unchanged
    /// (stdin on a terminal is a usage error)
    #[arg(long)]
    pub fingerprint_stdin: bool,

    /// Add the SHA-256 of this file's contents to the fingerprint (repeatable; a
    /// payload, a config, a build input). A missing file is a usage error
    #[arg(long, value_name = "PATH", value_hint = clap::ValueHint::FilePath)]
    pub fingerprint_file: Vec<PathBuf>,

    /// A note stored with the record and shown by inspect (up to 256 bytes; not
    /// part of the fingerprint), to tell which event a derived key belongs to
    #[arg(long, value_name = "TEXT", value_parser = label)]
    pub label: Option<String>,

    /// When idem exits, write what happened as one JSON object to FILE (created
    /// 0600; /dev/fd/3 works): key, outcome (ran, replayed, joined, skipped,
    /// refused), reason, exit_code, attempt, took_over, record_status,
    /// started_at, finished_at, duration_ms, replays, store
    // hide_env_values: else --help shows an unset variable as `IDEM_REPORT=`.
    #[arg(long, env = "IDEM_REPORT", hide_env_values = true, value_name = "FILE")]
    #[arg(value_hint = clap::ValueHint::FilePath)]
    pub report: Option<PathBuf>,

    /// On PostgreSQL and Redis, how long a claim lives without renewal: it decides where process checks cannot (other hosts, other PID namespaces). The owner renews it every third of that, and stops COMMAND when no renewal was accepted for 0.9 of it less a grace (at least 1s; SQLite ignores it)
    #[arg(long, env = "IDEM_LEASE", hide_env_values = true, default_value = DEFAULT_LEASE)]
    #[arg(value_name = "DURATION", value_parser = lease_duration)]
    pub lease: Duration,

    /// Treat a key reused with a different fingerprint as a plain duplicate instead of exit 65
    #[arg(long)]
    pub allow_mismatch: bool,

    /// The command and its arguments: after `--`, or from the first word that is not one
    /// of idem's options (idem's options come before COMMAND, as for timeout and env)
    #[arg(trailing_var_arg = true, required = true, value_name = "COMMAND")]
    #[arg(value_hint = clap::ValueHint::CommandWithArguments)]
    pub command: Vec<OsString>,
}

/// Defaults of `--ttl`, `--max-output` and `--lease` (shared with `cmd::fast`).
pub const DEFAULT_TTL: &str = "24h";
pub const DEFAULT_MAX_OUTPUT: &str = "16MiB";
pub const DEFAULT_LEASE: &str = "30s";

const EXAMPLES: &str = "\
Examples:
  # crontab (cron's PATH is /usr/bin:/bin: give idem's full path, here where
  # cargo install puts it): the nightly report at most once a day; an
  # overlapping or repeated firing exits 0 quietly
  0 2 * * *  $HOME/.cargo/bin/idem run --on-duplicate skip --key report-$(date +\\%F) -- ./nightly-report.sh

  # A CI step, safe to retry: a success is replayed, a failure runs again
  idem run --key \"deploy-${CI_COMMIT_SHA:?}\" -- ./deploy.sh

  # A webhook handler: the key is the delivery's id, or a digest of the payload's
  # content, never the path of its temp file (a new one for each delivery); a
  # retried id with another payload exits 65; duplicates wait, then replay; the
  # report says whether this answer is a replay
  idem run --key \"delivery-$DELIVERY_ID\" --fingerprint-file \"$payload\" --report \"$report\" \\
      --on-duplicate wait -- ./on-event \"$payload\"
  idem run --key \"payload-$(sha256sum < \"$payload\" | cut -d' ' -f1)\" --on-duplicate wait -- ./on-event \"$payload\"

  # Payments: after a crash, never charge again until a human has checked
  idem run --key invoice-42 --on-crash block -- ./charge.sh 42";

/// `--label`: at most 256 bytes.
pub fn label(text: &str) -> Result<String, String> {
    if text.len() > 256 {
        return Err(format!("is {} bytes; the limit is 256", text.len()));
    }
    Ok(text.to_owned())
}
