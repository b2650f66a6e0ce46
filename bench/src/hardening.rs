//! What the server holds and how fast it answers under abuse: a subscriber
//! that never reads (peak RSS over idle), writes while thousands of heavy
//! stream subscriptions are held (p99), and idle connections that never say
//! `hello` (time until the last is let go).

use crate::client::{BoxError, Client, Kind};
use crate::proc_stats;
use crate::server::Server;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde_json::json;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

/// The slow-consumer run: RSS before, the highest seen, and after the close.
#[derive(Debug)]
pub struct SlowConsumer {
    pub deltas: usize,
    pub delta_bytes: usize,
    pub rss_idle: u64,
    pub rss_peak: u64,
    pub rss_after: u64,
    pub closed: bool,
}

/// One subscriber of job/1 that never reads (or, with `reads`, one that
/// keeps up: the baseline, whose RSS growth is the store's and the
/// allocator's, not the outbox's) while a writer saves 400 KB notes; RSS is
/// sampled after every write.
pub async fn slow_consumer(srv: &Server, writes: usize, reads: bool) -> Result<SlowConsumer, BoxError> {
    let target = srv.target.clone();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_idle = proc_stats::rss_bytes(srv.pid());
    let mut slow = Client::connect(Kind::Ws, &target).await?;
    slow.hello("bob").await?;
    slow.subscribe("job", 1).await?;
    let mut slow = match reads {
        true => {
            let (tx, mut rx) = slow.split();
            tokio::spawn(async move {
                let _tx = tx;
                while rx.recv_timeout(Duration::from_secs(30)).await.is_ok() {}
            });
            None
        }
        false => Some(slow),
    };
    let mut writer = Client::connect(Kind::Ws, &target).await?;
    writer.hello("alice").await?;
    writer.subscribe("job", 1).await?;
    let delta_bytes = 400 * 1024;
    let mut rss_peak = rss_idle;
    for n in 0..writes {
        let notes = format!("{n}{}", "x".repeat(delta_bytes));
        let w = json!({"type": "write", "operation": "save", "instanceType": "Task", "instanceId": 1,
                       "context": "job/1", "writeId": n + 1, "data": {"notes": notes}});
        writer.write(w).await?;
        rss_peak = rss_peak.max(proc_stats::rss_bytes(srv.pid()));
    }
    // The slow one's socket: closed by the server (4008) long before now; what
    // the kernel buffered comes first, then the end.
    let mut closed = false;
    if let Some(c) = slow.as_mut() {
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            match c.recv_frame(Duration::from_secs(2)).await {
                Err(_) => {
                    closed = true;
                    break;
                }
                Ok(None) => break,
                Ok(Some(_)) => {}
            }
        }
    }
    drop(slow);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = proc_stats::rss_bytes(srv.pid());
    Ok(SlowConsumer { deltas: writes, delta_bytes, rss_idle, rss_peak, rss_after, closed })
}

/// Write latency while heavy stream subscriptions are held.
#[derive(Debug)]
pub struct HeavyFilters {
    pub subscriptions: usize,
    pub refused: usize,
    pub writes: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub baseline_p99_ms: f64,
}

/// Saves of Task 1 one after another, their latency measured without and
/// then with `subs` unindexed `tasks` subscriptions (name contains a
/// 200-character string) on 30 connections.
pub async fn heavy_filters(srv: &Server, subs: usize, writes: usize) -> Result<HeavyFilters, BoxError> {
    let target = srv.target.clone();
    let mut writer = Client::connect(Kind::Ws, &target).await?;
    writer.hello("alice").await?;
    writer.subscribe("job", 1).await?;
    let mut next_id = 0;
    let baseline = save_latencies(&mut writer, writes, &mut next_id).await?;
    let per_conn = subs.div_ceil(30);
    let mut holders = Vec::new();
    let mut refused = 0;
    for c in 0..30 {
        let mut h = Client::connect(Kind::Ws, &target).await?;
        h.hello("carol").await?;
        for i in 0..per_conn.min(subs.saturating_sub(c * per_conn)) {
            let needle = format!("{:0200}", c * per_conn + i);
            h.send(json!({"type": "subscribe", "stream": "tasks", "filters": {"name__icontains": needle}})).await?;
            if h.subscribed().await.is_err() {
                refused += 1;
            }
        }
        holders.push(h);
    }
    let with = save_latencies(&mut writer, writes, &mut next_id).await?;
    Ok(HeavyFilters {
        subscriptions: subs - refused,
        refused,
        writes,
        p50_ms: with.value_at_quantile(0.5) as f64 / 1000.0,
        p99_ms: with.value_at_quantile(0.99) as f64 / 1000.0,
        baseline_p99_ms: baseline.value_at_quantile(0.99) as f64 / 1000.0,
    })
}

async fn save_latencies(writer: &mut Client, n: usize, next_id: &mut i64) -> Result<Histogram<u64>, BoxError> {
    let mut h = Histogram::<u64>::new(3)?;
    for _ in 0..n {
        *next_id += 1;
        let w = json!({"type": "write", "operation": "save", "instanceType": "Task", "instanceId": 1,
                       "context": "job/1", "writeId": 1_000_000 + *next_id, "data": {"notes": format!("n{next_id}")}});
        let started = Instant::now();
        writer.write(w).await?;
        h.record(started.elapsed().as_micros() as u64)?;
    }
    Ok(h)
}

/// Idle connections that never say hello.
#[derive(Debug)]
pub struct PreHello {
    pub opened: usize,
    pub failed: usize,
    pub all_closed_after_s: f64,
    pub still_open: usize,
    pub rss_peak: u64,
    pub rss_idle: u64,
}

/// Opens `n` WebSockets (from 127.0.0.2 … 127.0.0.9) that never send
/// `hello`, then waits until the server has closed them all (its `hello`
/// deadline), at most `wait`.
pub async fn pre_hello(srv: &Server, n: usize, wait: Duration) -> Result<PreHello, BoxError> {
    let target = srv.target.clone();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_idle = proc_stats::rss_bytes(srv.pid());
    let started = Instant::now();
    let results: Vec<Result<Client, BoxError>> = futures_util::stream::iter(0..n)
        .map(|i| {
            let target = target.clone();
            async move {
                let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i % 8) as u8));
                Client::connect_from(Kind::Ws, &target, Some(source)).await
            }
        })
        .buffer_unordered(128)
        .collect()
        .await;
    let failed = results.iter().filter(|r| r.is_err()).count();
    let clients: Vec<Client> = results.into_iter().filter_map(Result::ok).collect();
    let opened = clients.len();
    let rss_peak = proc_stats::rss_bytes(srv.pid());
    // Each waits for its close (an error frame, then the end).
    let deadline = started + wait;
    let open_left: Vec<bool> = futures_util::stream::iter(clients)
        .map(|mut c| async move {
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match c.recv_frame(left).await {
                    Err(_) => return false,
                    Ok(None) => return true,
                    Ok(Some(_)) => continue,
                }
            }
        })
        .buffer_unordered(n.max(1))
        .collect()
        .await;
    let still_open = open_left.iter().filter(|o| **o).count();
    Ok(PreHello { opened, failed, all_closed_after_s: started.elapsed().as_secs_f64(), still_open, rss_peak, rss_idle })
}
