//! Running the child: spawn, tee and capture its output, forward signals,
//! enforce `--timeout`.
//!
//! The child gets its own process group, so idem can signal everything it
//! started and tell later whether any of it still runs. Between fork and
//! exec the child waits on a gate pipe until idem has recorded its pid in
//! the store: if idem dies first, the gate reads EOF and the child exits
//! without running COMMAND, so no child ever runs unrecorded.
//!
//! One thread does everything with `poll`: the two output pipes, a signalfd
//! for SIGCHLD and the forwarded signals, and the timers (timeout, lease
//! renewal). Linux is the supported platform (signalfd, /proc).

#![allow(unsafe_code)]

use crate::owner::{group_alive, start_time, ChildId};
use crate::store::{Captured, Chunk, Stream};
use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, sigprocmask, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{getpgrp, isatty, pipe2, tcgetpgrp, tcsetpgrp, Pid};
use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Signals idem passes on to the child's group.
const FORWARDED: [Signal; 4] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
];
/// Grace between SIGTERM and SIGKILL at `--timeout`.
const KILL_AFTER: Duration = Duration::from_secs(5);
/// After the child exits, how long quiet pipes held by no process of its
/// group may stay open before idem stops reading them.
const LINGER: Duration = Duration::from_millis(100);

/// What to run and how.
pub struct Spec<'a> {
    pub argv: &'a [OsString],
    pub env: Vec<(&'a str, String)>,
    /// Replaces the inherited stdin (the spool of `--fingerprint-stdin`).
    pub stdin: Option<File>,
    pub max_output: u64,
    pub timeout: Option<Duration>,
}

/// How the child ended.
#[derive(Debug)]
pub struct Finished {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub stdout: Captured,
    pub stderr: Captured,
}

impl Finished {
    pub fn succeeded(&self) -> bool {
        self.exit_code == Some(0) && self.signal.is_none() && !self.timed_out
    }
}

/// COMMAND could not be started at all.
#[derive(Debug)]
pub enum SpawnError {
    NotFound(String),
    NotExecutable(String),
}

/// Callbacks into the caller while the child lives.
pub trait Supervisor {
    /// The child exists but has not exec'd yet: record it. An error kills
    /// the child before COMMAND starts.
    fn started(&mut self, child: ChildId) -> Result<()>;
    /// Called every `tick_every` while the child runs (lease renewal).
    fn tick(&mut self);
    /// Output to store, in the order it was read, already cut at the cap.
    fn journal(&mut self, chunks: &[Chunk<'_>]) -> Result<()>;
    fn tick_every(&self) -> Option<Duration>;
}

/// Runs `spec` to the end. Blocks the forwarded signals in this thread for
/// as long as it runs; call it before starting other threads.
pub fn run(
    spec: &Spec<'_>,
    supervisor: &mut dyn Supervisor,
) -> Result<std::result::Result<Finished, SpawnError>> {
    let program = match resolve(&spec.argv[0]) {
        Ok(path) => path,
        Err(e) => return Ok(Err(e)),
    };
    let exec = Exec::prepare(&program, spec.argv, &spec.env)?;

    let mut mask = SigSet::empty();
    for sig in FORWARDED {
        mask.add(sig);
    }
    mask.add(Signal::SIGCHLD);
    mask.add(Signal::SIGTTOU);
    let mut old_mask = SigSet::empty();
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), Some(&mut old_mask))
        .context("block signals")?;
    let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .context("signalfd")?;
    let result = supervise(spec, &exec, &signals, supervisor);
    drop(signals);
    // Signals that arrived while blocked are acted on (forwarded) already.
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&old_mask), None);
    result
}

