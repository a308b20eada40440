//! The Redis store's own promises: its key prefix, passwords kept out of
//! output, failures of the server (exit 125 before the command runs, the
//! outcome written across a restart, a loud error when it cannot be),
//! expiry and leases by Redis and its clock, fencing tokens, and the
//! persistence warning. Runs with `IDEM_TEST_BACKEND=redis`; some tests
//! start a private `redis-server` on a free loopback port.

mod cluster;
mod names;

use crate::support::redis_server::{make_certificates, Server};
use crate::support::{record_key, require, sh, wait_for, wait_until, Backend, Env, Holder};
use std::net::TcpListener;
use tempfile::TempDir;

const DAY_MS: i64 = 24 * 3600 * 1000;

fn connect(url: &str) -> redis::Connection {
    redis::Client::open(url).unwrap().get_connection().unwrap()
}

/// The test's own URL without idem's parameter, and its key prefix.
fn split(env: &Env) -> (String, String) {
    let (base, prefix) = env.db.split_once("?prefix=").unwrap();
    (base.to_owned(), prefix.to_owned())
}

fn query<T: redis::FromRedisValue>(con: &mut redis::Connection, args: &[&str]) -> T {
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd.query(con).unwrap()
}

fn server_ms(con: &mut redis::Connection) -> i64 {
    let (secs, micros): (i64, i64) = query(con, &["TIME"]);
    secs * 1000 + micros / 1000
}

#[test]
#[ignore = "needs IDEM_TEST_BACKEND=redis"]
fn every_key_lives_under_the_prefix_and_prefixes_keep_stores_apart() {
    require(Backend::Redis);
    let env = Env::new();
    let (base, prefix) = split(&env);
    let script = env.count_run("n");
    env.idem()
        .args(["run", "-k", "k", "--"])
        .args(sh(&script))
        .assert()
        .success();
    let other = format!("{base}?prefix={prefix}other:");
    env.idem()
        .env("IDEM_DB", &other)
        .args(["run", "-k", "k", "--"])
        .args(sh(&script))
        .assert()
        .success();
    assert_eq!(env.count("n"), 2, "another prefix is another store");
    let mut con = connect(&base);
    let mut keys: Vec<String> = query(&mut con, &["KEYS", &format!("{prefix}*")]);
    keys.sort();
    let want = [
        "other:schema",
        "other:{k}:log",
        "other:{k}:rec",
        "schema",
        "{k}:log",
        "{k}:rec",
    ]
    .map(|k| format!("{prefix}{k}"));
    assert_eq!(keys, want);

    // Without ?prefix=, everything goes under idem: on a server of its own.
    let server = Server::start(&[]);
    env.idem()
        .env("IDEM_DB", server.url(""))
        .args(["run", "-k", "k", "--", "true"])
        .assert()
        .success();
    let mut keys: Vec<String> = query(&mut connect(&server.url("")), &["KEYS", "*"]);
    keys.sort();
    assert_eq!(keys, ["idem:schema", "idem:{k}:log", "idem:{k}:rec"]);
}

#[test]
#[ignore = "needs IDEM_TEST_BACKEND=redis"]
fn passwords_never_appear_in_errors() {
    require(Backend::Redis);
    let env = Env::new();
    let server = Server::start(&["--requirepass", "hunter2-Secret"]);
    for (userinfo, expect) in [(":wrong-Secret@", "refused"), ("", "NOAUTH")] {
        let out = env
            .idem()
            .env("IDEM_DB", server.url(userinfo))
            .args(["-v", "run", "-k", "k", "--"])
            .args(sh(&env.count_run("n")))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{err}");
        let shown = format!("idem: store redis://127.0.0.1:{}/0: ", server.port);
        // -v names the key and the store first (without the password).
        let (said, error) = err.trim_end().split_once('\n').unwrap_or(("", &err));
        assert!(said.contains("store: Redis redis://127.0.0.1"), "{err}");
        assert!(error.starts_with(&shown), "{err}");
        assert!(
            error.contains(expect) && error.contains("password"),
            "{err}"
        );
        assert!(!err.contains("Secret"), "the password leaked: {err}");
        assert_eq!(err.lines().count(), 2, "{err}");
    }
    assert_eq!(env.count("n"), 0, "the command must not run");
    for args in [&["inspect"][..], &["inspect", "k"], &["purge", "--all"]] {
        let out = env
            .idem()
            .env("IDEM_DB", server.url(":wrong-Secret@"))
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{args:?}: {err}");
        assert!(!err.contains("Secret"), "the password leaked: {err}");
    }
    let out = env
        .idem()
        .env("IDEM_DB", server.url(":hunter2-Secret@"))
        .args(["-v", "run", "-k", "k", "--"])
        .args(sh(&env.count_run("n")))
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("Secret"));
    assert_eq!(env.count("n"), 1);
    for args in [&["inspect"][..], &["inspect", "k"], &["inspect", "--json"]] {
        let out = env
            .idem()
            .env("IDEM_DB", server.url(":hunter2-Secret@"))
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success());
        let all = [out.stdout, out.stderr].concat();
        assert!(
            !String::from_utf8_lossy(&all).contains("Secret"),
            "{args:?}"
        );
    }
}

