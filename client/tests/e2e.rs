//! The client against the real server binary (demo app): optimistic writes,
//! rollbacks, temp-id swaps, reconnects with exactly-once resends, the
//! persisted queue, and the CLI.

mod support;

use serde_json::{Value, json};
use statecast_client::{Client, ClientConfig, ClientError, Parent, ViewEvent, WriteOptions};
use statecast_core::error::ErrorReason;
use std::time::Duration;
use support::Server;

const JOB1: Parent<'static> = Parent { ty: "Job", id: 1, relation: "tasks" };

async fn client(server: &Server, token: &str) -> Client {
    Client::connect(ClientConfig::new(server.url.clone(), token)).await.expect("connect")
}

fn field(ctx: &statecast_client::Context, id: i64, name: &str) -> Option<Value> {
    ctx.row("Task", id).and_then(|r| r.fields.get(name).cloned())
}

fn refused_reason(r: Result<statecast_client::WriteOutcome, ClientError>) -> Option<ErrorReason> {
    match r {
        Err(ClientError::Refused(e)) => Some(e.reason),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..200 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for: {what}");
}

#[tokio::test]
async fn a_write_shows_before_the_answer_and_reaches_the_other_client() {
    let server = Server::start();
    let (alice, bob) = (client(&server, "alice").await, client(&server, "bob").await);
    let (a, b) = (alice.subscribe("job", 1).await.expect("a"), bob.subscribe("job", 1).await.expect("b"));
    let handle = a.save("Task", 1, json!({"status": "done"})).expect("save");
    let row = a.row("Task", 1).expect("row");
    assert_eq!((row.fields["status"].clone(), row.pending), (json!("done"), true), "visible before the server answers");
    let outcome = handle.await.expect("confirmed");
    assert!(outcome.seq > 0);
    assert!(!a.row("Task", 1).expect("row").pending);
    eventually("bob sees alice's change", || field(&b, 1, "status") == Some(json!("done"))).await;

    let created = a.create("Task", JOB1, json!({"name": "From alice"})).expect("create");
    let id = created.id().expect("id at once");
    assert!(a.row("Task", id).is_some_and(|r| r.pending));
    created.await.expect("created");
    eventually("bob sees the new task", || field(&b, id, "name") == Some(json!("From alice"))).await;
    #[derive(serde::Deserialize)]
    struct Task {
        id: i64,
        name: String,
        status: String,
    }
    let tasks: Vec<Task> = b.rows("Task").expect("typed rows");
    assert!(tasks.iter().any(|t| t.id == id && t.name == "From alice" && t.status == "todo"));
}

#[tokio::test]
async fn refused_save_create_and_delete_roll_back() {
    let server = Server::start();
    let (alice, carol, bob) =
        (client(&server, "alice").await, client(&server, "carol").await, client(&server, "bob").await);
    let a = alice.subscribe("job", 1).await.expect("a");
    let order_before: Vec<i64> = a.view().iter().map(|r| r.key).collect();

    // Alice is task 1's assignee but may change only status/notes.
    let h = a.save("Task", 1, json!({"name": "Renamed"})).expect("save");
    assert_eq!(field(&a, 1, "name"), Some(json!("Renamed")));
    assert_eq!(refused_reason(h.await), Some(ErrorReason::Denied));
    assert_eq!(field(&a, 1, "name"), Some(json!("Write docs")));

    // Carol is an admin (she reads every job) but not a member of the project.
    let d = carol.subscribe("job", 1).await.expect("d");
    let h = d.create("Task", JOB1, json!({"name": "Intruder"})).expect("create");
    let id = h.id().expect("id");
    assert!(d.row("Task", id).is_some());
    assert_eq!(refused_reason(h.await), Some(ErrorReason::Denied));
    assert!(d.row("Task", id).is_none(), "the refused create disappears");

    // Bob did not create task 1 and is no admin.
    let b = bob.subscribe("job", 1).await.expect("b");
    let h = b.delete("Task", 1).expect("delete");
    assert!(b.row("Task", 1).is_none());
    assert_eq!(refused_reason(h.await), Some(ErrorReason::Denied));
    let order_after: Vec<i64> = b.view().iter().map(|r| r.key).collect();
    assert_eq!(order_after, order_before, "the deleted row is back at its position");
}

#[tokio::test]
async fn a_temp_id_is_swapped_with_no_duplicate_at_any_moment() {
    let server = Server::start();
    let alice = client(&server, "alice").await;
    let a = alice.subscribe("job", 1).await.expect("a");
    let mut events = a.watch();
    let watcher = a.clone();
    let observer = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Ok(Ok(ev)) = tokio::time::timeout(Duration::from_secs(2), events.recv()).await {
            if let ViewEvent::Changed(_) = ev {
                let n = watcher.view().iter().filter(|r| r.fields.get("name") == Some(&json!("Temp row"))).count();
                seen.push(n);
            }
        }
        seen
    });
    let opts = WriteOptions { temp_ids: true, ..WriteOptions::default() };
    let op = statecast_core::protocol::v1::WriteOp {
        operation: statecast_core::protocol::v1::Operation::Create,
        instance_type: "Task".into(),
        instance_id: None,
        parent_type: Some("Job".into()),
        parent_id: Some(1),
        relation_name: Some("tasks".into()),
        data: Some(json!({"name": "Temp row"}).as_object().cloned().unwrap_or_default()),
        if_version: None,
    };
    let h = a.write(vec![op], opts).expect("create");
    let temp = h.id().expect("temp id");
    assert!(temp < 0);
    let outcome = h.await.expect("created");
    let real = outcome.created[0].id;
    assert_eq!(outcome.created[0].temp_id, Some(temp));
    let row = a.row("Task", real).expect("row by real id");
    assert_eq!((row.key, row.id), (temp, real), "the key stays the temp id");
    let seen = observer.await.expect("observer");
    assert!(!seen.is_empty());
    assert!(seen.iter().all(|n| *n == 1), "exactly one row at every observed moment: {seen:?}");
}

