//! The command dies with its guard (SPEC "Crashed owners"): whatever ends
//! idem, SIGKILL and the OOM killer included, COMMAND's whole process group
//! is SIGKILLed at once, and on SQLite the owner's lock is let go only once
//! that group is gone.
//!
//! Nothing inside a process outlives its SIGKILL, so this is done from
//! outside: the watcher, started by the gated child first thing after its
//! fork, while idem goes on to its claim, as a copy of it that is idem's
//! child (`CLONE_PARENT`). It holds the read end of a pipe from idem; EOF
//! without the stand-down byte (idem died, or gave up before recording an
//! outcome) makes it SIGKILL the group, wait until no live process is left
//! in it (bounded, polled), and exit. `PR_SET_PDEATHSIG` is its second
//! line, should anything else hold the pipe open. It blocks every
//! catchable signal and has a process group of its own, out of COMMAND's
//! and out of idem's, so that neither a Ctrl-C to the foreground job nor
//! a `kill -9 %1` of that job (idem's group) reaches it. It keeps no
//! descriptor but the pipe and what it is given to keep (SQLite's owner
//! lock file, whose lock is on the open file description the watcher
//! shares, so the kernel releases it only when both idem and the watcher
//! are gone), and unmaps what its copy of idem's memory maps shared
//! (SQLite's `-shm`).
//!
//! Why a forked watcher: the kernel kills no group when a parent dies
//! (`PR_SET_PDEATHSIG` on COMMAND itself would reach its leader only, and
//! COMMAND may reset it), a subreaper must be an ancestor of the group,
//! and a helper binary would cost an exec on every first run. A fork needs
//! no exec: it is idem's own small code, running only async-signal-safe
//! calls (idem may have had threads when it forked, see `exec`). Forked
//! by the gated child, it costs idem nothing on its way to the claim (a
//! fork of idem is ~60 us), and the watcher is still idem's own child,
//! which `PR_SET_PDEATHSIG` needs.

#![allow(unsafe_code)]

