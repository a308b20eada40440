//! A private `redis-server` on a free loopback port, for tests that stop,
//! restart, lock or encrypt it; and TLS certificates for it.

use crate::support::wait_until;
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use tempfile::TempDir;

/// A `redis-server` of this test's own, stopped when dropped.
pub struct Server {
    child: Option<Child>,
    pub port: u16,
    dir: TempDir,
    args: Vec<String>,
    tls: bool,
}

impl Server {
    /// No persistence unless `args` asks for it.
    pub fn start(args: &[&str]) -> Server {
        Server::launch(args, false)
    }

    /// Speaking only TLS (`rediss://`) with `cert` and `key`.
    pub fn start_tls(cert: &Path, key: &Path) -> Server {
        let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
        Server::launch(
            &[
                "--tls-cert-file",
                cert,
                "--tls-key-file",
                key,
                "--tls-auth-clients",
                "no",
            ],
            true,
        )
    }

    fn launch(args: &[&str], tls: bool) -> Server {
        let port = super::free_port();
        let mut server = Server {
            child: None,
            port,
            dir: TempDir::new().unwrap(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            tls,
        };
        server.restart();
        server
    }

    pub fn restart(&mut self) {
        let port = self.port.to_string();
        let ports = if self.tls {
            ["--port", "0", "--tls-port", &port]
        } else {
            ["--port", &port, "--tls-port", "0"]
        };
        let child = Command::new("redis-server")
            .args(ports)
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.args)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server must be installed for the Redis tests (.ci/run installs it)");
        self.child = Some(child);
        wait_until("redis-server to listen", || {
            TcpStream::connect(("127.0.0.1", self.port)).is_ok()
        });
    }

    /// SIGTERM: Redis flushes its AOF (if any) and exits.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
            child.wait().unwrap();
        }
    }

    pub fn url(&self, userinfo: &str) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://{userinfo}127.0.0.1:{}/0", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Makes a CA and a certificate for 127.0.0.1 signed by it, with openssl.
pub fn make_certificates(dir: &Path) {
    let openssl = |args: &[&str]| {
        let status = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stderr(Stdio::null())
            .status()
            .expect("openssl must be installed for the TLS test (.ci/run installs it)");
        assert!(status.success(), "openssl {args:?}");
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=idem test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(dir.join("ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext",
        "-out",
        "server.pem",
    ]);
}
