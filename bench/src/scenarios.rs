//! The other scenarios: durable writes, initial load, many contexts, a
//! reconnect storm and memory per idle connection.

use crate::client::{BoxError, Client, Kind, Target, View, apply};
use crate::proc_stats;
use crate::server::{Server, StoreArg};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde_json::json;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The most jobs `statecast-server --demo-jobs` seeds.
pub const MAX_DEMO_JOBS: usize = 500;

pub(crate) fn hist() -> Histogram<u64> {
    Histogram::<u64>::new(3).unwrap_or_else(|_| unreachable!("3 significant digits are valid"))
}

pub(crate) fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

// ---------------------------------------------------------------- writes

/// What a closed-loop writer does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Workload {
    /// Creates tasks in `job/1` (alice or bob, in turn): every commit takes
    /// the next id of `Task`.
    Creates,
    /// Alice or bob creates one task in `job/1` assigned to themselves, then
    /// saves its notes again and again: commits touch different rows of one
    /// context.
    Saves,
    /// Alice saves task 1's notes again and again: every writer on one row.
    HotRow,
}

/// Writer `i` writes into `job/{job}` through `target` back to back, one
/// write in flight, for `length`: the answer latency of each, and how many
/// were refused or went unanswered.
/// The row every writer of [`Workload::HotRow`] saves (alice may, in the demo).
const HOT_TASK: i64 = 1;

pub(crate) async fn closed_loop_writes(
    kind: Kind,
    target: Target,
    (i, job): (usize, i64),
    length: Duration,
    workload: Workload,
) -> (Histogram<u64>, u64, u64) {
    let mut h = hist();
    let (mut refused, mut unanswered) = (0u64, 0u64);
    let Ok(mut w) = Client::connect(kind, &target).await else {
        return (h, refused, 1);
    };
    let (user, user_id) = if i.is_multiple_of(2) || workload == Workload::HotRow { ("alice", 1) } else { ("bob", 2) };
    if w.hello(user).await.is_err() || w.subscribe("job", job).await.is_err() {
        return (h, refused, 1);
    }
    let context = format!("job/{job}");
    let create = |write_id: u64| {
        json!({"type": "write", "writeId": write_id, "operation": "create", "instanceType": "Task",
            "parentType": "Job", "parentId": job, "relationName": "tasks", "context": context,
            "data": {"name": format!("bench {i}-{write_id}"), "assignee": user_id}})
    };
    let mut own_task = (workload == Workload::HotRow).then_some(HOT_TASK);
    if workload == Workload::Saves {
        match write_and_wait(&mut w, &create(1)).await {
            Some(answer) if answer.success == Some(true) => own_task = answer.instance_id,
            Some(_) => return (h, 1, 0),
            None => return (h, 0, 1),
        }
    }
    let end = Instant::now() + length;
    let mut write_id = 1u64;
    while Instant::now() < end {
        write_id += 1;
        let message = match own_task {
            Some(id) => json!({"type": "write", "writeId": write_id, "operation": "save", "instanceType": "Task",
                "instanceId": id, "context": context, "data": {"notes": format!("bench {i}-{write_id}")}}),
            None => create(write_id),
        };
        let t0 = Instant::now();
        match write_and_wait(&mut w, &message).await {
            Some(answer) => {
                if answer.success != Some(true) {
                    refused += 1;
                }
            }
            None => {
                unanswered += 1;
                break;
            }
        }
        let _ = h.record(t0.elapsed().as_micros() as u64);
    }
    (h, refused, unanswered)
}

/// Sends one write and reads frames until its `writeResponse` (`None`: the
/// connection failed or went quiet for 10 s).
async fn write_and_wait(w: &mut Client, message: &serde_json::Value) -> Option<crate::client::Msg> {
    w.send(message.clone()).await.ok()?;
    loop {
        match w.recv_frame(Duration::from_secs(10)).await {
            // Every other frame is a delta (most of them, on a shared context).
            Ok(Some(f)) if !f.mentions("writeResponse") => continue,
            Ok(Some(f)) => match f.decode() {
                Ok(m) if m.ty == "writeResponse" => return Some(m),
                _ => continue,
            },
            _ => return None,
        }
    }
}

