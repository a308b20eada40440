//! `idem purge`: delete records, for operators and cron.
//!
//! The selection is made here (keys and selectors, AND-ed, and the rule that
//! a live owner's record stays unless `--force`); the store deletes in short
//! batches, each re-checking the record's fencing token so a record claimed
//! again in the meantime survives. A dry run only lists.

use super::show::{self, Vantage};
use super::{json, positive_duration, Global, StatusArg};
use crate::exit::{fail, Code};
use crate::store::{self, Filter, Mode, Record, Status};
use crate::text::escape;
use anyhow::Result;
use serde_json::json;
use std::collections::HashSet;
use std::io::{self, BufWriter, Write};
use std::time::Duration;

/// Delete records: the named keys, or those the selectors pick
#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    /// Keys to purge (AND-ed with any selector)
    #[arg(value_name = "KEY")]
    pub keys: Vec<String>,

    /// Select expired records: the default when no KEY and no selector is given
    #[arg(long)]
    pub expired: bool,

    /// Select records with this status
    #[arg(long, value_enum, value_name = "STATUS")]
    pub status: Option<StatusArg>,

    /// Select records started longer ago than this (90s, 5m, 1h 30m, 7d)
    #[arg(long, value_name = "DURATION", value_parser = positive_duration)]
    pub older_than: Option<Duration>,

    /// Select every record
    #[arg(long)]
    pub all: bool,

    /// Also purge in_progress records whose owner is alive (its command keeps
    /// running; its outcome is then lost)
    #[arg(long)]
    pub force: bool,

    /// List what would be purged and skipped; change nothing
    #[arg(long)]
    pub dry_run: bool,

    /// JSON Lines for scripts: {"key","action":"purge"|"skip",...} per listed
    /// record, then {"purged","skipped","dry_run"}
    #[arg(long)]
    pub json: bool,
}

const EXAMPLES: &str = "\
Selectors combine with AND. An in_progress record whose owner is alive is
skipped (and reported) unless --force; one whose owner is gone (crashed) is
purged without it. When a KEY named on the command line was skipped, purge
exits 75 after doing the rest, so `idem purge KEY && ...` is safe.

Examples:
  # Clear a key blocked by --on-crash block (exit 77), after checking its side effects
  idem inspect invoice-42
  idem purge invoice-42

  # Nightly from cron: drop expired records and free their space
  17 3 * * *  $HOME/.cargo/bin/idem purge > /dev/null

  # Failed runs older than a week, after a look at what would go
  idem purge --status failed --older-than 7d --dry-run
  idem purge --status failed --older-than 7d";

/// What happened to the selected records.
#[derive(Default)]
struct Tally {
    purged: u64,
    skipped: u64,
    /// Whether a key named on the command line was skipped (exit 75).
    named_skipped: bool,
    /// The named keys that were found, to report the others.
    found: HashSet<String>,
}

pub fn run(args: &Args, global: &Global) -> Result<u8> {
    let location = store::Location::resolve(global.db.as_deref())?;
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let mut tally = Tally::default();
    if let Some(mut store) = store::open(&location, Mode::Existing)? {
        let now = store.now()?;
        let vantage = Vantage::new(now, store.is_shared());
        let selected = args.expired
            || args.status.is_some()
            || args.older_than.is_some()
            || args.all
            || !args.keys.is_empty();
        let filter = Filter {
            keys: args.keys.clone(),
            status: args.status.map(Into::into),
            expired: args.expired || !selected,
            started_before: args.older_than.map(|age| super::inspect::before(now, age)),
            ..Filter::default()
        };
        for key in &args.keys {
            if store.get(key)?.1.is_some() {
                tally.found.insert(key.clone());
            }
        }
        let (purged, skipped) = (&mut tally.purged, &mut tally.skipped);
        let named_skipped = &mut tally.named_skipped;
        // `--status crashed` selects the in_progress records whose owner is gone.
        let crashed_only = args.status == Some(StatusArg::Crashed);
        let selected = |record: &Record| !crashed_only || !vantage.owner_alive(record);
        let mut skip = |record: &Record, out: &mut dyn Write| {
            *skipped += 1;
            *named_skipped |= args.keys.contains(&record.key);
            report_skip(args, global, record, &vantage, out)
        };
        if args.dry_run {
            store.list(&filter, &mut |record| {
                if !selected(&record) {
                } else if may_go(args, &record, &vantage) {
                    *purged += 1;
                    report_doomed(args, &record, &vantage, &mut out)?;
                } else {
                    skip(&record, &mut out)?;
                }
                Ok(())
            })?;
        } else {
            *purged = store.purge(&filter, &mut |record| {
                if !selected(record) {
                    return Ok(false);
                }
                if may_go(args, record, &vantage) {
                    return Ok(true);
                }
                skip(record, &mut out)?;
                Ok(false)
            })?;
        }
    }
    if !global.quiet {
        for key in args.keys.iter().filter(|k| !tally.found.contains(*k)) {
            crate::say::notice(format_args!("no record for key {}", escape(key.as_bytes())));
        }
    }
    summary(args, &tally, &mut out)?;
    out.flush()?;
    if tally.named_skipped {
        // So that `idem purge KEY && …` goes on only once KEY is gone.
        return fail(
            Code::InProgress,
            "a key named on the command line is in progress and was not purged (see above; --force purges it anyway)",
        );
    }
    Ok(0)
}

/// Whether a selected record may go: a live owner's stays unless `--force`;
/// a dead owner's goes (that is how an operator clears `--on-crash block`).
fn may_go(args: &Args, record: &Record, vantage: &Vantage) -> bool {
    args.force || record.status != Status::InProgress || !vantage.owner_alive(record)
}

/// A live owner's record left alone: said on stderr (or as JSON).
fn report_skip(
    args: &Args,
    global: &Global,
    record: &Record,
    vantage: &Vantage,
    out: &mut dyn Write,
) -> io::Result<()> {
    if args.json {
        let line = json!({
            "key": record.key,
            "action": "skip",
            "reason": "in_progress, owner alive",
            "owner": json::owner(record, vantage),
        });
        return json::write_line(out, &line);
    }
    if args.dry_run {
        return writeln!(
            out,
            "would skip {}: in progress, owner {} alive",
            show::key(record),
            show::owner(record)
        );
    }
    if !global.quiet {
        crate::say::notice(format_args!(
            "skipped {}: in progress and its owner {} is alive (--force purges it anyway)",
            show::key(record),
            show::owner(record)
        ));
    }
    Ok(())
}

/// A record a dry run would purge.
fn report_doomed(
    args: &Args,
    record: &Record,
    vantage: &Vantage,
    out: &mut dyn Write,
) -> io::Result<()> {
    if args.json {
        let line = json!({"key": record.key, "action": "purge"});
        return json::write_line(out, &line);
    }
    writeln!(
        out,
        "would purge {} ({}, started {})",
        show::key(record),
        vantage.state(record).label(),
        show::relative(record.started_at, vantage.now)
    )
}

fn summary(args: &Args, tally: &Tally, out: &mut dyn Write) -> io::Result<()> {
    if args.json {
        let line = json!({
            "purged": tally.purged,
            "skipped": tally.skipped,
            "dry_run": args.dry_run,
        });
        return json::write_line(out, &line);
    }
    let would = if args.dry_run {
        "dry run: would have "
    } else {
        ""
    };
    writeln!(
        out,
        "{would}purged {}, skipped {}",
        tally.purged, tally.skipped
    )
}
