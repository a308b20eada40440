//! The tables idem keeps on a PostgreSQL server, and their version.
//!
//! Four objects per `?table=NAME`: the records table `NAME`, the output
//! journal `NAME_journal`, the sequence `NAME_token` that hands out fencing
//! tokens, and `NAME_meta`, whose `schema_version` row says which layout
//! this is. They are created on first use inside one transaction under an
//! advisory lock, so hosts that race to create them all see one result; an
//! older layout is upgraded the same way by whoever opens it first (versions
//! 1 to 3 had no journal: their records keep their output in the `stdout`
//! and `stderr` columns, which later records leave empty). A newer version
//! is refused untouched; a table of that name that idem did not create is
//! never adopted. `inspect`, `stats` and the other commands that must not
//! create a store look at it when they open it; `run` learns that it is
//! ready from its first read, which carries the version check in the same
//! round trip, and settles it the long way only when it is not.

use super::conn::{Failure, CALL_LIMIT};
use super::records::record_from_row;
use super::{both, PgStore};
use crate::store::{Millis, Mode, Record};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, Error, GenericClient};

/// The layout this build reads and writes.
pub const SCHEMA_VERSION: i64 = 4;

/// Upgrades; entry N brings a store from version N + 1 to N + 2. `{records}`
/// and `{journal}` stand for the quoted table names.
const MIGRATIONS: &[&str] = &[
    // Version 2, the label (issue 14): `--label TEXT`, shown by inspect.
    "ALTER TABLE {records} ADD COLUMN IF NOT EXISTS label text;",
    // Version 3, the owner's PID namespace (issue 11: inode of
    // /proc/self/ns/pid), so that containers on one machine are judged by
    // the lease, not by pids that mean nothing to each other. NULL on older
    // records: unknown.
    "ALTER TABLE {records} ADD COLUMN IF NOT EXISTS owner_pid_ns bigint;",
    JOURNAL,
];

/// Version 4, the output journal (issue 13, see `journal.rs`): the journal
/// table, and per-stream byte counts on the record (NULL on records written
/// before: their output is in the `stdout` and `stderr` columns).
const JOURNAL: &str = "
    ALTER TABLE {records} ADD COLUMN IF NOT EXISTS stdout_bytes bigint,
        ADD COLUMN IF NOT EXISTS stderr_bytes bigint;
    CREATE TABLE IF NOT EXISTS {journal} (
        key text NOT NULL REFERENCES {records} (key) ON DELETE CASCADE,
        token bigint NOT NULL,
        seq bigint NOT NULL,
        frame bytea NOT NULL,
        PRIMARY KEY (key, token, seq)
    );";

/// Quoted names of one store's objects.
pub struct Names {
    pub records: String,
    pub journal: String,
    pub meta: String,
    pub token: String,
    /// The unquoted records table name, for `to_regclass` and the lock key.
    plain: String,
}

impl Names {
    /// `table` is a checked identifier (see `Target::parse`).
    pub fn new(table: &str) -> Names {
        Names {
            records: format!("\"{table}\""),
            journal: format!("\"{table}_journal\""),
            meta: format!("\"{table}_meta\""),
            token: format!("\"{table}_token\""),
            plain: table.to_owned(),
        }
    }
}

impl Names {
    /// The `NOTIFY` channel of this store's journals (`LISTEN` takes it as
    /// the quoted `records`).
    pub fn channel(&self) -> String {
        self.plain.clone()
    }

    /// A migration with the names filled in.
    fn expand(&self, sql: &str) -> String {
        sql.replace("{records}", &self.records)
            .replace("{journal}", &self.journal)
    }
}

/// What the server holds under these names.
pub enum Found {
    /// Ready at this build's version.
    Ready,
    /// Nothing yet.
    Missing,
    /// Made by a newer idem.
    Newer(i64),
    /// Made by an older idem: upgrade it (`migrate`).
    Older(i64),
    /// A table of that name exists, but idem did not make it.
    Foreign,
}

/// Looks at the store without changing anything: one round trip when it
/// is ready.
pub async fn inspect(client: &Client, names: &Names) -> Result<Found, Error> {
    match read_version(client, names).await {
        Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => probe(client, names).await,
        other => other,
    }
}

