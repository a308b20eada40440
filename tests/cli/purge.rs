//! `idem purge`: selectors, live and dead owners, dry runs, reports, and
//! the space it gives back.

use crate::support::{keys, make, make_expired, records, Env, Holder};
use predicates::prelude::*;
use serde_json::Value;

/// A store with `ok` (completed), `bad` (failed) and `old` (expired).
fn fixture() -> Env {
    let env = Env::new();
    make(&env, "ok", &[], "true");
    make(&env, "bad", &[], "exit 1");
    make_expired(&env, "old");
    env
}

/// Runs `idem purge ARGS` on a fresh fixture; returns its stdout and the
/// keys left, oldest first.
fn purge(args: &[&str]) -> (String, Vec<String>) {
    let env = fixture();
    let out = env.idem().arg("purge").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut left = keys(&env, &[]);
    left.reverse();
    (String::from_utf8(out.stdout).unwrap(), left)
}

#[test]
fn no_selector_purges_expired_records() {
    assert_eq!(
        purge(&[]),
        (
            "purged 1, skipped 0\n".into(),
            vec!["ok".into(), "bad".into()]
        )
    );
}

#[test]
fn each_selector_alone() {
    let left = |args: &[&str]| purge(args).1;
    assert_eq!(left(&["--expired"]), ["ok", "bad"]);
    assert_eq!(left(&["--status", "failed"]), ["ok", "old"]);
    assert_eq!(left(&["--status", "completed"]), ["bad"]);
    assert_eq!(left(&["--all"]), Vec::<String>::new());
    assert_eq!(left(&["ok", "old"]), ["bad"]);
    // Everything started more than a day ago: nothing; more than 1ms ago: all.
    assert_eq!(left(&["--older-than", "1d"]), ["ok", "bad", "old"]);
    assert_eq!(left(&["--older-than", "1ms"]), Vec::<String>::new());
}

#[test]
fn selectors_combine_with_and() {
    let left = |args: &[&str]| purge(args).1;
    assert_eq!(left(&["--status", "completed", "--expired"]), ["ok", "bad"]);
    assert_eq!(left(&["--all", "--status", "failed"]), ["ok", "old"]);
    assert_eq!(left(&["ok", "--status", "failed"]), ["ok", "bad", "old"]);
    assert_eq!(left(&["ok", "bad", "--status", "failed"]), ["ok", "old"]);
    assert_eq!(
        left(&["--older-than", "1ms", "--status", "failed"]),
        ["ok", "old"]
    );
    assert_eq!(left(&["--older-than", "1d", "--all"]), ["ok", "bad", "old"]);
}

#[test]
fn named_keys_that_do_not_exist_are_reported() {
    let env = fixture();
    env.idem()
        .args(["purge", "ok", "nope"])
        .assert()
        .success()
        .stdout("purged 1, skipped 0\n")
        .stderr("idem: no record for key nope\n");
}

