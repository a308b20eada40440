//! `idem run`: claim the key and run COMMAND, or replay, wait or refuse.
//!
//! The loop reads the record without a lock and asks `policy::decide`; only
//! a verdict to run takes the store's write lock, where the decision is made
//! again on the record as it is under the lock. A replay never writes more
//! than a replay counter; a waiter attaches to the run it waits for (see
//! `run/join.rs`); a refusal says why and what would let the call through
//! (`run/refuse.rs`). What follows a claim, running COMMAND and recording
//! its outcome, is `run/execute.rs`; the flags are `run/args.rs`.

use super::Global;
use crate::child;
use crate::exit::{fail, Code};
use crate::key::{self, Fingerprint};
use crate::lease::Clock;
use crate::owner::{ChildId, Here};
use crate::policy::{decide, owner_alive, Policy, Verdict};
use crate::store::{self, Claim, Millis, Mode, Record, Status, Store};
use crate::text::{command_line, escape};
use anyhow::{Context, Result};
use std::cell::{Cell, OnceCell, RefCell};
use std::fs::File;
use std::io::{self, IsTerminal, Seek};
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, Instant};

mod args;
mod execute;
mod join;
mod owning;
mod refuse;
mod report;

pub use args::{label, Args, DEFAULT_LEASE, DEFAULT_MAX_OUTPUT, DEFAULT_TTL};
use execute::Claimed;
use join::Joined;
use refuse::{ago, record_status};
use report::{Outcome as Reported, Report};

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
        let digest = fingerprint_file(path)?;
        fingerprint.file_digest(&digest);
    }
    let fingerprint = fingerprint.finish();
    let key = args
        .key
        .clone()
        .unwrap_or_else(|| key::derived_key(&fingerprint));
    // An explicit key was named to `say` already; a derived one is known now.
    crate::say::about_key(&key);

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

/// The SHA-256 of a `--fingerprint-file`, which must be a regular file: a
/// FIFO or a device would hang the call or never end (`/dev/zero`). Opened
/// without blocking, and judged by what was opened, not by a second look.
fn fingerprint_file(path: &std::path::Path) -> Result<[u8; 32]> {
    use std::os::unix::fs::OpenOptionsExt;
    let shown = escape(path.as_os_str().as_bytes());
    let usage = |why: String| fail(Code::Usage, format!("--fingerprint-file {shown}: {why}"));
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
    {
        Ok(file) => file,
        Err(e) => return usage(format!("cannot read it: {e}")),
    };
    match file.metadata() {
        Ok(meta) if meta.is_file() => {}
        Ok(_) => {
            return usage(
                "it is not a regular file (a FIFO, a device or a directory); give a file".into(),
            )
        }
        Err(e) => return usage(format!("cannot read it: {e}")),
    }
    key::hash_and_spool(file, io::sink()).or_else(|e| usage(format!("cannot read it: {e}")))
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
                    let sent = Clock::now();
                    match self.claim(store, id)? {
                        Ok((token, attempt)) => {
                            let claimed = Claimed {
                                token,
                                attempt,
                                sent,
                            };
                            return self.execute(store, claimed, started, &spec, &signals);
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
                                    crate::text::duration(self.args.wait_timeout.unwrap_or_default()),
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
