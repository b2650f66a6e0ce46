//! Hot-context fan-out, against the real server or the bare baseline.
//!
//! One writer saves task 1 of `job/1` on a fixed schedule (open loop); the
//! intended send time rides in the row's `notes`, and every subscriber
//! measures each delta's arrival against it. Each subscriber also checks its
//! `seq`/`prev` chain and keeps a view of the rows; at the end a fresh
//! subscribe gives the server's view and every subscriber's is compared.

use crate::client::{BoxError, Client, Kind, Target, View, apply};
use crate::proc_stats;
use crate::server::Server;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How many connections are set up at once.
const SETUP_CONCURRENCY: usize = 64;

#[derive(Debug, Clone, Default)]
pub struct FanoutResult {
    pub deliveries_per_sec: f64,
    pub expected: u64,
    pub received: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Subscribers whose connection ended early (or failed to set up).
    pub disconnected: u64,
    /// `prev` that is not the last `seq` seen (a gap), or a `seq` not above it (a duplicate).
    pub chain_violations: u64,
    /// Subscribers whose final view differs from a fresh subscribe's (`None`: not checked).
    pub views_differing: Option<u64>,
    pub server_cpu: f64,
    pub bench_cpu: f64,
    /// CPU seconds the rest of the machine used meanwhile (from /proc/stat).
    pub other_cpu: f64,
    pub elapsed: f64,
    /// How late the writer's sends completed against their intended times.
    pub send_lag_p99_ms: f64,
    pub send_lag_max_ms: f64,
    pub writes_refused: u64,
    /// The refusals by error code, e.g. `12×503`.
    pub refusal_codes: String,
    pub writes_unanswered: u64,
    pub delta_bytes: f64,
}

impl FanoutResult {
    /// Server CPU microseconds per delivered message.
    pub fn server_us_per_delivery(&self) -> f64 {
        self.server_cpu * 1e6 / self.received.max(1) as f64
    }
}

pub(crate) struct SubOutcome {
    pub hist: Histogram<u64>,
    pub seen: u64,
    pub violations: u64,
    pub view: View,
    pub disconnected: bool,
    pub bytes: u64,
    pub frames: u64,
}

/// Subscribes `n` clients to `job/1`, `SETUP_CONCURRENCY` at a time.
pub async fn subscribers(kind: Kind, target: &Target, n: usize) -> Vec<Result<(Client, u64, View), BoxError>> {
    subscribers_over(kind, target, n, 1).await
}

/// Subscribes `n` clients spread over `job/1` … `job/{jobs}` (client `i` to
/// `job/{i % jobs + 1}`), `SETUP_CONCURRENCY` at a time.
pub async fn subscribers_over(
    kind: Kind,
    target: &Target,
    n: usize,
    jobs: usize,
) -> Vec<Result<(Client, u64, View), BoxError>> {
    let jobs = jobs.max(1);
    futures_util::stream::iter(0..n)
        .map(|i| {
            let target = target.clone();
            async move {
                let mut c = Client::connect(kind, &target).await?;
                c.hello(if i % 2 == 0 { "bob" } else { "carol" }).await?;
                let (seq, view) = c.subscribe_view("job", (i % jobs) as i64 + 1).await?;
                Ok((c, seq, view))
            }
        })
        .buffer_unordered(SETUP_CONCURRENCY)
        .collect()
        .await
}

