//! The terminal and job control, as a shell job would see them.
//!
//! In an interactive shell idem gives the terminal's foreground to the
//! child's process group while it runs, so Ctrl-C reaches the child once
//! (and not through idem as well), and takes it back at the end. Because
//! the child has its own group, Ctrl-Z stops only the child: idem notices
//! (waitpid reports it stopped), takes the terminal back and stops its own
//! group, so the shell sees its job stop and prints its prompt. On SIGCONT
//! (`fg` or `bg`) idem resumes the child's group, giving it the terminal
//! again when idem is in the foreground. A background idem whose child
//! reads the terminal stops the same way and resumes after `fg`. On a
//! shared store a job continued past its lease's stop deadline is not
//! resumed: the state machine (`state`) has its group killed instead.

use nix::sys::signal::{kill, Signal};
use nix::unistd::{getpgrp, isatty, tcgetpgrp, tcsetpgrp, Pid};
use std::os::fd::{AsFd, AsRawFd};

pub struct Terminal {
    /// idem's process group, when stdin is a terminal of idem's session
    /// and COMMAND inherits it: job control applies.
    ours: Option<Pid>,
    /// Whether idem handed the foreground to the child (and so takes it back).
    handed: bool,
    /// Whether idem stopped itself because the child stopped.
    stopped: bool,
}

impl Terminal {
    /// Hands the foreground to `child` if idem has it.
    pub fn hand_to(child: Pid, stdin_inherited: bool) -> Terminal {
        let stdin = std::io::stdin();
        let fd = stdin.as_fd();
        let interactive =
            stdin_inherited && isatty(fd.as_raw_fd()).unwrap_or(false) && tcgetpgrp(fd).is_ok();
        let mut terminal = Terminal {
            ours: interactive.then(getpgrp),
            handed: false,
            stopped: false,
        };
        terminal.give(child);
        terminal
    }

    /// Gives the foreground to `child` when idem's group holds it.
    fn give(&mut self, child: Pid) {
        let Some(ours) = self.ours else { return };
        let stdin = std::io::stdin();
        if tcgetpgrp(stdin.as_fd()).is_ok_and(|fg| fg == ours)
            && tcsetpgrp(stdin.as_fd(), child).is_ok()
        {
            self.handed = true;
        }
    }

    /// The child's group stopped (Ctrl-Z, or it read the terminal from the
    /// background): stop idem's group too, like the job it is.
    pub fn child_stopped(&mut self) {
        let Some(ours) = self.ours else { return };
        self.take_back();
        self.stopped = true;
        // SIGTSTP is not blocked: idem stops here until SIGCONT.
        let _ = kill(Pid::from_raw(-ours.as_raw()), Signal::SIGTSTP);
    }

    /// idem got SIGCONT: if it had stopped for the child, resume the child
    /// (in the foreground when idem is).
    pub fn continued(&mut self, child: Pid) {
        if !std::mem::take(&mut self.stopped) {
            return;
        }
        self.give(child);
        let _ = kill(Pid::from_raw(-child.as_raw()), Signal::SIGCONT);
    }

    /// idem got SIGCONT, but COMMAND's group is being killed rather than
    /// resumed: idem goes on alone, the terminal stays with it.
    pub fn continued_without_child(&mut self) {
        self.stopped = false;
    }

    fn take_back(&mut self) {
        if let (Some(ours), true) = (self.ours, std::mem::take(&mut self.handed)) {
            // SIGTTOU is blocked, so a background idem may take it back.
            let _ = tcsetpgrp(std::io::stdin().as_fd(), ours);
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        self.take_back();
    }
}
