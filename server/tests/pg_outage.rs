//! End to end on PostgreSQL: the database stops and starts under a running
//! server. A write during the outage is refused (500 or 503) with nothing
//! committed, and writes work again once the database is back, without
//! restarting the server; and several processes sharing the database resume
//! tailing its change log after a restart. Needs `STATECAST_PG_URL` and root
//! (it runs `pg_ctlcluster`); passes with a note otherwise. Its own binary, its
//! tests one at a time: they stop the database every other test would use.

#![allow(clippy::print_stderr)]

mod common;

use common::*;
use serde_json::json;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `(version, cluster)` of the local PostgreSQL cluster, if `pg_ctlcluster` can drive it.
fn cluster() -> Option<(String, String)> {
    let out = Command::new("pg_lsclusters").arg("-h").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut fields = text.lines().next()?.split_whitespace();
    Some((fields.next()?.to_owned(), fields.next()?.to_owned()))
}

/// `pg_ctlcluster` through `.ci/pg-ctl`, which closes our descriptors first:
/// the daemon it starts would keep them (a test runner's pipes among them).
fn pg_ctl_command() -> Command {
    let mut c = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.ci/pg-ctl"));
    c.stdin(Stdio::null()).stdout(Stdio::null());
    c
}

fn pg_ctl(action: &str, (version, name): &(String, String)) {
    let mut args = vec![version.as_str(), name.as_str(), action];
    if action == "stop" {
        args.extend(["-m", "fast"]);
    }
    let status = pg_ctl_command().args(args).status().expect("run pg_ctlcluster");
    assert!(status.success(), "pg_ctlcluster {action} failed");
}

/// Starts the cluster again even if the test fails half way.
struct Restart((String, String));

impl Drop for Restart {
    fn drop(&mut self) {
        let (version, name) = &self.0;
        let _ = pg_ctl_command().args([version.as_str(), name.as_str(), "start"]).status();
    }
}

/// The tests of this binary stop the database: one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The cluster to stop, when this run can (PostgreSQL tests, default pass).
fn outage_cluster() -> Option<(String, String)> {
    if StoreKind::from_env() != StoreKind::Sled {
        eprintln!("runs once, in the default (sled) pass: it picks its own store");
        return None;
    }
    let (Some(_), Some(cluster)) = (pg_url(), cluster()) else {
        eprintln!("STATECAST_PG_URL is not set or pg_ctlcluster is missing: skipped");
        return None;
    };
    Some(cluster)
}

#[tokio::test]
async fn writes_fail_cleanly_during_an_outage_and_work_again_after_it() {
    let Some(cluster) = outage_cluster() else { return };
    let _serial = ONE_AT_A_TIME.lock().await;
    let pg = PgSchema::create();
    let server = TestServer::start_on(&pg.store_url(), &[]);
    let mut alice = server.json().await;
    alice.hello("alice").await;
    alice.subscribe("job", 1).await;
    alice.write(create_task(1, Some(-1), json!({"name": "Before the outage"}))).await.ok();

    let guard = Restart(cluster.clone());
    pg_ctl("stop", &cluster);
    let during = alice.write(create_task(1, Some(-2), json!({"name": "During the outage"}))).await;
    let (code, reason) = during.refused();
    eprintln!("a write during the outage was answered {code} {reason}");
    assert!(
        [(500, "INTERNAL"), (503, "UNAVAILABLE")].contains(&(code, reason.as_str())),
        "expected 500 INTERNAL or 503 UNAVAILABLE, got {code} {reason}"
    );
    assert!(during.deltas().is_empty());
    pg_ctl("start", &cluster);
    drop(guard);

    // The pool reconnects by itself: retry until the database accepts connections.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let w = alice.write(create_task(1, Some(-3), json!({"name": "After the outage"}))).await;
        if w.response["success"] == true {
            break;
        }
        assert!(Instant::now() < deadline, "writes must work again after the restart: {}", w.response);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let names =
        psql(&pg.url, &format!("SELECT string_agg(name, ',' ORDER BY id) FROM {}.\"Task\" WHERE id > 3", pg.name));
    assert_eq!(names, "Before the outage,After the outage", "nothing of the refused write was committed");
    let (_bob, state) = server.subscribed("bob", 1).await;
    let names: Vec<&str> =
        state["instances"].as_array().expect("rows").iter().filter_map(|r| r["name"].as_str()).collect();
    assert!(names.contains(&"After the outage") && !names.contains(&"During the outage"), "{names:?}");
}

#[tokio::test]
async fn tailing_resumes_after_a_database_restart() {
    let Some(cluster) = outage_cluster() else { return };
    let _serial = ONE_AT_A_TIME.lock().await;
    let pg = PgSchema::create();
    let a = TestServer::start_on(&pg.store_url(), &[]);
    let b = TestServer::start_on(&pg.store_url(), &[]);
    let (mut watch_b, _) = b.subscribed("bob", 1).await;
    let mut to_a = a.json().await;
    to_a.hello("alice").await;
    to_a.subscribe("job", 1).await;
    to_a.write(create_task(1, Some(-1), json!({"name": "r-before"}))).await.ok();
    assert_eq!(next_task_name(&mut watch_b).await, "r-before");

    let guard = Restart(cluster.clone());
    pg_ctl("restart", &cluster);
    drop(guard);

    // Writes are refused (500/503) until the pool reconnects, then succeed.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let w = to_a.write(create_task(1, Some(-1), json!({"name": "r-after"}))).await;
        if w.response["success"] == true {
            break;
        }
        assert!(Instant::now() < deadline, "A must write again after the restart: {}", w.response);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(next_task_name(&mut watch_b).await, "r-after", "B's tailer resumed where it was");
}

/// The name of the next Task created in a delta.
async fn next_task_name(watch: &mut Client) -> String {
    loop {
        match watch.next_event(Duration::from_secs(20)).await {
            Some(Event::Msg(m)) if m["type"] == "delta" => {
                if let Some(name) = changes(&m).iter().find_map(|c| c["name"].as_str().map(str::to_owned)) {
                    return name;
                }
            }
            Some(Event::Msg(_)) => {}
            other => panic!("no delta with a task name, got {other:?}"),
        }
    }
}