#[derive(Debug)]
pub struct WritesResult {
    pub per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub refused: u64,
    pub unanswered: u64,
    pub sub_frames: u64,
    pub sub_disconnected: u64,
    /// Server CPU time per confirmed write (µs).
    pub server_us_per_write: f64,
    /// The generator's CPU, in cores (1.0 = one core busy).
    pub bench_cpu: f64,
}

/// Which contexts the closed-loop writers write into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spread {
    /// All in `job/1`: every commit is delivered to every writer (a write
    /// must come from a connection subscribed to its context), so `c`
    /// writers also make a fan-out of `c`.
    Shared,
    /// Writer `i` in `job/{i+1}` (the server seeds `c` jobs): each commit
    /// reaches its writer only, plus the subscribers of that context.
    Own,
    /// Every writer saves the same row, task 1 of `job/1`, as alice: the
    /// commits take turns on it (and each reaches every writer).
    HotRow,
}

impl Spread {
    pub fn label(self) -> &'static str {
        match self {
            Spread::Shared => "one shared",
            Spread::Own => "one per writer",
            Spread::HotRow => "one row",
        }
    }
}

/// `c` connections each create tasks back to back (one in flight each) into
/// the contexts `spread` gives them, while `subs` other connections
/// subscribe (spread over the same contexts) and read.
pub async fn writes(
    bin: &Path,
    store: &StoreArg,
    kind: Kind,
    (c, spread): (usize, Spread),
    subs: usize,
    length: Duration,
) -> Result<WritesResult, BoxError> {
    let jobs = match spread {
        Spread::Shared | Spread::HotRow => 1,
        Spread::Own => c.clamp(1, MAX_DEMO_JOBS),
    };
    let srv = Server::start_with(bin, store, &["--demo-jobs", &jobs.max(2).to_string()])?;
    let stop = Arc::new(AtomicBool::new(false));
    let sub_frames = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    let mut sub_disconnected = 0;
    for sub in crate::fanout::subscribers_over(kind, &srv.target, subs, jobs).await {
        let Ok((mut client, _, _)) = sub else {
            sub_disconnected += 1;
            continue;
        };
        let (stop, frames) = (stop.clone(), sub_frames.clone());
        readers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match client.recv_frame(Duration::from_millis(500)).await {
                    Ok(Some(_)) => {
                        frames.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(None) => {}
                    Err(_) => return true,
                }
            }
            false
        }));
    }
    let mut tasks = Vec::new();
    for i in 0..c {
        let job = (i % jobs) as i64 + 1;
        let workload = if spread == Spread::HotRow { Workload::HotRow } else { Workload::Creates };
        tasks.push(tokio::spawn(closed_loop_writes(kind, srv.target.clone(), (i, job), length, workload)));
    }
    let cpu_before = (proc_stats::cpu_seconds(srv.pid()), proc_stats::cpu_seconds(std::process::id()));
    let start = Instant::now();
    let mut h = hist();
    let (mut refused, mut unanswered) = (0, 0);
    for t in tasks {
        let (th, r, u) = t.await?;
        h.add(th)?;
        refused += r;
        unanswered += u;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu_after = (proc_stats::cpu_seconds(srv.pid()), proc_stats::cpu_seconds(std::process::id()));
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        sub_disconnected += u64::from(r.await?);
    }
    Ok(WritesResult {
        per_sec: h.len() as f64 / elapsed,
        p50_ms: ms(&h, 0.5),
        p99_ms: ms(&h, 0.99),
        refused,
        unanswered,
        sub_frames: sub_frames.load(Ordering::Relaxed),
        sub_disconnected,
        server_us_per_write: (cpu_after.0 - cpu_before.0) * 1e6 / h.len().max(1) as f64,
        bench_cpu: (cpu_after.1 - cpu_before.1) / elapsed,
    })
}

