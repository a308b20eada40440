//! Many hosts on one shared store: races across machines, leases that keep
//! a remote owner alive and then let it go, and fencing of an owner that
//! lost its lease. Each "host" is idem in its own UTS namespace with its own
//! host name (`Env::idem_on_host`, needs root). Generic over the shared
//! backends; skipped on SQLite, which is for one machine.

use crate::support::{race, require_shared_store, sh, wait_for, wait_until, Env};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::process::{Child, Stdio};

fn on(env: &Env, host: &str) -> assert_cmd::Command {
    assert_cmd::Command::from_std(env.idem_on_host(host))
}

fn signal(pid: i32, sig: Signal) {
    kill(Pid::from_raw(pid), sig).unwrap();
}

/// Kills idem (`owner`) and its child's process group (`child`), as a crash
/// or `kill -9` of both would, and waits until both are gone.
fn kill_owner(owner: &mut Child, child: i32) {
    signal(i32::try_from(owner.id()).unwrap(), Signal::SIGKILL);
    signal(-child, Signal::SIGKILL);
    owner.wait().unwrap();
    wait_until("the child's group to be reaped", || {
        kill(Pid::from_raw(-child), None).is_err()
    });
}

/// The pid the child wrote to `child-pid` (its own group's id).
fn child_pid(env: &Env) -> i32 {
    wait_for(&env.path("child-pid"));
    std::fs::read_to_string(env.path("child-pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Starts idem on `host` with its output piped.
fn start_on(env: &Env, host: &str, args: &[&str], script: &str) -> Child {
    env.idem_on_host(host)
        .args(args)
        .arg("--")
        .args(sh(script))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
#[ignore = "needs a shared store: IDEM_TEST_BACKEND=postgres or redis"]
fn twenty_hosts_racing_one_key_run_it_once() {
    require_shared_store();
    let env = Env::new();
    let script = format!(
        "{}; echo \"ran on $(hostname) with token $IDEM_FENCING_TOKEN\"",
        env.count_run("n")
    );
    let gate = env.path("gate");
    let opener = std::thread::spawn({
        let gate = gate.clone();
        move || {
            // Long enough for twenty namespaces to be set up, on a busy machine too.
            std::thread::sleep(std::time::Duration::from_millis(500));
            std::fs::write(gate, "").unwrap();
        }
    });
    let results = race(20, |i| {
        let mut cmd = env.idem_on_host_after(&format!("host{i}"), &gate);
        cmd.args(["run", "-k", "race", "--on-duplicate", "wait", "--"])
            .args(sh(&script));
        cmd
    });
    opener.join().unwrap();
    assert_eq!(env.count("n"), 1, "exactly one host runs the command");
    let first = &results[0].1;
    assert!(String::from_utf8_lossy(first).starts_with("ran on host"));
    for (code, out, err) in &results {
        let err = String::from_utf8_lossy(err);
        assert_eq!(*code, 0, "{err}");
        assert_eq!(out, first, "every host gets the one result");
    }
}

#[test]
#[ignore = "needs a shared store: IDEM_TEST_BACKEND=postgres or redis"]
fn a_live_remote_owner_keeps_its_lease() {
    require_shared_store();
    let env = Env::new();
    // Only h1 blocks: a wrong takeover by h2 ends at once (and fails below).
    let script = "if [ \"$(hostname)\" = h1 ]; then touch started; \
                  while [ ! -e go ]; do sleep 0.02; done; fi; echo done";
    let owner = start_on(&env, "h1", &["run", "-k", "k", "--lease", "2s"], script);
    wait_for(&env.path("started"));
    // More than a lease passes: only renewals keep the owner alive.
    std::thread::sleep(std::time::Duration::from_millis(3000));
    let second = on(&env, "h2")
        .args(["run", "-k", "k", "--"])
        .args(sh(script))
        .output()
        .unwrap();
    // Release the owner before any assertion, so a failure leaves no process.
    std::fs::write(env.path("go"), "").unwrap();
    let out = owner.wait_with_output().unwrap();
    assert_eq!(
        second.status.code(),
        Some(75),
        "h2 took over a live owner: {}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(out.stdout, b"done\n");
}

#[test]
#[ignore = "needs a shared store: IDEM_TEST_BACKEND=postgres or redis"]
fn a_killed_remote_owner_is_respected_until_its_lease_runs_out() {
    require_shared_store();
    let env = Env::new();
    let script = format!(
        "{}; if [ \"$(hostname)\" = h1 ]; then echo $$ > pid.tmp && mv pid.tmp child-pid; exec sleep 600; fi; \
         echo \"taken over on $(hostname), attempt $IDEM_ATTEMPT\"",
        env.count_run("n")
    );
    let mut owner = start_on(&env, "h1", &["run", "-k", "k", "--lease", "4s"], &script);
    // The whole owner dies: idem and its child's process group.
    kill_owner(&mut owner, child_pid(&env));

    // Another host cannot see that; the lease still says alive.
    on(&env, "h2")
        .args(["run", "-k", "k", "--"])
        .args(sh(&script))
        .assert()
        .code(75);
    assert_eq!(env.count("n"), 1);

    // Once the lease has run out, a waiter takes over.
    let out = env
        .idem_on_host("h2")
        .args(["run", "-k", "k", "--on-duplicate", "wait", "--"])
        .args(sh(&script))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"taken over on h2, attempt 2\n");
    assert_eq!(env.count("n"), 2);
}

#[test]
#[ignore = "needs a shared store: IDEM_TEST_BACKEND=postgres or redis"]
fn a_local_crash_is_seen_at_once_without_waiting_for_the_lease() {
    require_shared_store();
    let env = Env::new();
    let script = format!(
        "{}; if [ ! -e crashed ]; then echo $$ > pid.tmp && mv pid.tmp child-pid; exec sleep 600; fi; echo again",
        env.count_run("n")
    );
    let mut owner = start_on(&env, "h1", &["run", "-k", "k", "--lease", "1h"], &script);
    kill_owner(&mut owner, child_pid(&env));
    std::fs::write(env.path("crashed"), "").unwrap();
    // Same host and boot: the process checks say dead, the hour-long lease
    // does not matter.
    let out = env
        .idem_on_host("h1")
        .args(["run", "-k", "k", "--lease", "1h", "--"])
        .args(sh(&script))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(out.stdout, b"again\n");
    assert_eq!(env.count("n"), 2);
}

#[test]
#[ignore = "needs a shared store: IDEM_TEST_BACKEND=postgres or redis"]
fn a_paused_owner_that_lost_its_lease_exits_125_and_leaves_the_new_record() {
    require_shared_store();
    let env = Env::new();
    let script = "if [ \"$(hostname)\" = h1 ]; then touch started; \
                  while [ ! -e go ]; do sleep 0.02; done; fi; echo \"ran on $(hostname)\"";
    let args = ["run", "-k", "k", "--lease", "1s", "--on-duplicate", "wait"];
    let paused = start_on(&env, "h1", &args, script);
    wait_for(&env.path("started"));
    let pid = i32::try_from(paused.id()).unwrap();
    signal(pid, Signal::SIGSTOP);

    // h1 cannot renew; once its lease has run out, h2 takes over and finishes.
    let out = env
        .idem_on_host("h2")
        .args(args)
        .arg("--")
        .args(sh(script))
        .output()
        .unwrap();
    // Resumed past its stop deadline, h1 kills its command rather than let
    // it run beside h2's (SPEC.md "Leases"); `go` is written only after,
    // so that a command that was not killed would never end.
    signal(pid, Signal::SIGCONT);
    let h1 = paused.wait_with_output();
    std::fs::write(env.path("go"), "").unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(out.stdout, b"ran on h2\n");

    let out = h1.unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(
        err.contains("idem: lost the lease on k: no renewal accepted for "),
        "{err}"
    );
    assert_eq!(out.stdout, b"", "the child ran on after the deadline");

    // The record is h2's: a duplicate replays h2's run.
    on(&env, "h3")
        .args(args)
        .arg("--")
        .args(sh(script))
        .assert()
        .success()
        .stdout("ran on h2\n");
}
