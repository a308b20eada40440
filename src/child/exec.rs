//! Starting COMMAND: find it like `execvp(3)`, fork, fsync the store's
//! directory, wait at the gate, exec.
//!
//! Everything the child needs is built before the fork, because between
//! fork and exec it may only call async-signal-safe functions. The child
//! waits on a gate pipe until idem has recorded its pid in the store: if
//! idem dies first, the gate reads EOF and the child exits without running
//! COMMAND, so no child ever runs unrecorded. A file that is executable but
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

/// The exec arguments, built before the fork (the child must not allocate).
pub struct Exec {
    path: CString,
    argv: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    /// `/bin/sh PATH ARGS…`, for a file exec refuses with ENOEXEC.
    shell_argv: Vec<*const libc::c_char>,
    env: Vec<CString>,
    env_ptrs: Vec<*const libc::c_char>,
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
    pub fn prepare(path: &Path, argv: &[OsString], extra: &[(&str, String)]) -> Result<Exec> {
        let cstring = |bytes: &[u8]| CString::new(bytes).context("an argument holds a NUL byte");
        let path = cstring(path.as_os_str().as_bytes())?;
        let argv = argv
            .iter()
            .map(|a| cstring(a.as_bytes()))
            .collect::<Result<Vec<_>>>()?;
        let mut env = Vec::new();
        for (name, value) in std::env::vars_os() {
            let ours = |n: &&str| OsStr::new(n) == name;
            if OWN_VARIABLES.iter().any(ours) || extra.iter().map(|(n, _)| n).any(ours) {
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
        let argv_ptrs = pointers(&argv);
        let mut shell_argv = vec![SHELL.as_ptr(), path.as_ptr()];
        shell_argv.extend_from_slice(&argv_ptrs[1..]);
        Ok(Exec {
            argv_ptrs,
            shell_argv,
            env_ptrs: pointers(&env),
            path,
            argv,
            env,
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
        let _ = (&self.argv, &self.env);
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
