//! `idem check` on PostgreSQL: is the connection encrypted and verified,
//! and does the server keep commits durable (a lost claim lets a second
//! run start).

use super::conn::CALL_LIMIT;
use super::tls::SslMode;
use super::PgStore;
use crate::store::{Finding, Level};
use anyhow::Result;
use tokio_postgres::config::Host;

impl PgStore {
    pub(super) fn run_checks(&mut self) -> Result<Vec<Finding>> {
        let (ssl, fsync, sync_commit, version): (Option<String>, String, String, String) = self
            .conn
            .call("cannot read the server's settings", CALL_LIMIT, async |c| {
                let row = c
                    .query_one(
                        "SELECT (SELECT CASE WHEN ssl THEN version END FROM pg_stat_ssl \
                                 WHERE pid = pg_backend_pid()), \
                                current_setting('fsync'), current_setting('synchronous_commit'), \
                                current_setting('server_version')",
                        &[],
                    )
                    .await?;
                Ok((row.get(0), row.get(1), row.get(2), row.get(3)))
            })?;
        let target = &self.conn.target;
        let mut found = vec![Finding::new(
            Level::Ok,
            "store",
            format!(
                "table {} on PostgreSQL {version} at {}",
                target.table,
                target.endpoint()
            ),
        )];
        let socket = target
            .config
            .get_hosts()
            .iter()
            .all(|h| matches!(h, Host::Unix(_)));
        found.push(match (ssl, target.tls.mode) {
            _ if socket => Finding::new(Level::Ok, "tls", "a Unix socket on this machine"),
            (Some(v), SslMode::VerifyFull) => {
                Finding::new(Level::Ok, "tls", format!("{v}, server certificate and name verified"))
            }
            (Some(v), SslMode::VerifyCa) => Finding::new(
                Level::Ok,
                "tls",
                format!("{v}, server certificate verified (not its name: sslmode=verify-full checks it)"),
            ),
            (Some(v), _) => Finding::new(
                Level::Warn,
                "tls",
                format!("{v}, but the server's certificate is not verified (sslmode=verify-full)"),
            ),
            (None, _) => Finding::new(
                Level::Warn,
                "tls",
                "not encrypted: credentials and stored output cross the network in clear \
                 (sslmode=verify-full)",
            ),
        });
        if fsync == "off" {
            found.push(Finding::new(
                Level::Warn,
                "durability",
                "fsync is off: a server crash can lose records, and keys that already ran may run again",
            ));
        } else if sync_commit == "off" {
            found.push(Finding::new(
                Level::Warn,
                "durability",
                "synchronous_commit is off: a server crash can lose the last claims, \
                 and those keys may run again",
            ));
        } else {
            found.push(Finding::new(
                Level::Ok,
                "durability",
                format!("fsync on, synchronous_commit {sync_commit}"),
            ));
        }
        Ok(found)
    }
}
