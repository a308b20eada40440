//! Who owns a claim, and whether that owner is still alive.
//!
//! An owner is idem's process plus the process group of the child it runs.
//! On the same host and boot it is alive while idem's pid exists with the
//! same start time (a reused pid is someone else) or while any process of the
//! child's group exists (a SIGKILLed idem can leave its child running). A
//! different boot means dead. A different host cannot be checked from here:
//! local stores treat it as alive; shared stores use a lease instead.

use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;
use std::fs;
use std::path::Path;

/// The identity of a running idem and, once started, its child.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owner {
    pub host: String,
    pub boot_id: String,
    pub pid: i64,
    /// Process start time in clock ticks since boot (field 22 of /proc/PID/stat).
    pub start: i64,
    pub child: Option<ChildId>,
}

/// The child process and its process group (the group leader is the child).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChildId {
    pub pid: i64,
    pub pgid: i64,
    pub start: i64,
}

/// Where this process runs; used to tell local owners from remote ones.
#[derive(Debug, Clone)]
pub struct Here {
    pub host: String,
    pub boot_id: String,
}

impl Here {
    pub fn detect() -> Here {
        let host = nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default();
        let boot_id = fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        Here { host, boot_id }
    }

    /// This idem process as an owner (no child yet).
    pub fn me(&self) -> Owner {
        let pid = i64::from(std::process::id());
        Owner {
            host: self.host.clone(),
            boot_id: self.boot_id.clone(),
            pid,
            start: start_time(pid).unwrap_or(0),
            child: None,
        }
    }
}

/// What can be said about an owner from this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    Alive,
    Dead,
    /// On another host: only a lease can tell.
    Remote,
}

impl Owner {
    pub fn liveness(&self, here: &Here) -> Liveness {
        if self.host != here.host {
            return Liveness::Remote;
        }
        if self.boot_id != here.boot_id {
            // No boot id (macOS, containers without /proc): cannot tell boots apart.
            return if self.boot_id.is_empty() && here.boot_id.is_empty() {
                self.process_liveness()
            } else {
                Liveness::Dead
            };
        }
        self.process_liveness()
    }

    fn process_liveness(&self) -> Liveness {
        if same_process(self.pid, self.start) {
            return Liveness::Alive;
        }
        match self.child {
            Some(child) if group_alive(child.pgid) => Liveness::Alive,
            _ => Liveness::Dead,
        }
    }
}

/// Whether `pid` exists, is not a zombie, and started at `start` (when
/// start times are known: without /proc, an existing pid counts).
fn same_process(pid: i64, start: i64) -> bool {
    if !signalable(pid) {
        return false;
    }
    match proc_stat(pid) {
        Some(stat) => stat.state != 'Z' && (start == 0 || stat.start == start),
        None => !Path::new("/proc/self/stat").exists(),
    }
}

/// Whether any live (non-zombie) process is in group `pgid`.
///
/// Zombies matter: where PID 1 does not reap orphans (many containers),
/// a finished orphan stays a zombie, and must not keep its owner alive.
pub fn group_alive(pgid: i64) -> bool {
    if pgid <= 1 || !signalable(-pgid) {
        return false;
    }
    let Ok(entries) = fs::read_dir("/proc") else {
        return true;
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i64>().ok()))
        .filter_map(proc_stat)
        .any(|stat| stat.pgrp == pgid && stat.state != 'Z')
}

/// `kill(pid, 0)`: the pid (or, negative, the group) exists.
fn signalable(pid: i64) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    if pid == 0 {
        return false;
    }
    matches!(kill(Pid::from_raw(pid), None), Ok(()) | Err(Errno::EPERM))
}

/// The fields of /proc/PID/stat that liveness needs.
struct Stat {
    state: char,
    pgrp: i64,
    /// Start time in clock ticks since boot (field 22).
    start: i64,
}

fn proc_stat(pid: i64) -> Option<Stat> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold anything.
    let mut fields = stat[stat.rfind(')')? + 2..].split(' ');
    let state = fields.next()?.chars().next()?;
    let pgrp = fields.nth(1)?.parse().ok()?;
    let start = fields.nth(16)?.parse().ok()?;
    Some(Stat { state, pgrp, start })
}

/// Process start time in clock ticks since boot, if /proc can tell.
pub fn start_time(pid: i64) -> Option<i64> {
    proc_stat(pid).map(|stat| stat.start)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    #[test]
    fn reads_own_start_time() {
        let me = Here::detect().me();
        assert!(me.start > 0);
        assert_eq!(me.liveness(&Here::detect()), Liveness::Alive);
    }

    #[test]
    fn reused_pid_is_dead() {
        let here = Here::detect();
        let mut owner = here.me();
        owner.start += 1;
        assert_eq!(owner.liveness(&here), Liveness::Dead);
    }

    #[test]
    fn start_time_is_field_22() {
        // A name with spaces and parentheses must not shift the fields.
        let me = i64::from(std::process::id());
        let stat = proc_stat(me).unwrap();
        assert_ne!(stat.state, 'Z');
        assert_eq!(stat.pgrp, i64::from(nix::unistd::getpgrp().as_raw()));
        let raw = fs::read_to_string(format!("/proc/{me}/stat")).unwrap();
        let after_name = &raw[raw.rfind(')').unwrap() + 2..];
        assert_eq!(
            after_name
                .split(' ')
                .nth(19)
                .unwrap()
                .parse::<i64>()
                .unwrap(),
            stat.start
        );
    }

    #[test]
    fn a_group_of_zombies_is_dead() {
        let mut child = std::process::Command::new("true")
            .process_group(0)
            .spawn()
            .unwrap();
        let pgid = i64::from(child.id());
        // Exited but not reaped: a zombie, alone in its group.
        while proc_stat(pgid).is_some_and(|s| s.state != 'Z') {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(!group_alive(pgid));
        child.wait().unwrap();
        assert!(!group_alive(pgid));
    }

    #[test]
    fn other_boot_is_dead_other_host_is_remote() {
        let here = Here::detect();
        let mut owner = here.me();
        owner.boot_id = "another-boot".into();
        assert_eq!(owner.liveness(&here), Liveness::Dead);
        owner.host = "elsewhere".into();
        assert_eq!(owner.liveness(&here), Liveness::Remote);
    }
}
