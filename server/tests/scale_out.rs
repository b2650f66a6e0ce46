//! Scale out: several server processes on one PostgreSQL database, each
//! broadcasting every commit (its own and the others') in seq order from the
//! shared change log. Needs `STATECAST_PG_URL` (`.ci/run` sets it); passes
//! with a note without it. Each test runs in its own schema.

#![allow(clippy::print_stderr)]

mod common;

use common::*;
use serde_json::{Value, json};
use std::time::Duration;

fn enabled() -> bool {
    if !StoreKind::is_default_run() {
        eprintln!("runs once, in the default (sled) pass: it picks its own store");
        return false;
    }
    if pg_url().is_none() {
        eprintln!("STATECAST_PG_URL is not set: skipped");
        return false;
    }
    true
}

/// Reads deltas until `want` Task creates named with `prefix` arrived; returns
/// the seqs of the deltas (in arrival order) and the names created.
async fn collect(watch: &mut Client, prefix: &str, want: usize) -> (Vec<i64>, Vec<String>) {
    let (mut seqs, mut names) = (Vec::new(), Vec::new());
    while names.len() < want {
        match watch.next_event(Duration::from_secs(15)).await {
            Some(Event::Msg(m)) if m["type"] == "delta" => {
                seqs.push(m["seq"].as_i64().expect("seq"));
                for c in changes(&m) {
                    if let Some(n) = c["name"].as_str().filter(|n| n.starts_with(prefix)) {
                        names.push(n.to_owned());
                    }
                }
            }
            Some(Event::Msg(_)) => {}
            other => {
                eprintln!("saw {} of {want} creates, then {other:?}: seqs {seqs:?}", names.len());
                return (seqs, names);
            }
        }
    }
    (seqs, names)
}

#[tokio::test]
async fn three_processes_deliver_every_write_in_the_same_commit_order() {
    if !enabled() {
        return;
    }
    let pg = pg_schema();
    let servers: Vec<TestServer> = (0..3)
        .map(|_| {
            TestServer::start_on(&pg.store_url(), &["--log", "info,statecast_core=debug,statecast_store_sql=debug"])
        })
        .collect();
    let mut watchers = Vec::new();
    for s in &servers {
        watchers.push(s.subscribed("bob", 1).await.0);
    }
    let mut writers = Vec::new();
    for (i, s) in servers.iter().enumerate() {
        let mut c = s.json().await;
        c.client_id = format!("writer-{i}");
        c.hello("alice").await;
        c.subscribe("job", 1).await;
        writers.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for n in 0..10 {
                // Three processes creating under one job contend on the same
                // rows: 503 CONTENDED is an answer to retry (nothing was committed).
                let mut w = c.write(create_task(1, Some(-1), json!({"name": format!("w{i}-{n}")}))).await;
                while w.response["error"]["reason"] == "CONTENDED" {
                    w = c.write(create_task(1, Some(-1), json!({"name": format!("w{i}-{n}")}))).await;
                }
                let seq = w.ok()["seq"].as_i64().expect("seq");
                // The writer's own copy (with its writeId) comes before the response.
                assert!(
                    w.deltas().iter().any(|d| d["seq"] == json!(seq) && d["writeId"].is_i64()),
                    "the writer's delta precedes its writeResponse: {:?}",
                    w.before
                );
                seqs.push(seq);
            }
            seqs
        }));
    }
    let mut written = Vec::new();
    for w in writers {
        written.extend(w.await.expect("writer"));
    }
    written.sort_unstable();
    let mut orders = Vec::new();
    for (i, w) in watchers.iter_mut().enumerate() {
        let (seqs, names) = collect(w, "w", 30).await;
        if names.len() < 30 {
            let log = psql(
                &pg.url,
                &format!("SELECT string_agg(seq::text, ',' ORDER BY seq) FROM {}._statecast_log", pg.name),
            );
            panic!(
                "watcher {i} saw {seqs:?}\nlog {log}\nwritten {written:?}\n--- server {i} ---\n{}",
                servers[i].stderr()
            );
        }
        assert_eq!(names.len(), 30, "every write through any process, once: {names:?}");
        orders.push(seqs);
    }
    assert_eq!(orders[0], written, "the deltas come in commit (seq) order");
    assert_eq!(orders[0], orders[1], "same order on every process");
    assert_eq!(orders[0], orders[2], "same order on every process");
    drop(servers);
}

/// Applies a `state` (whole or incremental) or a `delta` to a view of the
/// context: row key → the row's fields.
fn apply(view: &mut std::collections::BTreeMap<(String, i64), Value>, msg: &Value) {
    let key = |r: &Value| (r["_type"].as_str().unwrap_or_default().to_owned(), r["id"].as_i64().unwrap_or_default());
    if msg["type"] == "state" {
        if msg["incremental"] != true {
            view.clear();
        }
        for r in msg["instances"].as_array().into_iter().flatten() {
            view.insert(key(r), r.clone());
        }
        for r in msg["removed"].as_array().into_iter().flatten() {
            view.remove(&key(r));
        }
    } else if msg["type"] == "delta" {
        for c in changes(msg) {
            if c["op"] == "delete" {
                view.remove(&key(&c));
            } else {
                let entry = view.entry(key(&c)).or_insert_with(|| json!({}));
                for (k, v) in c.as_object().into_iter().flatten().filter(|(k, _)| *k != "op") {
                    entry[k] = v.clone();
                }
            }
        }
    }
}

