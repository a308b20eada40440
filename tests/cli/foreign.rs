//! Files that are not idem stores, or not files at all, as `--db`: refused
//! with exit 125 at once, and left exactly as they were — same bytes, no
//! `-wal`, `-shm` or `-journal` beside them, no journal rolled back. And
//! the other side of the coin: an idem store keeps its records in its main
//! file, so a copy of `idem.db` alone is a working store.

use crate::support::{run_sh, Env};
use rusqlite::Connection;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Every entry of `dir` with the SHA-256 of its contents.
fn snapshot(dir: &Path) -> BTreeMap<String, String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            let digest = if entry.file_type().unwrap().is_file() {
                let bytes = std::fs::read(entry.path()).unwrap();
                format!("{:x}", Sha256::digest(bytes))
            } else {
                "not a file".into()
            };
            (entry.file_name().to_string_lossy().into_owned(), digest)
        })
        .collect()
}

/// Runs `cmd`; panics if it is still running after 10 s (a hang).
#[track_caller]
fn within_deadline(cmd: &mut Command) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("idem hung: {cmd:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

/// The commands that open a store, each in the three ways one is opened.
fn every_command(env: &Env) -> Vec<Vec<String>> {
    let run = env.count_run("ran");
    vec![
        vec![
            "run".into(),
            "-k".into(),
            "k".into(),
            "--".into(),
            "sh".into(),
            "-c".into(),
            run,
        ],
        vec!["inspect".into()],
        vec!["inspect".into(), "k".into()],
        vec!["purge".into()],
        vec!["purge".into(), "--all".into()],
    ]
}

/// Every command on `db` exits 125 at once with `expect` in its one line,
/// runs nothing, and leaves the directory of `db` as it was.
#[track_caller]
fn refused_untouched(env: &Env, db: &Path, expect: &str) {
    let dir = db.parent().unwrap();
    let before = snapshot(dir);
    for args in every_command(env) {
        let out = within_deadline(env.idem_std().arg("--db").arg(db).args(&args));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{args:?}: {err}");
        assert!(
            err.starts_with("idem: ") && err.lines().count() == 1,
            "{err}"
        );
        assert!(err.contains(expect), "{args:?}: {err}");
        assert_eq!(snapshot(dir), before, "{args:?} changed {}", dir.display());
    }
    assert_eq!(env.count("ran"), 0, "nothing may run");
}

#[test]
fn fifos_sockets_and_devices_are_refused_at_once() {
    let env = Env::sqlite();
    let dir = env.path("special");
    std::fs::create_dir(&dir).unwrap();
    let fifo = dir.join("fifo.db");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    refused_untouched(&env, &fifo, "a FIFO");
    let socket = dir.join("socket.db");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    refused_untouched(&env, &socket, "a socket");
    for args in every_command(&env) {
        let out = within_deadline(env.idem_std().args(["--db", "/dev/null"]).args(&args));
        assert_eq!(out.status.code(), Some(125), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("character device"));
    }
    for suffix in ["-journal", "-wal", "-shm"] {
        assert!(
            !Path::new(&format!("/dev/null{suffix}")).exists(),
            "/dev/null{suffix}"
        );
    }
}

/// A database of another application, made by `setup` in a directory of
/// its own, is refused untouched by every command.
#[track_caller]
fn foreign(env: &Env, name: &str, setup: &str) {
    let dir = env.path(name);
    std::fs::create_dir(&dir).unwrap();
    let db = dir.join("app.db");
    let conn = Connection::open(&db).unwrap();
    conn.execute_batch(setup).unwrap();
    drop(conn);
    refused_untouched(env, &db, "not an idem store");
}

#[test]
fn databases_of_other_applications_are_refused_untouched() {
    let env = Env::sqlite();
    // No tables: once taken for an idem store (and converted), or "newer".
    foreign(&env, "version7", "PRAGMA user_version = 7;");
    foreign(&env, "version1", "PRAGMA user_version = 1;");
    foreign(&env, "version2", "PRAGMA user_version = 2;");
    // WAL mode: SQLite would create -wal and -shm beside it.
    foreign(
        &env,
        "wal",
        "PRAGMA journal_mode = WAL; CREATE TABLE t (x); INSERT INTO t VALUES (1);",
    );
    foreign(
        &env,
        "other-id",
        "PRAGMA application_id = 1234; PRAGMA journal_mode = WAL; CREATE TABLE t (x);",
    );
}

/// Copies `db` with the journal or WAL of a transaction in progress to
/// `copy`: another application's database as a crash left it.
fn copy_mid_transaction(db: &Path, copy: &Path, journal_mode: &str, suffix: &str) {
    let conn = Connection::open(db).unwrap();
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = {journal_mode}; PRAGMA cache_size = 2;
         CREATE TABLE t (x BLOB);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200)
         INSERT INTO t SELECT randomblob(2000) FROM n;"
    ))
    .unwrap();
    if journal_mode == "WAL" {
        // Committed, not checkpointed: the newest rows are in the WAL only.
        conn.execute_batch("PRAGMA wal_autocheckpoint = 0; UPDATE t SET x = randomblob(2000);")
            .unwrap();
    } else {
        conn.execute_batch("BEGIN; UPDATE t SET x = randomblob(2000);")
            .unwrap();
    }
    let side = |p: &Path| format!("{}{suffix}", p.display());
    assert!(
        std::fs::metadata(side(db)).unwrap().len() > 0,
        "no {suffix}"
    );
    std::fs::copy(db, copy).unwrap();
    std::fs::copy(side(db), side(copy)).unwrap();
    drop(conn);
}

