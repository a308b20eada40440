//! What every backend owes the run loop, written once as tests over the
//! `Store` trait: the output journal comes back in order, byte for byte,
//! for its own claim only; an old fencing token writes nothing. Each
//! backend's test module opens a fresh store and calls these on it.

use super::{Captured, Chunk, Claim, Judged, Outcome, Status, Store, Stream};
use crate::owner::{ChildId, Owner};

/// A claim of `true` by host `h`, 30 s lease.
pub fn claim() -> Claim {
    Claim {
        fingerprint: vec![1],
        command: b"true".to_vec(),
        cwd: b"/".to_vec(),
        attempt: 1,
        owner: Owner {
            host: "h".into(),
            ..Owner::default()
        },
        lease_ms: 30_000,
        label: None,
        child: None,
    }
}

/// Claims `key` whatever its record says; the new fencing token.
pub fn claim_key(store: &mut dyn Store, key: &str) -> i64 {
    store
        .claim(key, &mut |_, _| Some(claim()))
        .unwrap()
        .unwrap()
}

/// A run that exited 0, kept for `ttl_ms`.
pub fn completed(ttl_ms: i64) -> Outcome {
    Outcome {
        status: Status::Completed,
        exit_code: Some(0),
        signal: None,
        timed_out: false,
        ttl_ms,
        stdout: Captured::default(),
        stderr: Captured::default(),
    }
}

/// Appends `stdout` to the journal in batches of 300,000 bytes, numbered
/// from `first`.
pub fn append(store: &mut dyn Store, key: &str, token: i64, first: u64, stdout: &[u8]) -> bool {
    (first..).zip(stdout.chunks(300_000)).all(|(seq, piece)| {
        let chunk = Chunk {
            stream: Stream::Stdout,
            bytes: piece,
        };
        store.append_journal(key, token, seq, &[chunk]).unwrap()
    })
}

/// Reads the whole journal back as (stream, bytes) runs.
pub fn journal(store: &mut dyn Store, key: &str, token: i64) -> Option<Vec<(Stream, Vec<u8>)>> {
    let mut runs: Vec<(Stream, Vec<u8>)> = Vec::new();
    store
        .read_journal(key, token, 0, &mut |stream, bytes| {
            match runs.last_mut() {
                Some((last, run)) if *last == stream => run.extend_from_slice(bytes),
                _ => runs.push((stream, bytes.to_vec())),
            }
            Ok(())
        })
        .unwrap()
        .map(|_| runs)
}

/// The journal comes back in order and byte exact, a retried append
/// writes nothing twice, and a new claim starts a new journal that the
/// old token can no longer append to.
pub fn the_journal_comes_back_in_order_byte_exact_for_its_token_only(store: &mut dyn Store) {
    for (key, len) in [("empty", 0), ("some", 1000), ("more", 3 << 20)] {
        let bytes: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        let token = claim_key(store, key);
        let first = Chunk {
            stream: Stream::Stderr,
            bytes: b"e1",
        };
        assert!(store.append_journal(key, token, 0, &[first]).unwrap());
        assert!(append(store, key, token, 1, &bytes));
        let next_seq = 1 + bytes.len().div_ceil(300_000) as u64;
        let tail = [
            Chunk {
                stream: Stream::Stderr,
                bytes: b"e2",
            },
            Chunk {
                stream: Stream::Stdout,
                bytes: b"o2",
            },
        ];
        assert!(store.append_journal(key, token, next_seq, &tail).unwrap());
        // A retry of an append whose reply was lost writes nothing twice.
        assert!(store.append_journal(key, token, next_seq, &tail).unwrap());
        let record = store.get(key).unwrap().1.unwrap();
        assert_eq!(record.stdout_bytes, i64::from(len + 2));
        assert_eq!(record.stderr_bytes, 4);
        let expected = if len > 0 {
            vec![
                (Stream::Stderr, b"e1".to_vec()),
                (Stream::Stdout, bytes.clone()),
                (Stream::Stderr, b"e2".to_vec()),
                (Stream::Stdout, b"o2".to_vec()),
            ]
        } else {
            vec![
                (Stream::Stderr, b"e1e2".to_vec()),
                (Stream::Stdout, b"o2".to_vec()),
            ]
        };
        assert!(journal(store, key, token) == Some(expected), "{key}");
        assert!(journal(store, key, token + 1).is_none());
        // A new claim starts a new journal; the old token's appends are refused.
        let next = claim_key(store, key);
        assert!(!store.append_journal(key, token, 0, &tail).unwrap());
        assert_eq!(journal(store, key, next), Some(Vec::new()));
    }
}

