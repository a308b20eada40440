//! Starting COMMAND: find it like `execvp(3)`, fork the child, which
//! fsyncs the store's directory, waits at the gate, and execs.
//!
//! The child is a plain `fork` of idem, held at a gate pipe until the claim
//! is written: it starts before the claim, so that the claim records it,
//! and if idem dies first, or loses the race for the key, the gate reads
//! EOF and the child exits without running COMMAND, so no child ever runs
//! unrecorded. What only the claim decides (`IDEM_ATTEMPT`,
//! `IDEM_FENCING_TOKEN`) comes through the gate. A file that is executable
//! but not a binary nor a `#!` script (exec fails with ENOEXEC) runs under
//! `/bin/sh`, as execvp(3) and env(1) do.
//!
//! Between its fork and its exec the child follows Rust std's discipline
//! for `Command::spawn` (`process_unix.rs`): idem may have had other
//! threads when it forked, whose locks (the allocator's among them) are
//! copied held, so the child only makes async-signal-safe calls on what
//! was built before the fork, allocates nothing, and can never unwind back
//! into idem's code (`ExitOnUnwind`). Like glibc's `posix_spawn`
//! (`spawni.c`) it hands COMMAND the caller's signal state, not idem's: any
//! handler back to its default, SIGPIPE too (idem ignores it for itself),
//! nothing blocked, and what the caller ignored (nohup's SIGHUP) still
//! ignored.

#![allow(unsafe_code)]

use super::watcher::{start_from_child, Post};
use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow};
use nix::unistd::{ForkResult, Pid};
use std::ffi::{CStr, CString, OsStr, OsString};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// COMMAND could not be started at all.
#[derive(Debug)]
pub enum SpawnError {
    NotFound(String),
    NotExecutable(String),
}

/// Variables idem sets for the child; inherited values never reach it.
const OWN_VARIABLES: [&str; 3] = ["IDEM_KEY", "IDEM_ATTEMPT", "IDEM_FENCING_TOKEN"];

/// Finds COMMAND like `execvp` would, so "not found" (127) and "not
/// executable" (126) are told apart before the child starts.
pub fn resolve(program: &OsStr) -> std::result::Result<PathBuf, SpawnError> {
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

/// The room a value sent through the gate has: an `i64` in decimal, its
/// sign and a NUL.
const SLOT: usize = 21;
/// The gate's message: one byte, then each late value in its slot.
const MAX_LATE: usize = 2;
const MESSAGE: usize = 1 + MAX_LATE * SLOT;
/// The room for a late variable, `NAME=VALUE` and its NUL, which the child
/// fills in on its stack once the gate has told it the value.
const LATE_ENTRY: usize = 64;

/// The exec arguments, built before the fork (the child must not allocate).
pub struct Exec {
    path: CString,
    /// What `argv_ptrs` points at.
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    /// `/bin/sh PATH ARGS…`, for a file exec refuses with ENOEXEC.
    shell_argv: Vec<*const libc::c_char>,
    /// What `env_ptrs` points at, but for the late variables.
    _env: Vec<CString>,
    /// The variables the gate gives values to, in order.
    late: Vec<&'static str>,
    /// `env` then one placeholder per late variable (the child points
    /// them at its entries), then the terminating null.
    env_ptrs: Vec<*const libc::c_char>,
}

/// The gate's message for `values` (at most `MAX_LATE`, each at most
/// `SLOT - 1` bytes): what the child puts in its late variables.
pub fn gate_message(values: &[String]) -> Vec<u8> {
    let mut message = vec![0u8; 1 + values.len() * SLOT];
    message[0] = b'x';
    for (i, value) in values.iter().enumerate() {
        let bytes = &value.as_bytes()[..value.len().min(SLOT - 1)];
        message[1 + i * SLOT..][..bytes.len()].copy_from_slice(bytes);
    }
    message
}

/// The descriptors the child rearranges before exec.
pub struct ChildFds<'a> {
    pub stdin: Option<BorrowedFd<'a>>,
    pub stdout: BorrowedFd<'a>,
    pub stderr: BorrowedFd<'a>,
    pub gate: BorrowedFd<'a>,
    /// idem's end of the gate: the child must close its inherited copy, or
    /// it would never see EOF when idem dies.
    pub gate_writer: BorrowedFd<'a>,
    /// Where a failed exec writes its errno (the pipe closes on success).
    pub status: BorrowedFd<'a>,
    /// A directory to fsync before exec (the store's).
    pub sync_dir: Option<BorrowedFd<'a>>,
    /// What the child starts its watcher with.
    pub watcher: Post<'a>,
}

