//! End to end: the demo's `project` and `job` channels are read by the
//! project's members and admins, and removing a membership ends the removed
//! user's subscriptions at once (`unsubscribed` `REVOKED`), in every tab,
//! while the others go on.

mod common;

use common::*;
use serde_json::{Value, json};

/// The `unsubscribed` messages until `n` came (deltas of the membership's
/// delete may come between); panics if the connection goes quiet first.
async fn unsubscribes(c: &mut Client, n: usize) -> Vec<Value> {
    let mut ended = Vec::new();
    for _ in 0..16 {
        let m = c.recv().await;
        if m["type"] == "unsubscribed" {
            ended.push(m);
            if ended.len() == n {
                return ended;
            }
        } else {
            assert_eq!(m["type"], "delta", "only deltas may come between: {m}");
        }
    }
    panic!("{n} unsubscribed did not come within 16 messages: {ended:?}")
}

async fn subscribe_project(c: &mut Client) -> Value {
    c.send(json!({"type": "subscribe", "channel": "project", "anchorId": 1})).await;
    c.recv().await
}

#[tokio::test]
async fn removing_a_membership_revokes_the_project_live() {
    let server = TestServer::start();
    let mut dave = server.json().await;
    dave.hello("dave").await;
    let refused = subscribe_project(&mut dave).await;
    assert_eq!(error_of(&refused), (403, "DENIED".to_owned()), "dave is in no project: {refused}");

    let mut bob_tabs = Vec::new();
    for _ in 0..2 {
        let mut bob = server.msgpack().await;
        bob.hello("bob").await;
        let state = subscribe_project(&mut bob).await;
        assert_eq!(state["type"], "state", "{state}");
        let members: Vec<i64> = state["instances"]
            .as_array()
            .expect("instances")
            .iter()
            .filter(|r| r["_type"] == "ProjectMember")
            .filter_map(|r| r["user"].as_i64())
            .collect();
        assert_eq!(members, vec![1, 2], "alice and bob are the members: {state}");
        bob.subscribe("job", 1).await;
        bob_tabs.push(bob);
    }
    let mut alice = server.json().await;
    alice.hello("alice").await;
    assert_eq!(subscribe_project(&mut alice).await["type"], "state");

    // bob may not remove anyone; carol (an admin) removes bob.
    let remove = |write_id: i64| {
        json!({"type": "write", "writeId": write_id, "context": "project/1", "operation": "delete",
               "instanceType": "ProjectMember", "instanceId": 2})
    };
    assert_eq!(bob_tabs[0].write(remove(1)).await.refused(), (403, "DENIED".to_owned()));
    let mut carol = server.json().await;
    carol.hello("carol").await;
    assert_eq!(subscribe_project(&mut carol).await["type"], "state");
    carol.write(remove(1)).await.ok();

    // Both of bob's tabs lose the project and its job at once.
    for bob in &mut bob_tabs {
        let mut ended: Vec<(String, String)> = unsubscribes(bob, 2)
            .await
            .iter()
            .map(|m| (m["context"].as_str().unwrap_or("").to_owned(), m["reason"].as_str().unwrap_or("").to_owned()))
            .collect();
        ended.sort();
        let revoked = |c: &str| (c.to_owned(), "REVOKED".to_owned());
        assert_eq!(ended, vec![revoked("job/1"), revoked("project/1")]);
        let again = subscribe_project(bob).await;
        assert_eq!(error_of(&again), (403, "DENIED".to_owned()), "{again}");
        bob.send(json!({"type": "subscribe", "channel": "job", "anchorId": 1})).await;
        assert_eq!(error_of(&bob.recv().await), (403, "DENIED".to_owned()));
    }
    // alice saw the membership go and still holds the project.
    let delta = alice.recv().await;
    assert_eq!((delta["type"].as_str(), delta["context"].as_str()), (Some("delta"), Some("project/1")), "{delta}");
    alice.ping().await;
}

#[tokio::test]
async fn removing_a_membership_ends_the_team_task_feed_and_keeps_my_tasks() {
    let server = TestServer::start();
    let mut bob = server.json().await;
    bob.hello("bob").await;
    bob.send(json!({"type": "subscribe", "stream": "tasks", "snapshot": true, "rid": 1})).await;
    let team = bob.recv_type("subscribed").await;
    let ids: Vec<i64> =
        team["snapshot"].as_array().expect("snapshot").iter().filter_map(|r| r["id"].as_i64()).collect();
    assert_eq!(ids, vec![1, 2, 3], "project 1's tasks: {team}");
    bob.send(json!({"type": "subscribe", "stream": "my-tasks", "rid": 2})).await;
    let mine = bob.recv_type("subscribed").await;

    let mut carol = server.json().await;
    carol.hello("carol").await;
    assert_eq!(subscribe_project(&mut carol).await["type"], "state");
    let remove = json!({"type": "write", "writeId": 1, "context": "project/1", "operation": "delete",
                        "instanceType": "ProjectMember", "instanceId": 2});
    carol.write(remove).await.ok();
    let ended = bob.recv_type("unsubscribed").await;
    assert_eq!(
        (ended["subscription"].clone(), ended["reason"].clone()),
        (team["subscription"].clone(), json!("REVOKED"))
    );
    // my-tasks (anyone signed in, scoped to the assignee) goes on.
    bob.send(json!({"type": "unsubscribe", "subscription": mine["subscription"], "rid": 3})).await;
    let answer = bob.recv_type("unsubscribed").await;
    assert_eq!(answer["reason"], "CLIENT_REQUEST", "still held until bob let it go: {answer}");
    // And subscribing to the team feed again is refused.
    bob.send(json!({"type": "subscribe", "stream": "tasks", "rid": 4})).await;
    let refused = bob.recv().await;
    assert_eq!(error_of(&refused), (403, "DENIED".to_owned()), "{refused}");
}
