//! The running command's lifecycle as named states, fed by messages.
//!
//! After its gate opens, COMMAND is `Running`; job control may make it
//! `Suspended` (its group stopped, idem stopped with it); `--timeout`, a
//! lease that ran out, or a renewal refused make it `Stopping` (SIGTERM
//! sent to its group, SIGKILL due at a set moment) and then `Killed`.
//! Every message comes with the moment it is handled and the lease as the
//! keeper last saw it; `CommandState::on` answers with what to do. The
//! machine does no I/O, so its rules (SPEC.md "Leases", "Running the
//! child") are unit-tested here; `supervise` feeds it and carries the
//! actions out.

use crate::lease::{Clock, Lease};
use nix::sys::signal::Signal;
use std::time::Duration;

/// Grace between SIGTERM and SIGKILL at `--timeout`.
const TIMEOUT_GRACE: Duration = Duration::from_secs(5);

/// The lease as the keeper last saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseView {
    pub lease: Lease,
    /// When the last request the store accepted (claim or renewal) was sent.
    pub accepted: Clock,
    /// A renewal or journal append found another token: another caller
    /// took the key over.
    pub refused: bool,
}

impl LeaseView {
    /// When COMMAND must be stopped unless a renewal is accepted first.
    pub fn stop_at(&self) -> Clock {
        self.accepted.after(self.lease.stop_after())
    }

    /// Why the claim is lost at `now`, if it is.
    pub fn lost(&self, now: Clock) -> Option<LeaseLoss> {
        if self.refused {
            Some(LeaseLoss::Refused)
        } else if now >= self.stop_at() {
            Some(LeaseLoss::RunOut {
                silent_for: now.since(self.accepted),
            })
        } else {
            None
        }
    }

    /// When the group must be dead after a loss found at `now`.
    fn kill_at(&self, loss: LeaseLoss, now: Clock) -> Clock {
        match loss {
            LeaseLoss::Refused => now.after(self.lease.grace()),
            LeaseLoss::RunOut { .. } => self.accepted.after(self.lease.kill_after()).max(now),
        }
    }
}

/// Why COMMAND was stopped for its lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseLoss {
    /// No renewal sent within the last `0.9·L − G` was accepted.
    RunOut { silent_for: Duration },
    /// The store answered with another token.
    Refused,
}

