//! The encoded form of every protocol v1 message, in both codecs. A change
//! to any of these snapshots is a change to the wire protocol.

use serde::Serialize;
use serde_json::json;
use statecast_protocol::Codec;
use statecast_protocol::applied::CreatedId;
use statecast_protocol::error::{ErrorReason, WireError};
use statecast_protocol::frame::Frame;
use statecast_protocol::v1::*;
use statecast_protocol::{Row, User};
use std::sync::Arc;

/// JSON text, and MessagePack as hex plus its decoded map (which must equal the JSON).
fn encoded<T: Serialize>(msg: &T) -> String {
    let json = Codec::Json.encode(msg).expect("json");
    let pack = Codec::MsgPack.encode(msg).expect("msgpack");
    let as_json: serde_json::Value = serde_json::from_slice(&json.data).expect("json parses");
    let from_pack: serde_json::Value = rmp_serde::from_slice(&pack.data).expect("msgpack parses");
    assert_eq!(as_json, from_pack, "both codecs carry the same map");
    let hex: String = pack.data.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}\n{hex}", String::from_utf8_lossy(&json.data))
}

fn row() -> Arc<Row> {
    let fields =
        statecast_protocol::row::fields([("job", json!(1)), ("name", json!("Write docs")), ("status", json!("todo"))]);
    Arc::new(Row { ty: "Task".into(), id: 2, version: 17, created: 3, fields })
}

fn client(msg: ClientMessage) -> String {
    let text = encoded(&msg);
    let frame = Frame::text(serde_json::to_string(&msg).expect("json"));
    assert_eq!(Codec::Json.decode_client(&frame).expect("decodes"), msg, "JSON round trip");
    let pack = Codec::MsgPack.encode(&msg).expect("msgpack");
    assert_eq!(Codec::MsgPack.decode_client(&pack).expect("decodes"), msg, "MessagePack round trip");
    text
}

#[test]
fn client_messages() {
    insta::assert_snapshot!(
        "hello",
        client(ClientMessage::Hello(Hello {
            protocol: 1,
            token: "alice".into(),
            client_id: Some("c-1".into()),
            pending: vec![4, 5],
            rid: Some(json!(1))
        }))
    );
    insta::assert_snapshot!(
        "subscribe",
        client(ClientMessage::Subscribe(Subscribe {
            channel: Some("job".into()),
            anchor_id: Some(1),
            since: Some(12),
            epoch: Some("e1".into()),
            rid: None,
            ..Default::default()
        }))
    );
    // A resume under read rules: the `view` of the state held comes back.
    insta::assert_snapshot!(
        "subscribe_since_view",
        client(ClientMessage::Subscribe(Subscribe {
            channel: Some("job".into()),
            anchor_id: Some(1),
            since: Some(17),
            epoch: Some("e1".into()),
            view: Some("4f7c2a91d03b6e58".into()),
            rid: Some(json!(2)),
            ..Default::default()
        }))
    );
    let filters = json!({"job": 1, "name__icontains": "bug"}).as_object().cloned();
    insta::assert_snapshot!(
        "subscribe_stream",
        client(ClientMessage::Subscribe(Subscribe {
            stream: Some("tasks".into()),
            actions: Some(vec![ChangeOp::Create, ChangeOp::Delete]),
            id: None,
            filters,
            fields: Some(vec!["name".into(), "status".into()]),
            snapshot: true,
            rid: Some(json!(3)),
            ..Default::default()
        }))
    );
    insta::assert_snapshot!(
        "subscribe_stream_id",
        client(ClientMessage::Subscribe(Subscribe {
            stream: Some("my-tasks".into()),
            id: Some(7),
            since: Some(40),
            epoch: Some("e1".into()),
            ..Default::default()
        }))
    );
    insta::assert_snapshot!(
        "unsubscribe_stream",
        client(ClientMessage::Unsubscribe(Unsubscribe { context: None, subscription: Some("s4".into()), rid: None }))
    );
    insta::assert_snapshot!(
        "unsubscribe",
        client(ClientMessage::Unsubscribe(Unsubscribe {
            context: Some("job/1".into()),
            subscription: None,
            rid: None
        }))
    );
    let data = statecast_protocol::row::fields([("status", json!("done"))]);
    insta::assert_snapshot!(
        "write_save",
        client(ClientMessage::Write(Write {
            write_id: 123,
            operation: Operation::Save,
            context: Some("job/1".into()),
            instance_type: Some("Task".into()),
            instance_id: Some(42),
            parent_type: None,
            parent_id: None,
            relation_name: None,
            data: Some(data.clone()),
            if_version: Some(17),
            after: vec![],
            ops: vec![],
            rid: None,
        }))
    );
    insta::assert_snapshot!(
        "write_batch",
        client(ClientMessage::Write(Write {
            write_id: 124,
            operation: Operation::Batch,
            context: Some("job/1".into()),
            instance_type: None,
            instance_id: None,
            parent_type: None,
            parent_id: None,
            relation_name: None,
            data: None,
            if_version: None,
            after: vec![123],
            ops: vec![WriteOp {
                operation: Operation::Create,
                instance_type: "Task".into(),
                instance_id: Some(-1),
                parent_type: Some("Job".into()),
                parent_id: Some(1),
                relation_name: Some("tasks".into()),
                data: Some(data),
                if_version: None
            }],
            rid: None,
        }))
    );
    insta::assert_snapshot!(
        "get",
        client(ClientMessage::Get(Get { stream: "tasks".into(), ids: vec![1, 2], rid: None }))
    );
    insta::assert_snapshot!("auth", client(ClientMessage::Auth(Auth { token: "t".into(), rid: None })));
    insta::assert_snapshot!("ping", client(ClientMessage::Ping(Ping { rid: Some(json!("r")) })));
    insta::assert_snapshot!(
        "presence_set",
        client(ClientMessage::Presence(SetPresence {
            context: "job/1".into(),
            data: json!({"editing": 3}),
            rid: None
        }))
    );
    insta::assert_snapshot!(
        "presence_clear",
        client(ClientMessage::Presence(SetPresence {
            context: "job/1".into(),
            data: serde_json::Value::Null,
            rid: Some(json!(7))
        }))
    );
}

