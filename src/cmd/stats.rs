//! `idem stats`: what the store holds, summed up for dashboards and alerts.
//!
//! One streaming pass over the records (flat memory, like `inspect`), each
//! judged from this host exactly as `inspect` judges it; then text, JSON,
//! or the Prometheus text exposition format for node_exporter's textfile
//! collector. The store is opened read-only and never created.

use super::show::{span, State, Vantage};
use super::Global;
use crate::store::{self, Filter, Millis, Mode};
use anyhow::Result;
use serde_json::{json, Value};
use std::io::{self, BufWriter, Write};

/// Sum up the store: records by state, replays, attempts, oldest runs, size
#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    /// Only keys that start with this
    #[arg(long, value_name = "PREFIX")]
    pub prefix: Option<String>,

    /// One JSON object: store, records, running, crashed, completed, failed,
    /// expired, replays, max_attempt, oldest_running_seconds,
    /// oldest_crashed_seconds, size_bytes (null when unknown or none)
    #[arg(long, conflicts_with = "prometheus")]
    pub json: bool,

    /// The Prometheus text exposition format (metrics idem_...)
    #[arg(long)]
    pub prometheus: bool,
}

const EXAMPLES: &str = "\
States: running (in_progress, owner alive), crashed (in_progress, owner gone),
completed, failed, expired (past its TTL, not yet purged; counted apart).

Examples:
  # Alert on crashed runs
  idem stats --json | jq '.crashed'

  # crontab: metrics for node_exporter's textfile collector every minute
  * * * * *  $HOME/.cargo/bin/idem stats --prometheus > /var/lib/prometheus/node-exporter/idem.prom.$$ && mv /var/lib/prometheus/node-exporter/idem.prom.$$ /var/lib/prometheus/node-exporter/idem.prom";

/// The sums, as one pass over the records makes them.
#[derive(Default)]
struct Stats {
    running: u64,
    crashed: u64,
    completed: u64,
    failed: u64,
    expired: u64,
    replays: i64,
    max_attempt: i64,
    oldest_running: Option<Millis>,
    oldest_crashed: Option<Millis>,
}

impl Stats {
    fn records(&self) -> u64 {
        self.running + self.crashed + self.completed + self.failed + self.expired
    }
}

pub fn run(args: &Args, global: &Global) -> Result<u8> {
    let location = store::Location::resolve(global.db.as_deref())?;
    let mut stats = Stats::default();
    let mut now = None;
    let mut size = None;
    if let Some(mut store) = store::open(&location, Mode::ReadOnly)? {
        let vantage = Vantage::new(store.now()?, store.is_shared());
        let filter = Filter {
            prefix: args.prefix.clone(),
            ..Filter::default()
        };
        store.list(&filter, &mut |record| {
            let oldest = |slot: &mut Option<Millis>| {
                *slot = Some(slot.map_or(record.started_at, |t| t.min(record.started_at)));
            };
            match vantage.state(&record) {
                State::Running => {
                    stats.running += 1;
                    oldest(&mut stats.oldest_running);
                }
                State::Crashed => {
                    stats.crashed += 1;
                    oldest(&mut stats.oldest_crashed);
                }
                State::Completed => stats.completed += 1,
                State::Failed => stats.failed += 1,
                State::Expired => stats.expired += 1,
            }
            stats.replays += record.replays;
            stats.max_attempt = stats.max_attempt.max(record.attempt);
            Ok(())
        })?;
        now = Some(vantage.now);
        size = store.size()?;
    }
    let age = |at: Option<Millis>| Some(now? - at?).map(|ms| ms.max(0));
    let (running_age, crashed_age) = (age(stats.oldest_running), age(stats.oldest_crashed));
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    if args.json {
        let seconds = |ms: Option<Millis>| ms.map_or(Value::Null, |ms| json!(ms as f64 / 1000.0));
        let value = json!({
            "store": location.kind(),
            "records": stats.records(),
            "running": stats.running,
            "crashed": stats.crashed,
            "completed": stats.completed,
            "failed": stats.failed,
            "expired": stats.expired,
            "replays": stats.replays,
            "max_attempt": stats.max_attempt,
            "oldest_running_seconds": seconds(running_age),
            "oldest_crashed_seconds": seconds(crashed_age),
            "size_bytes": size,
        });
        super::json::write_line(&mut out, &value)?;
    } else if args.prometheus {
        let store = store_label(&location);
        prometheus(
            &mut out,
            args,
            &store,
            &stats,
            [running_age, crashed_age],
            size,
        )?;
    } else {
        let shown = |ms: Option<Millis>| ms.map_or_else(|| "-".into(), span);
        let lines: [(&str, String); 12] = [
            ("store", location.shown()),
            ("records", stats.records().to_string()),
            ("running", stats.running.to_string()),
            ("crashed", stats.crashed.to_string()),
            ("completed", stats.completed.to_string()),
            ("failed", stats.failed.to_string()),
            ("expired", stats.expired.to_string()),
            ("replays", stats.replays.to_string()),
            ("max attempt", stats.max_attempt.to_string()),
            ("oldest running", shown(running_age)),
            ("oldest crashed", shown(crashed_age)),
            (
                "size",
                size.map_or_else(|| "-".into(), |bytes| format!("{bytes} bytes")),
            ),
        ];
        for (name, value) in lines {
            writeln!(out, "{:<16}{value}", format!("{name}:"))?;
        }
    }
    out.flush()?;
    Ok(0)
}

