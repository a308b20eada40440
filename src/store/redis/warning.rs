//! The server settings that decide whether records survive: eviction and
//! persistence. `idem check` reports them; `idem -v run` warns about them.

use super::conn::{connect, TIME_LIMIT};
use super::target::Target;
use crate::store::{Finding, Level};
use redis::{Client, ConnectionLike};

/// What the server's eviction policy and persistence mean for records.
/// `node` names the server in the text (empty for a single server).
pub(super) fn settings(
    con: &mut dyn ConnectionLike,
    node: &str,
) -> redis::RedisResult<Vec<Finding>> {
    let persistence: String = redis::cmd("INFO").arg("persistence").query(con)?;
    let memory: String = redis::cmd("INFO").arg("memory").query(con)?;
    // CONFIG may be disabled (managed services): then RDB cannot be judged.
    let save: Option<Vec<String>> = redis::cmd("CONFIG").arg("GET").arg("save").query(con).ok();
    let at = if node.is_empty() {
        String::new()
    } else {
        format!("{node}: ")
    };
    let mut found = Vec::new();
    let policy = info_field(&memory, "maxmemory_policy").unwrap_or("unknown");
    found.push(
        if policy == "noeviction" || policy.starts_with("volatile-") {
            Finding::new(
                Level::Ok,
                "eviction",
                format!("{at}maxmemory-policy {policy}"),
            )
        } else {
            Finding::new(
                Level::Fail,
                "eviction",
                format!(
                "{at}maxmemory-policy {policy} may evict records, and an evicted key runs again \
                 (set maxmemory-policy noeviction)"
            ),
            )
        },
    );
    let aof = info_field(&persistence, "aof_enabled") == Some("1");
    let rdb = save.map(|pair| pair.get(1).is_some_and(|s| !s.trim().is_empty()));
    found.push(match (aof, rdb) {
        (true, _) => Finding::new(Level::Ok, "persistence", format!("{at}AOF on")),
        (false, Some(true)) => Finding::new(
            Level::Ok,
            "persistence",
            format!("{at}RDB snapshots (a crash loses the writes since the last one; AOF loses at most a second)"),
        ),
        (false, Some(false)) => Finding::new(
            Level::Warn,
            "persistence",
            format!(
                "{at}no AOF and no RDB snapshots: a restart forgets every record, and keys \
                 that already ran may run again (appendonly yes)"
            ),
        ),
        (false, None) => Finding::new(
            Level::Warn,
            "persistence",
            format!("{at}AOF off, and CONFIG is disabled so RDB snapshots cannot be seen"),
        ),
    });
    Ok(found)
}

/// A warning for `-v` when the server may lose records: no persistence at
/// all (a restart forgets every key), or eviction.
pub fn persistence_warning(url: &str) -> Option<String> {
    let target = Target::parse(url).ok()?;
    let client = Client::open(target.client_url.as_str()).ok()?;
    let mut con = connect(&client, TIME_LIMIT).ok()?;
    let problems: Vec<String> = settings(&mut con, "")
        .ok()?
        .into_iter()
        .filter(|f| f.level != Level::Ok && !f.text.contains("CONFIG is disabled"))
        .map(|f| f.text)
        .collect();
    (!problems.is_empty()).then(|| {
        format!(
            "store {}: {} (run `idem check` for details)",
            target.shown,
            problems.join("; ")
        )
    })
}

pub(super) fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}
