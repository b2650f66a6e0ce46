//! Presence latency (issue 19): `n` WebSocket clients subscribe to `job/1`
//! and each shows a cursor at a fixed rate (open loop, staggered over one
//! interval); every client reads the others' `presence` messages.
//!
//! Each update carries its intended send time (`data.t`, µs since the epoch);
//! latency runs from it to the arrival at each other client (no coordinated
//! omission: an update the server held back for its per-connection pace
//! counts from when it was meant to go). The server relays at most 20
//! updates a second per connection and keeps only the latest per context
//! while one waits, so sent − relayed is what the pacing coalesced; relayed
//! per sender is the most any receiver saw of it.

use crate::client::{BoxError, Client, Kind, Target};
use crate::proc_stats;
use crate::scenarios::{hist, ms};
use crate::server::Server;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde::Deserialize;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The demo users who may read `job/1`: alice and bob (members of project
/// 1) and carol (an admin), in turn.
const TOKENS: [&str; 3] = ["alice", "bob", "carol"];

/// How many connections are set up at once.
const SETUP_CONCURRENCY: usize = 32;

/// One point of the presence scenario: `clients` clients, each updating at `hz`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Point {
    pub clients: usize,
    pub hz: u64,
}

impl std::str::FromStr for Point {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}`: expected CLIENTSxHZ, e.g. 100x20");
        let (c, h) = s.split_once(['x', 'X']).ok_or_else(bad)?;
        let clients: usize = c.trim().parse().map_err(|_| bad())?;
        let hz: u64 = h.trim().parse().map_err(|_| bad())?;
        if clients < 2 || hz == 0 || hz > 1000 {
            return Err(format!("`{s}`: at least 2 clients and 1 to 1000 updates/s"));
        }
        Ok(Point { clients, hz })
    }
}

impl std::fmt::Display for Point {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}", self.clients, self.hz)
    }
}

#[derive(Debug, Default)]
pub struct PresenceResult {
    pub clients: usize,
    pub hz: u64,
    /// Updates the clients sent.
    pub sent: u64,
    /// Distinct updates relayed: per sender, the most any other client saw.
    pub relayed: u64,
    /// Deliveries the relayed updates make (each to every other client).
    pub expected: u64,
    pub received: u64,
    pub deliveries_per_sec: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// A sender's `t` not above the last one a receiver saw from it (a reorder or a duplicate).
    pub order_violations: u64,
    /// Clients whose connection ended before the end (or failed to set up).
    pub disconnected: u64,
    /// The server's `statecast_slow_consumers_total` after the run.
    pub slow_consumers: f64,
    /// `error` frames the clients got (e.g. a presence refused).
    pub errors: u64,
    pub send_lag_p99_ms: f64,
    pub send_lag_max_ms: f64,
    /// Server and generator CPU, % of one core, over the run.
    pub server_cpu: f64,
    pub bench_cpu: f64,
    /// Everything else the machine ran meanwhile (other people's builds), % of one core.
    pub other_cpu: f64,
    pub frame_bytes: f64,
}

impl PresenceResult {
    pub fn coalesced(&self) -> u64 {
        self.sent.saturating_sub(self.relayed)
    }
    /// What the clients offered: every update to every other client.
    pub fn offered_per_sec(&self) -> u64 {
        (self.clients as u64) * (self.clients as u64 - 1) * self.hz
    }
}

/// A `presence` frame, decoded only as far as the harness needs.
#[derive(Deserialize)]
struct PresenceFrame {
    #[serde(rename = "type")]
    ty: String,
    #[serde(default, rename = "connectionId")]
    connection_id: Option<String>,
    #[serde(default)]
    data: Option<CursorData>,
}

#[derive(Deserialize)]
struct CursorData {
    #[serde(default)]
    t: Option<u64>,
}

/// What one receiver saw.
struct Seen {
    hist: Histogram<u64>,
    /// connectionId → (updates received, the last `t`).
    per_sender: HashMap<String, (u64, u64)>,
    violations: u64,
    errors: u64,
    disconnected: bool,
    last_at: Option<Instant>,
    bytes: u64,
    frames: u64,
}

/// Connects `n` clients (alice, bob, carol in turn), each subscribed to
/// `job/1`; returns each with its `connectionId`.
async fn clients(target: &Target, n: usize) -> Vec<Result<(Client, String), BoxError>> {
    futures_util::stream::iter(0..n)
        .map(|i| {
            let target = target.clone();
            async move {
                let mut c = Client::connect(Kind::Ws, &target).await?;
                let welcome = c.hello(TOKENS[i % TOKENS.len()]).await?;
                let id = welcome["connectionId"].as_str().ok_or("a welcome without connectionId")?.to_owned();
                c.subscribe("job", 1).await?;
                Ok((c, id))
            }
        })
        .buffered(SETUP_CONCURRENCY)
        .collect()
        .await
}

/// One run: `p.clients` clients, each sending `p.hz` presence updates a
/// second to `job/1` for `length`.
pub async fn run(srv: &Server, p: Point, length: Duration) -> Result<PresenceResult, BoxError> {
    let target = srv.target.clone();
    let mut res = PresenceResult { clients: p.clients, hz: p.hz, ..Default::default() };
    let mut conns = Vec::with_capacity(p.clients);
    for c in clients(&target, p.clients).await {
        match c {
            Ok(c) => conns.push(c),
            Err(e) => {
                if res.disconnected == 0 {
                    eprintln!("presence: a client failed to set up: {e}");
                }
                res.disconnected += 1;
            }
        }
    }
    let per_sender = (p.hz as f64 * length.as_secs_f64()).round().max(1.0) as u64;
    let interval = Duration::from_secs_f64(1.0 / p.hz as f64);
    let senders_done = Arc::new(AtomicBool::new(false));
    let deadline_after = length + Duration::from_secs(15);
    let n = conns.len() as u32;
    let cpu_before = (proc_stats::cpu_seconds(srv.pid()), proc_stats::cpu_seconds(std::process::id()));
    let machine_before = proc_stats::machine_busy_seconds();
    // Everyone starts together, a little after the tasks are spawned.
    let start = Instant::now() + Duration::from_millis(100);
    let wall_start = crate::micros_now() + 100_000;
    let mut receivers = Vec::with_capacity(conns.len());
    let mut senders = Vec::with_capacity(conns.len());
    let mut ids = Vec::with_capacity(conns.len());
    for (i, (c, id)) in conns.into_iter().enumerate() {
        ids.push(id);
        let (mut tx, mut rx) = c.split();
        let done = senders_done.clone();
        receivers.push(tokio::spawn(async move {
            let mut seen = Seen {
                hist: hist(),
                per_sender: HashMap::new(),
                violations: 0,
                errors: 0,
                disconnected: false,
                last_at: None,
                bytes: 0,
                frames: 0,
            };
            let deadline = start + deadline_after;
            let mut quiet_since = Instant::now();
            while Instant::now() < deadline {
                let frame = match rx.recv_timeout(Duration::from_millis(250)).await {
                    Ok(Some(f)) => f,
                    // The senders are done and nothing came for a second: all arrived.
                    Ok(None) if done.load(Ordering::Relaxed) && quiet_since.elapsed() > Duration::from_secs(1) => {
                        break;
                    }
                    Ok(None) => continue,
                    Err(_) => {
                        seen.disconnected = true;
                        break;
                    }
                };
                let now = Instant::now();
                quiet_since = now;
                let Ok(msg) = frame.decode_as::<PresenceFrame>() else { continue };
                match msg.ty.as_str() {
                    "presence" => {}
                    "error" => {
                        seen.errors += 1;
                        continue;
                    }
                    _ => continue,
                }
                let (Some(from), Some(t)) = (msg.connection_id, msg.data.and_then(|d| d.t)) else { continue };
                let _ = seen.hist.record(crate::micros_now().saturating_sub(t).max(1));
                seen.bytes += frame.len() as u64;
                seen.frames += 1;
                seen.last_at = Some(now);
                let entry = seen.per_sender.entry(from).or_insert((0, 0));
                if t <= entry.1 {
                    seen.violations += 1;
                }
                entry.0 += 1;
                entry.1 = entry.1.max(t);
            }
            seen
        }));
        // Senders are staggered over one interval, so the load is even.
        let phase = interval * i as u32 / n.max(1);
        senders.push(tokio::spawn(async move {
            let mut lag = hist();
            let mut sent = 0u64;
            for k in 0..per_sender {
                let offset = phase + interval * k as u32;
                tokio::time::sleep_until((start + offset).into()).await;
                let t = wall_start + offset.as_micros() as u64;
                // A cursor wandering over a 1920 × 1080 screen.
                let (x, y) = ((k * 37 + i as u64 * 101) % 1920, (k * 23 + i as u64 * 61) % 1080);
                let msg = json!({"type": "presence", "context": "job/1", "data": {"cursor": [x, y], "t": t}});
                if tx.send(&msg).await.is_err() {
                    break;
                }
                sent += 1;
                let _ = lag.record(start.elapsed().saturating_sub(offset).as_micros() as u64);
            }
            (sent, lag, tx)
        }));
    }
    let mut lag = hist();
    let mut sent_by = Vec::with_capacity(senders.len());
    let mut keep = Vec::with_capacity(senders.len());
    for s in senders {
        let (sent, l, tx) = s.await?;
        lag.add(&l)?;
        sent_by.push(sent);
        keep.push(tx);
    }
    senders_done.store(true, Ordering::Relaxed);
    let mut seen = Vec::with_capacity(receivers.len());
    for r in receivers {
        seen.push(r.await?);
    }
    let cpu_after = (proc_stats::cpu_seconds(srv.pid()), proc_stats::cpu_seconds(std::process::id()));
    let machine_after = proc_stats::machine_busy_seconds();
    // CPU % over the span it was measured (the senders' run and the receivers' drain).
    let cpu_window = start.elapsed().as_secs_f64().max(1e-9);
    drop(keep);
    let mut h = hist();
    let (mut bytes, mut frames) = (0u64, 0u64);
    let mut last_at = start;
    for s in &seen {
        h.add(&s.hist)?;
        res.received += s.per_sender.values().map(|(count, _)| count).sum::<u64>();
        res.order_violations += s.violations;
        res.errors += s.errors;
        res.disconnected += u64::from(s.disconnected);
        bytes += s.bytes;
        frames += s.frames;
        if let Some(at) = s.last_at {
            last_at = last_at.max(at);
        }
    }
    res.sent = sent_by.iter().sum();
    for (i, id) in ids.iter().enumerate() {
        let relayed = seen
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .filter_map(|(_, s)| s.per_sender.get(id))
            .map(|(c, _)| *c)
            .max();
        let relayed = relayed.unwrap_or(0);
        res.relayed += relayed;
        res.expected += relayed * (seen.len() as u64 - 1);
    }
    let window = last_at.saturating_duration_since(start).as_secs_f64().max(1e-9);
    res.deliveries_per_sec = res.received as f64 / window;
    res.p50_ms = ms(&h, 0.5);
    res.p90_ms = ms(&h, 0.9);
    res.p99_ms = ms(&h, 0.99);
    res.max_ms = h.max() as f64 / 1000.0;
    res.send_lag_p99_ms = ms(&lag, 0.99);
    res.send_lag_max_ms = lag.max() as f64 / 1000.0;
    res.server_cpu = (cpu_after.0 - cpu_before.0) * 100.0 / cpu_window;
    res.bench_cpu = (cpu_after.1 - cpu_before.1) * 100.0 / cpu_window;
    let ours = (cpu_after.0 - cpu_before.0) + (cpu_after.1 - cpu_before.1);
    res.other_cpu = ((machine_after - machine_before) - ours).max(0.0) * 100.0 / cpu_window;
    res.frame_bytes = bytes as f64 / frames.max(1) as f64;
    res.slow_consumers = srv.metric("statecast_slow_consumers_total").await.unwrap_or(0.0);
    Ok(res)
}
