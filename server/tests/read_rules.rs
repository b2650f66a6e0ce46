//! End to end: read rules. In the demo a private task is read only by its
//! assignee, its creator and admins, and a user's e-mail address only by
//! that user and admins. A row a subscriber may not read never reaches it —
//! not in `state`, deltas, stream snapshots, events or `get` — and a row
//! turning readable or unreadable arrives as a create or a delete, with an
//! unbroken `prev` chain. A write naming a row its writer may not read is
//! answered exactly as if the row did not exist. A seeded random walk checks
//! that every subscriber's view is what it may read of the database.

#![allow(clippy::print_stderr)]

mod common;

use common::*;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

/// A context as a subscriber sees it, built from its `state` and deltas only.
#[derive(Debug, Default)]
struct View {
    rows: BTreeMap<(String, i64), Map<String, Value>>,
    seq: i64,
}

impl View {
    fn from_state(state: &Value) -> Self {
        let mut v = View { seq: state["seq"].as_i64().expect("seq"), ..View::default() };
        for ((ty, id), row) in rows(state) {
            v.rows.insert((ty, id), row.as_object().cloned().unwrap_or_default());
        }
        v
    }

    /// Applies one message; deltas must continue the chain.
    fn apply(&mut self, who: &str, m: &Value) {
        if std::env::var("READ_DEBUG").is_ok() {
            eprintln!("{who} <- {m}");
        }
        if m["type"] != "delta" {
            return;
        }
        assert_eq!(m["prev"].as_i64(), Some(self.seq), "{who}: a delta that does not continue the chain: {m}");
        self.seq = m["seq"].as_i64().expect("seq");
        for c in changes(m) {
            let key = (c["_type"].as_str().unwrap_or("").to_owned(), c["id"].as_i64().unwrap_or(0));
            let mut fields = c.as_object().cloned().unwrap_or_default();
            fields.remove("op");
            match c["op"].as_str() {
                Some("delete") => {
                    assert!(self.rows.remove(&key).is_some(), "{who}: a delete of a row it did not have: {c}");
                }
                Some("create") => {
                    self.rows.insert(key, fields);
                }
                _ => {
                    let row =
                        self.rows.get_mut(&key).unwrap_or_else(|| panic!("{who}: an update of an unseen row: {c}"));
                    row.extend(fields);
                }
            }
        }
    }

    /// Reads everything queued for `c` (up to a pong), applying it.
    async fn drain(&mut self, who: &str, c: &mut Client) {
        c.send(json!({"type": "ping", "rid": "drain"})).await;
        loop {
            let m = c.recv().await;
            if m["type"] == "pong" {
                return;
            }
            self.apply(who, &m);
        }
    }

    fn tasks(&self) -> BTreeMap<i64, &Map<String, Value>> {
        self.rows.iter().filter(|((ty, _), _)| ty == "Task").map(|((_, id), r)| (*id, r)).collect()
    }
}

/// What user `me` may read of a task: public, or assigned to or created by `me`.
fn may_read(me: i64, task: &Map<String, Value>) -> bool {
    task.get("private") != Some(&json!(true))
        || task.get("assignee").and_then(Value::as_i64) == Some(me)
        || task.get("created_by").and_then(Value::as_i64) == Some(me)
}

async fn joined(server: &TestServer, token: &str, msgpack: bool) -> (Client, View) {
    let mut c = if msgpack { server.msgpack().await } else { server.json().await };
    c.hello(token).await;
    let state = c.subscribe("job", 1).await;
    (c, View::from_state(&state))
}

