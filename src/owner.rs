//! Who owns a claim, and what this machine can tell about whether it lives.
//!
//! An owner is idem's process plus the process group of the child it runs,
//! recorded with the host name, boot id and PID namespace it ran in. On a
//! SQLite store the kernel decides: the owner holds a lock on a byte of a
//! file beside the store until COMMAND's group is gone, and the store says,
//! as it reads the record, whether that byte is locked (`Owner::lock`),
//! in any PID namespace. Elsewhere, and for records made before that lock,
//! its pids mean something only where host name, boot id and PID namespace
//! match ours (`Place::Here`): there it is alive while idem's pid exists
//! with the same start time (a reused pid is someone else) or while any
//! process of the child's group exists. Anywhere else — another machine,
//! another container — process checks cannot tell, and
//! `crate::policy::owner_alive` asks the lease.

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::signal::kill;
use nix::sys::stat::Mode;
use nix::unistd::Pid;
use std::ffi::CStr;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The identity of a running idem and, once started, its child.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owner {
    pub host: String,
    pub boot_id: String,
    /// The PID namespace (inode of `/proc/self/ns/pid`); `None` when
    /// unknown: no /proc, or a record written before idem recorded it.
    pub pid_ns: Option<i64>,
    pub pid: i64,
    /// Process start time in clock ticks since boot (field 22 of /proc/PID/stat).
    pub start: i64,
    pub child: Option<ChildId>,
    /// The owner's lock (SQLite, SPEC "Crashed owners"), whose state alone
    /// decides. `None`: no lock to ask (a shared store, or a record made
    /// before idem took that lock).
    pub lock: Option<Lock>,
}

/// The byte of the store's lock file that the owner holds until its
/// command's group is gone, and whether the kernel said it was held when
/// the store read the record (held until the store asks: an owner is
/// never called dead unasked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lock {
    pub byte: i64,
    pub held: bool,
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
    pub pid_ns: Option<i64>,
}

impl Here {
    pub fn detect() -> Here {
        let host = nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default();
        let boot_id = fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        let pid_ns = fs::metadata("/proc/self/ns/pid")
            .ok()
            .and_then(|m| i64::try_from(m.ino()).ok());
        Here {
            host,
            boot_id,
            pid_ns,
        }
    }

    /// This idem process as an owner (no child yet).
    pub fn me(&self) -> Owner {
        let pid = i64::from(std::process::id());
        Owner {
            host: self.host.clone(),
            boot_id: self.boot_id.clone(),
            pid_ns: self.pid_ns,
            pid,
            start: start_time(pid).unwrap_or(0),
            child: None,
            lock: None,
        }
    }
}

/// Where an owner ran, seen from here: what its pids and boot id can say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// Same host name, boot id and PID namespace: its pids are ours to check.
    Here,
    /// Same host name and boot id, PID namespace not known (a record from
    /// an older idem, or no /proc on one side): its pids may be ours.
    UnknownNamespace,
    /// Same host name and boot id, another PID namespace: another
    /// container on this machine, whose pids mean nothing here.
    OtherNamespace,
    /// Same host name, another boot id: this machine rebooted since, or
    /// another machine has the same name (clones, containers' --hostname).
    OtherBoot,
    /// Another host name.
    OtherHost,
}

impl Owner {
    pub fn place(&self, here: &Here) -> Place {
        if self.host != here.host {
            return Place::OtherHost;
        }
        // Without /proc neither side has a boot id: boots cannot be told
        // apart, so they count as one.
        if self.boot_id != here.boot_id {
            return Place::OtherBoot;
        }
        match (self.pid_ns, here.pid_ns) {
            (Some(theirs), Some(ours)) if theirs == ours => Place::Here,
            (Some(_), Some(_)) => Place::OtherNamespace,
            _ => Place::UnknownNamespace,
        }
    }

    /// The process checks: idem's pid with its start time, or any live
    /// process of the child's group. Meaningful only in `Place::Here`.
    pub fn process_alive(&self) -> bool {
        same_process(self.pid, self.start)
            || self.child.is_some_and(|child| group_alive(child.pgid))
    }
}