#[test]
fn stream_messages() {
    let projected = Arc::new(Row {
        ty: "Task".into(),
        id: 2,
        version: 17,
        created: 3,
        fields: statecast_protocol::row::fields([("name", json!("Fix bug"))]),
    });
    insta::assert_snapshot!(
        "subscribed",
        encoded(&ServerMessage::Subscribed(Subscribed {
            subscription: "s4".into(),
            stream: "tasks".into(),
            seq: 40,
            scope: None,
            snapshot: None,
            part: None,
            last: None,
            rid: Some(json!(3)),
        }))
    );
    insta::assert_snapshot!(
        "subscribed_snapshot",
        encoded(&ServerMessage::Subscribed(Subscribed {
            subscription: "s4".into(),
            stream: "tasks".into(),
            seq: 40,
            scope: None,
            snapshot: Some(vec![projected]),
            part: None,
            last: None,
            rid: None,
        }))
    );
    insta::assert_snapshot!(
        "event_full",
        encoded(&ServerMessage::Event(Event {
            subscription: "s4".into(),
            seq: 41,
            prev: 40,
            action: ChangeOp::Update,
            id: 2,
            data: Some(statecast_protocol::row::fields([("name", json!("Fix bug")), ("status", json!("done"))])),
        }))
    );
    insta::assert_snapshot!(
        "event_id",
        encoded(&ServerMessage::Event(Event {
            subscription: "s5".into(),
            seq: 42,
            prev: 41,
            action: ChangeOp::Delete,
            id: 2,
            data: None,
        }))
    );
    insta::assert_snapshot!(
        "rows",
        encoded(&ServerMessage::Rows(Rows { stream: "my-tasks".into(), rows: vec![row()], rid: Some(json!("g1")) }))
    );
    insta::assert_snapshot!(
        "unsubscribed_stream",
        encoded(&ServerMessage::Unsubscribed(Unsubscribed {
            context: None,
            subscription: Some("s4".into()),
            reason: UnsubscribeReason::ClientRequest,
            rid: None,
        }))
    );
    // Clients decode every stream message.
    for msg in [
        ServerMessage::Event(Event {
            subscription: "s1".into(),
            seq: 2,
            prev: 1,
            action: ChangeOp::Create,
            id: 9,
            data: None,
        }),
        // `created` is not on the wire.
        ServerMessage::Rows(Rows {
            stream: "t".into(),
            rows: vec![Arc::new(Row { created: 0, ..(*row()).clone() })],
            rid: None,
        }),
    ] {
        for codec in [Codec::Json, Codec::MsgPack] {
            let frame = codec.encode(&msg).expect("encodes");
            assert_eq!(codec.decode_server(&frame).expect("decodes"), Some(msg.clone()));
        }
    }
}

