//! Holding a claim while the child runs: append the output to the
//! record's journal on the store's main connection (the lease is renewed
//! on a connection of its own, `child::Keeper`); plus the debug-build
//! pause points the crash tests use to SIGKILL idem at exact moments.

use crate::child::{Hold, JournalWriter};
use crate::lease::Clock;
use crate::store::{final_writes_deadline, Chunk, Store, Stream, FINISH_PATIENCE};
use crate::text::escape;
use anyhow::Result;
use std::collections::VecDeque;
use std::time::Duration;

/// Holds the claim while the child runs: appends the journal.
pub(super) struct Owning<'a> {
    pub(super) store: &'a mut dyn Store,
    pub(super) key: &'a str,
    pub(super) token: i64,
    /// The store said the claim is another's.
    pub(super) lost: bool,
    /// The lease's keeper, told when an append finds the claim another's,
    /// so that COMMAND is stopped (shared stores).
    pub(super) hold: Option<&'a Hold>,
    /// The journal could not be written: what it holds is cut short.
    pub(super) output_lost: bool,
    /// Batches a failing store did not take yet, in order, to try again
    /// (a dropped connection, a restarting server), each as it was first
    /// sent: a batch whose append did reach the store is found there by
    /// its number and not written twice.
    pub(super) pending: VecDeque<Vec<(Stream, Vec<u8>)>>,
    /// The number of the first pending batch (the next one, when none is).
    pub(super) seq: u64,
}

/// What the outcome keeps of the final writes' budget, whatever the
/// output's retries took.
const OUTCOME_RESERVE: Duration = Duration::from_secs(10);

/// How much output waits for a store that fails, before the journal is
/// given up as cut.
const PENDING_LIMIT: usize = 16 << 20;

impl JournalWriter for Owning<'_> {
    /// Appends a batch (each stream already cut at `--max-output` by the
    /// supervisor) to the journal. A store that fails to take it never
    /// stops the run: the batch waits (up to `PENDING_LIMIT`) and goes with
    /// the next one, or before the outcome (`flush`); past that the journal
    /// is cut there, and flagged so at the end. A claim found lost is
    /// reported like a lost lease.
    fn journal(&mut self, chunks: &[Chunk<'_>]) -> Result<()> {
        // A claim given up for its lease appends nothing more: COMMAND is
        // being stopped, and idem waits for no store before it exits.
        let given_up = self
            .hold
            .is_some_and(|hold| hold.view().lost(Clock::now()).is_some());
        if self.lost || self.output_lost || given_up {
            return Ok(());
        }
        self.pending.push_back(
            chunks
                .iter()
                .map(|c| (c.stream, c.bytes.to_vec()))
                .collect(),
        );
        if let Err(e) = self.try_flush() {
            let waiting: usize = self.pending.iter().flatten().map(|(_, b)| b.len()).sum();
            if waiting > PENDING_LIMIT {
                self.give_up(&e);
            }
        }
        Ok(())
    }
}

impl Owning<'_> {
    /// Writes what waits, a batch at a time in order; an error leaves the
    /// rest waiting.
    fn try_flush(&mut self) -> Result<()> {
        while let Some(batch) = self.pending.front() {
            let chunks = Chunk::all_of(batch);
            let ours = self
                .store
                .append_journal(self.key, self.token, self.seq, &chunks)?;
            self.pending.pop_front();
            self.seq += 1;
            if !ours {
                self.pending.clear();
                // On a shared store the lease keeper stops COMMAND and
                // idem's last line says why.
                if let Some(hold) = self.hold {
                    hold.refuse();
                } else if !self.lost {
                    crate::say::error(format_args!(
                        "lost the claim on key {} while the command runs; its outcome will not be recorded",
                        self.lease_key()
                    ));
                }
                self.lost = true;
            }
        }
        Ok(())
    }

    /// Before the outcome: writes what still waits, trying on a shared
    /// store within the final writes' budget (`store::final_writes_deadline`)
    /// but for `OUTCOME_RESERVE` of it, which the outcome keeps.
    pub(super) fn flush(&mut self) {
        let deadline = final_writes_deadline()
            .checked_sub(OUTCOME_RESERVE)
            .unwrap_or_else(std::time::Instant::now);
        let mut pause = Duration::from_millis(100);
        let mut warned = false;
        while !self.lost && !self.output_lost {
            let Err(e) = self.try_flush() else { return };
            // A local store that fails (a full disk) will not get better.
            if !self.store.is_shared() || std::time::Instant::now() + pause >= deadline {
                self.give_up(&e);
                return;
            }
            if !warned {
                crate::say::notice(format_args!(
                    "cannot store the output of key {} yet ({e:#}); retrying for up to {}",
                    self.lease_key(),
                    crate::text::duration(FINISH_PATIENCE.saturating_sub(OUTCOME_RESERVE))
                ));
                warned = true;
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }

    fn give_up(&mut self, e: &anyhow::Error) {
        self.output_lost = true;
        self.pending = VecDeque::new();
        crate::say::notice(format_args!(
            "could not store the output of key {} ({e:#}); the stored copy is cut here",
            self.lease_key()
        ));
    }

    fn lease_key(&self) -> String {
        format!("'{}'", escape(self.key.as_bytes()))
    }
}

/// Test-only pause points, in debug builds: with `IDEM_TEST_PAUSE=NAME`,
/// idem creates the file named by `IDEM_TEST_PAUSE_FILE` when it reaches
/// point NAME and sleeps until it is killed (so crash tests can SIGKILL it
/// in phases that timing alone cannot reach reliably), or until the test
/// removes the file (to let another caller overtake it there).
#[cfg(debug_assertions)]
pub(super) fn pause_point(name: &str) {
    if std::env::var_os("IDEM_TEST_PAUSE").is_some_and(|point| point == name) {
        let Some(file) = std::env::var_os("IDEM_TEST_PAUSE_FILE") else {
            loop {
                std::thread::sleep(Duration::from_secs(60));
            }
        };
        let _ = std::fs::File::create(&file);
        while std::path::Path::new(&file).exists() {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

#[cfg(not(debug_assertions))]
pub(super) fn pause_point(_name: &str) {}
