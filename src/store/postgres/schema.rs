//! The tables idem keeps on a PostgreSQL server, and their version.
//!
//! Three objects per `?table=NAME`: the records table `NAME`, the sequence
//! `NAME_token` that hands out fencing tokens, and `NAME_meta`, whose
//! `schema_version` row says which layout this is. They are created on first
//! use inside one transaction under an advisory lock, so hosts that race to
//! create them all see one result. A newer version is refused untouched;
//! a table of that name that idem did not create is never adopted.

use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Error, GenericClient};

/// The layout this build reads and writes.
pub const SCHEMA_VERSION: i64 = 3;

/// Upgrades; entry N brings a store from version N + 1 to N + 2. `{records}`
/// stands for the quoted records table.
const MIGRATIONS: &[&str] = &[
    // Version 2, the label (issue 14): `--label TEXT`, shown by inspect.
    "ALTER TABLE {records} ADD COLUMN IF NOT EXISTS label text;",
    // Version 3, the owner's PID namespace (issue 11: inode of
    // /proc/self/ns/pid), so that containers on one machine are judged by
    // the lease, not by pids that mean nothing to each other. NULL on older
    // records: unknown.
    "ALTER TABLE {records} ADD COLUMN IF NOT EXISTS owner_pid_ns bigint;",
];

/// Quoted names of one store's objects.
pub struct Names {
    pub records: String,
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
            meta: format!("\"{table}_meta\""),
            token: format!("\"{table}_token\""),
            plain: table.to_owned(),
        }
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

async fn read_version(client: &impl GenericClient, names: &Names) -> Result<Found, Error> {
    let sql = format!(
        "SELECT value FROM {} WHERE name = 'schema_version'",
        names.meta
    );
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
            tx.batch_execute(&migration.replace("{records}", &names.records))
                .await?;
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
         CREATE INDEX {by_expiry} ON {records} (expires_at) WHERE expires_at IS NOT NULL;"
    ))
    .await?;
    tx.commit().await?;
    Ok(Found::Ready)
}
