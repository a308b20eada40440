//! What a caller is told: `--report`, `--on-duplicate skip`, `-v`, the
//! fingerprint inputs that guard against silently merged events, `--label`,
//! and `idem stats` for operators.

use crate::support::{
    backend, make, make_expired, run_sh, sh, start_reading, Backend, Env, Holder,
};
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;

/// The report's fields, in the order SPEC.md lists them.
const FIELDS: [&str; 14] = [
    "key",
    "outcome",
    "reason",
    "exit_code",
    "attempt",
    "took_over",
    "record_status",
    "started_at",
    "finished_at",
    "duration_ms",
    "replays",
    "store",
    "lease_until",
    "retry_after_ms",
];

fn store_kind() -> &'static str {
    match backend() {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
        Backend::Redis => "redis",
    }
}

/// Runs idem with `--report report.json` and `args`; returns (exit code, report).
#[track_caller]
fn reported(env: &Env, args: &[&str]) -> (i32, Value) {
    let path = env.path("report.json");
    let _ = std::fs::remove_file(&path);
    let out = env
        .idem()
        .args(["run", "--report", "report.json"])
        .args(args)
        .output()
        .unwrap();
    let text = std::fs::read_to_string(&path).expect("a report");
    assert!(text.ends_with("}\n") && text.lines().count() == 1, "{text}");
    // Every field, in the pinned order.
    let mut at = 0;
    for field in FIELDS {
        let found = text[at..]
            .find(&format!("\"{field}\":"))
            .unwrap_or_else(|| panic!("{field} missing or out of order in {text}"));
        at += found;
    }
    let report: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(report.as_object().unwrap().len(), FIELDS.len(), "{text}");
    assert_eq!(report["store"], store_kind());
    assert_eq!(report["exit_code"], out.status.code().unwrap(), "{text}");
    (out.status.code().unwrap(), report)
}