#[tokio::test]
async fn a_private_task_reaches_only_its_readers_and_flips_arrive_as_create_and_delete() {
    let server = TestServer::start();
    let (mut alice, mut alice_view) = joined(&server, "alice", false).await;
    let (mut bob, mut bob_view) = joined(&server, "bob", true).await;
    let (mut carol, mut carol_view) = joined(&server, "carol", false).await;

    // alice creates a private task: she (creator) and carol (admin) see it; bob does not.
    let created = alice.write(create_task(1, None, json!({"name": "Secret", "private": true}))).await;
    let id = created.ok()["instanceId"].as_i64().expect("id");
    for m in &created.before {
        alice_view.apply("alice", m);
    }
    alice_view.drain("alice", &mut alice).await;
    bob_view.drain("bob", &mut bob).await;
    carol_view.drain("carol", &mut carol).await;
    assert!(alice_view.tasks().contains_key(&id) && carol_view.tasks().contains_key(&id));
    assert!(!bob_view.tasks().contains_key(&id), "bob never hears of it");
    let fresh = server.subscribed("bob", 1).await.1;
    assert!(row(&fresh, "Task", id).is_none(), "nor in a new state: {fresh}");

    // bob's writes naming it are answered as for a task that does not exist.
    let hidden = bob.write(save("job/1", "Task", id, json!({"status": "done"}))).await;
    let missing = bob.write(save("job/1", "Task", 999_999, json!({"status": "done"}))).await;
    assert_eq!(hidden.refused(), (400, "NOT_FOUND".to_owned()));
    assert_eq!(
        hidden.response["error"]["message"].as_str().map(|m| m.replace(&id.to_string(), "N")),
        missing.response["error"]["message"].as_str().map(|m| m.replace("999999", "N")),
        "the same words as for a missing row"
    );
    let delete = bob.write(delete("job/1", "Task", id)).await;
    assert_eq!(delete.refused(), (400, "NOT_FOUND".to_owned()));

    // carol assigns it to bob: it arrives for him as a create, in the chain.
    carol.write(save("job/1", "Task", id, json!({"assignee": 2}))).await.ok();
    bob_view.drain("bob", &mut bob).await;
    assert_eq!(bob_view.tasks().get(&id).and_then(|t| t.get("name")), Some(&json!("Secret")));
    // Now he may write it.
    let w = bob.write(save("job/1", "Task", id, json!({"status": "doing"}))).await;
    w.ok();
    for m in &w.before {
        bob_view.apply("bob", m);
    }
    // carol takes it back: it leaves bob's view as a delete.
    carol.write(save("job/1", "Task", id, json!({"assignee": 1}))).await.ok();
    bob_view.drain("bob", &mut bob).await;
    assert!(!bob_view.tasks().contains_key(&id), "gone from bob's view");
    // A change bob may not see is not sent, and the next one continues his chain.
    carol.write(save("job/1", "Task", id, json!({"notes": "hidden"}))).await.ok();
    carol.write(save("job/1", "Task", 2, json!({"notes": "visible"}))).await.ok();
    bob_view.drain("bob", &mut bob).await;
    assert_eq!(bob_view.tasks().get(&2).and_then(|t| t.get("notes")), Some(&json!("visible")));
    // Made public: everyone reads it.
    carol.write(save("job/1", "Task", id, json!({"private": false}))).await.ok();
    bob_view.drain("bob", &mut bob).await;
    assert_eq!(bob_view.tasks().get(&id).and_then(|t| t.get("notes")), Some(&json!("hidden")));
}

