//! Test support: an isolated store per test, fixtures that count runs, and
//! ready files instead of sleeps.
//!
//! `IDEM_TEST_BACKEND` picks the store the CLI tests run against: `sqlite`
//! (default, a file in the test's temp dir), `postgres` or `redis` (each test
//! in its own table or key prefix on the local server). A test for one
//! backend only is `#[ignore]`d with the reason and calls `require` first,
//! so that a plain `cargo test` lists it as ignored and a run with
//! `--include-ignored` under another backend fails it; a test of the SQLite
//! file itself uses `Env::sqlite()` and runs under any backend.

mod holder;
pub mod netns;
pub mod pty;
mod records;
pub mod redis_server;
mod scripted;
mod test;

pub use holder::Holder;
pub use records::{
    keys, kill_paused_owner, make, make_crashed, make_expired, record_key, records,
    wait_renewed_past_first_lease,
};
pub use scripted::{free_port, ScriptedServer};
pub use test::assert_code;

use assert_cmd::Command;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tempfile::TempDir;

static NEXT: AtomicUsize = AtomicUsize::new(0);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
    Redis,
}

pub fn backend() -> Backend {
    match std::env::var("IDEM_TEST_BACKEND").as_deref() {
        Ok("postgres") => Backend::Postgres,
        Ok("redis") => Backend::Redis,
        Ok("sqlite") | Err(_) => Backend::Sqlite,
        Ok(other) => panic!("IDEM_TEST_BACKEND={other}: expected sqlite, postgres or redis"),
    }
}

/// Fails the test unless it runs against `wanted` (see the module doc).
#[track_caller]
pub fn require(wanted: Backend) {
    let name = match wanted {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
        Backend::Redis => "redis",
    };
    assert!(
        backend() == wanted,
        "needs IDEM_TEST_BACKEND={name} (this run has {:?})",
        backend()
    );
}

/// Fails the test unless it runs against a store many hosts share.
#[track_caller]
pub fn require_shared_store() {
    assert!(
        backend() != Backend::Sqlite,
        "needs a shared store: IDEM_TEST_BACKEND=postgres or redis"
    );
}

/// Fails the test unless it runs as root (to mount, unshare or change
/// user); `.ci/run` runs the tests as root.
#[track_caller]
pub fn require_root() {
    assert!(
        nix::unistd::getuid().is_root(),
        "needs root (.ci/run runs the tests as root)"
    );
}

/// The path of `program` on PATH; fails the test when it is missing
/// (`.ci/run` installs every tool a test needs).
#[track_caller]
pub fn tool(program: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(program))
                .find(|candidate| candidate.is_file())
        })
        .unwrap_or_else(|| panic!("{program} is not installed (.ci/run installs it)"))
}

/// PATH with the directory of the idem under test first.
pub fn path_with_idem() -> std::ffi::OsString {
    let mut dirs = vec![bin().parent().unwrap().to_owned()];
    dirs.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    std::env::join_paths(dirs).unwrap()
}

/// One test's world: a temp dir, a store, and the idem binary.
pub struct Env {
    pub dir: TempDir,
    pub db: String,
    unique: String,
    backend: Backend,
}

/// How long one test may take before the watchdog fails the whole run: a
/// broken idem must fail the suite, never hang it.
const WATCHDOG: Duration = Duration::from_secs(240);

/// Live tests (thread name, start) the watchdog looks at.
static LIVE: std::sync::Mutex<Vec<(String, Instant)>> = std::sync::Mutex::new(Vec::new());

