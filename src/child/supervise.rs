//! The supervisor loop: COMMAND's pipes, signals and deadlines.
//!
//! The supervisor thread polls the child's two pipes, the signalfd, the
//! lease keeper's wake-up and its deadlines, and never blocks on anything
//! else: it offers each chunk it reads to a writer (`output`) and, up to
//! `--max-output`, to the journal appender (`journal`); while either cannot
//! take more, it stops reading that pipe (back-pressure on the child, like
//! a pipe) but keeps forwarding signals and watching the clock. What the
//! deadlines, job control and the lease do to COMMAND is decided by the
//! state machine (`state`); this loop feeds it and carries out its actions.

use super::exec::SpawnError;
use super::gated::{open_gate, Gated};
use super::journal::{Appender, Captured};
use super::keeper::Hold;
use super::output::{Offer, Output};
use super::state::{Action, Machine, Message};
use super::terminal::Terminal;
use super::{Finished, JournalWriter, Spec, Tally, FORWARDED};
use crate::lease::Clock;
use crate::owner::group_alive;
use crate::store::Stream;
use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// After the child exits, how long quiet pipes held by no process of its
/// group may stay open before idem stops reading them.
const LINGER: Duration = Duration::from_millis(100);
/// How often to look again at a queue that was full, or at a group that
/// outlived its leader.
const RECHECK: Duration = Duration::from_millis(10);
/// How often the supervisor looks for the child's exit without a SIGCHLD.
const REAP_CHECK: Duration = Duration::from_secs(1);
/// The most read from a pipe at once.
const CHUNK: usize = 64 * 1024;

pub(super) fn supervise(
    mut child: Gated,
    late: &[String],
    spec: &Spec<'_>,
    signals: &SignalFd,
    output: &Output,
    writer: &mut dyn JournalWriter,
    hold: Option<&Hold>,
) -> Result<std::result::Result<Finished, SpawnError>> {
    let pid = child.pid();
    let mut terminal = Terminal::hand_to(pid, spec.stdin.is_none());
    std::thread::scope(|scope| {
        // Open the gate: COMMAND may start now. From here on the child is
        // waited for, not killed, however this ends.
        let Some(pipes) = child.pipes.take() else {
            anyhow::bail!("the gate was opened before");
        };
        let (out_r, err_r, status_r) = (pipes.stdout, pipes.stderr, pipes.status);
        open_gate(pipes.gate, late)?;
        // EOF: the child has exec'd (or died), so it no longer runs in
        // idem's memory; an errno: it exits at once.
        let exec_failed = read_exec_status(status_r);
        if let Some(errno) = exec_failed {
            let _ = waitpid(pid, None);
            child.settled = true;
            let name = spec.argv[0].to_string_lossy().into_owned();
            return Ok(Err(match Errno::from_raw(errno) {
                Errno::ENOENT => SpawnError::NotFound(name),
                e => SpawnError::NotExecutable(format!("{name}: {}", e.desc())),
            }));
        }
        child.settled = true;
        let mut watch = Watch {
            pid,
            streams: [
                Pipe::new(out_r, Stream::Stdout, spec.max_output),
                Pipe::new(err_r, Stream::Stderr, spec.max_output),
            ],
            held: None,
            journal: Appender::new(scope, writer),
            output,
            scratch: vec![0; CHUNK],
        };
        let machine = Machine::new(Clock::now(), spec.timeout);
        let finished = watch.run(machine, signals, hold, &mut terminal);
        // COMMAND has ended: the final writes' budget starts now, so the
        // journal's last append counts against it too.
        crate::store::final_writes_deadline();
        watch.journal.finish();
        finished.map(Ok)
    })
}

/// Reads the child's exec report and closes the pipe: EOF means exec
/// succeeded, four bytes are the errno of a failed exec.
fn read_exec_status(status_r: OwnedFd) -> Option<i32> {
    let mut bytes = [0u8; 4];
    let report = File::from(status_r).read_exact(&mut bytes);
    report.ok().map(|()| i32::from_ne_bytes(bytes))
}

/// One of the child's output pipes.
struct Pipe {
    pipe: Option<OwnedFd>,
    stream: Stream,
    /// A chunk the writer could not take yet.
    unwritten: Option<Vec<u8>>,
    cap: u64,
    tally: Tally,
}

impl Pipe {
    fn new(pipe: OwnedFd, stream: Stream, cap: u64) -> Pipe {
        Pipe {
            pipe: Some(pipe),
            stream,
            unwritten: None,
            cap,
            tally: Tally::default(),
        }
    }

    fn fd(&self) -> i32 {
        match self.stream {
            Stream::Stdout => 1,
            Stream::Stderr => 2,
        }
    }
}

