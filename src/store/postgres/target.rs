//! What a `postgres://` URL names: the server to connect to, the table
//! idem keeps its records in, and how to show the URL without its password.
//!
//! idem's own query parameter (`table`) and the TLS ones the client library
//! does not know (`sslmode`'s verify modes, `sslrootcert`, `sslcert`,
//! `sslkey`) are taken out before the rest goes to it. What the URL leaves
//! out comes from libpq's usual environment (`PGHOST`, `PGPORT`, `PGUSER`,
//! `PGPASSWORD`, `PGDATABASE`, `PGSSLMODE`, `PGSSLROOTCERT`) and
//! `~/.pgpass`; every text
//! idem shows passes through `Target::scrub`, so a password can never reach
//! stderr or `inspect`.

use super::libpq;
use super::tls::{SslMode, Tls};
use crate::exit::{fail, Code};
use anyhow::Result;
use std::path::PathBuf;
use std::time::Duration;
use tokio_postgres::config::Host;
use tokio_postgres::Config;

/// The table used when the URL has no `?table=`.
pub const DEFAULT_TABLE: &str = "idem_records";
/// PostgreSQL truncates identifiers at 63 bytes; the longest derived name
/// (`<table>_token`) must fit.
const MAX_TABLE_LEN: usize = 63 - "_token".len();

/// A parsed `--db postgres://…` value.
pub struct Target {
    pub config: Config,
    /// The URL without its password, for messages.
    pub shown: String,
    pub table: String,
    pub tls: Tls,
    /// Passwords to blank out of any text idem shows.
    secrets: Vec<String>,
}

/// How long the client waits for a connection, and the server-side limits
/// that keep a stalled peer from holding locks or running forever.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const SESSION_OPTIONS: &str =
    "-c statement_timeout=30000 -c idle_in_transaction_session_timeout=10000";

impl Target {
    pub fn parse(url: &str, read_only: bool) -> Result<Target> {
        Target::parse_with(url, read_only, |name| {
            std::env::var(name).ok().filter(|v| !v.is_empty())
        })
    }

    /// `parse` with the environment given by `env`.
    fn parse_with(
        url: &str,
        read_only: bool,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Target> {
        let shown = redact(url);
        let url = match env("PGPORT") {
            Some(port) => libpq::with_default_port(url, &port),
            None => url.to_owned(),
        };
        let (base, query) = url.split_once('?').unwrap_or((&url, ""));
        let mut table = DEFAULT_TABLE.to_owned();
        let mut passed = Vec::new();
        let mut ssl = [None, None, None, None];
        for param in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = param.split_once('=').unwrap_or((param, ""));
            let slot = ["sslmode", "sslrootcert", "sslcert", "sslkey"]
                .iter()
                .position(|n| *n == name);
            match (name, slot) {
                ("table", _) => table = value.to_owned(),
                (_, Some(at)) => ssl[at] = Some(percent_decode(value)),
                _ => passed.push(param),
            }
        }
        let [mode, root_cert, cert, key] = ssl;
        let mode = mode.or_else(|| env("PGSSLMODE"));
        let mode = match mode.as_deref().map(SslMode::parse) {
            None => SslMode::Prefer,
            Some(Some(mode)) => mode,
            Some(None) => {
                return fail(
                    Code::Usage,
                    format!(
                        "store {shown}: sslmode={} is not one of disable, allow, prefer, require, \
                         verify-ca, verify-full",
                        mode.unwrap_or_default()
                    ),
                )
            }
        };
        let tls = Tls {
            mode,
            root_cert: root_cert.or_else(|| env("PGSSLROOTCERT")),
            cert: cert.or_else(|| env("PGSSLCERT")).map(PathBuf::from),
            key: key.or_else(|| env("PGSSLKEY")).map(PathBuf::from),
        };
        if !is_identifier(&table) {
            return fail(
                Code::Usage,
                format!(
                    "store {shown}: table={table} is not a plain table name \
                     (letters, digits and _, not starting with a digit, at most {MAX_TABLE_LEN} bytes)"
                ),
            );
        }
        let client_url = if passed.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", passed.join("&"))
        };
        let mut config: Config = match client_url.parse() {
            Ok(config) => config,
            Err(e) => {
                let secrets = url_password(&url).into_iter().collect::<Vec<_>>();
                return fail(
                    Code::Usage,
                    format!(
                        "store {shown}: not a valid PostgreSQL URL ({})",
                        scrub(&e.to_string(), &secrets)
                    ),
                );
            }
        };
        if config.get_hosts().is_empty() {
            let hosts = env("PGHOST").unwrap_or_else(libpq::default_host);
            for host in hosts.split(',') {
                config.host(host);
            }
        }
        if config.get_ports().is_empty() {
            if let Some(port) = env("PGPORT").and_then(|p| p.parse().ok()) {
                config.port(port);
            }
        }
        if config.get_user().is_none() {
            if let Some(user) = env("PGUSER").or_else(login_name) {
                config.user(user);
            }
        }
        if config.get_dbname().is_none() {
            if let Some(db) = env("PGDATABASE") {
                config.dbname(db);
            }
        }
        if config.get_password().is_none() {
            if let Some(password) = env("PGPASSWORD").or_else(|| from_pgpass(&config, &env)) {
                config.password(password);
            }
        }
        // libpq never uses TLS on a Unix socket.
        let all_sockets = config
            .get_hosts()
            .iter()
            .all(|h| matches!(h, Host::Unix(_)));
        config.ssl_mode(if all_sockets {
            tokio_postgres::config::SslMode::Disable
        } else {
            tls.mode.for_client()
        });
        let mut options = config.get_options().unwrap_or_default().to_owned();
        options.push(' ');
        options.push_str(SESSION_OPTIONS);
        if read_only {
            options.push_str(" -c default_transaction_read_only=on");
        }
        if config.get_application_name().is_none() {
            config.application_name("idem");
        }
        config
            .options(options.trim_start())
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_user_timeout(Duration::from_secs(20))
            .keepalives_idle(Duration::from_secs(10));
        let mut secrets: Vec<String> = url_password(&url).into_iter().collect();
        if let Some(password) = config.get_password() {
            secrets.push(String::from_utf8_lossy(password).into_owned());
        }
        Ok(Target {
            config,
            shown,
            table,
            tls,
            secrets,
        })
    }

    /// Where the connection goes, for messages: `host:port` (or the socket
    /// path) of each host.
    pub fn endpoint(&self) -> String {
        let ports = self.config.get_ports();
        let port = |i: usize| ports.get(i).or(ports.first()).copied().unwrap_or(5432);
        let each: Vec<String> = self
            .config
            .get_hosts()
            .iter()
            .enumerate()
            .map(|(i, host)| match host {
                Host::Tcp(name) if name.contains(':') => format!("[{name}]:{}", port(i)),
                Host::Tcp(name) => format!("{name}:{}", port(i)),
                Host::Unix(dir) => format!("{}/.s.PGSQL.{}", dir.display(), port(i)),
            })
            .collect();
        each.join(",")
    }

    /// `text` with every password this target knows blanked out.
    pub fn scrub(&self, text: &str) -> String {
        scrub(text, &self.secrets)
    }
}

