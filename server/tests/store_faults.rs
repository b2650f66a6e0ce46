//! End to end: the store meets a full disk or slow flushes, against the real
//! binary, on the store of this run (`STATECAST_TEST_STORE`; PostgreSQL runs
//! its own disk).
//!
//! - Nothing is confirmed before it is durable: not a write's answer, not a
//!   resend's `duplicate` answer, not `welcome.applied`.
//! - A store that fails stops cleanly (fjall, sled) or recovers by itself
//!   once space is back (SQLite); `/readyz` says so meanwhile.
//!
//! The full-disk test mounts a small tmpfs, so it needs root (CI runs as
//! root); elsewhere it says it is skipped.

#![allow(clippy::print_stderr)] // progress and skip notes for the person running the tests

mod common;

use common::*;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A small tmpfs mounted on a temp directory; unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().expect("temp dir");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(SmallDisk { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills what is free with a ballast file, then frees `leave` bytes of it.
    fn fill_leaving(&self, leave: u64) -> PathBuf {
        let ballast = self.path().join("ballast");
        let mut f = std::fs::File::create(&ballast).expect("create ballast");
        let block = vec![0xa5u8; 64 * 1024];
        let mut written = 0u64;
        while f.write_all(&block).is_ok() {
            written += block.len() as u64;
        }
        drop(f);
        let keep = written.saturating_sub(leave);
        std::fs::OpenOptions::new().write(true).open(&ballast).and_then(|f| f.set_len(keep)).expect("trim ballast");
        ballast
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

fn task(write_id: i64, temp: i64, name: &str, notes_len: usize) -> Value {
    let mut w = create_task(1, Some(temp), json!({"name": name, "notes": "n".repeat(notes_len)}));
    w["writeId"] = json!(write_id);
    w
}

async fn writer(server: &TestServer, client_id: &str) -> Client {
    let mut c = server.json().await;
    c.client_id = client_id.to_owned();
    c.hello("alice").await;
    c.subscribe("job", 1).await;
    c
}

/// Like [`writer`], or `None` when the server stops meanwhile.
async fn try_writer(server: &TestServer, client_id: &str) -> Option<Client> {
    let mut c = Client::try_connect(&server.url, Codec::Json).await?;
    c.client_id = client_id.to_owned();
    let hello = json!({"type": "hello", "protocol": 1, "token": "alice", "clientId": client_id});
    let welcome = c.try_request(hello, Duration::from_secs(10)).await?;
    if welcome["type"] == "goaway" {
        return None;
    }
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    let subscribe = json!({"type": "subscribe", "channel": "job", "anchorId": 1});
    let state = c.try_request(subscribe, Duration::from_secs(10)).await?;
    if state["type"] == "goaway" || (state["type"] == "error" && state["code"] == 503) {
        // Stopping, or the store failed since (sled fails reads too then).
        return None;
    }
    // A state in parts: the writes below skip what else arrives before their answer.
    assert_eq!(state["type"], "state", "{state}");
    Some(c)
}

/// How many tasks named `name` job/1 holds.
async fn count_named(server: &TestServer, name: &str) -> usize {
    let (_c, state) = server.subscribed("bob", 1).await;
    state["instances"].as_array().expect("instances").iter().filter(|r| r["name"] == name).count()
}

#[tokio::test]
async fn a_full_disk_never_confirms_a_write_that_a_restart_loses() {
    let kind = StoreKind::from_env();
    if kind == StoreKind::Postgres {
        eprintln!("skipped: PostgreSQL keeps its data on its own disk");
        return;
    }
    let Some(disk) = SmallDisk::mount("48m") else {
        eprintln!("skipped: mounting a tmpfs needs root (CI runs as root)");
        return;
    };
    let mut server = TestServer::start_with(disk.path());
    let ballast = disk.fill_leaving(768 * 1024);

    // Write until the disk refuses; note every answer.
    let mut alice = writer(&server, "disk-full").await;
    let mut confirmed = Vec::new();
    let mut unknown = Vec::new();
    for write_id in 1..=200i64 {
        let name = format!("disk-full #{write_id}");
        match alice.try_write(task(write_id, -write_id, &name, 48 * 1024), Duration::from_secs(10)).await {
            Some(r) if r["success"] == true => confirmed.push(write_id),
            Some(r) => {
                let (code, reason) = error_of(&r);
                assert_eq!(code, 503, "a full disk is answered 503, never 500: {r}");
                assert!(["UNAVAILABLE", "OUTCOME_UNKNOWN"].contains(&reason.as_str()), "{r}");
                unknown.push(write_id);
                if unknown.len() >= 3 {
                    break;
                }
            }
            None => {
                unknown.push(write_id);
                break;
            }
        }
    }
    assert!(!unknown.is_empty(), "the disk never filled: {} writes confirmed", confirmed.len());
    assert!(!confirmed.is_empty(), "some writes fit before the disk filled");
    eprintln!("{} writes confirmed, {:?} unknown when the disk filled", confirmed.len(), unknown);

    // F1: a resend of a write whose fate is unknown is never answered as
    // applied while the store can't make it durable. The server may stop
    // (fjall, sled) at any point meanwhile: then nothing answers at all.
    if let Some(mut again) = try_writer(&server, "disk-full").await {
        for &write_id in &unknown {
            let name = format!("disk-full #{write_id}");
            if let Some(r) = again.try_write(task(write_id, -write_id, &name, 48 * 1024), Duration::from_secs(10)).await
            {
                assert_eq!(r["success"], false, "a resend on a full disk was confirmed: {r}");
                assert_eq!(error_of(&r).0, 503, "{r}");
            }
        }
    }
    if let Some(ready) = server.try_http_get("/readyz").await {
        assert!(
            ready.starts_with("HTTP/1.1 503"),
            "/readyz must not say ready on a full disk: {ready}\nthe server's log:\n{}",
            server.stderr()
        );
    }

    match kind {
        StoreKind::Fjall | StoreKind::Sled => {
            // A failed flush or write is fatal: the server stops by itself, says why, and
            // a restart recovers what was durable.
            let Some(status) = server.wait_exit(Duration::from_secs(15)) else {
                panic!("the server stops after its store failed; its log:\n{}", server.stderr());
            };
            assert!(!status.success(), "a store failure is not a clean exit: {status:?}");
            assert!(server.stderr().contains("restart it once the cause is fixed"), "{}", server.stderr());
            std::fs::remove_file(&ballast).expect("free the disk");
            server.relaunch();
        }
        StoreKind::Sqlite => {
            // SQLite rolls the failed transaction back: the server stays up and
            // writes work again as soon as there is room.
            assert!(server.is_running(), "SQLite survives a full disk: {}", server.stderr());
            std::fs::remove_file(&ballast).expect("free the disk");
            let mut after = writer(&server, "disk-full-after").await;
            let r = after.write(task(1, -1, "after the disk was freed", 16)).await;
            r.ok();
            let ready = server.http_get("/readyz").await;
            assert!(ready.starts_with("HTTP/1.1 200"), "ready again after a commit succeeded: {ready}");
        }
        StoreKind::Postgres => unreachable!(),
    }

    // Every confirmed write survived; every unknown one, resent by the
    // protocol's rules, is applied exactly once.
    let mut resend = writer(&server, "disk-full").await;
    for &write_id in &unknown {
        let name = format!("disk-full #{write_id}");
        resend.write(task(write_id, -write_id, &name, 48 * 1024)).await.ok();
    }
    let (_c, state) = server.subscribed("bob", 1).await;
    let mut by_name: BTreeMap<String, usize> = BTreeMap::new();
    for row in state["instances"].as_array().expect("instances") {
        if let Some(name) = row["name"].as_str() {
            *by_name.entry(name.to_owned()).or_default() += 1;
        }
    }
    for write_id in confirmed.iter().chain(&unknown) {
        let name = format!("disk-full #{write_id}");
        assert_eq!(by_name.get(&name), Some(&1), "{name} must be there exactly once: {by_name:?}\n{}", server.stderr());
    }
}

const FLUSH_DELAY: Duration = Duration::from_millis(400);

#[tokio::test]
async fn welcome_names_only_durable_writes() {
    if StoreKind::from_env() == StoreKind::Postgres {
        eprintln!("skipped: a PostgreSQL commit is durable when it returns");
        return;
    }
    // Slow flushes widen the window between a commit and its durability.
    let mut server = TestServer::start_args(&["--flush-delay-ms", &FLUSH_DELAY.as_millis().to_string()]);
    let client_id = "welcome-durable";
    let mut named_before_durable = 0;
    for round in 0..3i64 {
        let write_id = 100 + round;
        let name = format!("welcome #{write_id}");
        let mut writer_conn = writer(&server, client_id).await;
        let sent = std::time::Instant::now();
        writer_conn.send(task(write_id, -1, &name, 16)).await;
        // A second tab reconnects with the write pending, before its answer.
        let mut tab = server.json().await;
        tab.client_id = client_id.to_owned();
        let mut hello = json!({"type": "hello", "protocol": 1, "token": "alice", "clientId": client_id});
        hello["pending"] = json!([write_id]);
        let mut named = false;
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !named && std::time::Instant::now() < deadline {
            let welcome = tab.hello_with(hello.clone()).await;
            let applied = welcome["applied"].as_array().cloned().unwrap_or_default();
            named = applied.iter().any(|a| a["writeId"] == write_id);
            tab = server.json().await;
            tab.client_id = client_id.to_owned();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(named, "welcome never named write {write_id}");
        // The flusher syncs no sooner than FLUSH_DELAY after the commit: a
        // welcome naming the write earlier named a write not yet durable.
        let after = sent.elapsed();
        eprintln!("round {round}: welcome named write {write_id} after {after:?}");
        assert!(
            after >= FLUSH_DELAY,
            "welcome named write {write_id} {after:?} after it was sent, before it was durable"
        );
        // The client now retires the write for good: the store must keep it.
        server.kill9();
        server.relaunch();
        if count_named(&server, &name).await != 1 {
            named_before_durable += 1;
        }
    }
    assert_eq!(named_before_durable, 0, "welcome named writes a crash then lost");
}
