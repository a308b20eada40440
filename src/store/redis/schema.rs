//! The schema version under the prefix (`P schema`): which key layout a
//! store has (keys.rs) and whether its records keep their output in a
//! journal. `run` and `purge` write it for a new store, stamp a schema 1
//! store with the journal schema of its layout, and move a schema 2 or 3
//! store to schema 5's names (migrate.rs); a newer version, a Cluster
//! holding schema 1's layout, or other data under the prefix is refused.
//!
//! Before the first command the store does not know whether the server is
//! a Redis Cluster node (`INFO cluster`) or what the schema is. `run`'s
//! first read asks both in the same round trip as the record
//! (`settle_reading`): on a standalone server holding this build's schema,
//! which is the usual case, that read is the call's only round trip before
//! the decision; anything else is settled the long way, then read again.

use super::conn::{Failure, Server, TIME_LIMIT};
use super::keys::Layout;
use super::migrate::MIGRATING;
use super::record::FIELDS;
use super::{seen_from_reply, warning, RedisStore};
use crate::store::{Millis, Mode, Record};
use anyhow::Result;
use redis::{from_redis_value, Value};

/// The server's time and the record (with its revision), as read together.
pub(super) type Seen = (Millis, Option<(Record, String)>);

/// The schema this build gives new stores: schema 5's names (keys.rs,
/// every brace of a key escaped), with output journals (journal.rs).
/// Schemas 2 and 3 named records the same but for keys holding `{`
/// (`Layout::V2`); the first `run` or `purge` moves those (migrate.rs), so
/// that older binaries, which would look for them under their old names,
/// refuse the store instead. Schemas 1 and 2 kept a record's output in
/// `stdout` and `stderr` fields, which later records do not have; such
/// records are read as they are.
pub(super) const SCHEMA_VERSION: i64 = 5;
/// Schema 1's layout (global counter, `P rec:KEY`) with output journals.
const SCHEMA_V1_JOURNAL: i64 = 4;

/// The key layout of a store at schema `version`.
fn layout_of(version: i64) -> Layout {
    match version {
        1 | SCHEMA_V1_JOURNAL => Layout::V1,
        2 | 3 => Layout::V2,
        _ => Layout::V3,
    }
}

impl RedisStore {
    /// Settles the store before a command other than `run`'s first read.
    pub(super) fn ready(&mut self) -> Result<()> {
        if !self.settled {
            self.settle(Mode::Create)?;
        }
        Ok(())
    }

    /// Asks the server whether it is a cluster node (then follows the
    /// cluster), and checks the schema; `None` when there is no store and
    /// `mode` may not create one.
    pub(super) fn settle(&mut self, mode: Mode) -> Result<Option<()>> {
        let info: String = self.exec("cannot reach the server", true, |c, _| {
            redis::cmd("INFO").arg("cluster").query(c.like())
        })?;
        self.follow_cluster(&info)?;
        let Some((layout, version)) = self.check_schema(mode)? else {
            return Ok(None);
        };
        self.keys.layout = layout;
        self.version = version;
        self.settled = true;
        Ok(Some(()))
    }

    /// `run`'s first read: `INFO cluster`, the schema version and the
    /// record in one pipeline. Their answers count only on a standalone
    /// server at this build's schema (the record key assumed its layout);
    /// otherwise the store is settled and the record read again.
    pub(super) fn settle_reading(&mut self, key: &str) -> Result<Seen> {
        let (schema, rkey) = (self.keys.schema(), self.record_key(key));
        let replies: Vec<Value> = self.exec("cannot read a record", true, |c, s| {
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            pipe.cmd("INFO").arg("cluster");
            pipe.cmd("GET").arg(&schema);
            pipe.cmd("EVALSHA")
                .arg(s.read.get_hash())
                .arg(1)
                .arg(&rkey)
                .arg(&FIELDS[..]);
            pipe.query(c.like())
        })?;
        let [info, version, record] = <[Value; 3]>::try_from(replies).unwrap_or_default();
        let info: Option<String> = from_redis_value(info).ok();
        let version: Option<String> = from_redis_value(version).ok().flatten();
        let record: Option<Vec<Option<Vec<u8>>>> = from_redis_value(record).ok();
        let standalone =
            info.is_some_and(|info| warning::info_field(&info, "cluster_enabled") != Some("1"));
        if !standalone || version != Some(SCHEMA_VERSION.to_string()) {
            self.settle(Mode::Create)?;
            return self.read_with_time(key);
        }
        self.settled = true;
        match record {
            Some(values) => Ok(seen_from_reply(key, &values)),
            // The script is not loaded yet (a restarted server).
            None => self.read_with_time(key),
        }
    }

