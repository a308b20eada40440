//! Crashed owners, signals and races: at most once, under SIGKILL at each
//! phase, under forwarded signals, and with 64 processes on one key.
//!
//! How each crash phase is reached: (a) "just after the claim" (the claim
//! records the child, started before it and held at its gate) and (c)
//! "after the child exited, before the record is finished" use idem's
//! debug-build pause points (`IDEM_TEST_PAUSE`), which stop idem there and
//! create a file; (b) "while the child runs" uses a child that waits for a
//! `release` file. The child marks itself running with `mkdir`, so two
//! concurrent executions leave a line in `violations`.

use crate::support::{
    kill_paused_owner, race, records, run_sh, running, start_time, stat_field, tool, wait_for,
    wait_until, Backend, Env, Holder,
};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use predicates::prelude::*;
use std::io::Write;
use std::process::{Child, Stdio};

/// `idem run` of the holder's child (which counts its runs and attempts,
/// detects overlap and waits for `release`).
fn run_child(env: &Env, key: &str, extra: &[&str]) -> std::process::Command {
    let mut cmd = env.idem_std();
    cmd.args(["run", "-k", key])
        .args(extra)
        .args(["--", "sh", "-c", &Holder::script(env)])
        .stdout(Stdio::null());
    cmd
}

fn paused_at(env: &Env, key: &str, point: &str) -> Child {
    let idem = run_child(env, key, &[])
        .env("IDEM_TEST_PAUSE", point)
        .env("IDEM_TEST_PAUSE_FILE", env.path("paused"))
        .spawn()
        .unwrap();
    wait_for(&env.path("paused"));
    idem
}

/// SIGKILLs idem; returns once what it started is gone too.
fn sigkill(mut idem: Child) {
    crate::support::kill_idem(&mut idem);
}

fn attempts(env: &Env) -> String {
    std::fs::read_to_string(env.path("attempts")).unwrap_or_default()
}

fn release(env: &Env) {
    std::fs::write(env.path("release"), "").unwrap();
}

fn no_overlap(env: &Env) {
    assert!(
        !env.path("violations").exists(),
        "two executions overlapped"
    );
}

#[test]
fn crash_just_after_the_claim() {
    let env = Env::new();
    kill_paused_owner(&env, "a", paused_at(&env, "a", "after-claim"));
    assert_eq!(env.count("n"), 0, "the command had not started");
    run_child(&env, "a", &["--on-crash", "block"]).assert_blocked("a");
    release(&env);
    run_child(&env, "a", &[])
        .status()
        .unwrap()
        .success()
        .then_some(())
        .expect("rerun succeeds");
    assert_eq!(env.count("n"), 1);
    assert_eq!(attempts(&env), "2\n", "the takeover is attempt 2");
    no_overlap(&env);
}

/// A crash of idem alone (SIGKILL, the OOM killer) takes its running
/// child's group with it: the command does not outlive its guard. The
/// record is left in progress with a dead owner, for the crash policy.
#[test]
fn crash_while_the_child_runs_takes_the_child_with_it() {
    let env = Env::new();
    let mut holder = Holder::start(&env, "b", &[]);
    let pid = holder.child_pid();
    holder.crash_idem();
    assert!(!running(pid), "the child outlived idem");
    // The killed run could not take its marker down.
    std::fs::remove_dir(env.path("running")).unwrap();
    run_child(&env, "b", &["--on-crash", "block"]).assert_blocked("b");
    release(&env);
    run_child(&env, "b", &[]).assert_code(0);
    assert_eq!(env.count("n"), 2);
    assert_eq!(attempts(&env), "1\n2\n");
    no_overlap(&env);
}