/// The `store` label: the SQLite file's absolute path, or the URL without
/// its password. Two stores on one host then never export the same series
/// (node_exporter's textfile collector drops one of two that collide).
fn store_label(location: &store::Location) -> String {
    match location {
        store::Location::File(path) => std::path::absolute(path)
            .unwrap_or_else(|_| path.clone())
            .to_string_lossy()
            .into_owned(),
        store::Location::Postgres(url) => store::postgres::shown(url),
        store::Location::Redis(url) => store::redis::shown(url),
    }
}

/// The Prometheus text exposition format. Every sample carries the store
/// as a `store` label and, with `--prefix`, the prefix as a `prefix`
/// label, so several stores and prefixes can share a directory.
fn prometheus(
    out: &mut dyn Write,
    args: &Args,
    store: &str,
    stats: &Stats,
    [running_age, crashed_age]: [Option<Millis>; 2],
    size: Option<u64>,
) -> io::Result<()> {
    let store = format!("store=\"{}\"", label_value(store));
    let prefix = args
        .prefix
        .as_ref()
        .map(|p| format!("prefix=\"{}\"", label_value(p)));
    let labels = |more: Option<String>| {
        let all: Vec<String> = std::iter::once(store.clone())
            .chain(prefix.iter().cloned())
            .chain(more)
            .collect();
        format!("{{{}}}", all.join(","))
    };
    let mut metric = |name: &str, help: &str, samples: &[(Option<String>, String)]| {
        writeln!(out, "# HELP idem_{name} {help}")?;
        writeln!(out, "# TYPE idem_{name} gauge")?;
        for (label, value) in samples {
            writeln!(out, "idem_{name}{} {value}", labels(label.clone()))?;
        }
        Ok::<(), io::Error>(())
    };
    let states = [
        ("running", stats.running),
        ("crashed", stats.crashed),
        ("completed", stats.completed),
        ("failed", stats.failed),
        ("expired", stats.expired),
    ]
    .map(|(state, n)| (Some(format!("state=\"{state}\"")), n.to_string()));
    metric(
        "records",
        "Records in the store by state (running and crashed are in_progress; expired are not yet purged).",
        &states,
    )?;
    metric(
        "replays",
        "Replays counted on the records in the store.",
        &[(None, stats.replays.to_string())],
    )?;
    metric(
        "max_attempt",
        "The highest attempt number of any record (0 when there is none).",
        &[(None, stats.max_attempt.to_string())],
    )?;
    let seconds = |ms: Option<Millis>| format!("{}", ms.unwrap_or(0) as f64 / 1000.0);
    metric(
        "oldest_running_age_seconds",
        "Age of the oldest running record (0 when there is none).",
        &[(None, seconds(running_age))],
    )?;
    metric(
        "oldest_crashed_age_seconds",
        "Age of the oldest crashed record (0 when there is none).",
        &[(None, seconds(crashed_age))],
    )?;
    if let Some(size) = size {
        metric(
            "store_size_bytes",
            "Size of the store.",
            &[(None, size.to_string())],
        )?;
    }
    Ok(())
}

/// A label value with `\`, `"` and newlines escaped, as the format asks.
fn label_value(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
