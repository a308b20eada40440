//! PostgreSQL as managed services run it: a private server of this test's
//! own (tests/pg_tls_server.sh: Debian's initdb and pg_ctl, certificates
//! made by openssl) that accepts TCP only over TLS. verify-full works and
//! really encrypts; a wrong host name, an untrusted CA or a missing client
//! certificate fail clearly and run nothing; a user that may log in only
//! with a client certificate works with one; a Unix socket URL and the
//! PG* variables work. Runs with `IDEM_TEST_BACKEND=postgres`.

use crate::support::{free_port, require, sh, Backend, Env, ScriptedServer};

/// The private server, stopped when dropped.
struct Server {
    server: ScriptedServer,
    port: u16,
}

impl Server {
    fn start() -> Server {
        let port = free_port();
        let server = ScriptedServer::start(
            "pg_tls_server.sh",
            &[port.to_string()],
            "needs the postgresql package and root",
        );
        Server { server, port }
    }

    fn file(&self, name: &str) -> String {
        self.server
            .dir
            .path()
            .join(name)
            .to_string_lossy()
            .into_owned()
    }

    /// A URL to 127.0.0.1 (or `host`) with `params` after the table.
    fn url(&self, user: &str, host: &str, env: &Env, params: &str) -> String {
        format!(
            "postgres://{user}@{host}:{}/test?table={}&{params}",
            self.port,
            env.unique()
        )
    }

    fn verify_full(&self, ca: &str) -> String {
        format!("sslmode=verify-full&sslrootcert={}", self.file(ca))
    }
}

/// Runs `idem run` counting into `n`; returns (exit code, stderr).
fn run(env: &Env, url: &str, extra_env: &[(&str, &str)]) -> (i32, String) {
    let out = env
        .idem()
        .envs(extra_env.iter().copied())
        .args(["--db", url, "run", "-k", "k", "--"])
        .args(sh(&env.count_run("n")))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
#[ignore = "needs IDEM_TEST_BACKEND=postgres"]
fn tls_like_libpq_against_a_server_that_requires_it() {
    require(Backend::Postgres);
    let server = Server::start();

    // verify-full: runs once, replays, and the connection is encrypted
    // (the child asks the server, while idem's connection is open).
    let env = Env::new();
    let url = server.url("postgres", "127.0.0.1", &env, &server.verify_full("ca.pem"));
    let ask = format!(
        "psql -X -A -t -h '{}' -p {} -U postgres -d test -c \
         \"SELECT bool_and(ssl) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) \
         WHERE application_name = 'idem'\"",
        server.file("sock"),
        server.port
    );
    for _ in 0..2 {
        env.idem()
            .args(["--db", &url, "run", "-k", "tls", "--"])
            .args(sh(&format!("{}; {ask}", env.count_run("n"))))
            .assert()
            .success()
            .stdout("t\n");
    }
    assert_eq!(env.count("n"), 1);

    // A name the certificate is not for, and a CA that did not sign it:
    // nothing runs, and the message says why.
    let env = Env::new();
    let wrong_name = server.url("postgres", "localhost", &env, &server.verify_full("ca.pem"));
    let (code, err) = run(&env, &wrong_name, &[]);
    assert_eq!(code, 125, "{err}");
    assert!(
        err.contains(&format!("cannot connect to localhost:{}: TLS", server.port)),
        "{err}"
    );
    assert!(err.contains("not valid for name \"localhost\""), "{err}");
    let untrusted = server.url(
        "postgres",
        "127.0.0.1",
        &env,
        &server.verify_full("other-ca.pem"),
    );
    let (code, err) = run(&env, &untrusted, &[]);
    assert_eq!(code, 125, "{err}");
    assert!(err.contains("not signed by a trusted CA"), "{err}");
    // verify-ca checks the chain but not the name.
    let ca_only = wrong_name.replace("verify-full", "verify-ca");
    assert_eq!(run(&env, &ca_only, &[]).0, 0);
    assert_eq!(env.count("n"), 1);

    // A user that may only log in with a certificate: refused without one
    // (no password shown), let in with one.
    let env = Env::new();
    let base = server.url(
        "certuser:pw-not-used",
        "127.0.0.1",
        &env,
        &server.verify_full("ca.pem"),
    );
    let (code, err) = run(&env, &base, &[]);
    assert_eq!(code, 125, "{err}");
    assert!(err.contains("certificate"), "{err}");
    assert!(!err.contains("pw-not-used"), "{err}");
    let with_cert = format!(
        "{base}&sslcert={}&sslkey={}",
        server.file("client.pem"),
        server.file("client.key")
    );
    assert_eq!(run(&env, &with_cert, &[]), (0, String::new()));
    // The variables work as well as the URL's parameters.
    let files = ["ca.pem", "client.pem", "client.key"].map(|f| server.file(f));
    let env_cert = [
        ("PGSSLMODE", "verify-full"),
        ("PGSSLROOTCERT", files[0].as_str()),
        ("PGSSLCERT", files[1].as_str()),
        ("PGSSLKEY", files[2].as_str()),
    ];
    let plain = format!(
        "postgres://certuser@127.0.0.1:{}/test?table={}",
        server.port,
        env.unique()
    );
    assert_eq!(run(&env, &plain, &env_cert), (0, String::new()));
    assert_eq!(env.count("n"), 1);

    // No TLS to a server that insists on it: refused, and said so.
    let (code, err) = run(
        &env,
        &plain.replace("certuser", "postgres"),
        &[("PGSSLMODE", "disable")],
    );
    assert_eq!(code, 125, "{err}");
    assert!(err.contains("no encryption"), "{err}");

    // A Unix socket directory as host, in the URL or from PGHOST.
    let env = Env::new();
    let sock = server.file("sock");
    let socket_url = format!(
        "postgresql:///test?host={}&port={}&user=postgres&table={}",
        sock,
        server.port,
        env.unique()
    );
    assert_eq!(run(&env, &socket_url, &[]), (0, String::new()));
    let port = server.port.to_string();
    let from_env = [
        ("PGHOST", sock.as_str()),
        ("PGPORT", port.as_str()),
        ("PGUSER", "postgres"),
        ("PGDATABASE", "test"),
    ];
    let bare = format!("postgresql://?table={}", env.unique());
    assert_eq!(run(&env, &bare, &from_env), (0, String::new()));
    assert_eq!(env.count("n"), 1, "the same store both ways");
}
