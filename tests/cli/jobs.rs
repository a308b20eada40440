//! Job control in a real interactive shell on a pseudo-terminal: Ctrl-Z
//! stops idem and its child together and gives the prompt back, `fg`
//! resumes both, and a background idem whose child reads the terminal
//! resumes after `fg`. A small Python program drives `bash -i` through
//! `pty.fork`, as a user at a keyboard would.

use crate::support::{bin, path_with_idem, pty::DRIVER, require_shared_store, Env};
use std::process::Command;

/// Types each `(text, wait_for)` step into `bash -i` on a pty and waits
/// (at most 20 s) until the terminal shows `wait_for`, which must not be
/// part of `text` (the terminal may echo it); `INSPECT` as the text prints
/// the record of key `k` instead. The prompt is `PS> `. Returns the transcript, or
/// panics with it when a step timed out.
fn drive(env: &Env, steps: &[(&str, &str)]) -> String {
    const STEPS: &str = r#"
steps = [tuple(s.split("\x1f", 1)) for s in sys.argv[1].split("\x1e")]
start(["bash", "--norc", "--noprofile", "-i"])
os.write(fd, b"stty -echo; PS1='P''S> '\n")
until("PS> ")
for text, token in steps:
    if text == "INSPECT":
        out = subprocess.run([os.environ["IDEM_BIN"], "inspect", "--json", "k"], capture_output=True)
        seen += b"\nINSPECT " + out.stdout + b"\n"
    else:
        os.write(fd, text.encode())
    until(token)
os.write(fd, b"exit\n")
sys.stdout.write(transcript())
"#;
    let steps: Vec<String> = steps.iter().map(|(t, w)| format!("{t}\x1f{w}")).collect();
    let out = Command::new("python3")
        .args(["-c", &format!("{DRIVER}{STEPS}"), &steps.join("\x1e")])
        .env("IDEM_DB", &env.db)
        .env("IDEM_BIN", bin())
        .env("WAIT_FOR_GO", WAIT_FOR_GO)
        .env("PATH", path_with_idem())
        .current_dir(env.dir.path())
        .output()
        .expect("python3 must be installed");
    let transcript = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{transcript}");
    transcript
}

/// A child that prints `started`, waits (forking nothing, so Ctrl-Z never
/// finds it half-way through a vfork) until the file `go` exists, then
/// prints `finished`.
const WAIT_FOR_GO: &str = "import os, time
print('started', flush=True)
while not os.path.exists('go'):
    time.sleep(0.05)
print('finished', flush=True)";

#[test]
fn ctrl_z_stops_idem_with_its_child_and_fg_resumes_both() {
    let env = Env::new();
    let transcript = drive(
        &env,
        &[
            (
                "idem run --key k -- python3 -c \"$WAIT_FOR_GO\"\n",
                "started",
            ),
            ("\x1a", "Stopped"),
            ("INSPECT", "in_progress"),
            ("touch go\n", "PS> "),
            ("fg\n", "finished"),
            ("echo rc=$((6*7))$?\n", "rc=420"),
            ("INSPECT", "completed"),
        ],
    );
    assert!(transcript.contains("INSPECT {"), "{transcript}");
}

#[test]
fn a_background_idem_whose_child_reads_the_terminal_resumes_after_fg() {
    let env = Env::new();
    drive(
        &env,
        &[
            (
                "idem run --key k -- sh -c 'read line; echo got $line' &\n",
                "PS> ",
            ),
            // Stopped once the child has read the terminal: looked for up
            // to 10 s (one look after 0.5 s failed on a loaded machine).
            (
                "for i in $(seq 100); do jobs | grep -q Stopped && break; sleep 0.1; done; jobs\n",
                "Stopped",
            ),
            ("fg\n", "idem run"),
            ("hello\n", "got hello"),
            ("echo rc=$((6*7))$?\n", "rc=420"),
        ],
    );
}

/// On a shared store, a job stopped with Ctrl-Z past its lease's stop
/// deadline is killed on `fg`, not resumed: another host may have taken
/// the key over meanwhile (SPEC.md "Leases").
#[test]
#[ignore = "needs a shared store: IDEM_TEST_BACKEND=postgres or redis"]
fn ctrl_z_past_the_lease_stop_deadline_is_killed_on_fg_not_resumed() {
    require_shared_store();
    let env = Env::new();
    let transcript = drive(
        &env,
        &[
            (
                "idem run --key k --lease 1s -- python3 -c \"$WAIT_FOR_GO\"\n",
                "started",
            ),
            ("\x1a", "Stopped"),
            // Past the stop deadline (0.73 s), with `go` there: a resumed
            // child would print `finished`.
            ("sleep 1.5; touch go; echo s''lept\n", "slept"),
            ("fg\n", "killed, not resumed"),
            ("echo rc=$((6*7))$?\n", "rc=42125"),
            ("INSPECT", "in_progress"),
        ],
    );
    assert!(
        transcript.contains("lost the lease on k: no renewal accepted for"),
        "{transcript}"
    );
    assert!(
        !transcript.lines().any(|line| line.trim() == "finished"),
        "{transcript}"
    );
}
