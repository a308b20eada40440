//! The primitives behind `inspect`, `purge` and the claim loop, against a
//! live server, each under a key prefix of its own. They are ignored unless
//! asked for (`--include-ignored`), and then fail unless
//! `IDEM_TEST_BACKEND=redis` names a server to use (as CI does).

use super::*;
use crate::store::{contract, Status};
use std::time::Instant;

/// A fresh store under prefix `u<pid>_<name>:`, its keys deleted by `Drop`.
struct Scratch {
    store: RedisStore,
    url: String,
}

impl Scratch {
    fn new(name: &str) -> Scratch {
        assert!(
            std::env::var("IDEM_TEST_BACKEND").as_deref() == Ok("redis"),
            "needs IDEM_TEST_BACKEND=redis"
        );
        let base = std::env::var("IDEM_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into());
        let url = format!("{base}?prefix=u{}_{name}:", std::process::id());
        let store = open_store(&url);
        let mut scratch = Scratch { store, url };
        scratch.wipe();
        scratch
    }

    /// Another client of the same store, as another host would be.
    fn another(&self) -> RedisStore {
        open_store(&self.url)
    }

    fn redis<T: redis::FromRedisValue>(&mut self, cmd: &redis::Cmd) -> T {
        self.store
            .exec("test", false, |c, _| cmd.query(c.like()))
            .unwrap()
    }

    fn wipe(&mut self) {
        let pattern = format!("{}*", self.store.target.prefix);
        let keys: Vec<String> = self.redis(redis::cmd("KEYS").arg(pattern));
        if !keys.is_empty() {
            let _: i64 = self.redis(redis::cmd("DEL").arg(keys));
        }
    }

    fn claim(&mut self, key: &str) -> i64 {
        contract::claim_key(&mut self.store, key)
    }

    /// Appends `stdout` and records an exit 0 kept for `ttl_ms`; whether
    /// both writes were this token's.
    fn finish(&mut self, key: &str, token: i64, ttl_ms: Millis, stdout: &[u8]) -> bool {
        contract::append(&mut self.store, key, token, 0, stdout)
            && (self.store)
                .finish(key, token, &contract::completed(ttl_ms))
                .unwrap()
    }

    fn keys(&mut self, filter: &Filter) -> Vec<String> {
        let mut keys = Vec::new();
        self.store
            .list(filter, &mut |r| {
                keys.push(r.key);
                Ok(())
            })
            .unwrap();
        keys
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // A second panic while a failed test unwinds would abort the run.
        if !std::thread::panicking() {
            self.wipe();
        }
    }
}

/// A store ready for the tests' raw commands: `run` leaves finding out
/// whether the server is a cluster node to its first read, which these
/// tests do not make.
fn open_store(url: &str) -> RedisStore {
    let mut store = super::open_store(url, Mode::Create).unwrap().unwrap();
    store.ready().unwrap();
    store
}

#[test]
#[ignore = "needs IDEM_TEST_BACKEND=redis"]
fn list_filters_and_pages_newest_first() {
    let mut s = Scratch::new("list");
    // More records than a page, with ties on started_at.
    let writes: Vec<redis::Cmd> = (1..=1200)
        .map(|i| {
            redis::cmd("HSET")
                .arg(s.store.record_key(&format!("bulk{i:04}")))
                .arg(&["status", "completed", "token"])
                .arg(i)
                .arg("started_at")
                .arg(1000 + i / 3)
                .clone()
        })
        .collect();
    s.store
        .exec("test", false, |c, _| c.each::<i64>(writes.clone()))
        .unwrap();
    let all = s.keys(&Filter::default());
    assert_eq!(all.len(), 1200);
    assert_eq!(all[0], "bulk1200");
    assert_eq!(
        &all[1..4],
        ["bulk1197", "bulk1198", "bulk1199"],
        "ties go by key"
    );

    let live = s.claim("live");
    let done = s.claim("done");
    assert!(s.finish("done", done, 3_600_000, &[]));
    let gone = s.claim("gone");
    assert!(s.finish("gone", gone, 1, &[]));
    let record = s.store.record_key("gone");
    wait_until_gone(&mut s, &record);

    let limited = s.keys(&Filter {
        limit: Some(2),
        ..Filter::default()
    });
    assert_eq!(limited, ["done", "live"]);
    let running = s.keys(&Filter {
        status: Some(Status::InProgress),
        ..Filter::default()
    });
    assert_eq!(running, ["live"]);
    let expired = s.keys(&Filter {
        expired: true,
        ..Filter::default()
    });
    assert!(expired.is_empty(), "Redis deleted it already: {expired:?}");
    let named = s.keys(&Filter {
        keys: vec!["done".into(), "nope".into(), "live".into(), "done".into()],
        ..Filter::default()
    });
    assert_eq!(named, ["done", "live"]);
    let prefixed = s.keys(&Filter {
        prefix: Some("bulk000".into()),
        started_before: Some(1002),
        ..Filter::default()
    });
    assert_eq!(
        prefixed,
        ["bulk0003", "bulk0004", "bulk0005", "bulk0001", "bulk0002"]
    );

    // Deletion names the token: a stale one deletes nothing.
    let judged = |s: &mut Scratch, key: &str| {
        crate::store::Judged::from(s.store.get(key).unwrap().1.unwrap())
    };
    let mut stale = judged(&mut s, "live");
    stale.token = live + 100;
    let done_now = judged(&mut s, "done");
    let deleted = s.store.delete(&[stale, done_now]).unwrap();
    assert_eq!(deleted, 1);
    assert!(s.store.get("done").unwrap().1.is_none());
    assert!(s.store.get("live").unwrap().1.is_some());
}

fn wait_until_gone(s: &mut Scratch, key: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while s.redis::<i64>(redis::cmd("EXISTS").arg(key)) == 1 {
        assert!(Instant::now() < deadline, "{key} never expired");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
#[ignore = "needs IDEM_TEST_BACKEND=redis"]
fn the_journal_comes_back_in_order_byte_exact_for_its_token_only() {
    let mut s = Scratch::new("journal");
    contract::the_journal_comes_back_in_order_byte_exact_for_its_token_only(&mut s.store);
}

#[test]
#[ignore = "needs IDEM_TEST_BACKEND=redis"]
fn fencing_refuses_every_write_of_an_old_token() {
    let mut s = Scratch::new("fence");
    let new = contract::fencing_refuses_every_write_of_an_old_token(&mut s.store);
    // A retried finish whose first reply was lost still counts as ours.
    assert!(s.finish("k", new, 1000, &[]));
    let record = s.store.get("k").unwrap().1.unwrap();
    assert_eq!(record.lease_until, None);
}

#[test]
#[ignore = "needs IDEM_TEST_BACKEND=redis"]
fn a_claim_decides_again_when_the_record_changed_after_the_read() {
    let mut s = Scratch::new("recheck");
    let owner = s.claim("k");
    let mut other = s.another();
    let mut looks = Vec::new();
    // The owner renews between the claimer's read and its write: the write
    // must not land, and the claimer must look again.
    let token = s
        .store
        .claim("k", &mut |record, _| {
            looks.push(record.map(|r| r.token));
            if looks.len() == 1 {
                assert!(other.renew("k", owner, 30_000).unwrap());
                Some(contract::claim())
            } else {
                None
            }
        })
        .unwrap();
    assert_eq!(token, None);
    assert_eq!(looks, [Some(owner), Some(owner)]);
    assert_eq!(s.store.get("k").unwrap().1.unwrap().token, owner);

    // Likewise a key that appears between the read and the write.
    let mut looks = 0;
    let token = s
        .store
        .claim("fresh", &mut |record, _| {
            looks += 1;
            if looks == 1 {
                assert!(record.is_none());
                other
                    .claim("fresh", &mut |_, _| Some(contract::claim()))
                    .unwrap()
                    .unwrap();
                Some(contract::claim())
            } else {
                None
            }
        })
        .unwrap();
    assert_eq!((token, looks), (None, 2));
}

#[test]
#[ignore = "needs IDEM_TEST_BACKEND=redis"]
fn a_claim_whose_answer_was_lost_is_recognised_by_its_nonce_only() {
    let mut s = Scratch::new("nonce");
    let token = s.claim("k");
    let rkey = s.store.record_key("k");
    let nonce: String = s.redis(redis::cmd("HGET").arg(&rkey).arg("claim_nonce"));
    assert_eq!(s.store.own_claim(&rkey, &nonce).unwrap(), Some(token));
    assert_eq!(s.store.own_claim(&rkey, "another claim's").unwrap(), None);
    // Finished, it is no longer a claim to go on with.
    assert!(s.finish("k", token, 60_000, b""));
    assert_eq!(s.store.own_claim(&rkey, &nonce).unwrap(), None);
}

#[test]
#[ignore = "needs IDEM_TEST_BACKEND=redis"]
fn a_record_in_progress_never_expires_and_a_renewal_clears_an_old_expiry() {
    let mut s = Scratch::new("persist");
    let token = s.claim("k");
    let rkey = s.store.record_key("k");
    let ttl: i64 = s.redis(redis::cmd("PTTL").arg(&rkey));
    assert_eq!(ttl, -1);
    // As an older idem left it: a deadline in Redis.
    let _: i64 = s.redis(redis::cmd("PEXPIRE").arg(&rkey).arg(3_600_000));
    assert!(s.store.renew("k", token, 30_000).unwrap());
    let ttl: i64 = s.redis(redis::cmd("PTTL").arg(&rkey));
    assert_eq!(ttl, -1);
}

#[test]
#[ignore = "needs IDEM_TEST_BACKEND=redis"]
fn a_delete_takes_only_what_was_judged() {
    let mut s = Scratch::new("judged");
    contract::a_delete_takes_only_what_was_judged(&mut s.store);
}
