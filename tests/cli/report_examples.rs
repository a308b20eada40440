//! The README's examples that read idem's report, run against their real
//! clients: Python's `subprocess` with `pass_fds` (`deliver.py`), an HTTP
//! receiver on Python's `http.server` (`receiver.py`) and an Ansible task
//! whose `changed_when` comes from the report (`playbook.yml`).

use crate::support::{copy_examples, path_with_idem, tool, wait_for, Backend, Env};
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};

/// `program` in the test's directory, with the test's store and idem on
/// PATH, as a caller that installed idem runs it.
fn client(env: &Env, program: &str) -> Command {
    let mut cmd = Command::new(program);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("IDEM_") {
            cmd.env_remove(name);
        }
    }
    cmd.current_dir(env.dir.path())
        .env("IDEM_DB", &env.db)
        .env("PATH", path_with_idem());
    cmd
}

#[test]
fn python_reads_the_report_through_pass_fds() {
    let env = Env::new();
    copy_examples(&env);
    let deliver = |id: &str, body: &str| {
        let mut child = client(&env, "./deliver.py")
            .arg(id)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(body.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (out.status.code(), String::from_utf8(out.stdout).unwrap())
    };
    assert_eq!(
        deliver("7", "{\"id\":7}"),
        (
            Some(0),
            "processed event event-7\noutcome: ran, exit status 0\n".into()
        )
    );
    assert_eq!(
        deliver("7", "{\"id\":7}"),
        (
            Some(0),
            "processed event event-7\noutcome: replayed, exit status 0\n".into()
        )
    );
    assert_eq!(
        deliver("7", "{\"id\":8}"),
        (Some(65), "outcome: refused, exit status 65\n".into())
    );
    let events = std::fs::read_to_string(env.path("events.log")).unwrap();
    assert_eq!(events, "{\"id\":7}\n", "the event was processed once");
}

/// The receiver on a port of its own; killed when dropped.
struct Receiver {
    child: Child,
    port: u16,
}

impl Receiver {
    fn start(env: &Env) -> Receiver {
        let mut child = client(env, "./receiver.py")
            .arg("0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("listening on port ")
            .unwrap_or_else(|| panic!("receiver.py said {line:?}"))
            .parse()
            .unwrap();
        Receiver { child, port }
    }

    /// POSTs `body` with an optional `X-Event-Id`; returns the status code,
    /// the headers (lower-case names) and the body.
    fn post(&self, event: Option<&str>, body: &str) -> (u16, Vec<(String, String)>, String) {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        let header = event.map_or_else(String::new, |id| format!("X-Event-Id: {id}\r\n"));
        write!(
            stream,
            "POST /events HTTP/1.0\r\nHost: localhost\r\n{header}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        let mut lines = head.lines();
        let code = lines.next().unwrap().split_whitespace().nth(1).unwrap();
        let headers = lines
            .filter_map(|l| l.split_once(": "))
            .map(|(n, v)| (n.to_ascii_lowercase(), v.to_owned()))
            .collect();
        (code.parse().unwrap(), headers, body.to_owned())
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn the_http_receiver_answers_a_retry_with_the_first_answer() {
    let env = Env::new();
    copy_examples(&env);
    let receiver = Receiver::start(&env);
    let (code, headers, body) = receiver.post(Some("5"), "{\"id\":5}");
    assert_eq!((code, body.as_str()), (200, "processed event event-5\n"));
    assert_eq!(header(&headers, "idempotent-replayed"), None);
    let (code, headers, body) = receiver.post(Some("5"), "{\"id\":5}");
    assert_eq!((code, body.as_str()), (200, "processed event event-5\n"));
    assert_eq!(header(&headers, "idempotent-replayed"), Some("true"));
    let (code, _, _) = receiver.post(Some("5"), "{\"id\":6}");
    assert_eq!(code, 422, "another body under a used id");
    let (code, _, _) = receiver.post(None, "{\"id\":7}");
    assert_eq!(code, 400, "no X-Event-Id");
    let events = std::fs::read_to_string(env.path("events.log")).unwrap();
    assert_eq!(events, "{\"id\":5}\n");
}

/// Creates the file `go` when dropped.
struct Release(std::path::PathBuf);

impl Drop for Release {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.0, "");
    }
}

#[test]
fn the_http_receiver_answers_409_with_retry_after_while_the_first_runs() {
    let env = Env::new();
    copy_examples(&env);
    // This delivery's work waits until the test lets it finish.
    std::fs::write(
        env.path("process-event"),
        "#!/bin/sh\ncat >> events.log\ntouch started\nwhile [ ! -e go ]; do sleep 0.01; done\necho \"processed event ${IDEM_KEY}\"\n",
    )
    .unwrap();
    let receiver = Receiver::start(&env);
    std::thread::scope(|scope| {
        // The first delivery finishes even when an assertion fails, so the
        // scope's join never waits for ever.
        let _release = Release(env.path("go"));
        let first = scope.spawn(|| receiver.post(Some("9"), "{\"id\":9}"));
        wait_for(&env.path("started"));
        let (code, headers, _) = receiver.post(Some("9"), "{\"id\":9}");
        assert_eq!(code, 409);
        let retry_after = header(&headers, "retry-after");
        if env.backend() == Backend::Sqlite {
            assert_eq!(retry_after, None, "no lease on SQLite, no Retry-After");
        } else {
            // The default lease is 30 s; the owner renewed it moments ago.
            let seconds: u64 = retry_after.expect("Retry-After").parse().unwrap();
            assert!((1..=30).contains(&seconds), "Retry-After: {seconds}");
        }
        std::fs::write(env.path("go"), "").unwrap();
        let (code, _, body) = first.join().unwrap();
        assert_eq!((code, body.as_str()), (200, "processed event event-9\n"));
    });
}

#[test]
#[ignore = "needs ansible-playbook (.ci/run installs ansible-core from PyPI)"]
fn the_ansible_task_is_changed_only_when_the_migration_ran() {
    tool("ansible-playbook");
    let python = tool("python3");
    let env = Env::new();
    copy_examples(&env);
    std::fs::write(
        env.path("migrate.sh"),
        "#!/bin/sh\necho migrating >&2\necho migrated >> migrations.log\n",
    )
    .unwrap();
    client(&env, "chmod")
        .args(["+x", "migrate.sh"])
        .status()
        .unwrap();
    let play = || {
        let out = client(&env, "ansible-playbook")
            .args(["-i", "localhost,", "-c", "local", "-e"])
            .arg(format!("ansible_python_interpreter={}", python.display()))
            .arg("playbook.yml")
            .env("HOME", env.dir.path())
            .env("ANSIBLE_NOCOLOR", "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert!(out.status.success(), "{stdout}");
        let recap = stdout
            .lines()
            .find(|l| l.starts_with("localhost"))
            .unwrap_or_else(|| panic!("no PLAY RECAP: {stdout}"))
            .split_whitespace()
            .skip(2)
            .take(4)
            .collect::<Vec<_>>()
            .join(" ");
        recap
    };
    assert_eq!(play(), "ok=1 changed=1 unreachable=0 failed=0");
    assert_eq!(play(), "ok=1 changed=0 unreachable=0 failed=0");
    assert_eq!(
        std::fs::read_to_string(env.path("migrations.log")).unwrap(),
        "migrated\n"
    );
}
