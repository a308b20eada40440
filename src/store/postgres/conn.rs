//! One connection to the server, and the time limits around every use.
//!
//! idem is synchronous; the client library is async. A current-thread tokio
//! runtime drives one connection, only while a call waits on it. Every call
//! — connecting included — runs under a time limit, so a dead or stalled
//! server never hangs idem: the run loop renews leases from the same thread
//! that forwards signals to the child. After a limit runs out or the
//! connection drops, the next call connects afresh.

use super::target::Target;
use crate::exit::{fail, Code};
use anyhow::{Context, Result};
use std::time::Duration;
use tokio::runtime::Runtime;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Error, NoTls};

/// How long one call may take by default: a little more than the server's
/// own `statement_timeout`, so the server's message usually wins.
pub const CALL_LIMIT: Duration = Duration::from_secs(35);

pub struct Conn {
    rt: Runtime,
    client: Option<Client>,
    pub target: Target,
}

/// Why a call failed.
pub enum Failure {
    /// The server answered with an error; the connection is still good.
    Server(String),
    /// No answer: unreachable, dropped, or over the time limit. The
    /// connection is gone.
    Lost(String),
}

impl Failure {
    fn text(&self) -> &str {
        match self {
            Failure::Server(text) | Failure::Lost(text) => text,
        }
    }
}

impl Conn {
    pub fn new(target: Target) -> Result<Conn> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the PostgreSQL client")?;
        Ok(Conn {
            rt,
            client: None,
            target,
        })
    }

    /// Runs `op` on the connection (connecting first if needed) within
    /// `limit`; a failure is exit 125 naming the store and what was being done.
    pub fn call<T>(
        &mut self,
        doing: &str,
        limit: Duration,
        op: impl AsyncFnOnce(&mut Client) -> Result<T, Error>,
    ) -> Result<T> {
        self.try_call(limit, op)
            .or_else(|failure| self.fail(&format!("{doing}: {}", failure.text())))
    }

    /// `call` that leaves the failure to the caller (for retries).
    pub fn try_call<T>(
        &mut self,
        limit: Duration,
        op: impl AsyncFnOnce(&mut Client) -> Result<T, Error>,
    ) -> Result<T, Failure> {
        let Conn { rt, client, target } = self;
        let result = rt.block_on(async {
            let started = tokio::time::Instant::now();
            if client.as_ref().is_none_or(Client::is_closed) {
                let connecting = tokio::time::timeout(limit, target.config.connect(NoTls));
                let (new, connection) = match connecting.await {
                    Ok(Ok(pair)) => pair,
                    Ok(Err(e)) => return Err(Failure::Lost(connect_failure(&e, &target.config))),
                    Err(_) => return Err(Failure::Lost(over_limit("connect", limit))),
                };
                // Polled whenever a later call waits on the runtime.
                tokio::spawn(connection);
                *client = Some(new);
            }
            let Some(active) = client.as_mut() else {
                unreachable!("connected just above")
            };
            let left = limit.saturating_sub(started.elapsed());
            match tokio::time::timeout(left, op(active)).await {
                Ok(Ok(value)) => Ok(value),
                Ok(Err(e)) if e.as_db_error().is_some() && !active.is_closed() => {
                    Err(Failure::Server(describe(&e)))
                }
                Ok(Err(e)) => Err(Failure::Lost(describe(&e))),
                Err(_) => Err(Failure::Lost(over_limit("answer", limit))),
            }
        });
        if let Err(failure) = &result {
            if matches!(failure, Failure::Lost(_)) {
                *client = None;
            }
        }
        result.map_err(|failure| match failure {
            Failure::Server(text) => Failure::Server(target.scrub(&text)),
            Failure::Lost(text) => Failure::Lost(target.scrub(&text)),
        })
    }

    /// Exit 125 with the store's (password-free) name.
    pub fn fail<T>(&self, what: &str) -> Result<T> {
        fail(
            Code::Internal,
            format!("store {}: {}", self.target.shown, self.target.scrub(what)),
        )
    }
}

fn over_limit(what: &str, limit: Duration) -> String {
    format!(
        "the server did not {what} within {}",
        humantime::format_duration(limit)
    )
}

/// Why connecting failed, naming the server's host and port: the client's
/// own text ("error connecting to server") leaves out both and the reason.
fn connect_failure(e: &Error, config: &tokio_postgres::Config) -> String {
    use std::io::ErrorKind;
    let cause = std::error::Error::source(e).and_then(|s| s.downcast_ref::<std::io::Error>());
    let (Some(cause), None) = (cause, e.as_db_error()) else {
        return describe(e);
    };
    let ports = config.get_ports();
    let servers: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            match host {
                tokio_postgres::config::Host::Tcp(name) => format!("{name}:{port}"),
                tokio_postgres::config::Host::Unix(dir) => {
                    format!("{}/.s.PGSQL.{port}", dir.display())
                }
            }
        })
        .collect();
    let server = servers.join(", ");
    match cause.kind() {
        ErrorKind::ConnectionRefused => format!(
            "cannot connect to {server}: connection refused (is the server running, and on that host and port?)"
        ),
        ErrorKind::TimedOut => format!(
            "cannot connect to {server}: timed out (is the host reachable, or a firewall in the way?)"
        ),
        ErrorKind::NotFound => format!("cannot connect to {server}: no such socket (is the server running?)"),
        _ => format!("cannot connect to {server}: {cause}"),
    }
}

/// A client error as one line that tells what to do.
fn describe(e: &Error) -> String {
    let Some(db) = e.as_db_error() else {
        return if e.is_closed() {
            "the connection to the server was lost".into()
        } else {
            e.to_string()
        };
    };
    let hint = match db.code() {
        c if *c == SqlState::INVALID_PASSWORD
            || *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION =>
        {
            " (check the user and password in the URL or PGPASSWORD)"
        }
        c if *c == SqlState::INVALID_CATALOG_NAME => " (create the database, or fix the URL)",
        c if *c == SqlState::INSUFFICIENT_PRIVILEGE => {
            " (grant the user rights on the table, or choose another ?table=)"
        }
        c if *c == SqlState::QUERY_CANCELED => " (the server's statement_timeout ran out)",
        _ => "",
    };
    format!("{}{hint}", db.message())
}