// ---------------------------------------------------------------- initial load

#[derive(Debug)]
pub struct LoadResult {
    pub rows: usize,
    pub runs: usize,
    pub min_ms: f64,
    pub median_ms: f64,
    pub max_ms: f64,
    pub seed_rows_per_sec: f64,
}

/// Grows one context (job 1) through each size in `sizes` (ascending; batches
/// of 1,000 creates), and at each size, with the context cold (no
/// subscriber), times fresh subscribes that read the whole state.
pub async fn initial_load(bin: &Path, store: &StoreArg, sizes: &[usize]) -> Result<Vec<LoadResult>, BoxError> {
    let srv = Server::start(bin, store)?;
    let mut out = Vec::new();
    let mut made = 0usize;
    let mut write_id = 0;
    for &rows in sizes {
        let mut seeder = Client::connect(Kind::Ws, &srv.target).await?;
        seeder.hello("alice").await?;
        seeder.subscribe("job", 1).await?;
        let seeding = Instant::now();
        let from = made;
        while made < rows {
            let n = (rows - made).min(1_000);
            let ops: Vec<_> = (0..n)
                .map(|i| {
                    json!({"operation": "create", "instanceType": "Task", "parentType": "Job", "parentId": 1,
                    "relationName": "tasks", "data": {"name": format!("load {}", made + i), "notes": "x".repeat(40)}})
                })
                .collect();
            write_id += 1;
            let r = seeder
                .write(
                    json!({"type": "write", "writeId": write_id, "operation": "batch", "context": "job/1", "ops": ops}),
                )
                .await?;
            if r["success"] != true {
                return Err(format!("seeding failed: {r}").into());
            }
            made += n;
        }
        let seed_rows_per_sec = (made - from) as f64 / seeding.elapsed().as_secs_f64().max(1e-9);
        drop(seeder);
        let runs = if rows >= 50_000 { 3 } else { 5 };
        let mut times = Vec::new();
        let mut got = 0;
        for _ in 0..runs {
            // The last subscriber left: the next subscribe loads the context from the store.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let mut c = Client::connect(Kind::Ws, &srv.target).await?;
            c.hello("bob").await?;
            let t0 = Instant::now();
            got = c.subscribe_all("job", 1).await?;
            times.push(t0.elapsed().as_secs_f64() * 1000.0);
        }
        times.sort_by(f64::total_cmp);
        out.push(LoadResult {
            rows: got,
            runs: times.len(),
            min_ms: times.first().copied().unwrap_or(0.0),
            median_ms: times.get(times.len() / 2).copied().unwrap_or(0.0),
            max_ms: times.last().copied().unwrap_or(0.0),
            seed_rows_per_sec,
        });
    }
    Ok(out)
}

// ---------------------------------------------------------------- many contexts

#[derive(Debug, Default)]
pub struct ContextsResult {
    pub contexts: usize,
    pub clients: usize,
    pub sent: u64,
    pub ok: u64,
    pub denied: u64,
    pub denied_expected: u64,
    pub other_errors: u64,
    /// The other errors by code and reason.
    pub other_reasons: std::collections::BTreeMap<String, u64>,
    pub unanswered: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub deltas: u64,
    pub chain_violations: u64,
    pub disconnected: u64,
    pub views_differing: u64,
    pub server_cpu: f64,
    pub bench_cpu: f64,
}