/// The password `~/.pgpass` holds for the first host.
fn from_pgpass(config: &Config, env: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    let host = match config.get_hosts().first()? {
        Host::Tcp(name) => name.clone(),
        Host::Unix(dir) => dir.to_string_lossy().into_owned(),
    };
    let port = config
        .get_ports()
        .first()
        .copied()
        .unwrap_or(5432)
        .to_string();
    let user = config.get_user()?;
    let db = config.get_dbname().unwrap_or(user);
    libpq::pgpass(&libpq::password_file(env)?, &host, &port, db, user)
}

/// The user libpq picks when neither the URL nor `PGUSER` names one.
fn login_name() -> Option<String> {
    nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.name)
}

fn is_identifier(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_TABLE_LEN
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The URL as it may be shown: no password in the user part, no
/// `password=` parameter.
pub fn redact(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let (rest, query) = match rest.split_once('?') {
        Some((rest, query)) => (rest, Some(query)),
        None => (rest, None),
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            format!("{user}@{host}")
        }
        None => authority.to_owned(),
    };
    let mut shown = format!("{scheme}://{authority}{path}");
    if let Some(query) = query {
        let kept: Vec<&str> = query
            .split('&')
            .filter(|p| !p.is_empty() && !p.starts_with("password="))
            .collect();
        if !kept.is_empty() {
            shown.push('?');
            shown.push_str(&kept.join("&"));
        }
    }
    shown
}

