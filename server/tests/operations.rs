//! End to end: what an operator sees: quiet, colourless logs in files, every
//! refusal logged at debug and counted by reason, a taken port found before
//! the store is touched, and `schema | head` ending quietly.

mod common;

use common::*;
use serde_json::json;
use std::io::Read as _;
use std::process::{Command, Stdio};
use std::time::Duration;

#[tokio::test]
async fn logs_are_plain_and_quiet_and_refusals_are_logged_and_counted() {
    let server = TestServer::start_args(&["--log", "warn,statecast=debug"]);
    // bob is not task 1's assignee.
    let (mut bob, _) = server.subscribed("bob", 1).await;
    let r = bob.write(save("job/1", "Task", 1, json!({"notes": "not yours"}))).await;
    assert_eq!(r.refused(), (403, "DENIED".to_owned()));
    let mut bad = server.json().await;
    bad.send(json!({"type": "hello", "protocol": 1, "token": "mallory"})).await;
    bad.expect_closed().await;
    let metrics = server.http_get("/metrics").await;
    assert!(metrics.contains(r#"statecast_refusals_total{what="write",reason="DENIED"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"statecast_refusals_total{what="hello",reason="UNAUTHENTICATED"} 1"#), "{metrics}");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    // Both refusals are logged by the server's own tasks: wait for both lines,
    // not only the first (the hello's line may trail the metrics answer).
    let logged = |log: String| log.contains("reason=\"DENIED\"") && log.contains("reason=\"UNAUTHENTICATED\"");
    while !logged(server.stderr()) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = server.stderr();
    assert!(log.contains("refused") && log.contains("reason=\"DENIED\"") && log.contains("user=Some(2)"), "{log}");
    assert!(log.contains("reason=\"UNAUTHENTICATED\""), "{log}");
    assert!(!log.contains('\u{1b}'), "no colour codes when stderr is not a terminal: {log}");

    // At the default level a dependency's routine lines stay out.
    let quiet = TestServer::start();
    let log = quiet.stderr();
    for noisy in [" INFO fjall", " INFO lsm_tree", " INFO sled", " INFO sqlx", " INFO hyper"] {
        assert!(!log.contains(noisy), "{noisy:?} at the default level: {log}");
    }
}

#[test]
fn a_taken_port_is_found_before_the_store_is_touched() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let out = Command::new(env!("CARGO_BIN_EXE_statecast-server"))
        .args(["--ws-addr", &addr, "--quic-addr", "off", "--store", &format!("fjall:{}", data.display())])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("can't listen on") && stderr.contains(&addr), "{stderr}");
    assert!(!data.exists(), "the store was opened (and seeded) before the port was checked");
}

#[test]
fn a_reader_that_stops_early_ends_the_schema_quietly() {
    for args in [&["schema"][..], &["schema", "--ts"][..]] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_statecast-server"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run");
        // The pipe's reader is gone before the schema is written, like `| head -0`.
        drop(child.stdout.take());
        let status = child.wait().expect("wait");
        let mut stderr = String::new();
        child.stderr.take().expect("stderr").read_to_string(&mut stderr).expect("stderr");
        assert!(status.success(), "{args:?}: {status:?} {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}
