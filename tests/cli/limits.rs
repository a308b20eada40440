//! Input at the edges, found by fuzzing the command line: huge durations
//! and limits, far-future dates, bad `--env` names and `--db` values. Each
//! is a usage error (exit 2) or handled, never a panic, and never decided
//! after COMMAND has started.

use crate::support::{records, Env};

/// `idem ARGS` must be a usage error: exit 2, one `idem: ` line that
/// contains `expect`.
#[track_caller]
fn usage_error(env: &Env, args: &[&str], expect: &str) {
    env.test().args(args).status(2).error(&[expect]).run();
}

/// `idem ARGS` succeeds silently on stderr: its stdout.
#[track_caller]
fn stdout(env: &Env, args: &[&str]) -> String {
    env.test().args(args).stdout_any().run().stdout()
}

#[test]
fn huge_durations_are_usage_errors_before_anything_runs() {
    let env = Env::new();
    let count = env.count_run("n");
    for flag in ["--timeout", "--wait-timeout", "--ttl", "--lease"] {
        for value in ["300000000000y", "10001y"] {
            let args = ["run", "-k", "k", flag, value, "--", "sh", "-c", &count];
            usage_error(&env, &args, "at most 10000y");
        }
    }
    env.test()
        .env("IDEM_TTL", "300000000000y")
        .args(["run", "-k", "k"])
        .sh(&count)
        .status(2)
        .error(&["at most 10000y"])
        .run();
    assert_eq!(env.count("n"), 0, "nothing may run");
    // The longest allowed is fine everywhere.
    env.test()
        .args([
            "run",
            "-k",
            "k",
            "--timeout",
            "10000y",
            "--wait-timeout",
            "10000y",
        ])
        .args(["--lease", "10000y", "--", "echo", "ran"])
        .stdout("ran\n")
        .run();
}

#[test]
fn expiry_dates_past_year_9999_are_shown() {
    let env = Env::new();
    env.test()
        .args(["run", "-k", "far", "--ttl", "10000y", "--", "true"])
        .run();
    let shown = stdout(&env, &["inspect", "far"]);
    let expires = shown.lines().find(|l| l.starts_with("expires:")).unwrap();
    assert!(expires.contains(" +012"), "{expires}");
    let record = records(&env, &[]).remove(0);
    let at = record["expires_at"].as_str().unwrap();
    // ISO 8601's expanded year: a sign and six digits.
    assert!(
        at.starts_with("+012") && at.ends_with('Z') && at.len() == 27,
        "{at}"
    );
    let table = stdout(&env, &["inspect"]);
    assert!(table.contains("far"), "{table}");
}

#[test]
fn env_takes_variable_names_only() {
    let env = Env::new();
    let count = env.count_run("n");
    for bad in ["A=1", "", "9A", "A-B", "=x"] {
        let args = ["run", "-k", "k", "--env", bad, "--", "sh", "-c", &count];
        usage_error(&env, &args, "--env");
    }
    usage_error(
        &env,
        &["run", "--env", "A=1", "--", "true"],
        "not an assignment: --env A",
    );
    assert_eq!(env.count("n"), 0);
    env.test().args(["run", "--env", "_A_1"]).sh(&count).run();
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
        let empty = || {
            let call = env.test().env("XDG_STATE_HOME", env.path("xdg"));
            call.status(2).error(&["empty"])
        };
        empty().env("IDEM_DB", "").args(args).run();
        empty().args(["--db", ""]).args(args).run();
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
            usage_error(&env, &all, "--db");
        }
    }
    // Ours in any case: a connection attempt (refused on port 1), not a file.
    for db in [
        "POSTGRES://127.0.0.1:1/x",
        "PostgreSQL://127.0.0.1:1/x",
        "Redis://127.0.0.1:1",
    ] {
        let err = env
            .test()
            .args(["--db", db, "inspect"])
            .status(125)
            .error(&[])
            .run()
            .stderr();
        assert!(err.to_lowercase().contains("refused"), "{db}: {err}");
    }
    assert_eq!(listing(&env), before, "no file or directory may appear");
}

#[test]
fn an_inspect_limit_above_i64_is_no_limit_on_every_store() {
    let env = Env::new();
    for key in ["a", "b"] {
        env.test().args(["run", "-k", key, "--", "true"]).run();
    }
    for limit in ["18446744073709551615", "9223372036854775808"] {
        assert_eq!(records(&env, &["--limit", limit]).len(), 2);
    }
    assert_eq!(records(&env, &["--limit", "1"]).len(), 1);
}
