//! `idem run`: keys, states, replays, fingerprints, exit codes and usage
//! (a key in progress and the running command: `running.rs`).

use crate::support::{start_reading, wait_until, Env};
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::unistd::{sysconf, SysconfVar};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::process::Stdio;
use std::time::{Duration, Instant};

#[test]
fn runs_once_then_replays_output_and_status() {
    let env = Env::new();
    let script = format!("{}; echo out; echo err >&2; exit 0", env.count_run("n"));
    for _ in 0..3 {
        env.test()
            .args(["run", "--key", "k"])
            .sh(&script)
            .stdout("out\n")
            .stderr("err\n")
            .run();
    }
    assert_eq!(env.count("n"), 1);
}

#[test]
fn replay_is_byte_exact_on_both_streams() {
    let env = Env::new();
    let all: Vec<u8> = (0..=255u8).collect();
    std::fs::write(env.path("bytes"), &all).unwrap();
    let script = format!("{}; cat bytes; cat bytes >&2; exit 0", env.count_run("n"));
    for _ in 0..2 {
        env.test()
            .args(["run", "-k", "bytes"])
            .sh(&script)
            .stdout(all.clone())
            .stderr(all.clone())
            .run();
    }
    assert_eq!(env.count("n"), 1);
}

#[test]
fn failure_unlocks_by_default_and_counts_attempts() {
    let env = Env::new();
    let script = format!("{}; echo attempt $IDEM_ATTEMPT; exit 3", env.count_run("n"));
    for attempt in ["attempt 1\n", "attempt 2\n"] {
        env.test()
            .args(["run", "-k", "f"])
            .sh(&script)
            .status(3)
            .stdout(attempt)
            .run();
    }
    assert_eq!(env.count("n"), 2);
}

#[test]
fn on_failure_lock_replays_the_failure() {
    let env = Env::new();
    let script = format!("{}; echo nope; exit 4", env.count_run("n"));
    for _ in 0..2 {
        env.test()
            .args(["run", "-k", "f", "--on-failure", "lock"])
            .sh(&script)
            .status(4)
            .stdout("nope\n")
            .run();
    }
    // Without the flag, the locked record still replays: it is completed.
    env.test()
        .args(["run", "-k", "f"])
        .sh(&script)
        .status(4)
        .stdout("nope\n")
        .run();
    assert_eq!(env.count("n"), 1);
}

#[test]
fn death_by_signal_exits_128_plus_n_and_replays_it() {
    let env = Env::new();
    let script = format!("{}; kill -9 $$", env.count_run("n"));
    for _ in 0..2 {
        env.test()
            .args(["run", "-k", "s", "--on-failure", "lock"])
            .sh(&script)
            .status(137)
            .run();
    }
    assert_eq!(env.count("n"), 1);
}

#[test]
fn child_sees_key_and_attempt() {
    let env = Env::new();
    // Tokens of a new table start at 1, like attempts: move them apart.
    for key in ["a", "b"] {
        env.test().args(["run", "-k", key, "--", "true"]).run();
    }
    let line = env
        .test()
        .args(["run", "-k", "my key"])
        .sh("echo \"$IDEM_KEY|$IDEM_ATTEMPT|${IDEM_FENCING_TOKEN-none}\"")
        .stdout_any()
        .run()
        .stdout();
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
    let echo = |word| env.test().args(["run", "-k", "m", "--", "echo", word]);
    echo("one").stdout("one\n").run();
    echo("two")
        .status(65)
        .error(&["echo one", "echo two"])
        .run();
    // The stored record is untouched: the first command still replays.
    echo("one").stdout("one\n").run();
    env.test()
        .args(["run", "-k", "m", "--allow-mismatch", "--", "echo", "two"])
        .stdout("one\n")
        .run();
}

