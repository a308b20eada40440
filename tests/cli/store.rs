//! The SQLite store file: where it lives, its permissions, and files that
//! are not (or no longer) idem stores, which must be refused untouched.

use crate::support::{run_sh, Env};
use std::os::unix::fs::PermissionsExt;

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn new_store_is_private() {
    let env = Env::sqlite();
    env.idem()
        .args(["run", "-k", "p", "--", "true"])
        .assert()
        .success();
    assert_eq!(mode(env.db_path().parent().unwrap()), 0o700);
    assert_eq!(mode(&env.db_path()), 0o600);
}

#[test]
fn default_location_follows_xdg_then_home() {
    let env = Env::sqlite();
    env.idem()
        .env_remove("IDEM_DB")
        .env("XDG_STATE_HOME", env.path("xdg"))
        .args(["run", "-k", "x", "--", "true"])
        .assert()
        .success();
    assert!(env.path("xdg/idem/idem.db").is_file());
    env.idem()
        .env_remove("IDEM_DB")
        .env_remove("XDG_STATE_HOME")
        .env("HOME", env.path("home"))
        .args(["run", "-k", "x", "--", "true"])
        .assert()
        .success();
    assert!(env.path("home/.local/state/idem/idem.db").is_file());
    // --db wins over IDEM_DB.
    env.idem()
        .args(["--db", "explicit.db", "run", "-k", "x", "--", "true"])
        .assert()
        .success();
    assert!(env.path("explicit.db").is_file());
}

/// Runs idem on `contents` and checks: exit 125, one `idem:` line, the
/// command not run, the file byte for byte the same.
#[track_caller]
fn refused_untouched(contents: &[u8], expect: &str) {
    let env = Env::sqlite();
    std::fs::write(env.path("store.db"), contents).unwrap();
    let out = env
        .idem()
        .args(
            [
                &["--db", "store.db"][..],
                &run_sh(&["-k", "k"], &env.count_run("n")),
            ]
            .concat(),
        )
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(err.starts_with("idem: ") && err.contains(expect), "{err}");
    assert_eq!(env.count("n"), 0, "the command must not run");
    assert_eq!(
        std::fs::read(env.path("store.db")).unwrap(),
        contents,
        "the file must not change"
    );
    assert!(!env.path("store.db-wal").exists());
}

#[test]
fn a_file_that_is_not_sqlite_is_refused_untouched() {
    refused_untouched(b"these are my notes, not a database\n", "not an idem store");
}

#[test]
fn a_foreign_sqlite_database_is_refused_untouched() {
    let env = Env::sqlite();
    let path = env.path("foreign.db");
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch("CREATE TABLE invoices (id INTEGER); INSERT INTO invoices VALUES (1);")
        .unwrap();
    drop(conn);
    refused_untouched(&std::fs::read(&path).unwrap(), "another application");
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch("PRAGMA application_id = 1234;").unwrap();
    drop(conn);
    refused_untouched(&std::fs::read(&path).unwrap(), "another application");
}

/// A real store, made by idem, copied out as bytes (checkpointed).
fn real_store() -> Vec<u8> {
    let env = Env::sqlite();
    for i in 0..50 {
        env.idem()
            .args([
                "run",
                "-k",
                &format!("key-{i}"),
                "--",
                "echo",
                "some output",
            ])
            .assert()
            .success();
    }
    let conn = rusqlite::Connection::open(env.db_path()).unwrap();
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE); PRAGMA journal_mode = DELETE;")
        .unwrap();
    drop(conn);
    std::fs::read(env.db_path()).unwrap()
}

#[test]
fn a_newer_schema_is_refused_untouched() {
    let mut bytes = real_store();
    bytes[60..64].copy_from_slice(&99i32.to_be_bytes());
    refused_untouched(&bytes, "newer");
}

#[test]
fn a_corrupt_store_is_refused_untouched() {
    let mut bytes = real_store();
    // Keep the header, wreck every page after the first.
    for (i, b) in bytes.iter_mut().enumerate().skip(4096) {
        *b = (i * 7 % 256) as u8;
    }
    refused_untouched(&bytes, "corrupt");
    refused_untouched(&bytes[..1000], "");
}

#[test]
fn a_read_only_directory_fails_before_the_command_runs() {
    let env = Env::sqlite();
    // /proc refuses file creation even to root.
    env.refused(&["--db", "/proc/idem-test/idem.db"]);
}

#[test]
fn many_processes_can_create_the_same_store_at_once() {
    let env = Env::sqlite();
    let results = crate::support::race(24, |i| {
        let mut cmd = env.idem_std();
        cmd.args(["run", "-k", &format!("k{i}"), "--", "true"]);
        cmd
    });
    for (code, _, stderr) in results {
        assert_eq!(code, 0, "{}", String::from_utf8_lossy(&stderr));
    }
}

