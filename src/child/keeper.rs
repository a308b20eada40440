//! The lease keeper: a thread and a store connection of its own that
//! renew the claim's lease (SPEC.md "Leases"), so that nothing else idem
//! does — output, a stalled reader, a journal append, a slow query, a
//! signal — can delay a renewal.
//!
//! It renews every L/3 counted from the previous renewal's *send*, each
//! attempt bounded by L/3 (the store's `LeaseKeeper` enforces that on its
//! connection), and publishes in a `Hold` when the last accepted request
//! was sent, and whether one was refused. It never sends a renewal once the
//! stop deadline has passed: from then on the claim is given up, whatever
//! the store would say. It runs from the claim's answer until the outcome
//! is recorded (the `Keeper` is dropped), not only while COMMAND runs.

use super::state::LeaseView;
use crate::lease::{Clock, Lease};
use crate::store::{LeaseKeeper, Millis};
use crate::text::escape;
use anyhow::{Context, Result};
use nix::fcntl::OFlag;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, RecvTimeoutError, SyncSender};
use std::sync::Arc;

/// What the keeper found, shared with the supervisor and the journal.
pub struct Hold {
    lease: Lease,
    /// `Clock` nanoseconds of the send of the last accepted request.
    accepted: AtomicU64,
    refused: AtomicBool,
    /// Readable once the claim was found taken over: wakes the supervisor.
    wake_read: OwnedFd,
    wake_write: OwnedFd,
}

impl Hold {
    /// The hold of a claim of `lease` whose request was sent at `sent`.
    pub fn new(lease: Lease, sent: Clock) -> Result<Hold> {
        let (wake_read, wake_write) =
            nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).context("pipe")?;
        Ok(Hold {
            lease,
            accepted: AtomicU64::new(sent.as_nanos()),
            refused: AtomicBool::new(false),
            wake_read,
            wake_write,
        })
    }

    pub fn view(&self) -> LeaseView {
        LeaseView {
            lease: self.lease,
            accepted: Clock::from_nanos(self.accepted.load(Ordering::SeqCst)),
            refused: self.refused.load(Ordering::SeqCst),
        }
    }

    /// The store said the claim is another's (a renewal, or a journal append).
    pub fn refuse(&self) {
        if !self.refused.swap(true, Ordering::SeqCst) {
            let _ = nix::unistd::write(&self.wake_write, &[1]);
        }
    }

    fn accept(&self, sent: Clock) {
        self.accepted.fetch_max(sent.as_nanos(), Ordering::SeqCst);
    }

    /// Polled by the supervisor: readable once the claim was refused.
    pub fn wake_fd(&self) -> BorrowedFd<'_> {
        self.wake_read.as_fd()
    }
}

/// The running keeper; dropping it ends its renewals. An attempt under
/// way is left to finish on its own: idem does not wait for it.
pub struct Keeper {
    pub hold: Arc<Hold>,
    _quit: SyncSender<()>,
}

impl Keeper {
    /// Starts renewing `key`'s claim with `token`, held since `hold` was made.
    pub fn start(
        mut renewer: Box<dyn LeaseKeeper>,
        key: &str,
        token: i64,
        hold: Hold,
    ) -> Result<Keeper> {
        let hold = Arc::new(hold);
        let (quit, quitting) = sync_channel::<()>(0);
        let shared = Arc::clone(&hold);
        let key = key.to_owned();
        std::thread::Builder::new()
            .name("idem-lease".into())
            .spawn(move || {
                block_signals();
                renew(renewer.as_mut(), &key, token, &shared, |wait| {
                    matches!(quitting.recv_timeout(wait), Err(RecvTimeoutError::Timeout))
                });
            })
            .context("start the lease keeper")?;
        Ok(Keeper { hold, _quit: quit })
    }
}

/// Every signal stays blocked on the keeper's thread: none may interrupt
/// a renewal, and none is delivered here rather than to the supervisor.
fn block_signals() {
    use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow};
    let _ = pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&SigSet::all()), None);
}

