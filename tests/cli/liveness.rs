//! Who may call an owner dead: process checks only where they mean
//! something (same host name, boot id and PID namespace), the lease
//! everywhere else, on every store. Containers are played by `unshare`
//! (new PID namespace, needs root); another machine with the same host name
//! by rewriting the owner's boot id in the store.

use crate::support::{
    backend, psql, require_shared_store, sh, start_time, wait_for, wait_until, Backend, Env,
};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::process::{Child, Output, Stdio};
use std::time::Duration;

/// Holds the key until killed when it is the first run (no `started` yet):
/// takes a lock on `lock` that its `sleep` keeps, so the test can tell
/// when every process of the owner is gone, and writes its pid (its
/// group's id, in its own PID namespace) to `childpid`. Later runs print
/// the attempt.
fn script(env: &Env) -> String {
    format!(
        "{}; if [ ! -e started ]; then exec 9>lock && flock 9 && echo $$ > childpid && touch started \
         && exec sleep 600; fi; \
         echo \"attempt $IDEM_ATTEMPT\"",
        env.count_run("n")
    )
}

/// Starts `idem run -k k --lease 3s` with the script as its first run;
/// returns once its child has started.
fn start_owner(env: &Env, mut idem: std::process::Command) -> Child {
    let owner = idem
        .args(["run", "-k", "k", "--lease", "3s", "--"])
        .args(sh(&script(env)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&env.path("started"));
    owner
}

fn run_in_namespace(env: &Env, args: &[&str]) -> Output {
    env.idem_in_pid_namespace()
        .args(["run", "-k", "k"])
        .args(args)
        .arg("--")
        .args(sh(&script(env)))
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// SIGKILLs a started owner and waits until none of its processes is left
/// (its child's `sleep` held `lock` until then).
fn kill_and_wait(mut owner: Child, env: &Env) {
    owner.kill().unwrap();
    owner.wait().unwrap();
    wait_until("the owner's processes to be gone", || {
        std::process::Command::new("flock")
            .args(["-n", "lock", "true"])
            .current_dir(env.dir.path())
            .status()
            .unwrap()
            .success()
    });
}

#[track_caller]
fn assert_code(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout {:?}, stderr {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two containers on one machine share a shared store: each has its own
/// PID namespace, where the other's pids mean nothing. The live owner's
/// lease (renewed past its first term) keeps the key; once the owner is
/// killed with its namespace, the key is taken over when the lease has run
/// out. (A SQLite store keeps no lease: the owner's kernel lock decides
/// there.)
#[test]
#[ignore = "needs a shared store (IDEM_TEST_BACKEND=postgres or redis) and root, for PID namespaces"]
fn two_pid_namespaces_sharing_a_store_run_a_key_once() {
    require_shared_store();
    let env = Env::new();
    let owner = start_owner(&env, env.idem_in_pid_namespace());
    // More than a lease: only renewals keep the owner alive now.
    std::thread::sleep(Duration::from_millis(4000));
    let second = run_in_namespace(&env, &[]);
    let ran = env.count("n");
    // Seen from this test's namespace too, the owner lives by its lease.
    let seen = env.idem().args(["inspect", "k"]).output().unwrap();
    kill_and_wait(owner, &env);
    assert_code(&second, 75);
    assert_eq!(ran, 1, "the second namespace ran the command too");
    let seen = String::from_utf8_lossy(&seen.stdout);
    assert!(seen.contains("in PID namespace"), "{seen}");
    assert!(seen.contains(": alive\n"), "{seen}");
    assert!(seen.contains("lease until:"), "{seen}");

    // Killed, but its lease still runs: nobody can tell it from a live one.
    let third = run_in_namespace(&env, &[]);
    assert_code(&third, 75);
    assert_eq!(env.count("n"), 1);

    // Once the lease has run out, a waiter takes over.
    let waiter = run_in_namespace(&env, &["--on-duplicate", "wait"]);
    assert_code(&waiter, 0);
    assert_eq!(waiter.stdout, b"attempt 2\n");
    assert_eq!(env.count("n"), 2);
}

/// Rewrites the boot id of `key`'s owner in the store itself: the owner
/// then looks like one on another machine that has this host name.
fn set_owner_boot(env: &Env, key: &str, boot: &str) {
    match backend() {
        Backend::Sqlite => {
            let conn = rusqlite::Connection::open(env.db_path()).unwrap();
            conn.execute(
                "UPDATE records SET owner_boot = ?1 WHERE key = ?2",
                (boot, key),
            )
            .unwrap();
        }
        Backend::Postgres => {
            psql(&format!(
                "UPDATE {} SET owner_boot = '{boot}' WHERE key = '{key}'",
                env.unique()
            ));
        }
        Backend::Redis => {
            let (url, prefix) = env.db.split_once("?prefix=").unwrap();
            let mut con = redis::Client::open(url)
                .and_then(|c| c.get_connection())
                .unwrap();
            redis::cmd("HSET")
                .arg(format!("{prefix}rec:{key}"))
                .arg("owner_boot")
                .arg(boot)
                .query::<i64>(&mut con)
                .unwrap();
        }
    }
}

/// Two machines (cloned VMs, containers with the same `--hostname`) share a
/// PostgreSQL or Redis store: a different boot id does not mean that the
/// owner rebooted, so its lease decides, not the boot id.
#[test]
#[ignore = "needs a shared store: IDEM_TEST_BACKEND=postgres or redis"]
fn same_host_name_other_boot_on_a_shared_store_is_judged_by_the_lease() {
    require_shared_store();
    let env = Env::new();
    let owner = start_owner(&env, env.idem_std());
    set_owner_boot(&env, "k", "the-other-machine");
    let second = env
        .idem()
        .args(["run", "-k", "k", "--"])
        .args(sh(&script(&env)))
        .output()
        .unwrap();
    let ran = env.count("n");
    // idem and its child's group, as a crash of the whole machine would.
    let child: i32 = std::fs::read_to_string(env.path("childpid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    kill(Pid::from_raw(-child), Signal::SIGKILL).unwrap();
    kill_and_wait(owner, &env);
    assert_code(&second, 75);
    assert_eq!(ran, 1, "the owner's live lease was ignored");

    // The lease, not the process checks, decides: the takeover waits for it.
    let waiter = env
        .idem()
        .args(["run", "-k", "k", "--on-duplicate", "wait", "--"])
        .args(sh(&script(&env)))
        .output()
        .unwrap();
    assert_code(&waiter, 0);
    assert_eq!(waiter.stdout, b"attempt 2\n");
    assert_eq!(env.count("n"), 2);
}

/// Runs `sql` on this test's SQLite file or PostgreSQL table (`{t}`).
fn sql(env: &Env, sql: &str) -> String {
    match env.backend() {
        Backend::Sqlite => {
            let conn = rusqlite::Connection::open(env.db_path()).unwrap();
            conn.execute_batch(sql).unwrap();
            conn.query_row("PRAGMA user_version", (), |r| r.get::<_, i64>(0))
                .unwrap()
                .to_string()
        }
        _ => psql(&sql.replace("{t}", env.unique())),
    }
}

/// A store as the previous idem left it (SQLite schema 2, PostgreSQL
/// schema 1: no PID namespace, no journal, and on SQLite no lease and no
/// owner's lock) keeps its records when upgraded, and judges their owners
/// as that idem did: a live process of ours is alive, a dead one is dead
/// once no lease says otherwise.
#[test]
fn a_store_of_the_previous_schema_keeps_its_records_and_their_owners() {
    // Redis has no previous schema of this kind: a SQLite store stands in.
    let env = if backend() == Backend::Redis {
        Env::sqlite()
    } else {
        Env::new()
    };
    env.idem()
        .args(["run", "-k", "done", "--", "echo", "hi"])
        .assert()
        .success();
    let mut paused = env
        .idem_std()
        .args(["run", "-k", "p", "--"])
        .args(sh(&env.count_run("n")))
        .env("IDEM_TEST_PAUSE", "after-claim")
        .env("IDEM_TEST_PAUSE_FILE", env.path("paused"))
        .spawn()
        .unwrap();
    wait_for(&env.path("paused"));
    paused.kill().unwrap();
    paused.wait().unwrap();
    // The owner of `p` is now this test's own process: alive.
    let me = std::process::id();
    let owner = format!(
        "UPDATE {{t}} SET owner_pid = {me}, owner_start = {} WHERE key = 'p';",
        start_time(me)
    );
    let version = |env: &Env| match env.backend() {
        Backend::Sqlite => sql(env, ""),
        _ => psql(&format!(
            "SELECT value FROM {}_meta WHERE name = 'schema_version'",
            env.unique()
        )),
    };
    if env.backend() == Backend::Sqlite {
        sql(
            &env,
            &format!(
                "{} ALTER TABLE records DROP COLUMN owner_pid_ns; \
                 ALTER TABLE records DROP COLUMN owner_lock; \
                 ALTER TABLE records DROP COLUMN lease_until; \
                 ALTER TABLE records DROP COLUMN label; DROP TABLE journal; \
                 ALTER TABLE records DROP COLUMN stdout_bytes; \
                 ALTER TABLE records DROP COLUMN stderr_bytes; \
                 UPDATE records SET stdout = CAST('hi\n' AS BLOB) WHERE key = 'done'; \
                 PRAGMA user_version = 2;",
                owner.replace("{t}", "records")
            ),
        );
        assert_eq!(version(&env), "2");
    } else {
        sql(
            &env,
            &format!(
                "{owner} ALTER TABLE {{t}} DROP COLUMN owner_pid_ns, DROP COLUMN label; \
                 UPDATE {{t}}_meta SET value = 1"
            ),
        );
        assert_eq!(version(&env), "1");
    }
    // Any command upgrades it, `inspect` included, and sees the owner alive.
    env.idem()
        .args(["inspect", "--json", "p"])
        .assert()
        .success()
        .stdout(predicates::str::contains(r#""alive":true"#));

    env.idem()
        .args(["run", "-k", "done", "--", "echo", "hi"])
        .assert()
        .success()
        .stdout("hi\n");
    let latest = if env.backend() == Backend::Sqlite {
        "5"
    } else {
        "4"
    };
    assert_eq!(version(&env), latest);
    let again = || {
        env.idem()
            .args(["run", "-k", "p", "--"])
            .args(sh(&env.count_run("n")))
            .output()
            .unwrap()
    };
    assert_code(&again(), 75);
    // Its process is gone (another start time), and so is any lease.
    sql(
        &env,
        &if env.backend() == Backend::Sqlite {
            "UPDATE records SET owner_start = owner_start + 1".to_owned()
        } else {
            "UPDATE {t} SET owner_start = owner_start + 1, lease_until = 1".to_owned()
        },
    );
    assert_code(&again(), 0);
    assert_eq!(env.count("n"), 1);
}