#[test]
fn derived_keys_follow_the_fingerprint() {
    let env = Env::new();
    let count = env.count_run("n");
    let run = |arg: &str| {
        let script = format!("{count}; echo {arg}");
        env.test().arg("run").sh(&script).stdout_any().run();
    };
    run("a");
    run("a");
    assert_eq!(env.count("n"), 1);
    run("b");
    assert_eq!(env.count("n"), 2);
    // --env NAME: unset and empty are different calls.
    let with_var = || env.test().args(["run", "--env", "IDEM_T_VAR"]).sh(&count);
    with_var().run();
    with_var().env("IDEM_T_VAR", "").run();
    with_var().env("IDEM_T_VAR", "").run();
    assert_eq!(env.count("n"), 4);
}

#[test]
fn cwd_joins_the_fingerprint_only_when_asked() {
    let env = Env::new();
    let count = env.count_run("n");
    for dir in ["a", "b"] {
        std::fs::create_dir(env.path(dir)).unwrap();
    }
    for dir in ["a", "b"] {
        env.test().dir(dir).arg("run").sh(&count).run();
    }
    assert_eq!(env.count("n"), 1);
    for dir in ["a", "b"] {
        env.test().dir(dir).args(["run", "--cwd"]).sh(&count).run();
    }
    assert_eq!(env.count("n"), 3);
}

#[test]
fn derived_key_is_cmd_and_32_hex_digits() {
    let env = Env::new();
    let key = env
        .test()
        .arg("run")
        .sh("printf %s \"$IDEM_KEY\"")
        .stdout_any()
        .run()
        .stdout();
    let digits = key.strip_prefix("cmd:").unwrap_or_default();
    assert!(
        digits.len() == 32
            && digits
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
        "{key}"
    );
}

#[test]
fn fingerprint_stdin_feeds_the_child_unchanged() {
    let env = Env::new();
    let script = format!("{}; cat > got", env.count_run("n"));
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let run = |stdin: Vec<u8>| {
        env.test()
            .args(["run", "--fingerprint-stdin"])
            .sh(&script)
            .stdin(stdin)
            .run();
    };
    run(big.clone());
    assert_eq!(std::fs::read(env.path("got")).unwrap(), big);
    run(big);
    assert_eq!(env.count("n"), 1);
    run(b"other".to_vec());
    assert_eq!(env.count("n"), 2);
    assert_eq!(std::fs::read(env.path("got")).unwrap(), b"other");
}

#[test]
fn stdin_is_inherited() {
    let env = Env::new();
    env.test()
        .args(["run", "-k", "in", "--", "cat"])
        .stdin("hello\n")
        .stdout("hello\n")
        .run();
}

#[test]
fn on_duplicate_fail_refuses_a_completed_key() {
    let env = Env::new();
    env.test().args(["run", "-k", "d", "--", "true"]).run();
    env.test()
        .args(["run", "-k", "d", "--on-duplicate", "fail", "--", "true"])
        .status(76)
        .error(&["idem purge d"])
        .run();
}

#[test]
fn ttl_expiry_makes_the_key_absent() {
    let env = Env::new();
    let count = env.count_run("n");
    let run = || {
        env.test()
            .args(["run", "-k", "t", "--ttl", "1s"])
            .sh(&count)
            .run()
    };
    run();
    run();
    assert_eq!(env.count("n"), 1);
    // Expired, the record is gone or marked so (Redis deletes it).
    wait_until("the record to expire", || {
        let shown = env
            .test()
            .args(["inspect", "--json", "t"])
            .stdout_any()
            .stderr_any();
        let out = shown.status_any().run().stdout();
        out.is_empty() || out.contains(r#""expired":true"#)
    });
    run();
    assert_eq!(env.count("n"), 2);
}

#[test]
fn ttl_comes_from_the_environment_too() {
    let env = Env::new();
    env.test()
        .args(["run", "-k", "t", "--", "true"])
        .env("IDEM_TTL", "0s")
        .status(2)
        .error(&["--ttl"])
        .run();
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
        env.test().args(*args).status(2).error(&[flag]).run();
    }
}

