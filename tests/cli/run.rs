//! `idem run`: keys, states, replays, fingerprints, exit codes and usage
//! (a key in progress and the running command: `running.rs`).

use crate::support::{sh, start_reading, Env};
use predicates::prelude::*;

#[test]
fn runs_once_then_replays_output_and_status() {
    let env = Env::new();
    let script = format!("{}; echo out; echo err >&2; exit 0", env.count_run("n"));
    for _ in 0..3 {
        env.idem()
            .args(["run", "--key", "k", "--"])
            .args(sh(&script))
            .assert()
            .success()
            .stdout("out\n")
            .stderr("err\n");
    }
    assert_eq!(env.count("n"), 1);
}

#[test]
fn replay_is_byte_exact_on_both_streams() {
    let env = Env::new();
    let all: Vec<u8> = (0..=255u8).collect();
    std::fs::write(env.path("bytes"), &all).unwrap();
    let script = format!("{}; cat bytes; cat bytes >&2; exit 0", env.count_run("n"));
    let first = env
        .idem()
        .args(["run", "-k", "bytes", "--"])
        .args(sh(&script))
        .output()
        .unwrap();
    let again = env
        .idem()
        .args(["run", "-k", "bytes", "--"])
        .args(sh(&script))
        .output()
        .unwrap();
    assert_eq!(first.stdout, all);
    assert_eq!(first.stderr, all);
    assert_eq!(again.stdout, all);
    assert_eq!(again.stderr, all);
    assert_eq!(env.count("n"), 1);
}

#[test]
fn failure_unlocks_by_default_and_counts_attempts() {
    let env = Env::new();
    let script = format!("{}; echo attempt $IDEM_ATTEMPT; exit 3", env.count_run("n"));
    env.idem()
        .args(["run", "-k", "f", "--"])
        .args(sh(&script))
        .assert()
        .code(3)
        .stdout("attempt 1\n");
    env.idem()
        .args(["run", "-k", "f", "--"])
        .args(sh(&script))
        .assert()
        .code(3)
        .stdout("attempt 2\n");
    assert_eq!(env.count("n"), 2);
}

#[test]
fn on_failure_lock_replays_the_failure() {
    let env = Env::new();
    let script = format!("{}; echo nope; exit 4", env.count_run("n"));
    for _ in 0..2 {
        env.idem()
            .args(["run", "-k", "f", "--on-failure", "lock", "--"])
            .args(sh(&script))
            .assert()
            .code(4)
            .stdout("nope\n");
    }
    // Without the flag, the locked record still replays: it is completed.
    env.idem()
        .args(["run", "-k", "f", "--"])
        .args(sh(&script))
        .assert()
        .code(4);
    assert_eq!(env.count("n"), 1);
}

#[test]
fn death_by_signal_exits_128_plus_n_and_replays_it() {
    let env = Env::new();
    let script = format!("{}; kill -9 $$", env.count_run("n"));
    for _ in 0..2 {
        env.idem()
            .args(["run", "-k", "s", "--on-failure", "lock", "--"])
            .args(sh(&script))
            .assert()
            .code(137);
    }
    assert_eq!(env.count("n"), 1);
}

#[test]
fn child_sees_key_and_attempt() {
    let env = Env::new();
    // Tokens of a new table start at 1, like attempts: move them apart.
    for key in ["a", "b"] {
        env.run_ok(&["run", "-k", key, "--", "true"]);
    }
    let out = env
        .idem()
        .args(["run", "-k", "my key", "--"])
        .args(sh(
            "echo \"$IDEM_KEY|$IDEM_ATTEMPT|${IDEM_FENCING_TOKEN-none}\"",
        ))
        .output()
        .unwrap();
    let line = String::from_utf8(out.stdout).unwrap();
    let fields: Vec<&str> = line.trim_end().split('|').collect();
    assert_eq!(fields[..2], ["my key", "1"]);
    if crate::support::backend() == crate::support::Backend::Sqlite {
        assert_eq!(fields[2], "none", "a local store has no fencing token");
    } else {
        // The claim's own token (it reaches the child through its gate).
        let record = crate::support::records(&env, &["my key"]).remove(0);
        assert_eq!(
            fields[2],
            record["token"].to_string(),
            "shared stores pass the claim's IDEM_FENCING_TOKEN: {line}"
        );
    }
}

