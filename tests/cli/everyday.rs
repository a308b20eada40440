//! What everyday callers rely on beside the promise: COMMAND without `--`
//! as for timeout(1) and env(1); the store and the lease passed on to the
//! steps inside COMMAND; idem's own lines as JSON for log shippers; and a
//! `store` label that keeps two stores' Prometheus series apart.

use crate::support::{path_with_idem, tool, Backend, Env};
use std::process::Stdio;

#[track_caller]
fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8(out.stderr.clone()).expect("UTF-8 stderr")
}

#[test]
fn command_starts_at_the_first_word_that_is_not_an_option() {
    let env = Env::new();
    assert_eq!(env.run_ok(&["run", "-k", "a", "echo", "hi"]), "hi\n");
    // Once COMMAND has started, every word is its own, options included.
    assert_eq!(
        env.run_ok(&["run", "-k", "b", "printf", "%s,", "-k", "--db", "--"]),
        "-k,--db,--,"
    );
    // The same call again is a duplicate: replayed.
    assert_eq!(env.run_ok(&["run", "-k", "a", "echo", "hi"]), "hi\n");
    // idem's options come before COMMAND: an unknown one is still a usage error.
    let out = env
        .idem()
        .args(["run", "-k", "c", "-x", "echo"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
}

#[test]
fn steps_inside_command_use_its_store_and_lease() {
    let env = Env::new();
    let shown = env.run_ok(&[
        "--db",
        &env.db,
        "run",
        "-k",
        "outer",
        "--lease",
        "7s",
        "--",
        "sh",
        "-c",
        r#"printf '%s|%s\n' "$IDEM_DB" "$IDEM_LEASE""#,
    ]);
    assert_eq!(shown, format!("{}|7s\n", env.db));

    // A step keyed under $IDEM_KEY lands in the same store, though only
    // --db named it and nothing else in the caller's environment does.
    let out = env
        .idem()
        .env_remove("IDEM_DB")
        .env("PATH", path_with_idem())
        .args(["--db", &env.db, "run", "-k", "job", "--"])
        .args(["sh", "-c", r#"idem run -k "$IDEM_KEY/step-1" -- echo step"#])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(out.stdout, b"step\n");
    let listed = env.run_ok(&["inspect", "--prefix", "job/", "--json"]);
    assert!(listed.contains(r#""key":"job/step-1""#), "{listed}");
}

#[test]
fn the_lease_comes_from_idem_lease_and_is_at_least_a_second() {
    let env = Env::new();
    for (var, flag) in [(Some("500ms"), None), (None, Some("999ms"))] {
        let mut idem = env.idem();
        if let Some(value) = var {
            idem.env("IDEM_LEASE", value);
        }
        idem.args(["run", "-k", "short"]);
        if let Some(value) = flag {
            idem.args(["--lease", value]);
        }
        let out = idem.args(["--", "true"]).output().unwrap();
        let said = stderr_of(&out);
        assert_eq!(out.status.code(), Some(2), "{said}");
        assert!(said.contains("at least 1s"), "{said}");
    }
    let out = env
        .idem()
        .env("IDEM_LEASE", "2s")
        .args(["run", "-k", "ok", "--", "sh", "-c", "echo $IDEM_LEASE"])
        .output()
        .unwrap();
    assert_eq!(out.stdout, b"2s\n", "{}", stderr_of(&out));
}

#[test]
fn log_lines_are_json_objects_when_asked_and_the_output_is_untouched() {
    let env = Env::new();
    env.run_ok(&["run", "-k", "done", "--", "true"]);
    for asked in [&["--log-format", "json"][..], &[]] {
        let mut idem = env.idem();
        if asked.is_empty() {
            idem.env("IDEM_LOG_FORMAT", "json");
        }
        let out = idem
            .args(asked)
            .args(["run", "-k", "done", "--on-duplicate", "fail", "--", "true"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(76));
        let said = stderr_of(&out);
        assert_eq!(said.lines().count(), 1, "{said}");
        let line: serde_json::Value = serde_json::from_str(&said).expect("one JSON object");
        assert_eq!(line["level"], "error", "{said}");
        assert_eq!(line["event"], "refused", "{said}");
        assert_eq!(line["key"], "done", "{said}");
        assert!(
            line["message"].as_str().is_some_and(|m| m.contains("done")),
            "{said}"
        );
    }
    // -v explains as `info`; COMMAND's own stderr stays as it wrote it.
    let out = env
        .idem()
        .args(["--log-format", "json", "-v", "run", "-k", "new", "--"])
        .args(["sh", "-c", "echo plain >&2"])
        .output()
        .unwrap();
    let said = stderr_of(&out);
    assert!(said.lines().any(|l| l == "plain"), "{said}");
    let levels: Vec<String> = said
        .lines()
        .filter(|l| *l != "plain")
        .map(|line| {
            let line: serde_json::Value = serde_json::from_str(line).expect("a JSON object");
            line["level"].as_str().unwrap_or_default().to_owned()
        })
        .collect();
    // (A store may add a notice, as Redis without persistence does.)
    assert!(levels.iter().any(|l| l == "info"), "{said}");
    assert!(
        levels.iter().all(|l| l == "info" || l == "notice"),
        "{said}"
    );
    // A usage error asked for as JSON is JSON too.
    let out = env
        .idem()
        .args(["--log-format=json", "run", "--ttl", "soon", "true"])
        .output()
        .unwrap();
    let line: serde_json::Value = serde_json::from_str(&stderr_of(&out)).expect("JSON");
    assert_eq!(line["event"], "usage_error");
}

/// `idem stats --prometheus` of `env`'s store, after one run in it.
fn exported(env: &Env) -> String {
    env.run_ok(&["run", "-k", "one", "--", "true"]);
    env.run_ok(&["stats", "--prometheus"])
}

/// The series of an exposition: its sample lines without their values.
fn series(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.rsplit_once(' ').expect("a sample").0)
        .collect()
}

#[test]
fn every_series_names_its_store() {
    let (a, b) = (Env::new(), Env::new());
    let (text_a, text_b) = (exported(&a), exported(&b));
    for (env, text) in [(&a, &text_a), (&b, &text_b)] {
        let label = match env.backend() {
            Backend::Sqlite => format!("store=\"{}\"", env.db),
            _ => "store=\"".to_owned(),
        };
        for sample in series(text) {
            assert!(sample.contains(&label), "{sample} lacks {label}");
        }
        assert!(!text.contains("password"), "{text}");
    }
    let one = series(&text_a);
    assert!(
        series(&text_b).iter().all(|s| !one.contains(s)),
        "two stores export the same series:\n{text_a}\n{text_b}"
    );
}

#[test]
#[ignore = "needs promtool (Debian: prometheus; .ci/run installs it)"]
fn two_stores_in_one_textfile_directory_pass_promtool() {
    let (a, b) = (Env::new(), Env::new());
    for text in [exported(&a), exported(&b)] {
        let mut check = std::process::Command::new(tool("promtool"))
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut check.stdin.take().unwrap(), text.as_bytes()).unwrap();
        let out = check.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // node_exporter's textfile collector reads every *.prom file of its
    // directory as one exposition: the same metric family may come from
    // several files, but no series twice. promtool checks the merge, with
    // each family's HELP and TYPE once.
    let merged = merge(&[exported(&a), exported(&b)]);
    let mut check = std::process::Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut check.stdin.take().unwrap(), merged.as_bytes()).unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool on the merge: {}{}\n{merged}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Expositions merged as the textfile collector does: each family's
/// comment lines once, then every file's samples of it.
fn merge(texts: &[String]) -> String {
    let mut families: Vec<(String, Vec<String>)> = Vec::new();
    for text in texts {
        let mut current = None;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap_or_default().to_owned();
                let at = families.iter().position(|(n, _)| *n == name);
                current = Some(at.unwrap_or_else(|| {
                    families.push((name, vec![line.to_owned()]));
                    families.len() - 1
                }));
                continue;
            }
            let Some(at) = current else { continue };
            let lines = &mut families[at].1;
            if !(line.starts_with("# TYPE ") && lines.iter().any(|l| l == line)) {
                lines.push(line.to_owned());
            }
        }
    }
    let mut out = String::new();
    for (_, lines) in families {
        for line in lines {
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}