/// `m` contexts (`job/1` … `job/{m}`, the server seeds them with
/// `--demo-jobs`), `k` clients in each, writing `total_rate` times a second
/// between them (open loop, answer latency from the intended time) and each
/// reading its context's deltas. Before the run alice creates in every
/// context one task assigned to herself, the one her saves go to. Three in
/// four clients are alice (a project member): create a task, save the
/// context's task's notes, delete a task she created, in turn. One in four is
/// carol (an admin, not a member of the project): creates, all denied (403).
pub async fn contexts(
    bin: &Path,
    store: &StoreArg,
    (m, k): (usize, usize),
    total_rate: u64,
    length: Duration,
) -> Result<ContextsResult, BoxError> {
    let (m, k) = (m.clamp(1, MAX_DEMO_JOBS), k.max(1));
    let srv = Server::start_with(bin, store, &["--demo-jobs", &m.max(2).to_string()])?;
    let targets = save_targets(&srv.target, m).await?;
    let rate = total_rate.max(1) as f64 / (m * k) as f64;
    let total = (rate * length.as_secs_f64()).round().max(1.0) as usize;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let done = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for ctx in 0..m {
        for i in 0..k {
            let job = ctx as i64 + 1;
            let denied = i % 4 == 3;
            let mut c = Client::connect(Kind::Ws, &srv.target).await?;
            c.hello(if denied { "carol" } else { "alice" }).await?;
            let (seq, view) = c.subscribe_view("job", job).await?;
            clients.push((job, denied, c, seq, view));
        }
    }
    let cpu_before = (proc_stats::cpu_seconds(srv.pid()), proc_stats::cpu_seconds(std::process::id()));
    let start = Instant::now();
    let mut tasks = Vec::new();
    let n_clients = clients.len() as u32;
    for (n, (job, denied, c, seq0, view0)) in clients.into_iter().enumerate() {
        // Clients are staggered over one interval, so the load is even rather than M × K writes at once.
        let phase = interval * n as u32 / n_clients.max(1);
        let done = done.clone();
        let (mut tx, mut rx) = c.split();
        let created: Arc<Mutex<Vec<i64>>> = Arc::default();
        let created_rx = created.clone();
        // The reader: answers (latency from intended time), deltas (chain, view).
        let reader = tokio::spawn(async move {
            let mut h = hist();
            let (mut ok, mut denied_n, mut answered, mut deltas, mut violations) = (0, 0, 0, 0, 0);
            let mut other: Vec<String> = Vec::new();
            let mut disconnected = false;
            let (mut last, mut view) = (seq0, view0);
            let deadline = start + length + Duration::from_secs(15);
            while Instant::now() < deadline {
                let frame = match rx.recv_timeout(Duration::from_millis(500)).await {
                    Ok(Some(f)) => f,
                    Ok(None) if done.load(Ordering::Relaxed) && answered >= total => break,
                    Ok(None) => continue,
                    Err(_) => {
                        disconnected = true;
                        break;
                    }
                };
                let Ok(msg) = frame.decode() else { continue };
                match msg.ty.as_str() {
                    "writeResponse" => {
                        answered += 1;
                        if let Some(id) = msg.write_id {
                            let intended = phase + interval * (id.saturating_sub(1)) as u32;
                            let _ = h.record(start.elapsed().saturating_sub(intended).as_micros() as u64);
                        }
                        match (msg.success, msg.error) {
                            (Some(true), _) => {
                                ok += 1;
                                if let Some(id) = msg.instance_id
                                    && let Ok(mut v) = created_rx.lock()
                                {
                                    v.push(id);
                                }
                            }
                            (_, Some(e)) if e.code == 403 => denied_n += 1,
                            (_, e) => other
                                .push(e.map_or_else(|| "no error".to_owned(), |e| format!("{} {}", e.code, e.reason))),
                        }
                    }
                    "delta" => {
                        deltas += 1;
                        if let (Some(seq), Some(prev)) = (msg.seq, msg.prev) {
                            if prev != last || seq <= last {
                                violations += 1;
                            }
                            last = last.max(seq);
                        }
                        apply(&mut view, &msg.changes);
                    }
                    _ => {}
                }
            }
            (h, ok, denied_n, other, answered, deltas, violations, disconnected, view)
        });
        let task_id = targets[(job - 1) as usize];
        let ctx = format!("job/{job}");
        let writer = tokio::spawn(async move {
            let mut sent = 0u64;
            for i in 0..total {
                let offset = phase + interval * i as u32;
                tokio::time::sleep_until((start + offset).into()).await;
                let write_id = i + 1;
                let save = json!({"type": "write", "writeId": write_id, "operation": "save", "instanceType": "Task",
                    "instanceId": task_id, "context": ctx, "data": {"notes": format!("c{n}w{write_id}")}});
                let create = json!({"type": "write", "writeId": write_id, "operation": "create",
                    "instanceType": "Task", "parentType": "Job", "parentId": job, "relationName": "tasks",
                    "context": ctx, "data": {"name": format!("c{write_id}"), "notes": "new"}});
                let msg = match (denied, i % 3) {
                    (true, _) | (false, 0) => create,
                    (false, 1) => save,
                    _ => match created.lock().ok().and_then(|mut v| v.pop()) {
                        Some(id) => json!({"type": "write", "writeId": write_id, "operation": "delete",
                            "instanceType": "Task", "instanceId": id, "context": ctx}),
                        None => save,
                    },
                };
                if tx.send(&msg).await.is_err() {
                    break;
                }
                sent += 1;
            }
            (sent, tx)
        });
        tasks.push((denied, reader, writer));
    }
    let mut res = ContextsResult { contexts: m, clients: m * k, ..Default::default() };
    let mut h = hist();
    let mut views: Vec<(i64, View)> = Vec::new();
    let mut writers = Vec::new();
    for (denied, reader, writer) in tasks {
        let (sent, tx) = writer.await?;
        res.sent += sent;
        if denied {
            res.denied_expected += sent;
        }
        writers.push((reader, tx));
    }
    done.store(true, Ordering::Relaxed);
    for (i, (reader, _tx)) in writers.into_iter().enumerate() {
        let (th, ok, den, other, answered, deltas, viol, disc, view) = reader.await?;
        h.add(th)?;
        res.ok += ok;
        res.denied += den;
        res.other_errors += other.len() as u64;
        for reason in other {
            *res.other_reasons.entry(reason).or_default() += 1;
        }
        res.unanswered += total.saturating_sub(answered) as u64;
        res.deltas += deltas;
        res.chain_violations += viol;
        res.disconnected += u64::from(disc);
        views.push(((i / k) as i64 + 1, view));
    }
    let cpu_after = (proc_stats::cpu_seconds(srv.pid()), proc_stats::cpu_seconds(std::process::id()));
    res.server_cpu = cpu_after.0 - cpu_before.0;
    res.bench_cpu = cpu_after.1 - cpu_before.1;
    let mut checker = Client::connect(Kind::Ws, &srv.target).await?;
    checker.hello("bob").await?;
    for job in 1..=m as i64 {
        let (_, truth) = checker.subscribe_view("job", job).await?;
        res.views_differing += views.iter().filter(|(j, v)| *j == job && *v != truth).count() as u64;
    }
    res.p50_ms = ms(&h, 0.5);
    res.p99_ms = ms(&h, 0.99);
    res.max_ms = h.max() as f64 / 1000.0;
    Ok(res)
}

