//! `Holder`: an `idem run` that holds a key until the test lets it go. Its
//! child counts its run in `n` and its attempt (`$IDEM_ATTEMPT`) in
//! `attempts`, marks itself running (a second execution at the same time
//! leaves a line in `violations`), prints `held`, writes its pid (its
//! process group) to `ready` and waits for the file `release`; then prints
//! `done`.
//! The holder is released and reaped, or killed with its child's group, when
//! dropped, so a failing test never leaves it behind; every wait on it is
//! bounded.

use super::{wait_for, Env};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long a released holder may take to finish.
const FINISH_WITHIN: Duration = Duration::from_secs(60);

pub struct Holder {
    idem: Option<Child>,
    dir: PathBuf,
    child_pid: i32,
}

impl Holder {
    /// The child's script: `release` is relative to the test's directory,
    /// idem's working directory.
    pub fn script(env: &Env) -> String {
        Holder::script_with(env, "echo held", "echo done")
    }

    /// The child's script with `before` in place of `echo held` (run before
    /// `ready` is written) and `after` in place of `echo done`.
    pub fn script_with(env: &Env, before: &str, after: &str) -> String {
        format!(
            "mkdir running 2>/dev/null || echo overlap >> violations; {}; \
             echo $IDEM_ATTEMPT >> attempts; {before}; echo $$ > ready.tmp; mv ready.tmp ready; \
             while [ ! -e release ]; do sleep 0.01; done; rmdir running; {after}",
            env.count_run("n")
        )
    }

    /// `idem run -k KEY EXTRA -- sh -c SCRIPT`, returned once the child is
    /// ready.
    #[track_caller]
    pub fn start(env: &Env, key: &str, extra: &[&str]) -> Holder {
        Holder::start_from(env, env.idem_std(), key, extra)
    }

    /// `start` with a prepared `idem` command (another store, another host).
    #[track_caller]
    pub fn start_from(env: &Env, idem: Command, key: &str, extra: &[&str]) -> Holder {
        Holder::start_running(env, idem, key, extra, &Holder::script(env))
    }

    /// `start_from` with another script, which writes its pid to `ready`
    /// once it holds the key (`script_with` makes one).
    #[track_caller]
    pub fn start_running(
        env: &Env,
        mut idem: Command,
        key: &str,
        extra: &[&str],
        script: &str,
    ) -> Holder {
        let ready = env.path("ready");
        let _ = std::fs::remove_file(&ready);
        let child = idem
            .args(["run", "-k", key])
            .args(extra)
            .args(["--", "sh", "-c", script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn idem");
        let mut holder = Holder {
            idem: Some(child),
            dir: env.dir.path().to_owned(),
            child_pid: 0,
        };
        wait_for(&ready);
        holder.child_pid = std::fs::read_to_string(&ready)
            .unwrap()
            .trim()
            .parse()
            .expect("a pid in ready");
        holder
    }

    /// The child's pid, also its process group.
    pub fn child_pid(&self) -> i32 {
        self.child_pid
    }

    /// SIGKILLs idem alone, as a crash of idem would (the OOM killer);
    /// returns once its watcher has killed its child's group and exited.
    pub fn crash_idem(&mut self) {
        super::kill_idem(self.idem.as_mut().expect("idem still held"));
    }

    /// Lets the child finish; returns idem's output once it exited.
    #[track_caller]
    pub fn release(mut self) -> Output {
        std::fs::write(self.dir.join("release"), "").unwrap();
        let mut idem = self.idem.take().unwrap();
        let deadline = Instant::now() + FINISH_WITHIN;
        while idem.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = idem.kill();
                panic!("a released holder did not finish within {FINISH_WITHIN:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        idem.wait_with_output().unwrap()
    }

    /// SIGKILLs idem, then its child's group, as a crash of both would;
    /// returns once both are gone.
    pub fn crash(mut self) {
        self.kill_both();
    }

    fn kill_both(&mut self) {
        if let Some(mut idem) = self.idem.take() {
            // idem first, or it could see its child die and record a failure;
            // then until its watcher is gone too (on SQLite it holds the
            // owner's lock until then).
            super::kill_idem(&mut idem);
            let _ = kill(Pid::from_raw(-self.child_pid), Signal::SIGKILL);
            // Bounded without panicking: this also runs in a failing test.
            let deadline = Instant::now() + FINISH_WITHIN;
            while group_alive(self.child_pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

/// Whether a process of group `pgid` is alive. Zombies do not count: the
/// orphans' reaper (PID 1 of a container) may take its time.
fn group_alive(pgid: i32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries.flatten().any(|entry| {
        std::fs::read_to_string(entry.path().join("stat")).is_ok_and(|stat| {
            // After the command name: state, ppid, pgrp.
            let fields: Vec<&str> = stat[stat.rfind(')').map_or(0, |at| at + 2)..]
                .splitn(4, ' ')
                .collect();
            fields.len() == 4 && fields[0] != "Z" && fields[2] == pgid.to_string()
        })
    })
}

impl Drop for Holder {
    fn drop(&mut self) {
        self.kill_both();
    }
}
