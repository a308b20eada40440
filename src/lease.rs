//! The lease's arithmetic: when an owner renews, when it gives up an
//! attempt, and when it must stop COMMAND (SPEC.md "Leases").
//!
//! A lease of length L is stamped by the store (its clock + L) when it
//! applies a claim or a renewal. The owner times everything on its own
//! clock from the moment it *sent* the last request the store accepted
//! (`Clock`: `CLOCK_BOOTTIME`, which never jumps and counts suspend), so
//! its view of the lease always ends before the store's does. It renews
//! every L/3 from the previous send, bounds each attempt by L/3, and if no
//! renewal sent within the last `0.9·L − G` was accepted, it stops COMMAND
//! (SIGTERM, then SIGKILL G later, with G = min(5 s, L/6)): the command's
//! group is dead before 0.9·L, so before any other caller can see the
//! lease run out, even with a local clock 10 % slow. The model in
//! `model/` checks this rule, with these same numbers (a test compares
//! them).

use std::time::Duration;

/// Renewals per lease: one every L/3, so two can fail before the stop
/// deadline.
pub const RENEWALS_PER_LEASE: u32 = 3;
/// The part of L within which COMMAND's group must be dead, in tenths:
/// 0.9·L leaves room for a local clock 10 % slower than the store's.
pub const DEAD_BY_TENTHS: u32 = 9;
/// The longest grace between SIGTERM and SIGKILL.
pub const MAX_GRACE: Duration = Duration::from_secs(5);
/// G is at most this part of L (L/6).
pub const GRACE_PER_LEASE: u32 = 6;
/// The shortest lease `--lease` accepts.
pub const MIN_LEASE: Duration = Duration::from_secs(1);

/// The timings of one lease length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub length: Duration,
}

impl Lease {
    pub fn new(length: Duration) -> Lease {
        Lease { length }
    }

    /// How long after the previous renewal's send the next one is sent.
    pub fn renew_every(self) -> Duration {
        self.length / RENEWALS_PER_LEASE
    }

    /// How long one claim or renewal attempt may take before it counts as
    /// failed.
    pub fn attempt_limit(self) -> Duration {
        self.length / RENEWALS_PER_LEASE
    }

    /// G: between SIGTERM and SIGKILL when the lease is lost.
    pub fn grace(self) -> Duration {
        MAX_GRACE.min(self.length / GRACE_PER_LEASE)
    }

    /// By when, after the last accepted send, COMMAND's group must be dead.
    pub fn dead_by(self) -> Duration {
        self.length * DEAD_BY_TENTHS / 10
    }

    /// When, after the last accepted send, SIGTERM goes to the group.
    pub fn stop_after(self) -> Duration {
        self.dead_by().saturating_sub(self.grace())
    }

    /// When, after the last accepted send, SIGKILL goes to the group.
    pub fn kill_after(self) -> Duration {
        self.dead_by()
    }
}

/// A local clock that never jumps and counts time spent suspended
/// (Linux `CLOCK_BOOTTIME`), unlike `Instant`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Clock(Duration);

