//! The command does not outlive its guard (SPEC "Crashed owners"):
//! whatever kills idem, its command's whole group dies at once, killed by
//! the watcher idem forks, which no Ctrl-C reaches. On SQLite the kernel
//! decides who is alive: a container (another PID namespace, played by
//! `unshare`) sees a SIGKILLed owner dead at once and a stopped one alive
//! for as long as it stays stopped, whatever `--lease` says.

use crate::support::{require_root, running, sh, tool, wait_for, wait_until, Env};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

/// The first run starts two processes in its group, a background one and
/// its leader's child, writes their pids and `started`, and waits; later
/// runs print their attempt. Every run is counted in `n`.
fn script(env: &Env) -> String {
    format!(
        "{}; if [ ! -e started ]; then sleep 600 & echo $! > bg; \
         sh -c 'echo $$ > fg; exec sleep 600' & \
         while [ ! -s fg ]; do sleep 0.01; done; touch started; wait; fi; \
         echo \"attempt $IDEM_ATTEMPT\"",
        env.count_run("n")
    )
}

/// Starts `idem run -k k` on the script in a process group of its own, as
/// a shell starts a foreground job; returns once the command runs.
fn start_owner(env: &Env, flags: &[&str]) -> Child {
    use std::os::unix::process::CommandExt;
    let owner = env
        .idem_std()
        .args(["run", "-k", "k"])
        .args(flags)
        .arg("--")
        .args(sh(&script(env)))
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&env.path("started"));
    owner
}

/// The pids the first run wrote: its background process and its leader's
/// child, both in the command's group.
fn members(env: &Env) -> [i32; 2] {
    ["bg", "fg"].map(|name| {
        std::fs::read_to_string(env.path(name))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    })
}

/// SIGKILLs idem and returns how long its command's group took to go;
/// returns once its watcher is gone too (on SQLite the owner's lock is
/// free from then on).
fn kill_and_time(mut owner: Child, env: &Env) -> Duration {
    let members = members(env);
    let watcher = watcher_of(owner.id());
    owner.kill().unwrap();
    let killed = Instant::now();
    owner.wait().unwrap();
    wait_until("the command's group to be gone", || {
        !members.iter().any(|&pid| running(pid))
    });
    let took = killed.elapsed();
    wait_until("the watcher to be gone", || !running(watcher));
    took
}

/// idem's watcher: its child named `idem-watcher`.
fn watcher_of(idem: u32) -> i32 {
    let children = std::fs::read_to_string(format!("/proc/{idem}/task/{idem}/children")).unwrap();
    children
        .split_whitespace()
        .map(|pid| pid.parse().unwrap())
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|name| name.trim() == "idem-watcher")
        })
        .unwrap_or_else(|| panic!("idem {idem} has no watcher among {children:?}"))
}

/// Field 5 of /proc/PID/stat: the process group.
fn group_of(pid: i32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    stat[stat.rfind(')').unwrap() + 2..]
        .split(' ')
        .nth(2)
        .unwrap()
        .parse()
        .unwrap()
}

/// On every store: SIGKILL of idem (what the OOM killer sends) takes its
/// command's whole group with it, within a second, leader or not.
#[test]
fn sigkill_of_idem_kills_its_commands_group_within_a_second() {
    let env = Env::new();
    let owner = start_owner(&env, &[]);
    let took = kill_and_time(owner, &env);
    assert!(
        took < Duration::from_secs(1),
        "the group lived on for {took:?}"
    );
    assert_eq!(env.count("n"), 1);
}

/// Signals to the job reach idem's group, not its watcher's (a group of
/// its own, neither the command's nor idem's), and the watcher shrugs off
/// those that do reach it: after a Ctrl-C, and even after `kill -9 %1`
/// (SIGKILL to idem's whole group), the command's group still dies.
#[test]
fn ctrl_c_to_the_foreground_job_spares_the_watcher() {
    let env = Env::new();
    // The command ignores SIGINT, as a job that handles it might.
    let mut owner = {
        use std::os::unix::process::CommandExt;
        env.idem_std()
            .args(["run", "-k", "k", "--"])
            .args(sh(&format!("trap '' INT; {}", script(&env))))
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    wait_for(&env.path("started"));
    let idem = owner.id() as i32;
    let watcher = watcher_of(owner.id());
    let members = members(&env);
    assert_ne!(
        group_of(watcher),
        group_of(members[0]),
        "in the command's group"
    );
    assert_ne!(group_of(watcher), group_of(idem), "in the job's group");
    kill(Pid::from_raw(-idem), Signal::SIGINT).unwrap();
    for signal in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGTSTP,
    ] {
        kill(Pid::from_raw(watcher), signal).unwrap();
    }
    kill(Pid::from_raw(-idem), Signal::SIGKILL).unwrap();
    let killed = Instant::now();
    owner.wait().unwrap();
    wait_until("the command's group to be gone", || {
        !members.iter().any(|&pid| running(pid))
    });
    let took = killed.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "the group lived on for {took:?}"
    );
}

