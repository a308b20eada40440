//! Identifying a store file before SQLite touches it, and creating one.
//!
//! SQLite would happily open any file, and opening is not harmless: it
//! creates `-wal`/`-shm` files beside a WAL database and rolls back a
//! rollback journal it finds hot, changing another application's bytes.
//! So idem decides with plain reads first: only a regular file that is
//! empty (new) or carries idem's `application_id` in its header is handed
//! to SQLite; anything else — a FIFO, a device, another application's
//! database, a newer schema — is refused untouched. A store whose stamp is
//! still in its `-wal` only (a fresh store before its first checkpoint)
//! is recognised by reading the WAL's newest committed copy of page 1.

use super::schema::{APPLICATION_ID, SCHEMA_VERSION};
use super::store_error;
use anyhow::Result;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use std::fs::{DirBuilder, File, Metadata, OpenOptions};
use std::io::{self, BufReader, Read};
use std::os::unix::fs::{DirBuilderExt, FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What the file at the store's path is.
pub(super) enum Found {
    Missing,
    /// Zero bytes long: a store another idem is creating right now, or a new one.
    Empty,
    /// Carries idem's application id (in its header, or in its WAL).
    Idem {
        /// Initialised at this build's schema, in WAL mode: no set-up needed.
        ready: bool,
    },
}

/// Looks at the file without letting SQLite near it: exit 125 for
/// anything that is not (or not yet) an idem store this build can use.
pub(super) fn identify(path: &Path) -> Result<Found> {
    let file = match open_regular(path) {
        Ok(Some(file)) => file,
        Ok(None) => return Ok(Found::Missing),
        Err(Refusal::Special(kind)) => {
            return store_error(
                path,
                &format!(
                    "it is {kind}, not a store file; it was left untouched (give --db a file path)"
                ),
            )
        }
        Err(Refusal::Io(e)) => {
            return store_error(path, &format!("cannot read it: {}", io_problem(path, &e)))
        }
    };
    super::name::one_name(path, &file)?;
    let read = |file: &File| {
        read_header(file).or_else(|e| store_error(path, &format!("cannot read it: {e}")))
    };
    let Some(mut header) = read(&file)? else {
        return Ok(Found::Empty);
    };
    if is_blank(&header) {
        // Maybe another idem between its first write and its stamp (see
        // `Creating`): once it is done, the header says whose file it is.
        let file = creation_lock(file, FlockArg::LockSharedNonblock)
            .or_else(|e| store_error(path, &format!("cannot read it: {e}")))?;
        match read(&file)? {
            Some(now) => header = now,
            None => return Ok(Found::Empty),
        }
    }
    if &header[..16] != b"SQLite format 3\0" {
        return store_error(
            path,
            "it is not an idem store (not an SQLite file); it was left untouched",
        );
    }
    let stamp = |h: &[u8; 100]| (be32(&h[68..]) as i32, be32(&h[60..]) as i32);
    let wal_mode = header[18] == 2 && header[19] == 2;
    let (mut app, mut version) = stamp(&header);
    if app == 0 && wal_mode {
        // A fresh store (before its first checkpoint) is stamped in the WAL only.
        if let Some(newest) = wal_page_one(&with_suffix(path, "-wal")) {
            (app, version) = stamp(&newest);
        }
    }
    if app != APPLICATION_ID {
        return refuse_foreign(path);
    }
    check_identity(path, app, version, 0)?;
    Ok(Found::Idem {
        ready: wal_mode && app == APPLICATION_ID && version == SCHEMA_VERSION,
    })
}

/// Refuses a database that is not idem's or is newer than this build; Ok
/// for an idem store and for a new, blank one (no id, no version, no
/// tables). Used on the raw header first, then again by SQLite's own view
/// under its lock.
pub(super) fn check_identity(path: &Path, app: i32, version: i32, tables: i64) -> Result<()> {
    let blank = app == 0 && version == 0 && tables == 0;
    if app != APPLICATION_ID && !blank {
        return refuse_foreign(path);
    }
    if version > SCHEMA_VERSION {
        return store_error(
            path,
            &format!("it has schema version {version}, newer than this idem understands ({SCHEMA_VERSION}); upgrade idem"),
        );
    }
    Ok(())
}

fn refuse_foreign<T>(path: &Path) -> Result<T> {
    store_error(
        path,
        "it is not an idem store (an SQLite database of another application); it was left untouched",
    )
}

enum Refusal {
    /// Not a regular file: what it is instead.
    Special(&'static str),
    Io(io::Error),
}

/// Opens `path` for reading if it is a regular file; `None` if missing.
/// Never blocks (a FIFO without a writer would hang `open`) and never
/// takes a terminal as controlling terminal.
fn open_regular(path: &Path) -> std::result::Result<Option<File>, Refusal> {
    match std::fs::metadata(path) {
        Ok(meta) if !meta.is_file() => return Err(Refusal::Special(kind(&meta))),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Refusal::Io(e)),
    }
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(Refusal::Io)?;
    // The path may have been swapped for something else since the look.
    let meta = file.metadata().map_err(Refusal::Io)?;
    if meta.is_file() {
        Ok(Some(file))
    } else {
        Err(Refusal::Special(kind(&meta)))
    }
}

fn kind(meta: &Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else {
        "not a regular file"
    }
}

/// Held while idem makes a new file its store: SQLite writes the header
/// (`auto_vacuum`, which must come first) a moment before idem's stamp,
/// and another idem reading the header in between would take the file for
/// another application's. `flock` is apart from SQLite's own locks.
pub(super) struct Creating(#[allow(dead_code)] Flock<File>);

impl Creating {
    pub(super) fn lock(path: &Path) -> Result<Creating> {
        let file =
            File::open(path).or_else(|e| store_error(path, &format!("cannot open it: {e}")))?;
        creation_lock(file, FlockArg::LockExclusiveNonblock)
            .map(Creating)
            .or_else(|e| store_error(path, &format!("cannot lock it: {e}")))
    }
}

/// Takes `how` on `file`, waiting up to 10 s for whoever holds it.
fn creation_lock(mut file: File, how: FlockArg) -> io::Result<Flock<File>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Flock::lock(file, how) {
            Ok(lock) => return Ok(lock),
            Err((back, Errno::EWOULDBLOCK | Errno::EINTR)) if Instant::now() < deadline => {
                file = back;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err((_, errno)) => return Err(errno.into()),
        }
    }
}

/// An SQLite header of a database that holds nothing yet: no id, no
/// version, one page, rollback journal.
fn is_blank(header: &[u8; 100]) -> bool {
    header[..16] == *b"SQLite format 3\0"
        && header[18] == 1
        && be32(&header[28..]) <= 1
        && be32(&header[60..]) == 0
        && be32(&header[68..]) == 0
}

/// The first 100 bytes (the database header); `None` for an empty file.
/// A shorter file is returned zero-padded, so it fails the magic check.
fn read_header(file: &File) -> io::Result<Option<[u8; 100]>> {
    let mut bytes = [0u8; 100];
    let mut filled = 0;
    while filled < bytes.len() {
        match file.read_at(&mut bytes[filled..], filled as u64)? {
            0 => break,
            n => filled += n,
        }
    }
    if filled == 0 {
        return Ok(None);
    }
    if filled < bytes.len() {
        bytes[0] = 0;
    }
    Ok(Some(bytes))
}

/// The header of the newest committed copy of page 1 in the WAL file
/// `wal`, checking salts and checksums frame by frame as SQLite's recovery
/// does (a frame that fails ends the log). `None` if there is none.
fn wal_page_one(wal: &Path) -> Option<[u8; 100]> {
    let file = open_regular(wal).ok()??;
    let mut wal = BufReader::with_capacity(1 << 16, file);
    let mut head = [0u8; 32];
    wal.read_exact(&mut head).ok()?;
    let magic = be32(&head);
    if magic & !1 != 0x377f_0682 {
        return None;
    }
    let big_endian = magic & 1 == 1;
    let page_size = match be32(&head[8..]) {
        1 => 65_536,
        n if n.is_power_of_two() && (512..=32_768).contains(&n) => n as usize,
        _ => return None,
    };
    let mut sum = checksum((0, 0), &head[..24], big_endian);
    if (sum.0, sum.1) != (be32(&head[24..]), be32(&head[28..])) {
        return None;
    }
    let (mut frame, mut page) = ([0u8; 24], vec![0u8; page_size]);
    let (mut latest, mut committed) = (None, None);
    while wal.read_exact(&mut frame).is_ok() && wal.read_exact(&mut page).is_ok() {
        if frame[8..16] != head[16..24] {
            break;
        }
        sum = checksum(checksum(sum, &frame[..8], big_endian), &page, big_endian);
        if (sum.0, sum.1) != (be32(&frame[16..]), be32(&frame[20..])) {
            break;
        }
        if be32(&frame) == 1 {
            let mut header = [0u8; 100];
            header.copy_from_slice(&page[..100]);
            latest = Some(header);
        }
        if be32(&frame[4..]) != 0 {
            committed = latest;
        }
    }
    committed
}

/// SQLite's WAL checksum over `data` (a multiple of 8 bytes), continuing `sum`.
fn checksum(mut sum: (u32, u32), data: &[u8], big_endian: bool) -> (u32, u32) {
    let word = |b: &[u8]| {
        let b = [b[0], b[1], b[2], b[3]];
        if big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        }
    };
    for pair in data.chunks_exact(8) {
        sum.0 = sum.0.wrapping_add(word(pair)).wrapping_add(sum.1);
        sum.1 = sum.1.wrapping_add(word(&pair[4..])).wrapping_add(sum.0);
    }
    sum
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

pub(super) fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Creates the store's directory (0700) and file (0600) if missing.
pub(super) fn create_file(path: &Path) -> Result<()> {
    if let Some((link, owner)) = foreign_symlink(path) {
        return store_error(
            path,
            &format!(
                "{} is a symbolic link owned by another user (uid {owner}), and idem does not create a store \
                 through someone else's link (it could point anywhere); give --db the real path",
                link.display()
            ),
        );
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .or_else(|e| {
                store_error(
                    path,
                    &format!("cannot create its directory: {}", io_problem(dir, &e)),
                )
            })?;
    }
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .or_else(|e| store_error(path, &format!("cannot create it: {}", io_problem(path, &e))))?;
    Ok(())
}

/// The first of `path` and its ancestors that is a symbolic link owned by
/// neither this user nor root, with its owner: in a shared directory
/// (`/tmp`) anyone may plant `idem.db` pointing at a file of the caller's.
fn foreign_symlink(path: &Path) -> Option<(PathBuf, u32)> {
    let me = nix::unistd::geteuid().as_raw();
    path.ancestors()
        .filter(|p| !p.as_os_str().is_empty())
        .find_map(|p| {
            let meta = std::fs::symlink_metadata(p).ok()?;
            (meta.file_type().is_symlink() && meta.uid() != me && meta.uid() != 0)
                .then(|| (p.to_owned(), meta.uid()))
        })
}

/// An I/O error, with the file that denies this user access where that is
/// the cause.
fn io_problem(path: &Path, e: &io::Error) -> String {
    if e.kind() == io::ErrorKind::PermissionDenied {
        if let Some(problem) = permission_problem(path) {
            return problem;
        }
    }
    e.to_string()
}

/// Which of the files SQLite needs this user cannot use, and why: the store
/// (read and write), its directory (to create the `-wal` and `-shm`
/// files), and those two when they exist.
pub(super) fn permission_problem(path: &Path) -> Option<String> {
    use nix::unistd::{access, AccessFlags};
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let rw = AccessFlags::R_OK | AccessFlags::W_OK;
    let mut wanted = vec![(
        dir.clone(),
        AccessFlags::W_OK | AccessFlags::X_OK,
        "create files in",
    )];
    for file in [
        path.to_owned(),
        with_suffix(path, "-wal"),
        with_suffix(path, "-shm"),
    ] {
        wanted.push((file, rw, "write"));
    }
    for (file, how, doing) in wanted {
        let Ok(meta) = std::fs::metadata(&file) else {
            continue;
        };
        if access(&file, how).is_err() {
            return Some(format!(
                "permission denied: this user (uid {}) cannot {doing} {} (owner uid {}, mode {:04o}); \
                 run idem as the store's owner, or give --db a store of your own",
                nix::unistd::getuid(),
                crate::text::escape(file.as_os_str().as_encoded_bytes()),
                meta.uid(),
                meta.mode() & 0o7777
            ));
        }
    }
    None
}