#[test]
fn a_foreign_hot_journal_or_wal_is_never_recovered() {
    let env = Env::sqlite();
    for (mode, suffix) in [("DELETE", "-journal"), ("WAL", "-wal")] {
        let dir = env.path(mode);
        std::fs::create_dir(&dir).unwrap();
        let copy = dir.join("crashed.db");
        copy_mid_transaction(&env.path(&format!("{mode}.db")), &copy, mode, suffix);
        refused_untouched(&env, &copy, "not an idem store");
    }
}

/// Moves the WAL into the main file and empties it.
fn checkpoint(env: &Env) {
    Connection::open(env.db_path())
        .unwrap()
        .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
        .unwrap();
}

/// A store of 61 records: 60 in its main file, the newest (`new`) in its
/// WAL only. Returns the WAL's path.
fn store_with_wal(env: &Env) -> std::path::PathBuf {
    for i in 0..60 {
        env.idem()
            .args([
                "run",
                "-k",
                &format!("old-{i}"),
                "--",
                "echo",
                "some output",
            ])
            .assert()
            .success();
    }
    checkpoint(env);
    env.idem()
        .args(["run", "-k", "new", "--", "echo", "newer"])
        .assert()
        .success();
    let wal = std::path::PathBuf::from(format!("{}-wal", env.db));
    assert!(
        std::fs::metadata(&wal).unwrap().len() > 0,
        "the WAL holds the newest run"
    );
    wal
}

#[test]
fn purge_writes_nothing_to_a_store_that_failed_its_checks() {
    let env = Env::sqlite();
    let wal = store_with_wal(&env);
    let mut bytes = std::fs::read(env.db_path()).unwrap();
    for (i, b) in bytes.iter_mut().enumerate().skip(4096) {
        *b = (i * 7 % 256) as u8;
    }
    std::fs::write(env.db_path(), &bytes).unwrap();
    let wal_bytes = std::fs::read(&wal).unwrap();
    for args in [&["purge", "--all"][..], &["purge"], &["purge", "new"]] {
        let out = env.idem().args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{args:?}: {err}");
        assert!(err.contains("corrupt"), "{err}");
        assert!(
            std::fs::read(env.db_path()).unwrap() == bytes,
            "{args:?} wrote to the main file"
        );
        assert!(
            std::fs::read(&wal).unwrap() == wal_bytes,
            "{args:?} wrote to the WAL"
        );
    }
}

#[test]
fn a_fresh_store_keeps_its_records_in_the_main_file() {
    let env = Env::sqlite();
    env.idem()
        .args(["run", "-k", "first", "--", "sh", "-c", &env.count_run("n")])
        .assert()
        .success();
    // An operator copies idem.db alone (or deletes the -wal as a temp file).
    std::fs::copy(env.db_path(), env.path("copy.db")).unwrap();
    env.idem()
        .args(
            [
                &["--db", "copy.db"][..],
                &run_sh(&["-k", "first"], &env.count_run("n")),
            ]
            .concat(),
        )
        .assert()
        .success();
    assert_eq!(
        env.count("n"),
        1,
        "the copy must hold the record: no second run"
    );
}

#[test]
fn purge_empties_the_wal_into_the_main_file() {
    let env = Env::sqlite();
    let wal = store_with_wal(&env);
    env.idem().args(["purge"]).assert().success();
    assert_eq!(std::fs::metadata(&wal).map_or(0, |m| m.len()), 0);
    std::fs::copy(env.db_path(), env.path("copy.db")).unwrap();
    env.idem()
        .args(["--db", "copy.db", "inspect", "new"])
        .assert()
        .success();
}

/// A store written by an idem that stamped it in the WAL only (before the
/// first checkpoint, as idem did until now) is still recognised as idem's
/// from its WAL, without SQLite's help.
#[test]
fn a_store_stamped_in_its_wal_only_is_still_idem_s() {
    let env = Env::sqlite();
    env.run_ok(&["run", "-k", "k", "--", "echo", "stored"]);
    checkpoint(&env);
    let mut bytes = std::fs::read(env.db_path()).unwrap();
    let stamp: Vec<u8> = bytes[68..72].to_vec();
    bytes[68..72].copy_from_slice(&[0; 4]);
    std::fs::write(env.db_path(), &bytes).unwrap();
    let conn = Connection::open(env.db_path()).unwrap();
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
        true,
    )
    .unwrap();
    let id = i32::from_be_bytes(stamp.try_into().unwrap());
    conn.execute_batch(&format!("PRAGMA application_id = {id};"))
        .unwrap();
    drop(conn);
    assert_eq!(std::fs::read(env.db_path()).unwrap()[68..72], [0; 4]);
    env.idem()
        .args(["run", "-k", "k", "--", "echo", "stored"])
        .assert()
        .success()
        .stdout("stored\n");
}
