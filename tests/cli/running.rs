//! `idem run` while a key is in progress and while its command runs:
//! duplicates that wait or refuse, live output, closed readers, the output
//! cap, timeouts, and commands that cannot start.

use crate::support::{run_sh, sh, start_reading, wait_for, Env, Holder};
use predicates::prelude::*;
use std::io::Read;
use std::process::Stdio;

#[test]
fn in_progress_key_exits_75_for_replay_and_fail() {
    let env = Env::new();
    let holder = Holder::start(&env, "busy", &[]);
    for policy in ["replay", "fail"] {
        env.idem()
            .args(["run", "-k", "busy", "--on-duplicate", policy, "--"])
            .args(sh(&Holder::script(&env)))
            .assert()
            .code(75)
            .stderr(
                predicates::str::starts_with("idem: ")
                    .and(predicates::str::contains("in progress")),
            );
    }
    assert!(holder.release().status.success());
    assert_eq!(env.count("n"), 1);
}

#[test]
fn waiters_replay_the_result_when_it_lands() {
    let env = Env::new();
    let holder = Holder::start(&env, "w", &[]);
    let script = Holder::script(&env);
    // Each waiter shows the run's first line before the release: attached
    // to the live run, not replaying a finished one.
    let waiters: Vec<_> = (0..4)
        .map(|i| {
            let report = format!("report{i}.json");
            let args = [
                "run",
                "--report",
                &report,
                "-k",
                "w",
                "--on-duplicate",
                "wait",
                "--",
            ];
            let mut all: Vec<&str> = args.to_vec();
            all.extend(["sh", "-c", &script]);
            start_reading(&env, &all)
        })
        .collect();
    let out = holder.release();
    assert_eq!(out.stdout, b"held\ndone\n");
    for (i, (waiter, mut stdout)) in waiters.into_iter().enumerate() {
        let mut rest = String::new();
        stdout.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "ld\ndone\n");
        assert!(waiter.wait_with_output().unwrap().status.success());
        let report = std::fs::read_to_string(env.path(&format!("report{i}.json"))).unwrap();
        let report: serde_json::Value = serde_json::from_str(&report).unwrap();
        assert_eq!(report["outcome"], "joined", "{report}");
    }
    assert_eq!(env.count("n"), 1);
}

#[test]
fn wait_timeout_exits_75() {
    let env = Env::new();
    let holder = Holder::start(&env, "w", &[]);
    let started = std::time::Instant::now();
    env.idem()
        .args([
            "run",
            "-k",
            "w",
            "--on-duplicate",
            "wait",
            "--wait-timeout",
            "200ms",
            "--",
        ])
        .args(sh(&Holder::script(&env)))
        .assert()
        .code(75)
        .stderr(predicates::str::contains("timed out"));
    let took = started.elapsed();
    assert!(
        took >= std::time::Duration::from_millis(200) && took < std::time::Duration::from_secs(10),
        "{took:?}"
    );
    assert!(holder.release().status.success());
    assert_eq!(env.count("n"), 1);
}

#[test]
fn waiters_share_a_failure_and_the_next_call_runs_again() {
    let env = Env::new();
    let script = format!(
        "{}; echo held; touch ready; while [ ! -e release ]; do sleep 0.01; done; [ $IDEM_ATTEMPT -gt 1 ]",
        env.count_run("n")
    );
    let holder = env
        .idem_std()
        .args(["run", "-k", "f", "--", "sh", "-c", &script])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&env.path("ready"));
    let run = run_sh(&["-k", "f", "--on-duplicate", "wait"], &script);
    // Each waiter is attached once it shows the run's first line.
    let waiters: Vec<_> = (0..10).map(|_| start_reading(&env, &run)).collect();
    std::fs::write(env.path("release"), "").unwrap();
    let first = holder.wait_with_output().unwrap();
    assert_eq!(first.status.code(), Some(1));
    for (waiter, _) in waiters {
        assert_eq!(waiter.wait_with_output().unwrap().status.code(), Some(1));
    }
    // The failure ran once for all of them; a later call runs it again.
    assert_eq!(env.count("n"), 1);
    env.idem().args(run).assert().success();
    assert_eq!(env.count("n"), 2);
}

