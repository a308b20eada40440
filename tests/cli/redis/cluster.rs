//! A private Redis Cluster of three masters (tests/redis_cluster.sh): the
//! plain URL of any node works, and a key whose hash slot moves to another
//! master mid-run (CLUSTER SETSLOT and MIGRATE, as `redis-cli --cluster
//! reshard` does it) keeps one execution: duplicates during the move are
//! refused (ASK and MOVED are followed), the owner's renewals and outcome
//! follow the slot, and the record replays from its new master.

use super::{connect, query};
use crate::support::{free_port, require, sh, Backend, Env, Holder, ScriptedServer};
use std::net::TcpListener;

/// The cluster, stopped when dropped.
struct Cluster {
    _server: ScriptedServer,
    ports: Vec<u16>,
}

impl Cluster {
    fn start() -> Cluster {
        // Each node also listens on port + 10000 (the cluster bus).
        let ports: Vec<u16> = (0..3)
            .map(|_| loop {
                let port = free_port();
                if port < 55000 && TcpListener::bind(("127.0.0.1", port + 10000)).is_ok() {
                    break port;
                }
            })
            .collect();
        let args: Vec<String> = ports.iter().map(u16::to_string).collect();
        let server = ScriptedServer::start("redis_cluster.sh", &args, "needs redis-server");
        Cluster {
            _server: server,
            ports,
        }
    }

    fn url(&self, node: usize) -> String {
        format!("redis://127.0.0.1:{}/0", self.ports[node])
    }

    fn node(&self, node: usize) -> redis::Connection {
        connect(&self.url(node))
    }
}

#[test]
#[ignore = "needs IDEM_TEST_BACKEND=redis"]
fn a_key_whose_slot_moves_mid_run_runs_once() {
    require(Backend::Redis);
    let cluster = Cluster::start();
    let env = Env::new();
    let db = format!("{}?prefix=c:", cluster.url(0));
    let record = crate::support::record_key("c:", "moving");
    let on_node = |node: usize| {
        let mut idem = env.idem_std();
        idem.env("IDEM_DB", format!("{}?prefix=c:", cluster.url(node)));
        idem
    };
    let run = |node: usize| {
        let mut idem = on_node(node);
        idem.args(["run", "-k", "moving", "--lease", "3s", "--"])
            .args(sh(&Holder::script(&env)));
        idem
    };
    let owner = Holder::start_from(&env, on_node(0), "moving", &["--lease", "3s"]);

    let slot: i64 = query(&mut cluster.node(0), &["CLUSTER", "KEYSLOT", &record]);
    let ids: Vec<String> = (0..3)
        .map(|n| query(&mut cluster.node(n), &["CLUSTER", "MYID"]))
        .collect();
    let from = (0..3)
        .find(|&n| {
            // The others answer MOVED.
            redis::cmd("EXISTS")
                .arg(&record)
                .query::<i64>(&mut cluster.node(n))
                .is_ok_and(|found| found == 1)
        })
        .expect("the record lives on one master");
    let to = (from + 1) % 3;
    let slot = slot.to_string();
    let set = |node: usize, args: &[&str]| {
        let mut all = vec!["CLUSTER", "SETSLOT", slot.as_str()];
        all.extend(args);
        let _: () = query(&mut cluster.node(node), &all);
    };
    let refused = |node: usize| {
        let out = run(node).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(75),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // Migrating: the record is still on its old master.
    set(to, &["IMPORTING", &ids[from]]);
    set(from, &["MIGRATING", &ids[to]]);
    refused(to);
    // Moved, slot not yet handed over: the old master answers ASK.
    let port = cluster.ports[to].to_string();
    let _: () = query(
        &mut cluster.node(from),
        &[
            "MIGRATE",
            "127.0.0.1",
            &port,
            "",
            "0",
            "5000",
            "KEYS",
            &record,
        ],
    );
    refused(from);
    // Handed over: MOVED, for the owner's renewals too (one a second).
    for node in 0..3 {
        set(node, &["NODE", &ids[to]]);
    }
    std::thread::sleep(std::time::Duration::from_millis(3500));
    refused(from);
    let out = owner.release();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(query::<i64>(&mut cluster.node(to), &["EXISTS", &record]), 1);
    // Finished on the new master: replayed from any node, run once.
    for node in 0..3 {
        let out = run(node).output().unwrap();
        assert!(out.status.success());
        assert_eq!(String::from_utf8_lossy(&out.stdout), "held\ndone\n");
    }
    assert_eq!(env.count("n"), 1);
    // inspect and purge see every master.
    env.idem()
        .env("IDEM_DB", &db)
        .args(["purge", "--all"])
        .assert()
        .success()
        .stdout("purged 1, skipped 0\n");
}
