//! Where `--db` points: a SQLite file (the default path included), a
//! PostgreSQL URL or a Redis URL, told apart by the scheme, and how each is
//! shown to the user (never with its password).

use super::{postgres, redis};
use anyhow::Result;
use std::path::{Path, PathBuf};

/// Where `--db` points.
pub enum Location {
    File(PathBuf),
    /// `postgres://` or `postgresql://` URL.
    Postgres(String),
    /// `redis://` or `rediss://` URL.
    Redis(String),
}

impl Location {
    /// `--db` / `IDEM_DB`, else `$XDG_STATE_HOME/idem/idem.db`, else
    /// `~/.local/state/idem/idem.db`. An empty value is a usage error, never
    /// the default store (`--db "$UNSET"` must not write somewhere else).
    pub fn resolve(db: Option<&std::ffi::OsStr>) -> Result<Location> {
        // clap takes an empty IDEM_DB for an absent one.
        let empty_env = std::env::var_os("IDEM_DB").is_some_and(|v| v.is_empty());
        match db {
            Some(db) if !db.is_empty() => return Location::parse(db),
            None if !empty_env => {}
            _ => return crate::exit::fail(
                crate::exit::Code::Usage,
                "--db (or IDEM_DB) is empty: give a file path or a postgres:// or redis:// URL, \
                     or unset IDEM_DB for the default store",
            ),
        }
        // A relative XDG_STATE_HOME (`~/state` included) is invalid and
        // ignored, as the XDG base directory specification says.
        let state = match std::env::var_os("XDG_STATE_HOME").filter(|d| Path::new(d).is_absolute())
        {
            Some(dir) => PathBuf::from(dir),
            None => match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
                Some(home) => PathBuf::from(home).join(".local/state"),
                None => {
                    return crate::exit::fail(
                        crate::exit::Code::Internal,
                        "cannot find the store: set --db, IDEM_DB, XDG_STATE_HOME or HOME",
                    )
                }
            },
        };
        Ok(Location::File(state.join("idem").join("idem.db")))
    }

    /// A URL by its scheme (any case), else a file path. Anything that
    /// looks like a URL of another kind (`mysql://…`), or like a near miss
    /// of ours (`postgres:/x`, `redis:x`), is a usage error rather than a
    /// file name. Only the scheme is ever shown: a URL can hold a password.
    fn parse(db: &std::ffi::OsStr) -> Result<Location> {
        let text = db.to_string_lossy();
        let usage = |what: String| crate::exit::fail(crate::exit::Code::Usage, what);
        if text.starts_with('~') {
            // cron and systemd pass `IDEM_DB=~/x.db` as it is: a directory
            // named `~` would be a store nobody finds again.
            return usage(format!(
                "--db {}: `~` is not expanded (idem is not a shell); write $HOME instead, \
                 as in --db \"$HOME/{}\"",
                crate::text::escape(db.as_encoded_bytes()),
                crate::text::escape(
                    text.trim_start_matches('~')
                        .trim_start_matches('/')
                        .as_bytes()
                )
            ));
        }
        let scheme = text.split_once(':').filter(|(s, _)| {
            s.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c))
        });
        let Some((scheme, rest)) = scheme else {
            return Ok(Location::File(PathBuf::from(db)));
        };
        let lower = scheme.to_ascii_lowercase();
        let url = || format!("{lower}:{rest}");
        let ours = match lower.as_str() {
            "postgres" | "postgresql" => Some(Location::Postgres(url())),
            "redis" | "rediss" => Some(Location::Redis(url())),
            _ => None,
        };
        if lower == "file" {
            // SQLite's URI syntax is not idem's: `file:x.db` would be a file
            // of that name, and `?mode=…` options would be ignored.
            return usage(format!(
                "--db: {}: URIs are not taken; give the file's path (write a file named {0}:… as ./{0}:…)",
                crate::text::escape(scheme.as_bytes())
            ));
        }
        match (ours, rest.starts_with("//")) {
            (Some(location), true) => Ok(location),
            (Some(_), false) => usage(format!(
                "--db: a {lower} URL starts with {lower}:// (write a file named {}:… as ./{0}:…)",
                crate::text::escape(scheme.as_bytes())
            )),
            (None, true) => usage(format!(
                "--db: unknown scheme {}:// (idem speaks postgres://, postgresql://, redis:// and rediss://; \
                 a file path needs no scheme)",
                crate::text::escape(scheme.as_bytes())
            )),
            (None, false) => Ok(Location::File(PathBuf::from(db))),
        }
    }
}

impl Location {
    /// The kind of store, as reports and `stats` name it.
    pub fn kind(&self) -> &'static str {
        match self {
            Location::File(_) => "sqlite",
            Location::Postgres(_) => "postgres",
            Location::Redis(_) => "redis",
        }
    }

    /// The store as it may be shown to the user: a path, or a URL without
    /// its password.
    pub fn shown(&self) -> String {
        match self {
            Location::File(path) => format!("SQLite file {}", path.display()),
            Location::Postgres(url) => format!("PostgreSQL {}", postgres::shown(url)),
            Location::Redis(url) => format!("Redis {}", redis::shown(url)),
        }
    }
}