#[test]
#[ignore = "needs IDEM_TEST_BACKEND=redis"]
fn an_unreachable_or_silent_server_exits_125_before_the_command_runs() {
    require(Backend::Redis);
    let env = Env::new();
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    // Accepts connections and never answers: idem's timeouts must end it.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    for (port, expect) in [(closed_port, "cannot connect"), (silent_port, "")] {
        env.idem()
            .env("IDEM_DB", format!("redis://127.0.0.1:{port}/0"))
            .args(["run", "-k", "k", "--"])
            .args(sh(&env.count_run("n")))
            .assert()
            .code(125)
            .stderr(predicates::str::starts_with(format!(
                "idem: store redis://127.0.0.1:{port}/0: {expect}"
            )));
    }
    drop(silent);
    assert_eq!(env.count("n"), 0);
}

#[test]
#[ignore = "needs IDEM_TEST_BACKEND=redis"]
fn redis_expires_records_by_its_own_clock() {
    require(Backend::Redis);
    let env = Env::new();
    let (base, prefix) = split(&env);
    let mut con = connect(&base);
    let record = record_key(&prefix, "k");

    // Running: a lease by the server's clock, and no deadline in Redis (a
    // crashed record stays until taken over or purged).
    let script = "touch ready; while [ ! -e release ]; do sleep 0.01; done";
    let mut holder = env
        .idem_std()
        .args(["run", "-k", "k", "--lease", "90s", "--ttl", "1h", "--"])
        .args(sh(script))
        .spawn()
        .unwrap();
    wait_for(&env.path("ready"));
    let now = server_ms(&mut con);
    let lease: i64 = query(&mut con, &["HGET", &record, "lease_until"]);
    assert!(lease > now && lease <= now + 90_000, "{lease} vs {now}");
    let pttl: i64 = query(&mut con, &["PTTL", &record]);
    assert_eq!(pttl, -1, "an in-progress record never expires in Redis");
    std::fs::write(env.path("release"), "").unwrap();
    assert!(holder.wait().unwrap().success());

    // Finished: Redis deletes it at expires_at = finished_at + ttl.
    let finished: i64 = query(&mut con, &["HGET", &record, "finished_at"]);
    let expires: i64 = query(&mut con, &["HGET", &record, "expires_at"]);
    assert_eq!(expires - finished, 3_600_000);
    let at: i64 = query(&mut con, &["PEXPIRETIME", &record]);
    assert_eq!(at, expires);

    env.idem()
        .args(["run", "-k", "short", "--ttl", "50ms", "--", "true"])
        .assert()
        .success();
    wait_until("Redis to delete the expired record", || {
        query::<i64>(&mut con, &["EXISTS", &record_key(&prefix, "short")]) == 0
    });
}