/// Once `k` is claimed again, the old token renews and finishes nothing;
/// the new one renews for the lease asked and finishes, its record then
/// expiring `ttl` after it finished. A claim records its child, and a
/// claim that replaces a record keeps none of the old one's. Returns the
/// new token.
pub fn fencing_refuses_every_write_of_an_old_token(store: &mut dyn Store) -> i64 {
    let child = ChildId {
        pid: 7,
        pgid: 7,
        start: 11,
    };
    let with_child = Claim {
        child: Some(child),
        ..claim()
    };
    let old = store
        .claim("k", &mut |_, _| Some(with_child.clone()))
        .unwrap()
        .unwrap();
    assert_eq!(store.get("k").unwrap().1.unwrap().owner.child, Some(child));
    let new = claim_key(store, "k");
    assert!(new > old);
    assert_eq!(store.get("k").unwrap().1.unwrap().owner.child, None);
    assert!(!store.renew("k", old, 1000).unwrap());
    assert!(store.renew("k", new, 1000).unwrap());
    // A local file keeps no lease: its owners hold a lock instead.
    if store.is_shared() {
        let record = store.get("k").unwrap().1.unwrap();
        let now = store.now().unwrap();
        let lease = record.lease_until.unwrap() - now;
        assert!(
            (0..=1000).contains(&lease),
            "lease ends {lease} ms from now"
        );
    }
    assert!(!store.finish("k", old, &completed(1000)).unwrap());
    assert_eq!(
        store.get("k").unwrap().1.unwrap().status,
        Status::InProgress
    );
    assert!(store.finish("k", new, &completed(1000)).unwrap());
    let record = store.get("k").unwrap().1.unwrap();
    assert_eq!(record.expires_at, record.finished_at.map(|f| f + 1000));
    new
}

/// A delete names the record as purge judged it: a run that finished, or
/// renewed its lease, or was claimed again since the look stays; one that
/// is still as judged goes.
pub fn a_delete_takes_only_what_was_judged(store: &mut dyn Store) {
    let judged =
        |store: &mut dyn Store, key: &str| Judged::from(store.get(key).unwrap().1.unwrap());
    let finished = claim_key(store, "finished");
    let as_running = judged(store, "finished");
    assert!(store
        .finish("finished", finished, &completed(3_600_000))
        .unwrap());
    claim_key(store, "renewed");
    let mut before_renewal = judged(store, "renewed");
    before_renewal.lease_until = before_renewal.lease_until.map(|at| at - 1);
    claim_key(store, "again");
    let first_claim = judged(store, "again");
    claim_key(store, "again");
    let token = claim_key(store, "still");
    let still = judged(store, "still");
    // A local file keeps no lease to renew (its owners hold a lock).
    let mut judged = vec![as_running, first_claim, still];
    if store.is_shared() {
        judged.push(before_renewal);
    }
    let gone = store.delete(&judged).unwrap();
    assert_eq!(gone, 1);
    for key in ["finished", "renewed", "again"] {
        assert!(store.get(key).unwrap().1.is_some(), "{key} was deleted");
    }
    assert!(store.get("still").unwrap().1.is_none());
    assert!(!store.finish("still", token, &completed(1)).unwrap());
}
