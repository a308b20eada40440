//! `idem inspect`: listing, filters, the detail view, raw output, the JSON
//! schema, escaping, a closed pipe, and a store that does not exist.

use crate::support::{
    backend, keys, make, make_expired, records, start_reading, Backend, Env, Holder,
};
use serde_json::Value;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

fn stdout_of(env: &Env, args: &[&str]) -> String {
    let out = env.idem().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn lists_newest_first_with_every_column() {
    let env = Env::new();
    assert_eq!(make(&env, "first", &[], "echo one"), 0);
    assert_eq!(make(&env, "second", &[], "exit 3"), 3);
    assert_eq!(make(&env, "third", &[], "echo three"), 0);
    let table = stdout_of(&env, &["inspect"]);
    let lines: Vec<&str> = table.lines().collect();
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        [
            "KEY", "STATUS", "EXIT", "STARTED", "DURATION", "EXPIRES", "REPLAYS", "OWNER", "LABEL",
            "COMMAND"
        ]
    );
    assert_eq!(lines.len(), 4);
    assert!(lines[1].starts_with("third ") && lines[1].contains("completed"));
    assert!(lines[2].starts_with("second ") && lines[2].contains("failed"));
    assert!(lines[2].contains(" 3 ") && lines[2].ends_with("sh -c 'exit 3'"));
    assert!(lines[3].starts_with("first "));
    // Aligned: every row's STATUS starts in the same column.
    let at = lines[0].find("STATUS").unwrap();
    for line in &lines[1..] {
        assert_eq!(line.as_bytes()[at - 1], b' ');
        assert!(line[at..].starts_with("completed") || line[at..].starts_with("failed"));
    }
    assert_eq!(keys(&env, &[]), ["third", "second", "first"]);
}

#[test]
fn each_filter_alone_and_combined() {
    let env = Env::new();
    assert_eq!(make(&env, "job-ok", &[], "true"), 0);
    assert_eq!(make(&env, "job-bad", &[], "exit 1"), 1);
    assert_eq!(make(&env, "other-ok", &[], "true"), 0);
    make_expired(&env, "job-old");
    assert_eq!(keys(&env, &["--status", "failed"]), ["job-bad"]);
    assert_eq!(
        keys(&env, &["--status", "completed"]),
        ["job-old", "other-ok", "job-ok"]
    );
    assert!(keys(&env, &["--status", "in_progress"]).is_empty());
    assert_eq!(keys(&env, &["--expired"]), ["job-old"]);
    assert_eq!(
        keys(&env, &["--prefix", "job-"]),
        ["job-old", "job-bad", "job-ok"]
    );
    assert_eq!(keys(&env, &["--limit", "2"]), ["job-old", "other-ok"]);
    assert_eq!(
        keys(&env, &["--prefix", "job-", "--status", "completed"]),
        ["job-old", "job-ok"]
    );
    assert_eq!(
        keys(
            &env,
            &["--prefix", "job-", "--status", "completed", "--limit", "1"]
        ),
        ["job-old"]
    );
    assert!(keys(&env, &["--prefix", "other-", "--expired"]).is_empty());
    // The table shows an expired record as such.
    let table = stdout_of(&env, &["inspect", "--expired"]);
    assert!(table.lines().nth(1).unwrap().contains(" expired "));
    // A prefix is not a pattern.
    assert!(keys(&env, &["--prefix", "job%"]).is_empty());
    assert!(keys(&env, &["--prefix", "job_"]).is_empty());
}