#[tokio::test]
async fn a_write_cut_off_by_a_crash_is_applied_once_after_reconnect() {
    let mut server = Server::start();
    let mut cfg = ClientConfig::new(server.url.clone(), "alice");
    cfg.backoff_min = Duration::from_millis(200);
    let alice = Client::connect(cfg).await.expect("connect");
    let a = alice.subscribe("job", 1).await.expect("a");
    let h = a.create("Task", JOB1, json!({"name": "Survivor"})).expect("create");
    let id = h.id().expect("id");
    server.kill9();
    server.restart_same_port();
    let outcome = tokio::time::timeout(Duration::from_secs(20), h).await.expect("settles").expect("applied");
    assert_eq!(outcome.created[0].id, id);
    let bob = client(&server, "bob").await;
    let b = bob.subscribe("job", 1).await.expect("b");
    let count = b.view().iter().filter(|r| r.fields.get("name") == Some(&json!("Survivor"))).count();
    assert_eq!(count, 1, "applied exactly once");
    eventually("alice's view settles", || a.row("Task", id).is_some_and(|r| !r.pending)).await;
}

#[tokio::test]
async fn another_users_change_during_a_pending_save_shows_after_the_refusal() {
    let mut server = Server::start();
    let mut cfg = ClientConfig::new(server.url.clone(), "alice");
    cfg.backoff_min = Duration::from_secs(3);
    let alice = Client::connect(cfg).await.expect("connect");
    let a = alice.subscribe("job", 1).await.expect("a");
    server.kill9();
    eventually("alice notices", || true).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Written while disconnected: queued, shown at once.
    let h = a.save("Task", 1, json!({"name": "Alice's name"})).expect("save");
    assert_eq!(field(&a, 1, "name"), Some(json!("Alice's name")));
    server.restart_same_port();
    // Carol (admin) renames the task before alice is back.
    let carol = client(&server, "carol").await;
    let c = carol.subscribe("job", 1).await.expect("c");
    c.save("Task", 1, json!({"name": "Carol's name"})).expect("save").await.expect("carol's save");
    assert_eq!(
        refused_reason(tokio::time::timeout(Duration::from_secs(20), h).await.expect("settles")),
        Some(ErrorReason::Denied)
    );
    eventually("alice shows carol's value", || field(&a, 1, "name") == Some(json!("Carol's name"))).await;
    assert!(!a.row("Task", 1).expect("row").pending);
}

