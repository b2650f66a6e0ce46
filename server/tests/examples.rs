//! The examples run: each is compiled into this test as a module and driven
//! end to end over real WebSocket connections on 127.0.0.1 (a client
//! subscribes, another writes, both see the change).

mod common;

#[allow(dead_code)] // the example's own `main`
#[path = "../examples/board.rs"]
mod board;
#[allow(dead_code)]
#[path = "../examples/chat.rs"]
mod chat;

use common::{Client, Codec, changes, row, rows, write_msg};
use serde_json::json;
use statecast_core::protocol::v1::Write;

fn free_addr() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], 0))
}

#[tokio::test]
async fn the_board_example_seeds_serves_and_broadcasts() {
    let dir = tempfile::tempdir().expect("temp dir");
    let options = || board::BoardOptions {
        addr: free_addr(),
        data_dir: dir.path().join("board-data"),
        dev_tokens: true,
        jwt_secret: None,
    };
    let server = board::start(options()).await.expect("the board starts");
    let url = server.ws_urls()[0].clone();

    let mut bob = Client::connect(&url, Codec::Json).await;
    bob.hello("bob").await;
    let state = bob.subscribe("board", 1).await;
    assert_eq!(rows(&state).len(), 3, "the seeded board and its two cards: {state}");
    let card = row(&state, "Card", 1).expect("card 1");
    let at = card["created_at"].as_str().unwrap_or_else(|| panic!("a seeded card has created_at: {card}"));
    assert!(at.starts_with("20") && at.ends_with('Z'), "an RFC 3339 UTC time: {at}");

    let mut alice = Client::connect(&url, Codec::Json).await;
    alice.hello("alice").await;
    alice.subscribe("board", 1).await;
    // Board is writable: anyone signed in renames it.
    let renamed = alice.write(write_msg(Write::save("Board", 1).set("title", "Sprint").context("board/1"))).await;
    renamed.ok();
    let seen = bob.recv_type("delta").await;
    assert_eq!(changes(&seen)[0]["title"], "Sprint", "{seen}");
    // A card: the server stamps author and time; bob sees it.
    let added = alice
        .write(write_msg(Write::create("Card").under("Board", 1, "cards").set("text", "Ship").context("board/1")))
        .await;
    let id = added.ok()["instanceId"].as_i64().expect("the new card's id");
    let seen = bob.recv_type("delta").await;
    let created = &changes(&seen)[0];
    assert_eq!((created["op"].as_str(), created["id"].as_i64()), (Some("create"), Some(id)), "{seen}");
    assert_eq!(created["created_by"], json!(1));
    assert!(created["created_at"].is_string(), "{created}");
    // Only a card's author edits it.
    let (code, reason) =
        bob.write(write_msg(Write::save("Card", id).set("text", "Mine").context("board/1"))).await.refused();
    assert_eq!((code, reason.as_str()), (403, "DENIED"));
    drop((alice, bob));
    server.shutdown().await;

    // A restart keeps what was written and seeds nothing again. (In one
    // process, the old store's lock goes once its last session task ends.)
    let mut tries = 0;
    let server = loop {
        match board::start(options()).await {
            Ok(server) => break server,
            Err(e) if tries < 100 && e.to_string().contains("lock") => tries += 1,
            Err(e) => panic!("the board restarts: {e}"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let mut carol = Client::connect(&server.ws_urls()[0], Codec::Json).await;
    carol.hello("alice").await;
    let state = carol.subscribe("board", 1).await;
    assert_eq!(rows(&state).len(), 4, "{state}");
    assert_eq!(row(&state, "Board", 1).expect("board")["title"], "Sprint");
    server.shutdown().await;
}

#[tokio::test]
async fn the_board_example_wants_a_way_to_sign_in() {
    let dir = tempfile::tempdir().expect("temp dir");
    let options =
        board::BoardOptions { addr: free_addr(), data_dir: dir.path().into(), dev_tokens: false, jwt_secret: None };
    let err = board::start(options).await.err().expect("no tokens at all is refused");
    assert!(err.to_string().contains("STATECAST_JWT_SECRET"), "{err}");
}

#[tokio::test]
async fn the_chat_example_delivers_messages() {
    let server = chat::start(free_addr()).await.expect("the chat starts");
    let url = server.ws_urls()[0].clone();
    let mut bob = Client::connect(&url, Codec::Json).await;
    bob.hello("bob").await;
    let state = bob.subscribe("room", 1).await;
    assert_eq!(row(&state, "Room", 1).expect("the lobby")["name"], "lobby");
    let mut alice = Client::connect(&url, Codec::Json).await;
    alice.hello("alice").await;
    alice.subscribe("room", 1).await;
    let sent = alice
        .write(write_msg(Write::create("Message").under("Room", 1, "messages").set("text", "hi").context("room/1")))
        .await;
    let id = sent.ok()["instanceId"].as_i64().expect("id");
    let seen = bob.recv_type("delta").await;
    let message = &changes(&seen)[0];
    assert_eq!((message["text"].as_str(), message["author"].as_i64()), (Some("hi"), Some(1)), "{seen}");
    assert!(message["sent_at"].is_string(), "{message}");
    let (code, _) = bob.write(write_msg(Write::delete("Message", id).context("room/1"))).await.refused();
    assert_eq!(code, 403, "only the author deletes");
    alice.write(write_msg(Write::delete("Message", id).context("room/1"))).await.ok();
    let gone = bob.recv_type("delta").await;
    assert_eq!(changes(&gone)[0]["op"], "delete", "{gone}");
    server.shutdown().await;
}
