//! The schema version under the prefix (`P schema`): which key layout a
//! store has (keys.rs) and whether its records keep their output in a
//! journal. `run` and `purge` write it for a new store and stamp an older
//! one with the journal schema of its layout; a newer version, a Cluster
//! holding schema 1's layout, or other data under the prefix is refused.

use super::conn::{Failure, Server};
use super::keys::Layout;
use super::RedisStore;
use crate::store::Mode;
use anyhow::Result;

/// The schema this build gives new stores: the layout of schema 2 (see
/// keys.rs), with output journals (journal.rs). Schemas 1 and 2 kept a
/// record's output in `stdout` and `stderr` fields, which later records do
/// not have; such a store is read as it is, and the first `run` or `purge`
/// stamps it with the journal schema of its layout (2 becomes 3, 1 becomes
/// `SCHEMA_V1_JOURNAL`), so that older binaries, which would replay those
/// records without their output, refuse it instead.
pub(super) const SCHEMA_VERSION: i64 = 3;
/// Schema 1's layout (global counter, `P rec:KEY`) with output journals.
const SCHEMA_V1_JOURNAL: i64 = 4;

/// The key layout of a store at schema `version`.
fn layout_of(version: i64) -> Layout {
    match version {
        1 | SCHEMA_V1_JOURNAL => Layout::V1,
        _ => Layout::V2,
    }
}

impl RedisStore {
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
                Some(Ok(version @ (1 | 2))) if mode == Mode::ReadOnly => {
                    return Ok(Some((layout_of(version), version)))
                }
                Some(Ok(version @ (1 | 2))) => {
                    let journal = if version == 1 {
                        SCHEMA_V1_JOURNAL
                    } else {
                        SCHEMA_VERSION
                    };
                    self.exec("cannot upgrade the schema version", true, |c, _| {
                        redis::cmd("SET").arg(&key).arg(journal).query::<()>(c.like())
                    })?;
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