/// Once per test process: restores the default SIGINT and SIGQUIT that a
/// `cargo test &` from a script inherits ignored (children would inherit
/// that too, and a test that traps them would wait for ever), and starts
/// the watchdog.
fn set_up_process() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        use nix::sys::signal::{signal, SigHandler, Signal};
        for sig in [Signal::SIGINT, Signal::SIGQUIT] {
            // SAFETY: SIG_DFL installs no handler, so no code runs in
            // signal context.
            #[allow(unsafe_code)]
            let _ = unsafe { signal(sig, SigHandler::SigDfl) };
        }
        std::thread::spawn(|| loop {
            std::thread::sleep(Duration::from_secs(1));
            let live = LIVE
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some((name, _)) = live.iter().find(|(_, at)| at.elapsed() > WATCHDOG) {
                // Straight to stderr: this thread inherits the output
                // capture of the test that started it, which `eprintln!`
                // would write into, never to be shown.
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "watchdog: test {name} ran longer than {WATCHDOG:?}; failing the run"
                );
                std::process::exit(101);
            }
        });
    });
}

impl Env {
    /// A store of the backend `IDEM_TEST_BACKEND` names.
    #[track_caller]
    pub fn new() -> Env {
        Env::with_backend(backend())
    }

    /// A SQLite file store, whatever `IDEM_TEST_BACKEND` says: for the tests
    /// of the file itself, which then run under every backend.
    #[track_caller]
    pub fn sqlite() -> Env {
        Env::with_backend(Backend::Sqlite)
    }

    /// The kind of store this test has.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    #[track_caller]
    fn with_backend(backend: Backend) -> Env {
        set_up_process();
        let name = std::thread::current().name().unwrap_or("?").to_owned();
        LIVE.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((name, Instant::now()));
        let dir = tempfile::Builder::new()
            .prefix("idem-test-")
            .tempdir()
            .expect("temp dir");
        let unique = format!(
            "t{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let db = match backend {
            Backend::Sqlite => dir
                .path()
                .join("state/idem.db")
                .to_string_lossy()
                .into_owned(),
            Backend::Postgres => {
                let base = postgres_url();
                let join = if base.contains('?') { '&' } else { '?' };
                format!("{base}{join}table={unique}")
            }
            Backend::Redis => {
                let base = std::env::var("IDEM_TEST_REDIS_URL")
                    .unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into());
                format!("{base}?prefix={unique}:")
            }
        };
        Env {
            dir,
            db,
            unique,
            backend,
        }
    }

    /// Runs `idem ARGS` and asserts the strict default: exit 0 and nothing
    /// on stderr. Returns stdout.
    #[track_caller]
    pub fn run_ok(&self, args: &[&str]) -> String {
        let out = self.idem().args(args).output().expect("start idem");
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "idem {args:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("UTF-8 stdout")
    }

    /// Runs `idem GLOBAL run -k refused -- sh -c COUNT` and asserts that
    /// the store was refused before the command ran: exit 125, one
    /// `idem: ` line, nothing counted in `n`. Returns the line.
    #[track_caller]
    pub fn refused(&self, global: &[&str]) -> String {
        let out = self
            .idem()
            .args(global)
            .args(["run", "-k", "refused", "--"])
            .args(sh(&self.count_run("n")))
            .output()
            .expect("start idem");
        let stderr = String::from_utf8(out.stderr).expect("UTF-8 stderr");
        assert_eq!(out.status.code(), Some(125), "{stderr}");
        assert!(
            stderr.starts_with("idem: ") && stderr.lines().count() == 1,
            "{stderr}"
        );
        assert_eq!(self.count("n"), 0, "the command ran");
        stderr
    }

    /// A name no other test uses (the table or key prefix of this test).
    pub fn unique(&self) -> &str {
        &self.unique
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The SQLite file (SQLite backend only).
    pub fn db_path(&self) -> PathBuf {
        PathBuf::from(&self.db)
    }

    /// `idem` with this test's store and none of the caller's IDEM_* settings.
    pub fn idem(&self) -> Command {
        Command::from_std(self.idem_std())
    }

    /// The same as a std Command, for processes the test spawns and signals.
    pub fn idem_std(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new(bin());
        self.prepare(&mut cmd);
        cmd
    }

    /// `idem` as if on another machine named `host`: in a new UTS namespace
    /// (needs root) with its own host name, sharing this test's store. The
    /// spawned process becomes idem itself (unshare and sh exec), so its pid
    /// is idem's.
    pub fn idem_on_host(&self, host: &str) -> std::process::Command {
        self.host_command(host, "")
    }

    /// `idem_on_host` that starts idem only once the file `gate` exists, so
    /// that many hosts set up first and then start at the same moment. Each
    /// host creates `GATE.HOST` once it waits at the gate.
    pub fn idem_on_host_after(&self, host: &str, gate: &Path) -> std::process::Command {
        let gate = gate.display();
        let wait =
            format!(": > '{gate}.{host}' && while [ ! -e '{gate}' ]; do sleep 0.001; done && ");
        self.host_command(host, &wait)
    }

    /// `idem` as PID 1 of a new PID namespace with its own /proc, as in a
    /// container on this machine (same host name and boot id; needs root),
    /// sharing this test's store. SIGKILL of the spawned `unshare` ends the
    /// whole namespace (`--kill-child`), as stopping a container would.
    pub fn idem_in_pid_namespace(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new("unshare");
        cmd.args(["--pid", "--fork", "--mount-proc", "--kill-child"])
            .arg(bin());
        self.prepare(&mut cmd);
        cmd
    }

    fn host_command(&self, host: &str, before: &str) -> std::process::Command {
        let mut cmd = std::process::Command::new("unshare");
        let script = format!("hostname \"$0\" && {before}exec \"$@\"");
        cmd.args(["--uts", "sh", "-c", &script, host]).arg(bin());
        self.prepare(&mut cmd);
        cmd
    }

    fn prepare(&self, cmd: &mut std::process::Command) {
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("IDEM_") {
                cmd.env_remove(name);
            }
        }
        cmd.env("IDEM_DB", &self.db).current_dir(self.dir.path());
    }

    /// A shell snippet that appends one line to the counter file `name`.
    pub fn count_run(&self, name: &str) -> String {
        format!("echo run >> '{}'", self.path(name).display())
    }

    /// How many times `count_run(name)` ran.
    pub fn count(&self, name: &str) -> usize {
        std::fs::read_to_string(self.path(name)).map_or(0, |s| s.lines().count())
    }
}