#[tokio::test]
async fn streams_and_get_obey_the_read_rules_and_hide_fields() {
    let server = TestServer::start();
    let (mut alice, _) = joined(&server, "alice", false).await;
    let secret = alice.write(create_task(1, None, json!({"name": "Secret", "private": true}))).await;
    let id = secret.ok()["instanceId"].as_i64().expect("id");

    let mut bob = server.json().await;
    bob.hello("bob").await;
    bob.send(json!({"type": "subscribe", "stream": "tasks", "snapshot": true, "rid": 1})).await;
    let subscribed = bob.recv_type("subscribed").await;
    let ids: Vec<i64> =
        subscribed["snapshot"].as_array().expect("snapshot").iter().filter_map(|r| r["id"].as_i64()).collect();
    assert!(ids.contains(&1) && !ids.contains(&id), "the snapshot holds no private task of others: {ids:?}");
    bob.send(json!({"type": "get", "stream": "tasks", "ids": [1, id], "rid": 2})).await;
    let got = bob.recv_type("rows").await;
    let got: Vec<i64> = got["rows"].as_array().expect("rows").iter().filter_map(|r| r["id"].as_i64()).collect();
    assert_eq!(got, vec![1], "`get` leaves the private task out");

    // Turning readable and unreadable arrive as create and delete events.
    let (mut carol, _) = joined(&server, "carol", false).await;
    carol.write(save("job/1", "Task", id, json!({"assignee": 2}))).await.ok();
    let event = bob.recv_type("event").await;
    assert_eq!((event["action"].clone(), event["id"].clone()), (json!("create"), json!(id)), "{event}");
    carol.write(save("job/1", "Task", id, json!({"assignee": 1}))).await.ok();
    let event = bob.recv_type("event").await;
    assert_eq!((event["action"].clone(), event["id"].clone()), (json!("delete"), json!(id)), "{event}");
    carol.write(save("job/1", "Task", id, json!({"notes": "unseen"}))).await.ok();
    bob.ping().await;

    // Users: everyone reads them; an e-mail address only its owner and admins.
    for (who, own) in [("bob", 2), ("carol", 0)] {
        let mut c = server.json().await;
        c.hello(who).await;
        c.send(json!({"type": "subscribe", "stream": "users", "snapshot": true})).await;
        let snap = c.recv_type("subscribed").await;
        for u in snap["snapshot"].as_array().expect("snapshot") {
            let shows = u.get("email").is_some();
            let id = u["id"].as_i64().expect("id");
            if who == "carol" || id == own {
                assert_eq!(u["email"], json!(format!("{}@example.com", u["name"].as_str().unwrap_or(""))), "{u}");
            } else {
                assert!(!shows, "{who} must not see user {id}'s e-mail: {u}");
            }
        }
    }
}

/// A failing seed replays exactly.
use statecast_core::testkit::rng::SplitMix as Rng;

#[tokio::test]
async fn every_view_is_what_its_reader_may_read_over_random_flips() {
    let seed: u64 = std::env::var("STATECAST_READ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(7, |d| d.as_nanos() as u64)
    });
    eprintln!("seed {seed} (replay with STATECAST_READ_SEED={seed})");
    let mut rng = Rng(seed);
    let server = TestServer::start();
    // alice and bob read as members (JSON and MessagePack), carol as an admin (the truth).
    let (mut alice, mut alice_view) = joined(&server, "alice", false).await;
    let (mut bob, mut bob_view) = joined(&server, "bob", true).await;
    let (mut carol, mut carol_view) = joined(&server, "carol", false).await;
    let mut ids: Vec<i64> = vec![1, 2];
    for step in 0..40 {
        let pick = |rng: &mut Rng, ids: &[i64]| ids[rng.below(ids.len() as u64) as usize];
        let assignee = |rng: &mut Rng| match rng.below(3) {
            0 => Value::Null,
            n => json!(n),
        };
        let msg = match rng.below(6) {
            0 | 1 => {
                let data =
                    json!({"name": format!("t{step}"), "private": rng.below(2) == 0, "assignee": assignee(&mut rng)});
                let (author, view, who) = if rng.below(2) == 0 {
                    (&mut alice, &mut alice_view, "alice")
                } else {
                    (&mut bob, &mut bob_view, "bob")
                };
                let w = author.write(create_task(1, None, data)).await;
                for m in &w.before {
                    view.apply(who, m);
                }
                if let Some(id) = w.response["instanceId"].as_i64() {
                    ids.push(id);
                }
                None
            }
            2 => Some(save("job/1", "Task", pick(&mut rng, &ids), json!({"private": rng.below(2) == 0}))),
            3 => Some(save("job/1", "Task", pick(&mut rng, &ids), json!({"assignee": assignee(&mut rng)}))),
            4 => Some(save("job/1", "Task", pick(&mut rng, &ids), json!({"notes": format!("n{step}")}))),
            _ => Some(delete("job/1", "Task", pick(&mut rng, &ids))),
        };
        if let Some(msg) = msg {
            // carol (an admin) may do any of these; a deleted id is refused, which changes nothing.
            let w = carol.write(msg).await;
            for m in &w.before {
                carol_view.apply("carol", m);
            }
        }
        alice_view.drain("alice", &mut alice).await;
        bob_view.drain("bob", &mut bob).await;
        carol_view.drain("carol", &mut carol).await;
        for (me, who, view) in [(1, "alice", &alice_view), (2, "bob", &bob_view)] {
            let want: BTreeMap<i64, &Map<String, Value>> =
                carol_view.tasks().into_iter().filter(|(_, t)| may_read(me, t)).collect();
            assert_eq!(view.tasks(), want, "seed {seed}, step {step}: {who}'s view");
        }
    }
    assert!(ids.len() > 3, "seed {seed}: the walk created tasks: {ids:?}");
    // A fresh subscribe gives what the deltas built.
    for (who, view) in [("alice", &alice_view), ("bob", &bob_view)] {
        let state = server.subscribed(who, 1).await.1;
        let fresh = View::from_state(&state);
        assert_eq!(fresh.tasks(), view.tasks(), "seed {seed}: {who}'s fresh state");
    }
}

