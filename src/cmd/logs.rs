//! `idem logs KEY [--follow]`: a record's output journal, running and
//! crashed runs included.

use super::follow::{follow, run_status, warn_if_cut, End, Sink};
use super::Global;
use crate::exit::{fail, Code};
use crate::owner::Here;
use crate::policy::owner_alive;
use crate::store::{self, Mode, Record, Status};
use crate::text::escape;
use anyhow::Result;

/// Show the output of a key's run, in the order it was produced
///
/// Writes the stored output of the key's record: stdout chunks to stdout and
/// stderr chunks to stderr, in the order COMMAND produced them. This works
/// for a run in progress, and for a crashed one (what it printed before it
/// died). With --follow, idem keeps writing as a run in progress produces
/// more and exits with its status when it ends. Exit 1 when there is no
/// record for KEY.
#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    /// The key whose output to show
    #[arg(value_name = "KEY")]
    pub key: String,

    /// Keep writing as the run produces more; exit with its status when it
    /// ends (0 at once for a finished run; 77 if its owner crashed)
    #[arg(short, long)]
    pub follow: bool,
}

const EXAMPLES: &str = "\
Examples:
  # What did the charge print before it crashed?
  idem logs invoice-42

  # Watch a deploy that another terminal started, and share its status
  idem logs -f deploy-$CI_COMMIT_SHA";

pub fn run(args: &Args, global: &Global) -> Result<u8> {
    let key = args.key.as_str();
    let shown = format!("'{}'", escape(key.as_bytes()));
    let location = store::Location::resolve(global.db.as_deref())?;
    let Some(mut store) = store::open(&location, Mode::ReadOnly)? else {
        return no_record(&shown);
    };
    let store = store.as_mut();
    let (_, record) = store.get(key)?;
    let Some(record) = record else {
        return no_record(&shown);
    };
    let mut sink = Sink::new("output");
    if !args.follow || record.status != Status::InProgress {
        let read = store.read_journal(key, record.token, 0, &mut |s, b| sink.write(s, b))?;
        if read.is_none() {
            return no_record(&shown);
        }
        if record.status != Status::InProgress {
            warn_if_cut(&record, &shown);
        }
        return Ok(0);
    }
    let here = Here::detect();
    let shared = store.is_shared();
    let alive = |r: &Record, now| owner_alive(r, &here, now, shared);
    match follow(store, &record, &mut sink, &alive, None)? {
        End::Finished(done) => {
            warn_if_cut(&done, &shown);
            Ok(run_status(&done))
        }
        End::Crashed(dead) => fail(
            Code::Crashed,
            format!(
                "key {shown}: the run crashed (attempt {}, pid {} on {}); its output up to then is above",
                dead.attempt,
                dead.owner.pid,
                escape(dead.owner.host.as_bytes())
            ),
        ),
        End::Gone => fail(
            Code::NoRecord,
            format!("key {shown}: the record was purged or taken over while it was followed"),
        ),
        End::TimedOut => Ok(0),
    }
}

fn no_record<T>(shown: &str) -> Result<T> {
    fail(Code::NoRecord, format!("no record for key {shown}"))
}