/// A caller in another PID namespace (a container sharing the store's
/// directory) on this SQLite store.
fn run_in_container(env: &Env) -> Output {
    env.idem_in_pid_namespace()
        .args(["run", "-k", "k", "--"])
        .args(sh(&script(env)))
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[track_caller]
fn assert_code(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout {:?}, stderr {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A container sees a SIGKILLed owner dead at once: the kernel released
/// its lock with its command's group, so no lease has to run out first.
#[test]
#[ignore = "needs root and unshare (util-linux)"]
fn a_container_sees_a_sigkilled_owner_dead_at_once() {
    require_root();
    tool("unshare");
    let env = Env::sqlite();
    let owner = start_owner(&env, &["--lease", "30s"]);
    assert_code(&run_in_container(&env), 75);
    kill_and_time(owner, &env);
    let asked = Instant::now();
    let taken = run_in_container(&env);
    assert_code(&taken, 0);
    assert_eq!(taken.stdout, b"attempt 2\n");
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "took {:?}",
        asked.elapsed()
    );
    assert_eq!(env.count("n"), 2);
}

/// A stopped owner (idem and its command, as Ctrl-Z or a frozen cgroup
/// leaves them) stays alive for a container for as long as it stays
/// stopped, well past its `--lease`: COMMAND never runs a second time.
/// Killed, it is dead at once.
#[test]
#[ignore = "needs root and unshare (util-linux)"]
fn a_container_sees_a_stopped_owner_alive_while_it_stays_stopped() {
    require_root();
    tool("unshare");
    let env = Env::sqlite();
    let owner = start_owner(&env, &["--lease", "1s"]);
    let group = group_of(members(&env)[0]);
    let idem = Pid::from_raw(owner.id() as i32);
    kill(idem, Signal::SIGSTOP).unwrap();
    kill(Pid::from_raw(-group), Signal::SIGSTOP).unwrap();
    let stopped = Instant::now();
    // Three leases and more: every caller meanwhile finds it busy.
    let mut callers = 0;
    while stopped.elapsed() < Duration::from_secs(4) {
        assert_code(&run_in_container(&env), 75);
        callers += 1;
    }
    assert!(callers > 0);
    assert_eq!(env.count("n"), 1, "COMMAND ran twice");
    let took = kill_and_time(owner, &env);
    assert!(
        took < Duration::from_secs(1),
        "the group lived on for {took:?}"
    );
    let taken = run_in_container(&env);
    assert_code(&taken, 0);
    assert_eq!(taken.stdout, b"attempt 2\n");
}

/// idem leaves nothing of its own open behind it: once it exits, its
/// watcher no longer holds the store's lock file (a `mount -o
/// remount,ro` of the store's file system right after idem failed with
/// EBUSY when the watcher held it a moment longer). A Python subreaper runs
/// idem and, after each exit, looks at the orphans idem left.
#[test]
fn nothing_of_idems_stays_open_behind_it() {
    let env = Env::sqlite();
    let subreaper = r#"
import ctypes, os, subprocess, sys
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
locks = os.path.realpath(sys.argv[3])
holding = 0
for i in range(int(sys.argv[2])):
    subprocess.run([sys.argv[1], "run", "-k", "k%d" % i, "true"], check=True)
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid != 0:
            continue
        for pid in os.listdir("/proc"):
            try:
                fds = os.listdir("/proc/%s/fd" % pid)
                holding += any(os.readlink("/proc/%s/fd/%s" % (pid, fd)) == locks for fd in fds)
            except OSError:
                pass
        os.waitpid(-1, 0)
print(holding)
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", subreaper])
        .arg(crate::support::bin())
        .arg("100")
        .arg(format!("{}-locks", env.db))
        .env("IDEM_DB", &env.db)
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "0\n",
        "times the lock file was held open after idem exited"
    );
}
