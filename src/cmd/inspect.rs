//! `idem inspect`: what the store holds, for operators and scripts.
//!
//! It opens the store read-only and never creates one, so it cannot disturb
//! running jobs (SQLite readers never block the writer). Listings stream one
//! record at a time, so a million records print with flat memory; a table
//! takes its column widths from the first rows only for the same reason.

use super::show::{self, State, Vantage};
use super::{json, positive_duration, Global, StatusArg};
use crate::exit::{fail, Code};
use crate::key::hex;
use crate::store::{self, Filter, Mode, Record, Store, Stream};
use crate::text::escape;
use anyhow::Result;
use std::io::{self, BufWriter, IsTerminal, Write};
use std::time::Duration;

/// Show the records in the store: a table, one record in detail, or JSON
#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    /// Show this key's record in detail (exit 1 when there is none)
    #[arg(value_name = "KEY")]
    pub key: Option<String>,

    /// Only records with this status (crashed: in_progress, but its owner is gone)
    #[arg(long, value_enum, value_name = "STATUS", conflicts_with = "key")]
    pub status: Option<StatusArg>,

    /// Only expired records (finished longer ago than their TTL; treated as absent)
    #[arg(long, conflicts_with = "key")]
    pub expired: bool,

    /// Only keys that start with this
    #[arg(long, value_name = "PREFIX", conflicts_with = "key")]
    pub prefix: Option<String>,

    /// Only records started longer ago than this (90s, 5m, 1h 30m, 7d)
    #[arg(long, value_name = "DURATION", value_parser = positive_duration)]
    #[arg(conflicts_with = "key")]
    pub older_than: Option<Duration>,

    /// At most this many records, newest first
    #[arg(long, value_name = "N", conflicts_with = "key")]
    pub limit: Option<u64>,

    /// JSON Lines, one object per record: key, status, exit_code, signal,
    /// timed_out, command, cwd, label, fingerprint, started_at, finished_at,
    /// expires_at, lease_until, expired, crashed, duration_ms, attempts,
    /// replays, token (shared stores only, else null), owner {host, pid,
    /// alive}, child_pid, stdout_bytes, stderr_bytes, stdout_truncated,
    /// stderr_truncated. owner.alive is true only for an in_progress record
    /// whose owner lives
    #[arg(long, conflicts_with_all = ["stdout", "stderr"])]
    pub json: bool,

    /// Write KEY's stored stdout, byte for byte
    #[arg(long, requires = "key", conflicts_with = "stderr")]
    pub stdout: bool,

    /// Write KEY's stored stderr, byte for byte
    #[arg(long, requires = "key")]
    pub stderr: bool,
}

const EXAMPLES: &str = "\
Status column: in_progress (running, owner alive), crashed (in_progress but its
owner is gone), completed, failed, expired (past its TTL; counts as absent).

Examples:
  # Crashed jobs, and jobs running for more than an hour
  idem inspect --status crashed
  idem inspect --status in_progress --older-than 1h

  # Everything about one key, then its stored output
  idem inspect invoice-42
  idem inspect invoice-42 --stdout > out.txt

  # For scripts: keys and labels of crashed runs
  idem inspect --json --status crashed | jq -r '[.key, .label] | @tsv'";

/// How many rows decide the table's column widths; later rows reuse them.
const WIDTH_SAMPLE: usize = 200;
/// No column is padded wider than this; a longer value overflows its row only.
const MAX_WIDTH: usize = 48;

pub fn run(args: &Args, global: &Global) -> Result<u8> {
    let location = store::Location::resolve(global.db.as_deref())?;
    let store = store::open(&location, Mode::ReadOnly)?;
    let stdout = io::stdout();
    let mut out = BufWriter::with_capacity(64 * 1024, stdout.lock());
    let status = match (&args.key, store) {
        (Some(key), None) => return no_record(key),
        (Some(key), Some(mut store)) => one(args, key, store.as_mut(), &mut out)?,
        (None, None) => 0,
        (None, Some(mut store)) => {
            list(args, store.as_mut(), &mut out)?;
            0
        }
    };
    out.flush()?;
    Ok(status)
}

fn no_record<T>(key: &str) -> Result<T> {
    fail(
        Code::NoRecord,
        format!("no record for key {}", escape(key.as_bytes())),
    )
}

