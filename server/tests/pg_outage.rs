//! End to end on PostgreSQL: the database stops and starts under a running
//! server. A write during the outage is refused (500 or 503) with nothing
//! committed, and writes work again once the database is back, without
//! restarting the server. Needs `STATECAST_PG_URL` and root (it runs
//! `pg_ctlcluster`); passes with a note otherwise. One test in its own binary:
//! it stops the database every other test in the run would use.

#![allow(clippy::print_stderr)]

mod common;

use common::*;
use serde_json::json;
use std::process::Command;
use std::time::{Duration, Instant};

/// `(version, cluster)` of the local PostgreSQL cluster, if `pg_ctlcluster` can drive it.
fn cluster() -> Option<(String, String)> {
    let out = Command::new("pg_lsclusters").arg("-h").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut fields = text.lines().next()?.split_whitespace();
    Some((fields.next()?.to_owned(), fields.next()?.to_owned()))
}

fn pg_ctl(action: &str, (version, name): &(String, String)) {
    let mut args = vec![version.as_str(), name.as_str(), action];
    if action == "stop" {
        args.extend(["-m", "fast"]);
    }
    let status = Command::new("pg_ctlcluster").args(args).status().expect("run pg_ctlcluster");
    assert!(status.success(), "pg_ctlcluster {action} failed");
}

/// Starts the cluster again even if the test fails half way.
struct Restart((String, String));

impl Drop for Restart {
    fn drop(&mut self) {
        let (version, name) = &self.0;
        let _ = Command::new("pg_ctlcluster").args([version.as_str(), name.as_str(), "start"]).status();
    }
}

#[tokio::test]
async fn writes_fail_cleanly_during_an_outage_and_work_again_after_it() {
    if StoreKind::from_env() != StoreKind::Sled {
        eprintln!("runs once, in the default (sled) pass: it picks its own store");
        return;
    }
    let (Some(_), Some(cluster)) = (pg_url(), cluster()) else {
        eprintln!("STATECAST_PG_URL is not set or pg_ctlcluster is missing: skipped");
        return;
    };
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