#[test]
fn expired_records_are_cleaned_up_lazily() {
    let env = Env::sqlite();
    for i in 0..40 {
        env.idem()
            .args([
                "run",
                "-k",
                &format!("old-{i}"),
                "--ttl",
                "1ms",
                "--",
                "true",
            ])
            .assert()
            .success();
    }
    std::thread::sleep(std::time::Duration::from_millis(5));
    for i in 0..3 {
        env.idem()
            .args(["run", "-k", &format!("new-{i}"), "--", "true"])
            .assert()
            .success();
    }
    let conn = rusqlite::Connection::open(env.db_path()).unwrap();
    let old: i64 = conn
        .query_row(
            "SELECT count(*) FROM records WHERE key LIKE 'old-%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(
        old < 40,
        "each run removes a batch of expired records; {old} left"
    );
    assert!(old <= 40 - 3 * 8, "{old} left");
}

/// idem keeps the WAL between calls (no checkpoint on close), so the last
/// writer out must empty it once it grows, or every call reads more of it.
#[test]
fn the_wal_stays_short_across_many_calls() {
    let env = Env::sqlite();
    for i in 0..160 {
        env.idem()
            .args(["run", "-k", &format!("k{}", i % 3), "--", "true"])
            .assert()
            .success();
    }
    let mut wal = env.db_path().into_os_string();
    wal.push("-wal");
    let len = std::fs::metadata(&wal).map_or(0, |m| m.len());
    assert!(len <= 2 * 64 * 4120, "the WAL grew to {len} bytes");
    let stats = env.run_ok(&["stats", "--json"]);
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(stats["replays"], 157, "every replay is counted: {stats}");
}

/// Many first runs: their records reach the store's main file (a copy of
/// `idem.db` alone holds all but the last few), and the WAL is written
/// again from its start rather than truncated and grown anew, so it keeps
/// about 64 frames' worth of blocks, and no more.
#[test]
fn first_runs_reach_the_main_file_and_the_wal_is_reused_not_regrown() {
    let env = Env::sqlite();
    let runs = 60;
    for i in 0..runs {
        env.run_ok(&["run", "-k", &format!("f{i}"), "--", "true"]);
    }
    let mut wal = env.db_path().into_os_string();
    wal.push("-wal");
    let len = std::fs::metadata(&wal).map_or(0, |m| m.len());
    let frame = 4096 + 24;
    assert!(len <= 2 * 64 * frame, "the WAL grew to {len} bytes");
    assert!(len >= 60 * frame, "the WAL was cut to {len} bytes");
    let copy = env.path("copy.db");
    std::fs::copy(env.db_path(), &copy).unwrap();
    let conn = rusqlite::Connection::open(&copy).unwrap();
    let in_main: i64 = conn
        .query_row("SELECT count(*) FROM records", [], |r| r.get(0))
        .unwrap();
    assert!(
        in_main >= runs - 11,
        "only {in_main} of {runs} records are in the main file"
    );
}

/// A store written before labels (schema 2) is upgraded by the next run
/// and keeps its records.
#[test]
fn a_version_2_store_is_upgraded_and_keeps_its_records() {
    let env = Env::sqlite();
    env.idem()
        .args(["run", "-k", "old", "--", "echo", "hi"])
        .assert()
        .success();
    // Back to schema 2: no label, no journal (the output in the record).
    let conn = rusqlite::Connection::open(env.db_path()).unwrap();
    conn.execute_batch(
        "ALTER TABLE records DROP COLUMN label; ALTER TABLE records DROP COLUMN owner_pid_ns;
         ALTER TABLE records DROP COLUMN lease_until; ALTER TABLE records DROP COLUMN owner_lock;
         DROP TABLE journal;
         ALTER TABLE records DROP COLUMN stdout_bytes; ALTER TABLE records DROP COLUMN stderr_bytes;
         UPDATE records SET stdout = CAST('hi\n' AS BLOB); PRAGMA user_version = 2;",
    )
    .unwrap();
    drop(conn);
    // Read-only inspect upgrades it too (an operator may look first).
    env.idem()
        .args(["inspect", "old", "--stdout"])
        .assert()
        .success()
        .stdout("hi\n");
    env.idem()
        .args(["run", "-k", "old", "--", "echo", "hi"])
        .assert()
        .success()
        .stdout("hi\n");
    env.idem()
        .args(["run", "-k", "new", "--label", "L", "--", "true"])
        .assert()
        .success();
    let conn = rusqlite::Connection::open(env.db_path()).unwrap();
    let version: i32 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 5);
    let labels: Vec<Option<String>> = conn
        .prepare("SELECT label FROM records ORDER BY key")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(labels, [Some("L".to_owned()), None]);
}