const SHELL: &CStr = c"/bin/sh";

impl Exec {
    /// `extra` variables are set now; each of `late` gets its value through
    /// the gate (`gate_message`).
    pub fn prepare(
        path: &Path,
        argv: &[OsString],
        extra: &[(&str, OsString)],
        late: &[&'static str],
    ) -> Result<Exec> {
        anyhow::ensure!(late.len() <= MAX_LATE, "too many variables for the gate");
        anyhow::ensure!(
            late.iter().all(|name| name.len() + 1 + SLOT <= LATE_ENTRY),
            "a variable name too long for the gate"
        );
        let cstring = |bytes: &[u8]| CString::new(bytes).context("an argument holds a NUL byte");
        let path = cstring(path.as_os_str().as_bytes())?;
        let argv = argv
            .iter()
            .map(|a| cstring(a.as_bytes()))
            .collect::<Result<Vec<_>>>()?;
        let mut env = Vec::new();
        for (name, value) in std::env::vars_os() {
            let ours = |n: &&str| OsStr::new(n) == name;
            if OWN_VARIABLES.iter().any(ours)
                || extra.iter().map(|(n, _)| n).any(ours)
                || late.iter().any(ours)
            {
                continue;
            }
            let mut pair = name.as_bytes().to_vec();
            pair.push(b'=');
            pair.extend_from_slice(value.as_bytes());
            env.push(cstring(&pair)?);
        }
        for (name, value) in extra {
            let mut pair = name.as_bytes().to_vec();
            pair.push(b'=');
            pair.extend_from_slice(value.as_bytes());
            env.push(cstring(&pair)?);
        }
        let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|s| s.as_ptr()).collect();
        argv_ptrs.push(std::ptr::null());
        let mut shell_argv = vec![SHELL.as_ptr(), path.as_ptr()];
        shell_argv.extend_from_slice(&argv_ptrs[1..]);
        let mut env_ptrs: Vec<*const libc::c_char> = env.iter().map(|s| s.as_ptr()).collect();
        env_ptrs.extend(late.iter().map(|_| std::ptr::null()));
        env_ptrs.push(std::ptr::null());
        Ok(Exec {
            argv_ptrs,
            shell_argv,
            env_ptrs,
            path,
            _argv: argv,
            _env: env,
            late: late.to_vec(),
        })
    }

    /// Forks the child, which fsyncs `fds.sync_dir`, waits at the gate,
    /// then execs. Its memory is a copy of idem's: nothing here has to
    /// outlive this call.
    pub fn start(mut self, fds: &ChildFds<'_>) -> Result<Pid> {
        // SAFETY: the child runs `in_child` alone, which makes only
        // async-signal-safe calls on memory built before the fork, cannot
        // unwind, and never returns; the parent goes on normally.
        match unsafe { nix::unistd::fork() }.context("fork")? {
            ForkResult::Child => self.in_child(fds),
            ForkResult::Parent { child } => Ok(child),
        }
    }

