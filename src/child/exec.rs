//! Starting COMMAND: find it like `execvp(3)`, start the child, which
//! fsyncs the store's directory, waits at the gate, and execs.
//!
//! The child starts as `posix_spawn(3)` starts one, in idem's memory (no
//! page tables copied for it, and none torn down at its exec), but idem
//! goes on meanwhile. Until it execs it makes raw system calls only
//! (`raw`), on what was built before it started. It starts before the
//! claim, so that the claim records it, and waits on a gate pipe until the
//! claim is written: if idem dies first, or loses the race for the key,
//! the gate reads EOF and the child exits without running COMMAND, so no
//! child ever runs unrecorded. What only the claim decides
//! (`IDEM_ATTEMPT`, `IDEM_FENCING_TOKEN`) comes through the gate, into
//! slots of the environment reserved beforehand. A file that is executable
//! but not a binary nor a `#!` script (exec fails with ENOEXEC) runs under
//! `/bin/sh`, as execvp(3) and env(1) do.

#![allow(unsafe_code)]

use super::raw;
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

/// The exec arguments, built before the child starts (it must not allocate).
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

    /// Starts the child, which fsyncs `fds.sync_dir`, waits at the gate,
    /// then execs. It runs in idem's memory until then (`raw`), reading
    /// this `Exec` and writing its late slots and its own stack: both stay
    /// in `Started` until the child has exec'd or is reaped.
    pub fn start(self, fds: ChildFds) -> Result<Started> {
        let exec = Box::new(Launch { exec: self, fds });
        let (pid, stack) = exec.start_child()?;
        Ok(Started {
            pid,
            _launch: exec,
            _stack: stack,
        })
    }
}

/// What the child reads: where nothing moves while it runs.
struct Launch {
    exec: Exec,
    fds: ChildFds,
}

/// A started child and what it may still be using.
pub struct Started {
    pub pid: Pid,
    _launch: Box<Launch>,
    /// None when the child was forked (its memory its own).
    _stack: Option<Stack>,
}

/// The child's stack until it execs, with a guard page below it.
struct Stack {
    base: *mut libc::c_void,
}

const STACK: usize = 256 * 1024;
const GUARD: usize = 4096;

impl Stack {
    fn new() -> Result<Stack> {
        // SAFETY: a fresh anonymous mapping, owned by the Stack.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                STACK + GUARD,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(Errno::last()).context("map the child's stack");
        }
        let stack = Stack { base };
        // SAFETY: the lowest page of the mapping just made.
        if unsafe { libc::mprotect(base, GUARD, libc::PROT_NONE) } != 0 {
            return Err(Errno::last()).context("guard the child's stack");
        }
        Ok(stack)
    }

    /// The stack's top (it grows down), 16-byte aligned.
    fn top(&self) -> *mut libc::c_void {
        // SAFETY: one past the end of the mapping.
        unsafe { self.base.cast::<u8>().add(STACK + GUARD).cast() }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: the mapping `new` made; the child no longer runs on it
        // (`Started` outlives the child's exec or its reaping).
        unsafe { libc::munmap(self.base, STACK + GUARD) };
    }
}

/// The child's entry point, on its own stack.
extern "C" fn child_main(launch: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `clone_child` passes the Launch, which `Started` keeps
    // alive and unmoved until this child has exec'd or is reaped.
    let launch = unsafe { &*launch.cast::<Launch>() };
    // SAFETY: this is the newly started child that in_child requires.
    unsafe { launch.in_child() }
}

impl Launch {
    fn start_child(&self) -> Result<(Pid, Option<Stack>)> {
        // valgrind runs no child in its parent's memory unless the parent
        // waits for its exec (vfork), which the gate rules out; it marks
        // the programs it runs with its own LD_PRELOAD.
        let valgrind = std::env::var_os("LD_PRELOAD")
            .is_some_and(|p| p.as_encoded_bytes().windows(9).any(|w| w == b"vgpreload"));
        if cfg!(target_arch = "x86_64") && !valgrind {
            let stack = Stack::new()?;
            Ok((self.clone_child(&stack)?, Some(stack)))
        } else {
            Ok((self.fork_child()?, None))
        }
    }

