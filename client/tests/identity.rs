//! Subscriptions matched by identity: a context and a stream view opened and
//! closed any number of times, in random interleavings with the server's
//! in-order replies. At the end the newest subscriptions are live, the server
//! holds exactly the ones the client has open (none leaked, none twice), and
//! a save on the context goes out.

use serde_json::{Value, json};
use statecast_client::state::StreamViewStatus;
use statecast_client::{ClientState, StreamRequest, WriteOptions};
use statecast_core::protocol::v1::{ClientMessage, Operation, ServerMessage, Welcome, WriteOp};
use std::collections::{BTreeSet, VecDeque};

fn schema() -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../spec/client/schema.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("schema")).expect("json")
}

fn task(id: i64) -> Value {
    json!({"_type": "Task", "id": id, "_version": 1, "job": 1, "name": format!("Task {id}"), "status": "todo",
           "notes": "", "developer": null, "assignee": 1, "created_by": 1})
}

/// The server side of one connection: answers each frame in order, as the real one does.
#[derive(Default)]
struct Server {
    inbox: VecDeque<Value>,
    outbox: VecDeque<Value>,
    contexts: BTreeSet<String>,
    streams: BTreeSet<String>,
    next: u64,
    writes: usize,
}

impl Server {
    fn process(&mut self) {
        let Some(f) = self.inbox.pop_front() else { return };
        let rid = f["rid"].clone();
        match (f["type"].as_str(), f.get("channel"), f.get("stream"), f.get("context"), f.get("subscription")) {
            (Some("subscribe"), Some(_), _, _, _) => {
                self.contexts.insert("job/1".into());
                self.outbox.push_back(json!({"type": "state", "context": "job/1", "channel": "job", "anchorId": 1,
                    "epoch": "e", "seq": 10, "rid": rid,
                    "instances": [{"_type": "Job", "id": 1, "_version": 1, "name": "Launch", "project": 1, "owner": 1}, task(1), task(2)]}));
            }
            (Some("subscribe"), _, Some(stream), _, _) => {
                self.next += 1;
                let id = format!("s{}", self.next);
                self.streams.insert(id.clone());
                self.outbox.push_back(json!({"type": "subscribed", "subscription": id, "stream": stream, "seq": 10,
                    "snapshot": [task(1), task(2)], "rid": rid}));
            }
            (Some("unsubscribe"), _, _, Some(context), _) => {
                self.contexts.remove(context.as_str().unwrap_or(""));
                self.outbox.push_back(
                    json!({"type": "unsubscribed", "context": context, "reason": "CLIENT_REQUEST", "rid": rid}),
                );
            }
            (Some("unsubscribe"), _, _, _, Some(sub)) => {
                self.streams.remove(sub.as_str().unwrap_or(""));
                self.outbox.push_back(
                    json!({"type": "unsubscribed", "subscription": sub, "reason": "CLIENT_REQUEST", "rid": rid}),
                );
            }
            (Some("write"), ..) => self.writes += 1,
            _ => panic!("unexpected frame {f}"),
        }
    }
}

/// What the driver sends after each call.
fn flush(c: &mut ClientState, server: &mut Server) {
    for m in c.take_control().into_iter().chain(c.take_sendable().into_iter().map(ClientMessage::Write)) {
        server.inbox.push_back(serde_json::to_value(&m).expect("encodes"));
    }
}

#[test]
fn open_and_close_in_any_interleaving_with_the_replies_keep_the_newest_subscription() {
    for seed in 1..=300u64 {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut random = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 1000) as f64 / 1000.0
        };
        let mut server = Server::default();
        let mut c = ClientState::new("ident");
        let welcome: Welcome = serde_json::from_value(json!({"type": "welcome", "connectionId": "c",
            "user": {"id": 1, "name": "alice"}, "schema": schema(), "epoch": "e", "applied": []}))
        .expect("welcome");
        c.connected(&welcome);
        let mut view: Option<u64> = None;
        for _ in 0..60 {
            let r = random();
            if r < 0.2 {
                if c.has_context("job/1") {
                    c.unsubscribe("job/1");
                } else {
                    c.add_context("job/1", "job", 1);
                }
            } else if r < 0.4 {
                match view.take() {
                    Some(local) => c.remove_stream(local),
                    None => view = Some(c.add_stream(StreamRequest::new("tasks").filter("job", 1).snapshot())),
                }
            } else if r < 0.7 {
                server.process();
            } else if let Some(msg) = server.outbox.pop_front() {
                c.receive(serde_json::from_value::<ServerMessage>(msg).expect("message"));
            }
            flush(&mut c, &mut server);
        }
        while !server.inbox.is_empty() || !server.outbox.is_empty() {
            server.process();
            while let Some(msg) = server.outbox.pop_front() {
                c.receive(serde_json::from_value::<ServerMessage>(msg).expect("message"));
                flush(&mut c, &mut server);
            }
        }
        let open = c.has_context("job/1");
        assert_eq!(
            server.contexts.contains("job/1"),
            open,
            "seed {seed}: the server holds the context iff the client does"
        );
        if open {
            assert!(c.is_loaded("job/1"), "seed {seed}: the newest context is loaded");
            let tasks: Vec<i64> = c.view("job/1").iter().filter(|r| &*r.ty == "Task").map(|r| r.id).collect();
            assert_eq!(tasks, vec![1, 2], "seed {seed}");
            let op = WriteOp {
                operation: Operation::Save,
                instance_type: "Task".into(),
                instance_id: Some(1),
                parent_type: None,
                parent_id: None,
                relation_name: None,
                data: json!({"status": "done"}).as_object().cloned(),
                if_version: None,
            };
            c.write("job/1", vec![op], WriteOptions::default()).expect("write");
            flush(&mut c, &mut server);
            server.process();
            assert_eq!(server.writes, 1, "seed {seed}: a save goes out");
        }
        let live: Vec<String> = view
            .and_then(|l| c.stream_info(l))
            .map(|i| {
                assert_eq!(i.status, StreamViewStatus::Ready, "seed {seed}");
                vec![i.subscription.expect("subscribed")]
            })
            .unwrap_or_default();
        assert_eq!(
            server.streams.iter().cloned().collect::<Vec<_>>(),
            live,
            "seed {seed}: one server subscription per open view"
        );
        if let Some(local) = view {
            assert_eq!(c.stream_rows(local).iter().map(|r| r.id).collect::<Vec<_>>(), vec![1, 2], "seed {seed}");
        }
    }
}
