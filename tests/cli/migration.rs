//! Stores written before the output journal keep working: their records
//! replay as before (stdout, then stderr), `logs` and `inspect` read them,
//! and the store is upgraded without losing one. Each store is laid out
//! here exactly as earlier releases wrote it, with one finished record: at
//! the first and the last schema before the journal (SQLite 2 and 3,
//! PostgreSQL 1 and 3, Redis 1 and 2; labels, owners' PID namespaces and
//! Redis's cluster layout came in between).

use crate::support::{backend, psql, run_sh, Backend, Env};
use std::time::{SystemTime, UNIX_EPOCH};

/// The previous release's SQLite schema (its migrations 1 and 2).
const SQLITE_V2: &str = "
    PRAGMA auto_vacuum = INCREMENTAL;
    CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) STRICT;
    INSERT INTO counters VALUES ('token', 1);
    CREATE TABLE records (
        key TEXT PRIMARY KEY, status TEXT NOT NULL, fingerprint BLOB NOT NULL,
        command BLOB NOT NULL, cwd BLOB NOT NULL, attempt INTEGER NOT NULL,
        token INTEGER NOT NULL, started_at INTEGER NOT NULL, finished_at INTEGER,
        expires_at INTEGER, exit_code INTEGER, signal INTEGER,
        timed_out INTEGER NOT NULL DEFAULT 0, replays INTEGER NOT NULL DEFAULT 0,
        owner_host TEXT NOT NULL, owner_boot TEXT NOT NULL, owner_pid INTEGER NOT NULL,
        owner_start INTEGER NOT NULL, child_pid INTEGER, child_pgid INTEGER,
        child_start INTEGER, stdout_truncated INTEGER NOT NULL DEFAULT 0,
        stderr_truncated INTEGER NOT NULL DEFAULT 0,
        stdout BLOB NOT NULL DEFAULT x'', stderr BLOB NOT NULL DEFAULT x''
    ) STRICT;
    CREATE INDEX records_expires_at ON records (expires_at) WHERE expires_at IS NOT NULL;
    CREATE INDEX records_started_at ON records (started_at);
    CREATE TABLE replay_counts (
        key TEXT PRIMARY KEY, token INTEGER NOT NULL, count INTEGER NOT NULL
    ) STRICT;
    PRAGMA application_id = 1768187245;
    PRAGMA user_version = 2;
";

/// The previous release's PostgreSQL schema (version 1), for table `T`.
const POSTGRES_V1: &str = "
    CREATE TABLE @T_meta (name text PRIMARY KEY, value bigint NOT NULL);
    INSERT INTO @T_meta VALUES ('schema_version', 1);
    CREATE SEQUENCE @T_token;
    CREATE TABLE @T (
        key text PRIMARY KEY, status text NOT NULL, fingerprint bytea NOT NULL,
        command bytea NOT NULL, cwd bytea NOT NULL, attempt bigint NOT NULL,
        token bigint NOT NULL, started_at bigint NOT NULL, finished_at bigint,
        expires_at bigint, lease_until bigint, exit_code integer, signal integer,
        timed_out boolean NOT NULL DEFAULT false, replays bigint NOT NULL DEFAULT 0,
        owner_host text NOT NULL, owner_boot text NOT NULL, owner_pid bigint NOT NULL,
        owner_start bigint NOT NULL, child_pid bigint, child_pgid bigint,
        child_start bigint, stdout bytea NOT NULL DEFAULT '',
        stderr bytea NOT NULL DEFAULT '',
        stdout_truncated boolean NOT NULL DEFAULT false,
        stderr_truncated boolean NOT NULL DEFAULT false
    );
    CREATE INDEX @T_started ON @T (started_at DESC, key);
    CREATE INDEX @T_expires ON @T (expires_at) WHERE expires_at IS NOT NULL;
";

fn now_ms() -> i64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    i64::try_from(now.as_millis()).unwrap()
}

