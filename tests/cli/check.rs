//! `idem check`: one line per check and exit 0 / 1 / 125, on every backend.
//! SQLite: read-only (the file is byte for byte the same after), an
//! integrity failure is a failure, loose permissions a warning. Shared
//! stores: a probe written and removed, the clock and a round trip. Redis:
//! an evicting `maxmemory-policy` fails, `noeviction` passes, an
//! unreachable server is 125.

use crate::support::{require_shared_store, Env};
use std::os::unix::fs::PermissionsExt;

/// `idem check` (of `db` when given), which must exit with `code`: its
/// lines, stdout's then stderr's.
#[track_caller]
fn check(env: &Env, db: Option<&str>, code: i32) -> String {
    let mut call = env.test().arg("check").status(code);
    if let Some(db) = db {
        call = call.env("IDEM_DB", db);
    }
    let ran = call.stdout_any().stderr_any().run();
    ran.stdout() + &ran.stderr()
}

#[test]
fn check_reads_a_sqlite_file_without_changing_it() {
    let env = Env::sqlite();
    assert_eq!(
        check(&env, None, 0),
        "warn store: no store here yet; the first `idem run` creates it\n"
    );
    assert!(!env.db_path().exists(), "check creates no store");
    for i in 0..20 {
        env.test()
            .args(["run", "-k", &format!("k{i}"), "--", "echo", "some output"])
            .stdout("some output\n")
            .run();
    }
    let files = |env: &Env| -> Vec<(String, Vec<u8>, std::time::SystemTime)> {
        let mut all: Vec<_> = std::fs::read_dir(env.db_path().parent().unwrap())
            .unwrap()
            // The -shm index changes on any read (inspect's too); the data
            // lives in the file and its WAL.
            .filter(|e| {
                !e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with("-shm")
            })
            .map(|e| {
                let e = e.unwrap();
                let meta = e.metadata().unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap(),
                    meta.modified().unwrap(),
                )
            })
            .collect();
        all.sort();
        all
    };
    let before = files(&env);
    let out = check(&env, None, 0);
    for line in [
        "ok   integrity: PRAGMA integrity_check: ok",
        "ok   permissions: mode 600",
        "ok   write: ",
    ] {
        assert!(out.contains(line), "{line}\n{out}");
    }
    assert!(files(&env) == before, "check modified the store's files");

    std::fs::set_permissions(env.db_path(), std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = check(&env, None, 0);
    assert!(
        out.contains("warn permissions: mode 644: others may read"),
        "{out}"
    );

    // Damage a b-tree page (after moving the WAL into the file): the
    // header still says idem, SQLite's own check finds it.
    let conn = rusqlite::Connection::open(env.db_path()).unwrap();
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    drop(conn);
    let mut bytes = std::fs::read(env.db_path()).unwrap();
    assert!(bytes.len() > 3 * 4096, "{}", bytes.len());
    for b in &mut bytes[4096 + 8..4096 + 64] {
        *b = 0xA5;
    }
    std::fs::write(env.db_path(), &bytes).unwrap();
    let out = check(&env, None, 1);
    assert!(
        out.contains("fail integrity: PRAGMA integrity_check found"),
        "{out}"
    );
}

#[test]
#[ignore = "needs a shared store: IDEM_TEST_BACKEND=postgres or redis"]
fn check_probes_a_shared_store_and_reports_the_clock() {
    require_shared_store();
    let env = Env::new();
    env.test().args(["run", "-k", "k", "--", "true"]).run();
    let out = check(&env, None, 0);
    for line in [
        "ok   store: ",
        "ok   write: claimed and removed a probe record",
        "ms ahead of this host's",
        "ok   round trip: ",
    ] {
        assert!(
            out.contains(line) || line.contains("ahead") && out.contains("ms behind"),
            "{line}\n{out}"
        );
    }
    // The probe left nothing behind, and the record is untouched.
    let listed = env
        .test()
        .args(["inspect", "--json"])
        .stdout_any()
        .run()
        .stdout();
    assert_eq!(listed.lines().count(), 1, "{listed}");
    assert!(listed.contains("\"key\":\"k\""), "{listed}");
}

/// Redis only: its test path holds `redis::`, as `.ci/run`'s filters expect.
mod redis {
    use super::check;
    use crate::support::redis_server::Server;
    use crate::support::{require, Backend, Env};

    #[test]
    #[ignore = "needs IDEM_TEST_BACKEND=redis"]
    fn check_fails_a_redis_that_may_evict_and_passes_one_that_may_not() {
        require(Backend::Redis);
        let env = Env::new();
        let lru = Server::start(&["--maxmemory-policy", "allkeys-lru"]);
        let out = check(&env, Some(&lru.url("")), 1);
        assert!(
            out.contains("fail eviction: maxmemory-policy allkeys-lru may evict records"),
            "{out}"
        );
        assert!(out.contains("warn persistence: no AOF and no RDB"), "{out}");
        drop(lru);

        let safe = Server::start(&["--maxmemory-policy", "noeviction", "--appendonly", "yes"]);
        let out = check(&env, Some(&safe.url("")), 0);
        assert!(
            out.contains("ok   eviction: maxmemory-policy noeviction"),
            "{out}"
        );
        assert!(out.contains("ok   persistence: AOF on"), "{out}");
        assert!(!out.contains("fail") && !out.contains("warn"), "{out}");

        let mut gone = safe;
        let url = gone.url("user:hunter2@");
        gone.stop();
        let out = check(&env, Some(&url), 125);
        assert!(
            out.contains(&format!(
                "cannot connect to 127.0.0.1:{}: connection refused",
                gone.port
            )),
            "{out}"
        );
        assert!(!out.contains("hunter2"), "{out}");
    }
}
