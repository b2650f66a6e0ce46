//! `ServerBuilder` in process: a transport of the test's own serves a write,
//! and the builder refuses to build twice or to build nothing.

use serde_json::{Value, json};
use statecast_core::protocol::v1::Write;
use statecast_core::store::MemoryStore;
use statecast_core::transport::{
    Connection, ConnectionHandler, Frame, Incoming, Transport, TransportError, memory_pair,
};
use statecast_server::{ServerBuilder, ServerError, demo};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A transport of the test's own: connections are in-memory pairs handed to
/// it through a channel (what a socket's accept loop would do).
struct MemoryTransport {
    accept: mpsc::Receiver<Connection>,
}

#[async_trait::async_trait]
impl Transport for MemoryTransport {
    fn name(&self) -> &'static str {
        "memory"
    }
    fn local_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }
    async fn serve(
        mut self: Box<Self>,
        handler: Arc<dyn ConnectionHandler>,
        shutdown: CancellationToken,
    ) -> Result<(), TransportError> {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                conn = self.accept.recv() => match conn {
                    Some(conn) => handler.handle(conn),
                    None => {
                        shutdown.cancelled().await;
                        return Ok(());
                    }
                },
            }
        }
    }
}

fn demo_builder() -> ServerBuilder {
    let schema = demo::schema();
    ServerBuilder::new(schema.clone())
        .channels(demo::channels(&schema))
        .streams(demo::streams(&schema))
        .store(Arc::new(MemoryStore::new(schema)))
        .authenticator(demo::dev_tokens())
}

async fn send(conn: &Connection, msg: Value) {
    conn.outbox.send(Frame::text(msg.to_string())).await.expect("send");
}

async fn recv(conn: &mut Connection) -> Value {
    match tokio::time::timeout(Duration::from_secs(5), conn.incoming.recv()).await {
        Ok(Some(Incoming::Frame(f))) => serde_json::from_slice(&f.data).expect("a JSON frame"),
        other => panic!("expected a frame, got {other:?}"),
    }
}

#[tokio::test]
async fn a_transport_of_your_own_serves_writes() {
    let (accept_tx, accept) = mpsc::channel(4);
    let server =
        demo_builder().transport(Box::new(MemoryTransport { accept })).start().await.expect("the server starts");
    assert_eq!(server.other_transports(), &[("memory", SocketAddr::from(([127, 0, 0, 1], 0)))]);
    assert!(server.ws_urls().is_empty(), "no WebSocket was asked for");
    assert!(demo::seed_if_empty(server.engine(), 2).await.expect("seed"), "the memory store starts empty");

    let (engine_end, mut client) = memory_pair(64);
    accept_tx.send(engine_end).await.expect("the transport accepts");
    send(&client, json!({"type": "hello", "protocol": 1, "token": "alice", "clientId": "builder-test"})).await;
    let welcome = recv(&mut client).await;
    assert_eq!((welcome["type"].as_str(), welcome["user"]["id"].as_i64()), (Some("welcome"), Some(1)), "{welcome}");
    send(&client, json!({"type": "subscribe", "channel": "job", "anchorId": 1})).await;
    let state = recv(&mut client).await;
    assert_eq!(state["type"], "state", "{state}");

    let write = Write::save("Task", 1).set("status", "done").context("job/1").write_id(1);
    send(&client, serde_json::to_value(write.into_message()).expect("encode")).await;
    let delta = recv(&mut client).await;
    assert_eq!((delta["type"].as_str(), delta["writeId"].as_i64()), (Some("delta"), Some(1)), "{delta}");
    assert_eq!(delta["changes"][0]["status"], "done", "{delta}");
    let response = recv(&mut client).await;
    assert_eq!((response["type"].as_str(), response["success"].as_bool()), (Some("writeResponse"), Some(true)));
    server.shutdown().await;
}

#[tokio::test]
async fn a_builder_builds_one_engine() {
    let mut builder = demo_builder();
    let engine = builder.build_engine().expect("the first engine");
    assert!(matches!(builder.build_engine(), Err(ServerError::AlreadyBuilt)), "a second build is refused");
    let msg = ServerError::AlreadyBuilt.to_string();
    assert!(msg.contains("already built"), "{msg}");
    drop(engine);
}

#[tokio::test]
async fn a_builder_with_nothing_to_subscribe_to_is_refused() {
    let schema = demo::schema();
    let bare = ServerBuilder::new(schema.clone())
        .store(Arc::new(MemoryStore::new(schema.clone())))
        .authenticator(demo::dev_tokens());
    match bare.start().await {
        Err(e @ ServerError::NothingToServe) => assert!(e.to_string().contains("no channel and no stream"), "{e}"),
        Err(other) => panic!("expected NothingToServe, got {other}"),
        Ok(_) => panic!("a server with no channel and no stream was built"),
    }
    let no_store =
        ServerBuilder::new(schema.clone()).channels(demo::channels(&schema)).authenticator(demo::dev_tokens());
    assert!(matches!(no_store.start().await, Err(ServerError::NoStore)));
    let no_auth = ServerBuilder::new(schema.clone())
        .channels(demo::channels(&schema))
        .store(Arc::new(MemoryStore::new(schema.clone())));
    assert!(matches!(no_auth.start().await, Err(ServerError::NoAuthenticator)));
    let two_stores = demo_builder().store(Arc::new(MemoryStore::new(schema)));
    assert!(matches!(two_stores.start().await, Err(ServerError::StoreGivenTwice)));
}

/// Declarations given before the store reach the engine as those given after.
#[tokio::test]
async fn declarations_before_and_after_the_store_both_count() {
    let schema = demo::schema();
    let mut builder = ServerBuilder::new(schema.clone())
        .authenticator(demo::dev_tokens())
        .channels(demo::channels(&schema))
        .store(Arc::new(MemoryStore::new(schema.clone())))
        .streams(demo::streams(&schema));
    let engine = builder.build_engine().expect("engine");
    let (engine_end, mut client) = memory_pair(64);
    engine.accept(engine_end);
    send(&client, json!({"type": "hello", "protocol": 1, "token": "bob"})).await;
    let welcome = recv(&mut client).await;
    let names = |key: &str| -> Vec<String> {
        welcome["schema"][key]
            .as_array()
            .map(|a| a.iter().filter_map(|c| c["name"].as_str().map(str::to_owned)).collect())
            .unwrap_or_default()
    };
    assert_eq!(names("channels"), vec!["job".to_owned(), "project".to_owned()], "{welcome}");
    assert_eq!(names("streams"), vec!["my-tasks".to_owned(), "tasks".to_owned(), "users".to_owned()], "{welcome}");
}