#[tokio::test]
async fn a_write_with_no_answer_times_out_and_stays_queued() {
    let mut server = Server::start();
    let mut cfg = ClientConfig::new(server.url.clone(), "alice");
    cfg.write_timeout = Duration::from_millis(300);
    let alice = Client::connect(cfg).await.expect("connect");
    let a = alice.subscribe("job", 1).await.expect("a");
    server.kill9();
    let h = a.save("Task", 1, json!({"status": "doing"})).expect("save");
    match h.await {
        Err(ClientError::Timeout { .. }) => {}
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert_eq!(alice.pending_count(), 1, "the write is still queued");
}

#[tokio::test]
async fn the_persisted_queue_survives_a_client_restart() {
    let mut server = Server::start();
    let queue = tempfile::tempdir().expect("queue dir");
    let path = queue.path().join("queue");
    let mut cfg = ClientConfig::new(server.url.clone(), "alice");
    cfg.queue_path = Some(path.clone());
    cfg.backoff_min = Duration::from_secs(30);
    let id = {
        let alice = Client::connect(cfg.clone()).await.expect("connect");
        let a = alice.subscribe("job", 1).await.expect("a");
        server.kill9();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let h = a.create("Task", JOB1, json!({"name": "Persisted"})).expect("create");
        let id = h.id().expect("id");
        alice.close().await;
        id
    };
    server.restart_same_port();
    cfg.backoff_min = Duration::from_millis(100);
    let alice = Client::connect(cfg).await.expect("reconnect");
    assert_eq!(alice.pending_count(), 1, "the write came back from disk");
    let a = alice.subscribe("job", 1).await.expect("a");
    eventually("the restored write is applied", || {
        a.row("Task", id).is_some_and(|r| !r.pending) && alice.pending_count() == 0
    })
    .await;
    let bob = client(&server, "bob").await;
    let b = bob.subscribe("job", 1).await.expect("b");
    assert!(b.row("Task", id).is_some());
}

#[tokio::test]
async fn a_queue_path_that_cannot_hold_the_queue_is_refused_before_connecting() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a database").expect("write file");
    // Nothing listens on port 1: the queue is refused before any connection.
    let mut cfg = ClientConfig::new("ws://127.0.0.1:1/ws", "alice");
    cfg.queue_path = Some(file.clone());
    match Client::connect(cfg).await {
        Err(ClientError::Queue(msg)) => assert!(msg.contains("a-file"), "names the path: {msg}"),
        Err(other) => panic!("expected a queue error, got {other:?}"),
        Ok(_) => panic!("a file is not a queue directory"),
    }
    assert_eq!(std::fs::read(&file).expect("read file"), b"not a database", "the file is untouched");

    // One queue serves one client at a time.
    let server = Server::start();
    let mut cfg = ClientConfig::new(server.url.clone(), "alice");
    cfg.queue_path = Some(dir.path().join("queue"));
    let first = Client::connect(cfg.clone()).await.expect("first client");
    match Client::connect(cfg).await {
        Err(ClientError::Queue(msg)) => assert!(msg.contains("queue"), "{msg}"),
        Err(other) => panic!("expected a queue error, got {other:?}"),
        Ok(_) => panic!("two clients on one queue"),
    }
    first.close().await;
}