use super::exec::{exit, ExitOnUnwind};
use crate::owner::proc_stat;
use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::fcntl::{open, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{killpg, sigprocmask, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::stat::Mode;
use nix::unistd::{getppid, pipe2, Pid};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long the watcher waits for a SIGKILLed group to be gone before it
/// exits anyway (a process stuck in the kernel, say on a dead NFS server).
const GONE_PATIENCE: Duration = Duration::from_secs(5);
/// The longest pause between two looks at the group.
const LOOK_EVERY: Duration = Duration::from_millis(10);
/// How often a watcher that stood down looks whether idem has exited,
/// should `PR_SET_PDEATHSIG` not wake it.
const LOOK_IDLE_MS: u16 = 1000;
/// What the kernel sends the watcher when idem dies: blocked like every
/// signal, read from a signalfd, and believed only if idem is gone.
const PARENT_DIED: Signal = Signal::SIGUSR1;
/// How long `stand_down` waits for the watcher to go.
const STAND_DOWN_PATIENCE: Duration = Duration::from_secs(1);
/// What `stand_down` writes.
const STAND_DOWN: u8 = b'x';

/// The watcher of one run's child, from before the claim until the outcome
/// is recorded; dropped without `stand_down`, it kills the child's group.
pub struct Guard {
    /// Kept open by the watcher until the group is gone.
    keep: Option<OwnedFd>,
    watcher: Mutex<Option<OwnedFd>>,
}

impl Guard {
    /// `keep` is a descriptor the watcher holds until COMMAND's group is
    /// gone: SQLite's owner lock file (`Store::owner_lock`).
    pub fn new(keep: Option<OwnedFd>) -> Guard {
        Guard {
            keep,
            watcher: Mutex::new(None),
        }
    }

    /// The pipe to the watcher, made before the gated child is forked;
    /// the child starts the watcher (`start_from_child`), then idem keeps
    /// the write end (`arm`).
    pub(super) fn line(&self) -> Result<Line> {
        let (read, write) = pipe2(OFlag::O_CLOEXEC).context("pipe")?;
        Ok(Line {
            read,
            write,
            idem: nix::unistd::getpid(),
        })
    }

    /// The gated child exists, and with it the watcher: idem keeps the
    /// line's write end until it stands the watcher down or dies.
    pub(super) fn arm(&self, line: Line) {
        *self.watcher.lock().unwrap_or_else(PoisonError::into_inner) = Some(line.write);
    }

    /// What the gated child hands its watcher.
    pub(super) fn post<'a>(&'a self, line: &'a Line) -> Post<'a> {
        Post {
            read: line.read.as_fd(),
            write: line.write.as_fd(),
            keep: self.keep.as_ref().map(AsFd::as_fd),
            idem: line.idem,
        }
    }

    /// The outcome is recorded: the watcher exits and leaves the group
    /// alone (what is left of it is no longer the run's). Returns once it
    /// has let go of its files (bounded by `STAND_DOWN_PATIENCE`), so that
    /// idem leaves nothing of its own open behind it (a `mount -o
    /// remount,ro` of the store's file system right after idem exited
    /// failed with EBUSY while the watcher still held the lock file). The
    /// watcher itself exits only after idem (`outlive`), and is reaped by
    /// whoever reaps idem's orphans.
    pub fn stand_down(&self) {
        if let Some(line) = self
            .watcher
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            let _ = nix::unistd::write(&line, &[STAND_DOWN]);
            // The watcher holds the only read end: when it exits, the
            // kernel closes it and poll reports POLLERR on ours (it does
            // whatever events are asked for).
            let mut fds = [PollFd::new(line.as_fd(), PollFlags::empty())];
            let patience = PollTimeout::try_from(STAND_DOWN_PATIENCE).unwrap_or(PollTimeout::MAX);
            let _ = poll(&mut fds, patience);
        }
    }
}

/// The pipe from idem to the watcher.
pub(super) struct Line {
    read: OwnedFd,
    write: OwnedFd,
    idem: Pid,
}

/// What the gated child passes on to its watcher.
pub(super) struct Post<'a> {
    read: BorrowedFd<'a>,
    /// idem's end, closed in the gated child once the watcher exists.
    pub(super) write: BorrowedFd<'a>,
    keep: Option<BorrowedFd<'a>>,
    idem: Pid,
}

/// In the gated child, before anything else: starts the watcher of the
/// child's group-to-be (its pid) as idem's child, not its own (COMMAND
/// must not find a child it did not start).
pub(super) fn start_from_child(post: &Post<'_>) -> std::result::Result<(), Errno> {
    let group = nix::unistd::getpid();
    // SAFETY: a fork (no CLONE_VM: the new process gets a copy of this
    // memory and goes on on a copy of this stack) whose parent is this
    // process's parent; the new process runs `watch` alone, which makes
    // only async-signal-safe calls and never returns.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            libc::CLONE_PARENT | libc::SIGCHLD,
            0,
            0,
            0,
            0,
        )
    };
    match pid {
        -1 => Err(Errno::last()),
        0 => watch(post.idem, group, post.read, post.keep),
        _ => Ok(()),
    }
}

/// The watcher's life. Never returns.
fn watch(parent: Pid, group: Pid, line: BorrowedFd<'_>, keep: Option<BorrowedFd<'_>>) -> ! {
    let _guard = ExitOnUnwind;
    // No signal may end it or stop it; SIGKILL and SIGSTOP cannot be
    // blocked, and are not sent to its group by whoever signals a job.
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::all()), None);
    let _ = nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0));
    close_all_but(
        line.as_raw_fd(),
        keep.map_or(line.as_raw_fd(), |keep| keep.as_raw_fd()),
    );
    unmap_shared();
    let _ = nix::sys::prctl::set_name(c"idem-watcher");
    let _ = nix::sys::prctl::set_pdeathsig(PARENT_DIED);
    let death = SignalFd::with_flags(&SigSet::from(PARENT_DIED), SfdFlags::SFD_CLOEXEC).ok();
    // idem may have died before the line above.
    while getppid() == parent {
        let mut fds = poll_fds(line, death.as_ref());
        if let Err(e) = poll(&mut fds, PollTimeout::NONE) {
            // Not a reason to kill a healthy run: look again shortly.
            if e != Errno::EINTR {
                std::thread::sleep(LOOK_EVERY);
            }
            continue;
        }
        let [told, signalled] = [0, 1].map(|i| {
            fds.get(i)
                .and_then(|fd| fd.revents())
                .is_some_and(|r| !r.is_empty())
        });
        if told {
            let mut byte = [0u8];
            match nix::unistd::read(line.as_raw_fd(), &mut byte) {
                Ok(1) if byte[0] == STAND_DOWN => {
                    // The lock file first, the line last: idem returns
                    // once the line closes, and leaves nothing of its own
                    // open on the store's file system.
                    if let Some(keep) = keep {
                        let _ = nix::unistd::close(keep.as_raw_fd());
                    }
                    let _ = nix::unistd::close(line.as_raw_fd());
                    outlive(parent, death.as_ref())
                }
                Err(Errno::EINTR | Errno::EAGAIN) => {}
                _ => break,
            }
        }
        if signalled {
            if let Some(death) = &death {
                let _ = death.read_signal();
            }
        }
    }
    kill_group(group);
    exit(0);
}

