//! Keys and fingerprints: what makes two calls "the same call".
//!
//! The fingerprint is a SHA-256 over an unambiguous encoding of the inputs
//! (see `Fingerprint`); a derived key is `cmd:` plus its first 32 hex digits.
//! Stored keys depend on this encoding, so it is pinned by a fixed-digest test
//! and documented in the README; change it only with a new version tag.

use sha2::{Digest, Sha256};
use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;

/// The longest key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;

/// Builds the fingerprint from tagged, length-prefixed fields.
///
/// Encoding, version 1: the ASCII tag `idem-fp-v1`, then per field one tag
/// byte and, for variable fields, the length as a u64 big-endian followed by
/// the raw bytes:
/// - `a` argv element (one per element, in order)
/// - `c` working directory (with `--cwd`)
/// - `e` variable name, then `v` value, or `u` (no length) when unset
/// - `s` the 32-byte SHA-256 of stdin (with `--fingerprint-stdin`)
/// - `f` the 32-byte SHA-256 of a file's contents (one per
///   `--fingerprint-file`, in the order given; the path is not hashed)
///
/// Fields appear in this order; a call without `--fingerprint-file` hashes
/// exactly what it did before the flag existed.
pub struct Fingerprint(Sha256);

impl Fingerprint {
    pub fn new() -> Self {
        let mut hash = Sha256::new();
        hash.update(b"idem-fp-v1");
        Fingerprint(hash)
    }

    fn field(&mut self, tag: u8, bytes: &[u8]) {
        self.0.update([tag]);
        self.0.update((bytes.len() as u64).to_be_bytes());
        self.0.update(bytes);
    }

    pub fn arg(&mut self, arg: &OsStr) {
        self.field(b'a', arg.as_bytes());
    }

    pub fn cwd(&mut self, dir: &OsStr) {
        self.field(b'c', dir.as_bytes());
    }

    pub fn env(&mut self, name: &OsStr, value: Option<&OsStr>) {
        self.field(b'e', name.as_bytes());
        match value {
            Some(value) => self.field(b'v', value.as_bytes()),
            None => self.0.update(b"u"),
        }
    }

    pub fn stdin_digest(&mut self, digest: &[u8; 32]) {
        self.0.update(b"s");
        self.0.update(digest);
    }

    pub fn file_digest(&mut self, digest: &[u8; 32]) {
        self.0.update(b"f");
        self.0.update(digest);
    }

    pub fn finish(self) -> [u8; 32] {
        self.0.finalize().into()
    }
}

/// The key used when `--key` is not given: `cmd:` + 32 hex digits.
pub fn derived_key(fingerprint: &[u8; 32]) -> String {
    format!("cmd:{}", &hex(fingerprint)[..32])
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks an explicit `--key`: 1 to 1024 bytes.
pub fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("--key must not be empty".into());
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(format!(
            "--key is {} bytes; the limit is {MAX_KEY_BYTES}",
            key.len()
        ));
    }
    Ok(())
}

/// Copies `input` to `spool` while hashing it, so stdin can be fingerprinted
/// without holding it in memory. Returns the SHA-256 of everything copied.
pub fn hash_and_spool(mut input: impl Read, mut spool: impl Write) -> io::Result<[u8; 32]> {
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hash.update(&buf[..n]);
        spool.write_all(&buf[..n])?;
    }
    spool.flush()?;
    Ok(hash.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    fn fp(args: &[&[u8]]) -> [u8; 32] {
        let mut f = Fingerprint::new();
        for a in args {
            f.arg(OsStr::from_bytes(a));
        }
        f.finish()
    }

    /// Digests computed independently (Python hashlib over the README encoding).
    /// Stored keys depend on them: if this test fails, the encoding
    /// changed and every user's derived keys with it.
    #[test]
    fn encoding_is_pinned() {
        assert_eq!(
            derived_key(&fp(&[b"echo", b"hi"])),
            "cmd:04c381c55152b225bbff9092d2a12e2f"
        );
        let mut f = Fingerprint::new();
        f.arg(OsStr::new("true"));
        f.cwd(OsStr::new("/tmp"));
        f.env(OsStr::new("A"), None);
        f.env(OsStr::new("B"), Some(OsStr::new("")));
        f.stdin_digest(&[7; 32]);
        assert_eq!(
            hex(&f.finish()),
            "9df56edaf8a8c9f9ffd8cd7f411cacfdf1978468c2b0a22ba4dce0906e226e0f"
        );
        let mut f = Fingerprint::new();
        f.arg(OsStr::new("true"));
        f.file_digest(&[8; 32]);
        f.file_digest(&[9; 32]);
        assert_eq!(
            hex(&f.finish()),
            "a2566c1abfcd4cf1a9675e9e075daa497b143da183debebf6cf7a043c95582d9"
        );
    }

    #[test]
    fn fields_do_not_run_together() {
        assert_ne!(fp(&[b"ab", b"c"]), fp(&[b"a", b"bc"]));
        assert_ne!(fp(&[b"a b"]), fp(&[b"a", b"b"]));
        assert_ne!(fp(&[b"\xff\xfe"]), fp(&[b"\xef\xbf\xbd"]));
    }

    #[test]
    fn unset_differs_from_empty() {
        let mut unset = Fingerprint::new();
        unset.env(OsStr::new("X"), None);
        let mut empty = Fingerprint::new();
        empty.env(OsStr::new("X"), Some(OsStr::new("")));
        assert_ne!(unset.finish(), empty.finish());
    }

    #[test]
    fn key_limits() {
        assert!(check_key("").is_err());
        assert!(check_key(&"k".repeat(1024)).is_ok());
        assert!(check_key(&"k".repeat(1025)).is_err());
    }

    #[test]
    fn spool_copies_and_hashes() {
        let data = vec![42u8; 200_000];
        let mut out = Vec::new();
        let digest = hash_and_spool(&data[..], &mut out).unwrap();
        assert_eq!(out, data);
        assert_eq!(digest, <[u8; 32]>::from(Sha256::digest(&data)));
    }

    /// A reader that first fails with `kind`, then yields `data`.
    struct FailsOnce {
        kind: Option<io::ErrorKind>,
        data: &'static [u8],
    }

    impl Read for FailsOnce {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if let Some(kind) = self.kind.take() {
                return Err(kind.into());
            }
            let n = self.data.len().min(buf.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn spool_retries_an_interrupted_read_and_stops_at_an_error() {
        let interrupted = FailsOnce {
            kind: Some(io::ErrorKind::Interrupted),
            data: b"abc",
        };
        let mut out = Vec::new();
        let digest = hash_and_spool(interrupted, &mut out).unwrap();
        assert_eq!(out, b"abc");
        assert_eq!(digest, <[u8; 32]>::from(Sha256::digest(b"abc")));
        let broken = FailsOnce {
            kind: Some(io::ErrorKind::BrokenPipe),
            data: b"abc",
        };
        let err = hash_and_spool(broken, Vec::new()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }
}
