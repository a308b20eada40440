//! Checking a file before SQLite touches it, and creating a new one.
//!
//! SQLite would happily open (and, in WAL mode, change) any file. So the
//! first 100 bytes are read first: a file that is not SQLite, belongs to
//! another application or has a newer schema is refused untouched, and a
//! new store gets private permissions from its very first byte.

use super::{store_error, APPLICATION_ID, SCHEMA_VERSION};
use anyhow::Result;
use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

/// The facts of an SQLite file header that decide whether idem may open it.
#[derive(Default)]
pub(super) struct Header {
    /// Zero bytes long: a store another idem is creating right now, or a new one.
    pub(super) empty: bool,
    pub(super) magic_ok: bool,
    pub(super) wal: bool,
    pub(super) application_id: i32,
    pub(super) user_version: i32,
}

impl Header {
    pub(super) fn check(&self, path: &Path) -> Result<()> {
        if self.empty {
            return Ok(());
        }
        if !self.magic_ok {
            return store_error(
                path,
                "it is not an idem store (not an SQLite file); it was left untouched",
            );
        }
        if self.application_id != 0 && self.application_id != APPLICATION_ID {
            return store_error(path, "it is an SQLite database of another application, not an idem store; it was left untouched");
        }
        if self.application_id == APPLICATION_ID && self.user_version > SCHEMA_VERSION {
            return store_error(
                path,
                &format!(
                    "it has schema version {}, newer than this idem understands ({SCHEMA_VERSION}); upgrade idem",
                    self.user_version
                ),
            );
        }
        Ok(())
    }

    /// An initialised store at this version, in WAL mode: no set-up needed.
    pub(super) fn is_ready(&self) -> bool {
        self.magic_ok
            && self.wal
            && self.application_id == APPLICATION_ID
            && self.user_version == SCHEMA_VERSION
    }
}

pub(super) fn read_header(path: &Path) -> io::Result<Header> {
    let mut file = File::open(path)?;
    let mut bytes = [0u8; 100];
    let mut filled = 0;
    while filled < bytes.len() {
        match file.read(&mut bytes[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    if filled == 0 {
        return Ok(Header {
            empty: true,
            ..Header::default()
        });
    }
    let be =
        |at: usize| i32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    Ok(Header {
        empty: false,
        magic_ok: filled == 100 && &bytes[..16] == b"SQLite format 3\0",
        wal: bytes[18] == 2 && bytes[19] == 2,
        application_id: be(68),
        user_version: be(60),
    })
}

/// Creates the store's directory (0700) and file (0600) if missing.
pub(super) fn create_file(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .or_else(|e| store_error(path, &format!("cannot create its directory: {e}")))?;
    }
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .or_else(|e| store_error(path, &format!("cannot create it: {e}")))?;
    Ok(())
}

pub(super) fn check_identity(path: &Path, app: i32, version: i32, tables: i64) -> Result<()> {
    if (app == 0 && tables > 0) || (app != 0 && app != APPLICATION_ID) {
        return store_error(
            path,
            "it is an SQLite database of another application, not an idem store; it was left untouched",
        );
    }
    if version > SCHEMA_VERSION {
        return store_error(
            path,
            &format!("it has schema version {version}, newer than this idem understands ({SCHEMA_VERSION}); upgrade idem"),
        );
    }
    Ok(())
}
