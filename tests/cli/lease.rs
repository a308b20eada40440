//! The lease as a safety mechanism on the shared stores (SPEC.md
//! "Leases"), without network faults: a stalled store, a locked table, a
//! slow claim answer, a job stopped past its deadline. An execution of
//! COMMAND holds an flock on `running` for as long as any process of it
//! lives, so a second execution that overlaps it logs `OVERLAP`. The
//! second caller runs as another host (`idem_on_host`, needs root), where
//! only the lease tells whether the owner lives. The network-namespace
//! fault tests (black holes, delays) are elsewhere.

use crate::support::{assert_code, require_shared_store, sh, wait_for, wait_until, Env};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// COMMAND for the overlap tests: takes the `running` lock (or logs the
/// overlap), says it started, holds the key for 8 s on its first attempt,
/// says it ended.
const EXECUTION: &str = "exec 9>running; flock -n 9 || echo OVERLAP >> log; \
    echo \"start $IDEM_ATTEMPT\" >> log; touch ready; \
    if [ \"$IDEM_ATTEMPT\" = 1 ]; then sleep 8; fi; echo \"end $IDEM_ATTEMPT\" >> log";

fn spawn(mut idem: std::process::Command, args: &[&str], script: &str) -> Child {
    idem.args(["run", "-k", "k"])
        .args(args)
        .arg("--")
        .args(sh(script))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn log(env: &Env) -> String {
    std::fs::read_to_string(env.path("log")).unwrap_or_default()
}

/// A stall longer than the lease: the owner stops COMMAND before another
/// host can see the lease run out, and that host's run never overlaps it.
fn no_overlap_across_a_stall(env: &Env, stall: impl FnOnce()) {
    let owner = spawn(env.idem_std(), &["--lease", "2s"], EXECUTION);
    wait_for(&env.path("ready"));
    std::fs::remove_file(env.path("ready")).unwrap();
    stall();
    let other = spawn(
        env.idem_on_host("other"),
        &["--lease", "2s", "--on-duplicate", "wait"],
        EXECUTION,
    );
    let owner = owner.wait_with_output().unwrap();
    let other = other.wait_with_output().unwrap();
    assert_code(&owner, 125);
    let said = String::from_utf8_lossy(&owner.stderr);
    assert!(
        said.contains("idem: lost the lease on k: no renewal accepted for ")
            && said.contains("was stopped"),
        "{said}"
    );
    assert_code(&other, 0);
    assert_eq!(log(env), "start 1\nstart 2\nend 2\n");
}

/// Nested steps (`idem run` inside COMMAND) use the parent's store and
/// lease: COMMAND gets `IDEM_DB` and `IDEM_LEASE`, and `IDEM_LEASE` is what
/// `--lease` defaults to.
#[test]
fn command_gets_the_store_and_the_lease_for_its_nested_steps() {
    let env = Env::new();
    let shown = env.run_ok(&[
        "run",
        "-k",
        "k",
        "--lease",
        "1m 30s",
        "--",
        "sh",
        "-c",
        "echo \"$IDEM_LEASE|$IDEM_DB\"",
    ]);
    assert_eq!(shown, format!("1m 30s|{}\n", env.db));
    let out = env
        .idem()
        .env("IDEM_LEASE", "500ms")
        .args(["run", "-k", "j", "--", "true"])
        .output()
        .unwrap();
    assert_code(&out, 2);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("must be at least 1s"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A SQLite store whose path is not UTF-8 is the nested steps' store too
/// (`IDEM_DB` holds its bytes as they are).
#[test]
fn nested_steps_use_a_store_whose_path_is_not_utf8() {
    use std::os::unix::ffi::OsStrExt;
    let env = Env::sqlite();
    let db = env
        .dir
        .path()
        .join(std::ffi::OsStr::from_bytes(b"st\xffore.db"));
    let nested = "\"$NESTED_IDEM\" run -k inner -- echo nested";
    let out = env
        .idem()
        .env("NESTED_IDEM", crate::support::bin())
        .arg("--db")
        .arg(&db)
        .args(["run", "-k", "outer", "--"])
        .args(sh(nested))
        .output()
        .unwrap();
    assert_code(&out, 0);
    assert_eq!(out.stdout, b"nested\n");
    let inner = env
        .idem()
        .arg("--db")
        .arg(&db)
        .args(["inspect", "--json", "inner"])
        .output()
        .unwrap();
    assert_code(&inner, 0);
    assert!(
        String::from_utf8_lossy(&inner.stdout).contains("\"completed\""),
        "{inner:?}"
    );
}

/// A claim whose answer comes after its stop deadline: COMMAND never
/// starts, the claim is released (the next call runs at once, attempt 1).
#[test]
#[ignore = "needs IDEM_TEST_BACKEND=postgres or redis"]
fn a_claim_answered_past_its_stop_deadline_never_starts_the_command() {
    require_shared_store();
    let env = Env::new();
    let script = format!("{}; echo \"attempt $IDEM_ATTEMPT\"", env.count_run("n"));
    let paused = env.path("paused");
    let mut idem = env.idem_std();
    idem.env("IDEM_TEST_PAUSE", "after-claim")
        .env("IDEM_TEST_PAUSE_FILE", &paused);
    let late = spawn(idem, &["--lease", "1s"], &script);
    wait_for(&paused);
    // Lease 1s: the stop deadline is 0.73 s after the claim was sent.
    let since = Instant::now();
    wait_until("the claim's stop deadline to pass", || {
        since.elapsed() > Duration::from_millis(800)
    });
    std::fs::remove_file(&paused).unwrap();
    let late = late.wait_with_output().unwrap();
    assert_code(&late, 125);
    let said = String::from_utf8_lossy(&late.stderr);
    assert!(
        said.contains("idem: lost the lease on k: the claim's answer came")
            && said.contains("nothing ran")
            && said.contains("the claim was released"),
        "{said}"
    );
    assert_eq!(env.count("n"), 0, "COMMAND ran");
    assert_eq!(
        env.run_ok(&["run", "-k", "k", "--", "sh", "-c", &script]),
        "attempt 1\n"
    );
}

/// idem and its command stopped (SIGSTOP) past the stop deadline, then idem
/// continued: COMMAND is killed, not resumed, and idem exits 125.
#[test]
#[ignore = "needs IDEM_TEST_BACKEND=postgres or redis"]
fn a_job_stopped_past_its_deadline_is_killed_not_resumed() {
    require_shared_store();
    let env = Env::new();
    let script =
        "echo $$ > childpid; touch ready; while :; do echo tick >> ticks; sleep 0.05; done";
    let idem = spawn(env.idem_std(), &["--lease", "1s"], script);
    wait_for(&env.path("ready"));
    let child: i32 = std::fs::read_to_string(env.path("childpid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let idem_pid = Pid::from_raw(idem.id() as i32);
    kill(idem_pid, Signal::SIGSTOP).unwrap();
    kill(Pid::from_raw(-child), Signal::SIGSTOP).unwrap();
    let ticks = || std::fs::read_to_string(env.path("ticks")).unwrap_or_default();
    let since = Instant::now();
    let stopped_at = ticks();
    wait_until("the stop deadline (0.73 s) to pass", || {
        since.elapsed() > Duration::from_millis(1200)
    });
    kill(idem_pid, Signal::SIGCONT).unwrap();
    let out = idem.wait_with_output().unwrap();
    assert_code(&out, 125);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("idem: lost the lease on k: no renewal accepted for "),
        "{said}"
    );
    assert!(!crate::support::running(child), "COMMAND outlived idem");
    assert_eq!(ticks(), stopped_at, "COMMAND ran again after its deadline");
    // The record stays in progress for the crash policy of the next call.
    let seen = env.idem().args(["inspect", "k"]).output().unwrap();
    assert!(
        String::from_utf8_lossy(&seen.stdout).contains("in_progress"),
        "{}",
        String::from_utf8_lossy(&seen.stdout)
    );
}

/// PostgreSQL: tables locked by an operator.
mod postgres {
    use super::{assert_code, no_overlap_across_a_stall, spawn};
    use crate::support::{psql, require, wait_for, wait_until, Backend, Env};
    use std::process::{Child, Stdio};
    use std::time::{Duration, Instant};

    /// Holds `LOCK TABLE table` for `held` in a psql of its own; returns once
    /// the lock is taken.
    fn lock_table(env: &Env, table: &str, held: Duration) -> Child {
        let locked = env.path("locked");
        let sql = format!(
            "BEGIN; LOCK TABLE {table};\n\\! touch {}\nSELECT pg_sleep({}); COMMIT;\n",
            locked.display(),
            held.as_secs_f64()
        );
        let mut child = std::process::Command::new("psql")
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(crate::support::postgres_url())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        use std::io::Write;
        // Written whole and closed: psql runs it to the end, then exits.
        child
            .stdin
            .take()
            .unwrap()
            .write_all(sql.as_bytes())
            .unwrap();
        wait_for(&locked);
        child
    }

    /// A job whose journal appends are blocked longer than its lease keeps
    /// its claim: the journal has the main connection, the lease its own.
    #[test]
    #[ignore = "needs IDEM_TEST_BACKEND=postgres"]
    fn a_locked_journal_table_takes_no_lease_away() {
        require(Backend::Postgres);
        let env = Env::new();
        let script = format!(
            "{}; touch ready; for i in 1 2 3 4 5 6 7 8 9 10; do echo line $i; sleep 0.5; done",
            env.count_run("n")
        );
        let owner = spawn(env.idem_std(), &["--lease", "2s"], &script);
        wait_for(&env.path("ready"));
        let mut lock = lock_table(
            &env,
            &format!("{}_journal", env.unique()),
            Duration::from_secs(4),
        );
        // Past the lease: another host finds the owner alive by its lease.
        let since = Instant::now();
        wait_until("a lease and a half", || {
            since.elapsed() > Duration::from_secs(3)
        });
        let other = spawn(env.idem_on_host("other"), &["--lease", "2s"], &script)
            .wait_with_output()
            .unwrap();
        lock.wait().unwrap();
        let owner = owner.wait_with_output().unwrap();
        assert_code(&owner, 0);
        assert_code(&other, 75);
        assert_eq!(env.count("n"), 1);
        assert_eq!(
            env.run_ok(&["run", "-k", "k", "--", "sh", "-c", &script])
                .lines()
                .count(),
            10,
            "the replay has the whole output"
        );
    }

    #[test]
    #[ignore = "needs IDEM_TEST_BACKEND=postgres"]
    fn records_locked_longer_than_the_lease_never_overlap() {
        require(Backend::Postgres);
        let env = Env::new();
        let table = env.unique().to_owned();
        let mut lock = None;
        no_overlap_across_a_stall(&env, || {
            lock = Some(lock_table(&env, &table, Duration::from_secs(4)));
        });
        lock.unwrap().wait().unwrap();
    }

    /// A slow query on the records table shorter than the lease: no renewal
    /// is refused, nothing is stopped, the run records its outcome.
    #[test]
    #[ignore = "needs IDEM_TEST_BACKEND=postgres"]
    fn a_lock_shorter_than_the_stop_deadline_loses_nothing() {
        require(Backend::Postgres);
        let env = Env::new();
        let script = format!("{}; touch ready; sleep 1", env.count_run("n"));
        let owner = spawn(env.idem_std(), &["--lease", "3s"], &script);
        wait_for(&env.path("ready"));
        let mut lock = lock_table(&env, env.unique(), Duration::from_millis(1500));
        lock.wait().unwrap();
        assert_code(&owner.wait_with_output().unwrap(), 0);
        assert_eq!(
            psql(&format!("SELECT status FROM {}", env.unique())),
            "completed"
        );
    }
}

/// Redis: a server paused (what `FAILOVER` does), on a server of the
/// test's own, since a pause stalls every client.
mod redis {
    use super::{assert_code, no_overlap_across_a_stall, spawn};
    use crate::support::redis_server::Server;
    use crate::support::{record_key, require, wait_for, Backend, Env};

    /// A Redis server of this test's own (a pause stalls every client), with
    /// `env` pointed at it.
    fn private_redis(env: &mut Env) -> Server {
        let server = Server::start(&[]);
        env.db = format!("{}?prefix={}:", server.url(""), env.unique());
        server
    }

    fn pause(server: &Server, millis: u64) {
        let mut con = redis::Client::open(server.url(""))
            .unwrap()
            .get_connection()
            .unwrap();
        let _: () = redis::cmd("CLIENT")
            .arg("PAUSE")
            .arg(millis)
            .arg("ALL")
            .query(&mut con)
            .unwrap();
    }

    /// `CLIENT PAUSE` (what `FAILOVER` uses) longer than the lease, owner
    /// healthy: its COMMAND is dead before another host's claim is applied.
    #[test]
    #[ignore = "needs IDEM_TEST_BACKEND=redis"]
    fn a_pause_longer_than_the_lease_never_overlaps() {
        require(Backend::Redis);
        let mut env = Env::new();
        let server = private_redis(&mut env);
        no_overlap_across_a_stall(&env, || pause(&server, 4000));
    }

    /// Renewals that fail without being refused, with COMMAND done before its
    /// stop deadline: the outcome is recorded under the token as usual.
    #[test]
    #[ignore = "needs IDEM_TEST_BACKEND=redis"]
    fn renewals_that_failed_before_the_deadline_still_record_the_outcome() {
        require(Backend::Redis);
        let mut env = Env::new();
        let server = private_redis(&mut env);
        // Lease 3s: renewals at 1 s and 2 s, stop deadline 2.2 s. The pause
        // makes the first renewal fail; COMMAND ends at about 1.5 s.
        let script = format!("{}; touch ready; sleep 1.5; echo done", env.count_run("n"));
        let owner = spawn(env.idem_std(), &["--lease", "3s"], &script);
        wait_for(&env.path("ready"));
        pause(&server, 2500);
        let owner = owner.wait_with_output().unwrap();
        assert_code(&owner, 0);
        assert!(
            String::from_utf8_lossy(&owner.stderr).contains("cannot renew the lease on k yet"),
            "no renewal failed: {}",
            String::from_utf8_lossy(&owner.stderr)
        );
        assert_eq!(
            env.run_ok(&["run", "-k", "k", "--", "sh", "-c", &script]),
            "done\n"
        );
        assert_eq!(env.count("n"), 1);
    }

    /// A renewal refused (the record carries another token: another caller
    /// took the key over) stops COMMAND at once, not at the stop deadline.
    #[test]
    #[ignore = "needs IDEM_TEST_BACKEND=redis"]
    fn a_refused_renewal_stops_the_command_at_once() {
        require(Backend::Redis);
        let env = Env::new();
        let owner = spawn(env.idem_std(), &["--lease", "30s"], "touch ready; sleep 60");
        wait_for(&env.path("ready"));
        let (base, prefix) = env.db.split_once("?prefix=").unwrap();
        let mut con = ::redis::Client::open(base)
            .unwrap()
            .get_connection()
            .unwrap();
        let _: () = ::redis::cmd("HSET")
            .arg(record_key(prefix, "k"))
            .arg("token")
            .arg("1")
            .query(&mut con)
            .unwrap();
        let since = std::time::Instant::now();
        let owner = owner.wait_with_output().unwrap();
        // The next renewal is due within 10 s (a third of the lease); the
        // stop deadline would be 22 s after the last one.
        assert!(since.elapsed() < std::time::Duration::from_secs(12));
        assert_code(&owner, 125);
        let said = String::from_utf8_lossy(&owner.stderr);
        assert!(
            said.contains("idem: lost the lease on k: another caller took the key over"),
            "{said}"
        );
    }
}
