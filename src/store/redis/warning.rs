//! The `-v` warning about a server that may lose records.

use super::conn::{connect, TIME_LIMIT};
use super::target::Target;
use redis::Client;

/// A warning for `-v` when the server may lose records: no persistence at
/// all (a restart forgets every key), or eviction under memory pressure.
pub fn persistence_warning(url: &str) -> Option<String> {
    let target = Target::parse(url).ok()?;
    let client = Client::open(target.client_url.as_str()).ok()?;
    let mut con = connect(&client, TIME_LIMIT).ok()?;
    let persistence: String = redis::cmd("INFO").arg("persistence").query(&mut con).ok()?;
    let memory: String = redis::cmd("INFO").arg("memory").query(&mut con).ok()?;
    // CONFIG may be disabled (managed services): then nothing can be said.
    let save: Option<Vec<String>> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("save")
        .query(&mut con)
        .ok();
    let aof = info_field(&persistence, "aof_enabled") == Some("1");
    let rdb = save.map(|pair| pair.get(1).is_some_and(|s| !s.trim().is_empty()));
    let mut problems = Vec::new();
    if !aof && rdb == Some(false) {
        problems.push(
            "the server keeps no AOF and no RDB snapshots, so a restart forgets every record \
             and keys that already ran may run again (set appendonly yes, or a save schedule)"
                .to_owned(),
        );
    }
    let limited = info_field(&memory, "maxmemory").is_some_and(|m| m != "0");
    match info_field(&memory, "maxmemory_policy") {
        Some(policy) if limited && policy != "noeviction" => problems.push(format!(
            "maxmemory-policy {policy} may evict records, and an evicted key runs again \
             (set maxmemory-policy noeviction)"
        )),
        _ => {}
    }
    (!problems.is_empty()).then(|| format!("store {}: {}", target.shown, problems.join("; ")))
}

fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}