#[test]
fn mismatch_exits_65_and_changes_nothing() {
    let env = Env::new();
    env.idem()
        .args(["run", "-k", "m", "--", "echo", "one"])
        .assert()
        .success()
        .stdout("one\n");
    let refused = env
        .idem()
        .args(["run", "-k", "m", "--", "echo", "two"])
        .assert()
        .code(65);
    let err = String::from_utf8(refused.get_output().stderr.clone()).unwrap();
    assert!(
        err.starts_with("idem: ") && err.contains("echo one") && err.contains("echo two"),
        "{err}"
    );
    assert!(refused.get_output().stdout.is_empty());
    // The stored record is untouched: the first command still replays.
    env.idem()
        .args(["run", "-k", "m", "--", "echo", "one"])
        .assert()
        .success()
        .stdout("one\n");
    env.idem()
        .args(["run", "-k", "m", "--allow-mismatch", "--", "echo", "two"])
        .assert()
        .success()
        .stdout("one\n");
}

#[test]
fn derived_keys_follow_the_fingerprint() {
    let env = Env::new();
    let count = env.count_run("n");
    let run = |extra: &[&str], arg: &str| {
        env.idem()
            .arg("run")
            .args(extra)
            .args(["--", "sh", "-c", &format!("{count}; echo {arg}")])
            .assert()
            .success();
    };
    run(&[], "a");
    run(&[], "a");
    assert_eq!(env.count("n"), 1);
    run(&[], "b");
    assert_eq!(env.count("n"), 2);
    // --env NAME: unset and empty are different calls.
    env.idem()
        .args(["run", "--env", "IDEM_T_VAR", "--", "sh", "-c", &count])
        .env_remove("IDEM_T_VAR")
        .assert()
        .success();
    env.idem()
        .args(["run", "--env", "IDEM_T_VAR", "--", "sh", "-c", &count])
        .env("IDEM_T_VAR", "")
        .assert()
        .success();
    env.idem()
        .args(["run", "--env", "IDEM_T_VAR", "--", "sh", "-c", &count])
        .env("IDEM_T_VAR", "")
        .assert()
        .success();
    assert_eq!(env.count("n"), 4);
}

#[test]
fn cwd_joins_the_fingerprint_only_when_asked() {
    let env = Env::new();
    let count = env.count_run("n");
    std::fs::create_dir(env.path("a")).unwrap();
    std::fs::create_dir(env.path("b")).unwrap();
    for dir in ["a", "b"] {
        env.idem()
            .current_dir(env.path(dir))
            .args(["run", "--", "sh", "-c", &count])
            .assert()
            .success();
    }
    assert_eq!(env.count("n"), 1);
    for dir in ["a", "b"] {
        env.idem()
            .current_dir(env.path(dir))
            .args(["run", "--cwd", "--", "sh", "-c", &count])
            .assert()
            .success();
    }
    assert_eq!(env.count("n"), 3);
}

#[test]
fn derived_key_is_cmd_and_32_hex_digits() {
    let env = Env::new();
    env.idem()
        .args(["run", "--", "sh", "-c", "printf %s \"$IDEM_KEY\""])
        .assert()
        .success()
        .stdout(predicates::str::is_match("^cmd:[0-9a-f]{32}$").unwrap());
}

#[test]
fn fingerprint_stdin_feeds_the_child_unchanged() {
    let env = Env::new();
    let count = env.count_run("n");
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let script = format!("{count}; cat > got");
    env.idem()
        .args(["run", "--fingerprint-stdin", "--", "sh", "-c", &script])
        .write_stdin(big.clone())
        .assert()
        .success();
    assert_eq!(std::fs::read(env.path("got")).unwrap(), big);
    env.idem()
        .args(["run", "--fingerprint-stdin", "--", "sh", "-c", &script])
        .write_stdin(big.clone())
        .assert()
        .success();
    assert_eq!(env.count("n"), 1);
    env.idem()
        .args(["run", "--fingerprint-stdin", "--", "sh", "-c", &script])
        .write_stdin("other")
        .assert()
        .success();
    assert_eq!(env.count("n"), 2);
    assert_eq!(std::fs::read(env.path("got")).unwrap(), b"other");
}

