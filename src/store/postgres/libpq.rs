//! What libpq fills in when a URL leaves something out: `PGHOST`, `PGPORT`,
//! `PGDATABASE`, `PGUSER`, `PGPASSWORD`, the default socket directory, and
//! the password file `~/.pgpass` (or `PGPASSFILE`).

use std::path::{Path, PathBuf};

/// Where a server on this machine listens when no host is named: Debian's
/// socket directory, else the upstream default.
pub fn default_host() -> String {
    ["/var/run/postgresql", "/tmp"]
        .into_iter()
        .find(|dir| Path::new(dir).is_dir())
        .unwrap_or("localhost")
        .to_owned()
}

/// `url` with `:port` added to each host of its authority that has none
/// (libpq's `PGPORT`); the client library would otherwise fill in 5432.
pub fn with_default_port(url: &str, port: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (userinfo, hosts) = match authority.rfind('@') {
        Some(at) => authority.split_at(at + 1),
        None => ("", authority),
    };
    if hosts.is_empty() {
        return url.to_owned();
    }
    let hosts: Vec<String> = hosts
        .split(',')
        .map(|host| {
            let has_port = match host.strip_prefix('[') {
                Some(v6) => v6.contains("]:"),
                None => host.contains(':'),
            };
            if has_port || host.is_empty() {
                host.to_owned()
            } else {
                format!("{host}:{port}")
            }
        })
        .collect();
    format!("{scheme}://{userinfo}{}{tail}", hosts.join(","))
}

/// The password file libpq reads: `PGPASSFILE`, else `~/.pgpass`.
pub fn password_file(env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    env("PGPASSFILE").map(PathBuf::from).or_else(|| {
        let home = std::env::var_os("HOME").filter(|h| !h.is_empty())?;
        Some(Path::new(&home).join(".pgpass"))
    })
}

/// The password for (host, port, database, user) from a `.pgpass` file:
/// the first line whose fields match (`*` matches anything; `\:` and `\\`
/// escape). As libpq does, a file that others may read is ignored, with a
/// notice; a Unix socket host matches `localhost`.
pub fn pgpass(path: &Path, host: &str, port: &str, db: &str, user: &str) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path)
        .ok()
        .filter(std::fs::Metadata::is_file)?;
    if meta.mode() & 0o077 != 0 {
        crate::say::notice(format_args!(
            "password file {} has group or world access and is ignored; \
             permissions should be u=rw (0600) or less",
            path.display()
        ));
        return None;
    }
    let text = std::fs::read_to_string(path).ok()?;
    let host = if host.starts_with('/') {
        "localhost"
    } else {
        host
    };
    text.lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .find_map(|line| {
            let fields = split_fields(line);
            let [h, p, d, u, password] = fields.as_slice() else {
                return None;
            };
            let matches = |field: &str, value: &str| field == "*" || field == value;
            (matches(h, host) && matches(p, port) && matches(d, db) && matches(u, user))
                .then(|| password.clone())
        })
}

/// A `.pgpass` line's fields: `:` separates, `\` escapes the next char.
fn split_fields(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    fields.last_mut().unwrap_or(&mut String::new()).push(next);
                }
            }
            ':' if fields.len() < 5 => fields.push(String::new()),
            c => fields.last_mut().unwrap_or(&mut String::new()).push(c),
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn pgport_fills_only_missing_ports() {
        assert_eq!(
            with_default_port("postgres://u:p@h1,h2:6000,[::1]/d?x=1", "7000"),
            "postgres://u:p@h1:7000,h2:6000,[::1]:7000/d?x=1"
        );
        assert_eq!(with_default_port("postgres:///d", "7000"), "postgres:///d");
    }

    #[test]
    fn pgpass_matches_like_libpq() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pgpass");
        std::fs::write(
            &path,
            "# comment\nother:*:*:*:no\ndb.example:5432:jobs:app:pa\\:ss\\\\w\n*:*:*:app:fallback\n\
             localhost:5432:*:sock:viasocket\n",
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let find = |host, db, user| pgpass(&path, host, "5432", db, user);
        assert_eq!(
            find("db.example", "jobs", "app").as_deref(),
            Some("pa:ss\\w")
        );
        assert_eq!(
            find("db.example", "other", "app").as_deref(),
            Some("fallback")
        );
        assert_eq!(find("db.example", "jobs", "nobody"), None);
        assert_eq!(find("/run/pg", "x", "sock").as_deref(), Some("viasocket"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(
            find("db.example", "jobs", "app"),
            None,
            "readable by others"
        );
    }
}
