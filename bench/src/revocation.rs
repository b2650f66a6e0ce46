//! Revocation latency at scale (issue 19): bob holds many subscriptions of
//! project 1's contexts (`project/1` and its jobs, `job/1` … `job/{J}`, the
//! server seeding J jobs with `--demo-jobs`) on many connections; alice holds
//! the same contexts on a few connections of her own. Carol (an admin) deletes
//! bob's `ProjectMember` row through `project/1`: every subscription bob holds
//! must end with `unsubscribed` `REVOKED`, alice's none.
//!
//! Each round times the delete from its send to the last `REVOKED` to reach
//! bob (and to its `writeResponse`); then carol creates the membership again
//! and bob subscribes to everything again for the next round. A connection
//! holds a context once, so the subscriptions are spread: `per_connection`
//! contexts on each of bob's connections, at most 16 subscribes in flight on
//! one connection (the engine's `subscribes_in_flight`).

use crate::client::{BoxError, Client, Kind, Target};
use crate::proc_stats;
use crate::scenarios::MAX_DEMO_JOBS;
use crate::server::{Server, StoreArg};
use futures_util::StreamExt;
use serde_json::json;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Subscribes in flight per connection: the engine's default
/// `ConnectionLimits::subscribes_in_flight` (a subscribe past it, to a
/// context still loading, is refused 429).
const WINDOW: usize = 16;
/// How long a round waits for its revocations before counting the rest missing.
const REVOKE_WAIT: Duration = Duration::from_secs(60);
/// A pause before each delete, so the resubscribes' work is done and the
/// round measures the revocation alone.
const SETTLE: Duration = Duration::from_millis(300);

/// The shape of one run.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// Bob's subscriptions in all (rounded up to fill every connection).
    pub subscriptions: usize,
    /// Bob's connections.
    pub connections: usize,
    /// Alice's connections, each holding every context bob holds.
    pub keepers: usize,
    pub rounds: usize,
}

#[derive(Debug, Default, Clone)]
pub struct Round {
    /// Bob's subscribes before this round: from the first sent to the last state.
    pub resubscribe_ms: f64,
    /// The delete: send → its `writeResponse`.
    pub answer_ms: f64,
    /// Send → the first, median and last `REVOKED` bob received.
    pub first_ms: f64,
    pub median_ms: f64,
    pub last_ms: f64,
    /// `writeResponse` → the last `REVOKED` (negative: all ended before the answer arrived).
    pub last_after_answer_ms: f64,
    pub revoked: u64,
    /// Server CPU from the send to the last `REVOKED` (10 ms ticks).
    pub server_cpu_ms: f64,
    /// The send, in µs since the Unix epoch (to line a profile up with the
    /// round: `perf record -k realtime`).
    pub sent_unix_us: u64,
}

#[derive(Debug, Default)]
pub struct RevocationResult {
    pub connections: usize,
    pub per_connection: usize,
    /// Bob's subscriptions held in the first round (states received).
    pub subscriptions: u64,
    /// The server's `statecast_subscriptions` gauge then (bob's, alice's and carol's).
    pub gauge: f64,
    pub keeper_subscriptions: u64,
    pub rounds: Vec<Round>,
    pub subscribe_errors: u64,
    /// Expected `REVOKED` that never came (within a minute).
    pub missing: u64,
    /// Bob's `unsubscribed` with another reason.
    pub other_unsubscribed: u64,
    /// Any `unsubscribed` alice received (must be 0).
    pub keeper_unsubscribed: u64,
    /// Deltas of `project/1` alice received (the membership's delete and create, each round).
    pub keeper_deltas: u64,
    pub keeper_deltas_expected: u64,
    /// Whole states alice received again while holding her subscriptions.
    pub keeper_states: u64,
    pub disconnected: u64,
}

/// What one of bob's connections reports to the coordinator.
enum BobReport {
    Subscribed { ok: u64, errors: u64 },
    Revoked { times: Vec<Instant>, other: u64, disconnected: bool },
}

/// The contexts each connection holds: `project/1`, then `job/1` … `job/{n-1}`.
fn contexts(n: usize) -> Vec<(&'static str, i64)> {
    std::iter::once(("project", 1)).chain((1..n).map(|j| ("job", j as i64))).collect()
}

