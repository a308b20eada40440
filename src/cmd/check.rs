//! `idem check`: is this store fit for the promise? One line per check —
//! `ok`, `warn` or `fail` — and exit 0 (nothing failed), 1 (a check
//! failed) or 125 (the store cannot be reached or opened at all).
//!
//! Every store: it opens and has a schema this idem understands, plus the
//! backend's own checks (SQLite's integrity check and file; PostgreSQL's
//! TLS and durability settings; Redis's eviction policy and persistence).
//! Shared stores also: a probe record written and removed (through the same
//! claim as `run`, under a key of its own, so no record is touched), the
//! clock difference between this host and the server, and a round trip.
//! A SQLite file is opened read-only and never modified.

use super::Global;
use crate::owner::Here;
use crate::store::{self, Claim, Finding, Level, Location, Mode, Store};
use anyhow::Result;
use std::io::{self, Write};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Check that the store can keep the promise
#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct Args {}

const EXAMPLES: &str = "\
Before you point production at a server, run idem check against it. On a
shared store, check creates idem's schema if it is missing (as the first run
would) and writes and removes a probe record; it never touches a record. A
SQLite file is opened read-only and never modified.

Exit status: 0 nothing failed (warnings allowed), 1 a check failed, 125 the
store cannot be reached or opened.

Examples:
  idem --db 'postgres://app@db.example/jobs?sslmode=verify-full' check
  idem --db redis://cache.internal:6379/0 check";

/// A clock this far from the server's is worth a warning.
const CLOCK_WARN_MS: i64 = 1000;
/// A round trip this slow is felt by every claim and renewal.
const ROUND_TRIP_WARN_MS: f64 = 250.0;

pub fn run(_args: &Args, global: &Global) -> Result<u8> {
    let location = Location::resolve(global.db.as_deref())?;
    let mode = match location {
        Location::File(_) => Mode::ReadOnly,
        Location::Postgres(_) | Location::Redis(_) => Mode::Create,
    };
    let mut found = match store::open(&location, mode)? {
        Some(mut store) => {
            let mut found = store.check()?;
            if store.is_shared() {
                found.push(probe(store.as_mut()));
                found.extend(clock(store.as_mut())?);
            }
            found
        }
        None => vec![Finding::new(
            Level::Warn,
            "store",
            "no store here yet; the first `idem run` creates it",
        )],
    };
    found.retain(|f| !f.text.is_empty());
    let mut out = io::stdout().lock();
    for finding in &found {
        let level = match finding.level {
            Level::Ok => "ok",
            Level::Warn => "warn",
            Level::Fail => "fail",
        };
        writeln!(out, "{level:<4} {}: {}", finding.name, finding.text)?;
    }
    out.flush()?;
    Ok(u8::from(found.iter().any(|f| f.level == Level::Fail)))
}

/// Claims a key of its own with the same primitive as `run`, then deletes it.
fn probe(store: &mut dyn Store) -> Finding {
    let here = Here::detect();
    let key = format!(
        "idem-check-probe:{}:{}:{}",
        here.host,
        std::process::id(),
        wall_ms()
    );
    let started = Instant::now();
    let mut claim = |existing: Option<&store::Record>, _now| {
        existing.is_none().then(|| Claim {
            fingerprint: Vec::new(),
            command: b"idem check".to_vec(),
            cwd: Vec::new(),
            attempt: 1,
            owner: here.me(),
            lease_ms: 60_000,
            label: None,
            child: None,
        })
    };
    let written = store.claim(&key, &mut claim).and_then(|token| match token {
        // Deleted as it stands, like a purge deletes what it judged.
        Some(token) => match store.get(&key)?.1.filter(|r| r.token == token) {
            Some(probe) => store.delete(&[store::Judged::from(probe)]),
            None => Ok(0),
        },
        None => Ok(0),
    });
    match written {
        Ok(1) => Finding::new(
            Level::Ok,
            "write",
            format!(
                "claimed and removed a probe record in {} ms",
                started.elapsed().as_millis()
            ),
        ),
        Ok(_) => Finding::new(
            Level::Fail,
            "write",
            "the probe record could not be claimed and removed",
        ),
        Err(e) => Finding::new(Level::Fail, "write", format!("{e:#}")),
    }
}

/// The server's clock against this host's, from the fastest of a few round
/// trips (the server read its clock somewhere within it).
fn clock(store: &mut dyn Store) -> Result<Vec<Finding>> {
    let mut best: Option<(f64, i64)> = None;
    for _ in 0..5 {
        let (before, started) = (wall_ms(), Instant::now());
        let server = store.now()?;
        let trip = started.elapsed().as_secs_f64() * 1000.0;
        let offset = server - (before + wall_ms()) / 2;
        if best.is_none_or(|(t, _)| trip < t) {
            best = Some((trip, offset));
        }
    }
    let Some((trip, offset)) = best else {
        return Ok(Vec::new());
    };
    let side = if offset >= 0 { "ahead of" } else { "behind" };
    let clock = format!(
        "the server's clock is {} ms {side} this host's",
        offset.abs()
    );
    let clock = if offset.abs() <= CLOCK_WARN_MS {
        Finding::new(Level::Ok, "clock", clock)
    } else {
        Finding::new(
            Level::Warn,
            "clock",
            format!(
                "{clock}: leases and expiry follow the server's clock, so the promise holds, \
                 but times idem shows and compares with this host's are off (run NTP)"
            ),
        )
    };
    let text = format!("{trip:.2} ms (best of 5)");
    let trip = if trip <= ROUND_TRIP_WARN_MS {
        Finding::new(Level::Ok, "round trip", text)
    } else {
        Finding::new(
            Level::Warn,
            "round trip",
            format!("{text}: every claim, renewal and outcome waits this long"),
        )
    };
    Ok(vec![clock, trip])
}

fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