/// Alice creates one task assigned to herself in each of `job/1` … `job/{m}`:
/// the task her saves in that context go to. Their ids, by job.
async fn save_targets(target: &Target, m: usize) -> Result<Vec<i64>, BoxError> {
    let mut alice = Client::connect(Kind::Ws, target).await?;
    alice.hello("alice").await?;
    let mut ids = Vec::with_capacity(m);
    for job in 1..=m as i64 {
        alice.subscribe("job", job).await?;
        let r = alice
            .write(json!({"type": "write", "writeId": job, "operation": "create", "instanceType": "Task",
                "parentType": "Job", "parentId": job, "relationName": "tasks", "context": format!("job/{job}"),
                "data": {"name": "save target", "assignee": 1}}))
            .await?;
        match r["instanceId"].as_i64() {
            Some(id) if r["success"] == true => ids.push(id),
            _ => return Err(format!("creating the save target of job/{job} failed: {r}").into()),
        }
    }
    Ok(ids)
}

// ---------------------------------------------------------------- reconnect storm

#[derive(Debug, Default)]
pub struct StormResult {
    pub clients: usize,
    pub reconnected: u64,
    pub failed: u64,
    pub live_after: u64,
    pub reconnect_p50_ms: f64,
    pub reconnect_p99_ms: f64,
    pub reconnect_max_ms: f64,
    pub all_back_ms: f64,
    pub writes: u64,
    pub write_p99_ms: f64,
    pub write_max_ms: f64,
    pub writes_failed: u64,
    /// Connect, hello → welcome, subscribe → state: p50 and max.
    pub phase_p50_ms: [f64; 3],
    pub phase_max_ms: [f64; 3],
}

