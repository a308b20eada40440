//! Claiming a key on Redis: claim.lua writes the claim only if the record
//! is still the one the caller decided on (same token and revision). Each
//! claim carries a nonce, so that a claim whose answer was lost (a dropped
//! connection, a time limit) is recognised as this caller's own when it
//! is looked for again, rather than taken for another caller's.

use super::conn::{is_connection_error, Failure};
use super::RedisStore;
use crate::lease::Clock;
use crate::store::{Claim, Millis, Record};
use anyhow::Result;

/// How many times a claim whose answer was lost is looked for and tried
/// again.
const CLAIM_RETRIES: u32 = 3;

impl RedisStore {
    /// `Store::claim`: reads the record (or takes `get`'s read), lets
    /// `decide` choose, and writes the claim if the record is still as
    /// read; a claim whose answer was lost is found again by its nonce.
    pub(super) fn claim_key(
        &mut self,
        key: &str,
        decide: &mut dyn FnMut(Option<&Record>, Millis) -> Option<Claim>,
    ) -> Result<Option<i64>> {
        let (rkey, jkey) = (self.record_key(key), self.journal_key(key));
        let counter = self.keys.counter();
        self.ready()?;
        let mut conflicted = None;
        let mut last_read = self.last_read.take().filter(|(read, _)| read == key);
        let nonce = claim_nonce();
        let mut lost_answers = 0;
        loop {
            let (now, seen) = match last_read.take() {
                Some((_, seen)) => seen,
                None => self.read_with_time(key)?,
            };
            let Some(claim) = decide(seen.as_ref().map(|(record, _)| record), now) else {
                return Ok(None);
            };
            let (token, rev) = seen.map_or((0, String::new()), |(r, rev)| (r.token, rev));
            let sent = self.call(&mut |c, s| {
                let mut call = s.claim.key(&rkey);
                call.key(&jkey);
                if let Some(counter) = &counter {
                    call.key(counter);
                }
                call.arg(token)
                    .arg(&rev)
                    .arg(claim.lease_ms)
                    .arg("claim_nonce")
                    .arg(&nonce)
                    .arg("fingerprint")
                    .arg(&claim.fingerprint)
                    .arg("command")
                    .arg(&claim.command)
                    .arg("cwd")
                    .arg(&claim.cwd)
                    .arg("attempt")
                    .arg(claim.attempt)
                    .arg("replays")
                    .arg(0)
                    .arg("owner_host")
                    .arg(&claim.owner.host)
                    .arg("owner_boot")
                    .arg(&claim.owner.boot_id)
                    .arg("owner_pid_ns")
                    .arg(
                        claim
                            .owner
                            .pid_ns
                            .map_or_else(String::new, |ns| ns.to_string()),
                    )
                    .arg("owner_pid")
                    .arg(claim.owner.pid)
                    .arg("owner_start")
                    .arg(claim.owner.start);
                if let Some(label) = &claim.label {
                    call.arg("label").arg(label);
                }
                if let Some(child) = claim.child {
                    call.arg("child_pid")
                        .arg(child.pid)
                        .arg("child_pgid")
                        .arg(child.pgid)
                        .arg("child_start")
                        .arg(child.start);
                }
                call.invoke::<i64>(c.like())
            });
            let new = match sent {
                Ok(new) => new,
                Err(failure) if lost_answers < CLAIM_RETRIES && answer_lost(&failure) => {
                    // The claim may have been written: its nonce tells.
                    lost_answers += 1;
                    if let Some(token) = self.own_claim(&rkey, &nonce)? {
                        return Ok(Some(token));
                    }
                    continue;
                }
                Err(failure) => return self.failed("cannot claim the key", &failure),
            };
            if new != 0 {
                return Ok(Some(new));
            }
            // The record changed between the read and the claim: decide
            // again. Every write changes the token or the revision, so a
            // record that reads the same again is not one idem wrote.
            if conflicted.replace((token, rev.clone())) == Some((token, rev)) {
                return self.target.fail(&format!(
                    "key {rkey} is not an idem record; it was left untouched"
                ));
            }
        }
    }

    /// The token of the record at `rkey` if it is the claim with `nonce`,
    /// still in progress.
    pub(super) fn own_claim(&mut self, rkey: &str, nonce: &str) -> Result<Option<i64>> {
        let (found, token, status): (Option<String>, Option<i64>, Option<String>) =
            self.exec("cannot claim the key", true, |c, _| {
                redis::cmd("HMGET")
                    .arg(rkey)
                    .arg("claim_nonce")
                    .arg("token")
                    .arg("status")
                    .query(c.like())
            })?;
        let ours = found.as_deref() == Some(nonce) && status.as_deref() == Some("in_progress");
        Ok(token.filter(|_| ours))
    }
}

/// A value no other claim of a key carries: the process's random hash
/// keys (from the OS) over this moment.
fn claim_nonce() -> String {
    use std::hash::BuildHasher;
    let state = std::collections::hash_map::RandomState::new();
    format!(
        "{:016x}",
        state.hash_one((std::process::id(), Clock::now().as_nanos()))
    )
}

/// Whether a call may have reached the server without its answer coming
/// back (or never left): a dropped connection, a time limit.
fn answer_lost(failure: &Failure) -> bool {
    match failure {
        Failure::Connect(_) => true,
        Failure::Call(e) => is_connection_error(e),
    }
}
