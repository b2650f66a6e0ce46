//! Subscribe latency while commits flush slowly (issue 18): subscribe →
//! the whole `state` of a 100-row context, measured again and again on one
//! connection (subscribe, state, unsubscribe), while a writer commits to
//! another context open loop and every flush takes `--flush-delay-ms`.
//!
//! With a keeper holding the context, the state comes from the hub's memory:
//! what the latency then shows is whether the hub's loop is free while
//! commits wait for their flush. Without one, each subscribe loads the
//! context, and a load waits for the durability of what it read (by design:
//! nothing is shown before it is durable), so a flush is part of it.

use crate::client::{BoxError, Client, Kind};
use crate::scenarios::{hist, ms};
use crate::server::Server;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Rows of the subscribed context: job 2 and the tasks added under it.
const ROWS: usize = 100;

#[derive(Debug, Default)]
pub struct SubscribeLatency {
    pub subscribes: u64,
    pub rows: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub writes_per_sec: f64,
}

/// Fills job 2 with tasks up to [`ROWS`] rows (one batch, as alice).
async fn fill(srv: &Server) -> Result<(), BoxError> {
    let mut alice = Client::connect(Kind::Ws, &srv.target).await?;
    alice.hello("alice").await?;
    let have = alice.subscribe_all("job", 2).await?;
    let ops: Vec<Value> = (have..ROWS)
        .map(|i| {
            json!({"operation": "create", "instanceType": "Task", "parentType": "Job", "parentId": 2,
                   "relationName": "tasks", "data": {"name": format!("row {i}")}})
        })
        .collect();
    let r = alice
        .write(json!({"type": "write", "writeId": 1, "operation": "batch", "context": "job/2", "ops": ops}))
        .await?;
    if r["success"] != true {
        return Err(format!("filling job 2 failed: {r}").into());
    }
    Ok(())
}

/// Saves Task 1's notes as alice at `rate` a second, open loop, until `stop`.
async fn writer(srv: &Server, rate: u64, stop: Arc<AtomicBool>) -> Result<Arc<AtomicU64>, BoxError> {
    let mut alice = Client::connect(Kind::Ws, &srv.target).await?;
    alice.hello("alice").await?;
    alice.subscribe_all("job", 1).await?;
    let (mut tx, mut rx) = alice.split();
    let answered = Arc::new(AtomicU64::new(0));
    let counted = answered.clone();
    let reader_stop = stop.clone();
    tokio::spawn(async move {
        while !reader_stop.load(Ordering::Relaxed) {
            match rx.recv_timeout(Duration::from_millis(200)).await {
                Ok(Some(frame)) if frame.value().is_ok_and(|m| m["type"] == "writeResponse") => {
                    counted.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    tokio::spawn(async move {
        let every = Duration::from_secs_f64(1.0 / rate as f64);
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut id = 10_i64;
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            id += 1;
            let w = json!({"type": "write", "writeId": id, "operation": "save", "context": "job/1",
                           "instanceType": "Task", "instanceId": 1, "data": {"notes": format!("n{id}")}});
            if tx.send(&w).await.is_err() {
                break;
            }
        }
    });
    Ok(answered)
}

/// One point: subscribes to `job/2` for `length` while the writer runs.
pub async fn run(srv: &Server, rate: u64, keeper: bool, length: Duration) -> Result<SubscribeLatency, BoxError> {
    fill(srv).await?;
    let mut held = Vec::new();
    if keeper {
        let mut bob = Client::connect(Kind::Ws, &srv.target).await?;
        bob.hello("bob").await?;
        bob.subscribe_all("job", 2).await?;
        held.push(bob);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let answered = writer(srv, rate, stop.clone()).await?;
    tokio::time::sleep(Duration::from_millis(300)).await; // the writer reaches its pace
    let mut carol = Client::connect(Kind::Ws, &srv.target).await?;
    carol.hello("carol").await?;
    let mut h = hist();
    let mut res = SubscribeLatency::default();
    let (started, written) = (Instant::now(), answered.load(Ordering::Relaxed));
    while started.elapsed() < length {
        let t = Instant::now();
        res.rows = carol.subscribe_all("job", 2).await?;
        let _ = h.record(t.elapsed().as_micros() as u64);
        res.subscribes += 1;
        carol.send(json!({"type": "unsubscribe", "context": "job/2"})).await?;
        loop {
            match carol.recv_timeout(Duration::from_secs(10)).await? {
                Some(m) if m["type"] == "unsubscribed" => break,
                Some(_) => continue,
                None => return Err("no `unsubscribed`".into()),
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    res.writes_per_sec = (answered.load(Ordering::Relaxed) - written) as f64 / elapsed;
    res.p50_ms = ms(&h, 0.5);
    res.p99_ms = ms(&h, 0.99);
    res.max_ms = ms(&h, 1.0);
    drop(held);
    Ok(res)
}
