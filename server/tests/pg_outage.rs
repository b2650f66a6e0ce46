//! End to end on PostgreSQL: the database stops and starts under a running
//! server. A write during the outage is refused (500 or 503) with nothing
//! committed, and writes work again once the database is back, without
//! restarting the server; and several processes sharing the database resume
//! tailing its change log after a restart. A connection killed in the middle
//! of a write answers 500 `INTERNAL` and commits nothing. Needs
//! `STATECAST_PG_URL` and root (it runs `pg_ctlcluster`); passes with a note
//! otherwise. Its own binary, its
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
    if !StoreKind::is_default_run() {
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
    let pg = pg_schema();
    let server = TestServer::start_on(&pg.store_url(), &[]);
    let (mut alice, _) = server.subscribed("alice", 1).await;
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
    // The writable check reads nothing from the store: with no database at
    // all, a write the channel never allows is still answered 403.
    let not_writable = alice.write(save("job/1", "Job", 1, json!({"name": "Renamed"}))).await;
    assert_eq!(not_writable.refused(), (403, "NOT_WRITABLE".to_owned()), "{}", not_writable.response);
    pg_ctl("start", &cluster);
    drop(guard);

    // The pool reconnects by itself: retry until the database accepts connections.
    write_until_accepted(&mut alice, create_task(1, Some(-3), json!({"name": "After the outage"}))).await;
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
    let pg = pg_schema();
    let a = TestServer::start_on(&pg.store_url(), &[]);
    let b = TestServer::start_on(&pg.store_url(), &[]);
    let (mut watch_b, _) = b.subscribed("bob", 1).await;
    let (mut to_a, _) = a.subscribed("alice", 1).await;
    to_a.write(create_task(1, Some(-1), json!({"name": "r-before"}))).await.ok();
    assert_eq!(next_task_name(&mut watch_b).await, "r-before");

    let guard = Restart(cluster.clone());
    pg_ctl("restart", &cluster);
    drop(guard);

    // Writes are refused (500/503) until the pool reconnects, then succeed.
    write_until_accepted(&mut to_a, create_task(1, Some(-1), json!({"name": "r-after"}))).await;
    assert_eq!(next_task_name(&mut watch_b).await, "r-after", "B's tailer resumed where it was");
}

#[tokio::test]
async fn a_connection_killed_in_the_middle_of_a_write_answers_500_and_commits_nothing() {
    let Some(_) = outage_cluster() else { return };
    let _serial = ONE_AT_A_TIME.lock().await;
    let pg = pg_schema();
    let server = TestServer::start_on(&pg.store_url(), &[]);
    let (mut alice, _) = server.subscribed("alice", 1).await;
    let created = alice.write(create_task(1, None, json!({"name": "Original"}))).await;
    let id = created.ok()["instanceId"].as_i64().expect("created id");
    // Carol is an admin: she may rename any task.
    let (mut carol, _) = server.subscribed("carol", 1).await;

    // Another session locks the row, so the server's write stops inside its
    // transaction (its planner reads the row FOR UPDATE) ...
    let mut holder = Command::new("psql")
        .args([pg.url.as_str(), "-X", "-q", "-v", "ON_ERROR_STOP=1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("run psql");
    let mut holder_in = holder.stdin.take().expect("psql stdin");
    use std::io::Write as _;
    writeln!(holder_in, "BEGIN; SELECT id FROM {}.\"Task\" WHERE id = {id} FOR UPDATE;", pg.name).expect("lock");
    let held = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'idle in transaction' AND datname = current_database() \
         AND query LIKE '%{}%FOR UPDATE%'",
        pg.name
    );
    wait_for(&pg.url, &held, "the row lock").await;
    let mut doomed = save("job/1", "Task", id, json!({"name": "Never committed"}));
    doomed["writeId"] = json!(900);
    carol.send(doomed).await;
    let blocked = "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database() \
                   AND state = 'active' LIMIT 1";
    let pid = wait_for(&pg.url, blocked, "the server's write waiting on the lock").await;
    // ... where its connection is killed.
    psql(&pg.url, &format!("SELECT pg_terminate_backend({pid})"));
    let answer = loop {
        let m = carol.recv().await;
        if m["type"] == "writeResponse" && m["writeId"] == 900 {
            break m;
        }
        assert_ne!(m["type"], "delta", "no delta for a write that failed: {m}");
    };
    assert_eq!(error_of(&answer), (500, "INTERNAL".to_owned()), "{answer}");
    writeln!(holder_in, "ROLLBACK;").expect("unlock");
    drop(holder_in);
    assert!(holder.wait().expect("psql exits").success());

    let name = psql(&pg.url, &format!("SELECT name FROM {}.\"Task\" WHERE id = {id}", pg.name));
    assert_eq!(name, "Original", "nothing of the killed write was committed");
    // The pool replaces the dead connection by itself.
    let again = carol.write(save("job/1", "Task", id, json!({"name": "Saved after"}))).await;
    assert_eq!(again.response["success"], true, "{}", again.response);
    let name = psql(&pg.url, &format!("SELECT name FROM {}.\"Task\" WHERE id = {id}", pg.name));
    assert_eq!(name, "Saved after");
}

/// Polls `sql` until it returns something other than empty or `0`; returns it.
async fn wait_for(url: &str, sql: &str, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = psql(url, sql);
        if !v.is_empty() && v != "0" {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The name of the next Task created in a delta.
/// Sends `write` (a fresh writeId each time) until it is accepted: writes are
/// refused with 500/503 until the pool has reconnected after a restart.
async fn write_until_accepted(client: &mut Client, write: serde_json::Value) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let w = client.write(write.clone()).await;
        if w.response["success"] == true {
            return;
        }
        assert!(Instant::now() < deadline, "writes must work again after the restart: {}", w.response);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

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