/// The password written in the URL, raw and percent-decoded.
fn url_password(url: &str) -> Vec<String> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    let mut found = Vec::new();
    if let Some((userinfo, _)) = authority.rsplit_once('@') {
        if let Some((_, password)) = userinfo.split_once(':') {
            found.push(password.to_owned());
        }
    }
    for param in query.split('&') {
        if let Some(password) = param.strip_prefix("password=") {
            found.push(password.to_owned());
        }
    }
    let decoded: Vec<String> = found.iter().map(|p| percent_decode(p)).collect();
    found.extend(decoded);
    found.retain(|p| !p.is_empty());
    found
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn scrub(text: &str, secrets: &[String]) -> String {
    let mut text = text.to_owned();
    // Longest first, so a password that contains another is blanked whole.
    let mut secrets: Vec<&String> = secrets.iter().filter(|s| !s.is_empty()).collect();
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    for secret in secrets {
        text = text.replace(secret.as_str(), "***");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_drops_passwords_only() {
        assert_eq!(
            redact(
                "postgres://app:s3cr%40t@db.example:5433/jobs?table=t&password=x&sslmode=disable"
            ),
            "postgres://app@db.example:5433/jobs?table=t&sslmode=disable"
        );
        assert_eq!(
            redact("postgresql://app@db/jobs"),
            "postgresql://app@db/jobs"
        );
        assert_eq!(redact("postgres://db"), "postgres://db");
        // An unescaped @ in the password must not leak its tail.
        assert_eq!(redact("postgres://u:p@ss@h/d"), "postgres://u@h/d");
    }

    #[test]
    fn table_param_is_taken_out_and_checked() {
        let target = Target::parse("postgres://u@h/d?table=jobs_2&sslmode=disable", false).unwrap();
        assert_eq!(target.table, "jobs_2");
        assert_eq!(target.config.get_dbname(), Some("d"));
        let default = Target::parse("postgres://u@h/d", false).unwrap();
        assert_eq!(default.table, DEFAULT_TABLE);
        for bad in ["x-y", "1abc", "", "a;drop", &"a".repeat(58)] {
            let err = Target::parse(&format!("postgres://u@h/d?table={bad}"), false)
                .err()
                .unwrap();
            assert!(err.to_string().contains("plain table name"), "{err}");
        }
    }

    #[test]
    fn tls_settings_come_from_the_url_then_the_environment() {
        let none = |_: &str| None;
        let target = Target::parse_with(
            "postgres://u:pw@h/d?sslmode=verify-full&sslrootcert=%2Fca.pem&sslcert=c.pem",
            false,
            none,
        )
        .unwrap();
        assert_eq!(target.tls.mode, SslMode::VerifyFull);
        assert_eq!(target.tls.root_cert.as_deref(), Some("/ca.pem"));
        assert_eq!(target.tls.cert, Some(PathBuf::from("c.pem")));
        let env = |name: &str| match name {
            "PGSSLMODE" => Some("require".to_owned()),
            "PGSSLROOTCERT" => Some("system".to_owned()),
            _ => None,
        };
        let target = Target::parse_with("postgres://u@h/d", false, env).unwrap();
        assert_eq!(target.tls.mode, SslMode::Require);
        assert_eq!(target.tls.root_cert.as_deref(), Some("system"));
        let err = Target::parse_with("postgres://u:pw@h/d?sslmode=maybe", false, none)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("sslmode=maybe is not one of"), "{err}");
        assert!(!err.contains("pw"), "{err}");
    }

    #[test]
    fn what_the_url_leaves_out_comes_from_the_environment() {
        let env = |name: &str| match name {
            "PGHOST" => Some("/run/pg".to_owned()),
            "PGPORT" => Some("6543".to_owned()),
            "PGDATABASE" => Some("jobs".to_owned()),
            "PGUSER" => Some("app".to_owned()),
            _ => None,
        };
        let target = Target::parse_with("postgresql://", false, env).unwrap();
        assert_eq!(target.endpoint(), "/run/pg/.s.PGSQL.6543");
        assert_eq!(target.config.get_dbname(), Some("jobs"));
        assert_eq!(
            target.config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Disable,
            "no TLS on a socket"
        );
        let target = Target::parse_with("postgresql://h1,h2:7/d", false, env).unwrap();
        assert_eq!(target.endpoint(), "h1:6543,h2:7");
        let target =
            Target::parse_with("postgresql:///d?host=%2Fsock&port=5", false, |_| None).unwrap();
        assert_eq!(target.endpoint(), "/sock/.s.PGSQL.5");
    }

    #[test]
    fn scrub_blanks_url_and_environment_passwords() {
        let target = Target::parse("postgres://u:p%40ss@h/d", false).unwrap();
        assert_eq!(
            target.scrub("failed with p@ss and p%40ss"),
            "failed with *** and ***"
        );
        assert_eq!(target.config.get_password(), Some(&b"p@ss"[..]));
    }

    #[test]
    fn pgpassword_is_used_and_scrubbed_but_the_url_wins() {
        let env = |name: &str| match name {
            "PGPASSWORD" => Some("from-env".to_owned()),
            "PGUSER" => Some("envuser".to_owned()),
            _ => None,
        };
        let target = Target::parse_with("postgres://h/d", false, env).unwrap();
        assert_eq!(target.config.get_password(), Some(&b"from-env"[..]));
        assert_eq!(target.config.get_user(), Some("envuser"));
        assert_eq!(target.scrub("x from-env y"), "x *** y");
        let target = Target::parse_with("postgres://u:url-pw@h/d", false, env).unwrap();
        assert_eq!(target.config.get_password(), Some(&b"url-pw"[..]));
        assert_eq!(target.config.get_user(), Some("u"));
    }
}
