//! `idem check` on a SQLite file, which it never modifies: SQLite's own
//! `PRAGMA integrity_check`, who may read the file (stored output can hold
//! secrets), whether it lives on a network filesystem (where SQLite's
//! locks cannot be trusted), and whether the write lock can be taken (taken
//! and released at once, writing nothing).

use super::schema::SCHEMA_VERSION;
use super::{describe, SqliteStore};
use crate::store::{Finding, Level};
use anyhow::Result;
use rusqlite::{Connection, OpenFlags, TransactionBehavior};
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

/// `statfs` magic numbers of filesystems whose locking SQLite cannot rely on.
const REMOTE: [(i64, &str); 6] = [
    (0x6969, "NFS"),
    (0x517B, "SMB"),
    (0xFF53_4D42, "CIFS"),
    (0xFE53_4D42, "SMB2"),
    (0x0102_1997, "9p"),
    (0x6573_5546, "FUSE"),
];

impl SqliteStore {
    pub(super) fn run_checks(&mut self) -> Result<Vec<Finding>> {
        let mut found = vec![Finding::new(
            Level::Ok,
            "store",
            format!(
                "{} is an idem store, schema {SCHEMA_VERSION}",
                self.path.display()
            ),
        )];
        found.push(self.integrity());
        found.extend(self.file_checks());
        found.push(self.write_lock());
        Ok(found)
    }

    fn integrity(&self) -> Finding {
        let rows = self
            .conn
            .prepare("PRAGMA integrity_check")
            .and_then(|mut st| {
                st.query_map([], |row| row.get::<_, String>(0))?
                    .collect::<rusqlite::Result<Vec<String>>>()
            });
        match rows {
            Ok(rows) if rows == ["ok"] => {
                Finding::new(Level::Ok, "integrity", "PRAGMA integrity_check: ok")
            }
            Ok(rows) => Finding::new(
                Level::Fail,
                "integrity",
                format!(
                    "PRAGMA integrity_check found {} problem(s), first: {} (restore a backup)",
                    rows.len(),
                    rows.first().map_or("", String::as_str)
                ),
            ),
            Err(e) => Finding::new(
                Level::Fail,
                "integrity",
                format!("cannot check it: {}", describe(&e)),
            ),
        }
    }

    fn file_checks(&self) -> Vec<Finding> {
        let mut found = Vec::new();
        match std::fs::metadata(&self.path) {
            Ok(meta) if meta.permissions().mode() & 0o077 != 0 => found.push(Finding::new(
                Level::Warn,
                "permissions",
                format!(
                    "mode {:o}: others may read stored output, which can hold secrets (chmod 600)",
                    meta.permissions().mode() & 0o777
                ),
            )),
            Ok(meta) => found.push(Finding::new(
                Level::Ok,
                "permissions",
                format!("mode {:o}", meta.permissions().mode() & 0o777),
            )),
            Err(e) => found.push(Finding::new(Level::Fail, "permissions", e.to_string())),
        }
        if let Ok(fs) = nix::sys::statfs::statfs(&self.path) {
            #[allow(clippy::useless_conversion, clippy::unnecessary_cast)]
            let kind = i64::from(fs.filesystem_type().0 as i64);
            match REMOTE.iter().find(|(magic, _)| *magic == kind) {
                Some((_, name)) => found.push(Finding::new(
                    Level::Warn,
                    "filesystem",
                    format!(
                        "the file is on {name}, where SQLite's locks may not hold between hosts; \
                         use one file per machine, or PostgreSQL or Redis to share"
                    ),
                )),
                None => found.push(Finding::new(Level::Ok, "filesystem", "local")),
            }
        }
        found
    }

    /// Takes the write lock on a connection of its own and releases it.
    fn write_lock(&self) -> Finding {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let probe = Connection::open_with_flags(&self.path, flags).and_then(|mut conn| {
            conn.busy_timeout(Duration::from_secs(2))?;
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.rollback()
        });
        match probe {
            Ok(()) => Finding::new(Level::Ok, "write", "the write lock can be taken"),
            Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy) => {
                Finding::new(
                    Level::Ok,
                    "write",
                    "the write lock is busy: runs are using the store",
                )
            }
            Err(e) => Finding::new(
                Level::Fail,
                "write",
                format!(
                    "cannot take the write lock: {} (runs would exit 125)",
                    describe(&e)
                ),
            ),
        }
    }
}
