//! Records made and read through the CLI: a run under a key, an expired
//! record, and `idem inspect --json` parsed, shared by the tests of
//! inspecting, purging and reporting.

use super::{sh, wait_until, Backend, Env};
use serde_json::Value;

/// Runs `script` under `key` (extra flags before `--`) and returns the exit code.
pub fn make(env: &Env, key: &str, extra: &[&str], script: &str) -> i32 {
    let out = env
        .idem()
        .args(["run", "-k", key])
        .args(extra)
        .arg("--")
        .args(sh(script))
        .output()
        .unwrap();
    out.status.code().unwrap_or(-1)
}

/// A record under `key` that has expired by the time this returns.
pub fn make_expired(env: &Env, key: &str) {
    if env.backend() == Backend::Redis {
        // Redis deletes a record at its expires_at; this is the moment before.
        assert_eq!(make(env, key, &["--ttl", "1h"], "echo gone"), 0);
        move_expiry_back(env, key);
    } else {
        assert_eq!(make(env, key, &["--ttl", "1ms"], "echo gone"), 0);
    }
    wait_until("the record to expire", || {
        records(env, &["--expired"]).iter().any(|r| r["key"] == key)
    });
}

/// `idem inspect --json ARGS`, parsed (exit 0 and an empty stderr asserted).
#[track_caller]
pub fn records(env: &Env, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["inspect", "--json"];
    all.extend_from_slice(args);
    env.run_ok(&all)
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON object per line"))
        .collect()
}

/// The keys `idem inspect --json ARGS` lists, in order.
#[track_caller]
pub fn keys(env: &Env, args: &[&str]) -> Vec<String> {
    records(env, args)
        .iter()
        .map(|r| r["key"].as_str().unwrap().to_owned())
        .collect()
}

/// Where the Redis store with `prefix` keeps `key`'s record (schema 2).
pub fn record_key(prefix: &str, key: &str) -> String {
    format!("{prefix}{{{key}}}:rec")
}

/// Sets a finished Redis record's `expires_at` back to its `finished_at`,
/// as if its time were up but Redis had not deleted it yet (Redis keeps it
/// for its original TTL).
pub fn move_expiry_back(env: &Env, key: &str) {
    let (base, prefix) = env.db.split_once("?prefix=").unwrap();
    let mut con = redis::Client::open(base).unwrap().get_connection().unwrap();
    let record = record_key(prefix, key);
    let finished: String = redis::cmd("HGET")
        .arg(&record)
        .arg("finished_at")
        .query(&mut con)
        .unwrap();
    let _: i64 = redis::cmd("HSET")
        .arg(&record)
        .arg("expires_at")
        .arg(finished)
        .query(&mut con)
        .unwrap();
}

/// Leaves `key` in_progress with a dead owner: idem SIGKILLed at its pause
/// point just after its claim, before the command started.
pub fn make_crashed(env: &Env, key: &str) {
    let paused = env.path(&format!("paused-{key}"));
    let idem = env
        .idem_std()
        .args(["run", "-k", key, "--", "true"])
        .env("IDEM_TEST_PAUSE", "after-claim")
        .env("IDEM_TEST_PAUSE_FILE", &paused)
        .spawn()
        .unwrap();
    super::wait_for(&paused);
    kill_paused_owner(env, key, idem);
}

/// SIGKILLs `idem`, paused after its claim of `key`, and waits until the
/// child that claim records and idem's watcher are gone too: the record's
/// owner is then dead, with no process left.
pub fn kill_paused_owner(env: &Env, key: &str, mut idem: std::process::Child) {
    let child = records(env, &[key])
        .first()
        .and_then(|r| r["child_pid"].as_i64())
        .map(|pid| i32::try_from(pid).unwrap());
    super::kill_idem(&mut idem);
    if let Some(child) = child {
        wait_until("the gated child to exit", || !super::running(child));
    }
}
