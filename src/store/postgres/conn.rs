//! One connection to the server, and the time limits around every use.
//!
//! idem is synchronous; the client library is async. A current-thread tokio
//! runtime drives one connection, only while a call waits on it. Every call
//! — connecting included — runs under a time limit, so a dead or stalled
//! server never hangs idem (the lease keeper's connection has limits of a
//! third of the lease, `Store::lease_keeper`). After a limit runs out or the
//! connection drops, the next call connects afresh. Notifications (`LISTEN`)
//! are passed from the connection's task to `wait_note`.

use super::target::Target;
use crate::exit::{fail, Code};
use anyhow::{Context, Result};
use std::time::Duration;
use tokio::runtime::Runtime;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use tokio_postgres::error::SqlState;
use tokio_postgres::{AsyncMessage, Client, Error};
use tokio_postgres_rustls::MakeRustlsConnect;

/// How long one call may take by default: a little more than the server's
/// own `statement_timeout`, so the server's message usually wins.
pub const CALL_LIMIT: Duration = Duration::from_secs(35);

pub struct Conn {
    rt: Runtime,
    client: Option<Client>,
    tls: MakeRustlsConnect,
    pub target: Target,
    /// Payloads of the notifications the current connection received.
    notes: Option<UnboundedReceiver<String>>,
    /// Whether the current connection has run `LISTEN`.
    listening: bool,
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
    pub fn text(&self) -> &str {
        match self {
            Failure::Server(text) | Failure::Lost(text) => text,
        }
    }
}

/// Runs on each thread the runtime starts (the blocking pool that resolves
/// a host name, which outlives the lookup by seconds): every signal stays
/// blocked there. A process-directed signal goes to any thread that does
/// not block it, and this one may have been started before idem blocked
/// the signals it forwards: a SIGCHLD taken there was lost (the supervisor
/// waited for it for ever), a SIGTERM would kill idem before its record.
fn block_signals() {
    use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow};
    let _ = pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&SigSet::all()), None);
}

