//! One store, one name: the file SQLite opens must be the one file every
//! caller reaches by the path `--db` gives, from the open to the outcome.
//!
//! SQLite keeps a store's `-wal` and `-shm` beside it by name, so a file
//! reached under a second name (a hard link, a bind mount of the file
//! itself) is a second store over the same bytes, and is refused; and a
//! file moved away or deleted while COMMAND ran is one nobody will read
//! again, so the outcome is not written there (`Identity`).

use super::store_error;
use anyhow::Result;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Refuses a store file reached under more than one name: SQLite finds
/// its `-wal` and `-shm` by name, so a hard link, or a bind mount of the
/// file itself (`docker run -v /srv/idem.db:/state/idem.db`), makes two
/// stores over one file, without mutual exclusion, whose logs overwrite
/// each other's records. A symbolic link is fine: it resolves to one name.
pub(super) fn one_name(path: &Path, file: &File) -> Result<()> {
    let advice = "share the store's directory instead (docker run -v /srv/idem:/state, \
                  not -v /srv/idem.db:/state/idem.db); it was left untouched";
    let links = file
        .metadata()
        .or_else(|e| store_error(path, &format!("cannot read it: {e}")))?
        .nlink();
    if links > 1 {
        return store_error(
            path,
            &format!("the file has {links} names (hard links), and SQLite keeps a log per name, so two names would be two stores over one file; {advice}"),
        );
    }
    if is_mount_point(path, file) {
        return store_error(
            path,
            &format!("the file is mounted on its own (a bind mount of the file), so it has another name outside, and SQLite keeps a log per name; {advice}"),
        );
    }
    Ok(())
}

/// Whether the open store file is itself the root of a mount: one statx
/// (Linux 5.8 and later say it in `STATX_ATTR_MOUNT_ROOT`), else a look at
/// `/proc/self/mountinfo` for `path`, its symlinks resolved (field 5,
/// octal-escaped), which costs about 0.1 ms a call.
fn is_mount_point(path: &Path, file: &File) -> bool {
    use rustix::fs::{statx, AtFlags, StatxAttributes, StatxFlags};
    use std::os::unix::ffi::OsStrExt;
    if let Ok(stx) = statx(file, "", AtFlags::EMPTY_PATH, StatxFlags::empty()) {
        if stx
            .stx_attributes_mask
            .contains(StatxAttributes::MOUNT_ROOT)
        {
            return stx.stx_attributes.contains(StatxAttributes::MOUNT_ROOT);
        }
    }
    let (Ok(real), Ok(table)) = (
        std::fs::canonicalize(path),
        std::fs::read("/proc/self/mountinfo"),
    ) else {
        return false;
    };
    table
        .split(|&b| b == b'\n')
        .filter_map(|line| line.split(|&b| b == b' ').nth(4))
        .any(|point| unescape_octal(point) == real.as_os_str().as_bytes())
}

/// A mountinfo field with its `\NNN` escapes (space, tab, newline,
/// backslash) decoded.
fn unescape_octal(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let octal = field
            .get(i + 1..i + 4)
            .filter(|d| field[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                out.push(d.iter().fold(0u8, |n, c| n.wrapping_mul(8) + (c - b'0')));
                i += 4;
            }
            None => {
                out.push(field[i]);
                i += 1;
            }
        }
    }
    out
}

/// Which file the store's path named when idem opened it. An operator who
/// moves or deletes the store while COMMAND runs (a clean-up job, a
/// "move" to another disk) leaves idem holding a file nobody will read
/// again: an outcome written there is lost, and the next call runs
/// COMMAND again. So the outcome is written only while the path still
/// names that file, and otherwise said out loud.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Identity {
    dev: u64,
    ino: u64,
}

impl Identity {
    pub(super) fn of(path: &Path) -> Option<Identity> {
        let meta = std::fs::metadata(path).ok()?;
        Some(Identity {
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    /// What became of the store, if its path no longer names this file.
    pub(super) fn gone_from(self, path: &Path) -> Option<&'static str> {
        match Identity::of(path) {
            Some(now) if now == self => None,
            Some(_) => Some("was replaced by another file (moved away, or deleted and made anew)"),
            None => Some("was moved away or deleted"),
        }
    }
}
