//! A full or read-only disk under a SQLite store, on a small tmpfs (needs
//! root to mount, as `.ci/run` has). They use a SQLite store whatever
//! `IDEM_TEST_BACKEND` says.

use crate::support::{require_root, run_sh, Env};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    #[track_caller]
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        require_root();
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "cannot mount a tmpfs on {}", dir.display());
        Tmpfs(dir.to_owned())
    }

    fn remount_read_only(&self) {
        let status = Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A 512 KiB tmpfs at `disk/` holding a store with one record.
fn small_disk_with_a_store(env: &Env) -> (Tmpfs, String) {
    let disk = Tmpfs::mount(&env.path("disk"), "512k");
    let db = env.path("disk/idem.db").to_str().unwrap().to_owned();
    env.idem()
        .args(["--db", &db, "run", "-k", "warm", "--", "true"])
        .assert()
        .success();
    (disk, db)
}

#[test]
#[ignore = "needs root, to mount a small tmpfs (.ci/run runs as root)"]
fn a_full_disk_keeps_the_outcome_without_the_output() {
    let env = Env::sqlite();
    let (_disk, db) = small_disk_with_a_store(&env);
    let db = db.as_str();
    // The child fills the disk, leaves a little room, then prints 1 MiB.
    let script = format!(
        "{}; head -c 10M /dev/zero > disk/fill 2>/dev/null; truncate -s -48K disk/fill; head -c 1048576 /dev/zero | tr '\\0' x",
        env.count_run("n")
    );
    env.idem()
        .args(["--db", db, "run", "-k", "big", "--", "sh", "-c", &script])
        .assert()
        .success()
        .stderr(predicates::str::contains("could not store the output"));
    assert_eq!(env.count("n"), 1);
    // The outcome is recorded: a duplicate replays what the journal holds
    // (the output up to the full disk) and says it was cut.
    let replay = env
        .idem()
        .args(["--db", db, "run", "-k", "big", "--", "sh", "-c", &script])
        .assert()
        .success()
        .stderr(predicates::str::contains("cut"));
    let stdout = &replay.get_output().stdout;
    assert!(stdout.len() < 1 << 20 && stdout.iter().all(|&b| b == b'x'));
    assert_eq!(env.count("n"), 1);
}

#[test]
#[ignore = "needs root, to mount a small tmpfs (.ci/run runs as root)"]
fn a_read_only_store_refuses_before_the_command_runs() {
    let env = Env::sqlite();
    let disk = Tmpfs::mount(&env.path("disk"), "1m");
    let db = env.path("disk/idem.db");
    let db = db.to_str().unwrap();
    env.idem()
        .args(["--db", db, "run", "-k", "done", "--", "echo", "stored"])
        .assert()
        .success();
    disk.remount_read_only();
    env.refused(&["--db", db]);
}

/// When even the bare outcome cannot be written (the command filled the
/// disk to the last byte), idem says loudly that the record stays
/// `in_progress` and exits 125.
#[test]
fn an_outcome_that_cannot_be_written_exits_125_and_says_so() {
    let env = Env::sqlite();
    let (_disk, db) = small_disk_with_a_store(&env);
    let db = db.as_str();
    let script = "head -c 10M /dev/zero > disk/fill 2>/dev/null; echo done";
    let out = env
        .idem()
        .args(["--db", db, "run", "-k", "full", "--", "sh", "-c", script])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("could NOT be written"), "{stderr}");
    assert!(stderr.contains("stays in_progress"), "{stderr}");
    assert_eq!(out.stdout, b"done\n");
}

#[test]
#[ignore = "needs root, to mount a small tmpfs (.ci/run runs as root)"]
fn a_replay_from_a_read_only_store_exits_with_the_stored_status() {
    let env = Env::sqlite();
    let disk = Tmpfs::mount(&env.path("disk"), "1m");
    let db = env.path("disk/idem.db");
    let db = db.to_str().unwrap();
    let script = format!(
        "{}; echo stored; echo warned >&2; exit 3",
        env.count_run("n")
    );
    let args = [
        &["--db", db][..],
        &run_sh(&["-k", "done", "--on-failure", "lock"], &script),
    ]
    .concat();
    env.idem().args(&args).assert().code(3);
    disk.remount_read_only();
    // The replay count cannot be written: best effort, not a failure.
    env.idem()
        .args(args)
        .assert()
        .code(3)
        .stdout("stored\n")
        .stderr("warned\n");
    assert_eq!(env.count("n"), 1);
}

/// Output that fills most of a small disk: the journal took the room the
/// outcome needed, so idem exited 125 and left the record `in_progress`
/// (every time with 600-1000 KiB of output on a 1 MiB file system), and
/// the next call ran COMMAND again. The outcome must fit whatever the
/// output did: over that whole range, the record is finished and the next
/// call replays it.
#[test]
#[ignore = "needs root, to mount a small tmpfs (.ci/run runs as root)"]
fn the_outcome_fits_whatever_the_output_took() {
    let env = Env::sqlite();
    let _disk = Tmpfs::mount(&env.path("disk"), "1m");
    for kib in (550..=1050).step_by(50) {
        let db = env.path(&format!("disk/{kib}.db"));
        let db = db.to_str().unwrap();
        let count = format!("n{kib}");
        let script = format!(
            "{}; head -c {} /dev/zero | tr '\\0' x",
            env.count_run(&count),
            kib * 1024
        );
        let args = ["--db", db, "run", "-k", "big", "--", "sh", "-c", &script];
        let out = env.idem().args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{kib} KiB: {stderr}");
        let record = env
            .idem()
            .args(["--db", db, "inspect", "--json", "big"])
            .output()
            .unwrap();
        let record: serde_json::Value = serde_json::from_slice(&record.stdout).unwrap();
        assert_eq!(record["status"], "completed", "{kib} KiB: {stderr}");
        let again = env.idem().args(args).output().unwrap();
        assert_eq!(again.status.code(), Some(0), "{kib} KiB");
        assert_eq!(env.count(&count), 1, "{kib} KiB: COMMAND ran again");
        // Room for the next size.
        for suffix in ["", "-wal", "-shm", "-replays"] {
            let _ = std::fs::remove_file(format!("{db}{suffix}"));
        }
    }
}