impl Conn {
    pub fn new(target: Target) -> Result<Conn> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .on_thread_start(block_signals)
            .build()
            .context("cannot start the PostgreSQL client")?;
        let tls = match target.tls.connector() {
            Ok(tls) => tls,
            Err(e) => {
                let code = e
                    .downcast_ref::<crate::exit::Exit>()
                    .map_or(Code::Internal, |x| x.code);
                return fail(code, format!("store {}: {e:#}", target.shown));
            }
        };
        Ok(Conn {
            rt,
            client: None,
            tls,
            target,
            notes: None,
            listening: false,
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
        let Conn {
            rt,
            client,
            tls,
            target,
            notes,
            listening,
        } = self;
        let result = rt.block_on(async {
            let started = tokio::time::Instant::now();
            if client.as_ref().is_none_or(Client::is_closed) {
                let connecting = tokio::time::timeout(limit, target.config.connect(tls.clone()));
                let (new, connection) = match connecting.await {
                    Ok(Ok(pair)) => pair,
                    Ok(Err(e)) => return Err(Failure::Lost(describe_connect(&e, target))),
                    Err(_) => {
                        return Err(Failure::Lost(format!(
                            "cannot connect to {}: timed out after {} (is the host reachable?)",
                            target.endpoint(),
                            crate::text::duration(limit)
                        )))
                    }
                };
                // Polled whenever a later call waits on the runtime.
                let (send, receive) = unbounded_channel();
                let mut connection = connection;
                tokio::spawn(async move {
                    while let Some(Ok(message)) =
                        std::future::poll_fn(|cx| connection.poll_message(cx)).await
                    {
                        if let AsyncMessage::Notification(note) = message {
                            let _ = send.send(note.payload().to_owned());
                        }
                    }
                });
                *client = Some(new);
                *notes = Some(receive);
                *listening = false;
            }
            let Some(active) = client.as_mut() else {
                unreachable!("connected just above")
            };
            let left = limit.saturating_sub(started.elapsed());
            match tokio::time::timeout(left, op(active)).await {
                Ok(Ok(value)) => Ok(value),
                Ok(Err(e))
                    if e.as_db_error().is_some_and(|db| !ends_session(db))
                        && !active.is_closed() =>
                {
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

    /// Whether this connection listens for notifications.
    pub fn listening(&self) -> bool {
        self.listening && self.client.as_ref().is_some_and(|c| !c.is_closed())
    }

    pub fn set_listening(&mut self) {
        self.listening = true;
    }

    /// Waits up to `limit` for a notification with this payload; the
    /// connection is driven meanwhile.
    pub fn wait_note(&mut self, payload: &str, limit: Duration) {
        let Some(notes) = self.notes.as_mut() else {
            return;
        };
        self.rt.block_on(async {
            let _ = tokio::time::timeout(limit, async {
                while let Some(note) = notes.recv().await {
                    if note == payload {
                        return;
                    }
                }
            })
            .await;
        });
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
        crate::text::duration(limit)
    )
}

/// Why connecting failed, as one line naming where it tried to connect:
/// refused, timed out, TLS handshake, certificate, or authentication.
fn describe_connect(e: &Error, target: &Target) -> String {
    let at = target.endpoint();
    if e.as_db_error().is_some() {
        return format!("cannot connect to {at}: {}", describe(e));
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(cause) = source {
        if let Some(tls) = cause.downcast_ref::<rustls::Error>() {
            return format!("cannot connect to {at}: {}", describe_tls(tls, target));
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            if let Some(tls) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                return format!("cannot connect to {at}: {}", describe_tls(tls, target));
            }
            let why = match io.kind() {
                std::io::ErrorKind::ConnectionRefused => {
                    "connection refused (is the server running and accepting TCP connections there?)"
                        .to_owned()
                }
                std::io::ErrorKind::TimedOut => "timed out (is the host reachable?)".to_owned(),
                std::io::ErrorKind::NotFound => {
                    "no server socket there (is the server running, and is this its socket directory?)"
                        .to_owned()
                }
                _ => io.to_string(),
            };
            return format!("cannot connect to {at}: {why}");
        }
        source = cause.source();
    }
    let text = e.to_string();
    if text.contains("server does not support TLS") {
        return format!(
            "cannot connect to {at}: the server does not offer TLS, and sslmode={} requires it",
            mode_name(target.tls.mode)
        );
    }
    format!("cannot connect to {at}: {text}")
}

fn describe_tls(e: &rustls::Error, target: &Target) -> String {
    match e {
        rustls::Error::InvalidCertificate(why) => {
            let hint = match why {
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. } => {
                    "the certificate is not for this host name; connect by the name it was \
                     issued for, or use sslmode=verify-ca"
                }
                rustls::CertificateError::UnknownIssuer => {
                    "it is not signed by a trusted CA; give the server's CA as sslrootcert=FILE"
                }
                rustls::CertificateError::Expired => "it has expired",
                _ => "check sslrootcert and the server's certificate",
            };
            format!("TLS: the server's certificate was rejected ({why}): {hint}")
        }
        rustls::Error::AlertReceived(alert) => format!(
            "TLS handshake failed: the server sent {alert:?} (a client certificate it does not accept? \
             check sslcert and sslkey)"
        ),
        _ => format!(
            "TLS handshake failed: {e} (sslmode={})",
            mode_name(target.tls.mode)
        ),
    }
}

fn mode_name(mode: super::tls::SslMode) -> &'static str {
    use super::tls::SslMode;
    match mode {
        SslMode::Disable => "disable",
        SslMode::Allow => "allow",
        SslMode::Prefer => "prefer",
        SslMode::Require => "require",
        SslMode::VerifyCa => "verify-ca",
        SslMode::VerifyFull => "verify-full",
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
            " (check the user and password in the URL, PGPASSWORD or ~/.pgpass, and the client certificate)"
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

/// Whether a server error ends the session (FATAL, or an operator's
/// `pg_terminate_backend`, SQLSTATE class 57 or 08): the connection is
/// gone even if the client has not seen it close yet, so the call is to be
/// retried on a new one, not taken as a refusal of what it sent.
fn ends_session(db: &tokio_postgres::error::DbError) -> bool {
    let code = db.code().code();
    matches!(db.severity(), "FATAL" | "PANIC") || code.starts_with("57") || code.starts_with("08")
}
