//! Record names under a prefix: no two (prefix, key) pairs share one,
//! braces included, and a store named the old way (schemas 2 and 3, where
//! prefix `team{` with key `a` and prefix `team` with key `{a` were the
//! same hash) moves its records to the new names on its first write.

use super::{connect, query, split};
use crate::support::{require, sh, Backend, Env};

#[test]
#[ignore = "needs IDEM_TEST_BACKEND=redis"]
fn prefixes_and_keys_with_braces_never_share_a_record() {
    require(Backend::Redis);
    let env = Env::new();
    let (base, prefix) = split(&env);
    let script = env.count_run("n");
    for (their_prefix, key) in [("team%7B", "a"), ("team", "{a"), ("x", "}{"), ("x%7D", "{")] {
        env.idem()
            .env("IDEM_DB", format!("{base}?prefix={prefix}{their_prefix}"))
            .args(["run", "-k", key, "--"])
            .args(sh(&script))
            .assert()
            .success()
            .stdout("");
    }
    assert_eq!(
        env.count("n"),
        4,
        "a caller replayed another prefix's record"
    );
}

#[test]
#[ignore = "needs IDEM_TEST_BACKEND=redis"]
fn a_schema_3_store_moves_keys_with_braces_to_their_new_names() {
    require(Backend::Redis);
    let env = Env::new();
    let (base, prefix) = split(&env);
    let script = format!("{}; echo out", env.count_run("n"));
    for key in ["{a", "plain", "b{c}"] {
        env.idem()
            .args(["run", "-k", key, "--"])
            .args(sh(&script))
            .assert()
            .success();
    }
    // As schema 3 named them: `{` left as it was in the tag.
    let mut con = connect(&base);
    for (key, tag) in [("{a", "{a"), ("b{c}", "b{c%7D")] {
        for part in ["rec", "log"] {
            let new = format!(
                "{prefix}{{{}}}:{part}",
                key.replace('}', "%7D").replace('{', "%7B")
            );
            let old = format!("{prefix}{{{tag}}}:{part}");
            let _: () = query(&mut con, &["RENAME", &new, &old]);
        }
    }
    let _: () = query(&mut con, &["SET", &format!("{prefix}schema"), "3"]);
    // inspect changes nothing; the first run moves them.
    env.idem().args(["inspect", "plain"]).assert().success();
    let version: String = query(&mut con, &["GET", &format!("{prefix}schema")]);
    assert_eq!(version, "3");
    env.idem()
        .args(["run", "-k", "new", "--", "true"])
        .assert()
        .success();
    let version: String = query(&mut con, &["GET", &format!("{prefix}schema")]);
    assert_eq!(version, "5");
    for key in ["{a", "plain", "b{c}"] {
        env.idem()
            .args(["run", "-k", key, "--"])
            .args(sh(&script))
            .assert()
            .success()
            .stdout("out\n");
    }
    assert_eq!(env.count("n"), 3, "a moved record ran again");
    let left: Vec<String> = query(&mut con, &["KEYS", &format!("{prefix}{{{{a}}:*")]);
    assert!(left.is_empty(), "old names left: {left:?}");
}