/// Between the claim and letting the child exec: the claim records the
/// child, started before it, which is still idem's own code at its gate; it
/// must see idem die and exit without running the command.
#[test]
fn crash_before_the_gate_opens_never_runs_the_command() {
    let env = Env::new();
    let idem = paused_at(&env, "g", "after-claim");
    let record = records(&env, &["g"]).remove(0);
    let child = record["child_pid"].as_i64().expect("no child in the claim");
    let child = i32::try_from(child).unwrap();
    let ppid = stat_field(child.unsigned_abs(), 4);
    assert_eq!(
        ppid,
        i64::from(idem.id()),
        "the claim's child is not idem's"
    );
    // The claim records the child's start time as /proc gives it.
    let recorded_start = (env.backend() == Backend::Sqlite).then(|| {
        let conn = rusqlite::Connection::open(env.db_path()).unwrap();
        let recorded: i64 = conn
            .query_row("SELECT child_start FROM records WHERE key = 'g'", [], |r| {
                r.get(0)
            })
            .unwrap();
        (recorded, start_time(child.unsigned_abs()))
    });
    assert_eq!(
        std::fs::read_link(format!("/proc/{child}/exe")).unwrap(),
        crate::support::bin().canonicalize().unwrap(),
        "the child exec'd before the gate opened"
    );
    sigkill(idem);
    wait_until("the gated child to exit", || !running(child));
    if let Some((recorded, actual)) = recorded_start {
        assert_eq!(recorded, actual, "the recorded start time of the child");
    }
    release(&env);
    // The gated child exits by itself; a waiter then takes over.
    run_child(
        &env,
        "g",
        &["--on-duplicate", "wait", "--wait-timeout", "20s"],
    )
    .assert_code(0);
    assert_eq!(env.count("n"), 1);
    assert_eq!(attempts(&env), "2\n", "the crashed attempt never ran");
    no_overlap(&env);
}

/// The child starts before the claim. When the claim then finds the key
/// taken (a faster caller ran it meanwhile), that child is killed at its
/// gate, never running the command, and this call replays the other's run.
#[test]
fn a_child_started_for_a_claim_lost_to_a_faster_caller_never_runs() {
    let env = Env::new();
    release(&env);
    let slow = paused_at(&env, "r", "child-started");
    assert!(run_child(&env, "r", &[]).status().unwrap().success());
    assert_eq!(env.count("n"), 1);
    std::fs::remove_file(env.path("paused")).unwrap();
    let status = slow.wait_with_output().unwrap().status;
    assert!(status.success(), "the slower caller: {status}");
    assert_eq!(
        env.count("n"),
        1,
        "the child started for the lost claim ran the command"
    );
    assert_eq!(attempts(&env), "1\n");
    no_overlap(&env);
}

#[test]
fn crash_after_the_child_exited_before_the_record_was_finished() {
    let env = Env::new();
    release(&env);
    sigkill(paused_at(&env, "c", "before-finish"));
    assert_eq!(env.count("n"), 1);
    run_child(&env, "c", &["--on-crash", "block"]).assert_blocked("c");
    // Under rerun the command runs again: idem cannot know the side effect
    // happened (this is why --on-crash block exists).
    run_child(&env, "c", &[]).assert_code(0);
    assert_eq!(env.count("n"), 2);
    assert_eq!(attempts(&env), "1\n2\n");
    run_child(&env, "c", &[]).assert_code(0);
    assert_eq!(env.count("n"), 2, "the takeover's result is final");
}

