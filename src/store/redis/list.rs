//! Listing records for `inspect` and `purge`, newest first, without `KEYS`.
//!
//! `SCAN` walks the record keys under the prefix on the server, or on every
//! master of a cluster (the filter's key prefix narrows its `MATCH`
//! pattern), and fetches each one's start time, a page at
//! a time. Only (start time, key) pairs are held and sorted — about a
//! hundred bytes a record — and the records themselves are then read and
//! handed out a page at a time, in order. A record that expires or goes meanwhile is
//! skipped.

use super::conn::{connect, TIME_LIMIT};
use super::{parse_record, RedisStore, FIELDS};
use crate::store::{Filter, Millis, Record, Store};
use anyhow::Result;
use std::cmp::Reverse;
use std::collections::HashSet;

/// Records read per round trip.
pub const PAGE: usize = 100;
/// `SCAN`'s hint of how many keys to look at per call.
const SCAN_COUNT: usize = 1000;

pub fn list(
    store: &mut RedisStore,
    filter: &Filter,
    each: &mut dyn FnMut(Record) -> Result<()>,
) -> Result<()> {
    let now = store.now()?;
    let keys = if filter.keys.is_empty() {
        scan_keys(store, filter.prefix.as_deref().unwrap_or(""))?
    } else {
        let mut seen = HashSet::new();
        filter
            .keys
            .iter()
            .filter(|k| seen.insert(k.as_str()))
            .filter(|k| filter.prefix.as_ref().is_none_or(|p| k.starts_with(p)))
            .cloned()
            .collect()
    };
    let mut order = start_times(store, keys)?;
    if let Some(before) = filter.started_before {
        order.retain(|(started, _)| *started < before);
    }
    order.sort_unstable_by(|a, b| (Reverse(a.0), &a.1).cmp(&(Reverse(b.0), &b.1)));

    let mut left = filter.limit.unwrap_or(u64::MAX);
    for page in order.chunks(PAGE) {
        for record in read_page(store, page)? {
            if left == 0 {
                return Ok(());
            }
            if selected(&record, filter, now) {
                left -= 1;
                each(record)?;
            }
        }
    }
    Ok(())
}

fn selected(record: &Record, filter: &Filter, now: Millis) -> bool {
    filter.status.is_none_or(|s| record.status == s)
        && (!filter.expired || record.is_expired(now))
        && filter
            .started_before
            .is_none_or(|before| record.started_at < before)
}

/// Every idem key whose record key matches `key_prefix`, once each.
pub(super) fn scan_keys(store: &mut RedisStore, key_prefix: &str) -> Result<Vec<String>> {
    let pattern = store.keys.scan_pattern(key_prefix);
    let mut seen = HashSet::new();
    for (node, client) in store.masters()? {
        let mut con = match connect(&client, TIME_LIMIT) {
            Ok(con) => con,
            Err(e) => {
                let why = super::conn::why_not_connected(&e);
                return store
                    .target
                    .fail(&format!("cannot list records on {node}: {why}"));
            }
        };
        let mut cursor = 0u64;
        loop {
            let scanned: redis::RedisResult<(u64, Vec<Vec<u8>>)> = redis::cmd("SCAN")
                .cursor_arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(SCAN_COUNT)
                .query(&mut con);
            let (next, batch) = match scanned {
                Ok(page) => page,
                Err(e) => return store.target.fail(&format!("cannot list records: {e}")),
            };
            // SCAN may return a key twice; keys are UTF-8 (idem writes only those).
            seen.extend(batch.into_iter().filter_map(|k| {
                String::from_utf8(k)
                    .ok()
                    .and_then(|k| store.keys.key_of(&k))
            }));
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    Ok(seen.into_iter().collect())
}

/// (start time, key) of each key that still has a record; the keys move
/// into the result, so they are held once.
fn start_times(store: &mut RedisStore, keys: Vec<String>) -> Result<Vec<(Millis, String)>> {
    let mut order = Vec::with_capacity(keys.len());
    let mut keys = keys.into_iter();
    loop {
        let page: Vec<String> = keys.by_ref().take(PAGE).collect();
        if page.is_empty() {
            return Ok(order);
        }
        let rkeys: Vec<String> = page.iter().map(|k| store.record_key(k)).collect();
        let started: Vec<Option<i64>> = store.exec("cannot list records", true, |c, _| {
            c.each(
                rkeys
                    .iter()
                    .map(|rkey| redis::cmd("HGET").arg(rkey).arg("started_at").clone())
                    .collect(),
            )
        })?;
        order.extend(
            page.into_iter()
                .zip(started)
                .filter_map(|(k, at)| Some((at?, k))),
        );
    }
}

fn read_page(store: &mut RedisStore, page: &[(Millis, String)]) -> Result<Vec<Record>> {
    let rkeys: Vec<String> = page.iter().map(|(_, k)| store.record_key(k)).collect();
    let values: Vec<Vec<Option<Vec<u8>>>> = store.exec("cannot list records", true, |c, _| {
        c.each(
            rkeys
                .iter()
                .map(|rkey| redis::cmd("HMGET").arg(rkey).arg(&FIELDS[..]).clone())
                .collect(),
        )
    })?;
    Ok(page
        .iter()
        .zip(values)
        .filter_map(|((_, key), values)| parse_record(key, &values).map(|(record, _)| record))
        .collect())
}