/// Whether `pid` exists, is not a zombie, and started at `start` (when
/// start times are known: without /proc, an existing pid counts).
fn same_process(pid: i64, start: i64) -> bool {
    if !signalable(pid) {
        return false;
    }
    match proc_stat(pid) {
        Some(stat) => stat.state != 'Z' && (start == 0 || stat.start == Some(start)),
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
pub struct Stat {
    pub state: char,
    pub pgrp: i64,
    /// Start time in clock ticks since boot (field 22), when the text
    /// reaches it.
    pub start: Option<i64>,
}

/// The fields of /proc/PID/stat, read in one call into a buffer on the
/// stack: no allocation (the command's watcher uses it between fork and
/// exit, see `child::watcher`), and three system calls where reading a
/// file whole makes eight (it runs on every first run's way to the claim).
pub fn proc_stat(pid: i64) -> Option<Stat> {
    // "/proc/", at most 20 digits, "/stat" and the NUL.
    let mut path = [0u8; 32];
    path[..6].copy_from_slice(b"/proc/");
    let mut at = 6;
    let mut digits = [0u8; 20];
    let mut left = u64::try_from(pid).ok()?;
    let mut count = 0;
    loop {
        digits[count] = b'0' + (left % 10) as u8;
        count += 1;
        left /= 10;
        if left == 0 {
            break;
        }
    }
    for &digit in digits[..count].iter().rev() {
        path[at] = digit;
        at += 1;
    }
    path[at..at + 5].copy_from_slice(b"/stat");
    let path = CStr::from_bytes_until_nul(&path).ok()?;
    let fd = nix::fcntl::open(path, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty()).ok()?;
    // The text is about 300 bytes; the command name in it, at most 64.
    let mut stat = [0u8; 1024];
    let read = nix::unistd::read(fd, &mut stat);
    let _ = nix::unistd::close(fd);
    parse_stat(&stat[..read.ok()?])
}

/// The fields of the text of /proc/PID/stat.
fn parse_stat(stat: &[u8]) -> Option<Stat> {
    // The command name (field 2) is in parentheses and may hold anything.
    let after_name = stat.get(stat.iter().rposition(|&b| b == b')')? + 2..)?;
    let mut fields = after_name.split(|&b| b == b' ');
    let number = |field: Option<&[u8]>| std::str::from_utf8(field?).ok()?.trim().parse().ok();
    let state = char::from(*fields.next()?.first()?);
    let pgrp = number(fields.nth(1))?;
    let start = number(fields.nth(16));
    Some(Stat { state, pgrp, start })
}

/// Process start time in clock ticks since boot, if /proc can tell.
pub fn start_time(pid: i64) -> Option<i64> {
    proc_stat(pid).and_then(|stat| stat.start)
}

/// The clock ticks since boot now, counted as /proc counts a process's
/// start (`CLOCK_BOOTTIME` in `CLK_TCK` ticks, rounded down): a process
/// forked between two readings that agree started at that tick, and
/// nothing need be read from /proc (see `child::gated`).
pub fn ticks_since_boot() -> Option<i64> {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).ok()?;
    let hertz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok()??;
    let nanos = i128::from(now.tv_sec()) * 1_000_000_000 + i128::from(now.tv_nsec());
    let per_tick = 1_000_000_000 / i128::from(hertz).clamp(1, 1_000_000_000);
    i64::try_from(nanos / per_tick).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    #[test]
    fn reads_own_start_time_and_namespace() {
        let here = Here::detect();
        let me = here.me();
        assert!(me.start > 0);
        let ns = fs::read_link("/proc/self/ns/pid").unwrap();
        assert_eq!(
            ns.to_string_lossy(),
            format!("pid:[{}]", me.pid_ns.unwrap())
        );
        assert_eq!(me.place(&here), Place::Here);
        assert!(me.process_alive());
    }

    #[test]
    fn a_process_forked_between_two_readings_of_the_ticks_started_between_them() {
        let mut agreed = 0;
        for _ in 0..20 {
            let before = ticks_since_boot().unwrap();
            let mut child = std::process::Command::new("sleep")
                .arg("5")
                .spawn()
                .unwrap();
            let after = ticks_since_boot().unwrap();
            let start = start_time(i64::from(child.id()));
            let _ = child.kill();
            let _ = child.wait();
            let start = start.unwrap();
            assert!(
                before <= start && start <= after,
                "{before} <= {start} <= {after}"
            );
            agreed += usize::from(before == after);
        }
        assert!(agreed > 0, "no fork fell within one tick in 20");
    }

    #[test]
    fn reused_pid_is_dead() {
        let mut owner = Here::detect().me();
        owner.start += 1;
        assert!(!owner.process_alive());
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
            after_name.split(' ').nth(19).unwrap().parse::<i64>().ok(),
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
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while proc_stat(pgid).is_some_and(|s| s.state != 'Z') {
            assert!(std::time::Instant::now() < deadline, "{pgid} never exited");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(proc_stat(pgid).map(|s| s.state), Some('Z'));
        assert!(!group_alive(pgid));
        child.wait().unwrap();
        assert!(!group_alive(pgid));
    }

    /// A SIGKILLed idem can leave its child's group running: the group
    /// keeps the owner alive while any member lives, leader or not.
    #[test]
    fn a_group_lives_while_any_member_does() {
        let leader = std::process::Command::new("sh")
            .args(["-c", "sleep 60 >/dev/null & echo $!"])
            .process_group(0)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pgid = i64::from(leader.id());
        let output = leader.wait_with_output().unwrap();
        let member: i32 = String::from_utf8(output.stdout)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The leader is gone and reaped; its member is not.
        assert!(!signalable(pgid));
        assert!(group_alive(pgid));
        let mut owner = Here::detect().me();
        owner.start += 1;
        owner.child = Some(ChildId {
            pid: pgid,
            pgid,
            start: 0,
        });
        assert!(owner.process_alive());
        kill(Pid::from_raw(member), nix::sys::signal::Signal::SIGKILL).unwrap();
        // Reaped by init or left a zombie: dead either way.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while group_alive(pgid) {
            assert!(
                std::time::Instant::now() < deadline,
                "group {pgid} lives on"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(!owner.process_alive());
    }

    #[test]
    fn signalable_means_an_existing_pid_or_group() {
        let me = i64::from(std::process::id());
        assert!(signalable(me));
        assert!(signalable(-i64::from(nix::unistd::getpgrp().as_raw())));
        // 0 would be "this process's group": never an owner.
        assert!(!signalable(0));
        assert!(!signalable(i64::from(i32::MAX) + 1));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = i64::from(child.id());
        child.wait().unwrap();
        assert!(!signalable(pid));
    }

    #[test]
    fn places() {
        let here = Here::detect();
        let mut owner = here.me();
        owner.pid_ns = None;
        assert_eq!(owner.place(&here), Place::UnknownNamespace);
        let blind = Here {
            pid_ns: None,
            ..here.clone()
        };
        assert_eq!(here.me().place(&blind), Place::UnknownNamespace);
        owner.pid_ns = Some(here.pid_ns.unwrap() + 1);
        assert_eq!(owner.place(&here), Place::OtherNamespace);
        owner.boot_id = "another-boot".into();
        assert_eq!(owner.place(&here), Place::OtherBoot);
        owner.host = "elsewhere".into();
        assert_eq!(owner.place(&here), Place::OtherHost);
    }
}
