//! PostgreSQL specifics: the `?table=` parameter, a schema that is versioned
//! and never adopts a stranger's table, credentials that never show, and a
//! server that is unreachable, drops the connection, or is cut off after the
//! command has run. Run with
//! `IDEM_TEST_BACKEND=postgres`; skipped otherwise.

use crate::support::{postgres_url, psql, require, sh, wait_for, Backend, Env};
use std::io::{BufRead, BufReader};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// `Env`'s URL with `extra` query parameters added.
fn url_with(env: &Env, extra: &str) -> String {
    format!("{}&{extra}", env.db)
}

#[test]
#[ignore = "needs IDEM_TEST_BACKEND=postgres"]
fn the_table_parameter_names_the_tables_and_defaults_to_idem_records() {
    require(Backend::Postgres);
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
        "1\n4"
    );

    // No ?table=: idem_records, here inside a schema of this test's own
    // (URL parameters other than idem's reach the server).
    let schema = format!("s_{t}");
    psql(&format!("CREATE SCHEMA {schema}"));
    let base = postgres_url();
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
    env.idem()
        .args(["--db", &url, "run", "-k", "k", "--", "echo", "hi"])
        .assert()
        .success();
    let tables = psql(&format!(
        "SELECT string_agg(relname, ',' ORDER BY relname) FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace WHERE nspname = '{schema}' AND relkind IN ('r', 'S')"
    ));
    psql(&format!("DROP SCHEMA {schema} CASCADE"));
    assert_eq!(
        tables,
        "idem_records,idem_records_journal,idem_records_meta,idem_records_token"
    );
}

