//! The owner's lock (SPEC "Crashed owners"): on a SQLite store the kernel
//! decides whether the owner of a record in progress lives.
//!
//! Before its claim commits, the owner takes an open-file-description lock
//! (`F_OFD_SETLK`) on one byte of `<store>-locks`, the byte named in the
//! record (its `owner_lock` column: the claim's token, which no other claim
//! of this store has). The lock belongs to the open file description, which
//! idem and its command's watcher share (`child::watcher`), so the kernel
//! releases it only once both are gone, whatever ended them, and the
//! watcher goes only once COMMAND's group has. Any caller that can open the
//! file, in any PID namespace, tests the byte (`F_OFD_GETLK`) through a
//! description of its own: locked means alive. Records from before this
//! lock name no byte and are judged as before (`policy::owner_alive`).

use super::file::with_suffix;
use crate::store::{Record, Status};
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg};
use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// `<store>-locks`, created beside the store when first needed.
pub(super) struct OwnerLocks {
    path: PathBuf,
    /// Where this process locks the bytes of its claims (read-write).
    mine: Option<File>,
    /// Where it tests others' bytes: a description of its own, so that a
    /// byte this process holds reads as locked too.
    probe: RefCell<Option<File>>,
}

impl OwnerLocks {
    pub(super) fn beside(store: &Path) -> OwnerLocks {
        OwnerLocks {
            path: file_path(store),
            mine: None,
            probe: RefCell::new(None),
        }
    }

    /// The description the claim locks a byte of, opened (created 0600,
    /// like the store) on first use.
    fn mine(&mut self) -> io::Result<&File> {
        let file = match self.mine.take() {
            Some(file) => file,
            None => OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&self.path)?,
        };
        Ok(self.mine.insert(file))
    }

    /// A second descriptor of the description the claim locks, for the
    /// command's watcher to hold until the command's group is gone.
    pub(super) fn share(&mut self) -> io::Result<OwnedFd> {
        Ok(self.mine()?.try_clone()?.into())
    }

    /// Takes `byte` for the claim being written; fails if another
    /// description holds it.
    pub(super) fn lock(&mut self, byte: i64) -> io::Result<()> {
        let fd = self.mine()?.as_raw_fd();
        fcntl(fd, FcntlArg::F_OFD_SETLK(&range(libc::F_WRLCK, byte))).map_err(|e| match e {
            Errno::EAGAIN | Errno::EACCES => io::Error::other(format!(
                "byte {byte} of {} is locked by another process",
                self.path.display()
            )),
            e => io::Error::from(e),
        })?;
        Ok(())
    }

    /// Lets `byte` go (a claim that did not commit).
    pub(super) fn unlock(&mut self, byte: i64) {
        if let Some(file) = &self.mine {
            let _ = fcntl(
                file.as_raw_fd(),
                FcntlArg::F_OFD_SETLK(&range(libc::F_UNLCK, byte)),
            );
        }
    }

    /// Says in a record in progress whether its owner's lock is held, as
    /// of now (a finished record's owner is history).
    pub(super) fn judge(&self, record: &mut Record) {
        if record.status == Status::InProgress {
            if let Some(lock) = &mut record.owner.lock {
                lock.held = self.held(lock.byte);
            }
        }
    }

    /// Whether some process holds `byte`: the owner of the record naming
    /// it is alive. No file: nobody ever took a lock in it (or it was
    /// removed with the store), so nobody holds one.
    fn held(&self, byte: i64) -> bool {
        let mut probe = self.probe.borrow_mut();
        if probe.is_none() {
            let opened = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&self.path);
            match opened {
                Ok(file) => *probe = Some(file),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return false,
                // Cannot tell: an owner is never called dead on a guess.
                Err(_) => return true,
            }
        }
        let Some(probe) = probe.as_ref() else {
            return false;
        };
        let mut range = range(libc::F_WRLCK, byte);
        match fcntl(probe.as_raw_fd(), FcntlArg::F_OFD_GETLK(&mut range)) {
            Ok(_) => i32::from(range.l_type) != libc::F_UNLCK,
            Err(_) => true,
        }
    }
}

fn file_path(store: &Path) -> PathBuf {
    with_suffix(store, "-locks")
}

/// Removes the lock file of a store that is no more, when a new one is
/// made in its place: the new store's tokens start again, and an owner of
/// the old one still running must not hold the new records' bytes. Its
/// lock stays on the removed file, where nobody looks any more.
pub(super) fn forget(store: &Path) {
    let _ = std::fs::remove_file(file_path(store));
}

/// One byte at `byte`, from the start of the file.
fn range(kind: libc::c_int, byte: i64) -> libc::flock {
    libc::flock {
        l_type: kind as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: byte,
        l_len: 1,
        l_pid: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel's answer: a byte is held while any descriptor of the
    /// description that locked it is open (idem's, or its watcher's), and
    /// by nobody else.
    #[test]
    fn a_byte_is_held_while_a_descriptor_of_its_description_is_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("s.db");
        let reader = OwnerLocks::beside(&store);
        assert!(!reader.held(5), "no file yet");
        let mut owner = OwnerLocks::beside(&store);
        let watcher = owner.share().unwrap();
        owner.lock(5).unwrap();
        assert!(reader.held(5));
        assert!(!reader.held(6));
        assert!(owner.held(5), "the owner's own probe sees it too");
        let mut other = OwnerLocks::beside(&store);
        assert!(other.lock(5).is_err());
        drop(owner);
        assert!(reader.held(5), "the watcher's descriptor keeps it");
        drop(watcher);
        assert!(!reader.held(5));
        other.lock(5).unwrap();
    }
}