/// Why COMMAND is being stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    Timeout,
    Lease(LeaseLoss),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandState {
    Running,
    /// COMMAND's group stopped (job control); idem stops itself with it.
    Suspended,
    /// SIGTERM went to the group; SIGKILL follows at `kill_at`.
    Stopping {
        why: Stop,
        kill_at: Clock,
    },
    /// SIGKILL went to the group.
    Killed {
        why: Stop,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message {
    /// Time passed (a deadline, output, a signal forwarded).
    Tick,
    /// COMMAND's group stopped.
    GroupStopped,
    /// idem got SIGCONT.
    Continued,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send this signal to COMMAND's group.
    Signal(Signal),
    /// Stop idem like the job it is (`Terminal::child_stopped`).
    SuspendIdem,
    /// Resume COMMAND's group (`Terminal::continued`).
    Resume,
    /// The job was stopped past its lease's stop deadline: say that
    /// COMMAND was killed, not resumed.
    SayKilledNotResumed,
}

/// The machine: its state and the one deadline it was given.
#[derive(Debug)]
pub struct Machine {
    pub state: CommandState,
    timeout_at: Option<Clock>,
}

impl Machine {
    pub fn new(started: Clock, timeout: Option<Duration>) -> Machine {
        Machine {
            state: CommandState::Running,
            timeout_at: timeout.map(|t| started.after(t)),
        }
    }

    /// Handles `message` at `now`, with the lease as seen (None: the store
    /// keeps no lease).
    pub fn on(&mut self, message: Message, now: Clock, lease: Option<LeaseView>) -> Vec<Action> {
        let mut actions = Vec::new();
        let loss = lease.and_then(|view| Some((view, view.lost(now)?)));
        match (self.state, message) {
            (CommandState::Running, Message::GroupStopped) => {
                self.state = CommandState::Suspended;
                actions.push(Action::SuspendIdem);
            }
            (CommandState::Suspended, Message::Continued) => {
                if let Some((_, loss)) = loss {
                    // A stopped group never runs another instruction.
                    self.state = CommandState::Killed {
                        why: Stop::Lease(loss),
                    };
                    actions.push(Action::Signal(Signal::SIGKILL));
                    actions.push(Action::SayKilledNotResumed);
                    return actions;
                }
                self.state = CommandState::Running;
                actions.push(Action::Resume);
            }
            _ => {}
        }
        self.check_deadlines(now, loss, &mut actions);
        actions
    }

    /// When the machine next needs a `Tick`, if ever.
    pub fn wake_at(&self, lease: Option<LeaseView>) -> Option<Clock> {
        let lease_stop = lease.map(|view| view.stop_at());
        match self.state {
            CommandState::Running | CommandState::Suspended => {
                [self.timeout_at, lease_stop].into_iter().flatten().min()
            }
            CommandState::Stopping {
                why: Stop::Timeout,
                kill_at,
            } => Some(lease_stop.map_or(kill_at, |at| at.min(kill_at))),
            CommandState::Stopping { kill_at, .. } => Some(kill_at),
            CommandState::Killed { .. } => None,
        }
    }

    /// Whether SIGTERM went to the group and SIGKILL is still due: the
    /// group is killed whatever its leader did meanwhile.
    pub fn kill_pending(&self) -> bool {
        matches!(self.state, CommandState::Stopping { .. })
    }

    /// The lease loss COMMAND was stopped for, if any.
    pub fn lease_lost(&self) -> Option<LeaseLoss> {
        match self.state {
            CommandState::Stopping {
                why: Stop::Lease(loss),
                ..
            }
            | CommandState::Killed {
                why: Stop::Lease(loss),
            } => Some(loss),
            _ => None,
        }
    }

    pub fn timed_out(&self) -> bool {
        matches!(
            self.state,
            CommandState::Stopping {
                why: Stop::Timeout,
                ..
            } | CommandState::Killed { why: Stop::Timeout }
        )
    }

    fn check_deadlines(
        &mut self,
        now: Clock,
        loss: Option<(LeaseView, LeaseLoss)>,
        actions: &mut Vec<Action>,
    ) {
        match self.state {
            CommandState::Running | CommandState::Suspended => {
                let stopped = self.state == CommandState::Suspended;
                let (why, kill_at) = if let Some((view, loss)) = loss {
                    (Stop::Lease(loss), view.kill_at(loss, now))
                } else if self.timeout_at.is_some_and(|at| now >= at) {
                    (Stop::Timeout, now.after(TIMEOUT_GRACE))
                } else {
                    return;
                };
                // SIGTERM would wait in a stopped group until it is
                // continued, which idem will not do now.
                if stopped || now >= kill_at {
                    self.state = CommandState::Killed { why };
                    actions.push(Action::Signal(Signal::SIGKILL));
                    if stopped && matches!(why, Stop::Lease(_)) {
                        actions.push(Action::SayKilledNotResumed);
                    }
                } else {
                    self.state = CommandState::Stopping { why, kill_at };
                    actions.push(Action::Signal(Signal::SIGTERM));
                }
            }
            CommandState::Stopping { why, kill_at } => {
                // A lease lost while a timeout stops COMMAND: the lease's
                // deadline wins, and so does its exit.
                let (why, kill_at) = match (why, loss) {
                    (Stop::Timeout, Some((view, loss))) => {
                        (Stop::Lease(loss), kill_at.min(view.kill_at(loss, now)))
                    }
                    _ => (why, kill_at),
                };
                if now >= kill_at {
                    self.state = CommandState::Killed { why };
                    actions.push(Action::Signal(Signal::SIGKILL));
                } else {
                    self.state = CommandState::Stopping { why, kill_at };
                }
            }
            CommandState::Killed { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Duration = Duration::from_secs(30);

    fn at(secs: f64) -> Clock {
        Clock::from_nanos(1_000_000_000_000).after(Duration::from_secs_f64(secs))
    }

    /// The lease as seen when the last accepted send was at `accepted` s.
    fn view(accepted: f64) -> Option<LeaseView> {
        Some(LeaseView {
            lease: Lease::new(L),
            accepted: at(accepted),
            refused: false,
        })
    }

    #[test]
    fn a_lease_renewed_in_time_never_stops_the_command() {
        let mut m = Machine::new(at(0.0), None);
        for t in 0..100 {
            let now = f64::from(t);
            // Renewals accepted every 10 s, sent 10 s apart.
            let accepted = (now / 10.0).floor() * 10.0;
            assert!(m.on(Message::Tick, at(now), view(accepted)).is_empty());
        }
        assert_eq!(m.state, CommandState::Running);
    }

    #[test]
    fn no_renewal_accepted_stops_at_22s_and_kills_at_27s() {
        let mut m = Machine::new(at(0.0), None);
        assert!(m.on(Message::Tick, at(21.9), view(0.0)).is_empty());
        assert_eq!(m.wake_at(view(0.0)), Some(at(22.0)));
        assert_eq!(
            m.on(Message::Tick, at(22.0), view(0.0)),
            [Action::Signal(Signal::SIGTERM)]
        );
        assert_eq!(m.wake_at(view(0.0)), Some(at(27.0)));
        // A renewal accepted now changes nothing: the claim is given up.
        assert!(m.on(Message::Tick, at(26.9), view(20.0)).is_empty());
        assert_eq!(
            m.on(Message::Tick, at(27.0), view(20.0)),
            [Action::Signal(Signal::SIGKILL)]
        );
        assert_eq!(
            m.lease_lost(),
            Some(LeaseLoss::RunOut {
                silent_for: Duration::from_secs(22)
            })
        );
        assert!(m.on(Message::Tick, at(40.0), view(0.0)).is_empty());
    }

    #[test]
    fn a_deadline_noticed_late_kills_at_once() {
        let mut m = Machine::new(at(0.0), None);
        assert_eq!(
            m.on(Message::Tick, at(28.0), view(0.0)),
            [Action::Signal(Signal::SIGKILL)]
        );
    }

    #[test]
    fn a_refused_renewal_stops_at_once_and_kills_a_grace_later() {
        let mut m = Machine::new(at(0.0), None);
        let refused = view(10.0).map(|v| LeaseView { refused: true, ..v });
        assert_eq!(
            m.on(Message::Tick, at(12.0), refused),
            [Action::Signal(Signal::SIGTERM)]
        );
        assert_eq!(m.wake_at(refused), Some(at(17.0)));
        assert_eq!(
            m.on(Message::Tick, at(17.0), refused),
            [Action::Signal(Signal::SIGKILL)]
        );
        assert_eq!(m.lease_lost(), Some(LeaseLoss::Refused));
    }

    #[test]
    fn a_job_continued_before_its_deadline_resumes() {
        let mut m = Machine::new(at(0.0), None);
        assert_eq!(
            m.on(Message::GroupStopped, at(1.0), view(0.0)),
            [Action::SuspendIdem]
        );
        assert_eq!(
            m.on(Message::Continued, at(5.0), view(0.0)),
            [Action::Resume]
        );
        assert_eq!(m.state, CommandState::Running);
    }

    #[test]
    fn a_job_continued_past_its_deadline_is_killed_not_resumed() {
        let mut m = Machine::new(at(0.0), None);
        m.on(Message::GroupStopped, at(1.0), view(0.0));
        assert_eq!(
            m.on(Message::Continued, at(23.0), view(0.0)),
            [Action::Signal(Signal::SIGKILL), Action::SayKilledNotResumed]
        );
        assert!(m.lease_lost().is_some());
    }

    #[test]
    fn a_stopped_group_whose_lease_runs_out_is_killed_not_terminated() {
        let mut m = Machine::new(at(0.0), None);
        m.on(Message::GroupStopped, at(1.0), view(0.0));
        assert_eq!(
            m.on(Message::Tick, at(22.0), view(0.0)),
            [Action::Signal(Signal::SIGKILL), Action::SayKilledNotResumed]
        );
        // The SIGCONT that woke idem resumes nothing.
        assert!(m.on(Message::Continued, at(22.0), view(0.0)).is_empty());
    }

    #[test]
    fn a_timeout_stops_and_kills_five_seconds_later_and_a_lease_loss_overrides_it() {
        let mut m = Machine::new(at(0.0), Some(Duration::from_secs(3)));
        assert_eq!(
            m.on(Message::Tick, at(3.0), None),
            [Action::Signal(Signal::SIGTERM)]
        );
        assert!(m.timed_out());
        assert_eq!(
            m.on(Message::Tick, at(8.0), None),
            [Action::Signal(Signal::SIGKILL)]
        );

        let mut m = Machine::new(at(0.0), Some(Duration::from_secs(20)));
        m.on(Message::Tick, at(20.0), view(0.0));
        assert!(m.timed_out());
        // The lease's stop deadline (22 s) passes during the timeout's
        // grace: the run counts as a lost lease, and the earlier of the
        // two kill times (the timeout's 25 s, not the lease's 27 s) stands.
        assert_eq!(
            m.on(Message::Tick, at(22.5), view(0.0)),
            Vec::<Action>::new()
        );
        assert!(m.lease_lost().is_some());
        assert_eq!(m.wake_at(view(0.0)), Some(at(25.0)));
    }

    #[test]
    fn without_a_lease_only_the_timeout_stops() {
        let mut m = Machine::new(at(0.0), None);
        assert!(m.on(Message::Tick, at(1e6), None).is_empty());
        assert_eq!(m.wake_at(None), None);
    }
}