#[test]
fn output_streams_live() {
    let env = Env::new();
    let mut idem = env
        .idem_std()
        .args([
            "run",
            "-k",
            "live",
            "--",
            "sh",
            "-c",
            "echo first; while [ ! -e release ]; do sleep 0.01; done; echo second",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = idem.stdout.take().unwrap();
    let mut first = [0u8; 6];
    // Arrives while the child still waits: nothing is held back until exit.
    stdout.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"first\n");
    std::fs::write(env.path("release"), "").unwrap();
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "second\n");
    assert!(idem.wait().unwrap().success());
}

#[test]
fn a_closed_reader_never_kills_the_child() {
    let env = Env::new();
    let script = format!("seq 1 200000; {}", env.count_run("n"));
    let (mut idem, stdout) = start_reading(&env, &["run", "-k", "pipe", "--", "sh", "-c", &script]);
    drop(stdout); // like `| head -1`
    let status = idem.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert_eq!(env.count("n"), 1, "the child ran to its end");
    let replay = env
        .idem()
        .args(["run", "-k", "pipe", "--", "sh", "-c", &script])
        .output()
        .unwrap();
    let expected: String = (1..=200_000).map(|i| format!("{i}\n")).collect();
    assert_eq!(
        String::from_utf8(replay.stdout).unwrap(),
        expected,
        "full output captured"
    );
}

