//! The README's shipped examples, run under the real clients they are for:
//! every file in `tests/examples/` is quoted verbatim in the README (checked
//! here), and each is run as its client runs it — Debian's `webhook`
//! server, a crontab's job lines through `/bin/sh -c` with cron's
//! environment (checked by the real `crontab -n` first), GNU `parallel`, a
//! CGI handler, a `set -e` deploy script whose steps resume after a crash,
//! Python's `subprocess` and `http.server`, and `ansible-playbook`.

use crate::support::{bin, copy_examples, free_port, tool, wait_until, Env};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/examples")
}

/// Copies the example files into the test's directory, unchanged.
/// PATH as after an install: idem's directory, then the system's.
fn path_with_idem() -> String {
    format!("{}:/usr/bin:/bin", bin().parent().unwrap().display())
}

/// A command with the test's store and PATH, in the test's directory.
fn client(env: &Env, program: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir(env.dir.path())
        .env_remove("IDEM_REPORT")
        .env("IDEM_DB", &env.db)
        .env("PATH", path_with_idem());
    cmd
}

#[test]
fn every_example_is_quoted_verbatim_in_the_readme() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    for entry in std::fs::read_dir(examples()).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            readme.contains(&format!("```\n{text}```\n"))
                || readme.contains(&format!("\n{text}```\n")),
            "README.md lacks tests/examples/{} verbatim in a fenced block",
            path.file_name().unwrap().to_string_lossy()
        );
    }
}

/// The job lines of a crontab as cron runs them: `\%` is `%`, and an
/// unescaped `%` ends the command (the rest would be its stdin).
fn cron_jobs(crontab: &str) -> (Vec<(String, String)>, Vec<String>) {
    let mut vars = Vec::new();
    let mut jobs = Vec::new();
    for line in crontab.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let first = line.split_whitespace().next().unwrap();
        if let Some((name, _)) = first.split_once('=') {
            if name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                vars.push((name.to_owned(), line[name.len() + 1..].trim().to_owned()));
                continue;
            }
        }
        let mut rest = line;
        for _ in 0..5 {
            rest = rest.trim_start();
            rest = &rest[rest.find(char::is_whitespace).unwrap()..];
        }
        let mut command = String::new();
        let mut chars = rest.trim().chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\\' if chars.peek() == Some(&'%') => command.push(chars.next().unwrap()),
                '%' => break,
                c => command.push(c),
            }
        }
        jobs.push(command);
    }
    (vars, jobs)
}

