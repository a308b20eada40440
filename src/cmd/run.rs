//! `idem run`: claim the key and run COMMAND, or replay, wait or refuse.
//!
//! The loop reads the record without a lock and asks `policy::decide`; only
//! a verdict to run takes the store's write lock, where the decision is made
//! again on the record as it is under the lock. A replay never writes more
//! than a replay counter; a waiter attaches to the run it waits for (see
//! `run/join.rs`); a refusal says why and what would let the call through
//! (`run/refuse.rs`). What follows a claim, running COMMAND and recording
//! its outcome, is `run/execute.rs`.

use super::{byte_size, env_name, positive_duration, Global};
use crate::child;
use crate::exit::{fail, Code};
use crate::key::{self, Fingerprint};
use crate::owner::{ChildId, Here};
use crate::policy::{decide, owner_alive, OnCrash, OnDuplicate, OnFailure, Policy, Verdict};
use crate::store::{self, Claim, Millis, Mode, Record, Status, Store};
use crate::text::{command_line, escape};
use anyhow::{Context, Result};
use std::cell::{Cell, OnceCell, RefCell};
use std::ffi::OsString;
use std::fs::File;
use std::io::{self, IsTerminal, Seek};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

mod execute;
mod join;
mod owning;
mod refuse;
mod report;

use join::Joined;
use refuse::{ago, record_status};
use report::{Outcome as Reported, Report};

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
    #[arg(long, env = "IDEM_REPORT", value_name = "FILE")]
    #[arg(value_hint = clap::ValueHint::FilePath)]
    pub report: Option<PathBuf>,

    /// How long a claim lives without renewal, on every store (the owner renews it every third of that while COMMAND runs); it decides where process checks cannot: other hosts, other PID namespaces (containers)
    #[arg(long, default_value = DEFAULT_LEASE, value_name = "DURATION", value_parser = positive_duration)]
    pub lease: Duration,

    /// Treat a key reused with a different fingerprint as a plain duplicate instead of exit 65
    #[arg(long)]
    pub allow_mismatch: bool,

    /// The command and its arguments, after `--`
    #[arg(last = true, required = true, value_name = "COMMAND")]
    #[arg(value_hint = clap::ValueHint::CommandWithArguments)]
    pub command: Vec<OsString>,
}

/// Defaults of `--ttl`, `--max-output` and `--lease` (shared with `cmd::fast`).
pub const DEFAULT_TTL: &str = "24h";
pub const DEFAULT_MAX_OUTPUT: &str = "16MiB";
pub const DEFAULT_LEASE: &str = "30s";

const EXAMPLES: &str = "\
Examples:
  # crontab (cron's PATH is /usr/bin:/bin: give idem's full path): the nightly
  # report at most once a day; an overlapping or repeated firing exits 0 quietly
  0 2 * * *  /usr/local/bin/idem run --on-duplicate skip --key report-$(date +\\%F) -- ./nightly-report.sh

  # A CI step, safe to retry: a success is replayed, a failure runs again
  idem run --key \"deploy-${CI_COMMIT_SHA:?}\" -- ./deploy.sh

  # A webhook handler: the payload file is in the key; duplicates wait, then
  # replay; the report says whether this answer is a replay
  idem run --fingerprint-file \"$1\" --report \"$report\" --on-duplicate wait -- ./on-event \"$1\"

  # Payments: after a crash, never charge again until a human has checked
  idem run --key invoice-42 --on-crash block -- ./charge.sh 42";

/// Everything about this call that stays fixed across attempts to claim.
struct Call<'a> {
    args: &'a Args,
    global: &'a Global,
    key: String,
    fingerprint: [u8; 32],
    command: Vec<u8>,
    cwd: Vec<u8>,
    policy: Policy,
    /// Host name and boot id, read only when a claim or a liveness check
    /// needs them: a replay does not.
    here: OnceCell<Here>,
    /// Notes for `--report`.
    report: &'a RefCell<Report>,
    /// Whether this call waited for a run in progress (a replay is then a join).
    waited: Cell<bool>,
}

/// `--label`: at most 256 bytes.
pub fn label(text: &str) -> Result<String, String> {
    if text.len() > 256 {
        return Err(format!("is {} bytes; the limit is 256", text.len()));
    }
    Ok(text.to_owned())
}

