//! A private server that a shell script under `tests/` starts and stops
//! (`SCRIPT start DIR ARGS…`, `SCRIPT stop DIR`), in a temp dir of its own:
//! the PostgreSQL over TLS and the Redis Cluster.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use tempfile::TempDir;

/// The server, stopped when dropped.
pub struct ScriptedServer {
    pub dir: TempDir,
    script: PathBuf,
}

impl ScriptedServer {
    /// Runs `tests/SCRIPT start DIR ARGS`; fails the test, saying `needs`,
    /// when it does not succeed.
    #[track_caller]
    pub fn start(script: &str, args: &[String], needs: &str) -> ScriptedServer {
        let server = ScriptedServer {
            dir: TempDir::new().unwrap(),
            script: Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests")
                .join(script),
        };
        let status = Command::new(&server.script)
            .arg("start")
            .arg(server.dir.path())
            .args(args)
            .status()
            .expect("bash");
        assert!(status.success(), "tests/{script} could not start ({needs})");
        server
    }
}

impl Drop for ScriptedServer {
    fn drop(&mut self) {
        let _ = Command::new(&self.script)
            .arg("stop")
            .arg(self.dir.path())
            .status();
    }
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
