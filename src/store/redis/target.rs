//! What a `redis://` or `rediss://` URL names: the server, idem's key
//! prefix, and the name idem shows for it, which never holds the password.
//!
//! idem's own query parameter (`?prefix=P`) is taken out before the URL
//! reaches the client crate; the others (`protocol=`) pass through. A URL
//! without a password takes redis-cli's `REDISCLI_AUTH`.

use crate::exit::{fail, Code};
use anyhow::Result;

/// The prefix of every key idem writes when the URL names none.
const DEFAULT_PREFIX: &str = "idem:";

/// A parsed `--db` URL.
pub struct Target {
    /// The URL for the client crate: idem's parameters removed.
    pub client_url: String,
    /// The URL as idem shows it: no password, ever.
    pub shown: String,
    /// Every key idem writes starts with this.
    pub prefix: String,
    /// `host:port`, for messages.
    pub endpoint: String,
    /// The password as written and decoded, to scrub from messages.
    secrets: Vec<String>,
}

impl Target {
    pub fn parse(text: &str) -> Result<Target> {
        let url = match url::Url::parse(text) {
            Ok(url) => url,
            // The parser's messages never quote the input.
            Err(e) => return fail(Code::Internal, format!("store {}: {e}", scheme_only(text))),
        };
        let mut prefix = None;
        let mut passed = url::form_urlencoded::Serializer::new(String::new());
        let mut any_passed = false;
        for (name, value) in url.query_pairs() {
            if name == "prefix" {
                prefix = Some(value.into_owned());
            } else {
                passed.append_pair(&name, &value);
                any_passed = true;
            }
        }
        let mut client = url.clone();
        client.set_query(any_passed.then(|| passed.finish()).as_deref());
        // redis-cli's variable, for a password kept out of the URL.
        let env_auth = std::env::var("REDISCLI_AUTH")
            .ok()
            .filter(|a| !a.is_empty());
        let env_auth = env_auth.filter(|_| url.password().is_none());
        if let Some(auth) = &env_auth {
            let encoded: String = url::form_urlencoded::byte_serialize(auth.as_bytes()).collect();
            let _ = client.set_password(Some(&encoded));
        }
        let target = Target {
            client_url: client.to_string(),
            shown: shown(&url, prefix.as_deref()),
            prefix: prefix.clone().unwrap_or_else(|| DEFAULT_PREFIX.into()),
            endpoint: format!(
                "{}:{}",
                url.host_str().unwrap_or(""),
                url.port().unwrap_or(6379)
            ),
            secrets: url
                .password()
                .map(|p| {
                    let decoded = percent_encoding::percent_decode_str(p).decode_utf8_lossy();
                    vec![p.to_owned(), decoded.into_owned()]
                })
                .unwrap_or_default()
                .into_iter()
                .chain(env_auth)
                .collect(),
        };
        if url.host_str().is_none_or(str::is_empty) {
            return target.fail("the URL names no host (redis://[:PASSWORD@]HOST:PORT/DB)");
        }
        if target.prefix.is_empty() {
            return target.fail("?prefix= must not be empty (the default is idem:)");
        }
        if matches!(url.path().trim_matches('/'), p if !p.is_empty() && p.parse::<u32>().is_err()) {
            return target.fail("the database must be a number (redis://HOST:PORT/DB)");
        }
        Ok(target)
    }

    /// Fails with exit 125, naming the store without its password.
    pub fn fail<T>(&self, what: &str) -> Result<T> {
        fail(
            Code::Internal,
            format!("store {}: {}", self.shown, self.scrub(what)),
        )
    }

    /// Removes the password from a message that might contain it.
    pub fn scrub(&self, message: &str) -> String {
        self.secrets
            .iter()
            .filter(|s| !s.is_empty())
            .fold(message.to_owned(), |m, secret| {
                m.replace(secret.as_str(), "***")
            })
    }
}

/// `scheme://[user@]host[:port]/db[?prefix=P]`: what identifies the store.
fn shown(url: &url::Url, prefix: Option<&str>) -> String {
    let user = match url.username() {
        "" => String::new(),
        name => format!("{name}@"),
    };
    let port = url.port().map_or_else(String::new, |p| format!(":{p}"));
    let db = match url.path().trim_matches('/') {
        "" => "/0".to_owned(),
        db => format!("/{db}"),
    };
    let prefix = prefix.map_or_else(String::new, |p| {
        let mut query = url::form_urlencoded::Serializer::for_suffix(String::from("?"), 1);
        query.append_pair("prefix", p);
        query.finish()
    });
    format!(
        "{}://{user}{}{port}{db}{prefix}",
        url.scheme(),
        url.host_str().unwrap_or("")
    )
}

fn scheme_only(text: &str) -> String {
    let scheme = text.split("://").next().unwrap_or("redis");
    format!("{scheme}://…")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_shows_the_password() {
        let t = Target::parse("redis://:s3cr%21t@db.example:6380/2?prefix=jobs:").unwrap();
        assert_eq!(t.shown, "redis://db.example:6380/2?prefix=jobs%3A");
        assert_eq!(t.prefix, "jobs:");
        assert_eq!(t.client_url, "redis://:s3cr%21t@db.example:6380/2");
        assert_eq!(t.scrub("AUTH s3cr!t failed"), "AUTH *** failed");
        let t = Target::parse("rediss://alice:pw@h/?protocol=resp3").unwrap();
        assert_eq!(t.shown, "rediss://alice@h/0");
        assert_eq!(t.prefix, "idem:");
        assert_eq!(t.client_url, "rediss://alice:pw@h/?protocol=resp3");
    }

    #[test]
    fn refuses_what_it_cannot_use() {
        for bad in [
            "redis://h/0?prefix=",
            "redis://h/zero",
            "redis:///0",
            "redis://:pw@[::1",
        ] {
            let err = Target::parse(bad).err().expect(bad).to_string();
            assert!(!err.contains("pw"), "{err}");
        }
    }
}
