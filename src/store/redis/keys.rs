//! Where a record lives: the one place that names idem's Redis keys.
//!
//! Schema 5 (written by this build) keeps everything of one record under
//! one hash tag, `P{KEY}:rec`, so a Redis Cluster puts all of a record's
//! keys in one hash slot and one script may touch them together; anything
//! else a record needs (an output journal, say) belongs beside it as
//! `P{KEY}:NAME`, made by `record_part`. In the tag, `%`, `{` and `}` are
//! escaped (`%25`, `%7B`, `%7D`): a `}` would end the tag early, an empty
//! tag would hash the whole name, and with no brace left in the tag, the
//! last `{` of a name is where the tag starts, so no two (prefix, key)
//! pairs share a name — prefix `team{` with key `a` and prefix `team` with
//! key `{a` did, in schemas 2 and 3, which left `{` as it was (`V2`;
//! migrate.rs moves such records). The fencing token is the record's own
//! (see claim.lua): no key outside the slot is needed.
//!
//! Schema 1 (stores written before) keeps `P rec:KEY` and one global
//! counter `P token`; such a store on a standalone server keeps working in
//! that layout, so old and new binaries can share it during an upgrade.

/// The key layout of a store, from its schema version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `P rec:KEY` and the global counter `P token`.
    V1,
    /// `P{KEY}:rec`, tokens kept per record, `{` in KEY left as it is
    /// (schemas 2 and 3; read only until migrated).
    V2,
    /// `P{KEY}:rec` with every brace in KEY escaped.
    V3,
}

/// Names the keys of a store with prefix `prefix`.
#[derive(Debug, Clone)]
pub struct Keys {
    pub prefix: String,
    pub layout: Layout,
}

impl Keys {
    /// The hash holding `key`'s record.
    pub fn record_key(&self, key: &str) -> String {
        self.record_part(key, "rec")
    }

    /// Another key of `key`'s record, in the same hash slot (schema 2).
    pub fn record_part(&self, key: &str, part: &str) -> String {
        match self.layout {
            Layout::V1 => format!("{}{part}:{key}", self.prefix),
            Layout::V2 | Layout::V3 => {
                format!("{}{{{}}}:{part}", self.prefix, self.escape(key))
            }
        }
    }

    /// `key` as the tag holds it.
    fn escape(&self, key: &str) -> String {
        let escaped = key.replace('%', "%25").replace('}', "%7D");
        match self.layout {
            Layout::V3 => escaped.replace('{', "%7B"),
            Layout::V1 | Layout::V2 => escaped,
        }
    }

    /// The global token counter, which only schema 1 has.
    pub fn counter(&self) -> Option<String> {
        (self.layout == Layout::V1).then(|| format!("{}token", self.prefix))
    }

    /// The key holding the schema version.
    pub fn schema(&self) -> String {
        format!("{}schema", self.prefix)
    }

    /// A `SCAN MATCH` pattern for the records whose key starts with
    /// `key_prefix`.
    pub fn scan_pattern(&self, key_prefix: &str) -> String {
        match self.layout {
            Layout::V1 => format!("{}*", glob_escape(&self.record_key(key_prefix))),
            Layout::V2 | Layout::V3 => format!(
                "{}*{}",
                glob_escape(&format!("{}{{{}", self.prefix, self.escape(key_prefix))),
                glob_escape("}:rec")
            ),
        }
    }

    /// The idem key of a record key that `scan_pattern` matched.
    pub fn key_of(&self, record_key: &str) -> Option<String> {
        match self.layout {
            Layout::V1 => record_key
                .strip_prefix(&self.record_key(""))
                .map(str::to_owned),
            Layout::V2 | Layout::V3 => {
                let tag = record_key
                    .strip_prefix(&self.prefix)?
                    .strip_prefix('{')?
                    .strip_suffix("}:rec")?;
                let braces: &[char] = match self.layout {
                    Layout::V3 => &['{', '}'],
                    _ => &['}'],
                };
                (!tag.contains(braces)).then(|| unescape(tag))
            }
        }
    }
}

fn unescape(tag: &str) -> String {
    tag.replace("%7D", "}")
        .replace("%7B", "{")
        .replace("%25", "%")
}

/// `text` as a literal in a `MATCH` glob pattern.
fn glob_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_of_a_record_shares_one_hash_tag() {
        let keys = Keys {
            prefix: "idem:".into(),
            layout: Layout::V3,
        };
        assert_eq!(keys.record_key("job-1"), "idem:{job-1}:rec");
        assert_eq!(keys.record_part("job-1", "journal"), "idem:{job-1}:journal");
        for key in ["}", "a}b", "%7D", "{x}", "50%", "%7B", "{"] {
            let rec = keys.record_key(key);
            assert_eq!(keys.key_of(&rec).as_deref(), Some(key), "{rec}");
            let tag = &rec[rec.find('{').unwrap() + 1..];
            assert!(tag.find('}').unwrap() > 0, "empty tag in {rec}");
            assert!(!tag[..tag.find('}').unwrap()].contains('}'));
        }
        assert_eq!(keys.counter(), None);
        assert_eq!(keys.scan_pattern("a*"), "idem:{a\\**}:rec");
    }

    #[test]
    fn no_two_prefix_and_key_pairs_share_a_name() {
        let name = |prefix: &str, key: &str| {
            Keys {
                prefix: prefix.into(),
                layout: Layout::V3,
            }
            .record_key(key)
        };
        assert_ne!(name("team{", "a"), name("team", "{a"));
        let parts = ["", "{", "}", "a", "%", "{a", "a}", "}{", "%7B", "%7D", "{}"];
        let mut seen = std::collections::HashMap::new();
        for prefix in parts.iter().flat_map(|p| parts.map(|q| format!("{p}{q}"))) {
            for key in parts.iter().flat_map(|p| parts.map(|q| format!("{p}{q}x"))) {
                let was = seen.insert(name(&prefix, &key), (prefix.clone(), key.clone()));
                assert!(
                    was.as_ref()
                        .is_none_or(|was| *was == (prefix.clone(), key.clone())),
                    "{was:?} and ({prefix}, {key}) share a name"
                );
            }
        }
        // Schema 2 and 3's names, which collided.
        let old = |prefix: &str| Keys {
            prefix: prefix.into(),
            layout: Layout::V2,
        };
        assert_eq!(old("team{").record_key("a"), old("team").record_key("{a"));
    }

    #[test]
    fn schema_1_keeps_its_layout() {
        let keys = Keys {
            prefix: "p:".into(),
            layout: Layout::V1,
        };
        assert_eq!(keys.record_key("k"), "p:rec:k");
        assert_eq!(keys.counter().as_deref(), Some("p:token"));
        assert_eq!(keys.key_of("p:rec:k").as_deref(), Some("k"));
        assert_eq!(keys.scan_pattern("a?"), "p:rec:a\\?*");
    }

    #[test]
    fn globs_match_literally() {
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }
}