    /// Starts the child like `posix_spawn`: in idem's memory (no page
    /// tables copied, none torn down at its exec), but without stopping
    /// idem until it execs, since it waits at the gate first.
    fn clone_child(&self, stack: &Stack) -> Result<Pid> {
        let me = std::ptr::from_ref(self).cast_mut().cast();
        // SAFETY: child_main only makes raw system calls (`raw`) and reads
        // `self`, which lives and stays put until the child has exec'd or
        // is reaped; the stack is its own.
        match unsafe { libc::clone(child_main, stack.top(), libc::CLONE_VM | libc::SIGCHLD, me) } {
            -1 => Err(Errno::last()).context("start the command"),
            pid => Ok(Pid::from_raw(pid)),
        }
    }

    /// Elsewhere than x86_64 (see `raw`), and under valgrind, a plain
    /// fork: the child's memory is its own.
    fn fork_child(&self) -> Result<Pid> {
        // SAFETY: the child only makes raw system calls on memory prepared
        // before the fork (in_child); the parent goes on normally.
        match unsafe { libc::fork() } {
            -1 => Err(Errno::last()).context("fork"),
            // SAFETY: this is the freshly forked child that in_child requires.
            0 => unsafe { self.in_child() },
            pid => Ok(Pid::from_raw(pid)),
        }
    }

    /// The child's side. Never returns.
    ///
    /// # Safety
    /// Must run in the newly started child. It shares idem's memory, so it
    /// only makes raw system calls (which leave idem's errno alone), reads
    /// what was prepared before, and writes only its late slots and stack.
    unsafe fn in_child(&self) -> ! {
        let (exec, fds) = (&self.exec, &self.fds);
        let _ = (&exec.argv, &exec.env, &exec.late);
        raw::own_process_group();
        // Undo what idem changed for itself: the blocked signals, and Rust's
        // ignored SIGPIPE (ignored dispositions survive exec). Dispositions
        // idem inherited (nohup's ignored SIGHUP) pass through unchanged.
        raw::default_signals();
        if let Some(stdin) = fds.stdin {
            raw::move_fd(stdin, 0);
        }
        raw::move_fd(fds.stdout, 1);
        raw::move_fd(fds.stderr, 2);
        // The claim's last step to disk, done here while idem writes the
        // claim. An error is ignored, as SQLite ignores it (a file system
        // that cannot sync directories).
        if let Some(dir) = fds.sync_dir {
            raw::fsync(dir);
        }
        // Wait until idem's claim has recorded this pid; EOF means idem
        // died first, or will not run COMMAND.
        raw::close(fds.gate_writer);
        let mut message = [0u8; MESSAGE];
        let wanted = 1 + exec.late_slots.len() * SLOT;
        let mut got = 0;
        while got < wanted {
            match raw::read(fds.gate, &mut message[got..wanted]) {
                n if n > 0 => got += n.unsigned_abs(),
                n if n == -(libc::EINTR as isize) => {}
                _ => raw::exit(125),
            }
        }
        for (i, slot) in exec.late_slots.iter().enumerate() {
            let value = &message[1 + i * SLOT..][..SLOT - 1];
            for (j, byte) in value.iter().enumerate() {
                // SAFETY: each slot holds SLOT bytes; the last stays NUL.
                unsafe { slot.add(j).write(*byte) };
            }
        }
        // SAFETY: C strings and null-terminated arrays built in `prepare`.
        let mut errno = unsafe {
            raw::execve(
                exec.path.as_ptr(),
                exec.argv_ptrs.as_ptr(),
                exec.env_ptrs.as_ptr(),
            )
        };
        if errno == libc::ENOEXEC {
            // SAFETY: as above.
            errno = unsafe {
                raw::execve(
                    SHELL.as_ptr(),
                    exec.shell_argv.as_ptr(),
                    exec.env_ptrs.as_ptr(),
                )
            };
        }
        raw::write(fds.status, &errno.to_ne_bytes());
        raw::exit(127);
    }
}