fn supervise(
    spec: &Spec<'_>,
    exec: &Exec,
    signals: &SignalFd,
    supervisor: &mut dyn Supervisor,
) -> Result<std::result::Result<Finished, SpawnError>> {
    let (out_r, out_w) = pipe2(OFlag::O_CLOEXEC).context("pipe")?;
    let (err_r, err_w) = pipe2(OFlag::O_CLOEXEC).context("pipe")?;
    let (gate_r, gate_w) = pipe2(OFlag::O_CLOEXEC).context("pipe")?;
    let (status_r, status_w) = pipe2(OFlag::O_CLOEXEC).context("pipe")?;
    let stdin_fd = spec.stdin.as_ref().map(AsRawFd::as_raw_fd);

    // SAFETY: idem has no other threads here, and the child only calls
    // async-signal-safe functions on memory prepared before the fork.
    let pid = match unsafe { libc::fork() } {
        -1 => return Err(Errno::last()).context("fork"),
        // SAFETY: this is the freshly forked child that in_child requires.
        0 => unsafe {
            exec.in_child(&ChildFds {
                stdin: stdin_fd,
                stdout: out_w.as_raw_fd(),
                stderr: err_w.as_raw_fd(),
                gate: gate_r.as_raw_fd(),
                gate_writer: gate_w.as_raw_fd(),
                status: status_w.as_raw_fd(),
            })
        },
        pid => Pid::from_raw(pid),
    };
    // Both sides set the group, so neither can run ahead of it.
    let _ = nix::unistd::setpgid(pid, pid);
    drop((out_w, err_w, gate_r, status_w));

    let child = ChildId {
        pid: i64::from(pid.as_raw()),
        pgid: i64::from(pid.as_raw()),
        start: start_time(i64::from(pid.as_raw())).unwrap_or(0),
    };
    if let Err(e) = supervisor.started(child) {
        let _ = kill(pid, Signal::SIGKILL);
        let _ = waitpid(pid, None);
        return Err(e);
    }
    let terminal = Terminal::hand_to(pid, spec.stdin.is_none());
    // Open the gate: COMMAND may start now.
    File::from(gate_w)
        .write_all(b"x")
        .context("open the gate")?;

    if let Some(errno) = read_exec_status(status_r) {
        let _ = waitpid(pid, None);
        drop(terminal);
        let name = spec.argv[0].to_string_lossy().into_owned();
        return Ok(Err(match Errno::from_raw(errno) {
            Errno::ENOENT => SpawnError::NotFound(name),
            e => SpawnError::NotExecutable(format!("{name}: {}", e.desc())),
        }));
    }

    let mut out = Tee::new(out_r, Stream::Stdout, spec.max_output);
    let mut err = Tee::new(err_r, Stream::Stderr, spec.max_output);
    let started = Instant::now();
    let timeout_at = spec.timeout.map(|t| started + t);
    let mut kill_at = None;
    let mut timed_out = false;
    let mut status = None;
    let mut reaped_at = None;
    let mut last_data = Instant::now();
    let mut next_tick = supervisor.tick_every().map(|every| started + every);

    loop {
        let now = Instant::now();
        if status.is_some() && out.done() && err.done() {
            break;
        }
        if let Some(reaped) = reaped_at {
            let quiet = now.duration_since(last_data.max(reaped)) >= LINGER;
            if quiet && !group_alive(i64::from(pid.as_raw())) {
                break;
            }
        }
        if timeout_at.is_some_and(|at| now >= at) && !timed_out && status.is_none() {
            timed_out = true;
            let _ = kill(Pid::from_raw(-pid.as_raw()), Signal::SIGTERM);
            kill_at = Some(now + KILL_AFTER);
        }
        if kill_at.is_some_and(|at| now >= at) {
            let _ = kill(Pid::from_raw(-pid.as_raw()), Signal::SIGKILL);
            kill_at = None;
        }
        if next_tick.is_some_and(|at| now >= at) {
            supervisor.tick();
            next_tick = supervisor.tick_every().map(|every| Instant::now() + every);
        }

        let deadlines = [
            timeout_at.filter(|_| !timed_out && status.is_none()),
            kill_at,
            next_tick,
            reaped_at.map(|_| now + LINGER),
        ];
        let wait = deadlines
            .iter()
            .flatten()
            .map(|at| at.saturating_duration_since(now))
            .min();
        let timeout = match wait {
            Some(d) => PollTimeout::try_from(d.as_millis().min(60_000) as i32 + 1)
                .unwrap_or(PollTimeout::MAX),
            None => PollTimeout::NONE,
        };

        let mut fds = vec![PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
        let out_at = out.poll_fd().map(|fd| {
            fds.push(PollFd::new(fd, PollFlags::POLLIN));
            fds.len() - 1
        });
        let err_at = err.poll_fd().map(|fd| {
            fds.push(PollFd::new(fd, PollFlags::POLLIN));
            fds.len() - 1
        });
        match poll(&mut fds, timeout) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(e).context("poll"),
        }
        let ready = |i: Option<usize>| {
            i.and_then(|i| fds[i].revents())
                .is_some_and(|r| !r.is_empty())
        };
        let (sig_ready, out_ready, err_ready) = (ready(Some(0)), ready(out_at), ready(err_at));
        drop(fds);

        for (ready, tee) in [(out_ready, &mut out), (err_ready, &mut err)] {
            let stream = tee.stream;
            if let Some(kept) = ready.then(|| tee.pump()).flatten() {
                last_data = Instant::now();
                if !kept.is_empty() {
                    let chunk = Chunk {
                        stream,
                        bytes: kept,
                    };
                    supervisor.journal(&[chunk])?;
                }
            }
        }
        if sig_ready {
            while let Ok(Some(info)) = signals.read_signal() {
                let sig = Signal::try_from(info.ssi_signo as i32).ok();
                match sig {
                    Some(Signal::SIGCHLD) | None => {}
                    Some(sig) => {
                        let _ = kill(Pid::from_raw(-pid.as_raw()), sig);
                    }
                }
            }
        }
        if status.is_none() {
            match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, code)) => status = Some((Some(code), None)),
                Ok(WaitStatus::Signaled(_, sig, _)) => status = Some((None, Some(sig as i32))),
                Ok(_) => {}
                Err(e) => return Err(e).context("wait for the child"),
            }
            if status.is_some() {
                reaped_at = Some(Instant::now());
                kill_at = kill_at.filter(|_| group_alive(i64::from(pid.as_raw())));
            }
        }
    }
    drop(terminal);
    let (exit_code, signal) = status.unwrap_or((None, None));
    Ok(Ok(Finished {
        exit_code,
        signal,
        timed_out,
        stdout: out.captured(),
        stderr: err.captured(),
    }))
}

