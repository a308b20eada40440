//! Running the child: spawn it, tee and capture its output, forward
//! signals, enforce `--timeout`, keep the lease — and let nothing one of
//! these does hold up another.
//!
//! The child gets its own process group, so idem can signal everything it
//! started and tell later whether any of it still runs. Its lifecycle is a
//! state machine (`state`: running, suspended, stopping, killed) fed by
//! messages. Four kinds of thread share the work, each blocking only on
//! its own thing: the supervisor (`supervise`) polls the child's pipes, a
//! signalfd and the deadlines and feeds the machine; the writers (`output`)
//! copy the output to idem's stdout and stderr, however slowly those are
//! read; the journal appender (`journal`) holds the store's connection and
//! appends the captured output; on a shared store the lease keeper
//! (`keeper`) renews the lease on a connection of its own. Signals stay
//! blocked from before the claim until the outcome is recorded
//! (`Signals`), so no signal can end idem in between. Linux is the
//! supported platform (signalfd, /proc).

mod exec;
mod gated;
mod journal;
mod keeper;
mod output;
pub mod process;
mod state;
mod supervise;
mod terminal;
mod watcher;

pub use self::exec::SpawnError;
pub use self::gated::Gated;
pub use self::keeper::{Hold, Keeper};
pub use self::output::Output;
pub use self::state::LeaseLoss;
pub use self::watcher::Guard;
use crate::store::Chunk;
use anyhow::{Context, Result};
use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use std::ffi::OsString;
use std::fs::File;
use std::time::Duration;

/// What to run and how.
pub struct Spec<'a> {
    pub argv: &'a [OsString],
    pub env: Vec<(&'a str, OsString)>,
    /// Variables whose values only the claim decides: they reach the
    /// child through its gate (`run`'s `late`).
    pub late: Vec<&'static str>,
    /// Replaces the inherited stdin (the spool of `--fingerprint-stdin`).
    pub stdin: Option<&'a File>,
    /// A directory the child fsyncs before it may exec, so that the claim
    /// is on disk before COMMAND starts (`Store::directory_to_sync`).
    pub sync_dir: Option<File>,
    pub max_output: u64,
    pub timeout: Option<Duration>,
    /// What makes COMMAND's group die with idem, whatever ends it (`watcher`).
    pub guard: Guard,
}

/// How the child ended.
#[derive(Debug, Default)]
pub struct Finished {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
    /// COMMAND was stopped because its claim's lease was lost.
    pub lease_lost: Option<LeaseLoss>,
    pub stdout: Tally,
    pub stderr: Tally,
}

/// How much of one stream was captured.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tally {
    pub bytes: u64,
    /// More than `--max-output` arrived; the rest was not kept.
    pub truncated: bool,
}

impl Finished {
    pub fn succeeded(&self) -> bool {
        self.exit_code == Some(0) && self.signal.is_none() && !self.timed_out
    }
}

/// Where the captured output goes while the child lives: called on the
/// journal thread (`journal`), which owns the writer meanwhile.
pub trait JournalWriter: Send {
    /// Appends captured output, in the order it was read. An error is
    /// reported once; the run goes on.
    fn journal(&mut self, chunks: &[Chunk<'_>]) -> Result<()>;
}

/// Signals that end a process by default and that a user or a supervisor
/// may send: idem passes these on to the child's group.
const FORWARDED: [Signal; 8] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGALRM,
    Signal::SIGWINCH,
];

/// Signals are blocked while this lives: from before the claim until the
/// outcome is recorded. Those idem forwards (and SIGCHLD, SIGCONT) are read
/// from a signalfd; every other catchable one that would end idem stays
/// pending, so it takes effect only once the record is safe. Stop signals,
/// and those the CPU raises, are left alone.
pub struct Signals {
    fd: SignalFd,
    old_mask: SigSet,
}

impl Signals {
    /// Blocks them in this thread and in every thread it starts later.
    pub fn block() -> Result<Signals> {
        let mut read = SigSet::empty();
        for sig in FORWARDED {
            read.add(sig);
        }
        for sig in [Signal::SIGCHLD, Signal::SIGCONT, Signal::SIGTTOU] {
            read.add(sig);
        }
        let mut blocked = read;
        for sig in Signal::iterator() {
            let leave = matches!(
                sig,
                Signal::SIGKILL
                    | Signal::SIGSTOP
                    | Signal::SIGTSTP
                    | Signal::SIGTTIN
                    | Signal::SIGSEGV
                    | Signal::SIGBUS
                    | Signal::SIGFPE
                    | Signal::SIGILL
                    | Signal::SIGTRAP
                    | Signal::SIGABRT
                    | Signal::SIGSYS
                    | Signal::SIGPIPE
            );
            if !leave {
                blocked.add(sig);
            }
        }
        let mut old_mask = SigSet::empty();
        sigprocmask(SigmaskHow::SIG_BLOCK, Some(&blocked), Some(&mut old_mask))
            .context("block signals")?;
        let fd = SignalFd::with_flags(&read, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .context("signalfd")?;
        Ok(Signals { fd, old_mask })
    }
}

impl Drop for Signals {
    /// Whatever arrived since the child exited is delivered now.
    fn drop(&mut self) {
        let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&self.old_mask), None);
    }
}

/// Opens the gate of `child` (started from `spec`, recorded by the claim),
/// with the values of `spec.late`, and runs it to the end. `signals` must
/// have been blocked before the child started, so that every thread started
/// meanwhile keeps them blocked (the output writers block them all
/// themselves). `hold`: the lease as its keeper sees it, on a shared store.
pub fn run(
    child: Gated,
    late: &[String],
    spec: &Spec<'_>,
    signals: &Signals,
    output: &Output,
    writer: &mut dyn JournalWriter,
    hold: Option<&Hold>,
) -> Result<std::result::Result<Finished, SpawnError>> {
    supervise::supervise(child, late, spec, &signals.fd, output, writer, hold)
}
