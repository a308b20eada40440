//! A child started before the claim and held at its gate.
//!
//! The claim records the child (its pid, group and start time) in the same
//! write that takes the key: one commit, and no moment when a claim has no
//! child to show. Until the gate opens the child runs nothing but fsync the
//! store's directory (`exec`); a child whose gate never opens (the claim
//! went to someone else, or failed) is killed and reaped when dropped.
//! The child starts its watcher first thing (`watcher`), while idem goes
//! on to the claim: whatever ends idem from then on, the child's group
//! dies with it.

use super::exec::{resolve, ChildFds, Exec, SpawnError};
use super::Spec;
use crate::owner::{start_time, ticks_since_boot, ChildId};
use anyhow::{Context, Result};
use nix::fcntl::OFlag;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::{pipe2, Pid};
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};

/// The parent's ends of the child's pipes.
pub(super) struct Pipes {
    pub(super) stdout: OwnedFd,
    pub(super) stderr: OwnedFd,
    /// Closed on a successful exec; four bytes of errno on a failed one.
    pub(super) status: OwnedFd,
    pub(super) gate: OwnedFd,
}

/// Lets COMMAND start, with `late` (the values of `Spec::late`, in order).
pub(super) fn open_gate(gate: OwnedFd, late: &[String]) -> Result<()> {
    File::from(gate)
        .write_all(&super::exec::gate_message(late))
        .context("open the gate")
}

/// A started child waiting at its gate.
pub struct Gated {
    id: ChildId,
    /// Taken when the gate opens; while here, dropping kills the child.
    pub(super) pipes: Option<Pipes>,
    /// Set once the supervisor waits for the child (its gate opened):
    /// until then dropping kills and reaps it.
    pub(super) settled: bool,
}

impl Gated {
    /// Starts the child of `spec`, held at its gate; `Ok(Err(_))` when
    /// COMMAND cannot be started at all (nothing was started).
    pub fn start(spec: &Spec<'_>) -> Result<std::result::Result<Gated, SpawnError>> {
        let program = match resolve(&spec.argv[0]) {
            Ok(path) => path,
            Err(e) => {
                // No child to fsync the directory: the claim of a command
                // that cannot start is recorded too (as failed), so do it
                // here, where it would have.
                if let Some(dir) = &spec.sync_dir {
                    let _ = dir.sync_all();
                }
                return Ok(Err(e));
            }
        };
        let exec = Exec::prepare(&program, spec.argv, &spec.env, &spec.late)?;
        let (out_r, out_w) = pipe2(OFlag::O_CLOEXEC).context("pipe")?;
        let (err_r, err_w) = pipe2(OFlag::O_CLOEXEC).context("pipe")?;
        let (gate_r, gate_w) = pipe2(OFlag::O_CLOEXEC).context("pipe")?;
        let (status_r, status_w) = pipe2(OFlag::O_CLOEXEC).context("pipe")?;
        let line = spec.guard.line()?;
        let before = ticks_since_boot();
        let pid = exec.start(&ChildFds {
            stdin: spec.stdin.map(AsFd::as_fd),
            stdout: out_w.as_fd(),
            stderr: err_w.as_fd(),
            gate: gate_r.as_fd(),
            gate_writer: gate_w.as_fd(),
            status: status_w.as_fd(),
            sync_dir: spec.sync_dir.as_ref().map(AsFd::as_fd),
            watcher: spec.guard.post(&line),
        })?;
        let after = ticks_since_boot();
        spec.guard.arm(line);
        // Both sides set the group, so neither can run ahead of it.
        let _ = nix::unistd::setpgid(pid, pid);
        let raw = i64::from(pid.as_raw());
        let gated = Gated {
            id: ChildId {
                pid: raw,
                pgid: raw,
                // The fork's tick, when it fell within one (about 98 times
                // in 100); else what /proc says.
                start: before
                    .filter(|_| before == after)
                    .or_else(|| start_time(raw))
                    .unwrap_or(0),
            },
            pipes: Some(Pipes {
                stdout: out_r,
                stderr: err_r,
                status: status_r,
                gate: gate_w,
            }),
            settled: false,
        };
        Ok(Ok(gated))
    }

    /// Who the claim records.
    pub fn id(&self) -> ChildId {
        self.id
    }

    /// The child's pid (its group is the same number).
    pub(super) fn pid(&self) -> Pid {
        Pid::from_raw(self.id.pid as i32)
    }
}

impl Drop for Gated {
    /// A child whose gate never opened is killed and reaped: it runs
    /// nothing.
    fn drop(&mut self) {
        if !self.settled {
            let _ = kill(self.pid(), Signal::SIGKILL);
            let _ = waitpid(self.pid(), None);
        }
    }
}