/// Reads the child's exec report and closes the pipe: EOF means exec
/// succeeded, four bytes are the errno of a failed exec.
fn read_exec_status(status_r: OwnedFd) -> Option<i32> {
    let mut bytes = [0u8; 4];
    let report = File::from(status_r).read_exact(&mut bytes);
    report.ok().map(|()| i32::from_ne_bytes(bytes))
}

/// Finds COMMAND like `execvp` would, so "not found" (127) and "not
/// executable" (126) are told apart before the fork.
fn resolve(program: &OsStr) -> std::result::Result<PathBuf, SpawnError> {
    let name = program.to_string_lossy().into_owned();
    if program.is_empty() {
        return Err(SpawnError::NotFound(name));
    }
    if program.as_bytes().contains(&b'/') {
        let path = Path::new(program);
        return match path.metadata() {
            Err(_) => Err(SpawnError::NotFound(name)),
            Ok(m) if m.is_dir() => {
                Err(SpawnError::NotExecutable(format!("{name}: is a directory")))
            }
            Ok(_) if !executable(path) => Err(SpawnError::NotExecutable(format!(
                "{name}: permission denied"
            ))),
            Ok(_) => Ok(path.to_owned()),
        };
    }
    let search = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    let mut not_executable = None;
    for dir in std::env::split_paths(&search) {
        let dir = if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir
        };
        let candidate = dir.join(program);
        match candidate.metadata() {
            Ok(m) if m.is_file() && executable(&candidate) => return Ok(candidate),
            Ok(m) if m.is_file() => not_executable = Some(format!("{name}: permission denied")),
            _ => {}
        }
    }
    Err(not_executable.map_or(SpawnError::NotFound(name), SpawnError::NotExecutable))
}

fn executable(path: &Path) -> bool {
    nix::unistd::access(path, nix::unistd::AccessFlags::X_OK).is_ok()
}

/// The exec arguments, built before the fork (the child must not allocate).
struct Exec {
    path: CString,
    argv: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    env: Vec<CString>,
    env_ptrs: Vec<*const libc::c_char>,
}

struct ChildFds {
    stdin: Option<i32>,
    stdout: i32,
    stderr: i32,
    gate: i32,
    /// idem's end of the gate: the child must close its inherited copy, or
    /// it would never see EOF when idem dies.
    gate_writer: i32,
    status: i32,
}

impl Exec {
    fn prepare(path: &Path, argv: &[OsString], extra: &[(&str, String)]) -> Result<Exec> {
        let cstring = |bytes: &[u8]| CString::new(bytes).context("an argument holds a NUL byte");
        let path = cstring(path.as_os_str().as_bytes())?;
        let argv = argv
            .iter()
            .map(|a| cstring(a.as_bytes()))
            .collect::<Result<Vec<_>>>()?;
        let mut env = Vec::new();
        for (name, value) in std::env::vars_os() {
            if extra.iter().any(|(n, _)| OsStr::new(n) == name) {
                continue;
            }
            let mut pair = name.as_bytes().to_vec();
            pair.push(b'=');
            pair.extend_from_slice(value.as_bytes());
            env.push(cstring(&pair)?);
        }
        for (name, value) in extra {
            env.push(cstring(format!("{name}={value}").as_bytes())?);
        }
        let pointers = |v: &[CString]| {
            let mut p: Vec<*const libc::c_char> = v.iter().map(|s| s.as_ptr()).collect();
            p.push(std::ptr::null());
            p
        };
        Ok(Exec {
            argv_ptrs: pointers(&argv),
            env_ptrs: pointers(&env),
            path,
            argv,
            env,
        })
    }