pub fn run(args: &Args, global: &Global) -> Result<u8> {
    // The report is this call's: a nested `idem run` inside COMMAND (a step
    // of a job) must not write over it.
    std::env::remove_var("IDEM_REPORT");
    if let Some(key) = &args.key {
        if let Err(problem) = key::check_key(key) {
            return fail(Code::Usage, problem);
        }
    }
    if args.command.first().is_none_or(|c| c.is_empty()) {
        return fail(Code::Usage, "COMMAND is empty (see idem run --help)");
    }
    let cwd = std::env::current_dir().context("cannot read the working directory")?;

    let mut fingerprint = Fingerprint::new();
    for arg in &args.command {
        fingerprint.arg(arg);
    }
    if args.cwd {
        fingerprint.cwd(cwd.as_os_str());
    }
    for name in &args.env {
        fingerprint.env(name, std::env::var_os(name).as_deref());
    }
    let stdin = if args.fingerprint_stdin {
        Some(spool_stdin(&mut fingerprint)?)
    } else {
        None
    };
    for path in &args.fingerprint_file {
        let digest = File::open(path)
            .and_then(|file| key::hash_and_spool(file, io::sink()))
            .or_else(|e| {
                fail(
                    Code::Usage,
                    format!("--fingerprint-file {}: cannot read it: {e}", path.display()),
                )
            })?;
        fingerprint.file_digest(&digest);
    }
    let fingerprint = fingerprint.finish();
    let key = args
        .key
        .clone()
        .unwrap_or_else(|| key::derived_key(&fingerprint));

    let location = match store::Location::resolve(global.db.as_deref()) {
        Ok(location) => location,
        Err(e) => {
            let result = Err(e);
            write_report(args, &Report::new(&key, None), &result);
            return result;
        }
    };
    let report = RefCell::new(Report::new(&key, Some(location.kind())));
    let result = (|| {
        crate::say::explain(format_args!(
            "key '{}'{}; store: {}",
            escape(key.as_bytes()),
            if args.key.is_some() {
                ""
            } else {
                " (derived from the command)"
            },
            location.shown()
        ));
        let mut store =
            store::open(&location, Mode::Create)?.context("the store could not be created")?;
        if args.report.is_some() {
            store.count_replays_exactly();
        }
        if let (true, store::Location::Redis(url)) = (global.verbose, &location) {
            if let Some(warning) = store::redis::persistence_warning(url) {
                crate::say::notice(format_args!("{warning}"));
            }
        }
        let call = Call {
            args,
            global,
            key: key.clone(),
            fingerprint,
            command: args
                .command
                .iter()
                .map(|a| a.as_bytes())
                .collect::<Vec<_>>()
                .join(&0u8),
            cwd: cwd.as_os_str().as_bytes().to_vec(),
            policy: Policy {
                on_duplicate: args.on_duplicate,
                on_crash: args.on_crash,
                allow_mismatch: args.allow_mismatch,
            },
            here: OnceCell::new(),
            report: &report,
            waited: Cell::new(false),
        };
        call.run(store.as_mut(), stdin.as_ref())
    })();
    write_report(args, &report.borrow(), &result);
    result
}

/// Reads all of stdin into a spool file for COMMAND, hashing it on the way.
/// A terminal is refused (a forgotten redirect would make every call the
/// same call); an empty stdin is said, for the same reason.
fn spool_stdin(fingerprint: &mut Fingerprint) -> Result<File> {
    if io::stdin().is_terminal() {
        return fail(
            Code::Usage,
            "--fingerprint-stdin reads the payload from stdin, but stdin is a terminal; \
             redirect it (< payload.json), or use --fingerprint-file PATH",
        );
    }
    let mut spool = tempfile::tempfile().context("cannot create a spool file for stdin")?;
    let digest =
        key::hash_and_spool(io::stdin().lock(), &mut spool).context("cannot read stdin")?;
    if spool
        .stream_position()
        .context("cannot read the stdin spool")?
        == 0
    {
        crate::say::notice(format_args!(
            "--fingerprint-stdin read nothing: every call with an empty stdin is the same call \
             (was the payload passed as an argument or a file? then use --fingerprint-file)"
        ));
    }
    spool.rewind().context("cannot rewind the stdin spool")?;
    fingerprint.stdin_digest(&digest);
    Ok(spool)
}

fn write_report(args: &Args, report: &Report, result: &Result<u8>) {
    if let Some(path) = &args.report {
        report::write(path, report, report::exit_code(result));
    }
}

/// What the unlocked look at the record found.
enum Next {
    Claim,
    Done(u8),
    Wait,
}