/// `inspect KEY`: the detailed view, or the raw stored output.
fn one(args: &Args, key: &str, store: &mut dyn Store, out: &mut dyn Write) -> Result<u8> {
    store.count_replays_exactly();
    let (now, record) = store.get(key)?;
    let vantage = Vantage::new(now, store.is_shared());
    let Some(record) = record else {
        return no_record(key);
    };
    let stream = match (args.stdout, args.stderr) {
        (true, _) => Some(Stream::Stdout),
        (_, true) => Some(Stream::Stderr),
        _ => None,
    };
    if let Some(stream) = stream {
        let read = store.read_journal(key, record.token, 0, &mut |s, bytes| {
            if s == stream {
                out.write_all(bytes)?;
            }
            Ok(())
        })?;
        if read.is_none() {
            return no_record(key);
        }
    } else if args.json {
        json::write_record(out, &record, &vantage)?;
    } else {
        detail(&record, &vantage, out)?;
    }
    Ok(0)
}

/// Every stored fact about one record, one per line.
fn detail(record: &Record, vantage: &Vantage, out: &mut dyn Write) -> io::Result<()> {
    let now = vantage.now;
    let state = vantage.state(record);
    let alive = vantage.owner_alive(record);
    let when = |at: i64| format!("{} ({})", show::rfc3339(at), show::relative(at, now));
    let mut lines: Vec<(&str, String)> = vec![
        ("key", show::key(record)),
        ("label", show::label(record)),
        ("status", status_line(record, state)),
        ("result", result_line(record)),
        ("command", show::command(record)),
        ("cwd", escape(&record.cwd)),
        ("fingerprint", hex(&record.fingerprint)),
        ("attempt", record.attempt.to_string()),
        ("started", when(record.started_at)),
        (
            "finished",
            record.finished_at.map_or_else(|| "-".into(), when),
        ),
        ("duration", show::duration(record, now)),
        (
            "expires",
            record.expires_at.map_or_else(|| "-".into(), when),
        ),
        ("replays", record.replays.to_string()),
        ("owner", owner_line(record, alive)),
    ];
    if let Some(lease) = record.lease_until {
        lines.push(("lease until", when(lease)));
    }
    // SQLite has no fencing tokens: its number is internal.
    if vantage.shared {
        lines.push(("token", record.token.to_string()));
    }
    lines.push((
        "stdout",
        size_line(record.stdout_bytes, record.stdout_truncated),
    ));
    lines.push((
        "stderr",
        size_line(record.stderr_bytes, record.stderr_truncated),
    ));
    for (label, value) in lines {
        writeln!(out, "{:<12} {value}", format!("{label}:"))?;
    }
    Ok(())
}

fn status_line(record: &Record, state: State) -> String {
    match state {
        State::Running => "in_progress (owner alive)".into(),
        State::Crashed => "in_progress, but its owner is gone (crashed): the next run takes it over, or with --on-crash block exits 77 until `idem purge` clears it".into(),
        State::Expired => format!("{} (expired: counts as absent)", record.status.as_str()),
        State::Completed | State::Failed => record.status.as_str().into(),
    }
}

fn result_line(record: &Record) -> String {
    if record.timed_out {
        "timed out (exit status 124)".into()
    } else if let Some(sig) = record.signal {
        format!("killed by signal {sig} (exit status {})", 128 + sig)
    } else if let Some(code) = record.exit_code {
        format!("exit status {code}")
    } else {
        "-".into()
    }
}

fn owner_line(record: &Record, alive: bool) -> String {
    let owner = &record.owner;
    let mut line = format!("host {} pid {}", escape(owner.host.as_bytes()), owner.pid);
    if let Some(ns) = owner.pid_ns {
        line.push_str(&format!(" in PID namespace {ns}"));
    }
    if let Some(child) = owner.child {
        line.push_str(&format!(", child pid {} (group {})", child.pid, child.pgid));
    }
    line.push_str(match (record.status, alive) {
        (store::Status::InProgress, true) => ": alive",
        (store::Status::InProgress, false) => ": dead",
        _ => " (finished)",
    });
    line
}

fn size_line(bytes: i64, truncated: bool) -> String {
    let cut = if truncated {
        " (truncated: the run printed more than --max-output)"
    } else {
        ""
    };
    format!("{bytes} bytes stored{cut}")
}