    /// The child's side, from fork to exec. Never returns.
    fn in_child(&mut self, fds: &ChildFds<'_>) -> ! {
        let _guard = ExitOnUnwind;
        // Its own group (idem sets it too, so neither runs ahead of it).
        let _ = nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0));
        // The claim's last step to disk, done here while idem writes the
        // claim: first, as idem waits for it longest. An error is ignored,
        // as SQLite ignores it (a file system that cannot sync directories).
        if let Some(dir) = fds.sync_dir {
            let _ = nix::unistd::fsync(dir.as_raw_fd());
        }
        // The watcher, before the gate can let COMMAND start (should idem
        // die before then, the gate reads EOF). A child without one runs
        // nothing (reported like a failed exec).
        if let Err(errno) = start_from_child(&fds.watcher) {
            let _ = nix::unistd::write(fds.status, &(errno as i32).to_ne_bytes());
            exit(127);
        }
        let _ = nix::unistd::close(fds.watcher.write.as_raw_fd());
        default_dispositions();
        if let Some(stdin) = fds.stdin {
            let _ = nix::unistd::dup2(stdin.as_raw_fd(), 0);
        }
        let _ = nix::unistd::dup2(fds.stdout.as_raw_fd(), 1);
        let _ = nix::unistd::dup2(fds.stderr.as_raw_fd(), 2);
        // Wait until idem's claim has recorded this pid; EOF means idem
        // died first, or will not run COMMAND.
        let _ = nix::unistd::close(fds.gate_writer.as_raw_fd());
        let mut message = [0u8; MESSAGE];
        let wanted = 1 + self.late.len() * SLOT;
        let mut got = 0;
        while got < wanted {
            match nix::unistd::read(fds.gate.as_raw_fd(), &mut message[got..wanted]) {
                Ok(n) if n > 0 => got += n,
                Err(Errno::EINTR) => {}
                _ => exit(125),
            }
        }
        // Each late variable, `NAME=VALUE`, on this stack, which lasts
        // until exec.
        let mut entries = [[0u8; LATE_ENTRY]; MAX_LATE];
        let first_late = self.env_ptrs.len() - 1 - self.late.len();
        for (i, (name, entry)) in self.late.iter().zip(&mut entries).enumerate() {
            let value = &message[1 + i * SLOT..][..SLOT - 1];
            entry[..name.len()].copy_from_slice(name.as_bytes());
            entry[name.len()] = b'=';
            entry[name.len() + 1..][..value.len()].copy_from_slice(value);
            self.env_ptrs[first_late + i] = entry.as_ptr().cast();
        }
        // Last, so that no signal the caller blocked arrives before exec.
        let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
        // SAFETY: C strings and null-terminated arrays built in `prepare`,
        // the late entries on this stack; execve returns only on failure.
        unsafe {
            libc::execve(
                self.path.as_ptr(),
                self.argv_ptrs.as_ptr(),
                self.env_ptrs.as_ptr(),
            )
        };
        let mut errno = Errno::last_raw();
        if errno == libc::ENOEXEC {
            // SAFETY: as above.
            unsafe {
                libc::execve(
                    SHELL.as_ptr(),
                    self.shell_argv.as_ptr(),
                    self.env_ptrs.as_ptr(),
                )
            };
            errno = Errno::last_raw();
        }
        let _ = nix::unistd::write(fds.status, &errno.to_ne_bytes());
        exit(127);
    }
}

/// Gives every signal with a handler its default action back, and SIGPIPE
/// (ignored by idem for itself, see `process`), as `posix_spawn` does: a
/// disposition to ignore survives exec, a handler would not be there.
/// Dispositions idem inherited as ignored stay so.
fn default_dispositions() {
    for signal in 1..=libc::SIGRTMAX() {
        if signal == libc::SIGKILL || signal == libc::SIGSTOP {
            continue;
        }
        let mut old = std::mem::MaybeUninit::<libc::sigaction>::zeroed();
        // SAFETY: a null new action only reads the disposition into `old`,
        // which is large enough; on failure it is left zeroed (SIG_DFL).
        let handler = unsafe {
            libc::sigaction(signal, std::ptr::null(), old.as_mut_ptr());
            old.assume_init().sa_sigaction
        };
        let handled = handler != libc::SIG_DFL && handler != libc::SIG_IGN;
        if handled || signal == libc::SIGPIPE {
            let default = std::mem::MaybeUninit::<libc::sigaction>::zeroed();
            // SAFETY: all zero is SIG_DFL with an empty mask and no flags,
            // which installs no handler.
            unsafe { libc::sigaction(signal, default.as_ptr(), std::ptr::null_mut()) };
        }
    }
}

/// Ends the child without running anything of idem's on the way out (its
/// exit handlers and buffers are the parent's).
pub(super) fn exit(code: libc::c_int) -> ! {
    // SAFETY: _exit only ends the process, which is this forked child.
    unsafe { libc::_exit(code) }
}

/// Should anything in a forked child panic, it exits there: it must never
/// unwind into idem's code running in a copy of idem.
pub(super) struct ExitOnUnwind;

impl Drop for ExitOnUnwind {
    fn drop(&mut self) {
        exit(127);
    }
}