#[tokio::test]
async fn a_restricted_subscriber_resumes_with_an_incremental_state_of_what_it_may_read() {
    let server = TestServer::start();
    let (mut carol, _) = joined(&server, "carol", false).await;
    let (mut alice, _) = joined(&server, "alice", false).await;
    let mut secret_ids = Vec::new();
    for name in ["to reveal", "stays hidden"] {
        let w = alice.write(create_task(1, None, json!({"name": name, "private": true, "assignee": 1}))).await;
        secret_ids.push(w.ok()["instanceId"].as_i64().expect("id"));
    }
    // bob's second tab keeps his read class alive while the first is away.
    let (_bob_tab, _) = joined(&server, "bob", false).await;
    let mut bob = server.msgpack().await;
    bob.hello("bob").await;
    let bob_state = bob.subscribe("job", 1).await;
    // The tag of bob's read rules: opaque, and not carol's (an admin reads all).
    let tag = bob_state["view"].clone();
    assert!(tag.as_str().is_some_and(|t| t.len() == 16), "{bob_state}");
    assert!(server.subscribed("carol", 1).await.1.get("view").is_none());
    let (seq, epoch) = (View::from_state(&bob_state).seq, bob_state["epoch"].clone());
    drop(bob);

    carol.write(save("job/1", "Task", secret_ids[0], json!({"assignee": 2}))).await.ok();
    carol.write(save("job/1", "Task", 2, json!({"private": true, "assignee": 1}))).await.ok(); // bob created it: still his
    carol.write(save("job/1", "Task", 1, json!({"private": true}))).await.ok(); // alice's: leaves bob's view
    carol.write(save("job/1", "Task", secret_ids[1], json!({"notes": "unseen"}))).await.ok();

    let mut back = server.json().await;
    back.hello("bob").await;
    // Without the tag (or with another) the server can't trust the resume: whole.
    for view in [Value::Null, json!("0123456789abcdef")] {
        let resume =
            json!({"type": "subscribe", "channel": "job", "anchorId": 1, "since": seq, "epoch": epoch, "view": view});
        back.send(resume).await;
        let whole = back.recv_type("state").await;
        assert_eq!((whole.get("incremental"), &whole["view"]), (None, &tag), "{whole}");
    }
    back.send(json!({"type": "subscribe", "channel": "job", "anchorId": 1, "since": seq, "epoch": epoch, "view": tag}))
        .await;
    let state = back.recv_type("state").await;
    assert_eq!(state["incremental"], true, "{state}");
    let names: Vec<&str> =
        state["instances"].as_array().expect("instances").iter().filter_map(|r| r["name"].as_str()).collect();
    assert_eq!(names, vec!["Fix bug", "to reveal"], "what changed that bob may read: {state}");
    let removed: Vec<i64> =
        state["removed"].as_array().expect("removed").iter().filter_map(|r| r["id"].as_i64()).collect();
    assert_eq!(removed, vec![1], "what left bob's view, and nothing he never saw: {state}");
    let text = state.to_string();
    assert!(!text.contains("stays hidden") && !text.contains(&format!("\"id\":{}", secret_ids[1])), "{text}");
}