#[test]
fn server_messages() {
    let created = vec![CreatedId { ty: "Task".into(), temp_id: Some(-1), id: 4 }];
    insta::assert_snapshot!(
        "welcome",
        encoded(&ServerMessage::Welcome(Welcome {
            connection_id: "c1".into(),
            user: User::new(1, "alice"),
            schema: json!({"types": {}}),
            epoch: "e1".into(),
            applied: vec![AppliedOutcome { write_id: 4, seq: 9, created: vec![] }],
            rid: None
        }))
    );
    insta::assert_snapshot!(
        "state",
        encoded(&ServerMessage::State(State {
            context: "job/1".into(),
            channel: "job".into(),
            anchor_id: 1,
            epoch: "e1".into(),
            seq: 17,
            instances: vec![row()],
            incremental: false,
            removed: vec![],
            presence: vec![],
            view: None,
            part: None,
            last: None,
            rid: None
        }))
    );
    insta::assert_snapshot!(
        "state_view",
        encoded(&ServerMessage::State(State {
            context: "job/1".into(),
            channel: "job".into(),
            anchor_id: 1,
            epoch: "e1".into(),
            seq: 17,
            instances: vec![row()],
            incremental: false,
            removed: vec![],
            presence: vec![],
            view: Some("4f7c2a91d03b6e58".into()),
            part: None,
            last: None,
            rid: None
        }))
    );
    insta::assert_snapshot!(
        "state_presence",
        encoded(&ServerMessage::State(State {
            context: "job/1".into(),
            channel: "job".into(),
            anchor_id: 1,
            epoch: "e1".into(),
            seq: 17,
            instances: vec![row()],
            incremental: false,
            removed: vec![],
            presence: vec![PresenceEntry {
                connection_id: "c2".into(),
                user: PresenceUser { id: 2, name: "bob".into() },
                data: json!({"editing": 2}),
            }],
            view: None,
            part: None,
            last: None,
            rid: None
        }))
    );
    insta::assert_snapshot!(
        "presence",
        encoded(&ServerMessage::Presence(Presence {
            context: "job/1".into(),
            connection_id: "c2".into(),
            user: PresenceUser { id: 2, name: "bob".into() },
            data: json!({"editing": 2, "cursor": [3, 14]}),
            left: false,
        }))
    );
    insta::assert_snapshot!(
        "presence_left",
        encoded(&ServerMessage::Presence(Presence {
            context: "job/1".into(),
            connection_id: "c2@3fa2b1c0".into(),
            user: PresenceUser { id: 2, name: "bob".into() },
            data: serde_json::Value::Null,
            left: true,
        }))
    );
    insta::assert_snapshot!(
        "state_incremental",
        encoded(&ServerMessage::State(State {
            context: "job/1".into(),
            channel: "job".into(),
            anchor_id: 1,
            epoch: "e1".into(),
            seq: 18,
            instances: vec![row()],
            incremental: true,
            removed: vec![Removed { ty: "Task".into(), id: 3 }],
            presence: vec![],
            view: None,
            part: Some(0),
            last: Some(true),
            rid: None
        }))
    );
    let change = DeltaChange {
        op: ChangeOp::Update,
        ty: "Task".into(),
        id: 2,
        version: 18,
        fields: statecast_protocol::row::fields([("status", json!("done"))]),
    };
    insta::assert_snapshot!(
        "delta_writer",
        encoded(&ServerMessage::Delta(Delta {
            context: "job/1".into(),
            seq: 18,
            prev: 17,
            changes: Arc::new(vec![change]),
            write_id: Some(123),
            created: created.clone(),
            part: None,
            last: None
        }))
    );
    insta::assert_snapshot!(
        "write_response_ok",
        encoded(&ServerMessage::WriteResponse(WriteResponse {
            write_id: 124,
            success: true,
            seq: Some(18),
            created,
            instance_id: Some(4),
            ..Default::default()
        }))
    );
    let err = WireError::invalid_data("name", "`name` must be 1–200 characters long, got 201");
    insta::assert_snapshot!(
        "write_response_error",
        encoded(&ServerMessage::WriteResponse(WriteResponse {
            write_id: 125,
            success: false,
            error: Some(err.with_op(1)),
            ..Default::default()
        }))
    );
    let mut e =
        ErrorMessage::new(WireError::new(ErrorReason::UnsupportedProtocol, "protocol 2 is not supported"), None);
    e.supported = Some(vec![1]);
    insta::assert_snapshot!("error", encoded(&ServerMessage::Error(e)));
    insta::assert_snapshot!(
        "unsubscribed",
        encoded(&ServerMessage::Unsubscribed(Unsubscribed {
            context: Some("job/1".into()),
            subscription: None,
            reason: UnsubscribeReason::AnchorDeleted,
            rid: None
        }))
    );
    insta::assert_snapshot!(
        "unsubscribed_revoked",
        encoded(&ServerMessage::Unsubscribed(Unsubscribed {
            context: Some("job/1".into()),
            subscription: None,
            reason: UnsubscribeReason::Revoked,
            rid: None
        }))
    );
    insta::assert_snapshot!(
        "unsubscribed_rescoped",
        encoded(&ServerMessage::Unsubscribed(Unsubscribed {
            context: None,
            subscription: Some("s3".into()),
            reason: UnsubscribeReason::Rescoped,
            rid: None
        }))
    );
    insta::assert_snapshot!(
        "authenticated",
        encoded(&ServerMessage::Authenticated(Authenticated { user: User::new(1, "alice"), rid: None }))
    );
    insta::assert_snapshot!("pong", encoded(&ServerMessage::Pong(Ping { rid: None })));
    insta::assert_snapshot!(
        "goaway",
        encoded(&ServerMessage::Goaway(Goaway { reason: Some("SERVER_DRAINING".into()) }))
    );
}