/// The renewal loop. `wait(d)` sleeps up to `d` and says whether to go on.
fn renew(
    renewer: &mut dyn LeaseKeeper,
    key: &str,
    token: i64,
    hold: &Hold,
    mut wait: impl FnMut(std::time::Duration) -> bool,
) {
    let lease = hold.lease;
    let lease_ms = Millis::try_from(lease.length.as_millis()).unwrap_or(Millis::MAX / 4);
    let mut last_send = hold.view().accepted;
    let mut failing = false;
    loop {
        if !wait(last_send.after(lease.renew_every()).left()) {
            return;
        }
        let send = Clock::now();
        if send >= hold.view().stop_at() {
            // Too late: COMMAND is being stopped, the claim is given up.
            return;
        }
        last_send = send;
        match renewer.renew(key, token, lease_ms) {
            Ok(true) => {
                hold.accept(send);
                failing = false;
            }
            Ok(false) => {
                hold.refuse();
                return;
            }
            Err(e) => {
                if !std::mem::replace(&mut failing, true) {
                    crate::say::as_event("store_error", || {
                        crate::say::notice(format_args!(
                            "cannot renew the lease on {} yet ({e:#}); trying again every {}",
                            escape(key.as_bytes()),
                            crate::text::duration(lease.renew_every())
                        ));
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Answers renewals from a script, noting when each was asked.
    struct Scripted {
        answers: Vec<Result<bool>>,
        asked: Vec<Clock>,
    }

    impl LeaseKeeper for Scripted {
        fn renew(&mut self, _: &str, _: i64, _: Millis) -> Result<bool> {
            self.asked.push(Clock::now());
            if self.answers.is_empty() {
                return Ok(true);
            }
            self.answers.remove(0)
        }
    }

    fn scripted(answers: Vec<Result<bool>>) -> Scripted {
        Scripted {
            answers,
            asked: Vec::new(),
        }
    }

    #[test]
    fn renewals_go_every_third_of_the_lease_from_the_previous_send_and_failures_keep_the_old_send()
    {
        // Renewals due at 1 s, 2 s (fails) and 3 s; the stop deadline after
        // the first is at 3.2 s, so the third goes out.
        let lease = Lease::new(Duration::from_secs(3));
        let sent = Clock::now();
        let hold = Hold::new(lease, sent).unwrap();
        let mut store = scripted(vec![Ok(true), Err(anyhow::anyhow!("down")), Ok(true)]);
        let mut rounds = 0;
        renew(&mut store, "k", 1, &hold, |d| {
            std::thread::sleep(d);
            rounds += 1;
            rounds <= 3
        });
        assert_eq!(store.asked.len(), 3);
        for (i, asked) in store.asked.iter().enumerate() {
            let due = sent.after(lease.renew_every() * (i as u32 + 1));
            assert!(*asked >= due, "renewal {i} early");
            assert!(
                asked.since(due) < Duration::from_millis(150),
                "renewal {i} late"
            );
        }
        // The last accepted one is the third: the hold counts from its
        // send (taken just before the store was asked).
        let accepted = hold.view().accepted;
        assert!(accepted > store.asked[1] && accepted <= store.asked[2]);
        assert!(!hold.view().refused);
    }

    #[test]
    fn a_refusal_is_published_and_ends_the_renewals() {
        let lease = Lease::new(Duration::from_millis(300));
        let hold = Hold::new(lease, Clock::now()).unwrap();
        let mut store = scripted(vec![Ok(false)]);
        renew(&mut store, "k", 1, &hold, |d| {
            std::thread::sleep(d);
            true
        });
        assert_eq!(store.asked.len(), 1);
        assert!(hold.view().refused);
        let mut byte = [0];
        assert_eq!(
            nix::unistd::read(std::os::fd::AsRawFd::as_raw_fd(&hold.wake_read), &mut byte),
            Ok(1)
        );
    }

    #[test]
    fn no_renewal_is_sent_past_the_stop_deadline() {
        let lease = Lease::new(Duration::from_millis(300));
        let hold = Hold::new(lease, Clock::now()).unwrap();
        let mut store = scripted(vec![]);
        // Frozen past the deadline before the first renewal.
        renew(&mut store, "k", 1, &hold, |_| {
            std::thread::sleep(lease.stop_after() + Duration::from_millis(10));
            true
        });
        assert!(store.asked.is_empty());
    }
}
