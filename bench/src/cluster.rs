//! Scale-out: several server processes on one PostgreSQL database.
//!
//! - Latency: one writer saves task 1 of `job/1` through process 0 on a fixed
//!   schedule (open loop, as in the fan-out scenario) while subscribers,
//!   the same number in all whatever the process count and spread evenly over
//!   the processes, measure each delta against its intended send time. A
//!   subscriber on process 0 sees its own process's delivery; one on another
//!   process sees the commit through that process's change-log tailer.
//! - Throughput: closed-loop writers spread round-robin over the processes,
//!   each creating tasks back to back (every commit takes the next `Task` id,
//!   one at a time), or each saving a task of its own (commits touch
//!   different rows and run side by side): the confirmed writes/s one
//!   database serves to all of them.
//!
//! Run with one process for the single-process figure beside it.

use crate::client::{BoxError, Kind};
use crate::fanout::{follow, open_loop_writer, refusal_codes, subscribers, views_differing};
use crate::proc_stats;
use crate::scenarios::{Workload, closed_loop_writes, hist, ms};
use crate::server::Cluster;
use hdrhistogram::Histogram;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
pub struct LatencyResult {
    pub expected: u64,
    pub received: u64,
    /// Subscribers on the writer's process: (p50, p99) ms.
    pub local: (f64, f64),
    /// Subscribers on the other processes: (p50, p99) ms; `None` with one process.
    pub remote: Option<(f64, f64)>,
    pub max_ms: f64,
    pub chain_violations: u64,
    pub views_differing: u64,
    pub disconnected: u64,
    pub refusal_codes: String,
    pub unanswered: u64,
    /// CPU of all server processes together, % of one core.
    pub server_cpu: f64,
    /// CPU of this load generator, % of one core.
    pub generator_cpu: f64,
}

/// `subs` subscribers in all, spread over the processes of `cluster`; `rate` writes/s for `length` through process 0.
pub async fn latency(cluster: &Cluster, subs: usize, rate: u64, length: Duration) -> Result<LatencyResult, BoxError> {
    let total = (rate * length.as_secs()) as usize;
    let writer_done = Arc::new(AtomicBool::new(false));
    let mut res = LatencyResult::default();
    let mut followers = Vec::new();
    let processes = cluster.servers.len();
    for (process, srv) in cluster.servers.iter().enumerate() {
        let here = subs / processes + usize::from(process < subs % processes);
        for sub in subscribers(Kind::Ws, &srv.target, here).await {
            match sub {
                Ok((c, seq0, view)) => {
                    followers.push((process, follow(c, seq0, view, total, length, writer_done.clone())));
                }
                Err(_) => res.disconnected += 1,
            }
        }
    }
    let cpu_before = servers_cpu(cluster);
    let generator_before = proc_stats::cpu_seconds(std::process::id());
    let started = Instant::now();
    let writer = open_loop_writer(Kind::Ws, &cluster.servers[0].target, rate, total, &writer_done).await?;
    let (mut local, mut remote) = (hist(), hist());
    let mut views = Vec::new();
    for (process, task) in followers {
        let o = task.await?;
        if process == 0 {
            local.add(&o.hist)?
        } else {
            remote.add(&o.hist)?
        }
        res.received += o.seen;
        res.chain_violations += o.violations;
        res.disconnected += u64::from(o.disconnected);
        views.push(o.view);
    }
    let elapsed = started.elapsed().as_secs_f64();
    res.server_cpu = (servers_cpu(cluster) - cpu_before) * 100.0 / elapsed;
    res.generator_cpu = (proc_stats::cpu_seconds(std::process::id()) - generator_before) * 100.0 / elapsed;
    res.expected = (total * subs) as u64;
    res.local = (ms(&local, 0.5), ms(&local, 0.99));
    res.remote = (cluster.servers.len() > 1).then(|| (ms(&remote, 0.5), ms(&remote, 0.99)));
    res.max_ms = local.max().max(remote.max()) as f64 / 1000.0;
    res.refusal_codes = refusal_codes(&writer.refused);
    res.unanswered = writer.unanswered;
    res.views_differing = views_differing(&cluster.servers[0].target, &views).await?;
    Ok(res)
}

#[derive(Debug, Default)]
pub struct ThroughputResult {
    pub per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub refused: u64,
    pub unanswered: u64,
    pub server_cpu: f64,
}

/// `concurrency` closed-loop writers spread over the processes for `length`.
pub async fn throughput(
    cluster: &Cluster,
    concurrency: usize,
    length: Duration,
    workload: Workload,
) -> Result<ThroughputResult, BoxError> {
    let cpu_before = servers_cpu(cluster);
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|i| {
            let target = cluster.servers[i % cluster.servers.len()].target.clone();
            tokio::spawn(closed_loop_writes(Kind::Ws, target, (i, 1), length, workload))
        })
        .collect();
    let mut h: Histogram<u64> = hist();
    let mut res = ThroughputResult::default();
    for t in tasks {
        let (th, refused, unanswered) = t.await?;
        h.add(th)?;
        res.refused += refused;
        res.unanswered += unanswered;
    }
    let elapsed = started.elapsed().as_secs_f64();
    res.per_sec = h.len() as f64 / elapsed;
    res.p50_ms = ms(&h, 0.5);
    res.p99_ms = ms(&h, 0.99);
    res.server_cpu = (servers_cpu(cluster) - cpu_before) * 100.0 / elapsed;
    Ok(res)
}

/// CPU seconds of all the cluster's server processes.
fn servers_cpu(cluster: &Cluster) -> f64 {
    cluster.pids().into_iter().map(proc_stats::cpu_seconds).sum()
}