#[test]
fn quiet_and_verbose() {
    let env = Env::new();
    let verbose = || env.test().args(["-v", "run", "-k", "v", "--", "true"]);
    verbose().stderr_has("running").run();
    verbose().stderr_has("replaying").run();
    env.test().args(["run", "-k", "v", "--", "true"]).run();
}

#[test]
fn replay_to_a_closed_pipe_still_exits_with_the_stored_status() {
    let env = Env::new();
    let args = ["run", "-k", "big", "--", "sh", "-c", "seq 1 100000; exit 5"];
    env.test().args(args).status(5).stdout_any().run();
    let (mut idem, stdout) = start_reading(&env, &args);
    drop(stdout);
    assert_eq!(idem.wait().unwrap().code(), Some(5));
}

/// Another process set O_NONBLOCK on the pipe idem's stdout is (they share
/// the open file description), and the reader is slow: idem waits for room
/// in the pipe rather than writing again and again, so it uses little CPU
/// while the reader takes its time.
#[test]
fn a_non_blocking_stdout_and_a_slow_reader_cost_no_cpu() {
    let env = Env::new();
    let (mut reader, writer) = std::io::pipe().unwrap();
    fcntl(writer.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).unwrap();
    let size = 2 << 20;
    let mut idem = env
        .idem_std()
        .args([
            "run",
            "-k",
            "k",
            "--",
            "head",
            "-c",
            &size.to_string(),
            "/dev/zero",
        ])
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // 16 KiB every 10 ms: at least 1.3 s for the 2 MiB.
    let started = Instant::now();
    let read = read_slowly(&mut reader, 16 << 10, Duration::from_millis(10));
    let reading = started.elapsed();
    let cpu = cpu_time(idem.id());
    assert_eq!(idem.wait().unwrap().code(), Some(0));
    assert_eq!(read, size);
    assert!(
        cpu < reading / 10,
        "idem used {cpu:?} of CPU while the reader took {reading:?}"
    );
}

/// A replay (and `idem logs`) to a stdout another process made
/// non-blocking waits for a slow reader too, rather than failing with
/// EAGAIN (exit 125 before).
#[test]
fn a_replay_to_a_non_blocking_stdout_writes_it_all() {
    let env = Env::new();
    let size = 2 << 20;
    let command = ["head", "-c", &size.to_string(), "/dev/zero"];
    let first = env
        .idem_std()
        .args(["run", "-k", "k", "--"])
        .args(command)
        .output()
        .unwrap();
    assert_eq!(first.stdout.len(), size);
    for call in [vec!["run", "-k", "k", "--"], vec!["logs", "k"]] {
        let (mut reader, writer) = std::io::pipe().unwrap();
        fcntl(writer.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).unwrap();
        let mut idem = env
            .idem_std()
            .args(&call)
            .args(if call[0] == "run" { &command[..] } else { &[] })
            .stdin(Stdio::null())
            .stdout(writer)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let read = read_slowly(&mut reader, 256 << 10, Duration::from_millis(5));
        assert_eq!(idem.wait().unwrap().code(), Some(0), "{call:?}");
        assert_eq!(read, size, "{call:?}");
    }
}

/// The user and system CPU time a process (not yet reaped) has used.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    // Fields 14 and 15 (utime, stime), counted from the state (field 3).
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let per_second = sysconf(SysconfVar::CLK_TCK).unwrap().unwrap();
    Duration::from_millis(ticks * 1000 / u64::try_from(per_second).unwrap())
}

/// Reads `reader` to its end, at most `chunk` bytes after each `pause`, as
/// a slow reader does; returns how many bytes came.
fn read_slowly(reader: &mut impl Read, chunk: usize, pause: Duration) -> usize {
    let mut buffer = vec![0; chunk];
    let mut read = 0;
    loop {
        std::thread::sleep(pause);
        match reader.read(&mut buffer).unwrap() {
            0 => return read,
            n => read += n,
        }
    }
}
