//! PostgreSQL specifics: the `?table=` parameter, a schema that is versioned
//! and never adopts a stranger's table, credentials that never show, and a
//! server that is unreachable or drops the connection. Run with
//! `IDEM_TEST_BACKEND=postgres`; skipped otherwise.

use crate::support::{backend, postgres_url, psql, sh, wait_for, Backend, Env};
use std::process::Stdio;

fn postgres() -> bool {
    backend() == Backend::Postgres
}

/// `Env`'s URL with `extra` query parameters added.
fn url_with(env: &Env, extra: &str) -> String {
    format!("{}&{extra}", env.db)
}

#[test]
fn the_table_parameter_names_the_tables_and_defaults_to_idem_records() {
    if !postgres() {
        return;
    }
    let env = Env::new();
    let t = env.unique();
    env.idem()
        .args(["run", "-k", "k", "--", "echo", "hi"])
        .assert()
        .success();
    assert_eq!(
        psql(&format!(
            "SELECT count(*) FROM {t}; SELECT value FROM {t}_meta WHERE name = 'schema_version'"
        )),
        "1\n1"
    );

    // No ?table=: idem_records, here inside a schema of this test's own
    // (URL parameters other than idem's reach the server).
    let schema = format!("s_{t}");
    psql(&format!("CREATE SCHEMA {schema}"));
    let url = format!("{}?options=-c%20search_path%3D{schema}", postgres_url());
    env.idem()
        .args(["--db", &url, "run", "-k", "k", "--", "echo", "hi"])
        .assert()
        .success();
    let tables = psql(&format!(
        "SELECT string_agg(relname, ',' ORDER BY relname) FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace WHERE nspname = '{schema}' AND relkind IN ('r', 'S')"
    ));
    psql(&format!("DROP SCHEMA {schema} CASCADE"));
    assert_eq!(tables, "idem_records,idem_records_meta,idem_records_token");
}

#[test]
fn a_bad_table_name_or_tls_mode_is_a_usage_error() {
    if !postgres() {
        return;
    }
    let env = Env::new();
    let base = postgres_url();
    for (url, says) in [
        (format!("{base}?table=a;drop"), "not a plain table name"),
        (
            format!("{base}?sslmode=require"),
            "sslmode=require needs TLS",
        ),
    ] {
        env.idem()
            .args(["--db", &url, "run", "-k", "k", "--"])
            .args(sh(&env.count_run("n")))
            .assert()
            .code(2)
            .stderr(predicates::str::contains(says));
    }
    assert_eq!(env.count("n"), 0);
}

#[test]
fn a_table_idem_did_not_make_is_refused_untouched() {
    if !postgres() {
        return;
    }
    let env = Env::new();
    let t = env.unique();
    psql(&format!(
        "CREATE TABLE {t} (key text, note text); INSERT INTO {t} VALUES ('k', 'theirs')"
    ));
    env.idem()
        .args(["run", "-k", "k", "--"])
        .args(sh(&env.count_run("n")))
        .assert()
        .code(125)
        .stderr(predicates::str::contains("is not an idem store"));
    assert_eq!(env.count("n"), 0);
    assert_eq!(psql(&format!("SELECT key || note FROM {t}")), "ktheirs");
    assert_eq!(
        psql(&format!("SELECT to_regclass('{t}_meta') IS NULL")),
        "t"
    );
}

#[test]
fn a_newer_schema_is_refused_untouched() {
    if !postgres() {
        return;
    }
    let env = Env::new();
    let t = env.unique();
    env.idem()
        .args(["run", "-k", "k", "--", "true"])
        .assert()
        .success();
    psql(&format!("UPDATE {t}_meta SET value = 2"));
    env.idem()
        .args(["run", "-k", "other", "--"])
        .args(sh(&env.count_run("n")))
        .assert()
        .code(125)
        .stderr(predicates::str::contains("schema version 2, newer"));
    assert_eq!(env.count("n"), 0);
    assert_eq!(psql(&format!("SELECT count(*) FROM {t}")), "1");
}

#[test]
fn an_unreachable_server_fails_before_the_command_and_hides_passwords() {
    if !postgres() {
        return;
    }
    let env = Env::new();
    // Port 1: nothing listens there.
    let url = "postgres://app:hunter2@127.0.0.1:1/test?table=x";
    let out = env
        .idem()
        .env("PGPASSWORD", "env-secret")
        .args(["--db", url, "run", "-k", "k", "--"])
        .args(sh(&env.count_run("n")))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(
        err.starts_with("idem: store postgres://app@127.0.0.1:1/test?table=x: "),
        "{err}"
    );
    assert!(
        !err.contains("hunter2") && !err.contains("env-secret"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(env.count("n"), 0);
}

#[test]
fn server_errors_hide_passwords_too() {
    if !postgres() {
        return;
    }
    let env = Env::new();
    // A real server, a database that does not exist; the password also in
    // the user name's place, where a careless message would echo it.
    let base = postgres_url();
    let (_, rest) = base.split_once("://").unwrap();
    let host = rest.split_once('@').map_or(rest, |(_, h)| h);
    let host = host.split_once('/').map_or(host, |(h, _)| h);
    for (url, pgpassword) in [
        (
            format!(
                "postgres://postgres:hunter2@{host}/no_such_db_{}",
                env.unique()
            ),
            None,
        ),
        (
            format!("postgres://postgres@{host}/no_such_db_{}", env.unique()),
            Some("hunter2"),
        ),
    ] {
        let mut cmd = env.idem();
        if let Some(password) = pgpassword {
            cmd.env("PGPASSWORD", password);
        }
        let out = cmd
            .args(["--db", &url, "run", "-k", "k", "--"])
            .args(sh(&env.count_run("n")))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{err}");
        assert!(err.contains("does not exist"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }
    assert_eq!(env.count("n"), 0);
}

#[test]
fn a_dropped_connection_mid_run_is_reconnected_for_the_outcome() {
    if !postgres() {
        return;
    }
    let env = Env::new();
    let app = format!("idem_{}", env.unique());
    let url = url_with(&env, &format!("application_name={app}"));
    let script = format!(
        "{}; touch started; while [ ! -e go ]; do sleep 0.02; done; echo done",
        env.count_run("n")
    );
    let child = env
        .idem_std()
        .args(["--db", &url, "run", "-k", "k", "--"])
        .args(sh(&script))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&env.path("started"));
    let killed = psql(&format!(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = '{app}'"
    ));
    assert_eq!(killed, "1");
    std::fs::write(env.path("go"), "").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    env.idem()
        .args(["--db", &url, "run", "-k", "k", "--"])
        .args(sh(&script))
        .assert()
        .success()
        .stdout("done\n");
    assert_eq!(env.count("n"), 1);
}

#[test]
fn expired_records_are_cleaned_up_lazily() {
    if !postgres() {
        return;
    }
    let env = Env::new();
    let t = env.unique();
    for i in 0..20 {
        env.idem()
            .args(["run", "-k", &format!("old{i}"), "--", "true"])
            .assert()
            .success();
    }
    psql(&format!("UPDATE {t} SET expires_at = finished_at"));
    env.idem()
        .args(["run", "-k", "new", "--", "true"])
        .assert()
        .success();
    // One claim removes a bounded batch, never the whole backlog at once.
    assert_eq!(psql(&format!("SELECT count(*) FROM {t}")), "5");
}