/// Names of the context's tasks in a view.
fn task_names(view: &std::collections::BTreeMap<(String, i64), Value>) -> Vec<String> {
    let mut names: Vec<String> = view
        .iter()
        .filter(|((t, _), _)| t == "Task")
        .filter_map(|(_, r)| r["name"].as_str().map(str::to_owned))
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn a_client_resumes_on_another_process_with_since_after_a_sigkill() {
    if !enabled() {
        return;
    }
    let pg = pg_schema();
    let mut a = TestServer::start_on(&pg.store_url(), &[]);
    let b = TestServer::start_on(&pg.store_url(), &[]);

    // A client on A follows job 1, keeping a view; a writer on A changes it.
    // (carol, an admin, reads the context in full: a subscriber with read
    // rules resuming where its class is not remembered gets a whole state.)
    let mut view = std::collections::BTreeMap::new();
    let mut watcher = a.json().await;
    watcher.hello("carol").await;
    let state = watcher.subscribe("job", 1).await;
    apply(&mut view, &state);
    let epoch = state["epoch"].clone();
    let mut writer = a.json().await;
    writer.hello("alice").await;
    writer.subscribe("job", 1).await;
    let doomed = writer.write(create_task(1, Some(-1), json!({"name": "k-doomed"}))).await.ok()["instanceId"].clone();
    writer.write(create_task(1, Some(-1), json!({"name": "k-kept"}))).await.ok();
    let mut since = json!(null);
    for _ in 0..2 {
        let m = watcher.recv_type("delta").await;
        apply(&mut view, &m);
        since = m["seq"].clone();
    }

    a.kill9();

    // Meanwhile, through B: a create, a save and a delete of a row the client has.
    let mut writer_b = b.json().await;
    writer_b.hello("alice").await;
    writer_b.subscribe("job", 1).await;
    writer_b.write(create_task(1, Some(-1), json!({"name": "k-after"}))).await.ok();
    writer_b.write(save("job/1", "Task", 1, json!({"notes": "changed while away"}))).await.ok();
    let id = doomed.as_i64().expect("id");
    writer_b.write(delete("job/1", "Task", id)).await.ok();

    // The client resumes on B with `since`: only what changed, deletes included.
    let mut resumed = b.json().await;
    resumed.hello("carol").await;
    resumed.send(json!({"type": "subscribe", "channel": "job", "anchorId": 1, "since": since, "epoch": epoch})).await;
    let state = resumed.recv_type("state").await;
    assert_eq!(state["incremental"], true, "answered from the change log: {state}");
    let names: Vec<&str> =
        state["instances"].as_array().expect("instances").iter().filter_map(|r| r["name"].as_str()).collect();
    assert!(names.contains(&"k-after") && !names.contains(&"k-kept"), "only rows changed since: {names:?}");
    assert!(
        state["removed"].as_array().expect("removed").iter().any(|r| r["id"] == doomed),
        "the deleted task is reported removed: {state}"
    );
    apply(&mut view, &state);

    // Its view now equals a whole state from B (and the database).
    let (_, whole) = b.subscribed("bob", 1).await;
    let mut fresh = std::collections::BTreeMap::new();
    apply(&mut fresh, &whole);
    assert_eq!(task_names(&view), task_names(&fresh));
    assert_eq!(view.get(&("Task".to_owned(), 1)).map(|r| r["notes"].clone()), Some(json!("changed while away")));
    let in_db =
        psql(&pg.url, &format!("SELECT string_agg(name, ',' ORDER BY name) FROM {}.\"Task\" WHERE job = 1", pg.name));
    assert_eq!(task_names(&view).join(","), in_db, "the view equals the database");
}

/// PostgreSQL's count of deadlocks detected in the test database.
fn deadlocks(url: &str) -> i64 {
    psql(url, "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()").parse().unwrap_or(0)
}

#[tokio::test]
async fn restarting_a_process_does_not_hold_up_the_others_commits() {
    if !enabled() {
        return;
    }
    let pg = pg_schema();
    let url = pg_url().expect("url");
    let mut servers: Vec<TestServer> = (0..3).map(|_| TestServer::start_on(&pg.store_url(), &[])).collect();
    // Statistics reach pg_stat_database within a second of a transaction.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let deadlocks_before = deadlocks(&url);
    let mut writer = servers[0].json().await;
    writer.hello("alice").await;
    writer.subscribe("job", 1).await;
    let load = tokio::spawn(async move {
        let (mut slowest, mut failed, mut n) = (Duration::ZERO, Vec::new(), 0);
        let until = std::time::Instant::now() + Duration::from_secs(4);
        while std::time::Instant::now() < until {
            n += 1;
            let started = std::time::Instant::now();
            let w = writer.write(save("job/1", "Task", 1, json!({"notes": format!("save {n}")}))).await;
            slowest = slowest.max(started.elapsed());
            if w.response["success"] != true {
                failed.push(w.response.clone());
            }
        }
        (n, slowest, failed)
    });
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        servers[2].relaunch();
    }
    let (n, slowest, failed) = load.await.expect("load");
    assert!(failed.is_empty(), "writes failed while a process restarted: {failed:?}");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(deadlocks(&url) - deadlocks_before, 0, "PostgreSQL saw deadlocks while a process restarted");
    eprintln!("{n} saves; slowest {slowest:?} while process 3 restarted twice (target: < 200 ms)");
    drop(servers);
}
