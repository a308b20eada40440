//! Listing records for `inspect` and `purge`, newest first, without `KEYS`.
//!
//! `SCAN` walks the record keys under the prefix (the filter's key prefix
//! narrows its `MATCH` pattern) and fetches each one's start time, a page at
//! a time. Only (start time, key) pairs are held and sorted — about a
//! hundred bytes a record — and the records themselves are then read and
//! handed out a page at a time, in order. A record that expires or goes meanwhile is
//! skipped.

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
fn scan_keys(store: &mut RedisStore, key_prefix: &str) -> Result<Vec<String>> {
    let records = store.record_key("");
    let pattern = format!("{}*", glob_escape(&format!("{records}{key_prefix}")));
    let mut seen = HashSet::new();
    let mut cursor = 0u64;
    loop {
        let (next, batch): (u64, Vec<Vec<u8>>) =
            store.exec("cannot list records", true, |c, _| {
                redis::cmd("SCAN")
                    .cursor_arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(SCAN_COUNT)
                    .query(c)
            })?;
        // SCAN may return a key twice; keys are UTF-8 (idem writes only those).
        seen.extend(batch.into_iter().filter_map(|k| {
            String::from_utf8(k)
                .ok()
                .and_then(|k| k.strip_prefix(&records).map(str::to_owned))
        }));
        if next == 0 {
            return Ok(seen.into_iter().collect());
        }
        cursor = next;
    }
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
            let mut pipe = redis::pipe();
            for rkey in &rkeys {
                pipe.cmd("HGET").arg(rkey).arg("started_at");
            }
            pipe.query(c)
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
        let mut pipe = redis::pipe();
        for rkey in &rkeys {
            pipe.cmd("HMGET").arg(rkey).arg(&FIELDS[..]);
        }
        pipe.query(c)
    })?;
    Ok(page
        .iter()
        .zip(values)
        .filter_map(|((_, key), values)| parse_record(key, &values).map(|(record, _)| record))
        .collect())
}

/// `text` as a literal in a `MATCH` glob pattern.
fn glob_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

#[cfg(test)]
mod tests {
    #[test]
    fn globs_match_literally() {
        assert_eq!(super::glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }
}
