//! The files around a call, under attack or by mistake: a store file
//! reached under two names, paths that are not what they seem (`file:`,
//! `~`, a FIFO as a fingerprint input), and the files idem writes for a
//! caller who may be root in a shared directory (the report, a new store).
//! Tests of the SQLite file run under every backend (`Env::sqlite()`).

use crate::support::{bin, require_root, sh, Env};
use std::os::unix::fs::{symlink, MetadataExt};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `idem ARGS` (this test's store unless ARGS names one) and returns
/// (exit code, stderr), failing the test if it takes longer than 20 s.
#[track_caller]
fn finishes(env: &Env, args: &[&str]) -> (i32, String) {
    let mut idem = env
        .idem_std()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while idem.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = idem.kill();
            panic!("idem {args:?} hangs");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = idem.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A SQLite store with one completed record; returns its bytes.
fn a_store(env: &Env) -> Vec<u8> {
    env.idem()
        .args(["run", "-k", "first", "--", "true"])
        .assert()
        .success();
    // Its records into the main file, so the bytes say everything.
    let _ = std::fs::remove_file(format!("{}-wal", env.db));
    std::fs::read(&env.db).unwrap()
}

#[test]
fn a_store_file_with_two_names_is_refused_untouched() {
    let env = Env::sqlite();
    a_store(&env);
    let link = env.path("state/other-name.db");
    std::fs::hard_link(&env.db, &link).unwrap();
    let before = std::fs::read(&env.db).unwrap();
    for name in [link.to_str().unwrap(), env.db.as_str()] {
        let line = env.refused(&["--db", name]);
        assert!(line.contains("2 names"), "{line}");
        assert!(line.contains("-v /srv/idem:/state"), "{line}");
        assert!(line.contains("left untouched"), "{line}");
    }
    assert_eq!(std::fs::read(&env.db).unwrap(), before);
    assert!(!env.path("state/other-name.db-wal").exists());
}

#[test]
#[ignore = "needs root, to bind-mount a file in a private mount namespace (.ci/run runs as root)"]
fn a_store_file_mounted_on_its_own_is_refused_untouched() {
    require_root();
    let env = Env::sqlite();
    a_store(&env);
    let before = std::fs::read(&env.db).unwrap();
    let inside = env.path("inside.db");
    std::fs::write(&inside, "").unwrap();
    // `docker run -v /srv/idem.db:/state/idem.db`, in a private mount
    // namespace that goes with the process.
    let out = Command::new("unshare")
        .args(["-m", "sh", "-c"])
        .arg("mount --bind \"$0\" \"$1\" && exec \"$2\" --db \"$1\" run -k k -- sh -c \"$3\"")
        .arg(&env.db)
        .arg(&inside)
        .arg(bin())
        .arg(env.count_run("n"))
        .env_remove("IDEM_DB")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert!(stderr.contains("mounted on its own"), "{stderr}");
    assert!(stderr.contains("-v /srv/idem:/state"), "{stderr}");
    assert_eq!(env.count("n"), 0);
    assert_eq!(std::fs::read(&env.db).unwrap(), before);
    // The same file under its own single name is still a good store.
    env.idem()
        .args(["run", "-k", "first", "--", "true"])
        .assert()
        .success();
}

#[test]
fn a_sqlite_uri_is_a_usage_error_that_creates_nothing() {
    let env = Env::sqlite();
    for db in ["file:x.db", "FILE:x.db?mode=rwc", "file:///tmp/x.db"] {
        let (code, stderr) = finishes(&env, &["--db", db, "run", "-k", "k", "--", "true"]);
        assert_eq!(code, 2, "{db}: {stderr}");
        assert!(
            stderr.starts_with("idem: ") && stderr.contains("path"),
            "{stderr}"
        );
    }
    let made: Vec<_> = std::fs::read_dir(env.dir.path()).unwrap().collect();
    assert!(made.is_empty(), "{made:?}");
}

#[test]
fn a_path_starting_with_a_tilde_is_a_usage_error() {
    let env = Env::sqlite();
    let (code, stderr) = finishes(&env, &["--db", "~/x.db", "run", "-k", "k", "--", "true"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("not expanded") && stderr.contains("$HOME"),
        "{stderr}"
    );
    // As cron passes it: in the environment, unexpanded.
    let out = env
        .idem()
        .env("IDEM_DB", "~/state/idem.db")
        .args(["inspect"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(!env.path("~").exists());
}

#[test]
fn a_fingerprint_file_must_be_a_regular_file() {
    let env = Env::new();
    let fifo = env.path("fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    for path in [fifo.to_str().unwrap(), "/dev/zero", "/tmp"] {
        let mut args = vec!["run", "-k", "k", "--fingerprint-file", path, "--"];
        let script = sh(&env.count_run("n"));
        args.extend(script.iter().map(String::as_str));
        let (code, stderr) = finishes(&env, &args);
        assert_eq!(code, 2, "{path}: {stderr}");
        assert!(stderr.contains("not a regular file"), "{stderr}");
    }
    assert_eq!(env.count("n"), 0);
}

#[test]
fn a_report_never_follows_a_planted_symlink() {
    let env = Env::new();
    let victim = env.path("victim");
    std::fs::write(&victim, "secret\n").unwrap();
    symlink(&victim, env.path("report.json")).unwrap();
    let (code, stderr) = finishes(
        &env,
        &["run", "-k", "k", "--report", "report.json", "--", "true"],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("symbolic link"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "secret\n");
}

#[test]
fn a_report_still_goes_to_the_callers_descriptors() {
    let env = Env::new();
    let script = format!(
        "'{0}' run -k k --report /dev/fd/3 -- true 3> fd.json && \
         '{0}' run -k k --report /dev/stdout -- true > stdout.json",
        bin().display()
    );
    let status = env.idem_std();
    let ok = Command::new("sh")
        .args(["-c", &script])
        .current_dir(env.dir.path())
        .envs(status.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .status()
        .unwrap();
    assert!(ok.success());
    for name in ["fd.json", "stdout.json"] {
        let text = std::fs::read_to_string(env.path(name)).unwrap();
        let report: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(report["key"], "k", "{text}");
    }
}

#[test]
#[ignore = "needs root, to give a file to another user (.ci/run runs as root)"]
fn a_report_file_of_another_user_is_left_alone() {
    require_root();
    let env = Env::new();
    let theirs = env.path("report.json");
    std::fs::write(&theirs, "theirs\n").unwrap();
    std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
    let (code, stderr) = finishes(
        &env,
        &["run", "-k", "k", "--report", "report.json", "--", "true"],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("uid 65534"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&theirs).unwrap(), "theirs\n");
    // A hard link to a file of one's own is not replaced either.
    std::fs::remove_file(&theirs).unwrap();
    std::fs::write(env.path("mine"), "mine\n").unwrap();
    std::fs::hard_link(env.path("mine"), &theirs).unwrap();
    let (code, stderr) = finishes(
        &env,
        &["run", "-k", "k", "--report", "report.json", "--", "true"],
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(std::fs::read_to_string(env.path("mine")).unwrap(), "mine\n");
}

#[test]
#[ignore = "needs root, to give a symlink to another user (.ci/run runs as root)"]
fn a_store_is_not_created_through_another_users_symlink() {
    require_root();
    let env = Env::sqlite();
    std::fs::create_dir(env.path("state")).unwrap();
    let target = env.path("elsewhere.db");
    symlink(&target, &env.db).unwrap();
    std::os::unix::fs::lchown(&env.db, Some(65534), None).unwrap();
    let line = env.refused(&[]);
    assert!(
        line.contains("symbolic link owned by another user"),
        "{line}"
    );
    assert!(!target.exists());
    // A link of one's own is followed as before.
    std::fs::remove_file(&env.db).unwrap();
    symlink(&target, &env.db).unwrap();
    env.idem()
        .args(["run", "-k", "k", "--", "true"])
        .assert()
        .success();
    assert_eq!(std::fs::metadata(&target).unwrap().nlink(), 1);
}

/// An operator moves or deletes the store while COMMAND runs: the owner
/// says so (exit 125) rather than write its outcome into a file nobody
/// reads again, and nothing is left at the path that claims otherwise.
#[test]
fn a_store_moved_or_deleted_during_a_run_is_said_out_loud() {
    for what in ["mv", "rm"] {
        let env = Env::sqlite();
        a_store(&env);
        let script = "touch ready; while [ ! -e go ]; do sleep 0.01; done; echo done";
        let idem = env
            .idem_std()
            .args(["run", "-k", "k", "--"])
            .args(sh(script))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        crate::support::wait_for(&env.path("ready"));
        let status = match what {
            "mv" => Command::new("mv")
                .arg(&env.db)
                .arg(env.path("moved.db"))
                .status(),
            _ => Command::new("rm").arg(&env.db).status(),
        };
        assert!(status.unwrap().success());
        std::fs::write(env.path("go"), "").unwrap();
        let out = idem.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{what}: {stderr}");
        assert!(stderr.contains("moved away or deleted"), "{what}: {stderr}");
        assert!(
            !env.db_path().exists(),
            "{what}: a store appeared at the path"
        );
    }
}
