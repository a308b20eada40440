//! Input at the edges, found by fuzzing the command line: huge durations
//! and limits, far-future dates, bad `--env` names and `--db` values. Each
//! is a usage error (exit 2) or handled, never a panic, and never decided
//! after COMMAND has started.

use crate::support::{sh, Env};

/// The output of `idem ARGS` as (code, stdout, stderr).
fn idem(env: &Env, args: &[&str]) -> (Option<i32>, String, String) {
    let out = env.idem().args(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Exit 2 with one `idem: ` line that contains `expect`.
#[track_caller]
fn usage_error(result: (Option<i32>, String, String), expect: &str) {
    let (code, _, err) = result;
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.starts_with("idem: ") && err.lines().count() == 1,
        "{err}"
    );
    assert!(err.contains(expect), "{err}");
}

#[test]
fn huge_durations_are_usage_errors_before_anything_runs() {
    let env = Env::new();
    let count = env.count_run("n");
    let [shell, c, script] = sh(&count);
    for flag in ["--timeout", "--wait-timeout", "--ttl", "--lease"] {
        for value in ["300000000000y", "10001y"] {
            usage_error(
                idem(
                    &env,
                    &["run", "-k", "k", flag, value, "--", &shell, &c, &script],
                ),
                "at most 10000y",
            );
        }
    }
    let out = env
        .idem()
        .env("IDEM_TTL", "300000000000y")
        .args(["run", "-k", "k", "--", &shell, &c, &script])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(env.count("n"), 0, "nothing may run");
    // The longest allowed is fine everywhere.
    let (code, out, err) = idem(
        &env,
        &[
            "run",
            "-k",
            "k",
            "--timeout",
            "10000y",
            "--wait-timeout",
            "10000y",
            "--lease",
            "10000y",
            "--",
            "echo",
            "ran",
        ],
    );
    assert_eq!((code, out.as_str()), (Some(0), "ran\n"), "{err}");
}

#[test]
fn expiry_dates_past_year_9999_are_shown() {
    let env = Env::new();
    let (code, _, err) = idem(&env, &["run", "-k", "far", "--ttl", "10000y", "--", "true"]);
    assert_eq!(code, Some(0), "{err}");
    let (code, out, err) = idem(&env, &["inspect", "far"]);
    assert_eq!(code, Some(0), "{err}");
    let expires = out.lines().find(|l| l.starts_with("expires:")).unwrap();
    assert!(expires.contains(" +012"), "{expires}");
    let (code, out, err) = idem(&env, &["inspect", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let record: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let at = record["expires_at"].as_str().unwrap();
    // ISO 8601's expanded year: a sign and six digits.
    assert!(
        at.starts_with("+012") && at.ends_with('Z') && at.len() == 27,
        "{at}"
    );
    let (code, out, err) = idem(&env, &["inspect"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("far"), "{out}");
}

#[test]
fn env_takes_variable_names_only() {
    let env = Env::new();
    let count = env.count_run("n");
    let [shell, c, script] = sh(&count);
    for bad in ["A=1", "", "9A", "A-B", "=x"] {
        usage_error(
            idem(
                &env,
                &["run", "-k", "k", "--env", bad, "--", &shell, &c, &script],
            ),
            "--env",
        );
    }
    usage_error(
        idem(&env, &["run", "--env", "A=1", "--", "true"]),
        "not an assignment: --env A",
    );
    assert_eq!(env.count("n"), 0);
    let (code, _, err) = idem(&env, &["run", "--env", "_A_1", "--", &shell, &c, &script]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(env.count("n"), 1);
}

/// The names in the test's directory, to see that nothing was created.
fn listing(env: &Env) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(env.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn an_empty_db_is_a_usage_error_not_the_default_store() {
    let env = Env::new();
    for args in [
        &["run", "-k", "k", "--", "true"][..],
        &["inspect"],
        &["purge", "--all"],
    ] {
        let mut with_flag = vec!["--db", ""];
        with_flag.extend_from_slice(args);
        for via_env in [false, true] {
            let mut cmd = env.idem();
            cmd.env("XDG_STATE_HOME", env.path("xdg"));
            if via_env {
                cmd.env("IDEM_DB", "").args(args);
            } else {
                cmd.args(&with_flag);
            }
            let out = cmd.output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{args:?} {via_env}: {err}");
            assert!(err.contains("empty"), "{err}");
        }
    }
    assert!(
        !env.path("xdg").exists(),
        "the default store must not be created"
    );
}

#[test]
fn db_schemes_are_case_insensitive_and_unknown_ones_refused() {
    let env = Env::new();
    let before = listing(&env);
    for db in [
        "mysql://localhost/db",
        "file:///tmp/x.db",
        "postgres:/x",
        "postgresql:x",
        "redis:x",
        "Redis:/x",
        "REDISS:x",
    ] {
        for args in [
            &["run", "-k", "k", "--", "true"][..],
            &["inspect"],
            &["purge"],
        ] {
            let mut all = vec!["--db", db];
            all.extend_from_slice(args);
            usage_error(idem(&env, &all), "--db");
        }
    }
    // Ours in any case: a connection attempt (refused on port 1), not a file.
    for db in [
        "POSTGRES://127.0.0.1:1/x",
        "PostgreSQL://127.0.0.1:1/x",
        "Redis://127.0.0.1:1",
    ] {
        let (code, _, err) = idem(&env, &["--db", db, "inspect"]);
        assert_eq!(code, Some(125), "{db}: {err}");
        assert!(err.to_lowercase().contains("refused"), "{db}: {err}");
    }
    assert_eq!(listing(&env), before, "no file or directory may appear");
}

#[test]
fn an_inspect_limit_above_i64_is_no_limit_on_every_store() {
    let env = Env::new();
    for key in ["a", "b"] {
        env.idem()
            .args(["run", "-k", key, "--", "true"])
            .assert()
            .success();
    }
    for limit in ["18446744073709551615", "9223372036854775808"] {
        let (code, out, err) = idem(&env, &["inspect", "--json", "--limit", limit]);
        assert_eq!(code, Some(0), "{err}");
        assert_eq!(out.lines().count(), 2, "{out}");
    }
    let (code, out, _) = idem(&env, &["inspect", "--json", "--limit", "1"]);
    assert_eq!((code, out.lines().count()), (Some(0), 1));
}