/// The statement that reads the store's schema version (one row, or none
/// in a table that is not idem's).
pub fn version_sql(names: &Names) -> String {
    format!(
        "SELECT value FROM {} WHERE name = 'schema_version'",
        names.meta
    )
}

async fn read_version(client: &impl GenericClient, names: &Names) -> Result<Found, Error> {
    let sql = version_sql(names);
    Ok(match client.query_typed_opt(&sql, &[]).await? {
        Some(row) => classify(row.get(0)),
        None => Found::Foreign,
    })
}

/// Like `inspect`, without a failing statement (which would abort a
/// transaction).
async fn probe(client: &impl GenericClient, names: &Names) -> Result<Found, Error> {
    let row = client
        .query_one(
            "SELECT to_regclass(quote_ident($1)) IS NOT NULL, to_regclass(quote_ident($2)) IS NOT NULL",
            &[&names.plain, &format!("{}_meta", names.plain)],
        )
        .await?;
    let (records, meta): (bool, bool) = (row.get(0), row.get(1));
    if meta {
        read_version(client, names).await
    } else if records {
        Ok(Found::Foreign)
    } else {
        Ok(Found::Missing)
    }
}

fn classify(version: i64) -> Found {
    match version.cmp(&SCHEMA_VERSION) {
        std::cmp::Ordering::Greater => Found::Newer(version),
        std::cmp::Ordering::Less => Found::Older(version),
        std::cmp::Ordering::Equal => Found::Ready,
    }
}

/// Creates the store if it is missing; returns what is there afterwards.
///
/// The lock is taken before the transaction starts: a transaction that
/// began before a racing creator committed could still see the old catalog.
pub async fn create(client: &mut Client, names: &Names) -> Result<Found, Error> {
    locked(client, names, async |c| create_locked(c, names).await).await
}

/// Upgrades a store of an older version under the same lock as `create`,
/// in a read-write transaction (also for `inspect`, whose connection
/// defaults to read-only: the upgrade only adds columns).
pub async fn migrate(client: &mut Client, names: &Names) -> Result<Found, Error> {
    locked(client, names, async |c| {
        let tx = c.build_transaction().read_only(false).start().await?;
        let version = match read_version(&tx, names).await? {
            Found::Older(version) => version,
            other => return Ok(other),
        };
        let from = usize::try_from(version - 1).unwrap_or(0);
        for migration in MIGRATIONS.iter().skip(from) {
            tx.batch_execute(&names.expand(migration)).await?;
        }
        let stamp = format!(
            "UPDATE {} SET value = {SCHEMA_VERSION} WHERE name = 'schema_version'",
            names.meta
        );
        tx.batch_execute(&stamp).await?;
        tx.commit().await?;
        Ok(Found::Ready)
    })
    .await
}

/// Runs `work` under idem's advisory lock for this store.
async fn locked(
    client: &mut Client,
    names: &Names,
    work: impl AsyncFnOnce(&mut Client) -> Result<Found, Error>,
) -> Result<Found, Error> {
    // Two-key form: the first key marks the lock as idem's.
    let lock = "SELECT pg_advisory_lock(1768187245, hashtext($1))";
    let unlock = "SELECT pg_advisory_unlock(1768187245, hashtext($1))";
    client.execute(lock, &[&names.plain]).await?;
    let done = work(client).await;
    client.execute(unlock, &[&names.plain]).await?;
    done
}