#[tokio::test]
async fn the_cli_writes_and_watches() {
    let server = Server::start();
    let cli = support::cli_binary();
    let ok = tokio::process::Command::new(&cli)
        .args(["write", &server.url, "--token", "alice", "--context", "job/1"])
        .arg(r#"{"operation":"save","instanceType":"Task","instanceId":1,"data":{"status":"done"}}"#)
        .output()
        .await
        .expect("run cli");
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let answer: Value = serde_json::from_slice(&ok.stdout).expect("json answer");
    assert_eq!(answer["success"], true);

    let denied = tokio::process::Command::new(&cli)
        .args(["write", &server.url, "--token", "carol", "--context", "job/1"])
        .arg(r#"{"operation":"create","instanceType":"Task","parentType":"Job","parentId":1,"relationName":"tasks","data":{"name":"x"}}"#)
        .output()
        .await
        .expect("run cli");
    assert_eq!(denied.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("403 DENIED"),
        "{}",
        String::from_utf8_lossy(&denied.stderr)
    );

    let bad_token = tokio::process::Command::new(&cli)
        .args(["write", &server.url, "--token", "mallory", "--context", "job/1", "{}"])
        .output()
        .await
        .expect("run cli");
    assert_eq!(bad_token.status.code(), Some(2), "a write with no operation is refused before connecting");
    let bad_token = tokio::process::Command::new(&cli)
        .args([
            "write",
            &server.url,
            "--token",
            "mallory",
            "--context",
            "job/1",
            r#"{"operation":"delete","instanceType":"Task","instanceId":1}"#,
        ])
        .output()
        .await
        .expect("run cli");
    assert_eq!(bad_token.status.code(), Some(3));
    let bad_json = tokio::process::Command::new(&cli)
        .args(["write", &server.url, "--token", "alice", "{nope"])
        .output()
        .await
        .expect("run");
    assert!(String::from_utf8_lossy(&bad_json.stderr).contains("not valid JSON"));
    let refused = tokio::process::Command::new(&cli)
        .args([
            "write",
            "ws://127.0.0.1:1/ws",
            "--token",
            "alice",
            "--context",
            "job/1",
            r#"{"operation":"delete","instanceType":"Task","instanceId":1}"#,
        ])
        .output()
        .await
        .expect("run");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("can't connect"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    let mut watch = tokio::process::Command::new(&cli)
        .args(["watch", &server.url, "job", "1", "--token", "bob"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("watch");
    let stdout = watch.stdout.take().expect("stdout");
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let first: Value = serde_json::from_str(&lines.next_line().await.expect("line").expect("some")).expect("json");
    assert_eq!(first["context"], "job/1");
    assert!(
        first["rows"]
            .as_array()
            .is_some_and(|r| r.iter().any(|row| row["_type"] == "Task" && row["_pending"] == false))
    );
    let alice = client(&server, "alice").await;
    alice
        .subscribe("job", 1)
        .await
        .expect("a")
        .save("Task", 1, json!({"notes": "seen by watch"}))
        .expect("save")
        .await
        .expect("ok");
    let line = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let l = lines.next_line().await.expect("line").expect("some");
            if l.contains("seen by watch") {
                return l;
            }
        }
    })
    .await
    .expect("watch printed the change");
    assert!(line.contains("\"rows\""));
}

#[tokio::test]
async fn a_quic_client_and_a_websocket_client_share_a_context() {
    let server = Server::start();
    let mut cfg = ClientConfig::new(server.quic_url.clone(), "alice");
    cfg.quic_trust = Some(statecast_client::QuicTrust::Fingerprint(server.quic_fingerprint.clone()));
    let alice = Client::connect(cfg).await.expect("quic connect");
    let bob = client(&server, "bob").await;
    let (a, b) = (alice.subscribe("job", 1).await.expect("a"), bob.subscribe("job", 1).await.expect("b"));
    a.save("Task", 1, json!({"notes": "over QUIC"})).expect("save").await.expect("ok");
    eventually("bob sees the QUIC write", || field(&b, 1, "notes") == Some(json!("over QUIC"))).await;
    b.save("Task", 2, json!({"notes": "over WebSocket"})).expect("save").await.expect("ok");
    eventually("alice sees the WebSocket write", || field(&a, 2, "notes") == Some(json!("over WebSocket"))).await;

    let mut wrong = ClientConfig::new(server.quic_url.clone(), "alice");
    wrong.quic_trust = Some(statecast_client::QuicTrust::Fingerprint("00".repeat(32)));
    match Client::connect(wrong).await {
        Err(ClientError::Connect { reason, .. }) => assert!(reason.contains("fingerprint"), "{reason}"),
        other => panic!("an untrusted certificate must be refused, got {:?}", other.map(|_| ())),
    }
    let no_trust = ClientConfig::new(server.quic_url.clone(), "alice");
    assert!(matches!(Client::connect(no_trust).await, Err(ClientError::Connect { .. })));
}

/// `GET path` on the server's HTTP port (metrics), as text.
async fn http_get(server: &Server, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", server.port)).await.expect("connect");
    let req = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.expect("request");
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.expect("response");
    out
}

/// The `statecast_stream_subscriptions` gauge on /metrics.
async fn stream_subscriptions(server: &Server) -> u64 {
    let text = http_get(server, "/metrics").await;
    text.lines()
        .find_map(|l| l.strip_prefix("statecast_stream_subscriptions "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no stream gauge in {text}"))
}

#[tokio::test]
async fn a_stream_view_holds_the_matching_rows_and_follows_other_users_changes() {
    let server = Server::start();
    let bob = client(&server, "bob").await;
    let request = statecast_client::StreamRequest::new("tasks").filter("job", 1).fields(["name", "status"]).snapshot();
    let mut view = bob.stream(request).await.expect("subscribed");
    let ids: Vec<i64> = view.rows().iter().map(|r| r.id).collect();
    assert_eq!(ids, vec![1, 2], "the job-1 tasks now");
    let alice = client(&server, "alice").await;
    alice
        .subscribe("job", 1)
        .await
        .expect("a")
        .save("Task", 1, json!({"status": "doing"}))
        .expect("save")
        .await
        .expect("ok");
    let event = tokio::time::timeout(Duration::from_secs(5), view.next()).await.expect("in time").expect("event");
    let statecast_client::StreamViewEvent::Changed(changes) = event else { panic!("{event:?}") };
    assert_eq!(
        changes.iter().map(|c| (c.key, c.kind)).collect::<Vec<_>>(),
        vec![(1, statecast_client::ChangeKind::Updated)]
    );
    #[derive(serde::Deserialize, Debug)]
    struct Task {
        id: i64,
        status: String,
    }
    let tasks: Vec<Task> = view.rows_as().expect("typed");
    assert_eq!(tasks.iter().map(|t| (t.id, t.status.as_str())).collect::<Vec<_>>(), vec![(1, "doing"), (2, "todo")]);
    let bad = bob.stream(statecast_client::StreamRequest::new("tasks").filter("nope__icontains", "x")).await;
    assert!(matches!(bad, Err(ClientError::Refused(ref e)) if e.code == 400), "{:?}", bad.err());
}

#[tokio::test]
async fn a_pending_save_moves_a_row_out_of_a_stream_view_at_once_and_a_refusal_brings_it_back() {
    let server = Server::start();
    let alice = client(&server, "alice").await;
    let ctx = alice.subscribe("job", 1).await.expect("context");
    let request = statecast_client::StreamRequest::new("tasks").filter("job", 1).filter("status", "todo").snapshot();
    let view = alice.stream(request).await.expect("view");
    assert_eq!(view.rows().iter().map(|r| r.id).collect::<Vec<_>>(), vec![1, 2]);
    // Alice is task 1's assignee: the save is allowed; it leaves the view before the answer.
    let handle = ctx.save("Task", 1, json!({"status": "done"})).expect("save");
    assert_eq!(view.rows().iter().map(|r| r.id).collect::<Vec<_>>(), vec![2], "out at once");
    handle.await.expect("confirmed");
    assert_eq!(view.rows().iter().map(|r| r.id).collect::<Vec<_>>(), vec![2], "still out once confirmed");
    // Task 2 is bob's: the demo policy refuses alice's save, and the row comes back.
    let refused = ctx.save("Task", 2, json!({"status": "doing"})).expect("save");
    assert!(view.rows().is_empty(), "out at once");
    assert_eq!(refused_reason(refused.await), Some(ErrorReason::Denied));
    assert_eq!(view.rows().iter().map(|r| r.id).collect::<Vec<_>>(), vec![2], "rolled back into the view");
    // A create under the context shows in the view at once, and stays when confirmed.
    let created = ctx.create("Task", JOB1, json!({"name": "Fresh"})).expect("create");
    let id = created.id().expect("id");
    assert!(view.row(id).is_some_and(|r| r.pending), "a pending create shows in a matching view");
    created.await.expect("created");
    eventually("the create is canonical in the view", || view.row(id).is_some_and(|r| !r.pending)).await;
}

#[tokio::test]
async fn the_cli_stream_snapshot_prints_the_rows_then_each_change_once() {
    let server = Server::start();
    let alice = client(&server, "alice").await;
    let ctx = alice.subscribe("job", 1).await.expect("context");
    for round in 0..4 {
        let mut cli = tokio::process::Command::new(support::cli_binary())
            .args(["stream", &server.url, "tasks", "--filter", "job=1", "--snapshot", "--token", "alice"])
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("cli stream");
        let stdout = cli.stdout.take().expect("stdout");
        let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
        let mut next = async || -> Option<Value> {
            let line = tokio::time::timeout(Duration::from_secs(5), lines.next_line()).await.ok()?.ok()??;
            Some(serde_json::from_str(&line).expect("json line"))
        };
        let mut snapshot = Vec::new();
        for _ in 0..2 {
            let line = next().await.expect("a snapshot line");
            snapshot.push(line["snapshot"]["id"].as_i64().expect("a snapshot row"));
        }
        assert_eq!(snapshot, vec![1, 2], "round {round}: the view's rows");
        assert_eq!(stream_subscriptions(&server).await, 1, "round {round}: one subscription for the one view");
        let notes = format!("round {round}");
        ctx.save("Task", 1, json!({"notes": notes})).expect("save").await.expect("ok");
        let line = next().await.expect("the change");
        assert_eq!((line["action"].as_str(), line["id"].as_i64()), (Some("update"), Some(1)), "{line}");
        assert_eq!(line["data"]["notes"], json!(notes));
        // Each change once: nothing more arrives.
        let more = tokio::time::timeout(Duration::from_millis(400), lines.next_line()).await;
        assert!(more.is_err(), "round {round}: printed twice: {more:?}");
        assert_eq!(stream_subscriptions(&server).await, 1);
        cli.kill().await.expect("kill");
        eventually_async(|| async { stream_subscriptions(&server).await == 0 }).await;
    }
}

async fn eventually_async<F: std::future::Future<Output = bool>>(mut check: impl FnMut() -> F) {
    for _ in 0..200 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out");
}

#[tokio::test]
async fn reopening_a_context_any_number_of_times_keeps_the_newest_subscription() {
    let server = Server::start();
    let alice = client(&server, "alice").await;
    for _ in 0..10 {
        let ctx = alice.subscribe("job", 1).await.expect("open");
        ctx.unsubscribe().expect("close");
    }
    let ctx = alice.subscribe("job", 1).await.expect("open again");
    ctx.unsubscribe().expect("close");
    let ctx = alice.subscribe("job", 1).await.expect("and again");
    // Let every late `unsubscribed` of the closed subscriptions arrive.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(ctx.row("Task", 1).is_some(), "the newest subscription still holds its rows");
    ctx.save("Task", 1, json!({"notes": "after reopening"})).expect("save").await.expect("confirmed");
    assert_eq!(field(&ctx, 1, "notes"), Some(json!("after reopening")));
}

#[tokio::test]
async fn a_stream_view_is_resumed_after_a_reconnect() {
    let mut server = Server::start();
    let bob = client(&server, "bob").await;
    let mut view = bob
        .stream(statecast_client::StreamRequest::new("tasks").filter("job", 1).snapshot())
        .await
        .expect("subscribed");
    server.kill9();
    server.restart_same_port();
    // Written while bob is still reconnecting, or just after: either way it reaches him once.
    let alice = client(&server, "alice").await;
    alice
        .subscribe("job", 1)
        .await
        .expect("a")
        .save("Task", 1, json!({"notes": "after restart"}))
        .expect("save")
        .await
        .expect("ok");
    let mut updates = 0;
    while view.row(1).and_then(|r| r.fields.get("notes").cloned()) != Some(json!("after restart")) {
        let event = tokio::time::timeout(Duration::from_secs(15), view.next()).await.expect("in time").expect("event");
        if let statecast_client::StreamViewEvent::Changed(c) = event {
            updates += c.iter().filter(|c| c.key == 1).count();
        }
    }
    assert_eq!(updates, 1, "one change for task 1");
    assert!(tokio::time::timeout(Duration::from_millis(300), view.next()).await.is_err(), "no duplicate change");
    assert_eq!(view.rows().iter().map(|r| r.id).collect::<Vec<_>>(), vec![1, 2], "nothing missed or doubled");
}

/// A TLS-terminating proxy in front of the server (the deployment README
/// describes): `wss://localhost:PORT/ws` → `ws://127.0.0.1:SERVER/ws`.
async fn tls_proxy(upstream: String, dir: &std::path::Path) -> (u16, std::path::PathBuf) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let cert = statecast_transport_quic::ensure_self_signed(dir).expect("self-signed certificate");
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(&cert.cert_path).expect("cert").collect::<Result<_, _>>().expect("pem");
    let key = PrivateKeyDer::from_pem_file(&cert.key_path).expect("key");
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("tls versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, upstream) = (acceptor.clone(), upstream.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                let Ok(mut plain) = tokio::net::TcpStream::connect(&upstream).await else { return };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    (port, cert.cert_path)
}

#[tokio::test]
async fn wss_through_a_tls_proxy_with_a_ca_file() {
    let server = Server::start();
    let certs = tempfile::tempdir().expect("dir");
    let upstream = format!("127.0.0.1:{}", server.port);
    let (port, ca) = tls_proxy(upstream, certs.path()).await;
    let url = format!("wss://localhost:{port}/ws");
    let mut cfg = ClientConfig::new(url.clone(), "alice");
    cfg.tls_ca_file = Some(ca);
    let alice = Client::connect(cfg).await.expect("wss connect");
    let a = alice.subscribe("job", 1).await.expect("a");
    a.save("Task", 1, json!({"notes": "over TLS"})).expect("save").await.expect("ok");
    // Without trusting that CA, the handshake is refused with the reason.
    match Client::connect(ClientConfig::new(url, "alice")).await {
        Err(ClientError::Connect { reason, .. }) => assert!(reason.to_lowercase().contains("certificate"), "{reason}"),
        other => panic!("an untrusted certificate must be refused, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test]
async fn the_repl_sends_each_line_and_prints_every_frame() {
    use tokio::io::AsyncWriteExt;
    let server = Server::start();
    let mut repl = tokio::process::Command::new(support::cli_binary())
        .args(["repl", &server.url, "--token", "alice"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("repl");
    let mut stdin = repl.stdin.take().expect("stdin");
    let lines = [
        r#"{"type":"subscribe","channel":"job","anchorId":1}"#,
        "",
        "# a comment line is not sent",
        "not json",
        r#"{"type":"write","operation":"save","instanceType":"Task","instanceId":1,"data":{"status":"doing"},"context":"job/1"}"#,
        r#"{"type":"write","operation":"save","instanceType":"Task","instanceId":1,"data":{"name":"Mine"},"context":"job/1"}"#,
    ];
    stdin.write_all(lines.join("\n").as_bytes()).await.expect("write stdin");
    drop(stdin); // end of input: the repl waits for the answers, then exits
    let out = tokio::time::timeout(Duration::from_secs(20), repl.wait_with_output())
        .await
        .expect("the repl exits after the answers")
        .expect("output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("not sent"), "a line that is not JSON is refused: {stderr}");
    let frames: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    // The save sent right after the subscribe may be carried by the state
    // itself (then no delta comes) or by a delta tagged with its writeId.
    let types: Vec<&str> = frames.iter().filter_map(|f| f["type"].as_str()).filter(|t| *t != "delta").collect();
    assert_eq!(types, ["welcome", "state", "writeResponse", "writeResponse"], "{frames:?}");
    let welcome = &frames[0];
    let id = welcome["connectionId"].as_str().expect("connectionId");
    assert!(id.starts_with('c') && id[1..].parse::<u64>().is_ok(), "connection ids are c1, c2, …: {id}");
    assert_eq!(welcome["user"]["name"], "alice");
    assert_eq!(frames[1]["context"], "job/1");
    let task1_doing = frames.iter().any(|f| {
        let rows = if f["type"] == "state" { &f["instances"] } else { &f["changes"] };
        rows.as_array().is_some_and(|r| r.iter().any(|row| row["id"] == 1 && row["status"] == "doing"))
    });
    assert!(task1_doing, "the save shows in the state or a delta: {frames:?}");
    let answers: Vec<&Value> = frames.iter().filter(|f| f["type"] == "writeResponse").collect();
    assert_eq!(
        (answers[0]["writeId"].as_i64(), answers[0]["success"].as_bool()),
        (Some(1), Some(true)),
        "writeIds added"
    );
    assert_eq!((answers[1]["writeId"].as_i64(), answers[1]["success"].as_bool()), (Some(2), Some(false)));
    assert_eq!(answers[1]["error"]["reason"], "DENIED");

    let refused = tokio::process::Command::new(support::cli_binary())
        .args(["repl", &server.url, "--token", "mallory"])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("run");
    assert_eq!(refused.status.code(), Some(3), "{}", String::from_utf8_lossy(&refused.stderr));
    assert!(String::from_utf8_lossy(&refused.stdout).contains("UNAUTHENTICATED"));
}

#[tokio::test]
async fn presence_is_shown_to_the_others_and_shown_again_after_a_reconnect() {
    let mut server = Server::start();
    let (alice, bob) = (client(&server, "alice").await, client(&server, "bob").await);
    let (a, b) = (alice.subscribe("job", 1).await.expect("a"), bob.subscribe("job", 1).await.expect("b"));
    let mut b_events = b.watch();
    a.set_presence(json!({"editing": 2})).expect("set");
    eventually("bob sees alice's presence", || b.presence().len() == 1).await;
    let entry = &b.presence()[0];
    assert_eq!((entry.user.name.as_str(), entry.data.clone()), ("alice", json!({"editing": 2})));
    assert!(a.presence().is_empty(), "alice is not shown her own presence");
    let mut saw_event = false;
    while let Ok(e) = b_events.try_recv() {
        saw_event |= e == ViewEvent::Presence;
    }
    assert!(saw_event, "bob's watchers heard of it");

    // Refused locally, and nothing changes: over 1 KiB.
    let big = a.set_presence(json!({"blob": "x".repeat(2000)}));
    assert!(matches!(big, Err(ClientError::Refused(ref e)) if e.reason == ErrorReason::InvalidData), "{big:?}");

    // The server restarts: alice's presence is shown again once she is back.
    server.kill9();
    eventually("bob's list empties while offline (it would be stale)", || b.presence().is_empty()).await;
    server.restart_same_port();
    eventually("bob sees alice's presence again after the restart", || {
        b.presence().iter().any(|e| e.user.name == "alice" && e.data == json!({"editing": 2}))
    })
    .await;

    // Cleared: gone for bob.
    a.set_presence(Value::Null).expect("clear");
    eventually("bob sees it cleared", || b.presence().is_empty()).await;
}

/// The Task rows of a view as `id → fields` (what a reader shows).
fn task_rows(ctx: &statecast_client::Context) -> std::collections::BTreeMap<i64, Value> {
    ctx.view().into_iter().filter(|r| &*r.ty == "Task").map(|r| (r.id, Value::Object(r.fields))).collect()
}

#[tokio::test]
async fn over_quic_a_readers_view_is_what_its_rules_let_it_read_over_random_flips() {
    let seed: u64 = std::env::var("STATECAST_READ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(7, |d| d.as_nanos() as u64)
    });
    eprintln!("seed {seed} (replay with STATECAST_READ_SEED={seed})");
    let mut rng = statecast_core::testkit::rng::SplitMix(seed);
    let server = Server::start();
    let mut cfg = ClientConfig::new(server.quic_url.clone(), "bob");
    cfg.quic_trust = Some(statecast_client::QuicTrust::Fingerprint(server.quic_fingerprint.clone()));
    let bob = Client::connect(cfg).await.expect("quic connect");
    let (alice, carol) = (client(&server, "alice").await, client(&server, "carol").await);
    let b = bob.subscribe("job", 1).await.expect("bob");
    let a = alice.subscribe("job", 1).await.expect("alice");
    let c = carol.subscribe("job", 1).await.expect("carol");
    let mut ids = vec![1, 2];
    for step in 0..30 {
        let mut below = |n: u64| rng.below(n);
        let assignee = match below(3) {
            0 => Value::Null,
            n => json!(n),
        };
        let pick = ids[below(ids.len() as u64) as usize];
        let result = match below(4) {
            0 => {
                let data = json!({"name": format!("q{step}"), "private": below(2) == 0, "assignee": assignee});
                let w = a.create("Task", JOB1, data).expect("create");
                let id = w.id().expect("id");
                let r = w.await;
                if r.is_ok() {
                    ids.push(id);
                }
                r
            }
            1 => c.save("Task", pick, json!({"private": below(2) == 0})).expect("save").await,
            2 => c.save("Task", pick, json!({"assignee": assignee})).expect("save").await,
            _ => c.save("Task", pick, json!({"notes": format!("n{step}")})).expect("save").await,
        };
        result.unwrap_or_else(|e| panic!("seed {seed}, step {step}: the write failed: {e:?}"));
        // carol (an admin) reads everything: bob's view must become her view,
        // less what bob may not read.
        let want = || -> std::collections::BTreeMap<i64, Value> {
            task_rows(&c)
                .into_iter()
                .filter(|(_, t)| {
                    t["private"] != json!(true) || t["assignee"] == json!(2) || t["created_by"] == json!(2)
                })
                .collect()
        };
        eventually(&format!("seed {seed}, step {step}: carol has every task"), || {
            ids.iter().all(|id| task_rows(&c).contains_key(id))
        })
        .await;
        eventually(&format!("seed {seed}, step {step}: bob's view over QUIC"), || task_rows(&b) == want()).await;
    }
    assert!(ids.len() > 2, "seed {seed}: the walk created tasks");
}
