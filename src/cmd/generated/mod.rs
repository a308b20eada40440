//! The man pages in `man/` and the shell completions in `completions/` are
//! generated from the CLI definition and committed, so users get them
//! without a build step. `committed_files_are_current` regenerates them into
//! a temporary directory and fails if a committed copy differs;
//! `IDEM_UPDATE_GENERATED=1 cargo test` rewrites them instead.
//!
//! This is a unit test of the binary because the generators (clap_mangen,
//! clap_complete) are dev-dependencies: they never ship in `idem` itself.

mod complete;
mod man;

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};

/// The directories this module owns entirely: anything else in them is stale.
const DIRS: [&str; 2] = ["man", "completions"];

/// Every generated file as (path relative to the crate root, contents).
fn generate() -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = man::pages();
    files.extend(complete::scripts());
    files
}

#[test]
fn committed_files_are_current() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    if std::env::var_os("IDEM_UPDATE_GENERATED").is_some() {
        for dir in DIRS {
            let _ = fs::remove_dir_all(root.join(dir));
        }
        write_all(root);
        return;
    }
    let fresh = tempfile::tempdir().expect("temp dir");
    write_all(fresh.path());
    let mut stale = Vec::new();
    for dir in DIRS {
        let mut names = file_names(&root.join(dir));
        names.extend(file_names(&fresh.path().join(dir)));
        for name in names {
            let path = Path::new(dir).join(name);
            if fs::read(root.join(&path)).ok() != fs::read(fresh.path().join(&path)).ok() {
                stale.push(path.display().to_string());
            }
        }
    }
    if !stale.is_empty() {
        let kept = fresh.keep();
        panic!(
            "generated files differ from the CLI definition: {}\n\
             fresh copies are in {dir}/man and {dir}/completions (diff -ru man {dir}/man);\n\
             rewrite them with: IDEM_UPDATE_GENERATED=1 cargo test committed_files_are_current",
            stale.join(", "),
            dir = kept.display()
        );
    }
}

/// The names of the files in `dir`; none if it does not exist.
fn file_names(dir: &Path) -> BTreeSet<OsString> {
    let entries = fs::read_dir(dir).into_iter().flatten();
    entries.map(|e| e.expect("dir entry").file_name()).collect()
}

/// Writes every generated file under `base`.
fn write_all(base: &Path) {
    for (path, contents) in generate() {
        let path = base.join(path);
        fs::create_dir_all(path.parent().expect("a parent dir")).expect("create dir");
        fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }
}
