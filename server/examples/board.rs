//! Your own server in one file: a schema, a channel, a policy, the fjall
//! store and WebSocket, composed with `ServerBuilder`.
//!
//! `STATECAST_JWT_SECRET=$(openssl rand -hex 32) cargo run -p statecast-server --example board`

#![allow(clippy::print_stdout)] // an example shows its work on stdout

use async_trait::async_trait;
use statecast_core::row::{Fields, Row};
use statecast_core::schema::{EntityType, OnDelete, ServerValue};
use statecast_core::{Channel, JwtHs256, Op, Policy, PolicyContext, PolicyError, Schema};
use statecast_server::ServerBuilder;
use statecast_store_fjall::FjallStore;
use statecast_transport_ws::WsConfig;
use std::sync::Arc;

/// Anyone signed in may read a board and add cards; only a card's author may edit or delete it.
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
    async fn can_save(&self, cx: &PolicyContext<'_>, card: &Row, _data: &Fields) -> Result<bool, PolicyError> {
        Ok(card.get_i64("created_by") == Some(cx.user().id))
    }
    async fn can_delete(&self, cx: &PolicyContext<'_>, card: &Row) -> Result<bool, PolicyError> {
        Ok(card.get_i64("created_by") == Some(cx.user().id))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let schema = Schema::builder()
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
        })
        .relation_ordered("Board", "cards", "Card", "board", Some("position"))
        .build()?;
    let board = Channel::builder("board", "Board")
        .include("cards")
        .writable("Card", [Op::Save, Op::Create, Op::Delete])
        .policy(BoardPolicy)
        .build(&schema)?;
    let secret = std::env::var("STATECAST_JWT_SECRET").map_err(|_| "set STATECAST_JWT_SECRET (32+ random bytes)")?;

    let server = ServerBuilder::new(schema.clone())
        .channel(board)
        .store(Arc::new(FjallStore::open("./board-data", schema)?))
        .authenticator(JwtHs256::new(secret.as_bytes()))
        .websocket("127.0.0.1:7200".parse()?, WsConfig::default())
        .start()
        .await?;
    for url in server.ws_urls() {
        println!("listening {url}");
    }
    server.run_until_signal().await?;
    Ok(())
}
