//! The command does not outlive its guard (SPEC "Crashed owners"):
//! whatever kills idem, its command's whole group dies at once, killed by
//! the watcher idem forks, which no Ctrl-C reaches. On SQLite the kernel
//! decides who is alive: a container (another PID namespace, played by
//! `unshare`) sees a SIGKILLed owner dead at once and a stopped one alive
//! for as long as it stays stopped, whatever `--lease` says.

use crate::support::{
    assert_code, require_root, running, sh, stat_field, tool, wait_for, wait_until, Env,
};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::os::fd::AsRawFd;
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
    i32::try_from(stat_field(pid.unsigned_abs(), 5)).unwrap()
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

/// Once the outcome is recorded, the watcher holds nothing of the store
/// while it waits for idem to exit: neither the lock file open nor SQLite's
/// `-shm` mapped (mapped for writing, it keeps the file system from being
/// remounted read-only). idem is kept alive after its record by a stdout
/// pipe that is full until the test reads it.
#[test]
fn a_watcher_that_stood_down_holds_nothing_of_the_store() {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let env = Env::sqlite();
    let (read, write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC).unwrap();
    let mut filler = 0;
    while let Ok(n) = nix::unistd::write(&write, &[b'.'; 4096]) {
        filler += n;
    }
    fcntl(write.as_raw_fd(), FcntlArg::F_SETFL(OFlag::empty())).unwrap();
    fcntl(read.as_raw_fd(), FcntlArg::F_SETFL(OFlag::empty())).unwrap();
    let mut idem = env
        .idem_std()
        .args(["run", "-k", "k", "--", "echo", "done"])
        .stdout(Stdio::from(write))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the outcome to be recorded", || {
        let out = env
            .idem()
            .args(["inspect", "--json", "k"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains("\"completed\"")
    });
    let watcher = watcher_of(idem.id());
    let shm = std::fs::canonicalize(format!("{}-shm", env.db)).unwrap();
    let locks = std::fs::canonicalize(format!("{}-locks", env.db)).unwrap();
    let holds = |what: &std::path::Path| {
        let fds = std::fs::read_dir(format!("/proc/{watcher}/fd")).unwrap();
        let open = fds
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target == what));
        let maps = std::fs::read_to_string(format!("/proc/{watcher}/maps")).unwrap();
        open || maps
            .lines()
            .any(|line| line.ends_with(&*what.to_string_lossy()))
    };
    wait_until("the watcher to let go of the lock file", || !holds(&locks));
    assert!(!holds(&shm), "the watcher still maps {shm:?}");
    assert!(running(watcher), "the watcher is there while idem is");
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut std::fs::File::from(read), &mut out).unwrap();
    assert!(idem.wait().unwrap().success());
    assert_eq!(&out[filler..], b"done\n");
}

/// idem leaves nothing of its own open behind it: once it exits, its
/// watcher no longer holds the store's lock file open, nor SQLite's shared
/// memory (`-shm`) mapped (a `mount -o remount,ro` of the store's file
/// system right after idem failed with EBUSY while the watcher held
/// either a moment longer). A Python subreaper runs idem and, after each
/// exit, looks at the orphans idem left, and waits for them: each watcher
/// exits once its idem has.
#[test]
fn nothing_of_idems_stays_open_behind_it() {
    let env = Env::sqlite();
    let subreaper = r#"
import ctypes, os, signal, subprocess, sys
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
# Every watcher must exit once its idem has: the waits below end, or this
# dies of the alarm.
signal.alarm(60)
locks = os.path.realpath(sys.argv[3])
shm = os.path.realpath(sys.argv[4])
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
                held = any(os.readlink("/proc/%s/fd/%s" % (pid, fd)) == locks for fd in fds)
                with open("/proc/%s/maps" % pid) as maps:
                    held |= any(line.split()[-1] == shm for line in maps if len(line.split()) == 6)
                holding += held
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
        .arg(format!("{}-shm", env.db))
        .env("IDEM_DB", &env.db)
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "0\n",
        "times the lock file was held open, or the -shm mapped, after idem exited"
    );
}