/// `n` clients subscribe to `job/1` while a writer saves task 1 at `rate`/s
/// (open loop; answer latency from the intended time). After one second
/// every client drops its connection and all reconnect at once (connect,
/// hello, subscribe); each then waits for one live delta.
pub async fn storm(bin: &Path, store: &StoreArg, n: usize, rate: u64) -> Result<StormResult, BoxError> {
    let srv = Server::start(bin, store)?;
    let target = srv.target.clone();
    let mut res = StormResult { clients: n, ..Default::default() };
    let mut first = Vec::new();
    for sub in crate::fanout::subscribers(Kind::Ws, &target, n).await {
        match sub {
            Ok((c, _, _)) => first.push(c),
            Err(_) => res.failed += 1,
        }
    }
    let mut writer = Client::connect(Kind::Ws, &target).await?;
    writer.hello("alice").await?;
    writer.subscribe("job", 1).await?;
    let (mut tx, mut rx) = writer.split();
    let interval = Duration::from_micros(1_000_000 / rate.max(1));
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let stop_w = stop.clone();
    let writer = tokio::spawn(async move {
        let mut sent = 0u64;
        while !stop_w.load(Ordering::Relaxed) && sent < 1_000_000 {
            let offset = interval * sent as u32;
            tokio::time::sleep_until((start + offset).into()).await;
            sent += 1;
            let msg = json!({"type": "write", "writeId": sent, "operation": "save", "instanceType": "Task",
                "instanceId": 1, "context": "job/1", "data": {"notes": format!("s{sent}")}});
            if tx.send(&msg).await.is_err() {
                break;
            }
        }
        sent
    });
    let answers = tokio::spawn(async move {
        let mut h = hist();
        let mut failed = 0u64;
        while let Ok(Some(f)) = rx.recv_timeout(Duration::from_secs(5)).await {
            if let Ok(m) = f.decode()
                && m.ty == "writeResponse"
            {
                if m.success != Some(true) {
                    failed += 1;
                }
                if let Some(id) = m.write_id {
                    let intended = interval * (id.saturating_sub(1)) as u32;
                    let _ = h.record(start.elapsed().saturating_sub(intended).as_micros() as u64);
                }
            }
        }
        (h, failed)
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(first);
    let storm_start = Instant::now();
    let mut joins = Vec::with_capacity(n);
    for i in 0..n {
        let target = target.clone();
        joins.push(tokio::spawn(async move {
            let t0 = Instant::now();
            let result = tokio::time::timeout(Duration::from_secs(30), async {
                let mut c = Client::connect(Kind::Ws, &target).await?;
                let connected = t0.elapsed();
                c.hello(if i % 2 == 0 { "bob" } else { "carol" }).await?;
                let welcomed = t0.elapsed();
                c.subscribe("job", 1).await?;
                let took = t0.elapsed();
                let phases = (connected, welcomed - connected, took - welcomed);
                // Live again: the next delta arrives.
                let mut live = false;
                let until = Instant::now() + Duration::from_secs(5);
                while Instant::now() < until {
                    match c.recv_frame(Duration::from_secs(1)).await? {
                        Some(f) if f.decode().is_ok_and(|m| m.ty == "delta") => {
                            live = true;
                            break;
                        }
                        _ => {}
                    }
                }
                Ok::<_, BoxError>((took, live, phases))
            })
            .await;
            match result {
                Ok(Ok(v)) => Some(v),
                _ => None,
            }
        }));
    }
    let mut h = hist();
    let mut phase = [hist(), hist(), hist()];
    let mut all_back = Duration::ZERO;
    for j in joins {
        match j.await? {
            Some((took, live, (connect, hello, subscribe))) => {
                let _ = phase[0].record(connect.as_micros() as u64);
                let _ = phase[1].record(hello.as_micros() as u64);
                let _ = phase[2].record(subscribe.as_micros() as u64);
                res.reconnected += 1;
                res.live_after += u64::from(live);
                all_back = all_back.max(took);
                let _ = h.record(took.as_micros() as u64);
            }
            None => res.failed += 1,
        }
    }
    let _ = storm_start;
    res.phase_p50_ms = [ms(&phase[0], 0.5), ms(&phase[1], 0.5), ms(&phase[2], 0.5)];
    res.phase_max_ms = [ms(&phase[0], 1.0), ms(&phase[1], 1.0), ms(&phase[2], 1.0)];
    stop.store(true, Ordering::Relaxed);
    res.writes = writer.await?;
    let (wh, wf) = answers.await?;
    res.writes_failed = wf + res.writes.saturating_sub(wh.len());
    res.reconnect_p50_ms = ms(&h, 0.5);
    res.reconnect_p99_ms = ms(&h, 0.99);
    res.reconnect_max_ms = h.max() as f64 / 1000.0;
    res.all_back_ms = all_back.as_secs_f64() * 1000.0;
    res.write_p99_ms = ms(&wh, 0.99);
    res.write_max_ms = wh.max() as f64 / 1000.0;
    Ok(res)
}

// ---------------------------------------------------------------- memory

#[derive(Debug)]
pub struct MemoryStep {
    pub connections: usize,
    pub failed: usize,
    pub rss_base: u64,
    pub rss: u64,
}

impl MemoryStep {
    pub fn per_connection(&self) -> f64 {
        self.rss.saturating_sub(self.rss_base) as f64 / self.connections.max(1) as f64
    }
}

/// Opens idle connections (hello + subscribe `job/1`, then nothing) up to
/// each count in `steps`, from source addresses 127.0.0.2 … 127.0.0.9 in
/// turn, and reads the server's RSS after each step settles.
pub async fn memory(srv: &Server, steps: &[usize]) -> Result<Vec<MemoryStep>, BoxError> {
    let target: Target = srv.target.clone();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_base = proc_stats::rss_bytes(srv.pid());
    let mut held = Vec::new();
    let mut failed = 0;
    let mut out = Vec::new();
    let mut opened = 0usize;
    for &step in steps {
        let more = step.saturating_sub(opened);
        let results: Vec<Result<Client, BoxError>> = futures_util::stream::iter(opened..opened + more)
            .map(|i| {
                let target = target.clone();
                async move {
                    let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i % 8) as u8));
                    let mut c = Client::connect_from(Kind::Ws, &target, Some(source)).await?;
                    c.hello("bob").await?;
                    c.subscribe("job", 1).await?;
                    Ok(c)
                }
            })
            .buffer_unordered(64)
            .collect()
            .await;
        for r in results {
            match r {
                Ok(c) => held.push(c),
                Err(e) => {
                    if failed == 0 {
                        eprintln!("memory: a connection failed: {e}");
                    }
                    failed += 1;
                }
            }
        }
        opened = step;
        tokio::time::sleep(Duration::from_secs(1)).await;
        out.push(MemoryStep { connections: held.len(), failed, rss_base, rss: proc_stats::rss_bytes(srv.pid()) });
    }
    Ok(out)
}
