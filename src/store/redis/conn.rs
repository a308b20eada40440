//! The connection to the server: time limits, reconnecting after a
//! dropped connection, and errors that name the store (never its password)
//! and say what to do.

use super::{RedisStore, Scripts};
use anyhow::Result;
use redis::cluster::{ClusterClient, ClusterConnection};
use redis::{Client, Connection, ConnectionLike, RedisError, RedisResult};
use std::time::Duration;

/// A server that does not accept a connection, or answer a command, within
/// this is down: a dead server never hangs idem.
pub(super) const TIME_LIMIT: Duration = Duration::from_secs(5);

/// Why a call to the server failed.
pub(super) enum Failure {
    Connect(RedisError),
    Call(RedisError),
}

/// A standalone server, or a Redis Cluster followed from any of its nodes.
#[derive(Clone)]
pub(super) enum Server {
    One(Client),
    Cluster(ClusterClient),
}

/// A connection to either.
pub(super) enum Con {
    One(Connection),
    Cluster(Box<ClusterConnection>),
}

impl Con {
    pub(super) fn like(&mut self) -> &mut dyn ConnectionLike {
        match self {
            Con::One(con) => con,
            Con::Cluster(con) => con,
        }
    }

    fn set_timeouts(&self, limit: Duration) -> RedisResult<()> {
        match self {
            Con::One(con) => {
                con.set_read_timeout(Some(limit))?;
                con.set_write_timeout(Some(limit))
            }
            Con::Cluster(con) => {
                con.set_read_timeout(Some(limit))?;
                con.set_write_timeout(Some(limit))
            }
        }
    }

    /// Runs each command (any keys, any slots) and returns their replies.
    pub(super) fn each<T: redis::FromRedisValue>(
        &mut self,
        cmds: Vec<redis::Cmd>,
    ) -> RedisResult<Vec<T>> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        match self {
            Con::One(con) => {
                let mut pipe = redis::pipe();
                for cmd in cmds {
                    pipe.add_command(cmd);
                }
                pipe.query(con)
            }
            Con::Cluster(con) => {
                let mut pipe = redis::cluster::cluster_pipe();
                for cmd in cmds {
                    pipe.add_command(cmd);
                }
                pipe.query(con)
            }
        }
    }
}

/// Connects, and answers or fails within `limit` for each command after.
pub(super) fn connect(client: &Client, limit: Duration) -> RedisResult<Connection> {
    let con = client.get_connection_with_timeout(limit)?;
    con.set_read_timeout(Some(limit))?;
    con.set_write_timeout(Some(limit))?;
    Ok(con)
}

fn connect_server(server: &Server, limit: Duration) -> RedisResult<Con> {
    let con = match server {
        Server::One(client) => Con::One(client.get_connection_with_timeout(limit)?),
        Server::Cluster(client) => Con::Cluster(Box::new(client.get_connection()?)),
    };
    con.set_timeouts(limit)?;
    Ok(con)
}

/// Errors after which the connection cannot be trusted (a late reply would
/// answer the next command): drop it and reconnect.
pub(super) fn is_connection_error(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
}

impl RedisStore {
    /// One call on the connection, connecting first when there is none.
    pub(super) fn call<T>(
        &mut self,
        f: &mut dyn FnMut(&mut Con, &Scripts) -> RedisResult<T>,
    ) -> std::result::Result<T, Failure> {
        let fresh = self.con.is_none();
        let con = match &mut self.con {
            Some(con) => con,
            None => match connect_server(&self.server, self.limit) {
                Ok(con) => self.con.insert(con),
                Err(e) => return Err(Failure::Connect(e)),
            },
        };
        f(con, &self.scripts).map_err(|e| {
            if !is_connection_error(&e) {
                return Failure::Call(e);
            }
            self.con = None;
            // A TLS handshake happens with the first command sent.
            if fresh {
                Failure::Connect(e)
            } else {
                Failure::Call(e)
            }
        })
    }

