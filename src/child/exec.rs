//! Starting COMMAND: find it like `execvp(3)`, fork, fsync the store's
//! directory, wait at the gate, exec.
//!
//! Everything the child needs is built before the fork, because between
//! fork and exec it may only call async-signal-safe functions. The child
//! is forked before the claim, so that the claim records it, and waits on
//! a gate pipe until the claim is written: if idem dies first, or loses
//! the race for the key, the gate reads EOF and the child exits without
//! running COMMAND, so no child ever runs unrecorded. What only the claim
//! decides (`IDEM_ATTEMPT`, `IDEM_FENCING_TOKEN`) comes through the gate,
//! into slots of the environment reserved before the fork. A file that is executable but
//! not a binary nor a `#!` script (exec fails with ENOEXEC) runs under
//! `/bin/sh`, as execvp(3) and env(1) do.

#![allow(unsafe_code)]

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::unistd::Pid;
use std::ffi::{CString, OsStr, OsString};
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
/// executable" (126) are told apart before the fork.
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

/// The exec arguments, built before the fork (the child must not allocate).
pub struct Exec {
    path: CString,
    argv: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    /// `/bin/sh PATH ARGS…`, for a file exec refuses with ENOEXEC.
    shell_argv: Vec<*const libc::c_char>,
    env: Vec<CString>,
    /// `NAME=` and `SLOT` NULs for each variable the gate fills in.
    late: Vec<Box<[u8]>>,
    /// Where each late value goes (inside `late`, which never moves).
    late_slots: Vec<*mut u8>,
    env_ptrs: Vec<*const libc::c_char>,
}

/// The gate's message for `values` (at most `MAX_LATE`, each at most
/// `SLOT - 1` bytes): what `Exec` writes into its late variables.
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
pub struct ChildFds {
    pub stdin: Option<i32>,
    pub stdout: i32,
    pub stderr: i32,
    pub gate: i32,
    /// idem's end of the gate: the child must close its inherited copy, or
    /// it would never see EOF when idem dies.
    pub gate_writer: i32,
    /// Where a failed exec writes its errno (the pipe closes on success).
    pub status: i32,
    /// A directory to fsync before exec (the store's).
    pub sync_dir: Option<i32>,
}

const SHELL: &std::ffi::CStr = c"/bin/sh";

impl Exec {
    /// `extra` variables are set now; each of `late` gets its value through
    /// the gate (`gate_message`).
    pub fn prepare(
        path: &Path,
        argv: &[OsString],
        extra: &[(&str, String)],
        late: &[&str],
    ) -> Result<Exec> {
        anyhow::ensure!(late.len() <= MAX_LATE, "too many variables for the gate");
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
            env.push(cstring(format!("{name}={value}").as_bytes())?);
        }
        let pointers = |v: &[CString]| {
            let mut p: Vec<*const libc::c_char> = v.iter().map(|s| s.as_ptr()).collect();
            p.push(std::ptr::null());
            p
        };
        let mut late: Vec<Box<[u8]>> = late
            .iter()
            .map(|name| {
                let mut entry = format!("{name}=").into_bytes();
                entry.resize(entry.len() + SLOT, 0);
                entry.into_boxed_slice()
            })
            .collect();
        let late_slots = late
            .iter_mut()
            .map(|entry| {
                let value = entry.len() - SLOT;
                entry[value..].as_mut_ptr()
            })
            .collect();
        let argv_ptrs = pointers(&argv);
        let mut shell_argv = vec![SHELL.as_ptr(), path.as_ptr()];
        shell_argv.extend_from_slice(&argv_ptrs[1..]);
        let mut env_ptrs = pointers(&env);
        env_ptrs.pop();
        env_ptrs.extend(
            late.iter()
                .map(|entry| entry.as_ptr().cast::<libc::c_char>()),
        );
        env_ptrs.push(std::ptr::null());
        Ok(Exec {
            argv_ptrs,
            shell_argv,
            env_ptrs,
            path,
            argv,
            env,
            late,
            late_slots,
        })
    }

    /// Forks the child, which waits at the gate, then execs.
    pub fn spawn(&self, fds: &ChildFds) -> Result<Pid> {
        // SAFETY: the child only calls async-signal-safe functions on memory
        // prepared before the fork (in_child); the parent goes on normally.
        match unsafe { libc::fork() } {
            -1 => Err(Errno::last()).context("fork"),
            // SAFETY: this is the freshly forked child that in_child requires.
            0 => unsafe { self.in_child(fds) },
            pid => Ok(Pid::from_raw(pid)),
        }
    }

    /// The child's side of the fork. Never returns.
    ///
    /// # Safety
    /// Must be called in a freshly forked child; uses only async-signal-safe
    /// calls on memory prepared before the fork.
    unsafe fn in_child(&self, fds: &ChildFds) -> ! {
        let _ = (&self.argv, &self.env, &self.late);
        libc::setpgid(0, 0);
        // Undo what idem changed for itself: the blocked signals, and Rust's
        // ignored SIGPIPE (ignored dispositions survive exec). Dispositions
        // idem inherited (nohup's ignored SIGHUP) pass through unchanged.
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        if let Some(stdin) = fds.stdin {
            libc::dup2(stdin, 0);
        }
        libc::dup2(fds.stdout, 1);
        libc::dup2(fds.stderr, 2);
        // The claim's last step to disk, done here while idem records this
        // pid. An error is ignored, as SQLite ignores it (a file system
        // that cannot sync directories).
        if let Some(dir) = fds.sync_dir {
            libc::fsync(dir);
        }
        // Wait until idem's claim has recorded this pid; EOF means idem
        // died first, or will not run COMMAND.
        libc::close(fds.gate_writer);
        let mut message = [0u8; MESSAGE];
        let wanted = 1 + self.late_slots.len() * SLOT;
        let mut got = 0;
        while got < wanted {
            let n = libc::read(fds.gate, message[got..].as_mut_ptr().cast(), wanted - got);
            if n > 0 {
                got += n as usize;
            } else if n < 0 && *libc::__errno_location() == libc::EINTR {
                continue;
            } else {
                libc::_exit(125);
            }
        }
        // This process's own copy of the slots (the fork copied them).
        for (i, slot) in self.late_slots.iter().enumerate() {
            std::ptr::copy_nonoverlapping(message[1 + i * SLOT..].as_ptr(), *slot, SLOT - 1);
        }
        libc::execve(
            self.path.as_ptr(),
            self.argv_ptrs.as_ptr(),
            self.env_ptrs.as_ptr(),
        );
        if *libc::__errno_location() == libc::ENOEXEC {
            libc::execve(
                SHELL.as_ptr(),
                self.shell_argv.as_ptr(),
                self.env_ptrs.as_ptr(),
            );
        }
        let errno = (*libc::__errno_location()).to_ne_bytes();
        libc::write(fds.status, errno.as_ptr().cast(), 4);
        libc::_exit(127);
    }
}