impl Call<'_> {
    fn run(&self, store: &mut dyn Store, stdin: Option<&File>) -> Result<u8> {
        // None: no bound (a bound past what the clock can hold is none).
        let wait_until = self
            .args
            .wait_timeout
            .and_then(|t| Instant::now().checked_add(t));
        loop {
            let (now, record) = store.get(&self.key)?;
            let next = self.act(store, record.as_ref(), now)?;
            let next = match next {
                Next::Claim => {
                    // From before the claim until the outcome is recorded,
                    // no signal may end idem (one that arrives meanwhile is
                    // forwarded to the child, or held until the record is safe).
                    let signals = child::Signals::block()?;
                    // The child starts first, held at its gate, so that
                    // the claim records it; a lost race kills it unopened.
                    let spec = self.spec(store, stdin);
                    let started = child::Gated::start(&spec)?;
                    owning::pause_point("child-started");
                    let id = started.as_ref().ok().map(child::Gated::id);
                    match self.claim(store, id)? {
                        Ok((token, attempt)) => {
                            return self.execute(store, token, attempt, started, &spec, &signals)
                        }
                        Err(next) => next,
                    }
                }
                next => next,
            };
            match next {
                Next::Done(code) => return Ok(code),
                Next::Claim => {}
                Next::Wait => {
                    self.waited.set(true);
                    let Some(record) = record else { continue };
                    match self.attach(store, &record, wait_until)? {
                        Joined::Done(done) => {
                            self.note(Reported::Joined, None, &done);
                            return Ok(join::run_status(&done));
                        }
                        // Look again: the crash policy decides.
                        Joined::Left => {}
                        Joined::TimedOut => {
                            let (now, record) = store.get(&self.key)?;
                            if let Some(record) = &record {
                                self.note(Reported::Refused, Some("wait_timeout"), record);
                            }
                            return fail(
                                Code::InProgress,
                                format!(
                                    "the wait timed out after --wait-timeout {}: {}; retry later, or allow a longer --wait-timeout",
                                    humantime::format_duration(self.args.wait_timeout.unwrap_or_default()),
                                    self.busy(record.as_ref(), now)
                                ),
                            );
                        }
                    }
                }
            }
        }
    }

    fn here(&self) -> &Here {
        self.here.get_or_init(Here::detect)
    }

    fn alive(&self, record: &Record, now: Millis, shared: bool) -> bool {
        owner_alive(record, self.here(), now, shared)
    }

    /// Acts on a verdict that needs no lock; `Next::Claim` when it says run.
    fn act(&self, store: &mut dyn Store, record: Option<&Record>, now: Millis) -> Result<Next> {
        let shared = store.is_shared();
        match decide(record, now, &self.fingerprint, self.policy, |r| {
            self.alive(r, now, shared)
        }) {
            Verdict::Run { .. } => Ok(Next::Claim),
            Verdict::Wait => Ok(Next::Wait),
            Verdict::Replay(record) => match self.replay(store, record)? {
                Some(code) => {
                    let mut replayed = record.clone();
                    replayed.replays += 1;
                    let outcome = if self.waited.get() {
                        Reported::Joined
                    } else {
                        Reported::Replayed
                    };
                    self.note(outcome, None, &replayed);
                    Ok(Next::Done(code))
                }
                // The record changed under us (purged, expired): look again.
                None => Ok(Next::Claim),
            },
            Verdict::Skip(record) => {
                self.note(Reported::Skipped, None, record);
                self.explain(format_args!(
                    "{}; skipping it (--on-duplicate skip), exit 0",
                    match record.status {
                        Status::InProgress => self.busy(Some(record), now),
                        _ => format!(
                            "key {} completed {} (exit status {})",
                            self.shown_key(),
                            ago(record.finished_at.unwrap_or(record.started_at), now),
                            record_status(record)
                        ),
                    }
                ));
                Ok(Next::Done(0))
            }
            Verdict::Mismatch(record) => self.refuse_mismatch(record),
            Verdict::Busy(record) => self.refuse_busy(record, now),
            Verdict::AlreadyDone(record) => self.refuse_completed(record, now),
            Verdict::Blocked(record) => self.refuse_blocked(record, now),
        }
    }

    /// Notes a decision about an existing record for `--report`.
    fn note(&self, outcome: Reported, reason: Option<&'static str>, record: &Record) {
        self.report.borrow_mut().decided(outcome, reason, record);
    }

    /// Claims the key under the store's lock. `Err(next)` when the record
    /// under the lock says something else than run.
    fn claim(
        &self,
        store: &mut dyn Store,
        child: Option<ChildId>,
    ) -> Result<std::result::Result<(i64, i64), Next>> {
        let shared = store.is_shared();
        let me = self.here().me();
        let mut outcome = None;
        let token = store.claim(&self.key, &mut |record, now| match decide(
            record,
            now,
            &self.fingerprint,
            self.policy,
            |r| self.alive(r, now, shared),
        ) {
            Verdict::Run { attempt, crashed } => {
                if let Some(dead) = crashed {
                    self.explain(format_args!(
                        "key {}: owner pid {} on {} is gone; taking over (attempt {attempt})",
                        self.shown_key(),
                        dead.owner.pid,
                        escape(dead.owner.host.as_bytes())
                    ));
                }
                outcome = Some(attempt);
                self.report.borrow_mut().claimed(attempt, crashed.is_some());
                Some(Claim {
                    fingerprint: self.fingerprint.to_vec(),
                    command: self.command.clone(),
                    cwd: self.cwd.clone(),
                    attempt,
                    owner: me.clone(),
                    lease_ms: millis(self.args.lease),
                    label: self.args.label.clone(),
                    child,
                })
            }
            _ => None,
        })?;
        match (token, outcome) {
            (Some(token), Some(attempt)) => Ok(Ok((token, attempt))),
            // Someone else got there first: the next look decides again.
            _ => Ok(Err(Next::Claim)),
        }
    }

    fn explain(&self, what: std::fmt::Arguments<'_>) {
        if self.global.verbose {
            crate::say::explain(what);
        }
    }

    fn shown_key(&self) -> String {
        format!("'{}'", escape(self.key.as_bytes()))
    }

    fn shown_command(&self) -> String {
        command_line(self.args.command.iter().map(|a| a.as_bytes()))
    }
}

fn millis(d: Duration) -> Millis {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
}