    /// A client for each server that holds records: the one server, or
    /// each master of the cluster, with its `host:port`.
    pub(super) fn masters(&mut self) -> Result<Vec<(String, Client)>> {
        if let Server::One(client) = &self.server {
            return Ok(vec![(String::new(), client.clone())]);
        }
        let nodes: String = self.exec("cannot list the cluster's nodes", true, |c, _| {
            redis::cmd("CLUSTER").arg("NODES").query(c.like())
        })?;
        let mut masters = Vec::new();
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(address), Some(flags)) = (fields.get(1), fields.get(2)) else {
                continue;
            };
            let flags: Vec<&str> = flags.split(',').collect();
            if !flags.contains(&"master")
                || flags
                    .iter()
                    .any(|f| matches!(*f, "fail" | "noaddr" | "handshake"))
            {
                continue;
            }
            let address = address.split(['@', ',']).next().unwrap_or_default();
            let Some((host, port)) = address.rsplit_once(':') else {
                continue;
            };
            let mut url = match url::Url::parse(&self.target.client_url) {
                Ok(url) => url,
                Err(e) => return self.target.fail(&e.to_string()),
            };
            let moved = url.set_host(Some(host.trim_matches(['[', ']']))).is_ok()
                && url.set_port(port.parse().ok()).is_ok();
            match Client::open(url.as_str()) {
                Ok(client) if moved => masters.push((address.to_owned(), client)),
                _ => {
                    return self
                        .target
                        .fail(&format!("cannot reach cluster node {address}"))
                }
            }
        }
        masters.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(masters)
    }

    /// Runs `f` with another time limit for each call, connecting included
    /// (a renewal gets a third of the lease).
    pub(super) fn within<T>(&mut self, limit: Duration, f: impl FnOnce(&mut Self) -> T) -> T {
        self.set_limit(limit);
        let result = f(self);
        self.set_limit(TIME_LIMIT);
        result
    }

    fn set_limit(&mut self, limit: Duration) {
        self.limit = limit;
        let applied = self.con.as_ref().map(|con| con.set_timeouts(limit));
        if matches!(applied, Some(Err(_))) {
            self.con = None;
        }
    }

    /// A call that fails with exit 125 and a clear message. `retry`: the
    /// call may run twice, so a connection that dropped since the last call
    /// (a server restart) is reconnected once.
    pub(super) fn exec<T>(
        &mut self,
        doing: &str,
        retry: bool,
        mut f: impl FnMut(&mut Con, &Scripts) -> RedisResult<T>,
    ) -> Result<T> {
        let mut tries = if retry { 2 } else { 1 };
        loop {
            tries -= 1;
            match self.call(&mut f) {
                Ok(value) => return Ok(value),
                Err(Failure::Call(e)) if tries > 0 && is_connection_error(&e) => {}
                Err(failure) => return self.failed(doing, &failure),
            }
        }
    }

    /// Exit 125; a failed connection says so rather than what it was for.
    pub(super) fn failed<T>(&self, doing: &str, failure: &Failure) -> Result<T> {
        match failure {
            Failure::Connect(_) => self.target.fail(&describe(failure, &self.target.endpoint)),
            Failure::Call(_) => self.target.fail(&format!(
                "{doing}: {}",
                describe(failure, &self.target.endpoint)
            )),
        }
    }
}

pub(super) fn describe(failure: &Failure, endpoint: &str) -> String {
    match failure {
        Failure::Connect(e) => format!("cannot connect to {endpoint}: {}", why_not_connected(e)),
        Failure::Call(e) => explain(e),
    }
}

/// Why a connection failed: refused, timed out, TLS, or authentication.
pub(super) fn why_not_connected(e: &RedisError) -> String {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(cause) = source {
        let tls = cause.downcast_ref::<rustls::Error>().or_else(|| {
            cause
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        if let Some(tls) = tls {
            return match tls {
                rustls::Error::InvalidCertificate(why) => format!(
                    "TLS: the server's certificate was rejected ({why}); trust its CA \
                     (SSL_CERT_FILE or the system's store)"
                ),
                other => format!("TLS handshake failed: {other}"),
            };
        }
        source = cause.source();
    }
    if e.is_connection_refusal() && e.kind() != redis::ErrorKind::AuthenticationFailed {
        return "connection refused (is the server running and reachable?)".into();
    }
    if e.is_timeout() {
        return "timed out (is the host reachable?)".into();
    }
    explain(e)
}

/// A server error with a hint where the fix is known.
fn explain(e: &RedisError) -> String {
    if e.kind() == redis::ErrorKind::AuthenticationFailed {
        return "authentication failed: the server refused the user or password \
                (from the URL or REDISCLI_AUTH)"
            .into();
    }
    let hint = match e.code() {
        Some("NOAUTH" | "WRONGPASS") => {
            " (authentication: check the user and password in the URL or REDISCLI_AUTH)"
        }
        Some("OOM") => " (the server is out of memory: raise maxmemory or purge records)",
        Some("READONLY") => " (this is a replica: point --db at the primary)",
        _ if e.is_connection_refusal() => " (is the server running and reachable?)",
        _ => "",
    };
    format!("{e}{hint}")
}
