//! How records look to an operator: state labels, times, spans and owners,
//! shared by `inspect` and `purge`. Everything taken from the store goes
//! through `crate::text::escape` here, so no raw control character from a
//! key, command or host name reaches a terminal.

use crate::owner::Here;
use crate::policy::owner_alive;
use crate::store::{Millis, Record, Status};
use crate::text::{command_line, escape};

/// What an operator is told about a record's state; finer than `Status`,
/// because an expired record is as good as absent and an `in_progress` one
/// whose owner is gone is stuck until someone acts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// `in_progress` and its owner is alive.
    Running,
    /// `in_progress` but its owner is gone: the next run takes it over, or
    /// it blocks (`--on-crash block`) until purged.
    Crashed,
    Completed,
    Failed,
    /// Finished and past its TTL: treated as absent, removed lazily.
    Expired,
}

impl State {
    pub fn label(self) -> &'static str {
        match self {
            State::Running => "in_progress",
            State::Crashed => "crashed",
            State::Completed => "completed",
            State::Failed => "failed",
            State::Expired => "expired",
        }
    }
}

/// Where and when records are looked at from: the store's clock and this
/// host, so owner liveness is judged exactly as `idem run` judges it.
pub struct Vantage {
    pub now: Millis,
    here: Here,
    /// A shared store (leases and fencing tokens) rather than a file.
    pub shared: bool,
}

impl Vantage {
    pub fn new(now: Millis, shared: bool) -> Vantage {
        Vantage {
            now,
            here: Here::detect(),
            shared,
        }
    }

    /// Whether the record's owner is alive. Only an `in_progress` record
    /// has a live owner: a finished record's owner is history.
    pub fn owner_alive(&self, record: &Record) -> bool {
        record.status == Status::InProgress
            && owner_alive(record, &self.here, self.now, self.shared)
    }

    pub fn state(&self, record: &Record) -> State {
        match record.status {
            Status::InProgress if self.owner_alive(record) => State::Running,
            Status::InProgress => State::Crashed,
            _ if record.is_expired(self.now) => State::Expired,
            Status::Completed => State::Completed,
            Status::Failed => State::Failed,
        }
    }
}

/// A store time as RFC 3339 UTC with milliseconds.
pub fn rfc3339(at: Millis) -> String {
    let (date, time) = utc(at);
    format!("{date}T{time}.{:03}Z", at.rem_euclid(1000))
}

/// A store time as RFC 3339 UTC to the second, for tables.
pub fn rfc3339_seconds(at: Millis) -> String {
    let (date, time) = utc(at);
    format!("{date}T{time}Z")
}

/// The date and time of day of `at` in UTC, for any time a store can
/// hold. RFC 3339 ends at year 9999; a later year (`--ttl 10000y`) is
/// written as ISO 8601's expanded year, a sign and six digits, as
/// JavaScript's `toISOString` does: `+012025-06-01`.
fn utc(at: Millis) -> (String, String) {
    let secs = at.div_euclid(1000);
    let (days, of_day) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    let year = if (0..=9999).contains(&year) {
        format!("{year:04}")
    } else {
        let sign = if year < 0 { '-' } else { '+' };
        format!("{sign}{:06}", year.unsigned_abs())
    };
    let time = format!(
        "{:02}:{:02}:{:02}",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60
    );
    (format!("{year}-{month:02}-{day:02}"), time)
}

/// Year, month and day of the `days`-th day after 1970-01-01 in the
/// proleptic Gregorian calendar (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A length of time in at most two units: `250ms`, `12s`, `3m 4s`, `2h 5m`, `3d 4h`.
pub fn span(ms: Millis) -> String {
    let ms = ms.max(0);
    let secs = ms / 1000;
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match () {
        () if ms < 1000 => format!("{ms}ms"),
        () if secs < 60 => format!("{secs}s"),
        () if secs < 3600 => format!("{m}m {s}s"),
        () if secs < 86_400 => format!("{h}h {m}m"),
        () => format!("{d}d {h}h"),
    }
}

/// `at` seen from `now`: `5m 2s ago` or `in 3h 1m`.
pub fn relative(at: Millis, now: Millis) -> String {
    if at <= now {
        format!("{} ago", span(now - at))
    } else {
        format!("in {}", span(at - now))
    }
}

/// The stored result in a few characters: `0`, `3`, `signal 9`, `timeout`, `-`.
pub fn result(record: &Record) -> String {
    if record.timed_out {
        "timeout".into()
    } else if let Some(sig) = record.signal {
        format!("signal {sig}")
    } else {
        record
            .exit_code
            .map_or_else(|| "-".into(), |c| c.to_string())
    }
}

/// How long the run took, or has been running.
pub fn duration(record: &Record, now: Millis) -> String {
    match record.finished_at {
        Some(end) => span(end - record.started_at),
        None => format!("{}+", span(now - record.started_at)),
    }
}

/// When the record stops counting: `in 23h 59m`, `2h 1m ago`, or `-` while running.
pub fn expires(record: &Record, now: Millis) -> String {
    record
        .expires_at
        .map_or_else(|| "-".into(), |at| relative(at, now))
}

/// The owner as `host:pid`, escaped.
pub fn owner(record: &Record) -> String {
    format!(
        "{}:{}",
        escape(record.owner.host.as_bytes()),
        record.owner.pid
    )
}

/// The command as a shell-like line, escaped.
pub fn command(record: &Record) -> String {
    command_line(record.argv())
}

/// The label, escaped, or `-`.
pub fn label(record: &Record) -> String {
    record
        .label
        .as_ref()
        .map_or_else(|| "-".into(), |l| escape(l.as_bytes()))
}

/// A key, escaped.
pub fn key(record: &Record) -> String {
    escape(record.key.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn spans_use_two_units_at_most() {
        assert_eq!(span(250), "250ms");
        assert_eq!(span(12_345), "12s");
        assert_eq!(span(184_000), "3m 4s");
        assert_eq!(span(7_500_000), "2h 5m");
        assert_eq!(span(277_200_000), "3d 5h");
        assert_eq!(relative(1_000, 61_000), "1m 0s ago");
        assert_eq!(relative(61_000, 1_000), "in 1m 0s");
    }

    #[test]
    fn times_are_utc() {
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339_seconds(1_700_000_000_123), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn times_agree_with_humantime_up_to_year_9999() {
        let mut at: i64 = 0;
        while at < 253_402_300_800_000 {
            let since = UNIX_EPOCH + Duration::from_millis(u64::try_from(at).unwrap());
            let expected = humantime::format_rfc3339_millis(since).to_string();
            assert_eq!(rfc3339(at), expected);
            at += 86_399_999_937;
        }
    }

    #[test]
    fn years_past_9999_are_written_expanded() {
        assert_eq!(rfc3339(253_402_300_799_999), "9999-12-31T23:59:59.999Z");
        assert_eq!(rfc3339(253_402_300_800_000), "+010000-01-01T00:00:00.000Z");
        // The longest --ttl from now, and the last time a store can hold.
        assert!(rfc3339(2_000_000_000_000 + 315_576_000_000_000).starts_with("+012033-"));
        assert_eq!(rfc3339_seconds(i64::MAX), "+292278994-08-17T07:12:55Z");
    }
}
