//! Your own server in one file: a schema, a channel, a policy, the fjall
//! store and WebSocket, composed with `ServerBuilder`, seeded with a first
//! board on an empty store.
//!
//! Try it with the dev tokens `alice` and `bob` (like `--mode dev`):
//!
//! ```sh
//! cargo run -p statecast-server --example board -- --dev
//! cargo run -p statecast-client --bin statecast -- watch ws://127.0.0.1:7200/ws board 1 --token bob
//! ```
//!
//! In production, JWTs only: `STATECAST_JWT_SECRET=$(openssl rand -hex 32)`,
//! then `cargo run -p statecast-server --example board`, and sign tokens with
//! `statecast-server token --sub 1 --ttl 1h --name alice` (same variable).
//! `tests/examples.rs` drives this file end to end.

#![allow(clippy::print_stdout)] // an example shows its work on stdout

use async_trait::async_trait;
use statecast_core::protocol::v1::Write;
use statecast_core::row::{Fields, Row};
use statecast_core::schema::{EntityType, OnDelete, ServerValue};
use statecast_core::{
    Actor, Authenticator, Channel, DevTokens, JwtHs256, Op, Policy, PolicyContext, PolicyError, Schema, User,
};
use statecast_server::{RunningServer, ServerAuth, ServerBuilder};
use statecast_store_fjall::FjallStore;
use statecast_transport_ws::WsConfig;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// Anyone signed in reads a board, renames it and adds cards; only a card's
/// author edits or deletes it.
struct BoardPolicy;

#[async_trait]
impl Policy for BoardPolicy {
    async fn has_permission(&self, _cx: &PolicyContext<'_>, _board: &Row) -> Result<bool, PolicyError> {
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
    async fn can_save(&self, cx: &PolicyContext<'_>, row: &Row, _data: &Fields) -> Result<bool, PolicyError> {
        match &*row.ty {
            "Board" => Ok(true),
            _ => Ok(row.get_i64("created_by") == Some(cx.user().id)),
        }
    }
    async fn can_delete(&self, cx: &PolicyContext<'_>, card: &Row) -> Result<bool, PolicyError> {
        Ok(card.get_i64("created_by") == Some(cx.user().id))
    }
}

/// How to run the board server.
pub struct BoardOptions {
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    /// Accept the dev tokens `alice` and `bob` (for trying it out, never in production).
    pub dev_tokens: bool,
    /// Accept JWTs (HS256) signed with this secret.
    pub jwt_secret: Option<String>,
}

pub fn schema() -> Result<Arc<Schema>, statecast_core::SchemaError> {
    Schema::builder()
        .entity("User", |t| {
            t.string("name");
        })
        .entity("Board", |t| {
            t.string("title").len(1, 100);
        })
        .entity("Card", |t| {
            t.reference("board", "Board").on_delete(OnDelete::Cascade);
            t.string("text").len(1, 2000);
            t.int("position").default(0);
            t.reference("created_by", "User").nullable().server_value(ServerValue::UserId);
            t.timestamp("created_at").nullable().server_value(ServerValue::Now);
        })
        .relation_ordered("Board", "cards", "Card", "board", Some("position"))
        .build()
}

/// The first rows: users alice and bob, board 1 "Welcome" with two cards
/// (one system write; the server fills `created_at`).
pub fn seed() -> Write {
    let card = |id, text: &str, position, by| {
        Write::create("Card")
            .id(id)
            .under("Board", 1, "cards")
            .set("text", text)
            .set("position", position)
            .set("created_by", by)
    };
    Write::batch([
        Write::create("User").id(1).set("name", "alice"),
        Write::create("User").id(2).set("name", "bob"),
        Write::create("Board").id(1).set("title", "Welcome"),
        card(1, "Drag me", 0, 1),
        card(2, "Add a card", 1, 2),
    ])
}

/// Starts the board server: opens the store, seeds an empty one, serves.
pub async fn start(options: BoardOptions) -> Result<RunningServer, Box<dyn std::error::Error>> {
    let schema = schema()?;
    let board = Channel::builder("board", "Board")
        .include("cards")
        .writable("Board", [Op::Save])
        .writable("Card", [Op::Save, Op::Create, Op::Delete])
        .policy(BoardPolicy)
        .build(&schema)?;
    let auth: Arc<dyn Authenticator> = match (options.dev_tokens, options.jwt_secret) {
        (true, jwt) => {
            let dev = DevTokens::new().with("alice", User::new(1, "alice")).with("bob", User::new(2, "bob"));
            Arc::new(ServerAuth::new(Some(dev), jwt.map(|s| JwtHs256::new(s.as_bytes())).transpose()?))
        }
        (false, Some(secret)) => Arc::new(JwtHs256::new(secret.as_bytes())?),
        (false, None) => return Err("set STATECAST_JWT_SECRET (32+ random bytes), or pass --dev for dev tokens".into()),
    };
    let store = FjallStore::open(&options.data_dir, schema.clone())?;
    let mut builder = ServerBuilder::new(schema.clone())
        .channel(board)
        .store(Arc::new(store))
        .shared_authenticator(auth)
        .websocket(options.addr, WsConfig::default());
    let engine = builder.build_engine()?;
    if engine.store().is_empty().await? {
        engine.write(Actor::System, seed()).await?;
    }
    Ok(builder.serve(engine).await?)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = start(BoardOptions {
        addr: "127.0.0.1:7200".parse()?,
        data_dir: "./board-data".into(),
        dev_tokens: std::env::args().any(|a| a == "--dev"),
        jwt_secret: std::env::var("STATECAST_JWT_SECRET").ok().filter(|s| !s.is_empty()),
    })
    .await?;
    for url in server.ws_urls() {
        println!("listening {url}");
    }
    server.run_until_signal().await?;
    Ok(())
}