    /// Follows the cluster that `INFO cluster` says this server is a node
    /// of: the client then follows MOVED and ASK as `redis-cli -c` does.
    fn follow_cluster(&mut self, info: &str) -> Result<()> {
        if warning::info_field(info, "cluster_enabled") != Some("1") {
            return Ok(());
        }
        if self.target.prefix.contains(['{', '}']) {
            return self.target.fail(
                "on a Redis Cluster, ?prefix= must not contain { or } (idem puts each record's key in braces)",
            );
        }
        let cluster = redis::cluster::ClusterClient::builder(vec![self.target.client_url.as_str()])
            .connection_timeout(TIME_LIMIT)
            .response_timeout(TIME_LIMIT)
            .build();
        match cluster {
            Ok(cluster) => {
                self.server = Server::Cluster(cluster);
                self.con = None;
                Ok(())
            }
            Err(e) => self.target.fail(&format!("cannot follow the cluster: {e}")),
        }
    }

    /// Checks (or, for `run` and `purge`, upgrades or writes) the schema
    /// version under the prefix; returns the store's key layout and
    /// version. None when there is no store and `mode` may not create one.
    pub(super) fn check_schema(&mut self, mode: Mode) -> Result<Option<(Layout, i64)>> {
        let key = self.keys.schema();
        loop {
            let version: Option<String> = match self.call(&mut |c, _| {
                redis::cmd("GET").arg(&key).query(c.like())
            }) {
                Ok(version) => version,
                Err(Failure::Call(e)) if e.code() == Some("WRONGTYPE") => {
                    return self.target.fail(&format!(
                        "key {key} is not idem's: other data lives under this prefix (choose another ?prefix=)"
                    ))
                }
                Err(failure) => return self.failed("cannot read the schema version", &failure),
            };
            match version.as_deref().map(str::parse::<i64>) {
                Some(Ok(version @ (1 | SCHEMA_V1_JOURNAL)))
                    if matches!(self.server, Server::Cluster(_)) =>
                {
                    return self.target.fail(&format!(
                        "it has schema version {version}, which a Redis Cluster cannot hold (its keys span hash slots)"
                    ))
                }
                Some(Ok(version @ (SCHEMA_VERSION | SCHEMA_V1_JOURNAL))) => {
                    return Ok(Some((layout_of(version), version)))
                }
                Some(Ok(version @ 1..=3)) if mode == Mode::ReadOnly => {
                    return Ok(Some((layout_of(version), version)))
                }
                Some(Ok(1)) => {
                    self.exec("cannot upgrade the schema version", true, |c, _| {
                        redis::cmd("SET")
                            .arg(&key)
                            .arg(SCHEMA_V1_JOURNAL)
                            .query::<()>(c.like())
                    })?;
                }
                Some(Ok(version @ (2 | 3))) => {
                    self.migrate_names(&version.to_string(), SCHEMA_VERSION)?;
                }
                _ if version.as_deref() == Some(MIGRATING) && mode == Mode::ReadOnly => {
                    // Read as schema 5: records not moved yet show up once they are.
                    return Ok(Some((Layout::V3, SCHEMA_VERSION)));
                }
                _ if version.as_deref() == Some(MIGRATING) => {
                    // Another caller is moving records, or died doing it:
                    // the moves are idempotent, so finish them here too.
                    self.migrate_names(MIGRATING, SCHEMA_VERSION)?;
                }
                Some(Ok(newer)) if newer > SCHEMA_VERSION => {
                    return self.target.fail(&format!(
                        "it has schema version {newer}, newer than this idem understands ({SCHEMA_VERSION} and {SCHEMA_V1_JOURNAL}); upgrade idem"
                    ))
                }
                Some(_) => {
                    return self.target.fail(&format!(
                        "key {key} is not idem's: other data lives under this prefix (choose another ?prefix=)"
                    ))
                }
                None if mode != Mode::Create => return Ok(None),
                None => self.exec("cannot write the schema version", true, |c, _| {
                    redis::cmd("SET")
                        .arg(&key)
                        .arg(SCHEMA_VERSION)
                        .arg("NX")
                        .query::<()>(c.like())
                })?,
            }
        }
    }
}