    /// The child's side of the fork. Never returns.
    ///
    /// # Safety
    /// Must be called in a freshly forked child; uses only async-signal-safe
    /// calls on memory prepared before the fork.
    unsafe fn in_child(&self, fds: &ChildFds) -> ! {
        let _ = (&self.argv, &self.env);
        libc::setpgid(0, 0);
        // Undo what idem changed for itself: the blocked signals, and Rust's
        // ignored SIGPIPE (ignored dispositions survive exec).
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        if let Some(stdin) = fds.stdin {
            libc::dup2(stdin, 0);
        }
        libc::dup2(fds.stdout, 1);
        libc::dup2(fds.stderr, 2);
        // Wait until idem has recorded this pid; EOF means idem died first.
        libc::close(fds.gate_writer);
        let mut byte = 0u8;
        loop {
            let n = libc::read(fds.gate, std::ptr::addr_of_mut!(byte).cast(), 1);
            if n == 1 {
                break;
            }
            if n < 0 && *libc::__errno_location() == libc::EINTR {
                continue;
            }
            libc::_exit(125);
        }
        libc::execve(
            self.path.as_ptr(),
            self.argv_ptrs.as_ptr(),
            self.env_ptrs.as_ptr(),
        );
        let errno = (*libc::__errno_location()).to_ne_bytes();
        libc::write(fds.status, errno.as_ptr().cast(), 4);
        libc::_exit(127);
    }
}

/// Copies one of the child's streams to idem's own and hands up to `cap`
/// bytes of it on for storing. A closed reader on idem's side stops the
/// copying, never the capture, and never the child.
struct Tee {
    pipe: Option<OwnedFd>,
    stream: Stream,
    target: i32,
    target_open: bool,
    cap: u64,
    captured: Captured,
    buf: Vec<u8>,
}

impl Tee {
    fn new(pipe: OwnedFd, stream: Stream, cap: u64) -> Tee {
        Tee {
            pipe: Some(pipe),
            stream,
            target: match stream {
                Stream::Stdout => 1,
                Stream::Stderr => 2,
            },
            target_open: true,
            cap,
            captured: Captured::default(),
            buf: vec![0; 64 * 1024],
        }
    }

    fn done(&self) -> bool {
        self.pipe.is_none()
    }

    fn poll_fd(&self) -> Option<BorrowedFd<'_>> {
        self.pipe.as_ref().map(AsFd::as_fd)
    }

    /// Moves one chunk; when data arrived, returns the part to store.
    fn pump(&mut self) -> Option<&[u8]> {
        let Some(pipe) = &self.pipe else { return None };
        let n = loop {
            match nix::unistd::read(pipe.as_raw_fd(), &mut self.buf) {
                Ok(n) => break n,
                Err(Errno::EINTR) => {}
                Err(_) => break 0,
            }
        };
        if n == 0 {
            self.pipe = None;
            return None;
        }
        let chunk = &self.buf[..n];
        if self.target_open {
            self.target_open = write_all_fd(self.target, chunk);
        }
        let room =
            usize::try_from(self.cap.saturating_sub(self.captured.len)).unwrap_or(usize::MAX);
        if chunk.len() > room {
            self.captured.truncated = true;
        }
        let kept = &chunk[..chunk.len().min(room)];
        self.captured.len += kept.len() as u64;
        Some(kept)
    }

    fn captured(self) -> Captured {
        self.captured
    }
}

/// Writes all of `bytes` to a raw fd; false once the reader is gone.
fn write_all_fd(fd: i32, mut bytes: &[u8]) -> bool {
    // SAFETY: fds 1 and 2 stay open for idem's whole life.
    let target = unsafe { BorrowedFd::borrow_raw(fd) };
    while !bytes.is_empty() {
        match nix::unistd::write(target, bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(Errno::EINTR | Errno::EAGAIN) => {}
            Err(_) => return false,
        }
    }
    true
}

/// Gives the terminal's foreground to the child's group while it runs, so
/// Ctrl-C reaches it once (and not via idem as well), and takes it back.
struct Terminal {
    ours: Option<Pid>,
}

impl Terminal {
    fn hand_to(child: Pid, stdin_inherited: bool) -> Terminal {
        let stdin = std::io::stdin();
        let fd = stdin.as_fd();
        let foreground = stdin_inherited
            && isatty(fd.as_raw_fd()).unwrap_or(false)
            && tcgetpgrp(fd).is_ok_and(|fg| fg == getpgrp());
        if foreground && tcsetpgrp(fd, child).is_ok() {
            return Terminal {
                ours: Some(getpgrp()),
            };
        }
        Terminal { ours: None }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        if let Some(group) = self.ours {
            // SIGTTOU is blocked, so a background idem may take it back.
            let _ = tcsetpgrp(std::io::stdin().as_fd(), group);
        }
    }
}