impl Clock {
    pub fn now() -> Clock {
        // CLOCK_BOOTTIME exists on every Linux idem supports; should it
        // fail, the clock stands still, which only makes idem stop early.
        let Ok(ts) = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME) else {
            return Clock(Duration::ZERO);
        };
        Clock(Duration::new(
            u64::try_from(ts.tv_sec()).unwrap_or(0),
            u32::try_from(ts.tv_nsec()).unwrap_or(0),
        ))
    }

    /// This moment plus `d` (saturating).
    pub fn after(self, d: Duration) -> Clock {
        Clock(self.0.saturating_add(d))
    }

    /// How long from `earlier` to this moment (zero if it is later).
    pub fn since(self, earlier: Clock) -> Duration {
        self.0.saturating_sub(earlier.0)
    }

    /// How long from now until this moment (zero if it has passed).
    pub fn left(self) -> Duration {
        self.0.saturating_sub(Clock::now().0)
    }

    /// Nanoseconds since boot: to share through an atomic.
    pub fn as_nanos(self) -> u64 {
        u64::try_from(self.0.as_nanos()).unwrap_or(u64::MAX)
    }

    pub fn from_nanos(nanos: u64) -> Clock {
        Clock(Duration::from_nanos(nanos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_lease_renews_at_10_and_20s_stops_at_22s_and_kills_at_27s() {
        let lease = Lease::new(Duration::from_secs(30));
        assert_eq!(lease.renew_every(), Duration::from_secs(10));
        assert_eq!(lease.attempt_limit(), Duration::from_secs(10));
        assert_eq!(lease.grace(), Duration::from_secs(5));
        assert_eq!(lease.stop_after(), Duration::from_secs(22));
        assert_eq!(lease.kill_after(), Duration::from_secs(27));
    }

    #[test]
    fn a_short_lease_has_a_grace_of_a_sixth() {
        let lease = Lease::new(Duration::from_secs(3));
        assert_eq!(lease.grace(), Duration::from_millis(500));
        assert_eq!(lease.stop_after(), Duration::from_millis(2200));
        assert_eq!(lease.kill_after(), Duration::from_millis(2700));
        // Two renewals fit before the stop deadline.
        assert!(lease.renew_every() * 2 < lease.stop_after());
    }

    #[test]
    fn the_clock_moves_forward() {
        let a = Clock::now();
        let b = Clock::now();
        assert!(b >= a);
        assert_eq!(
            a.after(Duration::from_secs(1)).since(a),
            Duration::from_secs(1)
        );
    }
}

/// The model in `model/lease.pml` (checked by `model/check.sh`) must check
/// this rule, not another: its numbers and formulas are these.
#[cfg(test)]
mod model {
    use super::*;

    const MODEL: &str = include_str!("../model/lease.pml");

    /// What `#define NAME` stands for in the model.
    fn define(name: &str) -> &'static str {
        MODEL
            .lines()
            .find_map(|line| {
                line.trim()
                    .strip_prefix("#define ")?
                    .strip_prefix(name)?
                    .strip_prefix(' ')
            })
            .map(str::trim)
            .unwrap_or_else(|| panic!("model/lease.pml has no #define {name}"))
    }

    fn number(name: &str) -> u32 {
        define(name)
            .parse()
            .unwrap_or_else(|e| panic!("model/lease.pml: {name} is not a number: {e}"))
    }

    #[test]
    fn the_model_has_the_lease_numbers_and_formulas_of_this_file() {
        assert_eq!(number("RENEWALS_PER_LEASE"), RENEWALS_PER_LEASE);
        assert_eq!(number("DEAD_BY_TENTHS"), DEAD_BY_TENTHS);
        assert_eq!(number("GRACE_PER_LEASE"), GRACE_PER_LEASE);
        assert_eq!(u128::from(number("MAX_GRACE_MS")), MAX_GRACE.as_millis());
        // Each timing as `Lease` computes it, in the model's words.
        assert_eq!(define("RENEW_EVERY"), "(L / RENEWALS_PER_LEASE)");
        assert_eq!(define("ATTEMPT_LIMIT"), "(L / RENEWALS_PER_LEASE)");
        assert_eq!(
            define("GRACE"),
            "(MAX_GRACE_MS / TICK_MS < L / GRACE_PER_LEASE -> MAX_GRACE_MS / TICK_MS : L / GRACE_PER_LEASE)"
        );
        assert_eq!(define("DEAD_BY"), "(L * DEAD_BY_TENTHS / 10)");
        assert_eq!(define("STOP_AFTER"), "(DEAD_BY - GRACE)");
        // At the model's own lease, those formulas give this file's timings.
        let (tick, l) = (number("TICK_MS"), number("L"));
        let ticks = |n: u32| Duration::from_millis(u64::from(n * tick));
        let lease = Lease::new(ticks(l));
        let grace = (number("MAX_GRACE_MS") / tick).min(l / GRACE_PER_LEASE);
        let dead_by = l * DEAD_BY_TENTHS / 10;
        assert_eq!(lease.renew_every(), ticks(l / RENEWALS_PER_LEASE));
        assert_eq!(lease.attempt_limit(), ticks(l / RENEWALS_PER_LEASE));
        assert_eq!(lease.grace(), ticks(grace));
        assert_eq!(lease.kill_after(), ticks(dead_by));
        assert_eq!(lease.stop_after(), ticks(dead_by - grace));
    }
}
