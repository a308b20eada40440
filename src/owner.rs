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
            Some(child) if group_exists(child.pgid) => Liveness::Alive,
            _ => Liveness::Dead,
        }
    }
}

/// Whether `pid` exists and started at `start` (when start times are known).
fn same_process(pid: i64, start: i64) -> bool {
    if !pid_exists(pid) {
        return false;
    }
    match start_time(pid) {
        Some(now) => start == 0 || now == start,
        // No /proc: the pid exists, so be conservative.
        None => true,
    }
}

fn pid_exists(pid: i64) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    matches!(kill(Pid::from_raw(pid), None), Ok(()) | Err(Errno::EPERM))
}

fn group_exists(pgid: i64) -> bool {
    let Ok(pgid) = i32::try_from(pgid) else {
        return false;
    };
    if pgid <= 1 {
        return false;
    }
    matches!(kill(Pid::from_raw(-pgid), None), Ok(()) | Err(Errno::EPERM))
}

/// Field 22 of /proc/PID/stat: start time in clock ticks since boot.
pub fn start_time(pid: i64) -> Option<i64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn other_boot_is_dead_other_host_is_remote() {
        let here = Here::detect();
        let mut owner = here.me();
        owner.boot_id = "another-boot".into();
        assert_eq!(owner.liveness(&here), Liveness::Dead);
        owner.host = "elsewhere".into();
        assert_eq!(owner.liveness(&here), Liveness::Remote);
    }
}