/// Writes the old store with record `old`: stdout `o1\no2\n`, stderr
/// `e1\n`, exit status 3, completed (`--on-failure lock`). `latest`: at
/// the last schema before the journal, else at the first one.
fn write_old_store(env: &Env, latest: bool) {
    let (now, day) = (now_ms(), 86_400_000);
    match backend() {
        Backend::Sqlite => {
            let path = env.db_path();
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            let conn = rusqlite::Connection::open(&path).unwrap();
            conn.execute_batch(SQLITE_V2).unwrap();
            if latest {
                conn.execute_batch(
                    "ALTER TABLE records ADD COLUMN label TEXT;
                     ALTER TABLE records ADD COLUMN owner_pid_ns INTEGER;
                     ALTER TABLE records ADD COLUMN lease_until INTEGER;
                     PRAGMA user_version = 3;",
                )
                .unwrap();
            }
            let _: String = conn
                .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
                .unwrap();
            conn.execute(
                "INSERT INTO records (key, status, fingerprint, command, cwd, attempt, token,
                   started_at, finished_at, expires_at, exit_code, owner_host, owner_boot,
                   owner_pid, owner_start, stdout, stderr)
                 VALUES ('old', 'completed', x'01', CAST('true' AS BLOB), CAST('/' AS BLOB), 1, 1,
                   ?1, ?1, ?2, 3, 'h', 'b', 1, 1, CAST('o1\no2\n' AS BLOB), CAST('e1\n' AS BLOB))",
                [now, now + day],
            )
            .unwrap();
        }
        Backend::Postgres => {
            let t = env.unique();
            psql(&POSTGRES_V1.replace("@T", t));
            if latest {
                psql(&format!(
                    "ALTER TABLE {t} ADD COLUMN label text, ADD COLUMN owner_pid_ns bigint;
                     UPDATE {t}_meta SET value = 3"
                ));
            }
            psql(&format!(
                "SELECT setval('{t}_token', 1); INSERT INTO {t} (key, status, fingerprint, command,
                   cwd, attempt, token, started_at, finished_at, expires_at, exit_code,
                   owner_host, owner_boot, owner_pid, owner_start, stdout, stderr)
                 VALUES ('old', 'completed', '\\x01', 'true', '/', 1, 1, {now}, {now},
                   {}, 3, 'h', 'b', 1, 1, E'o1\\no2\\n', E'e1\\n')",
                now + day
            ));
        }
        Backend::Redis => {
            let (base, prefix) = env.db.split_once("?prefix=").unwrap();
            let mut con = redis::Client::open(base)
                .and_then(|c| c.get_connection())
                .unwrap();
            let _: () = redis::cmd("SET")
                .arg(format!("{prefix}schema"))
                .arg(if latest { 2 } else { 1 })
                .query(&mut con)
                .unwrap();
            let (now, until) = (now.to_string(), (now + day).to_string());
            let fields: [(&str, &[u8]); 20] = [
                ("status", b"completed"),
                ("fingerprint", b"\x01"),
                ("command", b"true"),
                ("cwd", b"/"),
                ("attempt", b"1"),
                ("token", b"1"),
                ("rev", b"2"),
                ("started_at", now.as_bytes()),
                ("finished_at", now.as_bytes()),
                ("expires_at", until.as_bytes()),
                ("exit_code", b"3"),
                ("timed_out", b"0"),
                ("replays", b"0"),
                ("owner_host", b"h"),
                ("owner_boot", b"b"),
                ("owner_pid", b"1"),
                ("owner_start", b"1"),
                ("stdout", b"o1\no2\n"),
                ("stderr", b"e1\n"),
                ("stdout_bytes", b"6"),
            ];
            let mut hset = redis::cmd("HSET");
            hset.arg(if latest {
                crate::support::record_key(prefix, "old")
            } else {
                format!("{prefix}rec:old")
            });
            for (field, value) in fields {
                hset.arg(field).arg(value);
            }
            hset.arg("stderr_bytes").arg(3);
            let _: () = hset.query(&mut con).unwrap();
        }
    }
}

/// The schema version the store now carries.
fn version(env: &Env) -> i64 {
    match backend() {
        Backend::Sqlite => rusqlite::Connection::open(env.db_path())
            .unwrap()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap(),
        Backend::Postgres => psql(&format!(
            "SELECT value FROM {}_meta WHERE name = 'schema_version'",
            env.unique()
        ))
        .parse()
        .unwrap(),
        Backend::Redis => {
            let (base, prefix) = env.db.split_once("?prefix=").unwrap();
            let mut con = redis::Client::open(base)
                .and_then(|c| c.get_connection())
                .unwrap();
            redis::cmd("GET")
                .arg(format!("{prefix}schema"))
                .query(&mut con)
                .unwrap()
        }
    }
}

#[test]
fn records_written_before_the_journal_replay_stdout_then_stderr() {
    for latest in [false, true] {
        replay_an_old_store(latest);
    }
}

fn replay_an_old_store(latest: bool) {
    let env = Env::new();
    write_old_store(&env, latest);
    let old = version(&env);
    let check = || {
        env.idem()
            .args(["logs", "old"])
            .assert()
            .success()
            .stdout("o1\no2\n")
            .stderr("e1\n");
        env.idem()
            .args(["inspect", "old", "--stderr"])
            .assert()
            .success()
            .stdout("e1\n");
        env.idem()
            .args(["run", "-k", "old", "--allow-mismatch", "--", "false"])
            .assert()
            .code(3)
            .stdout("o1\no2\n")
            .stderr("e1\n");
    };
    // Read as it is (or upgraded in place by inspect and logs, which never
    // change a record) ...
    check();
    env.idem()
        .args(["inspect", "--json", "old"])
        .assert()
        .success()
        .stdout(predicates::str::contains(
            "\"stdout_bytes\":6,\"stderr_bytes\":3",
        ));
    // ... and after a new run has upgraded the store.
    env.idem()
        .args(
            [
                &["-q"][..],
                &run_sh(&["-k", "new"], "echo e >&2; sleep 0.05; echo o"),
            ]
            .concat(),
        )
        .assert()
        .success();
    assert!(version(&env) > old, "the store was upgraded");
    check();
    env.idem()
        .args(["logs", "new"])
        .assert()
        .success()
        .stdout("o\n")
        .stderr("e\n");
    env.idem().args(["purge", "old"]).assert().success();
    env.idem().args(["logs", "old"]).assert().code(1);
}