#[test]
fn stdin_is_inherited() {
    let env = Env::new();
    env.idem()
        .args(["run", "-k", "in", "--", "cat"])
        .write_stdin("hello\n")
        .assert()
        .success()
        .stdout("hello\n");
}

#[test]
fn on_duplicate_fail_refuses_a_completed_key() {
    let env = Env::new();
    env.idem()
        .args(["run", "-k", "d", "--", "true"])
        .assert()
        .success();
    env.idem()
        .args(["run", "-k", "d", "--on-duplicate", "fail", "--", "true"])
        .assert()
        .code(76)
        .stderr(
            predicates::str::starts_with("idem: ").and(predicates::str::contains("idem purge d")),
        );
}

#[test]
fn ttl_expiry_makes_the_key_absent() {
    let env = Env::new();
    let count = env.count_run("n");
    env.idem()
        .args(["run", "-k", "t", "--ttl", "1s", "--", "sh", "-c", &count])
        .assert()
        .success();
    env.idem()
        .args(["run", "-k", "t", "--ttl", "1s", "--", "sh", "-c", &count])
        .assert()
        .success();
    assert_eq!(env.count("n"), 1);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    env.idem()
        .args(["run", "-k", "t", "--ttl", "1s", "--", "sh", "-c", &count])
        .assert()
        .success();
    assert_eq!(env.count("n"), 2);
}

#[test]
fn ttl_comes_from_the_environment_too() {
    let env = Env::new();
    env.idem()
        .args(["run", "-k", "t", "--", "true"])
        .env("IDEM_TTL", "0s")
        .assert()
        .code(2);
}

#[test]
fn usage_errors_exit_2_naming_the_flag() {
    let env = Env::new();
    let long_key = "k".repeat(1025);
    let cases: &[(&[&str], &str)] = &[
        (&["run", "--key", "", "--", "true"], "--key"),
        (&["run", "--key", &long_key, "--", "true"], "--key"),
        (&["run", "--ttl", "soon", "--", "true"], "--ttl"),
        (&["run", "--ttl", "0s", "--", "true"], "--ttl"),
        (&["run", "--timeout", "x", "--", "true"], "--timeout"),
        (
            &["run", "--wait-timeout", "x", "--", "true"],
            "--wait-timeout",
        ),
        (
            &["run", "--max-output", "lots", "--", "true"],
            "--max-output",
        ),
        (
            &["run", "--on-duplicate", "maybe", "--", "true"],
            "--on-duplicate",
        ),
        (
            &["run", "--on-failure", "maybe", "--", "true"],
            "--on-failure",
        ),
        (&["run", "--on-crash", "maybe", "--", "true"], "--on-crash"),
        (&["run", "--key", "k"], "COMMAND"),
        (&["run", "--key", "k", "--", ""], "COMMAND"),
        (&["run", "--bogus", "--", "true"], "--bogus"),
    ];
    for (args, flag) in cases {
        let out = env.idem().args(*args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.starts_with("idem: ") && err.contains(flag),
            "{args:?}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "{args:?}: one line: {err}");
    }
}

#[test]
fn quiet_and_verbose() {
    let env = Env::new();
    env.idem()
        .args(["-v", "run", "-k", "v", "--", "true"])
        .assert()
        .success()
        .stderr(predicates::str::contains("running"));
    env.idem()
        .args(["-v", "run", "-k", "v", "--", "true"])
        .assert()
        .success()
        .stderr(predicates::str::contains("replaying"));
    env.idem()
        .args(["run", "-k", "v", "--", "true"])
        .assert()
        .success()
        .stderr("");
}

#[test]
fn replay_to_a_closed_pipe_still_exits_with_the_stored_status() {
    let env = Env::new();
    env.idem()
        .args(["run", "-k", "big", "--", "sh", "-c", "seq 1 100000; exit 5"])
        .assert()
        .code(5);
    let (mut idem, stdout) = start_reading(
        &env,
        &["run", "-k", "big", "--", "sh", "-c", "seq 1 100000; exit 5"],
    );
    drop(stdout);
    assert_eq!(idem.wait().unwrap().code(), Some(5));
}
