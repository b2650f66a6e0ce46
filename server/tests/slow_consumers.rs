//! End to end: a connection that does not read is bounded in bytes, closed
//! with 4008 and let go of at once; many subscribes that are never read
//! can't make the server hold more than that.

mod common;

use common::*;
use serde_json::json;
use std::time::{Duration, Instant};

/// A metric's value from `/metrics`.
async fn metric(server: &TestServer, name: &str) -> u64 {
    let body = server.http_get("/metrics").await;
    body.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {name} in /metrics: {body}"))
}

/// Reads whatever the server sent until the connection ends; returns how many
/// messages arrived and how the connection ended (`None`: it did not within `within`).
async fn drain(c: &mut Client, within: Duration) -> (usize, Option<Option<u16>>) {
    let deadline = tokio::time::Instant::now() + within;
    let mut n = 0;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match c.next_event(left).await {
            Some(Event::Msg(_)) => n += 1,
            Some(Event::Closed(code)) => return (n, Some(code)),
            None => return (n, None),
        }
    }
}

#[tokio::test]
async fn a_subscriber_that_does_not_read_is_closed_and_let_go() {
    // The smallest byte bound a 1 MiB frame limit allows.
    let server = TestServer::start_args(&["--outbox-bytes", "1048576"]);
    let (mut slow, _) = server.subscribed("bob", 1).await;
    let (mut alice, _) = server.subscribed("alice", 1).await;
    let notes = "x".repeat(400 * 1024);
    let mut closed_at = None;
    for n in 0..200 {
        alice.write(save("job/1", "Task", 1, json!({"notes": format!("{n}{notes}")}))).await.ok();
        if metric(&server, "statecast_slow_consumers_total").await >= 1 {
            closed_at = Some(Instant::now());
            break;
        }
    }
    let closed_at = closed_at.expect("the subscriber that never reads was closed as a slow consumer");
    // The server let go of the socket: reading now finds what the kernel
    // buffered, then the end, well within a second of the close.
    let (read, end) = drain(&mut slow, Duration::from_secs(5)).await;
    let ended = closed_at.elapsed();
    assert!(end.is_some(), "the socket was still open 5 s after the 4008 close ({read} messages read)");
    assert!(ended < Duration::from_secs(2), "the socket closed {ended:?} after the 4008 decision");
    assert!(end != Some(Some(1000)), "a slow consumer is not closed as if all was well: {end:?}");
    // Only the slow one was closed: the writer goes on.
    alice.write(save("job/1", "Task", 1, json!({"notes": "after"}))).await.ok();
    assert_eq!(metric(&server, "statecast_connections").await, 1, "the slow consumer is gone from the hub");
}

#[tokio::test]
async fn subscribes_that_are_never_read_cannot_pile_up() {
    let server = TestServer::start_args(&["--outbox-bytes", "1048576", "--frame-limit", "1048576"]);
    // A large context: 10 tasks with 300 KB notes each (about 3 MB of state).
    let (mut alice, _) = server.subscribed("alice", 1).await;
    for i in 0..10 {
        let notes = format!("{i}{}", "y".repeat(300 * 1024));
        alice.write(create_task(1, Some(-1), json!({"name": format!("big {i}"), "notes": notes}))).await.ok();
    }
    drop(alice);
    let mut greedy = server.json().await;
    greedy.hello("carol").await;
    for rid in 0..45 {
        if greedy
            .send_raw(tokio_tungstenite::tungstenite::Message::text(
                json!({"type": "subscribe", "channel": "job", "anchorId": 1, "rid": rid}).to_string(),
            ))
            .await
            .is_err()
        {
            break;
        }
    }
    // It is closed as a slow consumer long before 45 states are queued.
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&server, "statecast_slow_consumers_total").await == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(metric(&server, "statecast_slow_consumers_total").await, 1, "a client that never reads is closed");
    let (read, end) = drain(&mut greedy, Duration::from_secs(5)).await;
    assert!(end.is_some(), "its socket is let go");
    assert!(read < 45, "it did not get 45 states queued for it: {read}");
    // Others are served meanwhile (the state comes in parts under the frame limit).
    let (_bob, state) = server.subscribed("bob", 1).await;
    assert_eq!((state["type"].as_str(), state["part"].as_i64()), (Some("state"), Some(0)), "{}", state["type"]);
}