#[test]
fn a_closed_stderr_never_kills_the_child() {
    let env = Env::new();
    let script = format!("echo started; seq 1 200000 >&2; {}", env.count_run("n"));
    let mut idem = env
        .idem_std()
        .args(["run", "-k", "err", "--", "sh", "-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(idem.stderr.take()); // like `2>&1 | head -1` with stderr's reader gone
    let mut stdout = String::new();
    idem.stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    assert!(idem.wait().unwrap().success());
    assert_eq!(stdout, "started\n");
    assert_eq!(env.count("n"), 1, "the child ran to its end");
    let replay = env
        .idem()
        .args(["run", "-k", "err", "--", "sh", "-c", &script])
        .output()
        .unwrap();
    let expected: String = (1..=200_000).map(|i| format!("{i}\n")).collect();
    assert_eq!(
        String::from_utf8(replay.stderr).unwrap(),
        expected,
        "full stderr captured"
    );
}

#[test]
fn max_output_cuts_and_flags_the_stored_copy() {
    let env = Env::new();
    let script = "printf 0123456789; printf abcdefghij >&2";
    env.idem()
        .args(run_sh(&["-k", "cap", "--max-output", "4"], script))
        .assert()
        .success()
        .stdout("0123456789");
    env.idem()
        .args(["run", "-k", "cap", "--", "sh", "-c", script])
        .assert()
        .success()
        .stdout("0123")
        .stderr(predicates::str::starts_with("abcd").and(predicates::str::contains("idem: ")));
    env.idem()
        .args(["-q", "run", "-k", "cap", "--", "sh", "-c", script])
        .assert()
        .success()
        .stderr("abcd");
}

#[test]
fn max_output_zero_stores_nothing() {
    let env = Env::new();
    env.idem()
        .args([
            "run",
            "-k",
            "secret",
            "--max-output",
            "0",
            "--",
            "echo",
            "s3cret",
        ])
        .assert()
        .success()
        .stdout("s3cret\n");
    env.idem()
        .args(["-q", "run", "-k", "secret", "--", "echo", "s3cret"])
        .assert()
        .success()
        .stdout("");
    if crate::support::backend() == crate::support::Backend::Sqlite {
        let raw = std::fs::read(env.db_path()).unwrap();
        let wal = std::fs::read(env.db_path().with_extension("db-wal")).unwrap_or_default();
        let needle = b"s3cret\n";
        assert!(!raw
            .windows(needle.len())
            .chain(wal.windows(needle.len()))
            .any(|w| w == needle));
    }
}

#[test]
fn timeout_terminates_and_exits_124() {
    let env = Env::new();
    let script = format!("{}; sleep 30", env.count_run("n"));
    for _ in 0..2 {
        env.idem()
            .args(run_sh(
                &["-k", "slow", "--timeout", "300ms", "--on-failure", "lock"],
                &script,
            ))
            .assert()
            .code(124);
    }
    assert_eq!(
        env.count("n"),
        1,
        "the timed-out run is replayed when locked"
    );
}

#[test]
fn timeout_kills_a_child_that_ignores_term() {
    let env = Env::new();
    let started = std::time::Instant::now();
    env.idem()
        .args(["run", "-k", "stubborn", "--timeout", "200ms", "--"])
        .args(sh(
            "echo $$ > pid; trap 'echo > got-term' TERM; while :; do sleep 0.05; done",
        ))
        .assert()
        .code(124)
        .stderr(predicates::str::contains("timed out"));
    let took = started.elapsed();
    // SIGTERM at 200 ms reached the child, which ignored it; SIGKILL came
    // 5 s later and took the whole group.
    assert!(env.path("got-term").exists(), "the child never got SIGTERM");
    assert!(
        took >= std::time::Duration::from_secs(5) && took < std::time::Duration::from_secs(30),
        "SIGKILL comes 5 s after SIGTERM, took {took:?}"
    );
    let group: i32 = std::fs::read_to_string(env.path("pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // Gone, once its last zombie is reaped (sleep's, by init).
    crate::support::wait_until("the child's group to be gone", || {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(-group), None).is_err()
    });
    let record = &crate::support::records(&env, &["stubborn"])[0];
    assert_eq!(record["timed_out"], true, "{record}");
    assert_eq!(record["status"], "failed", "{record}");
}

#[test]
fn commands_that_cannot_start_are_never_locked() {
    let env = Env::new();
    env.idem()
        .args([
            "run",
            "-k",
            "nf",
            "--on-failure",
            "lock",
            "--",
            "idem-no-such-command",
        ])
        .assert()
        .code(127)
        .stderr(predicates::str::starts_with("idem: ").and(predicates::str::contains("not found")));
    // Recorded as a failure with the status the caller saw.
    let record = &crate::support::records(&env, &["nf"])[0];
    assert_eq!(
        (&record["status"], &record["exit_code"]),
        (&"failed".into(), &127.into()),
        "{record}"
    );
    std::fs::write(env.path("script"), "#!/bin/sh\necho now\n").unwrap();
    env.idem()
        .args(["run", "-k", "ne", "--on-failure", "lock", "--", "./script"])
        .assert()
        .code(126);
    // Neither key is locked: once the command exists, it runs.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(env.path("script"), std::fs::Permissions::from_mode(0o755)).unwrap();
    env.idem()
        .args(["run", "-k", "ne", "--on-failure", "lock", "--", "./script"])
        .assert()
        .success()
        .stdout("now\n");
}

/// COMMAND starts with the signal state of whoever started idem, not
/// idem's own: no signal blocked (idem blocks most while it runs), SIGPIPE
/// at its default action (idem ignores it), and what the caller ignored
/// (nohup's SIGHUP) still ignored. The child sets this up itself between
/// its start and its exec.
#[test]
fn the_command_gets_the_callers_signal_state_not_idems() {
    let env = Env::new();
    let status = |program: &str| {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "trap '' HUP; exec {program} grep '^Sig\\(Blk\\|Ign\\)' /proc/self/status"
            ))
            .env("IDEM_DB", &env.db)
            .current_dir(env.dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let idem = format!("{} run -k signals --", crate::support::bin().display());
    let (under_idem, direct) = (status(&idem), status(""));
    assert_eq!(under_idem, direct);
    let mask = |name: &str| {
        let line = direct.lines().find(|l| l.starts_with(name)).unwrap();
        u64::from_str_radix(line[name.len()..].trim(), 16).unwrap()
    };
    assert_eq!(mask("SigBlk:"), 0);
    assert_eq!(mask("SigIgn:") & 1, 1, "SIGHUP ignored: {direct}");
    assert_eq!(mask("SigIgn:") & (1 << 12), 0, "SIGPIPE default: {direct}");
}

/// Under valgrind, which follows a fork like any other but could not run
/// a child in its parent's memory, the run works: its child and its
/// watcher are plain forks, and valgrind finds no error in either.
#[test]
#[ignore = "needs valgrind (.ci/run installs it)"]
fn a_run_under_valgrind_works() {
    let env = Env::new();
    let out = std::process::Command::new(crate::support::tool("valgrind"))
        .args(["--tool=none", "-q", "--error-exitcode=99"])
        .arg(crate::support::bin())
        .args(["run", "-k", "under-valgrind", "--", "echo", "hi"])
        .env("IDEM_DB", &env.db)
        .current_dir(env.dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");
    env.idem()
        .args(["run", "-k", "under-valgrind", "--", "echo", "hi"])
        .assert()
        .success()
        .stdout("hi\n");
    assert_eq!(
        crate::support::records(&env, &["under-valgrind"])[0]["status"],
        "completed"
    );
}