#[test]
fn the_report_says_what_each_call_did() {
    let env = Env::new();
    let (code, ran) = reported(&env, &["-k", "r", "--", "echo", "hi"]);
    assert_eq!(code, 0);
    let mode = std::fs::metadata(env.path("report.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(ran["key"], "r");
    assert_eq!(ran["outcome"], "ran");
    assert_eq!(ran["reason"], Value::Null);
    assert_eq!(ran["attempt"], 1);
    assert_eq!(ran["took_over"], false);
    assert_eq!(ran["record_status"], "completed");
    assert_eq!(ran["replays"], 0);
    for field in ["started_at", "finished_at"] {
        let at = ran[field].as_str().unwrap();
        assert!(humantime::parse_rfc3339(at).is_ok(), "{field}: {at}");
    }
    assert!(ran["duration_ms"].as_i64().unwrap() >= 0);
    assert_eq!(ran["lease_until"], Value::Null);
    assert_eq!(ran["retry_after_ms"], Value::Null);

    let (code, replayed) = reported(&env, &["-k", "r", "--", "echo", "hi"]);
    assert_eq!(code, 0);
    assert_eq!(replayed["outcome"], "replayed");
    assert_eq!(replayed["replays"], 1);
    assert_eq!(replayed["started_at"], ran["started_at"]);
    assert_eq!(replayed["duration_ms"], ran["duration_ms"]);

    let (code, refused) = reported(
        &env,
        &["-k", "r", "--on-duplicate", "fail", "--", "echo", "hi"],
    );
    assert_eq!(
        (code, &refused["outcome"], &refused["reason"]),
        (76, &"refused".into(), &"completed".into())
    );

    let (code, skipped) = reported(
        &env,
        &["-k", "r", "--on-duplicate", "skip", "--", "echo", "hi"],
    );
    assert_eq!((code, &skipped["outcome"]), (0, &"skipped".into()));

    let (code, mismatch) = reported(&env, &["-k", "r", "--", "echo", "other"]);
    assert_eq!((code, &mismatch["reason"]), (65, &"mismatch".into()));

    let (code, failed) = reported(&env, &["-k", "f", "--", "sh", "-c", "exit 3"]);
    assert_eq!((code, &failed["outcome"]), (3, &"ran".into()));
    assert_eq!(failed["record_status"], "failed");
    let (_, again) = reported(&env, &["-k", "f", "--", "sh", "-c", "exit 3"]);
    assert_eq!(again["attempt"], 2);

    let (code, missing) = reported(&env, &["-k", "m", "--", "no-such-command-here"]);
    assert_eq!((code, &missing["outcome"]), (127, &"ran".into()));
}

#[test]
fn the_report_of_a_running_key_skip_wait_and_join() {
    let env = Env::new();
    let holder = Holder::start(&env, "busy", &[]);
    let script = Holder::script(&env);
    let busy = ["-k", "busy", "--", "sh", "-c", &script];
    let (code, refused) = reported(&env, &busy);
    assert_eq!((code, &refused["reason"]), (75, &"in_progress".into()));
    assert_eq!(refused["record_status"], "in_progress");
    // When to come back (an HTTP handler's Retry-After): the owner's lease,
    // by the store's clock; SQLite has no lease to tell.
    if backend() == Backend::Sqlite {
        assert_eq!(refused["lease_until"], Value::Null);
        assert_eq!(refused["retry_after_ms"], Value::Null);
    } else {
        let until = refused["lease_until"].as_str().unwrap();
        assert!(humantime::parse_rfc3339(until).is_ok(), "{until}");
        let retry = refused["retry_after_ms"].as_i64().unwrap();
        assert!((0..=30_000).contains(&retry), "{refused}");
    }

    // skip: exit 0, not a byte on stdout or stderr; -v says why.
    let out = env
        .idem()
        .args(["run", "--on-duplicate", "skip"])
        .args(busy)
        .output()
        .unwrap();
    assert_eq!(
        (out.status.code(), &out.stdout[..], &out.stderr[..]),
        (Some(0), &b""[..], &b""[..])
    );
    let out = env
        .idem()
        .args(["run", "-v", "--on-duplicate", "skip"])
        .args(busy)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("in progress elsewhere") && said.contains("skipping"),
        "{said}"
    );
    let (code, skipped) = reported(&env, &[&["--on-duplicate", "skip"][..], &busy].concat());
    assert_eq!((code, &skipped["outcome"]), (0, &"skipped".into()));

    let (code, timed_out) = reported(
        &env,
        &[
            &["--on-duplicate", "wait", "--wait-timeout", "100ms"][..],
            &busy,
        ]
        .concat(),
    );
    assert_eq!((code, &timed_out["reason"]), (75, &"wait_timeout".into()));

    // The waiter is attached once it shows the run's first bytes.
    let (waiter, _stdout) = start_reading(
        &env,
        &[
            &["run", "--report", "joined.json", "--on-duplicate", "wait"][..],
            &busy,
        ]
        .concat(),
    );
    assert!(holder.release().status.success());
    assert!(waiter.wait_with_output().unwrap().status.success());
    let joined: Value =
        serde_json::from_str(&std::fs::read_to_string(env.path("joined.json")).unwrap()).unwrap();
    assert_eq!(joined["outcome"], "joined");
    assert_eq!(joined["record_status"], "completed");
}

#[test]
fn the_report_of_a_takeover_and_of_a_failed_store() {
    let env = Env::new();
    crate::support::make_crashed(&env, "k");
    let (code, took) = reported(&env, &["-k", "k", "--allow-mismatch", "--", "true"]);
    assert_eq!(code, 0);
    assert_eq!(
        (&took["took_over"], &took["attempt"]),
        (&true.into(), &2.into())
    );

    // A store that cannot be opened: refused, store_error, exit 125.
    std::fs::create_dir(env.path("a-directory")).unwrap();
    let out = env
        .idem()
        .args([
            "run",
            "--db",
            "a-directory",
            "--report",
            "r.json",
            "--",
            "true",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(env.path("r.json")).unwrap()).unwrap();
    assert_eq!(
        (&report["outcome"], &report["reason"]),
        (&"refused".into(), &"store_error".into())
    );
    assert_eq!(report["store"], "sqlite");
}

#[test]
fn the_report_goes_to_an_inherited_fd_and_never_to_nested_calls() {
    let env = Env::new();
    // IDEM_REPORT=/dev/fd/3 with fd 3 a pipe; a nested idem (a step) inside
    // COMMAND must not write its own report there.
    let inner = format!("'{}' run -k inner -- true", crate::support::bin().display());
    let out = env
        .idem_std()
        .env("IDEM_REPORT", "/dev/fd/3")
        .args(["run", "-k", "outer", "--"])
        .args(sh(&inner))
        .output()
        .unwrap();
    assert!(out.status.success());
    let script = format!(
        "IDEM_REPORT=/dev/fd/3 '{}' run -k outer -- sh -c \"$0\" 3>&1 >/dev/null",
        crate::support::bin().display()
    );
    let out = std::process::Command::new("sh")
        .args(["-c", &script, &inner])
        .env("IDEM_DB", &env.db)
        .current_dir(env.dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(
        text.starts_with("{\"key\":\"outer\",\"outcome\":\"replayed\""),
        "{text}"
    );

    // A report that cannot be written: a notice, the exit status unchanged.
    let out = env
        .idem()
        .args(run_sh(
            &["-k", "n", "--report", "no/such/dir/r.json"],
            "exit 4",
        ))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot write the report"));

    // A usage error writes none.
    env.idem()
        .args(["run", "-k", "", "--report", "usage.json", "--", "true"])
        .assert()
        .code(2);
    assert!(!env.path("usage.json").exists());
}

#[test]
fn verbose_names_the_key_and_the_store() {
    let env = Env::new();
    let out = env
        .idem()
        .args(["run", "-v", "--", "echo", "hi"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    // The derived key of `echo hi` never changes (see src/key.rs).
    assert!(
        said.contains("key 'cmd:04c381c55152b225bbff9092d2a12e2f' (derived from the command)"),
        "{said}"
    );
    let store = match backend() {
        Backend::Sqlite => "store: SQLite file ",
        Backend::Postgres => "store: PostgreSQL postgres://",
        Backend::Redis => "store: Redis redis://",
    };
    assert!(said.contains(store), "{said}");
}

#[test]
#[ignore = "needs script, from util-linux (.ci/run installs it)"]
fn fingerprint_stdin_refuses_a_terminal_and_notes_an_empty_stdin() {
    let env = Env::new();
    let out = env
        .idem()
        .args(["run", "--fingerprint-stdin", "--", "cat"])
        .write_stdin("")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--fingerprint-stdin read nothing"));
    // A terminal on stdin (script(1) gives idem one): usage error, nothing run.
    let inner = format!(
        "'{}' run --fingerprint-stdin -- sh -c '{}'",
        crate::support::bin().display(),
        env.count_run("n")
    );
    let out = std::process::Command::new("script")
        .args(["-qefc", &inner, "/dev/null"])
        .env("IDEM_DB", &env.db)
        .current_dir(env.dir.path())
        .stdin(Stdio::null())
        .output()
        .expect("script(1), from bsdutils");
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("stdin is a terminal"));
    assert_eq!(env.count("n"), 0);
}

#[test]
fn fingerprint_files_tell_payloads_apart() {
    let env = Env::new();
    let run = |payload: &str| {
        std::fs::write(env.path("payload.json"), payload).unwrap();
        env.idem()
            .args([
                "run",
                "--fingerprint-file",
                "payload.json",
                "--fingerprint-file",
                "payload.json",
                "--",
            ])
            .args(sh(&env.count_run("n")))
            .assert()
            .success();
    };
    run("{\"id\":1}");
    run("{\"id\":1}");
    assert_eq!(env.count("n"), 1, "the same payload is the same call");
    run("{\"id\":2}");
    assert_eq!(env.count("n"), 2, "another payload is another call");
    env.idem()
        .args(["run", "--fingerprint-file", "missing.json", "--", "true"])
        .assert()
        .code(2)
        .stderr(predicates::str::contains("--fingerprint-file missing.json"));
    assert_eq!(
        crate::support::keys(&env, &[]).len(),
        2,
        "nothing recorded for a usage error"
    );
}

#[test]
fn labels_are_bounded() {
    let env = Env::new();
    env.idem()
        .args(["run", "--label", &"x".repeat(257), "--", "true"])
        .assert()
        .code(2);
    env.idem()
        .args(["run", "-k", "l", "--label", &"x".repeat(256), "--", "true"])
        .assert()
        .success();
    assert_eq!(
        crate::support::records(&env, &[])[0]["label"],
        "x".repeat(256)
    );
}

#[test]
#[ignore = "needs promtool, from prometheus (.ci/run installs it)"]
fn stats_sum_up_the_store() {
    let env = Env::new();
    make(&env, "job-ok", &["--on-duplicate", "replay"], "true");
    make(&env, "job-ok", &[], "true");
    make(&env, "job-bad", &[], "exit 1");
    make(&env, "job-bad", &[], "exit 1");
    crate::support::make_crashed(&env, "job-dead");
    let holder = Holder::start(&env, "job-live", &[]);
    // Last: a claim removes expired records on its way.
    make_expired(&env, "other-old");
    let stats = |args: &[&str]| -> Value {
        let out = env.idem().arg("stats").args(args).output().unwrap();
        assert!(out.status.success());
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let all = stats(&["--json"]);
    assert_eq!(all["records"], 5, "{all}");
    for (field, n) in [
        ("running", 1),
        ("crashed", 1),
        ("completed", 1),
        ("failed", 1),
        ("expired", 1),
        ("replays", 1),
        ("max_attempt", 2),
    ] {
        assert_eq!(all[field], n, "{field}: {all}");
    }
    assert!(all["oldest_running_seconds"].as_f64().unwrap() >= 0.0);
    assert!(all["oldest_crashed_seconds"].as_f64().unwrap() >= 0.0);
    assert_eq!(all["store"], store_kind());
    assert_eq!(
        all["size_bytes"].is_u64(),
        backend() != Backend::Redis,
        "{all}"
    );
    let jobs = stats(&["--json", "--prefix", "job-"]);
    assert_eq!((&jobs["records"], &jobs["expired"]), (&4.into(), &0.into()));

    let out = env
        .idem()
        .args(["stats", "--prometheus", "--prefix", "job-"])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains(",prefix=\"job-\",state=\"crashed\"} 1\n"),
        "{text}"
    );
    let (status, said) = std::process::Command::new(crate::support::tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .output_with(text.as_bytes());
    assert!(status.success(), "promtool: {said}");
    let out = env.idem().arg("stats").output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("crashed:        1\n"), "{text}");
    assert!(holder.release().status.success());
}

/// Runs a command with `input` on its stdin; returns its status and all it printed.
trait OutputWith {
    fn output_with(&mut self, input: &[u8]) -> (std::process::ExitStatus, String);
}

impl OutputWith for std::process::Command {
    fn output_with(&mut self, input: &[u8]) -> (std::process::ExitStatus, String) {
        use std::io::Write;
        let mut child = self
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        let out = child.wait_with_output().unwrap();
        let mut said = String::from_utf8_lossy(&out.stdout).into_owned();
        said.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status, said)
    }
}