/// Follows one subscriber's deltas until it has seen `total` writes (or the
/// run's deadline, or the writer is done and the line is quiet): latency per
/// write from the intended send time in `notes`, its seq/prev chain, its view.
pub(crate) fn follow(
    mut c: Client,
    seq0: u64,
    mut view: View,
    total: usize,
    length: Duration,
    writer_done: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<SubOutcome> {
    tokio::spawn(async move {
        let mut out = SubOutcome {
            hist: Histogram::<u64>::new(3).unwrap_or_else(|_| unreachable!("3 significant digits are valid")),
            seen: 0,
            violations: 0,
            view: View::new(),
            disconnected: false,
            bytes: 0,
            frames: 0,
        };
        let mut last = seq0;
        // Room for an overloaded run to drain its backlog; what is still missing then counts as lost.
        let deadline = Instant::now() + length * 4 + Duration::from_secs(15);
        while (out.seen as usize) < total && Instant::now() < deadline {
            let frame = match c.recv_frame(Duration::from_secs(2)).await {
                Ok(Some(f)) => f,
                Ok(None) if writer_done.load(Ordering::Relaxed) => break,
                Ok(None) => continue,
                Err(_) => {
                    out.disconnected = true;
                    break;
                }
            };
            let Ok(msg) = frame.decode() else { continue };
            if msg.ty != "delta" {
                continue;
            }
            out.bytes += frame.len() as u64;
            out.frames += 1;
            if let (Some(seq), Some(prev)) = (msg.seq, msg.prev) {
                if prev != last || seq <= last {
                    out.violations += 1;
                }
                last = last.max(seq);
            }
            let now = crate::micros_now();
            for change in &msg.changes {
                if let Some(sent) = change.notes.as_deref().and_then(|s| s.parse::<u64>().ok()) {
                    let _ = out.hist.record(now.saturating_sub(sent).max(1));
                    out.seen += 1;
                }
            }
            apply(&mut view, &msg.changes);
        }
        out.view = view;
        out
    })
}

/// What the open-loop writer reports: how late its sends were, the refusals
/// by code and how many writes went unanswered.
pub(crate) struct WriterOutcome {
    pub lag: Histogram<u64>,
    pub refused: std::collections::BTreeMap<u16, u64>,
    pub unanswered: u64,
}

/// Saves task 1 of `job/1` as alice (its assignee) through `target` `total`
/// times at `rate`/s on a fixed schedule (open loop), the intended send time
/// (µs) in `notes`; sets `writer_done` after the last send.
pub(crate) async fn open_loop_writer(
    kind: Kind,
    target: &Target,
    rate: u64,
    total: usize,
    writer_done: &AtomicBool,
) -> Result<WriterOutcome, BoxError> {
    open_loop_writer_as(kind, target, "alice", 1, rate, total, writer_done).await
}

/// [`open_loop_writer`] as the user of `token`, saving task `task` of `job/1`.
pub(crate) async fn open_loop_writer_as(
    kind: Kind,
    target: &Target,
    token: &str,
    task: i64,
    rate: u64,
    total: usize,
    writer_done: &AtomicBool,
) -> Result<WriterOutcome, BoxError> {
    let mut writer = Client::connect(kind, target).await?;
    writer.hello(token).await?;
    writer.subscribe("job", 1).await?;
    let (mut tx, mut rx) = writer.split();
    // Drain the writer's own deltas and answers so its queue never fills.
    let drain = tokio::spawn(async move {
        let mut answered = 0usize;
        let mut refused = std::collections::BTreeMap::<u16, u64>::new();
        while answered < total {
            match rx.recv_timeout(Duration::from_secs(20)).await {
                Ok(Some(f)) => {
                    if let Ok(m) = f.decode()
                        && m.ty == "writeResponse"
                    {
                        answered += 1;
                        if m.success != Some(true) {
                            *refused.entry(m.error.map_or(0, |e| e.code)).or_default() += 1;
                        }
                    }
                }
                _ => break,
            }
        }
        (refused, (total - answered.min(total)) as u64)
    });
    let mut lag = Histogram::<u64>::new(3)?;
    let interval = Duration::from_micros(1_000_000 / rate.max(1));
    let start = Instant::now();
    let wall_start = crate::micros_now();
    for i in 0..total {
        let offset = interval * i as u32;
        tokio::time::sleep_until((start + offset).into()).await;
        let sent = wall_start + offset.as_micros() as u64;
        tx.send(&json!({"type": "write", "writeId": i + 1, "operation": "save", "instanceType": "Task",
                "instanceId": task, "context": "job/1", "data": {"notes": sent.to_string()}}))
            .await?;
        let _ = lag.record((start.elapsed().saturating_sub(offset)).as_micros() as u64);
    }
    writer_done.store(true, Ordering::Relaxed);
    let (refused, unanswered) = drain.await?;
    Ok(WriterOutcome { lag, refused, unanswered })
}

/// The refusals by error code, e.g. `12×503`.
pub(crate) fn refusal_codes(refused: &std::collections::BTreeMap<u16, u64>) -> String {
    refused.iter().map(|(code, n)| format!("{n}×{code}")).collect::<Vec<_>>().join(" ")
}

/// One fan-out run: `n` subscribers, `rate` writes/s for `length`.
pub async fn run(
    srv: &Server,
    kind: Kind,
    n: usize,
    rate: u64,
    length: Duration,
    check_views: bool,
) -> Result<FanoutResult, BoxError> {
    let target = srv.target.clone();
    let subs = subscribers(kind, &target, n).await;
    run_with(srv, kind, subs, ("alice", 1), rate, length, check_views, false).await
}

/// Subscribes one client per token to `job/1`, `SETUP_CONCURRENCY` at a time.
pub(crate) async fn subscribers_as(
    kind: Kind,
    target: &Target,
    tokens: &[String],
) -> Vec<Result<(Client, u64, View), BoxError>> {
    futures_util::stream::iter(tokens.iter().cloned())
        .map(|token| {
            let target = target.clone();
            async move {
                let mut c = Client::connect(kind, &target).await?;
                c.hello(&token).await?;
                let (seq, view) = c.subscribe_view("job", 1).await?;
                Ok((c, seq, view))
            }
        })
        .buffer_unordered(SETUP_CONCURRENCY)
        .collect()
        .await
}

/// One fan-out run over subscribers already set up (`subs`, all of `job/1`):
/// `writer` = (token, task id) saves that task at `rate` writes/s for `length`.
/// With `writer_thread`, the writer (and the drain of its answers) runs on an
/// OS thread of its own, not among the subscribers' tasks: when they fall
/// behind at saturation, its answers are still read and it is not closed as
/// a slow consumer.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run_with(
    srv: &Server,
    kind: Kind,
    subs: Vec<Result<(Client, u64, View), BoxError>>,
    writer: (&str, i64),
    rate: u64,
    length: Duration,
    check_views: bool,
    writer_thread: bool,
) -> Result<FanoutResult, BoxError> {
    let target = srv.target.clone();
    let n = subs.len();
    let total = (rate * length.as_secs()) as usize;
    let writer_done = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    let mut setup_failed = 0u64;
    for sub in subs {
        let Ok((c, seq0, view)) = sub else {
            setup_failed += 1;
            continue;
        };
        tasks.push(follow(c, seq0, view, total, length, writer_done.clone()));
    }
    let cpu_before = (proc_stats::cpu_seconds(srv.pid()), proc_stats::cpu_seconds(std::process::id()));
    let machine_before = proc_stats::machine_busy_seconds();
    let start = Instant::now();
    let writer = if writer_thread {
        let (token, task, target, done) = (writer.0.to_owned(), writer.1, target.clone(), writer_done.clone());
        let thread = std::thread::spawn(move || -> Result<WriterOutcome, BoxError> {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(open_loop_writer_as(kind, &target, &token, task, rate, total, &done))
        });
        tokio::task::spawn_blocking(move || thread.join()).await?.map_err(|_| "the writer thread panicked")??
    } else {
        open_loop_writer_as(kind, &target, writer.0, writer.1, rate, total, &writer_done).await?
    };
    let mut hist = Histogram::<u64>::new(3)?;
    let mut res = FanoutResult { disconnected: setup_failed, expected: (total * n) as u64, ..Default::default() };
    let mut views = Vec::with_capacity(tasks.len());
    let (mut bytes, mut frames) = (0u64, 0u64);
    for t in tasks {
        let o = t.await?;
        hist.add(&o.hist)?;
        res.received += o.seen;
        res.chain_violations += o.violations;
        res.disconnected += u64::from(o.disconnected);
        bytes += o.bytes;
        frames += o.frames;
        views.push(o.view);
    }
    res.elapsed = start.elapsed().as_secs_f64();
    let cpu_after = (proc_stats::cpu_seconds(srv.pid()), proc_stats::cpu_seconds(std::process::id()));
    let machine_busy = proc_stats::machine_busy_seconds() - machine_before;
    res.writes_refused = writer.refused.values().sum();
    res.refusal_codes = refusal_codes(&writer.refused);
    res.writes_unanswered = writer.unanswered;
    if check_views {
        // The real server: one fresh subscribe is the truth every view must equal.
        res.views_differing = Some(views_differing(&target, &views).await?);
    }
    res.deliveries_per_sec = res.received as f64 / res.elapsed;
    res.p50_ms = hist.value_at_quantile(0.5) as f64 / 1000.0;
    res.p99_ms = hist.value_at_quantile(0.99) as f64 / 1000.0;
    res.max_ms = hist.max() as f64 / 1000.0;
    res.server_cpu = cpu_after.0 - cpu_before.0;
    res.bench_cpu = cpu_after.1 - cpu_before.1;
    res.other_cpu = (machine_busy - res.server_cpu - res.bench_cpu).max(0.0);
    res.send_lag_p99_ms = writer.lag.value_at_quantile(0.99) as f64 / 1000.0;
    res.send_lag_max_ms = writer.lag.max() as f64 / 1000.0;
    res.delta_bytes = bytes as f64 / frames.max(1) as f64;
    Ok(res)
}

/// How many of `views` differ from what a fresh subscribe through `target` shows.
pub(crate) async fn views_differing(target: &Target, views: &[View]) -> Result<u64, BoxError> {
    let mut checker = Client::connect(Kind::Ws, target).await?;
    checker.hello("bob").await?;
    let (_, truth) = checker.subscribe_view("job", 1).await?;
    Ok(views.iter().filter(|v| **v != truth).count() as u64)
}
