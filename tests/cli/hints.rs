//! Error lines that say what to do: a purge hint that works when pasted,
//! whatever the key holds, and plain words for a full disk, a store this
//! user may not write, and a server that refuses the connection.

use crate::support::{bin, require_root, Env};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

/// The purge command in an exit-76 line ("… run `idem purge KEY` to allow
/// a re-run"); the key shown earlier in the line may hold backquotes too.
fn purge_hint(err: &str) -> &str {
    let start = err.rfind("`idem purge ").expect("a purge hint") + 1;
    let end = err.rfind("` to allow").expect("the end of the hint");
    &err[start..end]
}

#[test]
fn the_purge_hint_works_when_pasted_whatever_the_key() {
    let env = Env::new();
    let keys = [
        "plain-key",
        "back\\slash",
        "it's",
        "\"double\"",
        "tab\there",
        "bell\x07 and esc\x1b[31m",
        "é and \u{202e}bidi",
        "$(touch pwned) `touch pwned2`",
        "-starts-with-a-dash",
        "ends with a backslash\\",
    ];
    for key in keys {
        let key_flag = format!("--key={key}");
        env.idem()
            .args(["run", &key_flag, "--", "true"])
            .assert()
            .success();
        let out = env
            .idem()
            .args(["run", "--on-duplicate", "fail", &key_flag, "--", "true"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(76));
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(
            !err.trim_end().chars().any(char::is_control),
            "raw control characters on the terminal: {err:?}"
        );
        let hint = purge_hint(&err);
        // Pasted into bash: it must purge exactly this key.
        let pasted = Command::new("bash")
            .arg("-c")
            .arg(hint)
            .env(
                "PATH",
                format!(
                    "{}:{}",
                    bin().parent().unwrap().display(),
                    std::env::var("PATH").unwrap()
                ),
            )
            .env("IDEM_DB", &env.db)
            .current_dir(env.dir.path())
            .output()
            .unwrap();
        assert!(
            pasted.status.success(),
            "{hint}: {}",
            String::from_utf8_lossy(&pasted.stderr)
        );
        env.idem().args(["inspect", "--", key]).assert().code(1);
    }
    assert!(!env.path("pwned").exists() && !env.path("pwned2").exists());
}

#[test]
fn a_replay_to_a_full_disk_says_so() {
    let env = Env::new();
    env.idem()
        .args(["run", "-k", "k", "--", "echo", "stored"])
        .assert()
        .success();
    let full = std::fs::File::options()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = env
        .idem_std()
        .args(["run", "-k", "k", "--", "echo", "stored"])
        .stdout(full)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(
        err.contains("replayed output to stdout: no space left on device"),
        "{err}"
    );
}

#[test]
#[ignore = "needs root, to run idem as another user (.ci/run runs as root)"]
fn a_store_this_user_may_not_write_names_the_file() {
    require_root();
    let env = Env::sqlite();
    env.idem()
        .args(["run", "-k", "mine", "--", "true"])
        .assert()
        .success();
    // Another user may read the store and its directory, not write them.
    let state = env.db_path().parent().unwrap().to_owned();
    for dir in [env.dir.path(), &state] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    for entry in std::fs::read_dir(&state).unwrap() {
        let path = entry.unwrap().path();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(bin())
        .args(["--db", &env.db, "run", "-k", "theirs", "--", "true"])
        .current_dir("/")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(err.contains("permission denied"), "{err}");
    assert!(err.contains("uid 65534"), "{err}");
    assert!(err.contains(&format!("{}", state.display())), "{err}");
}

#[test]
fn a_refused_postgres_connection_names_host_and_port() {
    let env = Env::new();
    let out = env
        .idem()
        .args(["--db", "postgres://idem@127.0.0.1:1/test", "inspect"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(
        err.contains("cannot connect to 127.0.0.1:1: connection refused"),
        "{err}"
    );
}