/// The token the child saw in IDEM_FENCING_TOKEN.
fn token_of_run(env: &Env, key: &str) -> u64 {
    let out = env
        .idem()
        .args(["run", "-k", key, "--"])
        .args(sh("echo $IDEM_FENCING_TOKEN; [ ! -e fail ]"))
        .output()
        .unwrap();
    assert_eq!(out.status.success(), !env.path("fail").exists());
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
#[ignore = "needs IDEM_TEST_BACKEND=redis"]
fn fencing_tokens_grow_per_key_even_when_the_record_is_gone() {
    require(Backend::Redis);
    let env = Env::new();
    // A failed run is released; the next claim of the key gets a larger token.
    std::fs::write(env.path("fail"), "").unwrap();
    let first = token_of_run(&env, "a");
    std::fs::remove_file(env.path("fail")).unwrap();
    let second = token_of_run(&env, "a");
    assert!(second > first, "{second} after {first}");
    // Purged (or expired, or lost with a server restart): the next claim
    // still gets a larger token, from the server's clock.
    env.idem().args(["purge", "--all"]).assert().success();
    let third = token_of_run(&env, "a");
    assert!(third > second, "{third} after {second}");
}

/// A store as the binary before schema 2 wrote it: `P schema` = 1, the
/// global counter `P token`, and `P rec:KEY` hashes. It keeps that layout,
/// with each record's journal beside it as `P log:KEY`.
#[test]
#[ignore = "needs IDEM_TEST_BACKEND=redis"]
fn a_schema_1_store_keeps_its_layout_and_its_records() {
    require(Backend::Redis);
    let env = Env::new();
    let (base, prefix) = split(&env);
    let mut con = connect(&base);
    let _: () = query(&mut con, &["SET", &format!("{prefix}schema"), "1"]);
    let _: () = query(&mut con, &["SET", &format!("{prefix}token"), "1000"]);
    let old = format!("{prefix}rec:old");
    let now = server_ms(&mut con).to_string();
    let later = (server_ms(&mut con) + DAY_MS).to_string();
    let fields = [
        ("status", "completed"),
        ("fingerprint", ""),
        ("command", "echo\0old"),
        ("cwd", "/"),
        ("attempt", "1"),
        ("token", "1000"),
        ("rev", "2"),
        ("started_at", &now),
        ("finished_at", &now),
        ("expires_at", &later),
        ("exit_code", "0"),
        ("timed_out", "0"),
        ("replays", "0"),
        ("owner_host", "h"),
        ("owner_boot", "b"),
        ("owner_pid", "1"),
        ("owner_start", "1"),
        ("stdout", "from the old binary\n"),
        ("stderr", ""),
        ("stdout_bytes", "20"),
        ("stderr_bytes", "0"),
        ("stdout_truncated", "0"),
        ("stderr_truncated", "0"),
    ];
    let mut hset = vec!["HSET", old.as_str()];
    for (name, value) in &fields {
        hset.extend([*name, *value]);
    }
    let _: i64 = query(&mut con, &hset);
    let _: i64 = query(&mut con, &["PEXPIREAT", &old, &later]);

    // The old record replays, with --allow-mismatch (its fingerprint is made up).
    env.idem()
        .args(["run", "--allow-mismatch", "-k", "old", "--"])
        .args(sh(&env.count_run("n")))
        .assert()
        .success()
        .stdout("from the old binary\n");
    assert_eq!(env.count("n"), 0);
    // New keys go where the old binary would put them, with its counter.
    assert_eq!(token_of_run(&env, "new"), 1001);
    let status: String = query(&mut con, &["HGET", &format!("{prefix}rec:new"), "status"]);
    assert_eq!(status, "completed");
    assert_eq!(
        query::<i64>(&mut con, &["EXISTS", &format!("{prefix}log:new")]),
        1
    );
    assert_eq!(
        query::<i64>(&mut con, &["EXISTS", &record_key(&prefix, "new")]),
        0
    );
    let listed = env.idem().args(["inspect", "--json"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&listed.stdout).lines().count(), 2);
    env.idem().args(["purge", "old"]).assert().success();
    assert_eq!(query::<i64>(&mut con, &["EXISTS", &old]), 0);
    // Stamped as schema 1's layout with journals: the old binary, which
    // would replay the new records without their output, refuses it.
    let schema: String = query(&mut con, &["GET", &format!("{prefix}schema")]);
    assert_eq!(schema, "4");
}

#[test]
#[ignore = "needs IDEM_TEST_BACKEND=redis"]
fn a_newer_schema_or_foreign_data_is_refused() {
    require(Backend::Redis);
    let env = Env::new();
    let (base, prefix) = split(&env);
    let mut con = connect(&base);
    let schema = format!("{prefix}schema");
    let _: () = query(&mut con, &["SET", &schema, "99"]);
    for (setup, expect) in [(None, "newer"), (Some("hash"), "not idem's")] {
        if setup.is_some() {
            let _: i64 = query(&mut con, &["DEL", &schema]);
            let _: i64 = query(&mut con, &["HSET", &schema, "someone", "else"]);
        }
        env.idem()
            .args(["run", "-k", "k", "--"])
            .args(sh(&env.count_run("n")))
            .assert()
            .code(125)
            .stderr(predicates::str::contains(expect));
    }
    let kept: Vec<String> = query(&mut con, &["HKEYS", &schema]);
    assert_eq!(kept, ["someone"], "foreign data is left alone");

    // A hash at a record's place that idem did not write.
    let _: i64 = query(&mut con, &["DEL", &schema]);
    let record = record_key(&prefix, "k");
    let _: i64 = query(&mut con, &["HSET", &record, "someone", "else"]);
    env.idem()
        .args(["run", "-k", "k", "--"])
        .args(sh(&env.count_run("n")))
        .assert()
        .code(125)
        .stderr(predicates::str::contains("not an idem record"));
    assert_eq!(env.count("n"), 0);
    let kept: Vec<String> = query(&mut con, &["HKEYS", &record]);
    assert_eq!(kept, ["someone"], "foreign data is left alone");
}

/// A `Holder` of the key `k` on the store at `url`.
fn hold_on(env: &Env, url: &str) -> Holder {
    let mut idem = env.idem_std();
    idem.env("IDEM_DB", url);
    Holder::start_from(env, idem, "k", &[])
}

#[test]
#[ignore = "needs IDEM_TEST_BACKEND=redis"]
fn the_outcome_is_written_across_a_server_restart() {
    require(Backend::Redis);
    let env = Env::new();
    let mut server = Server::start(&["--appendonly", "yes", "--appendfsync", "always"]);
    let url = server.url("");
    let holder = hold_on(&env, &url);
    server.stop();
    server.restart();
    let out = holder.release();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let replay = env
        .idem_std()
        .env("IDEM_DB", &url)
        .args(["run", "-k", "k", "--"])
        .args(sh(&Holder::script(&env)))
        .output()
        .unwrap();
    assert!(replay.status.success());
    assert_eq!(replay.stdout, b"held\ndone\n");
    assert_eq!(env.count("n"), 1, "the outcome was stored: a replay");
}

#[test]
#[ignore = "needs IDEM_TEST_BACKEND=redis"]
fn an_outcome_that_cannot_be_written_is_reported_loudly() {
    require(Backend::Redis);
    let env = Env::new();
    let mut server = Server::start(&[]);
    let holder = hold_on(&env, &server.url(""));
    server.stop();
    let out = holder.release();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert_eq!(out.stdout, b"held\ndone\n", "the command ran to its end");
    assert!(
        err.contains("retrying for up to")
            && err.contains("could NOT be written")
            && err.contains("gave up after"),
        "{err}"
    );
}

#[test]
#[ignore = "needs IDEM_TEST_BACKEND=redis"]
fn verbose_warns_once_about_a_server_without_persistence() {
    require(Backend::Redis);
    let env = Env::new();
    let bare = Server::start(&[]);
    let kept = Server::start(&["--appendonly", "yes"]);
    for (server, verbose, warnings) in [(&bare, true, 1), (&bare, false, 0), (&kept, true, 0)] {
        let mut idem = env.idem();
        idem.env("IDEM_DB", server.url(""));
        if verbose {
            idem.arg("-v");
        }
        let out = idem
            .args(["run", "-k", &format!("k{verbose}"), "--", "true"])
            .output()
            .unwrap();
        assert!(out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.matches("no AOF and no RDB").count(), warnings, "{err}");
    }
}

#[test]
#[ignore = "needs IDEM_TEST_BACKEND=redis"]
fn rediss_speaks_tls_and_checks_the_certificate() {
    require(Backend::Redis);
    let env = Env::new();
    let certs = TempDir::new().unwrap();
    make_certificates(certs.path());
    let server = Server::start_tls(
        &certs.path().join("server.pem"),
        &certs.path().join("server.key"),
    );
    let url = server.url("");
    // A certificate from an unknown CA is refused before anything runs.
    env.idem()
        .env("IDEM_DB", &url)
        .env_remove("SSL_CERT_FILE")
        .args(["run", "-k", "k", "--"])
        .args(sh(&env.count_run("n")))
        .assert()
        .code(125)
        .stderr(predicates::str::starts_with(format!(
            "idem: store {url}: cannot connect"
        )));
    assert_eq!(env.count("n"), 0);
    // Trusting the CA (the system's store, here through SSL_CERT_FILE): runs, then replays.
    for _ in 0..2 {
        env.idem()
            .env("IDEM_DB", &url)
            .env("SSL_CERT_FILE", certs.path().join("ca.pem"))
            .args(["run", "-k", "k", "--"])
            .args(sh(&format!("{}; echo over tls", env.count_run("n"))))
            .assert()
            .success()
            .stdout("over tls\n");
    }
    assert_eq!(env.count("n"), 1);
}
