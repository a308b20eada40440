//! How SQLite failures reach the user: exit 125 and one line that names
//! the store, says what went wrong in plain words, and what to do.

use crate::exit::{Code, Exit};
use anyhow::Result;
use rusqlite::ErrorCode;
use std::path::Path;

pub(super) fn describe(e: &rusqlite::Error) -> String {
    if e.sqlite_error()
        .is_some_and(|e| e.extended_code == rusqlite::ffi::SQLITE_READONLY_DBMOVED)
    {
        return "the store file was moved away or deleted while idem had it open (move a store \
                only while no idem runs on it)"
            .into();
    }
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => {
            "the file is corrupt (restore it from a backup, or move it away to start afresh)".into()
        }
        Some(ErrorCode::DiskFull) => "the disk is full".into(),
        Some(ErrorCode::ReadOnly | ErrorCode::CannotOpen | ErrorCode::PermissionDenied) => {
            format!("it cannot be written ({e}); check the permissions and free space of the file and its directory")
        }
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            "it stayed locked by other processes for too long".into()
        }
        _ => e.to_string(),
    }
}

/// `describe`, naming the file this user may not use when that is the cause.
pub(super) fn describe_at(path: &Path, e: &rusqlite::Error) -> String {
    match e.sqlite_error_code() {
        Some(ErrorCode::ReadOnly | ErrorCode::CannotOpen | ErrorCode::PermissionDenied) => {
            super::file::permission_problem(path).unwrap_or_else(|| describe(e))
        }
        _ => describe(e),
    }
}

pub(super) fn store_error<T>(path: &Path, what: &str) -> Result<T> {
    Err(store_failure(path, what))
}

/// Exit 125 naming the store.
pub(super) fn store_failure(path: &Path, what: &str) -> anyhow::Error {
    Exit::new(Code::Internal, format!("store {}: {what}", path.display())).into()
}

/// Whether another connection holds the lock `e` ran into.
pub(super) fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}