/// Stood down: exits once idem has. Its exit tears down a copy of idem's
/// memory, which takes about 0.1 ms; done now, it would run on idem's
/// processor (a pipe's wake-up brings the watcher there) while idem waits
/// to be scheduled, on every first run. The watcher holds nothing of the
/// run by now; `PR_SET_PDEATHSIG` wakes it when idem exits, and it looks
/// at least every `LOOK_IDLE_MS` whatever happens.
fn outlive(parent: Pid, death: Option<&SignalFd>) -> ! {
    while getppid() == parent {
        match death {
            Some(death) => {
                let mut fds = [PollFd::new(death.as_fd(), PollFlags::POLLIN)];
                let _ = poll(&mut fds, PollTimeout::from(LOOK_IDLE_MS));
            }
            None => std::thread::sleep(Duration::from_millis(LOOK_IDLE_MS.into())),
        }
    }
    exit(0)
}

/// The descriptors to poll, in a fixed array (no allocation): the line,
/// then the signalfd when there is one (else the line again).
fn poll_fds<'a>(line: BorrowedFd<'a>, death: Option<&'a SignalFd>) -> [PollFd<'a>; 2] {
    let second = death.map_or(line, AsFd::as_fd);
    [
        PollFd::new(line, PollFlags::POLLIN),
        PollFd::new(second, PollFlags::POLLIN),
    ]
}

/// Closes every descriptor but `a` and `b` (which may be the same): the
/// watcher holds none of idem's pipes, files or sockets open.
fn close_all_but(a: RawFd, b: RawFd) {
    let (low, high) = (a.min(b).unsigned_abs(), a.max(b).unsigned_abs());
    let ranges = [
        (0, low.checked_sub(1)),
        (low + 1, high.checked_sub(1)),
        (high + 1, Some(u32::MAX)),
    ];
    for (first, last) in ranges {
        let Some(last) = last.filter(|&last| last >= first) else {
            continue;
        };
        // SAFETY: closes descriptors only; none of them is used again by
        // this process, which never returns to the code that owns them.
        if unsafe { libc::close_range(first, last, 0) } != 0 {
            // Before Linux 5.9: the usual range, one by one.
            for fd in first..=last.min(1023) {
                let _ = nix::unistd::close(fd as RawFd);
            }
        }
    }
}