/// Starts an owner, SIGKILLs idem while its child runs (which dies with
/// it), starts `waiters` with `extra` flags, then lets a takeover finish.
fn waiters_after_a_crash(env: &Env, count: usize, extra: &[&str]) -> Vec<Option<i32>> {
    let mut holder = Holder::start(env, "w", &[]);
    holder.crash_idem();
    // The killed run could not take its marker down.
    std::fs::remove_dir(env.path("running")).unwrap();
    let mut flags = vec!["--on-duplicate", "wait"];
    flags.extend_from_slice(extra);
    let waiters: Vec<Child> = (0..count)
        .map(|_| {
            run_child(env, "w", &flags)
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    release(env);
    waiters
        .into_iter()
        .map(|mut w| w.wait().unwrap().code())
        .collect()
}

#[test]
fn waiters_that_find_the_owner_dead_rerun_it_exactly_once() {
    let env = Env::new();
    let codes = waiters_after_a_crash(&env, 8, &[]);
    assert!(codes.iter().all(|c| *c == Some(0)), "{codes:?}");
    assert_eq!(env.count("n"), 2, "exactly one waiter took over");
    assert_eq!(attempts(&env), "1\n2\n");
    no_overlap(&env);
}

#[test]
fn waiters_that_find_the_owner_dead_block_under_on_crash_block() {
    let env = Env::new();
    let codes = waiters_after_a_crash(&env, 4, &["--on-crash", "block"]);
    assert!(codes.iter().all(|c| *c == Some(77)), "{codes:?}");
    assert_eq!(env.count("n"), 1);
}

#[test]
fn a_reused_pid_is_not_the_owner() {
    let env = Env::sqlite();
    kill_paused_owner(&env, "p", paused_at(&env, "p", "after-claim"));
    let conn = rusqlite::Connection::open(env.db_path()).unwrap();
    let me = std::process::id();
    // The pid is alive (it is this test) with the start time it had: alive,
    // for a record from before the owner's lock (the lock decides otherwise).
    conn.execute(
        "UPDATE records SET owner_pid = ?1, owner_start = ?2, owner_lock = NULL",
        (me, start_time(me)),
    )
    .unwrap();
    run_child(&env, "p", &[]).assert_code(75);
    // Same pid, another start time: a different process that reused the pid.
    conn.execute("UPDATE records SET owner_start = owner_start + 1", ())
        .unwrap();
    release(&env);
    run_child(&env, "p", &[]).assert_code(0);
    assert_eq!(env.count("n"), 1);
}

#[test]
fn another_boot_means_the_owner_is_dead() {
    let env = Env::sqlite();
    let holder = Holder::start(&env, "boot", &[]);
    let conn = rusqlite::Connection::open(env.db_path()).unwrap();
    // A record from before the owner's lock (whose lock a reboot would have
    // released anyway), with a lease of 30 s: on a store file another boot
    // id means this machine rebooted, whatever the lease says.
    conn.execute(
        "UPDATE records SET owner_boot = 'an-earlier-boot', owner_lock = NULL, \
         lease_until = CAST(unixepoch('subsec') * 1000 AS INTEGER) + 30000",
        (),
    )
    .unwrap();
    let lease_left: i64 = conn
        .query_row(
            "SELECT lease_until - CAST(unixepoch('subsec') * 1000 AS INTEGER) FROM records",
            (),
            |r| r.get(0),
        )
        .unwrap();
    assert!(lease_left > 10_000, "{lease_left} ms");
    run_child(&env, "boot", &["--on-crash", "block"]).assert_blocked("boot");
    holder.crash();
}

/// 64 processes on one key of a fresh store, per policy: one execution,
/// only the exit codes SPEC.md allows, never 125.
#[test]
fn sixty_four_racers_per_policy() {
    for (policy, allowed) in [
        ("replay", &[0, 75][..]),
        ("fail", &[0, 75, 76]),
        ("wait", &[0]),
    ] {
        let env = Env::new();
        let script = format!("{}; echo out; sleep 0.3", env.count_run("n"));
        let results = race(64, |_| {
            let mut cmd = env.idem_std();
            cmd.args(run_sh(&["-k", "hot", "--on-duplicate", policy], &script));
            cmd
        });
        for (code, stdout, stderr) in &results {
            let err = String::from_utf8_lossy(stderr);
            assert!(allowed.contains(code), "{policy}: exit {code}: {err}");
            assert!(
                !err.contains("busy") && !err.contains("locked"),
                "{policy}: {err}"
            );
            if *code == 0 {
                assert_eq!(stdout, b"out\n", "{policy}");
            }
        }
        assert_eq!(env.count("n"), 1, "{policy}: exactly one execution");
    }
}

#[test]
fn sixty_four_racers_on_distinct_keys() {
    let env = Env::new();
    let results = race(64, |i| {
        let mut cmd = env.idem_std();
        cmd.args(run_sh(&["-k", &format!("key-{i}")], &env.count_run("n")));
        cmd
    });
    for (code, _, stderr) in results {
        assert_eq!(code, 0, "{}", String::from_utf8_lossy(&stderr));
    }
    assert_eq!(env.count("n"), 64);
}

fn signal_name(sig: Signal) -> &'static str {
    &sig.as_str()[3..]
}

#[test]
fn signals_are_forwarded_and_the_outcome_recorded() {
    for sig in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ] {
        let env = Env::new();
        let name = signal_name(sig);
        let script = format!(
            "{}; trap 'echo {name} >> got; exit 7' {name}; touch ready; while [ ! -e release ]; do sleep 0.01; done",
            env.count_run("n")
        );
        let mut idem = env
            .idem_std()
            .args(["run", "-k", "s", "--", "sh", "-c", &script])
            .spawn()
            .unwrap();
        wait_for(&env.path("ready"));
        kill(Pid::from_raw(idem.id() as i32), sig).unwrap();
        assert_eq!(
            idem.wait().unwrap().code(),
            Some(7),
            "{name}: idem exits with the child's status"
        );
        assert_eq!(
            std::fs::read_to_string(env.path("got")).unwrap(),
            format!("{name}\n"),
            "delivered once"
        );
        // Recorded as failed, so the next call runs it again.
        release(&env);
        env.idem()
            .args(["run", "-k", "s", "--", "sh", "-c", &script])
            .assert()
            .success();
        assert_eq!(env.count("n"), 2, "{name}");
    }
}

