//! Two clients converge on one context.
//!
//! Start the demo server (`cargo run --release -p statecast-server`), then:
//! `cargo run -p statecast-client --example converge [ws://127.0.0.1:7100/ws]`
//!
//! Alice and Bob subscribe to `job/1`. Each writes at once — the write shows
//! in the writer's view before the server answers — and both views end up
//! equal to the server's canonical state. A write the demo policy refuses
//! (Bob renaming a task he does not own) rolls back without a trace.

#![allow(clippy::print_stdout)] // an example shows its work on stdout

use serde_json::json;
use statecast_client::{Client, ClientConfig, Parent};
use std::time::Duration;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args().nth(1).unwrap_or_else(|| "ws://127.0.0.1:7100/ws".into());
    let alice = Client::connect(ClientConfig::new(url.clone(), "alice")).await?;
    let bob = Client::connect(ClientConfig::new(url, "bob")).await?;
    let a = alice.subscribe("job", 1).await?;
    let b = bob.subscribe("job", 1).await?;

    let save = a.save("Task", 1, json!({"status": "doing"}))?;
    println!(
        "alice sees task 1 as {:?} before the server answers",
        a.row("Task", 1).map(|r| r.fields["status"].clone())
    );
    let create = b.create("Task", Parent { ty: "Job", id: 1, relation: "tasks" }, json!({"name": "Bob's task"}))?;
    let new_id = create.id().unwrap_or_default();
    let refused = b.save("Task", 1, json!({"name": "Bob was here"}))?;

    save.await?;
    create.await?;
    match refused.await {
        Err(e) => println!(
            "bob's rename was refused ({e}); his view shows {:?}",
            b.row("Task", 1).map(|r| r.fields["name"].clone())
        ),
        Ok(_) => println!("bob's rename was accepted"),
    }
    // Give the last deltas a moment to arrive everywhere, then compare.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let strip =
        |rows: Vec<statecast_client::ViewRow>| rows.into_iter().map(|r| (r.ty, r.id, r.fields)).collect::<Vec<_>>();
    let (va, vb) = (strip(a.view()), strip(b.view()));
    println!("alice and bob see the same {} rows: {}", va.len(), va == vb);
    println!(
        "the new task {new_id} is in both views: {}",
        a.row("Task", new_id).is_some() && b.row("Task", new_id).is_some()
    );
    Ok(())
}