/// Unmaps every shared mapping the watcher inherited: SQLite's `-shm`,
/// mapped for writing, holds the store's file system as an open file would
/// (a `mount -o remount,ro` fails with EBUSY) for as long as the watcher
/// lives, which is until after idem exits. Read from /proc/self/maps with
/// buffers on the stack; at most `MOST` mappings, which idem never nears.
fn unmap_shared() {
    const MOST: usize = 16;
    let Ok(maps) = open(
        c"/proc/self/maps",
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) else {
        return;
    };
    let mut shared = [(0usize, 0usize); MOST];
    let mut found = 0;
    // Whole lines only: what is left of a line waits for the next read.
    let mut text = [0u8; 4096];
    let mut kept = 0;
    while let Ok(n @ 1..) = nix::unistd::read(maps, &mut text[kept..]) {
        let end = kept + n;
        let mut at = 0;
        while let Some(length) = text[at..end].iter().position(|&b| b == b'\n') {
            if let (Some(range), Some(room)) =
                (shared_range(&text[at..at + length]), shared.get_mut(found))
            {
                *room = range;
                found += 1;
            }
            at += length + 1;
        }
        text.copy_within(at..end, 0);
        kept = end - at;
        if kept == text.len() {
            break;
        }
    }
    let _ = nix::unistd::close(maps);
    for &(start, end) in &shared[..found] {
        // SAFETY: unmaps a shared mapping of idem's copy, which nothing in
        // the watcher uses (it runs its own code on its own stack and heap).
        unsafe { libc::munmap(start as *mut libc::c_void, end - start) };
    }
}

/// The address range of a line of /proc/PID/maps that maps something
/// shared (`start-end rw-s …`).
fn shared_range(line: &[u8]) -> Option<(usize, usize)> {
    let mut fields = line.split(|&b| b == b' ');
    let range = fields.next()?;
    let perms = fields.next()?;
    if perms.get(3) != Some(&b's') {
        return None;
    }
    let hex = |digits: &[u8]| {
        digits.iter().try_fold(0usize, |n, &d| {
            let digit = char::from(d).to_digit(16)?;
            n.checked_mul(16)?.checked_add(digit as usize)
        })
    };
    let dash = range.iter().position(|&b| b == b'-')?;
    Some((hex(&range[..dash])?, hex(&range[dash + 1..])?))
}

/// SIGKILLs `group` until no live process is left in it, or
/// `GONE_PATIENCE` has passed. Zombies do not count: where PID 1 reaps no
/// orphans (many containers) they stay for ever, and run nothing.
fn kill_group(group: Pid) {
    let deadline = Instant::now() + GONE_PATIENCE;
    let mut pause = Duration::from_millis(1);
    // Again at every look: a process forked while the first went out.
    while killpg(group, Signal::SIGKILL) != Err(Errno::ESRCH)
        && has_live_member(group)
        && Instant::now() < deadline
    {
        std::thread::sleep(pause);
        pause = (pause * 2).min(LOOK_EVERY);
    }
}

/// Whether any process of `group` runs (is not a zombie), read from /proc
/// with buffers on the stack. Without /proc: while it can be signalled.
fn has_live_member(group: Pid) -> bool {
    let Ok(dir) = open(
        c"/proc",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) else {
        return true;
    };
    let mut entries = [0u8; 4096];
    let mut live = false;
    'read: loop {
        // SAFETY: getdents64 writes at most `entries.len()` bytes into it.
        let n = unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                dir,
                entries.as_mut_ptr(),
                entries.len(),
            )
        };
        let Ok(n) = usize::try_from(n) else { break };
        if n == 0 {
            break;
        }
        // Each entry: inode (8 bytes), offset (8), its length (2), type
        // (1), then the name and a NUL.
        let mut at = 0;
        while let Some(entry) = entries.get(at..n) {
            let Some(&[lo, hi]) = entry.get(16..18) else {
                break;
            };
            let length = usize::from(u16::from_ne_bytes([lo, hi]));
            let name = entry.get(19..length.max(19)).unwrap_or_default();
            let name = name.split(|&b| b == 0).next().unwrap_or_default();
            if !name.is_empty()
                && name.iter().all(u8::is_ascii_digit)
                && is_live_member(name, group)
            {
                live = true;
                break 'read;
            }
            if length == 0 {
                break;
            }
            at += length;
        }
    }
    let _ = nix::unistd::close(dir);
    live
}

/// Whether process `pid` (its digits) is a live member of `group`.
fn is_live_member(pid: &[u8], group: Pid) -> bool {
    let pid = pid.iter().try_fold(0i64, |n, &d| {
        n.checked_mul(10)?.checked_add(i64::from(d - b'0'))
    });
    pid.and_then(proc_stat)
        .is_some_and(|s| s.pgrp == i64::from(group.as_raw()) && s.state != 'Z')
}
