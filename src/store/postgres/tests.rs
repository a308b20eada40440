//! The primitives that `inspect` and `purge` use, and chunked replay,
//! against a live server, each with tables of its own. They are ignored
//! unless asked for (`--include-ignored`), and then fail unless
//! `IDEM_TEST_BACKEND=postgres` names a server to use (as CI does).

use super::*;
use crate::store::{contract, Status};

/// A fresh store in table `u<pid>_<name>`, dropped again by `Drop`.
struct Scratch {
    store: PgStore,
}

impl Scratch {
    fn new(name: &str) -> Scratch {
        assert!(
            std::env::var("IDEM_TEST_BACKEND").as_deref() == Ok("postgres"),
            "needs IDEM_TEST_BACKEND=postgres"
        );
        let base = std::env::var("IDEM_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let url = format!("{base}?table=u{}_{name}", std::process::id());
        let mut store = PgStore::open(&url, Mode::Create).unwrap().unwrap();
        // The tables exist from here on, for the raw SQL of the tests.
        store.ready().unwrap();
        Scratch { store }
    }

    fn sql(&mut self, sql: &str) {
        self.store
            .conn
            .call("test", CALL_LIMIT, async |c| c.batch_execute(sql).await)
            .unwrap();
    }

    fn claim(&mut self, key: &str) -> i64 {
        contract::claim_key(&mut self.store, key)
    }

    fn finish(&mut self, key: &str, token: i64, status: Status, ttl_ms: Millis, stdout: &[u8]) {
        assert!(contract::append(&mut self.store, key, token, 0, stdout));
        let outcome = Outcome {
            status,
            ..contract::completed(ttl_ms)
        };
        assert!(self.store.finish(key, token, &outcome).unwrap());
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
        let t = self.store.conn.target.table.clone();
        self.sql(&format!(
            "DROP TABLE {t}_journal, {t}, {t}_meta; DROP SEQUENCE {t}_token"
        ));
    }
}

#[test]
#[ignore = "needs IDEM_TEST_BACKEND=postgres"]
fn list_filters_and_pages_newest_first() {
    let mut s = Scratch::new("list");
    let t = s.store.conn.target.table.clone();
    // More records than one page, with ties on started_at.
    s.sql(&format!(
        "INSERT INTO {t} (key, status, fingerprint, command, cwd, attempt, token, started_at, \
            owner_host, owner_boot, owner_pid, owner_start) \
         SELECT 'bulk' || lpad(i::text, 4, '0'), 'completed', '', '', '', 1, i, 1000 + i / 3, \
            'h', '', 0, 0 FROM generate_series(1, 1200) AS i"
    ));
    let all = s.keys(&Filter::default());
    assert_eq!(all.len(), 1200);
    assert_eq!(all[0], "bulk1200");
    assert_eq!(
        &all[1..4],
        ["bulk1197", "bulk1198", "bulk1199"],
        "ties go by key"
    );
    let mut sorted = all.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 1200, "no record twice across pages");

    let token = s.claim("live");
    let done = s.claim("done");
    s.finish("done", done, Status::Completed, 3_600_000, &[]);
    let gone = s.claim("gone");
    s.finish("gone", gone, Status::Failed, 1, &[]);
    std::thread::sleep(Duration::from_millis(20));

    let limited = s.keys(&Filter {
        limit: Some(3),
        ..Filter::default()
    });
    assert_eq!(limited.len(), 3);
    assert!(
        !limited.iter().any(|k| k.starts_with("bulk")),
        "{limited:?}"
    );
    let running = s.keys(&Filter {
        status: Some(Status::InProgress),
        ..Filter::default()
    });
    assert_eq!(running, ["live"]);
    let expired = s.keys(&Filter {
        expired: true,
        ..Filter::default()
    });
    assert_eq!(expired, ["gone"]);
    let named = s.keys(&Filter {
        keys: vec!["done".into(), "nope".into(), "live".into()],
        ..Filter::default()
    });
    assert_eq!(named.len(), 2);
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
    stale.token = token + 100;
    let done_now = judged(&mut s, "done");
    let deleted = s.store.delete(&[stale, done_now]).unwrap();
    assert_eq!(deleted, 1);
    assert!(s.store.get("done").unwrap().1.is_none());
    assert!(s.store.get("live").unwrap().1.is_some());
}

#[test]
#[ignore = "needs IDEM_TEST_BACKEND=postgres"]
fn the_journal_comes_back_in_order_byte_exact_for_its_token_only() {
    let mut s = Scratch::new("journal");
    contract::the_journal_comes_back_in_order_byte_exact_for_its_token_only(&mut s.store);
}

#[test]
#[ignore = "needs IDEM_TEST_BACKEND=postgres"]
fn fencing_refuses_every_write_of_an_old_token() {
    let mut s = Scratch::new("fence");
    contract::fencing_refuses_every_write_of_an_old_token(&mut s.store);
}

#[test]
#[ignore = "needs IDEM_TEST_BACKEND=postgres"]
fn inspect_and_purge_never_create_a_store() {
    let mut s = Scratch::new("probe");
    let base = std::env::var("IDEM_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let absent = format!("u{}_absent", std::process::id());
    for mode in [Mode::ReadOnly, Mode::Existing] {
        let url = format!("{base}?table={absent}");
        assert!(PgStore::open(&url, mode).unwrap().is_none());
    }
    let sql = format!(
        "SELECT to_regclass('{absent}') IS NULL AND to_regclass('{absent}_meta') IS NULL \
            AND to_regclass('{absent}_token') IS NULL"
    );
    let nothing = s
        .store
        .conn
        .call("test", CALL_LIMIT, async |c| {
            Ok(c.query_one(&sql, &[]).await?.get::<_, bool>(0))
        })
        .unwrap();
    assert!(nothing, "a read-only open created {absent}");
}

#[test]
#[ignore = "needs IDEM_TEST_BACKEND=postgres"]
fn a_delete_takes_only_what_was_judged() {
    let mut s = Scratch::new("judged");
    contract::a_delete_takes_only_what_was_judged(&mut s.store);
}
