//! The final writes once COMMAND has run: what is left of the output, then
//! the outcome, within one budget that starts when COMMAND ends
//! (`final_writes_deadline`), retried on a shared store while a dropped
//! connection or a restarting server comes back (`finish_patiently`).

use anyhow::Result;
use std::time::{Duration, Instant};

/// How long idem keeps trying to write what is left once COMMAND has run —
/// the output still waiting, then the outcome — on a shared store: a
/// dropped connection or a restarting server must not lose the record.
/// One budget for both, as the README promises (`docker stop -t 30`).
pub const FINISH_PATIENCE: Duration = Duration::from_secs(30);

/// When the final writes must be done: `FINISH_PATIENCE` after the first
/// of them asked (the output's flush, else the outcome). Each attempt is
/// bounded by what is left of it.
pub fn final_writes_deadline() -> Instant {
    static DEADLINE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *DEADLINE.get_or_init(|| Instant::now() + FINISH_PATIENCE)
}

/// Why one attempt to record an outcome failed.
pub enum FinishFailure {
    /// The server refused the output (too large, out of memory): record the
    /// outcome without it.
    Output(String),
    /// The server is unreachable or failed: try again shortly.
    Retry(String),
}

/// Records an outcome on a shared store: `write(with_output, time_left)`
/// is tried, without the output once that is refused, and again with a
/// growing pause until `final_writes_deadline`; a try is never started
/// without at least `LAST_TRY` left, and is given no more than what is
/// left. Writing twice is harmless: each write names the claim's token.
/// `store` names the store in messages (no password).
pub fn finish_patiently(
    store: &str,
    mut write: impl FnMut(bool, Duration) -> std::result::Result<bool, FinishFailure>,
) -> Result<bool> {
    /// The least time worth a try: a round trip on a slow link.
    const LAST_TRY: Duration = Duration::from_millis(500);
    let deadline = final_writes_deadline();
    let mut pause = Duration::from_millis(100);
    let mut with_output = true;
    let mut warned = false;
    loop {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(LAST_TRY);
        match write(with_output, left) {
            Ok(ours) => return Ok(ours),
            Err(FinishFailure::Output(why)) if with_output => {
                crate::say::notice(format_args!(
                    "could not store the output ({why}); recording the outcome without it"
                ));
                with_output = false;
            }
            Err(FinishFailure::Output(why) | FinishFailure::Retry(why)) => {
                if Instant::now() + pause + LAST_TRY > deadline {
                    return crate::exit::fail(
                        crate::exit::Code::Internal,
                        format!(
                            "store {store}: cannot record the outcome: {why} (gave up after {})",
                            crate::text::duration(FINISH_PATIENCE)
                        ),
                    );
                }
                if !warned {
                    crate::say::notice(format_args!(
                        "store {store}: cannot record the outcome yet ({why}); retrying for up to {}",
                        crate::text::duration(deadline.saturating_duration_since(Instant::now()))
                    ));
                    warned = true;
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(2));
            }
        }
    }
}