/// Subscribes to every context, at most `WINDOW` waiting for their state at
/// once; returns (states received, subscribes refused).
async fn subscribe_windowed(c: &mut Client, contexts: &[(&str, i64)]) -> Result<(u64, u64), BoxError> {
    let (mut next, mut in_flight, mut ok, mut errors) = (0, 0, 0u64, 0u64);
    while next < contexts.len() || in_flight > 0 {
        while in_flight < WINDOW && next < contexts.len() {
            let (channel, anchor) = contexts[next];
            c.send(json!({"type": "subscribe", "channel": channel, "anchorId": anchor})).await?;
            next += 1;
            in_flight += 1;
        }
        let frame = c.recv_frame(Duration::from_secs(30)).await?.ok_or("timed out waiting for a state")?;
        let v = frame.value()?;
        match v["type"].as_str() {
            Some("state") if v["part"].is_null() || v["last"] == true => {
                ok += 1;
                in_flight -= 1;
            }
            Some("error") => {
                if errors == 0 {
                    eprintln!("revocation: a subscribe was refused: {v}");
                }
                errors += 1;
                in_flight -= 1;
            }
            _ => {}
        }
    }
    Ok((ok, errors))
}

/// One of bob's connections: on each `go`, subscribes to every context, then
/// waits until each has ended `REVOKED`, noting when each did.
fn bob(
    mut c: Client,
    ctxs: Arc<Vec<(&'static str, i64)>>,
    mut go: mpsc::UnboundedReceiver<()>,
    report: mpsc::UnboundedSender<BobReport>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while go.recv().await.is_some() {
            let (ok, errors) = match subscribe_windowed(&mut c, &ctxs).await {
                Ok(v) => v,
                Err(e) => {
                    eprintln!("revocation: a connection of bob failed while subscribing: {e}");
                    let _ = report.send(BobReport::Subscribed { ok: 0, errors: ctxs.len() as u64 });
                    let _ = report.send(BobReport::Revoked { times: Vec::new(), other: 0, disconnected: true });
                    return;
                }
            };
            let _ = report.send(BobReport::Subscribed { ok, errors });
            let mut times = Vec::with_capacity(ok as usize);
            let (mut other, mut disconnected) = (0, false);
            let deadline = Instant::now() + REVOKE_WAIT;
            while (times.len() as u64) < ok && Instant::now() < deadline {
                let frame = match c.recv_frame(Duration::from_millis(500)).await {
                    Ok(Some(f)) => f,
                    Ok(None) => continue,
                    Err(_) => {
                        disconnected = true;
                        break;
                    }
                };
                let at = Instant::now();
                let Ok(v) = frame.value() else { continue };
                if v["type"] == "unsubscribed" {
                    if v["reason"] == "REVOKED" {
                        times.push(at);
                    } else {
                        other += 1;
                    }
                }
            }
            let _ = report.send(BobReport::Revoked { times, other, disconnected });
            if disconnected {
                return;
            }
        }
    })
}

/// What one of alice's connections saw while bob's subscriptions came and went.
struct KeeperOutcome {
    unsubscribed: u64,
    project_deltas: u64,
    /// `state` frames after her subscribes were answered (a context sent again whole).
    states: u64,
    disconnected: bool,
}

