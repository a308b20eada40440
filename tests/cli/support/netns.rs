//! A private network for fault tests: a network namespace of the test's own
//! (`ip netns add idem-PID-N`) holding one private store server and the
//! callers, where links can be cut and answers slowed.
//!
//! Every address is loopback. Inside the namespace the server listens on
//! 127.0.0.1 (the test's own admin connections), 127.0.0.2 (caller A's way
//! in) and 127.0.0.3 (caller B's). A client's packets to a loopback address
//! carry that address as source or destination only on the server's side,
//! so an nftables rule on 127.0.0.2 is a black hole for A alone: its
//! connections hang, B's keep working. A delay line (a small user-space
//! relay on 127.0.0.4, in front of 127.0.0.3) holds every answer back by a
//! fixed time once the client named a marker; the kernels these tests run
//! on have no `netem` qdisc (`CONFIG_NET_SCH_NETEM` is not set), so `tc`
//! cannot do it. Each caller is idem in its own UTS namespace with its own
//! host name, so that callers judge each other by the lease, as hosts do.
//!
//! Dropping a `World` stops the servers, kills every process left in the
//! namespace and deletes it (its nftables rules go with it), also when the
//! test failed. Every wait is bounded.

use crate::support::bin;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// The store server a world holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    Postgres,
    Redis,
}

/// How a caller reaches the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// 127.0.0.2, caller A's address.
    A,
    /// 127.0.0.3, caller B's address.
    B,
    /// 127.0.0.4, the delay line in front of 127.0.0.3.
    Delayed,
}

impl Link {
    pub fn address(self) -> &'static str {
        match self {
            Link::A => "127.0.0.2",
            Link::B => "127.0.0.3",
            Link::Delayed => "127.0.0.4",
        }
    }
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// The PostgreSQL binaries (Debian keeps them off PATH).
const PG_BIN: &str = "/usr/lib/postgresql";

/// The nftables chain (`inet idem out`) that the black holes go in: every
/// packet on loopback passes its output hook once.
const CHAIN: &str = "{ type filter hook output priority 0; policy accept; }";

/// A namespace with one server in it, removed when dropped.
pub struct World {
    name: String,
    server: Server,
    dir: TempDir,
    /// Processes of the world's own (Redis, the delay line), reaped when
    /// it is dropped.
    daemons: Vec<Child>,
}

impl World {
    /// Makes the namespace, brings up its loopback, adds the (empty)
    /// nftables chain and starts `server` on 127.0.0.1-3.
    pub fn new(server: Server) -> World {
        crate::support::require_root();
        let name = format!(
            "idem-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let dir = tempfile::Builder::new()
            .prefix("idem-faults-")
            .tempdir()
            .unwrap();
        // The postgres user must reach its data directory below.
        set_mode(dir.path(), 0o755);
        run(Command::new("ip").args(["netns", "add", &name]));
        let mut world = World {
            name,
            server,
            dir,
            daemons: Vec::new(),
        };
        run(Command::new("ip").args(["-n", &world.name, "link", "set", "lo", "up"]));
        run(world.inside("nft").args(["add", "table", "inet", "idem"]));
        run(world
            .inside("nft")
            .args(["add", "chain", "inet", "idem", "out", CHAIN]));
        match server {
            Server::Postgres => world.start_postgres(),
            Server::Redis => world.start_redis(),
        }
        world
    }

    /// `program` run inside the namespace.
    pub fn inside(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The store's URL as a caller on `link` gives it to `--db`.
    pub fn url(&self, link: Link) -> String {
        let host = link.address();
        match self.server {
            Server::Postgres => format!("postgres://postgres@{host}:5432/postgres?table=faults"),
            Server::Redis => format!("redis://{host}:6379/0?prefix=faults:"),
        }
    }

    /// `idem` as a caller on host `host` (its own UTS namespace) reaching
    /// the store through `link`; none of the test's IDEM_* settings. The
    /// spawned process becomes idem itself (every step execs), so its pid
    /// is idem's.
    pub fn idem(&self, host: &str, link: Link) -> Command {
        let mut cmd = self.inside("unshare");
        cmd.args(["--uts", "sh", "-c", "hostname \"$0\" && exec \"$@\"", host])
            .arg(bin());
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("IDEM_") {
                cmd.env_remove(name);
            }
        }
        cmd.env("IDEM_DB", self.url(link))
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
        cmd
    }

    /// Cuts `link` both ways: every packet to or from its address is
    /// dropped, as a partition would. `heal` undoes it.
    pub fn cut(&self, link: Link) {
        let address = link.address();
        for direction in ["daddr", "saddr"] {
            run(self.inside("nft").args([
                "add", "rule", "inet", "idem", "out", "ip", direction, address, "drop",
            ]));
        }
    }

    /// Removes every black hole.
    pub fn heal(&self) {
        run(self
            .inside("nft")
            .args(["flush", "chain", "inet", "idem", "out"]));
    }

    /// Starts the delay line on `Link::Delayed`: from the first time a
    /// client sends `marker`, every answer reaches its client `delay` after
    /// the server sent it.
    pub fn delay_answers(&mut self, delay: Duration, marker: &str) {
        let port = self.port().to_string();
        let mut line = self
            .inside("python3")
            .args(["-c", DELAY_LINE])
            .args([Link::Delayed.address(), &port, Link::B.address(), &port])
            .arg(delay.as_secs_f64().to_string())
            .arg(marker)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        // It prints one line once it listens; dropping the world kills it.
        let mut ready = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(line.stdout.take().unwrap()),
            &mut ready,
        )
        .unwrap();
        self.daemons.push(line);
        assert_eq!(ready.trim(), "ready", "the delay line did not start");
    }