async fn create_locked(client: &mut Client, names: &Names) -> Result<Found, Error> {
    let tx = client.transaction().await?;
    match probe(&tx, names).await? {
        Found::Missing => {}
        other => return Ok(other),
    }
    let Names {
        records,
        meta,
        token,
        ..
    } = names;
    let index = |suffix: &str| format!("\"{}_{suffix}\"", names.plain);
    let (by_started, by_expiry) = (index("started"), index("expires"));
    tx.batch_execute(&format!(
        "CREATE TABLE {meta} (name text PRIMARY KEY, value bigint NOT NULL);
         INSERT INTO {meta} VALUES ('schema_version', {SCHEMA_VERSION});
         CREATE SEQUENCE {token};
         CREATE TABLE {records} (
             key text PRIMARY KEY,
             status text NOT NULL,
             fingerprint bytea NOT NULL,
             command bytea NOT NULL,
             cwd bytea NOT NULL,
             attempt bigint NOT NULL,
             token bigint NOT NULL,
             started_at bigint NOT NULL,
             finished_at bigint,
             expires_at bigint,
             lease_until bigint,
             exit_code integer,
             signal integer,
             timed_out boolean NOT NULL DEFAULT false,
             replays bigint NOT NULL DEFAULT 0,
             owner_host text NOT NULL,
             owner_boot text NOT NULL,
             owner_pid bigint NOT NULL,
             owner_start bigint NOT NULL,
             owner_pid_ns bigint,
             child_pid bigint,
             child_pgid bigint,
             child_start bigint,
             stdout bytea NOT NULL DEFAULT '',
             stderr bytea NOT NULL DEFAULT '',
             stdout_truncated boolean NOT NULL DEFAULT false,
             stderr_truncated boolean NOT NULL DEFAULT false,
             label text
         );
         CREATE INDEX {by_started} ON {records} (started_at DESC, key);
         CREATE INDEX {by_expiry} ON {records} (expires_at) WHERE expires_at IS NOT NULL;
         {}",
        names.expand(JOURNAL)
    ))
    .await?;
    tx.commit().await?;
    Ok(Found::Ready)
}

impl PgStore {
    /// Makes sure the tables are there at this build's version, creating
    /// or upgrading them as `mode` allows; false if they are missing and
    /// `mode` does not create.
    pub(super) fn settle(&mut self, mode: Mode) -> anyhow::Result<bool> {
        let (conn, names) = (&mut self.conn, &self.names);
        let found = conn.call("cannot read the store", CALL_LIMIT, async |c| {
            inspect(c, names).await
        })?;
        let found = match (found, mode) {
            (Found::Missing, Mode::Create) => {
                conn.call("cannot create the store", CALL_LIMIT, async |c| {
                    create(c, names).await
                })?
            }
            (Found::Missing, Mode::Existing | Mode::ReadOnly) => return Ok(false),
            (Found::Older(_), _) => {
                conn.call("cannot upgrade the store", CALL_LIMIT, async |c| {
                    migrate(c, names).await
                })?
            }
            (found, _) => found,
        };
        match found {
            Found::Ready => {
                self.settled = true;
                Ok(true)
            }
            Found::Missing => conn.fail("it vanished while it was being created; try again"),
            Found::Older(version) => conn.fail(&format!(
                "it still has schema version {version} after an upgrade to {SCHEMA_VERSION}; try again"
            )),
            Found::Newer(version) => conn.fail(&format!(
                "it has schema version {version}, newer than this idem understands ({SCHEMA_VERSION}); upgrade idem"
            )),
            Found::Foreign => conn.fail(&format!(
                "table {} exists but is not an idem store; it was left untouched (choose another ?table=)",
                conn.target.table
            )),
        }
    }

    /// Settles the store before its first use (a store `run` opened).
    pub(super) fn ready(&mut self) -> anyhow::Result<()> {
        if !self.settled {
            self.settle(Mode::Create)?;
        }
        Ok(())
    }

    /// `get`'s first read of a store `run` opened: the schema version and
    /// the record in one round trip. `None` unless the store is ready (the
    /// caller then settles it the long way and reads again); a server that
    /// cannot be reached fails at once, as `open` would have.
    pub(super) fn first_read(
        &mut self,
        key: &str,
    ) -> anyhow::Result<Option<(Millis, Option<Record>)>> {
        let (version, read) = (version_sql(&self.names), self.read_sql(false));
        let first = self.conn.try_call(CALL_LIMIT, async |c| {
            let (version, row) = both(
                c.query_typed_opt(&version, &[]),
                c.query_typed_one(&read, &[(&key, Type::TEXT)]),
            )
            .await;
            let ready = matches!(version, Ok(Some(v)) if v.try_get::<_, i64>(0).ok() == Some(SCHEMA_VERSION));
            if !ready {
                return Ok(None);
            }
            let row = row?;
            Ok(Some((row.try_get(0)?, record_from_row(&row, 1)?)))
        });
        match first {
            Ok(Some(found)) => {
                self.settled = true;
                Ok(Some(found))
            }
            Ok(None) | Err(Failure::Server(_)) => Ok(None),
            Err(lost) => self
                .conn
                .fail(&format!("cannot read the store: {}", lost.text())),
        }
    }
}