/// The supervisor's state while the child runs.
struct Watch<'a, 'scope, 'env> {
    pid: Pid,
    streams: [Pipe; 2],
    /// A captured chunk the journal appender could not take yet: no pipe
    /// is read until it has, so the journal keeps the order of reading.
    held: Option<Captured>,
    journal: Appender<'scope, 'env>,
    output: &'a Output,
    /// What each read fills, allocated once: a chunk gets a buffer of its
    /// own size only when data comes (a fresh 64 KiB per read cost a tenth
    /// of a short run's instructions in zeroing alone).
    scratch: Vec<u8>,
}

impl Watch<'_, '_, '_> {
    fn run(
        &mut self,
        mut machine: Machine,
        signals: &SignalFd,
        hold: Option<&Hold>,
        terminal: &mut Terminal,
    ) -> Result<Finished> {
        let group = Pid::from_raw(-self.pid.as_raw());
        let mut status = None;
        let mut reaped_at: Option<Instant> = None;
        let mut last_data = Instant::now();
        let mut message = Message::Tick;
        loop {
            self.offer_pending();
            let lease = hold.map(Hold::view);
            // Once the leader is reaped, only a kill under way goes on.
            let fed = status.is_none() || machine.kill_pending();
            if fed {
                let actions = machine.on(message, Clock::now(), lease);
                self.carry_out(&actions, terminal);
            }
            message = Message::Tick;
            let now = Instant::now();
            if let Some(reaped) = reaped_at {
                let drained = self.streams.iter().all(|s| s.pipe.is_none());
                let stalled = self.streams.iter().any(|s| s.unwritten.is_some());
                let quiet = now.duration_since(last_data.max(reaped)) >= LINGER;
                // A group stopped for a deadline is killed whatever its
                // leader did; a finished one is left once its pipes are
                // closed, or once no process of it is left (a daemon that
                // left the group may hold the pipes for ever).
                let alive = || group_alive(i64::from(self.pid.as_raw()));
                let killing = machine.kill_pending() && alive();
                if !killing && (drained || ((quiet || stalled) && !alive())) {
                    break;
                }
            }

            let clock = Clock::now();
            let fed = status.is_none() || machine.kill_pending();
            // Deadlines matter only while the machine is fed.
            let mut wait = [
                machine
                    .wake_at(lease)
                    .filter(|_| fed)
                    .map(|at| at.since(clock)),
                reaped_at.map(|_| LINGER),
            ]
            .into_iter()
            .flatten()
            .min();
            let stalled = self.held.is_some() || self.streams.iter().any(|s| s.unwritten.is_some());
            if stalled || (reaped_at.is_some() && machine.kill_pending()) {
                wait = Some(wait.map_or(RECHECK, |w| w.min(RECHECK)));
            }
            // SIGCHLD wakes this loop; should it ever not come (a thread of
            // a library that does not block it), the child is still reaped.
            if status.is_none() {
                wait = Some(wait.map_or(REAP_CHECK, |w| w.min(REAP_CHECK)));
            }
            let poll_timeout = match wait {
                Some(d) => PollTimeout::try_from(d.as_millis().min(60_000) as i32 + 1)
                    .unwrap_or(PollTimeout::MAX),
                None => PollTimeout::NONE,
            };

            let mut fds = vec![PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
            // A refusal wakes the loop, until the machine has seen it.
            if let Some(hold) = hold.filter(|_| fed && lease.is_some_and(|view| !view.refused)) {
                fds.push(PollFd::new(hold.wake_fd(), PollFlags::POLLIN));
            }
            let mut readable = [None, None];
            for (i, pipe) in self.streams.iter().enumerate() {
                if let (Some(fd), None, None) = (&pipe.pipe, &pipe.unwritten, &self.held) {
                    fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
                    readable[i] = Some(fds.len() - 1);
                }
            }
            match poll(&mut fds, poll_timeout) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => return Err(e).context("poll"),
            }
            let ready = |i: usize| fds[i].revents().is_some_and(|r| !r.is_empty());
            let signal_ready = ready(0);
            let pipes_ready = readable.map(|at| at.is_some_and(ready));
            drop(fds);

            for (i, is_ready) in pipes_ready.into_iter().enumerate() {
                if is_ready && self.pump(i) {
                    last_data = Instant::now();
                }
            }
            if signal_ready {
                while let Ok(Some(info)) = signals.read_signal() {
                    match Signal::try_from(info.ssi_signo as i32) {
                        Ok(Signal::SIGCONT) => message = Message::Continued,
                        Ok(sig) if FORWARDED.contains(&sig) => {
                            let _ = kill(group, sig);
                        }
                        _ => {}
                    }
                }
            }
            while status.is_none() {
                let flags = WaitPidFlag::WNOHANG | WaitPidFlag::WUNTRACED;
                match waitpid(self.pid, Some(flags)) {
                    Ok(WaitStatus::Exited(_, code)) => status = Some((Some(code), None)),
                    Ok(WaitStatus::Signaled(_, sig, _)) => status = Some((None, Some(sig as i32))),
                    Ok(WaitStatus::Stopped(..)) => {
                        let lease = hold.map(Hold::view);
                        let actions = machine.on(Message::GroupStopped, Clock::now(), lease);
                        self.carry_out(&actions, terminal);
                        continue;
                    }
                    Ok(_) => {}
                    Err(e) => return Err(e).context("wait for the child"),
                }
                if status.is_some() {
                    reaped_at = Some(Instant::now());
                }
                break;
            }
        }
        self.drain();
        let (exit_code, signal) = status.unwrap_or((None, None));
        // Output the journal could not take is not kept.
        let lost = self.journal.failed();
        let tally = |pipe: &Pipe| Tally {
            truncated: pipe.tally.truncated || lost,
            ..pipe.tally
        };
        Ok(Finished {
            exit_code,
            signal,
            timed_out: machine.timed_out(),
            lease_lost: machine.lease_lost(),
            stdout: tally(&self.streams[0]),
            stderr: tally(&self.streams[1]),
        })
    }

    /// Does what the state machine said.
    fn carry_out(&self, actions: &[Action], terminal: &mut Terminal) {
        for action in actions {
            match action {
                Action::Signal(sig) => {
                    let _ = kill(Pid::from_raw(-self.pid.as_raw()), *sig);
                }
                Action::SuspendIdem => terminal.child_stopped(),
                Action::Resume => terminal.continued(self.pid),
                Action::SayKilledNotResumed => {
                    terminal.continued_without_child();
                    crate::say::as_event("lease_lost", || {
                        crate::say::notice(format_args!(
                            "COMMAND was stopped (job control) past its lease's stop deadline: \
                             it was killed, not resumed"
                        ));
                    });
                }
            }
        }
    }

    /// Reads one chunk from pipe `i` and hands it on; true when data came.
    fn pump(&mut self, i: usize) -> bool {
        let pipe = &mut self.streams[i];
        let Some(fd) = &pipe.pipe else { return false };
        if self.held.is_some() || pipe.unwritten.is_some() {
            return false;
        }
        let n = loop {
            match nix::unistd::read(fd.as_raw_fd(), &mut self.scratch) {
                Ok(n) => break n,
                Err(Errno::EINTR) => {}
                // Drained for now (only once `drain` made the pipe non-blocking).
                Err(Errno::EAGAIN) => return false,
                Err(_) => break 0,
            }
        };
        if n == 0 {
            pipe.pipe = None;
            return false;
        }
        let chunk = self.scratch[..n].to_vec();
        let room = pipe.cap.saturating_sub(pipe.tally.bytes);
        let kept = chunk.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        if kept < chunk.len() {
            pipe.tally.truncated = true;
        }
        if kept > 0 {
            pipe.tally.bytes += kept as u64;
            self.held = Some((pipe.stream, chunk[..kept].to_vec()));
        }
        pipe.unwritten = Some(chunk);
        self.offer_pending();
        true
    }

    /// Offers what is pending to the writers and the journal, never waiting.
    fn offer_pending(&mut self) {
        for pipe in &mut self.streams {
            if let Some(chunk) = pipe.unwritten.take() {
                if let Offer::Full(chunk) = self.output.offer(pipe.fd(), chunk) {
                    pipe.unwritten = Some(chunk);
                }
            }
        }
        if let Some(held) = self.held.take() {
            self.held = self.journal.offer(held);
        }
    }

    /// The child is gone: reads what is left in the pipes (no process of
    /// its group can add more) and hands it all on: the journal gets every
    /// captured byte before the outcome is recorded, the writers get theirs
    /// after it (`Output::defer`), however stalled their readers.
    fn drain(&mut self) {
        for pipe in &mut self.streams {
            if let Some(fd) = &pipe.pipe {
                let _ = nix::fcntl::fcntl(
                    fd.as_raw_fd(),
                    nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK),
                );
            }
        }
        // A daemon that left the group may write for ever: take what is
        // there now, not what comes later.
        let until = Instant::now() + LINGER;
        while Instant::now() < until {
            for pipe in &mut self.streams {
                if let Some(chunk) = pipe.unwritten.take() {
                    self.output.defer(pipe.fd(), chunk);
                }
            }
            if let Some(held) = self.held.take() {
                self.journal.send(held);
            }
            let mut more = false;
            for i in 0..self.streams.len() {
                more |= self.pump(i);
            }
            if !more {
                break;
            }
        }
        for pipe in &mut self.streams {
            if let Some(chunk) = pipe.unwritten.take() {
                self.output.defer(pipe.fd(), chunk);
            }
        }
        if let Some(held) = self.held.take() {
            self.journal.send(held);
        }
    }
}