    /// A psql session fed from the test: `Session::send` runs statements
    /// in it, dropping it (or `end`) closes it.
    pub fn psql_session(&self) -> Session {
        let child = self
            .psql_command()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        Session::new(child)
    }

    fn psql_command(&self) -> Command {
        let mut cmd = self.inside("psql");
        cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "postgres"]);
        cmd
    }

    /// Runs `redis-cli ARGS` as the admin (127.0.0.1); returns its output.
    pub fn redis_cli(&self, args: &[&str]) -> String {
        let out = run(self
            .inside("redis-cli")
            .args(["-h", "127.0.0.1"])
            .args(args));
        String::from_utf8_lossy(&out.stdout).trim_end().to_owned()
    }

    fn port(&self) -> u16 {
        match self.server {
            Server::Postgres => 5432,
            Server::Redis => 6379,
        }
    }

    fn start_postgres(&mut self) {
        let data = self.path("pg");
        std::fs::create_dir(&data).unwrap();
        let user = nix::unistd::User::from_name("postgres")
            .unwrap()
            .expect("a postgres user (Debian's postgresql package makes it)");
        std::os::unix::fs::chown(&data, Some(user.uid.as_raw()), Some(user.gid.as_raw())).unwrap();
        let pg = pg_bin();
        run(Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(pg.join("initdb"))
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(&data));
        let options = "-c listen_addresses=127.0.0.1,127.0.0.2,127.0.0.3 -p 5432 \
                       -c unix_socket_directories= -c fsync=off -c full_page_writes=off";
        run(self
            .inside("runuser")
            .args(["-u", "postgres", "--"])
            .arg(pg.join("pg_ctl"))
            .args(["-w", "-t", "30", "-o", options, "-l"])
            .arg(data.join("server.log"))
            .arg("-D")
            .arg(&data)
            .arg("start"));
    }

    fn start_redis(&mut self) {
        let child = self
            .inside("redis-server")
            .args(["--bind", "127.0.0.1 127.0.0.2 127.0.0.3", "--port", "6379"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server");
        self.daemons.push(child);
        poll("redis-server to answer", Duration::from_secs(20), || {
            self.inside("redis-cli")
                .args(["-h", "127.0.0.1", "ping"])
                .output()
                .is_ok_and(|out| out.stdout.starts_with(b"PONG"))
        });
    }

    fn pids(&self) -> Vec<i32> {
        Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
            .map(|out| {
                String::from_utf8_lossy(&out.stdout)
                    .split_whitespace()
                    .filter_map(|pid| pid.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if self.server == Server::Postgres {
            let _ = self
                .inside("runuser")
                .args(["-u", "postgres", "--"])
                .arg(pg_bin().join("pg_ctl"))
                .args(["-m", "immediate", "-D"])
                .arg(self.path("pg"))
                .arg("stop")
                .output();
        }
        // Whatever is left (callers, their commands, the delay line, Redis).
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let pids = self.pids();
            if pids.is_empty() || Instant::now() > deadline {
                break;
            }
            for pid in pids {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for daemon in &mut self.daemons {
            let _ = daemon.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A psql process the test writes statements to.
pub struct Session {
    child: Child,
    stdin: Option<std::process::ChildStdin>,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl Session {
    fn new(mut child: Child) -> Session {
        let stdin = child.stdin.take();
        let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        Session {
            child,
            stdin,
            stdout,
        }
    }

    /// Sends `sql` and waits until the server has run it.
    pub fn send(&mut self, sql: &str) {
        use std::io::{BufRead, Write};
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{sql}\n\\echo done").unwrap();
        stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "done", "psql: {sql}");
    }

    /// Closes the session (ending its transaction) and waits for psql.
    pub fn end(mut self) {
        self.stdin.take();
        let _ = self.child.wait();
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.stdin.take();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The newest PostgreSQL's binaries under /usr/lib/postgresql.
fn pg_bin() -> PathBuf {
    let newest = std::fs::read_dir(PG_BIN)
        .expect("PostgreSQL's server binaries (Debian's postgresql package)")
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .max()
        .expect("a PostgreSQL version under /usr/lib/postgresql");
    Path::new(PG_BIN).join(newest.to_string()).join("bin")
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Runs `cmd` to its end; fails the test unless it succeeded.
#[track_caller]
fn run(cmd: &mut Command) -> Output {
    let out = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| {
        panic!("{cmd:?}: {e}");
    });
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Polls `done` every 20 ms for at most `limit`; fails the test after.
#[track_caller]
pub fn poll(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits at most `limit` for `child` to exit; kills it after that.
/// Returns its status code (None: killed by a signal or by the limit).
pub fn wait_exit(child: &mut Child, limit: Duration) -> Option<i32> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The delay line: `python3 -c DELAY_LINE LISTEN PORT TARGET PORT DELAY
/// MARKER`. One thread per direction and connection; answers are queued
/// with the time they may leave, so the delay is a constant latency, not a
/// sum.
const DELAY_LINE: &str = r#"
import socket, sys, threading, time, queue
listen, lport, target, tport, delay, marker = sys.argv[1:7]
delay, marker, armed = float(delay), marker.encode(), threading.Event()
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind((listen, int(lport)))
server.listen(64)
print("ready", flush=True)

def requests(client, upstream):
    while True:
        data = client.recv(65536)
        if marker in data:
            armed.set()
        if not data:
            upstream.shutdown(socket.SHUT_WR)
            return
        upstream.sendall(data)

def answers(upstream, client):
    held = queue.Queue()
    def send():
        while True:
            due, data = held.get()
            time.sleep(max(0.0, due - time.monotonic()))
            if not data:
                client.shutdown(socket.SHUT_WR)
                return
            client.sendall(data)
    threading.Thread(target=quietly, args=(send,), daemon=True).start()
    while True:
        data = upstream.recv(65536)
        held.put((time.monotonic() + (delay if armed.is_set() else 0.0), data))
        if not data:
            return

def quietly(pump, *ends):
    """A connection that a killed client reset is no news."""
    try:
        pump(*ends)
    except OSError:
        pass

while True:
    client, _ = server.accept()
    upstream = socket.create_connection((target, int(tport)))
    for pump, ends in ((requests, (client, upstream)), (answers, (upstream, client))):
        threading.Thread(target=quietly, args=(pump, *ends), daemon=True).start()
"#;
