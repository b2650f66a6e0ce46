//! A chat in under 100 lines: rooms and their messages, anyone signed in
//! posts, an author deletes their own; the server stamps author and time.
//!
//! `cargo run -p statecast-server --example chat` then, in two terminals,
//! `cargo run -p statecast-client --bin statecast -- watch ws://127.0.0.1:7300/ws room 1 --token bob` and
//! `cargo run -p statecast-client --bin statecast -- write ws://127.0.0.1:7300/ws --token alice --context room/1 \
//!  '{"operation":"create","instanceType":"Message","parentType":"Room","parentId":1,"relationName":"messages","data":{"text":"hi"}}'`

#![allow(clippy::print_stdout)]

use async_trait::async_trait;
use statecast_core::protocol::v1::Write;
use statecast_core::schema::{EntityType, OnDelete, ServerValue};
use statecast_core::store::MemoryStore;
use statecast_core::{Actor, Channel, DevTokens, Fields, Op, Policy, PolicyContext, PolicyError, Row, Schema, User};
use statecast_server::{RunningServer, ServerBuilder};
use statecast_transport_ws::WsConfig;
use std::net::SocketAddr;
use std::sync::Arc;

struct ChatPolicy;

#[async_trait]
impl Policy for ChatPolicy {
    async fn has_permission(&self, _: &PolicyContext<'_>, _room: &Row) -> Result<bool, PolicyError> {
        Ok(true)
    }
    async fn can_create(
        &self,
        _: &PolicyContext<'_>,
        _: &EntityType,
        _: &Row,
        _: &Fields,
    ) -> Result<bool, PolicyError> {
        Ok(true)
    }
    async fn can_delete(&self, cx: &PolicyContext<'_>, message: &Row) -> Result<bool, PolicyError> {
        Ok(message.get_i64("author") == Some(cx.user().id))
    }
}

/// Serves the chat on `addr` with an in-memory store (gone at exit) and the
/// dev tokens `alice` and `bob`; room 1 "lobby" to start with.
pub async fn start(addr: SocketAddr) -> Result<RunningServer, Box<dyn std::error::Error>> {
    let schema = Schema::builder()
        .entity("User", |t| {
            t.string("name");
        })
        .entity("Room", |t| {
            t.string("name").len(1, 80);
        })
        .entity("Message", |t| {
            t.reference("room", "Room").on_delete(OnDelete::Cascade);
            t.string("text").len(1, 4000);
            t.reference("author", "User").nullable().server_value(ServerValue::UserId);
            t.timestamp("sent_at").nullable().server_value(ServerValue::Now);
        })
        .relation("Room", "messages", "Message", "room")
        .build()?;
    let room = Channel::builder("room", "Room")
        .include("messages")
        .writable("Message", [Op::Create, Op::Delete])
        .policy(ChatPolicy)
        .build(&schema)?;
    let users = DevTokens::new().with("alice", User::new(1, "alice")).with("bob", User::new(2, "bob"));
    let mut builder = ServerBuilder::new(schema.clone())
        .channel(room)
        .store(Arc::new(MemoryStore::new(schema)))
        .authenticator(users)
        .websocket(addr, WsConfig::default());
    let engine = builder.build_engine()?;
    let seed = Write::batch([
        Write::create("User").id(1).set("name", "alice"),
        Write::create("User").id(2).set("name", "bob"),
        Write::create("Room").id(1).set("name", "lobby"),
    ]);
    engine.write(Actor::System, seed).await?;
    Ok(builder.serve(engine).await?)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = start("127.0.0.1:7300".parse()?).await?;
    for url in server.ws_urls() {
        println!("listening {url}");
    }
    server.run_until_signal().await?;
    Ok(())
}
