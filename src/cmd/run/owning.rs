//! Holding a claim while the child runs: record the child before it may
//! exec, renew the lease, keep the output; plus the debug-build pause
//! points the crash tests use to SIGKILL idem at exact moments.

use super::millis;
use crate::child::Supervisor;
use crate::exit::{fail, Code};
use crate::owner::ChildId;
use crate::store::{Captured, Chunk, Store, Stream};
use crate::text::escape;
use anyhow::Result;
use std::fs::File;
use std::time::{Duration, Instant};

/// Holds the claim while the child runs: records the child, renews the lease.
pub(super) struct Owning<'a> {
    pub(super) store: &'a mut dyn Store,
    pub(super) key: &'a str,
    pub(super) token: i64,
    pub(super) lease: Duration,
    pub(super) renewed: Instant,
    pub(super) lost: bool,
    /// The output kept for the record, each stream already cut at
    /// `--max-output` by the supervisor.
    pub(super) stdout: Vec<u8>,
    pub(super) stderr: Vec<u8>,
}

impl Supervisor for Owning<'_> {
    fn started(&mut self, child: ChildId) -> Result<()> {
        if self.store.set_child(self.key, self.token, child)? {
            pause_point("child-recorded");
            Ok(())
        } else {
            fail(
                Code::Internal,
                "lost the claim before the command started; it was not run",
            )
        }
    }

    /// Renews the lease; a refusal, or failures until the lease has run
    /// out, mean another owner may have taken over.
    fn renew(&mut self) {
        if self.lost {
            return;
        }
        match self.store.renew(self.key, self.token, millis(self.lease)) {
            Ok(true) => self.renewed = Instant::now(),
            Ok(false) => self.lost = true,
            Err(e) if self.renewed.elapsed() >= self.lease => {
                crate::say::error(format_args!(
                    "could not renew the lease for {} ({e:#}); it has run out",
                    self.lease_key()
                ));
                self.lost = true;
            }
            Err(_) => {}
        }
        if self.lost {
            crate::say::error(format_args!(
                "lost the lease on key {} while the command runs; its outcome will not be recorded",
                self.lease_key()
            ));
        }
    }

    /// A third of the lease: two renewals can fail before it runs out.
    fn renew_every(&self) -> Option<Duration> {
        (!self.lost).then(|| self.lease / 3)
    }

    fn journal(&mut self, chunks: &[Chunk<'_>]) -> Result<()> {
        for chunk in chunks {
            match chunk.stream {
                Stream::Stdout => self.stdout.extend_from_slice(chunk.bytes),
                Stream::Stderr => self.stderr.extend_from_slice(chunk.bytes),
            }
        }
        Ok(())
    }
}

impl Owning<'_> {
    /// What was kept of one stream, and whether more arrived.
    pub(super) fn captured(&mut self, stream: Stream, truncated: bool) -> Captured {
        let bytes = match stream {
            Stream::Stdout => std::mem::take(&mut self.stdout),
            Stream::Stderr => std::mem::take(&mut self.stderr),
        };
        Captured { bytes, truncated }
    }

    fn lease_key(&self) -> String {
        format!("'{}'", escape(self.key.as_bytes()))
    }
}

/// Test-only pause points, in debug builds: with `IDEM_TEST_PAUSE=NAME`,
/// idem creates the file named by `IDEM_TEST_PAUSE_FILE` when it reaches
/// point NAME and sleeps until it is killed, so crash tests can SIGKILL it
/// in phases that timing alone cannot reach reliably.
#[cfg(debug_assertions)]
pub(super) fn pause_point(name: &str) {
    if std::env::var_os("IDEM_TEST_PAUSE").is_some_and(|point| point == name) {
        if let Some(file) = std::env::var_os("IDEM_TEST_PAUSE_FILE") {
            let _ = File::create(file);
        }
        loop {
            std::thread::sleep(Duration::from_secs(60));
        }
    }
}

#[cfg(not(debug_assertions))]
pub(super) fn pause_point(_name: &str) {}