#[test]
fn detail_view_and_missing_key() {
    let env = Env::new();
    assert_eq!(make(&env, "k", &[], "echo out; echo err >&2; exit 4"), 4);
    let detail = stdout_of(&env, &["inspect", "k"]);
    for line in [
        "key:         k",
        "status:      failed",
        "result:      exit status 4",
        "command:     sh -c 'echo out; echo err >&2; exit 4'",
        "attempt:     1",
        "replays:     0",
        "stdout:      4 bytes stored",
        "stderr:      4 bytes stored",
    ] {
        assert!(detail.contains(line), "{line:?} missing from:\n{detail}");
    }
    for label in [
        "cwd:",
        "fingerprint:",
        "started:",
        "finished:",
        "expires:",
        "owner:",
    ] {
        assert!(detail.contains(label), "{label} missing from:\n{detail}");
    }
    env.idem()
        .args(["inspect", "nope"])
        .assert()
        .code(1)
        .stdout("")
        .stderr("idem: no record for key nope\n");
    env.idem()
        .args(["inspect", "nope", "--stdout"])
        .assert()
        .code(1);
}

#[test]
fn stdout_and_stderr_are_byte_exact() {
    let env = Env::new();
    let all: Vec<u8> = (0..=255u8).collect();
    std::fs::write(env.path("bytes"), &all).unwrap();
    assert_eq!(
        make(&env, "b", &[], "cat bytes; printf 'e\\033\\007' >&2"),
        0
    );
    let out = env
        .idem()
        .args(["inspect", "b", "--stdout"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, all);
    let err = env
        .idem()
        .args(["inspect", "b", "--stderr"])
        .output()
        .unwrap();
    assert!(err.status.success());
    assert_eq!(err.stdout, b"e\x1b\x07");
    assert!(err.stderr.is_empty());
}

/// The `--json` schema of SPEC.md "Operator commands": every field, its
/// JSON type, and no other field.
#[test]
fn json_schema_is_pinned() {
    let env = Env::new();
    assert_eq!(make(&env, "done", &[], "echo hi"), 0);
    assert_eq!(make(&env, "killed", &[], "kill -9 $$"), 137);
    let [killed, done] = &records(&env, &[])[..] else {
        panic!("two records expected")
    };
    let kinds = |v: &Value| -> Vec<(String, &'static str)> {
        let mut fields: Vec<_> = v
            .as_object()
            .unwrap()
            .iter()
            .map(|(name, value)| {
                let kind = match value {
                    Value::Null => "null",
                    Value::Bool(_) => "bool",
                    Value::Number(n) if n.is_i64() => "integer",
                    Value::Number(_) => "number",
                    Value::String(_) => "string",
                    Value::Array(_) => "array",
                    Value::Object(_) => "object",
                };
                (name.clone(), kind)
            })
            .collect();
        fields.sort();
        fields
    };
    let expect = |signal: &'static str, exit_code: &'static str| {
        let mut fields: Vec<(String, &'static str)> = [
            ("key", "string"),
            ("status", "string"),
            ("exit_code", exit_code),
            ("signal", signal),
            ("timed_out", "bool"),
            ("command", "array"),
            ("cwd", "string"),
            ("label", "null"),
            ("fingerprint", "string"),
            ("started_at", "string"),
            ("finished_at", "string"),
            ("expires_at", "string"),
            ("lease_until", "null"),
            ("expired", "bool"),
            ("crashed", "bool"),
            ("duration_ms", "integer"),
            ("attempts", "integer"),
            ("replays", "integer"),
            // A fencing token on a shared store only.
            (
                "token",
                if backend() == Backend::Sqlite {
                    "null"
                } else {
                    "integer"
                },
            ),
            ("owner", "object"),
            ("child_pid", "integer"),
            ("stdout_bytes", "integer"),
            ("stderr_bytes", "integer"),
            ("stdout_truncated", "bool"),
            ("stderr_truncated", "bool"),
        ]
        .into_iter()
        .map(|(n, k)| (n.to_owned(), k))
        .collect();
        fields.sort();
        fields
    };
    assert_eq!(kinds(done), expect("null", "integer"));
    assert_eq!(kinds(killed), expect("integer", "null"));
    assert_eq!(
        kinds(&done["owner"]),
        [
            ("alive".into(), "bool"),
            ("host".into(), "string"),
            ("pid".into(), "integer")
        ]
    );
    assert_eq!(done["status"], "completed");
    assert_eq!(done["exit_code"], 0);
    assert_eq!(killed["status"], "failed");
    assert_eq!(killed["signal"], 9);
    assert_eq!(done["command"], serde_json::json!(["sh", "-c", "echo hi"]));
    assert_eq!(done["stdout_bytes"], 3);
    assert_eq!(done["owner"]["alive"], false);
    assert_eq!(done["fingerprint"].as_str().unwrap().len(), 64);
    // RFC 3339 UTC with milliseconds.
    for field in ["started_at", "finished_at", "expires_at"] {
        let at = done[field].as_str().unwrap();
        assert!(humantime::parse_rfc3339(at).is_ok(), "{field}: {at}");
        assert!(at.ends_with('Z') && at.len() == 24, "{field}: {at}");
    }
    // A running record: nulls where nothing is known yet, a live owner.
    let holder = Holder::start(&env, "running", &[]);
    let running = records(&env, &["--status", "in_progress"]);
    let running = &running[0];
    for field in [
        "exit_code",
        "signal",
        "finished_at",
        "expires_at",
        "duration_ms",
    ] {
        assert_eq!(running[field], Value::Null, "{field}");
    }
    assert_eq!(running["owner"]["alive"], true);
    assert_eq!(running["expired"], false);
    assert_eq!(running["crashed"], false);
    assert!(running["child_pid"].as_i64().unwrap() > 1);
    // A running owner holds a lease on a shared store; on SQLite it holds
    // a lock instead.
    let shared = env.backend() != crate::support::Backend::Sqlite;
    assert_eq!(running["lease_until"].is_string(), shared, "{running}");
    assert!(holder.release().status.success());
}

#[test]
fn labels_are_stored_and_shown_and_crashed_runs_found() {
    let env = Env::new();
    assert_eq!(make(&env, "evt", &["--label", "delivery 7\x1b"], "true"), 0);
    assert_eq!(make(&env, "old", &[], "true"), 0);
    let all = records(&env, &[]);
    assert_eq!(all[1]["label"], "delivery 7\x1b");
    assert_eq!(all[0]["label"], Value::Null);
    let detail = stdout_of(&env, &["inspect", "evt"]);
    assert!(detail.contains("label:       delivery 7"), "{detail}");
    // No fencing token on SQLite, so none is shown.
    assert_eq!(
        detail.contains("token:"),
        backend() != Backend::Sqlite,
        "{detail}"
    );
    let table = stdout_of(&env, &["inspect"]);
    assert!(table.contains(" delivery 7"), "{table}");
    // --older-than: by started_at.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(make(&env, "new", &[], "true"), 0);
    assert_eq!(keys(&env, &["--older-than", "1s"]), ["old", "evt"]);
    // --status crashed: in_progress with a dead owner (its idem SIGKILLed
    // with the child gone), not a running one.
    crate::support::make_crashed(&env, "dead");
    let holder = Holder::start(&env, "running", &[]);
    assert_eq!(keys(&env, &["--status", "crashed"]), ["dead"]);
    assert_eq!(
        keys(&env, &["--status", "crashed", "--limit", "1"]),
        ["dead"]
    );
    let crashed = records(&env, &["--status", "crashed"]);
    assert_eq!(crashed[0]["crashed"], true);
    assert!(holder.release().status.success());
}

#[test]
fn control_characters_never_reach_stdout_raw() {
    let env = Env::new();
    let key = "evil\x1b]0;pwned\x07\nkey\u{9b}31m\u{202e}";
    assert_eq!(make(&env, key, &[], "true"), 0);
    // An argv element that is not UTF-8.
    let status = env
        .idem()
        .args(["run", "-k", "bytes", "--", "echo"])
        .arg(OsStr::from_bytes(b"\xff\xfe\x1b[2J"))
        .output()
        .unwrap()
        .status;
    assert!(status.success());
    let raw_control = |out: &[u8]| {
        let text = std::str::from_utf8(out).expect("stdout is UTF-8");
        text.chars()
            .find(|&c| (c.is_control() && c != '\n') || ('\u{202a}'..='\u{202e}').contains(&c))
    };
    for args in [
        vec!["inspect"],
        vec!["inspect", "--json"],
        vec!["inspect", key],
        vec!["inspect", "bytes"],
        vec!["inspect", "--json", key],
        vec!["purge", "--all", "--dry-run"],
    ] {
        let out = env.idem().args(&args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        assert_eq!(
            raw_control(&out.stdout),
            None,
            "{args:?}: {:?}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert_eq!(
            out.stdout.iter().filter(|&&b| b == b'\n').count(),
            out.stdout
                .split(|&b| b == b'\n')
                .filter(|l| !l.is_empty())
                .count(),
            "{args:?}: one line per item"
        );
    }
    let table = stdout_of(&env, &["inspect"]);
    assert!(
        table.contains("evil\\e]0;pwned\\x07\\nkey\\u{009b}31m\\u{202e}"),
        "{table}"
    );
    assert!(
        table.contains("echo '\\xff\\xfe\\e[2J'") || table.contains("echo \\xff\\xfe\\e[2J"),
        "{table}"
    );
    // JSON keeps the key exact (escaped) and the argv as lossy UTF-8.
    let bytes = &records(&env, &["--prefix", "bytes"])[0];
    assert_eq!(bytes["command"][1], "\u{fffd}\u{fffd}\u{1b}[2J");
    assert_eq!(records(&env, &["--prefix", "evil"])[0]["key"], key);
}

/// Records whose listing is far bigger than a pipe holds.
fn make_big_listing(env: &Env) {
    let long = "x".repeat(20_000);
    for i in 0..24 {
        assert_eq!(make(env, &format!("k{i}"), &[], &format!("true {long}")), 0);
    }
}

#[test]
fn a_closed_pipe_is_a_quiet_exit() {
    let env = Env::new();
    make_big_listing(&env);
    for args in [&["inspect"][..], &["inspect", "--json"]] {
        let (idem, stdout) = start_reading(&env, args);
        drop(stdout);
        let out = idem.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert_eq!(String::from_utf8_lossy(&out.stderr), "", "{args:?}");
    }
}

#[test]
fn a_listing_in_progress_never_blocks_run_or_purge() {
    let env = Env::new();
    make_big_listing(&env);
    // inspect is mid-listing, stuck on a full pipe, its read open.
    let (idem, stdout) = start_reading(&env, &["inspect", "--json"]);
    assert_eq!(make(&env, "meanwhile", &[], "true"), 0);
    env.idem()
        .args(["purge", "k1", "k2"])
        .assert()
        .success()
        .stdout("purged 2, skipped 0\n");
    drop(stdout);
    assert_eq!(idem.wait_with_output().unwrap().status.code(), Some(0));
}

#[test]
fn a_missing_store_is_empty_and_never_created() {
    let env = Env::sqlite();
    env.idem().arg("inspect").assert().success().stdout("");
    env.idem()
        .args(["inspect", "--json"])
        .assert()
        .success()
        .stdout("");
    env.idem().args(["inspect", "k"]).assert().code(1);
    env.idem()
        .args(["inspect", "k", "--stdout"])
        .assert()
        .code(1);
    env.idem()
        .arg("purge")
        .assert()
        .success()
        .stdout("purged 0, skipped 0\n");
    env.idem()
        .args(["purge", "--all", "--json"])
        .assert()
        .success();
    assert!(!env.db_path().exists());
    assert!(
        !env.db_path().parent().unwrap().exists(),
        "no directory either"
    );
}