fn keeper(mut c: Client, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<KeeperOutcome> {
    tokio::spawn(async move {
        let mut out = KeeperOutcome { unsubscribed: 0, project_deltas: 0, states: 0, disconnected: false };
        while !stop.load(Ordering::Relaxed) {
            let frame = match c.recv_frame(Duration::from_millis(200)).await {
                Ok(Some(f)) => f,
                Ok(None) => continue,
                Err(_) => {
                    out.disconnected = true;
                    break;
                }
            };
            let Ok(v) = frame.value() else { continue };
            match v["type"].as_str() {
                Some("unsubscribed") => {
                    if out.unsubscribed == 0 {
                        eprintln!("revocation: alice's subscription ended: {v}");
                    }
                    out.unsubscribed += 1;
                }
                Some("delta") if v["context"] == "project/1" => out.project_deltas += 1,
                Some("state") => out.states += 1,
                _ => {}
            }
        }
        out
    })
}

async fn connect(target: &Target, token: &str) -> Result<Client, BoxError> {
    let mut c = Client::connect(Kind::Ws, target).await?;
    c.hello(token).await?;
    Ok(c)
}

/// One run of `cfg.rounds` rounds on a fresh server.
pub async fn run(bin: &Path, store: &StoreArg, cfg: Config) -> Result<RevocationResult, BoxError> {
    let conns = cfg.connections.max(1);
    let per_connection = cfg.subscriptions.div_ceil(conns).max(1);
    if per_connection > MAX_DEMO_JOBS + 1 {
        return Err(format!(
            "{per_connection} subscriptions per connection, but a connection holds a context once and the demo has \
             at most {} (project/1 and {MAX_DEMO_JOBS} jobs): use more connections",
            MAX_DEMO_JOBS + 1
        )
        .into());
    }
    let jobs = (per_connection - 1).max(2);
    let srv = Server::start_with(bin, store, &["--demo-jobs", &jobs.to_string()])?;
    let target = srv.target.clone();
    let ctxs = Arc::new(contexts(per_connection));
    let mut res = RevocationResult { connections: conns, per_connection, ..Default::default() };

    // Alice first: her subscribes load the contexts, and she keeps them live.
    let stop = Arc::new(AtomicBool::new(false));
    let mut keepers = Vec::new();
    for _ in 0..cfg.keepers {
        let mut c = connect(&target, "alice").await?;
        let (ok, errors) = subscribe_windowed(&mut c, &ctxs).await?;
        res.keeper_subscriptions += ok;
        res.subscribe_errors += errors;
        keepers.push(keeper(c, stop.clone()));
    }
    let mut carol = connect(&target, "carol").await?;
    carol.subscribe("project", 1).await?;

    let (report_tx, mut reports) = mpsc::unbounded_channel();
    let clients: Vec<Result<Client, BoxError>> = futures_util::stream::iter(0..conns)
        .map(|_| {
            let target = target.clone();
            async move { connect(&target, "bob").await }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let mut gos = Vec::with_capacity(conns);
    let mut bobs = Vec::with_capacity(conns);
    for c in clients {
        let c = c?;
        let (go, go_rx) = mpsc::unbounded_channel();
        gos.push(go);
        bobs.push(bob(c, ctxs.clone(), go_rx, report_tx.clone()));
    }
    drop(report_tx);

    let (mut member, mut write_id) = (2i64, 0i64);
    for round in 0..cfg.rounds {
        let t = Instant::now();
        for go in &gos {
            go.send(()).map_err(|_| "a connection of bob is gone")?;
        }
        let mut held = 0;
        for _ in 0..gos.len() {
            match reports.recv().await {
                Some(BobReport::Subscribed { ok, errors }) => {
                    held += ok;
                    res.subscribe_errors += errors;
                }
                Some(BobReport::Revoked { .. }) => return Err("a connection of bob reported out of turn".into()),
                None => return Err("bob's connections are gone".into()),
            }
        }
        let resubscribe_ms = t.elapsed().as_secs_f64() * 1000.0;
        tokio::time::sleep(SETTLE).await;
        if round == 0 {
            res.subscriptions = held;
            res.gauge = srv.metric("statecast_subscriptions").await.unwrap_or(f64::NAN);
        }

        write_id += 1;
        let delete = json!({"type": "write", "writeId": write_id, "context": "project/1", "operation": "delete",
            "instanceType": "ProjectMember", "instanceId": member});
        let cpu0 = proc_stats::cpu_seconds(srv.pid());
        let sent_unix_us = crate::micros_now();
        let sent = Instant::now();
        let answer = carol.write(delete).await?;
        let answered = Instant::now();
        if answer["success"] != true {
            return Err(format!("carol's delete of ProjectMember {member} was refused: {answer}").into());
        }
        let mut times = Vec::with_capacity(held as usize);
        for _ in 0..gos.len() {
            match reports.recv().await {
                Some(BobReport::Revoked { times: t, other, disconnected }) => {
                    times.extend(t);
                    res.other_unsubscribed += other;
                    res.disconnected += u64::from(disconnected);
                }
                Some(BobReport::Subscribed { .. }) => return Err("a connection of bob reported out of turn".into()),
                None => return Err("bob's connections are gone".into()),
            }
        }
        let cpu1 = proc_stats::cpu_seconds(srv.pid());
        res.missing += held.saturating_sub(times.len() as u64);
        times.sort();
        let since = |at: Instant| at.saturating_duration_since(sent).as_secs_f64() * 1000.0;
        let last = times.last().copied().unwrap_or(sent);
        let last_after_answer_ms = if last >= answered {
            last.duration_since(answered).as_secs_f64() * 1000.0
        } else {
            -(answered.duration_since(last).as_secs_f64() * 1000.0)
        };
        let r = Round {
            resubscribe_ms,
            answer_ms: since(answered),
            first_ms: times.first().map_or(0.0, |t| since(*t)),
            median_ms: times.get(times.len() / 2).map_or(0.0, |t| since(*t)),
            last_ms: since(last),
            last_after_answer_ms,
            revoked: times.len() as u64,
            server_cpu_ms: (cpu1 - cpu0) * 1000.0,
            sent_unix_us,
        };
        eprintln!("revocation round {round} (delete sent at unix µs {}): {r:?}", r.sent_unix_us);
        res.rounds.push(r);

        // The membership back, for the next round (and the last, to leave the demo as it was).
        write_id += 1;
        let create = json!({"type": "write", "writeId": write_id, "context": "project/1", "operation": "create",
            "instanceType": "ProjectMember", "parentType": "Project", "parentId": 1, "relationName": "members",
            "data": {"user": 2}});
        let answer = carol.write(create).await?;
        member = match answer["instanceId"].as_i64() {
            Some(id) if answer["success"] == true => id,
            _ => return Err(format!("carol's create of bob's membership failed: {answer}").into()),
        };
    }
    drop(gos);
    for b in bobs {
        b.await?;
    }
    // Alice's project/1 deltas of the last create may still be on their way.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for k in keepers {
        let o = k.await?;
        res.keeper_unsubscribed += o.unsubscribed;
        res.keeper_deltas += o.project_deltas;
        res.keeper_states += o.states;
        res.disconnected += u64::from(o.disconnected);
    }
    res.keeper_deltas_expected = (cfg.keepers * cfg.rounds * 2) as u64;
    Ok(res)
}

/// The `q` quantile (nearest rank) of `v`.
pub fn quantile(v: &[f64], q: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return 0.0;
    }
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// What the race probe found.
#[derive(Debug, Default)]
pub struct RaceResult {
    pub rounds: usize,
    /// Bob's subscribes answered with a state, in all.
    pub granted: u64,
    /// Subscribes refused (403 after a delete, or otherwise), by reason.
    pub refused: std::collections::BTreeMap<String, u64>,
    /// Subscriptions bob held at a delete (or was granted around it) that ended `REVOKED`.
    pub revoked: u64,
    /// Held or granted around a delete, and never ended (within 2 s): a leak.
    pub survived: u64,
    /// The rounds in which a subscription survived, and its context.
    pub survivors: Vec<(usize, String)>,
    /// The `statecast_subscriptions` gauge after each round minus what alice
    /// and carol hold (must be 0).
    pub gauge_excess: f64,
}

/// One of bob's churning connections: subscribe, unsubscribe, next context,
/// until `stop`; then whatever it holds must end `REVOKED` within 2 s.
/// Returns (granted, refusals, revoked, the contexts that survived).
async fn churn(
    mut c: Client,
    jobs: usize,
    offset: usize,
    stop: Arc<AtomicBool>,
) -> Result<(Client, u64, Vec<String>, u64, Vec<String>), BoxError> {
    let (mut granted, mut refused, mut revoked) = (0u64, Vec::new(), 0u64);
    let mut held: Option<String> = None;
    let mut k = offset;
    // Phase 1: churn.
    while !stop.load(Ordering::Relaxed) {
        let context = match held.take() {
            Some(context) => {
                c.send(json!({"type": "unsubscribe", "context": context})).await?;
                context
            }
            None => {
                k += 1;
                let job = (k % jobs) + 1;
                c.send(json!({"type": "subscribe", "channel": "job", "anchorId": job})).await?;
                format!("job/{job}")
            }
        };
        // The answer: a state (now held), an error (refused), or an unsubscribed.
        loop {
            let frame = c.recv_frame(Duration::from_secs(10)).await?.ok_or("no answer in 10 s")?;
            let v = frame.value()?;
            match v["type"].as_str() {
                Some("state") if v["context"] == context.as_str() => {
                    granted += 1;
                    held = Some(context.clone());
                    break;
                }
                Some("error") => {
                    refused.push(v["reason"].as_str().unwrap_or("?").to_owned());
                    break;
                }
                Some("unsubscribed") if v["context"] == context.as_str() => {
                    if v["reason"] == "REVOKED" {
                        revoked += 1;
                    }
                    break;
                }
                _ => {}
            }
        }
    }
    // Phase 2: what is held must end.
    let mut survivors = Vec::new();
    if let Some(context) = held {
        let until = Instant::now() + Duration::from_secs(2);
        let mut ended = false;
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            let Some(frame) = c.recv_frame(left).await? else { break };
            let v = frame.value()?;
            if v["type"] == "unsubscribed" && v["context"] == context.as_str() {
                revoked += u64::from(v["reason"] == "REVOKED");
                ended = true;
                break;
            }
        }
        if !ended {
            survivors.push(context.clone());
            // Leave it, so the next round starts clean.
            c.send(json!({"type": "unsubscribe", "context": context})).await?;
            let _ = c.recv_frame(Duration::from_secs(2)).await?;
        }
    }
    Ok((c, granted, refused, revoked, survivors))
}

/// Subscribes racing the delete: `conns` connections of bob subscribe to and
/// unsubscribe from `job/1` … `job/{jobs}` back to back while carol deletes
/// his membership; every subscription granted before or around the delete
/// must still end `REVOKED`. `rounds` times (the membership re-created in
/// between).
pub async fn race(
    bin: &Path,
    store: &StoreArg,
    conns: usize,
    jobs: usize,
    rounds: usize,
) -> Result<RaceResult, BoxError> {
    let jobs = jobs.clamp(2, MAX_DEMO_JOBS);
    let srv = Server::start_with(bin, store, &["--demo-jobs", &jobs.to_string()])?;
    let target = srv.target.clone();
    let ctxs: Vec<(&str, i64)> = (1..=jobs as i64).map(|j| ("job", j)).collect();
    // Alice keeps every job live, so bob's subscribes are answered at once.
    let mut alice = connect(&target, "alice").await?;
    subscribe_windowed(&mut alice, &ctxs).await?;
    let alice_stop = Arc::new(AtomicBool::new(false));
    let alice_task = keeper(alice, alice_stop.clone());
    let mut carol = connect(&target, "carol").await?;
    carol.subscribe("project", 1).await?;
    let mut bobs = Vec::with_capacity(conns);
    for _ in 0..conns {
        bobs.push(connect(&target, "bob").await?);
    }
    let mut res = RaceResult { rounds, ..Default::default() };
    let (mut member, mut write_id) = (2i64, 0i64);
    for round in 0..rounds {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks: Vec<_> = bobs
            .drain(..)
            .enumerate()
            .map(|(i, c)| tokio::spawn(churn(c, jobs, i * 7 + round, stop.clone())))
            .collect();
        // Let the churn get going, then delete in the middle of it.
        tokio::time::sleep(Duration::from_millis(150 + (round as u64 * 37) % 100)).await;
        write_id += 1;
        let answer = carol
            .write(json!({"type": "write", "writeId": write_id, "context": "project/1", "operation": "delete",
                "instanceType": "ProjectMember", "instanceId": member}))
            .await?;
        if answer["success"] != true {
            return Err(format!("carol's delete of ProjectMember {member} was refused: {answer}").into());
        }
        // Keep churning a little past the delete (those subscribes are refused).
        tokio::time::sleep(Duration::from_millis(50)).await;
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            let (c, granted, refused, revoked, survivors) = t.await??;
            res.granted += granted;
            for r in refused {
                *res.refused.entry(r).or_default() += 1;
            }
            res.revoked += revoked;
            res.survived += survivors.len() as u64;
            res.survivors.extend(survivors.into_iter().map(|s| (round, s)));
            bobs.push(c);
        }
        // Alice holds `jobs`, carol `project/1`; bob nothing now.
        let gauge = srv.metric("statecast_subscriptions").await?;
        res.gauge_excess += (gauge - (jobs + 1) as f64).max(0.0);
        write_id += 1;
        let answer = carol
            .write(json!({"type": "write", "writeId": write_id, "context": "project/1", "operation": "create",
                "instanceType": "ProjectMember", "parentType": "Project", "parentId": 1, "relationName": "members",
                "data": {"user": 2}}))
            .await?;
        member = match answer["instanceId"].as_i64() {
            Some(id) if answer["success"] == true => id,
            _ => return Err(format!("carol's create of bob's membership failed: {answer}").into()),
        };
        if round % 10 == 9 {
            eprintln!("revocation race: {} rounds, {res:?}", round + 1);
        }
    }
    alice_stop.store(true, Ordering::Relaxed);
    let alice = alice_task.await?;
    if alice.unsubscribed > 0 {
        return Err(format!("alice's subscriptions ended {} times", alice.unsubscribed).into());
    }
    Ok(res)
}