/// `inspect` without KEY: a table or JSON Lines, newest first.
fn list(args: &Args, store: &mut dyn Store, out: &mut dyn Write) -> Result<()> {
    let now = store.now()?;
    let vantage = Vantage::new(now, store.is_shared());
    let crashed_only = args.status == Some(StatusArg::Crashed);
    let filter = Filter {
        status: args.status.map(Into::into),
        expired: args.expired,
        prefix: args.prefix.clone(),
        started_before: args.older_than.map(|age| before(now, age)),
        // Crashed records are picked from the in_progress ones here, so the
        // limit counts here too.
        limit: args.limit.filter(|_| !crashed_only),
        ..Filter::default()
    };
    let mut left = args.limit.unwrap_or(u64::MAX);
    let mut wanted = |record: &Record| {
        let take = left > 0 && (!crashed_only || vantage.state(record) == State::Crashed);
        left -= u64::from(take);
        take
    };
    if args.json {
        return store.list(&filter, &mut |record| {
            if wanted(&record) {
                json::write_record(out, &record, &vantage)?;
            }
            Ok(())
        });
    }
    let colour =
        io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let mut table = Table::new(colour);
    store.list(&filter, &mut |record| {
        if wanted(&record) {
            table.row(out, &record, &vantage)?;
        }
        Ok(())
    })?;
    Ok(table.finish(out)?)
}

/// The store time `age` before `now`.
pub fn before(now: crate::store::Millis, age: Duration) -> crate::store::Millis {
    now.saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX))
}

const HEADER: [&str; 10] = [
    "KEY", "STATUS", "EXIT", "STARTED", "DURATION", "EXPIRES", "REPLAYS", "OWNER", "LABEL",
    "COMMAND",
];

/// An aligned table that streams: the first `WIDTH_SAMPLE` rows are held to
/// size the columns, every later row is written at once.
struct Table {
    colour: bool,
    widths: Option<[usize; 10]>,
    held: Vec<(State, [String; 10])>,
}

impl Table {
    fn new(colour: bool) -> Table {
        Table {
            colour,
            widths: None,
            held: Vec::new(),
        }
    }

    fn row(&mut self, out: &mut dyn Write, record: &Record, vantage: &Vantage) -> io::Result<()> {
        let now = vantage.now;
        let state = vantage.state(record);
        let cells = [
            show::key(record),
            state.label().into(),
            show::result(record),
            format!(
                "{} ({})",
                show::rfc3339_seconds(record.started_at),
                show::relative(record.started_at, now)
            ),
            show::duration(record, now),
            show::expires(record, now),
            record.replays.to_string(),
            show::owner(record),
            show::label(record),
            show::command(record),
        ];
        match self.widths {
            Some(widths) => self.write(out, &widths, Some(state), &cells),
            None => {
                self.held.push((state, cells));
                if self.held.len() >= WIDTH_SAMPLE {
                    self.flush_held(out)?;
                }
                Ok(())
            }
        }
    }

    fn flush_held(&mut self, out: &mut dyn Write) -> io::Result<()> {
        let mut widths = HEADER.map(str::len);
        for (_, cells) in &self.held {
            for (width, cell) in widths.iter_mut().zip(cells) {
                *width = (*width).max(cell.chars().count().min(MAX_WIDTH));
            }
        }
        self.widths = Some(widths);
        self.write(out, &widths, None, &HEADER.map(String::from))?;
        for (state, cells) in std::mem::take(&mut self.held) {
            self.write(out, &widths, Some(state), &cells)?;
        }
        Ok(())
    }

    /// Prints the rows still held; an empty listing prints nothing.
    fn finish(&mut self, out: &mut dyn Write) -> io::Result<()> {
        if self.widths.is_none() && !self.held.is_empty() {
            self.flush_held(out)?;
        }
        Ok(())
    }

    fn write(
        &self,
        out: &mut dyn Write,
        widths: &[usize; 10],
        state: Option<State>,
        cells: &[String; 10],
    ) -> io::Result<()> {
        let last = cells.len() - 1;
        for (i, cell) in cells.iter().enumerate() {
            if i == last {
                writeln!(out, "{cell}")?;
                break;
            }
            let pad = widths[i].saturating_sub(cell.chars().count()) + 2;
            match (i, state.filter(|_| self.colour)) {
                (1, Some(state)) => write!(out, "\x1b[{}m{cell}\x1b[0m", colour(state))?,
                _ => out.write_all(cell.as_bytes())?,
            }
            write!(out, "{:pad$}", "")?;
        }
        Ok(())
    }
}

/// SGR colour of a status: green done, red failed, yellow running,
/// bold red crashed, dim expired.
fn colour(state: State) -> &'static str {
    match state {
        State::Completed => "32",
        State::Failed => "31",
        State::Running => "33",
        State::Crashed => "1;31",
        State::Expired => "2",
    }
}