#[test]
#[ignore = "needs cron (.ci/run installs it)"]
fn the_crontab_works_under_cron() {
    tool("crontab");
    let env = Env::new();
    copy_examples(&env);
    // The real cron's own check of the file (a dry run: nothing installed).
    let out = Command::new("crontab")
        .args(["-n", "crontab"])
        .current_dir(env.dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "crontab -n: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (vars, jobs) = cron_jobs(&std::fs::read_to_string(env.path("crontab")).unwrap());
    let path = &vars
        .iter()
        .find(|(n, _)| n == "PATH")
        .expect("a PATH= line")
        .1;
    // idem stands where the crontab's PATH says `cargo install` puts it:
    // its directory takes ~/.cargo/bin's place (written out, as cron
    // expands neither ~ nor $HOME), the rest as written.
    let cargo_bin = path
        .split(':')
        .find(|d| d.starts_with('/') && d.ends_with("/.cargo/bin"))
        .expect("the crontab's PATH names ~/.cargo/bin in full");
    let path = path.replace(cargo_bin, &bin().parent().unwrap().display().to_string());
    // node_exporter's textfile directory is the test's.
    let textfile = "/var/lib/prometheus/node-exporter";
    let jobs: Vec<String> = jobs
        .iter()
        .map(|job| job.replace(textfile, &env.dir.path().display().to_string()))
        .collect();
    let report = &jobs[0];
    let cron = |job: &str| {
        // cron's environment: HOME, LOGNAME, SHELL=/bin/sh and the crontab's
        // variables, nothing else; the job runs in HOME.
        Command::new("/bin/sh")
            .args(["-c", job])
            .env_clear()
            .env("HOME", env.dir.path())
            .env("LOGNAME", "root")
            .env("SHELL", "/bin/sh")
            .env("PATH", &path)
            .env("IDEM_DB", &env.db)
            .current_dir(env.dir.path())
            .output()
            .unwrap()
    };
    let first = cron(report);
    assert!(
        first.status.success() && first.stdout.is_empty() && first.stderr.is_empty(),
        "{first:?}"
    );
    let made = std::fs::metadata(env.path("nightly-report.txt"))
        .unwrap()
        .modified()
        .unwrap();
    // The same night again: exit 0 and not a byte, so cron sends no mail.
    let again = cron(report);
    assert!(
        again.status.success() && again.stdout.is_empty() && again.stderr.is_empty(),
        "{again:?}"
    );
    assert_eq!(
        std::fs::metadata(env.path("nightly-report.txt"))
            .unwrap()
            .modified()
            .unwrap(),
        made
    );
    let purge = cron(&jobs[1]);
    assert!(
        purge.status.success() && purge.stdout.is_empty(),
        "{purge:?}"
    );
    let metrics = cron(&jobs[2]);
    assert!(
        metrics.status.success() && metrics.stdout.is_empty() && metrics.stderr.is_empty(),
        "{metrics:?}"
    );
    let prom = std::fs::read_to_string(env.path("idem.prom")).unwrap();
    assert!(prom.contains("idem_records{"), "{prom}");
    assert!(!env.path("idem.prom.tmp").exists());
    // Without the PATH line, cron's default PATH does not find idem.
    let lost = Command::new("/bin/sh")
        .args(["-c", report])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .current_dir(env.dir.path())
        .output()
        .unwrap();
    assert_eq!(lost.status.code(), Some(127));
}

/// POSTs `body` with optional `X-Event-Id`; returns (status line code, body).
fn post(port: u16, event: Option<&str>, body: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let header = event.map_or_else(String::new, |id| format!("X-Event-Id: {id}\r\n"));
    write!(
        stream,
        "POST /hooks/delivery HTTP/1.0\r\nHost: localhost\r\n{header}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let code = answer.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = answer
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (code, body)
}

/// Starts webhook on a free port and waits until it answers HTTP there.
/// The port is free when picked, but another test may take it before
/// webhook binds it (webhook then exits, and something else answers on
/// that port): then it tries another.
fn start_webhook(env: &Env) -> (std::process::Child, u16) {
    for _ in 0..5 {
        let port = free_port();
        let mut server = client(env, "webhook")
            .args([
                "-hooks",
                "hooks.json",
                "-ip",
                "127.0.0.1",
                "-port",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let answers_http = || {
            let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
                return false;
            };
            let mut answer = String::new();
            write!(stream, "GET / HTTP/1.0\r\n\r\n").is_ok()
                && stream.read_to_string(&mut answer).is_ok()
                && answer.starts_with("HTTP/1.")
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            if server.try_wait().unwrap().is_some() {
                break;
            }
            if answers_http() && server.try_wait().unwrap().is_none() {
                return (server, port);
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let _ = server.kill();
        let _ = server.wait();
    }
    panic!("webhook never answered on a port of its own");
}

#[test]
#[ignore = "needs webhook (.ci/run installs it)"]
fn the_webhook_example_works_under_debians_webhook() {
    tool("webhook");
    let env = Env::new();
    copy_examples(&env);
    let (mut server, port) = start_webhook(&env);
    let events = || std::fs::read_to_string(env.path("events.log")).unwrap_or_default();

    let (code, first) = post(port, Some("7"), "{\"id\":7}");
    assert_eq!(
        (code, first.as_str()),
        (200, "processed event delivery-7\n")
    );
    // The retry replays the answer, and says so; the work ran once.
    let (code, retry) = post(port, Some("7"), "{\"id\":7}");
    assert_eq!(
        (code, retry.as_str()),
        (
            200,
            "processed event delivery-7\nIdempotent-Replayed: true\n"
        )
    );
    assert_eq!(events(), "{\"id\":7}\n");
    // Another body under the same id: refused, not merged.
    let (code, clash) = post(port, Some("7"), "{\"id\":8}");
    assert_eq!(code, 500, "{clash}");
    assert!(clash.contains("idem purge delivery-7"), "{clash}");
    // No header: refused before anything runs (no key `delivery-`).
    let (code, missing) = post(port, None, "{\"id\":9}");
    assert_eq!(code, 500, "{missing}");
    assert!(missing.contains("no X-Event-Id header"), "{missing}");
    assert_eq!(events(), "{\"id\":7}\n");
    let _ = server.kill();
    let _ = server.wait();
}

#[test]
fn the_cgi_example_answers_a_retry_with_the_replayed_header() {
    let env = Env::new();
    copy_examples(&env);
    let cgi = |body: &str| {
        let mut child = client(&env, "./on-delivery.cgi")
            .env("HTTP_X_EVENT_ID", "12")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(body.as_bytes())
            .unwrap();
        String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap()
    };
    let first = cgi("{\"id\":12}");
    assert_eq!(
        first,
        "Content-Type: text/plain\r\n\r\nprocessed event delivery-12\n"
    );
    let retry = cgi("{\"id\":12}");
    assert_eq!(retry, "Idempotent-Replayed: true\r\nContent-Type: text/plain\r\n\r\nprocessed event delivery-12\n");
}

#[test]
#[ignore = "needs GNU parallel (.ci/run installs it)"]
fn gnu_parallel_resumes_where_it_stopped() {
    tool("parallel");
    let env = Env::new();
    copy_examples(&env);
    std::fs::create_dir(env.path("images")).unwrap();
    for name in ["a.jpg", "b.jpg", "c.jpg"] {
        std::fs::write(env.path(&format!("images/{name}")), name).unwrap();
    }
    let run = || client(&env, "./resize-all.sh").output().unwrap();
    assert!(run().status.success());
    assert_eq!(
        crate::support::keys(&env, &["--prefix", "resize-"]).len(),
        3
    );
    // A second pass replays: nothing is copied again.
    std::fs::remove_file(env.path("out/b.jpg")).unwrap();
    let out = run();
    assert!(out.status.success(), "{out:?}");
    assert!(
        !env.path("out/b.jpg").exists(),
        "a replay does not copy again"
    );
}

#[test]
fn deploy_steps_resume_after_a_crash() {
    let env = Env::new();
    copy_examples(&env);
    for step in ["build", "switch"] {
        std::fs::write(
            env.path(&format!("{step}.sh")),
            format!("#!/bin/sh\necho {step} >> steps.log\n"),
        )
        .unwrap();
    }
    // The first migration crashes the whole deploy: SIGKILL to the deploy's
    // idem, to deploy.sh, to the step's idem, then itself.
    std::fs::write(
        env.path("migrate.sh"),
        "#!/bin/sh\necho migrate >> steps.log\n\
         if [ \"$IDEM_ATTEMPT\" = 1 ]; then\n\
           step_idem=$PPID\n\
           deploy_sh=$(cut -d' ' -f4 /proc/$step_idem/stat)\n\
           deploy_idem=$(cut -d' ' -f4 /proc/$deploy_sh/stat)\n\
           kill -9 $deploy_idem $deploy_sh $step_idem $$\n\
         fi\n",
    )
    .unwrap();
    for script in ["build.sh", "migrate.sh", "switch.sh"] {
        client(&env, "chmod").args(["+x", script]).status().unwrap();
    }
    let deploy = || {
        client(&env, "idem")
            .args(["run", "--key", "deploy-42", "--", "./deploy.sh"])
            .output()
            .unwrap()
    };
    let crashed = deploy();
    assert_eq!(crashed.status.code(), None, "the deploy's idem was killed");
    wait_until("the crashed deploy to be seen as crashed", || {
        crate::support::keys(&env, &["--status", "crashed"]).len() == 2
    });
    let resumed = deploy();
    assert!(resumed.status.success(), "{resumed:?}");
    let log = std::fs::read_to_string(env.path("steps.log")).unwrap();
    assert_eq!(
        log, "build\nmigrate\nmigrate\nswitch\n",
        "build replayed, migrate re-ran"
    );
    let records = crate::support::records(&env, &["--prefix", "deploy-42"]);
    let attempts: Vec<(String, i64)> = records
        .iter()
        .map(|r| {
            (
                r["key"].as_str().unwrap().to_owned(),
                r["attempts"].as_i64().unwrap(),
            )
        })
        .collect();
    assert!(attempts.contains(&("deploy-42".into(), 2)), "{attempts:?}");
    assert!(
        attempts.contains(&("deploy-42/migrate".into(), 2)),
        "{attempts:?}"
    );
    assert!(
        attempts.contains(&("deploy-42/build".into(), 1)),
        "{attempts:?}"
    );
}
