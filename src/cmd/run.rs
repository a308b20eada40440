//! `idem run`: claim the key and run COMMAND, or replay, wait or refuse.
//!
//! The loop reads the record without a lock and asks `policy::decide`; only
//! a verdict to run takes the store's write lock, where the decision is made
//! again on the record as it is under the lock. A replay never writes more
//! than a replay counter.

use super::{byte_size, env_name, positive_duration, Global};
use crate::child::{self, Finished, SpawnError};
use crate::exit::{child_status, fail, Code};
use crate::key::{self, Fingerprint};
use crate::owner::Here;
use crate::policy::{decide, owner_alive, OnCrash, OnDuplicate, OnFailure, Policy, Verdict};
use crate::store::{self, Captured, Claim, Millis, Mode, Outcome, Record, Status, Store, Stream};
use crate::text::{command_line, escape, shell_word};
use anyhow::{Context, Result};
use std::cell::{Cell, OnceCell, RefCell};
use std::ffi::OsString;
use std::fs::File;
use std::io::{self, IsTerminal, Seek, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

mod owning;
mod replay;
mod report;

use owning::{pause_point, Owning};
use replay::ClosedOk;
use report::{Outcome as Reported, Report};

/// How often a waiter looks at the record again.
const WAIT_POLL: Duration = Duration::from_millis(50);

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
        call.run(store.as_mut(), stdin)
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
    fn run(&self, store: &mut dyn Store, stdin: Option<File>) -> Result<u8> {
        // None: no bound (a bound past what the clock can hold is none).
        let wait_until = self
            .args
            .wait_timeout
            .and_then(|t| Instant::now().checked_add(t));
        let mut waiting_noted = false;
        loop {
            let (now, record) = store.get(&self.key)?;
            let next = self.act(store, record.as_ref(), now)?;
            let next = match next {
                Next::Claim => {
                    // From before the claim until the outcome is recorded,
                    // no signal may end idem (one that arrives meanwhile is
                    // forwarded to the child, or held until the record is safe).
                    let signals = child::Signals::block()?;
                    match self.claim(store)? {
                        Ok((token, attempt)) => {
                            return self.execute(store, token, attempt, stdin, &signals)
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
                    if wait_until.is_some_and(|t| Instant::now() >= t) {
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
                    if !waiting_noted {
                        self.explain(format_args!(
                            "key {} is in progress elsewhere; waiting",
                            self.shown_key()
                        ));
                        waiting_noted = true;
                    }
                    std::thread::sleep(WAIT_POLL);
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
            Verdict::Mismatch(record) => {
                self.note(Reported::Refused, Some("mismatch"), record);
                fail(Code::Mismatch, self.mismatch_message(record))
            }
            Verdict::Busy(record) => {
                self.note(Reported::Refused, Some("in_progress"), record);
                fail(
                    Code::InProgress,
                    format!(
                        "{}; retry later, or use --on-duplicate wait",
                        self.busy(Some(record), now)
                    ),
                )
            }
            Verdict::AlreadyDone(record) => {
                self.note(Reported::Refused, Some("completed"), record);
                fail(
                Code::Completed,
                format!(
                    "key {} already completed {} (exit status {}); it expires {}; run `{}` to allow a re-run",
                    self.shown_key(),
                    ago(record.finished_at.unwrap_or(record.started_at), now),
                    record_status(record),
                    until(record.expires_at, now),
                    purge_command(&self.key),
                ),
            )
            }
            Verdict::Blocked(record) => {
                self.note(Reported::Refused, Some("crashed"), record);
                fail(
                Code::Crashed,
                format!(
                    "key {}: an earlier run crashed (host {}, pid {}, started {}); check its side effects, then run `{}`",
                    self.shown_key(),
                    escape(record.owner.host.as_bytes()),
                    record.owner.pid,
                    ago(record.started_at, now),
                    purge_command(&self.key),
                ),
            )
            }
        }
    }

    /// Notes a decision about an existing record for `--report`.
    fn note(&self, outcome: Reported, reason: Option<&'static str>, record: &Record) {
        self.report.borrow_mut().decided(outcome, reason, record);
    }

    /// Claims the key under the store's lock. `Err(next)` when the record
    /// under the lock says something else than run.
    fn claim(&self, store: &mut dyn Store) -> Result<std::result::Result<(i64, i64), Next>> {
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

    /// Streams the stored output; `None` when the record vanished meanwhile.
    fn replay(&self, store: &mut dyn Store, record: &Record) -> Result<Option<u8>> {
        self.explain(format_args!(
            "key {} completed earlier (attempt {}); replaying its output and status {}",
            self.shown_key(),
            record.attempt,
            record_status(record)
        ));
        // An empty stream needs no second look at the store.
        let mut stdout = ClosedOk::new(io::stdout().lock());
        if record.stdout_bytes > 0 {
            let copied = store.copy_output(&self.key, record.token, Stream::Stdout, &mut stdout);
            if !stdout.check(copied, "stdout")? {
                return Ok(None);
            }
        }
        let flushed = stdout.flush();
        stdout.check(flushed.map_err(Into::into), "stdout")?;
        let mut stderr = ClosedOk::new(io::stderr().lock());
        if record.stderr_bytes > 0 {
            let copied = store.copy_output(&self.key, record.token, Stream::Stderr, &mut stderr);
            if !stderr.check(copied, "stderr")? {
                return Ok(None);
            }
        }
        if (record.stdout_truncated || record.stderr_truncated) && !self.global.quiet {
            crate::say::notice(format_args!(
                "the replayed output of key {} was cut at --max-output when it was stored",
                self.shown_key()
            ));
        }
        // A statistic: a store that has become read-only still replays.
        if let Err(e) = store.count_replay(&self.key, record.token) {
            self.explain(format_args!("the replay was not counted: {e:#}"));
        }
        Ok(Some(if record.timed_out {
            u8::from(Code::Timeout)
        } else {
            child_status(record.exit_code, record.signal)
        }))
    }

    fn execute(
        &self,
        store: &mut dyn Store,
        token: i64,
        attempt: i64,
        stdin: Option<File>,
        signals: &child::Signals,
    ) -> Result<u8> {
        // Declared before the claim's holder, so dropped after the record:
        // what the writers still hold waits for no reader before it.
        let output = child::Output::start().context("cannot start the output threads")?;
        pause_point("after-claim");
        self.explain(format_args!(
            "key {}: running (attempt {attempt})",
            self.shown_key()
        ));
        let mut env = vec![
            ("IDEM_KEY", self.key.clone()),
            ("IDEM_ATTEMPT", attempt.to_string()),
        ];
        if store.is_shared() {
            env.push(("IDEM_FENCING_TOKEN", token.to_string()));
        }
        let spec = child::Spec {
            argv: &self.args.command,
            env,
            stdin,
            max_output: self.args.max_output,
            timeout: self.args.timeout,
        };
        let mut owner = Owning {
            store: &mut *store,
            key: &self.key,
            token,
            lease: self.args.lease,
            renewed: Instant::now(),
            lost: false,
            stdout: Vec::new(),
            stderr: Vec::new(),
        };
        let ran = child::run(&spec, signals, &output, &mut owner)?;
        let lost_lease = owner.lost;
        pause_point("before-finish");
        let (finished, exit) = match ran {
            Ok(finished) => {
                let exit = if finished.timed_out {
                    u8::from(Code::Timeout)
                } else {
                    child_status(finished.exit_code, finished.signal)
                };
                (finished, exit)
            }
            Err(e) => {
                let (code, message) = match e {
                    SpawnError::NotFound(name) => (
                        Code::NotFound,
                        format!("{}: command not found", escape(name.as_bytes())),
                    ),
                    SpawnError::NotExecutable(why) => (
                        Code::NotExecutable,
                        format!("cannot run {}", escape(why.as_bytes())),
                    ),
                };
                // Could not start at all: never locked, whatever --on-failure says.
                let failed = Finished {
                    exit_code: Some(i32::from(u8::from(code))),
                    ..Finished::default()
                };
                let captured = (Captured::default(), Captured::default());
                self.finish(store, token, &failed, captured, Status::Failed, lost_lease)?;
                return fail(code, message);
            }
        };
        let status = if finished.succeeded() || self.args.on_failure == OnFailure::Lock {
            Status::Completed
        } else {
            Status::Failed
        };
        let captured = (
            owner.captured(Stream::Stdout, finished.stdout.truncated),
            owner.captured(Stream::Stderr, finished.stderr.truncated),
        );
        if finished.timed_out {
            crate::say::notice(format_args!(
                "{} timed out after {}",
                self.shown_command(),
                humantime::format_duration(self.args.timeout.unwrap_or_default())
            ));
        }
        self.finish(store, token, &finished, captured, status, lost_lease)?;
        Ok(exit)
    }

    fn finish(
        &self,
        store: &mut dyn Store,
        token: i64,
        finished: &Finished,
        // Taken, not borrowed: the captured output can be the size of
        // --max-output and is not worth a copy.
        (stdout, stderr): (Captured, Captured),
        status: Status,
        lost_lease: bool,
    ) -> Result<()> {
        let outcome = Outcome {
            status,
            exit_code: finished.exit_code,
            signal: finished.signal,
            timed_out: finished.timed_out,
            ttl_ms: millis(self.args.ttl),
            stdout,
            stderr,
        };
        let result = if lost_lease {
            Ok(false)
        } else {
            store.finish(&self.key, token, &outcome)
        };
        match result {
            Ok(true) => {
                if self.args.report.is_some() {
                    // The record as stored, by the store's clock.
                    let record = store.get(&self.key).ok().and_then(|(_, r)| r);
                    self.report
                        .borrow_mut()
                        .record(record.filter(|r| r.token == token));
                }
                Ok(())
            }
            Ok(false) => fail(
                Code::Internal,
                format!(
                    "lost the claim on key {} while the command ran (its lease ran out, or it was purged or taken over); \
                     this run's outcome (status {}) was NOT recorded and the newer record was left alone",
                    self.shown_key(),
                    child_status(finished.exit_code, finished.signal)
                ),
            ),
            Err(e) => fail(
                Code::Internal,
                format!(
                    "the command finished (status {}) but its record could NOT be written, so key {} stays in_progress: {e:#}",
                    child_status(finished.exit_code, finished.signal),
                    self.shown_key()
                ),
            ),
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

    /// What holds the key: its owner and when its lease runs out unless
    /// renewed.
    fn busy(&self, record: Option<&Record>, now: Millis) -> String {
        let owner = record.map_or_else(String::new, |r| {
            let lease = r.lease_until.map_or_else(String::new, |at| {
                format!(
                    "; its lease runs out {} unless its owner renews it",
                    until(Some(at), now)
                )
            });
            format!(
                " (pid {} on {}, attempt {}{lease})",
                r.owner.pid,
                escape(r.owner.host.as_bytes()),
                r.attempt
            )
        });
        format!("key {} is in progress elsewhere{owner}", self.shown_key())
    }

    fn mismatch_message(&self, record: &Record) -> String {
        let stored = command_line(record.argv());
        if stored == self.shown_command() {
            return format!(
                "key {} was used for the same command with other fingerprint inputs \
                 (stdin, --fingerprint-file, --env or --cwd): `{stored}`; use another key, \
                 or --allow-mismatch, or run `idem purge {}` to forget the stored run",
                self.shown_key(),
                shell_word(&self.key)
            );
        }
        format!(
            "key {} was used for a different command: stored `{}`, now `{}`; use another key, \
             or --allow-mismatch, or run `idem purge {}` to forget the stored run",
            self.shown_key(),
            command_line(record.argv()),
            self.shown_command(),
            shell_word(&self.key)
        )
    }
}

fn millis(d: Duration) -> Millis {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
}

fn record_status(record: &Record) -> String {
    if record.timed_out {
        "124 (timed out)".into()
    } else if let Some(sig) = record.signal {
        format!("{} (signal {sig})", 128 + sig)
    } else {
        record
            .exit_code
            .map_or_else(|| "unknown".into(), |c| c.to_string())
    }
}

fn ago(at: Millis, now: Millis) -> String {
    let secs = u64::try_from((now - at) / 1000).unwrap_or(0);
    format!(
        "{} ago",
        humantime::format_duration(Duration::from_secs(secs))
    )
}

fn until(at: Option<Millis>, now: Millis) -> String {
    match at {
        Some(at) => {
            let secs = u64::try_from((at - now) / 1000).unwrap_or(0);
            format!(
                "in {}",
                humantime::format_duration(Duration::from_secs(secs))
            )
        }
        None => "never".into(),
    }
}

/// The command that purges `key`, ready to paste.
fn purge_command(key: &str) -> String {
    let end_of_options = if key.starts_with('-') { "-- " } else { "" };
    format!("idem purge {end_of_options}{}", shell_word(key))
}