#[test]
fn dry_run_lists_and_changes_nothing() {
    let env = fixture();
    let before = records(&env, &[]);
    let out = env
        .idem()
        .args(["purge", "--all", "--dry-run"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(lines[0].starts_with("would purge old (expired, started "));
    assert!(lines[1].starts_with("would purge bad (failed, "));
    assert!(lines[2].starts_with("would purge ok (completed, "));
    assert_eq!(lines[3], "dry run: would have purged 3, skipped 0");
    let json = env
        .idem()
        .args(["purge", "--dry-run", "--json"])
        .output()
        .unwrap();
    let json: Vec<Value> = String::from_utf8(json.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        json,
        [
            serde_json::json!({"key": "old", "action": "purge"}),
            serde_json::json!({"purged": 1, "skipped": 0, "dry_run": true}),
        ]
    );
    assert_eq!(records(&env, &[]), before);
}

#[test]
fn a_live_owner_survives_without_force_and_goes_with_it() {
    let env = Env::new();
    make(&env, "done", &[], "true");
    let holder = Holder::start(&env, "busy", &[]);
    env.idem()
        .args(["purge", "--all"])
        .assert()
        .success()
        .stdout("purged 1, skipped 1\n")
        .stderr(predicates::str::starts_with(
            "idem: skipped busy: in progress",
        ));
    // A named key that had to be skipped: exit 75, so `purge KEY && ...` is safe.
    env.idem()
        .args(["purge", "busy", "--json"])
        .assert()
        .code(75)
        .stdout(
            predicates::str::contains(r#""action":"skip""#).and(predicates::str::ends_with(
                "{\"dry_run\":false,\"purged\":0,\"skipped\":1}\n",
            )),
        );
    assert_eq!(keys(&env, &[]), ["busy"]);
    env.idem()
        .args(["purge", "--status", "in_progress", "--force"])
        .assert()
        .success()
        .stdout("purged 1, skipped 0\n");
    assert!(keys(&env, &[]).is_empty());
    // Its record went under it: whatever idem makes of that at the end.
    drop(holder.release());
}

#[test]
fn a_dead_owner_is_purged_without_force_which_clears_a_blocked_key() {
    let env = Env::new();
    // idem, then its child's whole group, die: a crash.
    Holder::start(&env, "pay", &["--on-crash", "block"]).crash();
    std::fs::write(env.path("release"), "").unwrap();
    let hold = Holder::script(&env);
    assert_eq!(make(&env, "pay", &["--on-crash", "block"], &hold), 77);
    let table = env.idem().arg("inspect").output().unwrap();
    assert!(String::from_utf8_lossy(&table.stdout).contains(" crashed "));
    assert_eq!(records(&env, &[])[0]["owner"]["alive"], false);
    env.idem()
        .args(["purge", "pay"])
        .assert()
        .success()
        .stdout("purged 1, skipped 0\n");
    assert_eq!(make(&env, "pay", &["--on-crash", "block"], &hold), 0);
}

#[test]
fn purge_gives_the_space_back() {
    let env = Env::sqlite();
    for i in 0..12 {
        make(&env, &format!("big{i}"), &[], "head -c 300000 /dev/zero");
    }
    let size = || {
        ["", "-wal"]
            .iter()
            .filter_map(|suffix| {
                let path = format!("{}{suffix}", env.db_path().display());
                std::fs::metadata(path).ok().map(|m| m.len())
            })
            .sum::<u64>()
    };
    assert!(size() > 3_000_000, "{}", size());
    // Keep a few: the rest of the file must still shrink.
    env.idem()
        .args([
            "purge", "--all", "big1", "big2", "big3", "big4", "big5", "big6", "big7", "big8",
            "big9",
        ])
        .assert()
        .success()
        .stdout("purged 9, skipped 0\n");
    assert!(size() < 1_500_000, "{}", size());
    env.idem().args(["purge", "--all"]).assert().success();
    assert!(size() < 200_000, "{}", size());
}

/// Purges by status racing runs that finish: a purge that read a record in
/// progress, then judged its owner after the owner recorded its outcome and
/// exited, used to delete the completed record (whose key then ran again).
/// Each purge must delete only a record still as it judged it.
#[test]
fn a_purge_racing_finishing_runs_never_deletes_a_completed_record() {
    const KEYS: usize = 1000;
    const LANES: usize = 8;
    let env = Env::new();
    let done = std::sync::atomic::AtomicBool::new(false);
    let purges = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for status in ["crashed", "in_progress"] {
            let (env, done, purges) = (&env, &done, &purges);
            scope.spawn(move || {
                while !done.load(std::sync::atomic::Ordering::SeqCst) {
                    let out = env
                        .idem()
                        .args(["-q", "purge", "--status", status])
                        .output()
                        .unwrap();
                    assert!(out.status.success(), "{out:?}");
                    purges.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            });
        }
        let lanes: Vec<_> = (0..LANES)
            .map(|lane| {
                let env = &env;
                scope.spawn(move || {
                    for i in (lane..KEYS).step_by(LANES) {
                        let key = format!("k{i}");
                        let out = env
                            .idem()
                            .args(["run", "-k", &key, "--", "true"])
                            .output()
                            .unwrap();
                        assert!(out.status.success(), "{key}: {out:?}");
                    }
                })
            })
            .collect();
        for lane in lanes {
            lane.join().unwrap();
        }
        done.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    let left = records(&env, &["--status", "completed"]);
    assert!(purges.into_inner() > 2, "the purges did not race the runs");
    assert_eq!(
        KEYS - left.len(),
        0,
        "completed records deleted by a purge of running ones"
    );
}
