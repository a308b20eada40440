//! Replay counts on SQLite: a replay appends a line to `<store>-replays`
//! and never writes the store; the lines are folded into the store now and
//! then, and every count shows up in `inspect` and `stats` at once, exactly
//! once, however many replays and folds run at the same time.

use crate::support::{records, Env};
use serde_json::Value;
use std::path::PathBuf;

fn replays_file(env: &Env) -> PathBuf {
    let mut name = env.db_path().into_os_string();
    name.push("-replays");
    PathBuf::from(name)
}

/// `replays` of `key` as `inspect --json` shows it.
fn replays(env: &Env, key: &str) -> i64 {
    records(env, &[key])[0]["replays"].as_i64().unwrap()
}

fn run(env: &Env, key: &str) {
    env.test()
        .args(["-q", "run", "-k", key, "--", "true"])
        .run();
}

#[test]
fn a_replay_never_writes_the_store() {
    let env = Env::sqlite();
    run(&env, "a");
    let wal = |env: &Env| {
        let mut name = env.db_path().into_os_string();
        name.push("-wal");
        std::fs::read(PathBuf::from(name)).unwrap_or_default()
    };
    let (store, log) = (std::fs::read(env.db_path()).unwrap(), wal(&env));
    for _ in 0..5 {
        run(&env, "a");
    }
    assert!(
        std::fs::read(env.db_path()).unwrap() == store,
        "the store changed"
    );
    assert!(wal(&env) == log, "the WAL changed");
    assert_eq!(replays(&env, "a"), 5);
    let stats = env
        .test()
        .args(["stats", "--json"])
        .stdout_any()
        .run()
        .stdout();
    let stats: Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(stats["replays"], 5, "{stats}");
    // `--report` counts the replays still in the file, and this one.
    env.test()
        .args([
            "-q",
            "run",
            "--report",
            "report.json",
            "-k",
            "a",
            "--",
            "true",
        ])
        .run();
    let report = std::fs::read_to_string(env.path("report.json")).unwrap();
    let report: Value = serde_json::from_str(&report).unwrap();
    assert_eq!(report["replays"], 6, "{report}");
}

#[test]
fn concurrent_replays_and_folds_count_each_replay_exactly_once() {
    let env = Env::sqlite();
    // A key of 1,000 bytes makes a line of 2 KiB: a fold every 32 replays.
    let key = "k".repeat(1000);
    run(&env, &key);
    std::thread::scope(|s| {
        for _ in 0..6 {
            s.spawn(|| {
                for _ in 0..15 {
                    run(&env, &key);
                }
            });
        }
    });
    let left = std::fs::metadata(replays_file(&env)).unwrap().len();
    assert!(left < 64 * 1024, "never folded: {left} bytes");
    assert_eq!(replays(&env, &key), 90);
    // A purge folds whatever is left and empties the file.
    run(&env, "other");
    env.test().args(["purge", "other"]).stdout_any().run();
    assert_eq!(std::fs::metadata(replays_file(&env)).unwrap().len(), 0);
    assert_eq!(replays(&env, &key), 90);
    run(&env, &key);
    assert_eq!(replays(&env, &key), 91);
}

#[test]
fn a_replay_that_cannot_use_the_file_is_counted_in_the_store() {
    let env = Env::sqlite();
    run(&env, "a");
    std::fs::create_dir(replays_file(&env)).unwrap();
    run(&env, "a");
    run(&env, "a");
    assert_eq!(replays(&env, "a"), 2);
    // A FIFO in its place: no replay, inspect or purge waits on it.
    std::fs::remove_dir(replays_file(&env)).unwrap();
    nix::unistd::mkfifo(&replays_file(&env), nix::sys::stat::Mode::S_IRWXU).unwrap();
    run(&env, "a");
    assert_eq!(replays(&env, "a"), 3);
    env.test().args(["purge", "--expired"]).stdout_any().run();
    assert_eq!(replays(&env, "a"), 3);
}

#[test]
fn counts_left_beside_a_deleted_store_do_not_reach_the_new_one() {
    let env = Env::sqlite();
    run(&env, "a");
    run(&env, "a");
    assert_eq!(replays(&env, "a"), 1);
    // The operator deletes the store but not the counts' file.
    for suffix in ["", "-wal", "-shm"] {
        let mut name = env.db_path().into_os_string();
        name.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(name));
    }
    run(&env, "a");
    assert_eq!(replays(&env, "a"), 0);
    // A file of that name that is not idem's is never removed.
    let foreign = replays_file(&env);
    std::fs::write(&foreign, "notes\n").unwrap();
    for suffix in ["", "-wal", "-shm"] {
        let mut name = env.db_path().into_os_string();
        name.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(name));
    }
    run(&env, "b");
    assert_eq!(std::fs::read_to_string(&foreign).unwrap(), "notes\n");
}