/// The PostgreSQL database the tests use (`IDEM_TEST_POSTGRES_URL`).
pub fn postgres_url() -> String {
    std::env::var("IDEM_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// Runs `sql` on the test database with psql; returns its unaligned output.
#[track_caller]
pub fn psql(sql: &str) -> String {
    let out = std::process::Command::new("psql")
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d"])
        .arg(postgres_url())
        .args(["-c", sql])
        .output()
        .expect("psql (the postgresql-client package) must be installed");
    assert!(
        out.status.success(),
        "psql -c {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim_end().to_owned()
}

impl Drop for Env {
    /// A failed test may leave children waiting for `release`: let them go,
    /// so they do not outlive the test holding its output pipes. A test's
    /// PostgreSQL objects and Redis keys go with it (its temp dir goes by
    /// itself).
    fn drop(&mut self) {
        let name = std::thread::current().name().unwrap_or("?").to_owned();
        let mut live = LIVE
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(at) = live.iter().position(|(n, _)| *n == name) {
            live.remove(at);
        }
        drop(live);
        if std::thread::panicking() {
            let _ = std::fs::write(self.path("release"), "");
            std::thread::sleep(Duration::from_millis(100));
        }
        if self.backend == Backend::Postgres && !std::thread::panicking() {
            let t = &self.unique;
            let _ = std::process::Command::new("psql")
                .args(["-X", "-q", "-d"])
                .arg(postgres_url())
                .args([
                    "-c",
                    &format!(
                        "DROP TABLE IF EXISTS {t}_journal, {t}, {t}_meta; DROP SEQUENCE IF EXISTS {t}_token"
                    ),
                ])
                .stderr(Stdio::null())
                .status();
        }
        if self.backend == Backend::Redis {
            if let Some((base, prefix)) = self.db.split_once("?prefix=") {
                remove_redis_keys(base, prefix);
            }
        }
    }
}

/// Deletes a Redis test's keys (tests share the server).
fn remove_redis_keys(url: &str, prefix: &str) {
    let Ok(mut con) = redis::Client::open(url).and_then(|c| c.get_connection()) else {
        return;
    };
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query(&mut con)
        .unwrap_or_default();
    if !keys.is_empty() {
        let _: redis::RedisResult<i64> = redis::cmd("DEL").arg(keys).query(&mut con);
    }
}

/// Starts `idem ARGS` with stdout on a pipe and waits for its first bytes.
pub fn start_reading(env: &Env, args: &[&str]) -> (std::process::Child, std::process::ChildStdout) {
    let mut idem = env
        .idem_std()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = idem.stdout.take().unwrap();
    let mut first = [0u8; 2];
    stdout.read_exact(&mut first).unwrap();
    (idem, stdout)
}

/// The start time (field 22 of /proc/PID/stat) of a process.
pub fn start_time(pid: u32) -> i64 {
    stat_field(pid, 22)
}

/// Numeric field `n` (counted from 1, as proc(5) does; 3 or more) of
/// /proc/PID/stat.
pub fn stat_field(pid: u32, n: usize) -> i64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields 1 and 2 (the pid, and the name in parentheses) come first.
    stat[stat.rfind(')').unwrap() + 2..]
        .split(' ')
        .nth(n - 3)
        .unwrap()
        .parse()
        .unwrap()
}

/// Copies the shipped examples (tests/examples/) into the test's directory,
/// modes kept. `cp` writes them, not this process: a file this process had
/// open for writing would be inherited, for a moment, by every child that
/// another test forks meanwhile, and running the copy could then fail with
/// ETXTBSY ("text file busy").
pub fn copy_examples(env: &Env) {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/examples");
    let mut cp = std::process::Command::new("cp");
    cp.arg("-p");
    for entry in std::fs::read_dir(examples).unwrap() {
        cp.arg(entry.unwrap().path());
    }
    let status = cp.arg(env.dir.path()).status().unwrap();
    assert!(status.success(), "cp of the examples: {status}");
}

pub fn bin() -> PathBuf {
    assert_cmd::cargo::cargo_bin("idem")
}

/// Waits until `path` exists; panics after a generous limit.
#[track_caller]
pub fn wait_for(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits until `done` says yes; panics after a generous limit.
#[track_caller]
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `run FLAGS -- sh -c SCRIPT`: idem's argv for a shell script.
pub fn run_sh<'a>(flags: &[&'a str], script: &'a str) -> Vec<&'a str> {
    let mut args = vec!["run"];
    args.extend_from_slice(flags);
    args.extend(["--", "sh", "-c", script]);
    args
}

/// `sh -c SCRIPT` as argv after `--`.
pub fn sh(script: &str) -> [String; 3] {
    ["sh".into(), "-c".into(), script.into()]
}

/// Spawns `n` copies of a command at once and collects (status, stdout, stderr).
pub fn race(
    n: usize,
    mut make: impl FnMut(usize) -> std::process::Command,
) -> Vec<(i32, Vec<u8>, Vec<u8>)> {
    let children: Vec<_> = (0..n)
        .map(|i| {
            make(i)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn idem")
        })
        .collect();
    children
        .into_iter()
        .map(|child| {
            let out = child.wait_with_output().expect("wait idem");
            (out.status.code().unwrap_or(-1), out.stdout, out.stderr)
        })
        .collect()
}

/// SIGKILLs `idem` and waits until every process it started is gone: its
/// child's group goes with it, killed by its watcher, which exits last (on
/// SQLite the owner's lock is free from then on).
pub fn kill_idem(idem: &mut std::process::Child) {
    let pid = idem.id();
    let children: Vec<i32> = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|child| child.parse().ok())
        .collect();
    let _ = idem.kill();
    let _ = idem.wait();
    wait_until("idem's child and watcher to be gone", || {
        !children.iter().any(|&child| running(child))
    });
}

/// Whether a process exists and is not a zombie.
pub fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| !stat[stat.rfind(')').unwrap() + 2..].starts_with('Z'))
}
