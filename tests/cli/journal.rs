//! The output journal: replay, attached waiters and `idem logs` keep the
//! order in which the run wrote stdout and stderr, a waiter shares the run
//! it attached to, and a crashed run's output can still be read.

use crate::support::{bin, run_sh, wait_until, Env, Holder};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// `idem ARGS` with stdout and stderr both into `out` (`> out 2>&1`), as a
/// webhook server or a CI log reads them.
fn merged(env: &Env, out: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("sh");
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("IDEM_") {
            cmd.env_remove(name);
        }
    }
    cmd.env("IDEM_DB", &env.db)
        .arg("-c")
        .arg("out=$1; shift; exec \"$@\" > \"$out\" 2>&1")
        .arg("sh")
        .arg(out)
        .arg(bin())
        .args(args)
        .current_dir(env.dir.path())
        .stdin(Stdio::null());
    cmd
}

/// Runs `idem ARGS` merged; returns (status, what it wrote).
fn run_merged(env: &Env, args: &[&str]) -> (i32, String) {
    let call = env.test().args(args).merged().status_any().stdout_any();
    let ran = call.run();
    (ran.code(), ran.stdout())
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// A holder's script that writes stderr, stdout, stderr with pauses before
/// it is ready, and once more after its release; exits 3.
fn script(env: &Env) -> String {
    Holder::script_with(
        env,
        "echo e1 >&2; sleep 0.05; echo o1; sleep 0.05; echo e2 >&2",
        "echo o2; exit 3",
    )
}

#[test]
fn replay_and_logs_keep_the_interleaving_through_2_and_1() {
    let env = Env::new();
    let script = "echo e1 >&2; sleep 0.05; echo o1; sleep 0.05; echo e2 >&2";
    let run = ["-q", "run", "-k", "hook", "--", "sh", "-c", script];
    let expected = "e1\no1\ne2\n";
    for args in [
        &run[..],
        &run,
        &["logs", "hook"],
        &["logs", "--follow", "hook"],
    ] {
        env.test().args(args).merged().stdout(expected).run();
    }
}

#[test]
fn a_cap_hit_mid_journal_keeps_the_order_of_what_was_stored() {
    let env = Env::new();
    let script = "printf abc; sleep 0.05; printf def >&2; sleep 0.05; printf ghi; sleep 0.05; printf jkl >&2";
    let run = || env.test().args(["-q", "run", "-k", "cap"]);
    run()
        .args(["--max-output", "5"])
        .sh(script)
        .merged()
        .stdout("abcdefghijkl")
        .run();
    run().sh(script).merged().stdout("abcdefghjk").run();
    let out = env
        .test()
        .args(["logs", "cap"])
        .merged()
        .stdout_any()
        .run()
        .stdout();
    assert!(
        out.starts_with("abcdefghjk") && out.contains("idem: "),
        "{out}"
    );
}

#[test]
fn twenty_waiters_attach_live_and_share_the_output_and_failure() {
    let env = Env::new();
    let script = script(&env);
    let run = run_sh(&["-k", "w", "--on-duplicate", "wait"], &script);
    let owner = Holder::start_running(
        &env,
        merged(&env, &env.path("owner.out"), &[]),
        "w",
        &["--on-duplicate", "wait"],
        &script,
    );
    let waiters: Vec<Child> = (0..20)
        .map(|i| {
            merged(&env, &env.path(&format!("w{i}.out")), &run)
                .spawn()
                .unwrap()
        })
        .collect();
    // Attached: each shows the output so far while the run goes on.
    for i in 0..20 {
        let out = env.path(&format!("w{i}.out"));
        wait_until("a waiter to show the output so far", || {
            read(&out) == "e1\no1\ne2\n"
        });
    }
    assert_eq!(owner.release().status.code(), Some(3));
    let expected = "e1\no1\ne2\no2\n";
    assert_eq!(read(&env.path("owner.out")), expected);
    for (i, mut waiter) in waiters.into_iter().enumerate() {
        assert_eq!(waiter.wait().unwrap().code(), Some(3), "waiter {i}");
        assert_eq!(read(&env.path(&format!("w{i}.out"))), expected);
    }
    assert_eq!(env.count("n"), 1, "one execution for all");
    // A call after the failure runs again.
    std::fs::remove_file(env.path("ready")).unwrap();
    assert_eq!(run_merged(&env, &run).0, 3);
    assert_eq!(env.count("n"), 2);
}

#[test]
fn logs_follow_ends_with_the_run_and_its_status() {
    let env = Env::new();
    let script = script(&env);
    let owner = Holder::start_running(&env, env.idem_std(), "f", &[], &script);
    // The journal is at most about a second behind the run.
    wait_until("logs of a run in progress", || {
        run_merged(&env, &["logs", "f"]) == (0, "e1\no1\ne2\n".into())
    });
    let out = env.path("follow.out");
    let mut follower = merged(&env, &out, &["logs", "-f", "f"]).spawn().unwrap();
    wait_until("logs -f to show the output so far", || {
        read(&out) == "e1\no1\ne2\n"
    });
    assert_eq!(owner.release().status.code(), Some(3));
    assert_eq!(follower.wait().unwrap().code(), Some(3));
    assert_eq!(read(&out), "e1\no1\ne2\no2\n");
    // A finished record: -f exits 0 at once; no record: exit 1.
    assert_eq!(run_merged(&env, &["logs", "-f", "f"]).0, 0);
    let (code, said) = run_merged(&env, &["logs", "nope"]);
    assert_eq!(code, 1);
    assert!(
        said.starts_with("idem: ") && said.contains("no record"),
        "{said}"
    );
}

/// Starts a holder whose first attempt prints before it is ready and then
/// waits; later attempts print `again` at once.
fn start_crashing_owner(env: &Env, key: &str) -> (Holder, String) {
    let script = format!(
        "if [ \"$IDEM_ATTEMPT\" = 1 ]; then {}; else {}; echo again; fi",
        Holder::script_with(env, "echo e1 >&2; sleep 0.05; echo o1", "true"),
        env.count_run("again")
    );
    let owner = Holder::start_running(env, env.idem_std(), key, &[], &script);
    // What it printed is in the journal (at most about a second behind).
    wait_until("the journal", || {
        run_merged(env, &["logs", key]) == (0, "e1\no1\n".into())
    });
    (owner, script)
}

#[test]
fn logs_of_a_crashed_run_show_what_it_printed() {
    let env = Env::new();
    let (owner, _) = start_crashing_owner(&env, "c");
    owner.crash();
    let logs = |args: &[&str]| env.test().arg("logs").args(args).merged();
    logs(&["c"]).stdout("e1\no1\n").run();
    let out = logs(&["-f", "c"]).status(77).stdout_any().run().stdout();
    assert!(
        out.starts_with("e1\no1\nidem: ") && out.contains("crashed"),
        "{out}"
    );
}

#[test]
fn waiters_of_a_crashed_run_rerun_it_once_and_attach_to_the_new_attempt() {
    let env = Env::new();
    let (owner, script) = start_crashing_owner(&env, "r");
    let run = run_sh(&["-k", "r", "--on-duplicate", "wait"], &script);
    let waiters: Vec<Child> = (0..3)
        .map(|i| {
            merged(&env, &env.path(&format!("w{i}.out")), &run)
                .spawn()
                .unwrap()
        })
        .collect();
    for i in 0..3 {
        let out = env.path(&format!("w{i}.out"));
        wait_until("a waiter to attach", || read(&out) == "e1\no1\n");
    }
    owner.crash();
    for (i, mut waiter) in waiters.into_iter().enumerate() {
        assert_eq!(waiter.wait().unwrap().code(), Some(0), "waiter {i}");
        let out = read(&env.path(&format!("w{i}.out")));
        let notice: Vec<&str> = out.lines().filter(|l| l.starts_with("idem: ")).collect();
        assert_eq!(notice.len(), 1, "waiter {i}: {out}");
        assert!(notice[0].contains("attempt 1 crashed"), "{out}");
        assert_eq!(
            out.replace(&format!("{}\n", notice[0]), ""),
            "e1\no1\nagain\n"
        );
    }
    assert_eq!(env.count("again"), 1, "one waiter took over");
}

#[test]
fn a_waiter_of_a_crashed_run_under_block_exits_77_after_its_output() {
    let env = Env::new();
    let (owner, script) = start_crashing_owner(&env, "b");
    let out = env.path("w.out");
    let args = run_sh(
        &["-k", "b", "--on-duplicate", "wait", "--on-crash", "block"],
        &script,
    );
    let mut waiter = merged(&env, &out, &args).spawn().unwrap();
    wait_until("the waiter to attach", || read(&out) == "e1\no1\n");
    owner.crash();
    assert_eq!(waiter.wait().unwrap().code(), Some(77));
    let said = read(&out);
    assert!(
        said.starts_with("e1\no1\nidem: ") && said.contains("crashed"),
        "{said}"
    );
    assert_eq!(env.count("again"), 0);
}

/// What idem leaves of a pipe's buffer size after it wrote `args`'s output
/// into it: (size before, size after, bytes read). `preset` grows the pipe
/// first, as a caller may have.
fn pipe_size_after(env: &Env, args: &[&str], preset: Option<usize>) -> (usize, usize, usize) {
    use nix::fcntl::{fcntl, FcntlArg};
    use std::io::Read;
    use std::os::fd::AsRawFd;
    let (read_end, write_end) = nix::unistd::pipe().unwrap();
    if let Some(size) = preset {
        fcntl(read_end.as_raw_fd(), FcntlArg::F_SETPIPE_SZ(size as i32)).unwrap();
    }
    let size = |fd: &std::os::fd::OwnedFd| fcntl(fd.as_raw_fd(), FcntlArg::F_GETPIPE_SZ).unwrap();
    let before = size(&read_end) as usize;
    let mut child = env
        .idem_std()
        .args(args)
        .stdout(Stdio::from(write_end))
        .spawn()
        .unwrap();
    let mut reader = std::fs::File::from(read_end.try_clone().unwrap());
    let mut bytes = Vec::new();
    reader.read_to_end(&mut bytes).unwrap();
    assert!(child.wait().unwrap().success());
    (before, size(&read_end) as usize, bytes.len())
}

#[test]
fn a_big_replay_grows_the_pipe_it_writes_to_and_a_small_one_leaves_it_alone() {
    let env = Env::new();
    let big = [
        "-q",
        "run",
        "-k",
        "big",
        "--",
        "sh",
        "-c",
        "head -c 3000000 /dev/zero",
    ];
    env.run_ok(&big);
    let one_mib = 1 << 20;
    let grown = 256 * 1024;
    // The default pipe (64 KiB): the replay and `logs` make it bigger.
    for args in [&big[..], &["logs", "big"]] {
        let (before, after, read) = pipe_size_after(&env, args, None);
        assert!(before < grown, "{before}");
        assert_eq!((after, read), (grown, 3_000_000), "{args:?}");
    }
    // A bigger pipe is never made smaller.
    assert_eq!(
        pipe_size_after(&env, &big, Some(one_mib)),
        (one_mib, one_mib, 3_000_000)
    );
    // A small output costs no system call: the pipe stays as it was.
    let small = ["-q", "run", "-k", "small", "--", "echo", "hi"];
    env.run_ok(&small);
    let (before, after, read) = pipe_size_after(&env, &small, None);
    assert_eq!((after, read), (before, 3));
}