#[test]
fn idem_outlives_a_child_that_ignores_the_signal() {
    let env = Env::new();
    let script =
        "trap '' INT; touch ready; while [ ! -e release ]; do sleep 0.01; done; echo survived";
    let mut idem = env
        .idem_std()
        .args(["run", "-k", "i", "--", "sh", "-c", script])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&env.path("ready"));
    kill(Pid::from_raw(idem.id() as i32), Signal::SIGINT).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        idem.try_wait().unwrap().is_none(),
        "idem must not exit before its child"
    );
    release(&env);
    let out = idem.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, b"survived\n");
}

/// Ctrl-C in a terminal reaches an interactive child once, not twice
/// (`script` gives idem a pseudo-terminal as its controlling terminal).
#[test]
#[ignore = "needs script, from util-linux (.ci/run installs it)"]
fn ctrl_c_in_a_terminal_reaches_the_child_once() {
    tool("script");
    let env = Env::new();
    let inner = format!(
        "exec '{}' run -k tty -- sh -c 'trap \"echo int >> ints\" INT; touch ready; while [ ! -e release ]; do sleep 0.01; done; exit 3'",
        crate::support::bin().display()
    );
    let mut script = std::process::Command::new("script");
    script
        .args(["-qefc", &inner, "/dev/null"])
        .current_dir(env.dir.path());
    script
        .env("IDEM_DB", &env.db)
        .stdin(Stdio::piped())
        .stdout(Stdio::null());
    let mut terminal = script.spawn().unwrap();
    wait_for(&env.path("ready"));
    terminal.stdin.as_mut().unwrap().write_all(b"\x03").unwrap();
    wait_for(&env.path("ints"));
    std::thread::sleep(std::time::Duration::from_millis(300));
    release(&env);
    let status = terminal.wait().unwrap();
    assert_eq!(std::fs::read_to_string(env.path("ints")).unwrap(), "int\n");
    assert_eq!(status.code(), Some(3));
}

trait Expect {
    fn assert_code(&mut self, code: i32);
    fn assert_blocked(&mut self, key: &str);
}

impl Expect for std::process::Command {
    #[track_caller]
    fn assert_code(&mut self, code: i32) {
        crate::support::assert_code(&self.output().unwrap(), code);
    }

    #[track_caller]
    fn assert_blocked(&mut self, key: &str) {
        assert_cmd::Command::from_std(std::mem::replace(self, std::process::Command::new("false")))
            .assert()
            .code(77)
            .stderr(
                predicates::str::starts_with("idem: ")
                    .and(predicates::str::contains("crashed"))
                    .and(predicates::str::contains(format!("idem purge {key}")))
                    .and(predicates::str::contains("pid ")),
            );
    }
}

/// On a local file, an owner on another host cannot be checked (SQLite
/// over NFS is not a supported set-up, see the README): its lease decides,
/// and a record from before SQLite kept leases counts as alive.
#[test]
fn an_owner_on_another_host_is_judged_by_its_lease_on_a_local_store() {
    let env = Env::sqlite();
    kill_paused_owner(&env, "h", paused_at(&env, "h", "after-claim"));
    let conn = rusqlite::Connection::open(env.db_path()).unwrap();
    // A record from before the owner's lock, its lease live (30 s).
    conn.execute(
        "UPDATE records SET owner_host = 'elsewhere', owner_lock = NULL, \
         lease_until = CAST(unixepoch('subsec') * 1000 AS INTEGER) + 30000",
        (),
    )
    .unwrap();
    release(&env);
    run_child(&env, "h", &[]).assert_code(75);
    conn.execute("UPDATE records SET lease_until = NULL", ())
        .unwrap();
    run_child(&env, "h", &[]).assert_code(75);
    assert_eq!(env.count("n"), 0);
    conn.execute("UPDATE records SET lease_until = 1", ())
        .unwrap();
    run_child(&env, "h", &[]).assert_code(0);
    assert_eq!(attempts(&env), "2\n");
}