#[test]
#[ignore = "needs IDEM_TEST_BACKEND=postgres"]
fn a_bad_table_name_or_tls_mode_is_a_usage_error() {
    require(Backend::Postgres);
    let env = Env::new();
    let base = postgres_url();
    // The base URL may carry parameters already (sslmode=verify-full in CI).
    let sep = if base.contains('?') { '&' } else { '?' };
    for (url, says) in [
        (format!("{base}{sep}table=a;drop"), "not a plain table name"),
        (
            format!("{base}{sep}sslmode=maybe"),
            "sslmode=maybe is not one of disable, allow, prefer, require, verify-ca, verify-full",
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
#[ignore = "needs IDEM_TEST_BACKEND=postgres"]
fn a_table_idem_did_not_make_is_refused_untouched() {
    require(Backend::Postgres);
    let env = Env::new();
    let t = env.unique();
    psql(&format!(
        "CREATE TABLE {t} (key text, note text); INSERT INTO {t} VALUES ('k', 'theirs')"
    ));
    let said = env.refused(&[]);
    assert!(said.contains("is not an idem store"), "{said}");
    assert_eq!(psql(&format!("SELECT key || note FROM {t}")), "ktheirs");
    assert_eq!(
        psql(&format!("SELECT to_regclass('{t}_meta') IS NULL")),
        "t"
    );
}

#[test]
#[ignore = "needs IDEM_TEST_BACKEND=postgres"]
fn a_newer_schema_is_refused_untouched() {
    require(Backend::Postgres);
    let env = Env::new();
    let t = env.unique();
    env.idem()
        .args(["run", "-k", "k", "--", "true"])
        .assert()
        .success();
    psql(&format!("UPDATE {t}_meta SET value = 99"));
    let said = env.refused(&[]);
    assert!(said.contains("schema version 99, newer"), "{said}");
    assert_eq!(psql(&format!("SELECT count(*) FROM {t}")), "1");
}

/// A store written before labels (schema 1) is upgraded in place, by any
/// command, read-only `inspect` included, and keeps its records.
#[test]
#[ignore = "needs IDEM_TEST_BACKEND=postgres"]
fn a_version_1_store_is_upgraded_in_place() {
    require(Backend::Postgres);
    let env = Env::new();
    let t = env.unique();
    env.idem()
        .args(["run", "-k", "old", "--", "echo", "hi"])
        .assert()
        .success();
    psql(&format!(
        "ALTER TABLE {t} DROP COLUMN label, DROP COLUMN owner_pid_ns; \
         UPDATE {t}_meta SET value = 1"
    ));
    env.idem()
        .args(["inspect", "old", "--stdout"])
        .assert()
        .success()
        .stdout("hi\n");
    assert_eq!(
        psql(&format!(
            "SELECT value FROM {t}_meta WHERE name = 'schema_version'"
        )),
        "4"
    );
    env.idem()
        .args(["run", "-k", "new", "--label", "L", "--", "true"])
        .assert()
        .success();
    assert_eq!(
        psql(&format!(
            "SELECT coalesce(label, '-') FROM {t} ORDER BY key"
        )),
        "L\n-"
    );
}

#[test]
#[ignore = "needs IDEM_TEST_BACKEND=postgres"]
fn an_unreachable_server_fails_before_the_command_and_hides_passwords() {
    require(Backend::Postgres);
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
    assert!(
        err.contains("cannot connect to 127.0.0.1:1: connection refused"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(env.count("n"), 0);
}

#[test]
#[ignore = "needs IDEM_TEST_BACKEND=postgres"]
fn server_errors_hide_passwords_too() {
    require(Backend::Postgres);
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
#[ignore = "needs IDEM_TEST_BACKEND=postgres"]
fn a_dropped_connection_mid_run_is_reconnected_for_the_outcome() {
    require(Backend::Postgres);
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
#[ignore = "needs IDEM_TEST_BACKEND=postgres"]
fn expired_records_are_cleaned_up_lazily() {
    require(Backend::Postgres);
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

/// A TCP relay to the test server that the test can cut and restore, to
/// play a network partition between idem and PostgreSQL.
struct Relay {
    port: u16,
    open: Arc<AtomicBool>,
    links: Arc<Mutex<Vec<TcpStream>>>,
}

impl Relay {
    fn start() -> Relay {
        let base = postgres_url();
        let rest = base.split_once("://").unwrap().1;
        let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
        let upstream = rest.split(['/', '?']).next().unwrap().to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = Arc::new(AtomicBool::new(true));
        let links = Arc::new(Mutex::new(Vec::new()));
        let (is_open, all) = (open.clone(), links.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if !is_open.load(Ordering::SeqCst) {
                    continue; // dropped: closed at once
                }
                let server = TcpStream::connect(&upstream).unwrap();
                all.lock()
                    .unwrap()
                    .extend([client.try_clone().unwrap(), server.try_clone().unwrap()]);
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Relay { port, open, links }
    }

    /// This test's store, reached through the relay.
    fn url(&self, env: &Env) -> String {
        let base = postgres_url();
        let rest = base.split_once("://").unwrap().1;
        let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
        let upstream = rest.split(['/', '?']).next().unwrap();
        env.db
            .replacen(upstream, &format!("127.0.0.1:{}", self.port), 1)
    }

    fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for link in self.links.lock().unwrap().drain(..) {
            let _ = link.shutdown(Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

/// Starts idem through `relay` on a command that waits for the file `go`.
fn start_behind(relay: &Relay, env: &Env) -> std::process::Child {
    let script = format!(
        "{}; touch started; while [ ! -e go ]; do sleep 0.02; done; echo done",
        env.count_run("n")
    );
    env.idem_std()
        .args(["--db", &relay.url(env), "run", "-k", "k", "--"])
        .args(sh(&script))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
#[ignore = "needs IDEM_TEST_BACKEND=postgres"]
fn the_outcome_is_written_once_the_server_is_back() {
    require(Backend::Postgres);
    let env = Env::new();
    let relay = Relay::start();
    let mut idem = start_behind(&relay, &env);
    wait_for(&env.path("started"));
    relay.cut();
    std::fs::write(env.path("go"), "").unwrap();
    let mut stderr = BufReader::new(idem.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    assert!(line.contains("retrying"), "{line}");
    relay.restore();
    let out = idem.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(out.stdout, b"done\n");
    env.idem()
        .args(["run", "-k", "k", "--", "true"])
        .assert()
        .code(65); // the record is there, completed, by another command
    assert_eq!(env.count("n"), 1);
}

#[test]
#[ignore = "needs IDEM_TEST_BACKEND=postgres"]
fn an_outcome_that_cannot_be_written_is_reported_after_a_bounded_time() {
    require(Backend::Postgres);
    let env = Env::new();
    let relay = Relay::start();
    let idem = start_behind(&relay, &env);
    wait_for(&env.path("started"));
    relay.cut();
    std::fs::write(env.path("go"), "").unwrap();
    let out = idem.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(err.contains("could NOT be written"), "{err}");
    assert!(err.contains("stays in_progress"), "{err}");
    assert_eq!(out.stdout, b"done\n", "the command itself ran");
}

/// A host name (not an address) makes the client resolve it on a thread of
/// its own, which lives on for seconds. Every thread of idem must block the
/// signals idem forwards and SIGCHLD while the command runs: a signal goes
/// to any thread that does not block it, and there SIGCHLD was lost (idem
/// waited for the finished child for ever) and SIGTERM would kill idem
/// before its record. The command reads each thread's blocked set.
#[test]
#[ignore = "needs IDEM_TEST_BACKEND=postgres"]
fn every_thread_blocks_the_signals_while_the_command_runs() {
    require(Backend::Postgres);
    let env = Env::new();
    assert!(
        env.db.contains("@127.0.0.1:"),
        "expected a 127.0.0.1 URL: {}",
        env.db
    );
    let by_name = env.db.replacen("@127.0.0.1:", "@localhost:", 1);
    let script = "for t in /proc/$PPID/task/*; do \
                  echo \"$(cat $t/comm) $(sed -n 's/^SigBlk:[[:space:]]*//p' $t/status)\"; done";
    let out = env
        .idem()
        .args(["--db", &by_name, "run", "-k", "threads", "--"])
        .args(sh(script))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listing = String::from_utf8(out.stdout).unwrap();
    let threads: Vec<(&str, u64)> = listing
        .lines()
        .map(|line| {
            let (name, mask) = line.rsplit_once(' ').unwrap();
            (name, u64::from_str_radix(mask, 16).unwrap())
        })
        .collect();
    assert!(threads.len() > 1, "{listing}");
    for sig in [libc::SIGCHLD, libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        let bit = 1u64 << (sig - 1);
        for (name, mask) in &threads {
            assert!(
                mask & bit != 0,
                "thread {name} does not block signal {sig}:\n{listing}"
            );
        }
    }
}
