//! Engine counters, rendered in the Prometheus text format.

use crate::error::WireError;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Latency buckets (seconds) for commit and delivery histograms.
const BUCKETS: [f64; 10] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0];

#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; 10],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {}", self.buckets[i].load(Ordering::Relaxed));
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {}", self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// What the engine counts.
#[derive(Default)]
pub struct Metrics {
    pub connections: AtomicU64,
    pub subscriptions: AtomicU64,
    pub live_contexts: AtomicU64,
    pub writes_ok: AtomicU64,
    pub writes_refused: AtomicU64,
    pub writes_duplicate: AtomicU64,
    pub writes_failed: AtomicU64,
    pub commit_retries: AtomicU64,
    pub deliveries: AtomicU64,
    pub slow_consumers: AtomicU64,
    /// Stream subscriptions held (live and loading).
    pub stream_subscriptions: AtomicU64,
    /// Stream subscriptions a change was decided for (what routing woke).
    pub stream_evaluations: AtomicU64,
    /// Stream event frames queued to subscribers.
    pub stream_events: AtomicU64,
    pub commit_latency: Histogram,
    pub delivery_latency: Histogram,
    /// Refusals by what was refused (`write`, `subscribe`, `hello`) and reason.
    refusals: parking_lot::Mutex<std::collections::BTreeMap<(&'static str, &'static str), u64>>,
}

impl Metrics {
    pub(crate) fn observe_commit(&self, d: Duration) {
        self.commit_latency.observe(d);
    }

    pub(crate) fn observe_delivery(&self, d: Duration) {
        self.delivery_latency.observe(d);
    }

    pub(crate) fn count_write(&self, error: Option<&WireError>) {
        let counter = match error {
            None => &self.writes_ok,
            Some(e) if e.code >= 500 => &self.writes_failed,
            Some(_) => &self.writes_refused,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a refusal of `what` (`write`, `subscribe`, `hello`).
    pub(crate) fn refused(&self, what: &'static str, e: &WireError) {
        *self.refusals.lock().entry((what, e.reason.as_str())).or_default() += 1;
    }

    /// How many refusals of `what` with `reason` were counted.
    pub fn refusals(&self, what: &str, reason: &str) -> u64 {
        self.refusals.lock().iter().filter(|((w, r), _)| *w == what && *r == reason).map(|(_, n)| *n).sum()
    }

    /// The Prometheus text exposition of every counter.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let gauge = |out: &mut String, name: &str, help: &str, v: &AtomicU64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}", v.load(Ordering::Relaxed));
        };
        gauge(&mut out, "statecast_connections", "Authenticated connections.", &self.connections);
        gauge(&mut out, "statecast_subscriptions", "Context subscriptions.", &self.subscriptions);
        gauge(&mut out, "statecast_live_contexts", "Contexts held in memory.", &self.live_contexts);
        gauge(&mut out, "statecast_stream_subscriptions", "Stream subscriptions.", &self.stream_subscriptions);
        let _ =
            writeln!(out, "# HELP statecast_writes_total Writes by outcome.\n# TYPE statecast_writes_total counter");
        for (outcome, v) in [
            ("ok", &self.writes_ok),
            ("refused", &self.writes_refused),
            ("duplicate", &self.writes_duplicate),
            ("failed", &self.writes_failed),
        ] {
            let _ = writeln!(out, "statecast_writes_total{{outcome=\"{outcome}\"}} {}", v.load(Ordering::Relaxed));
        }
        for (name, help, v) in [
            ("statecast_commit_retries_total", "Commits retried after a version conflict.", &self.commit_retries),
            ("statecast_deliveries_total", "Delta frames queued to subscribers.", &self.deliveries),
            ("statecast_slow_consumers_total", "Connections closed for not keeping up.", &self.slow_consumers),
            (
                "statecast_stream_evaluations_total",
                "Stream subscriptions a change was decided for.",
                &self.stream_evaluations,
            ),
            ("statecast_stream_events_total", "Stream event frames queued to subscribers.", &self.stream_events),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}", v.load(Ordering::Relaxed));
        }
        let _ = writeln!(
            out,
            "# HELP statecast_refusals_total Requests refused, by what and reason.\n# TYPE statecast_refusals_total counter"
        );
        for ((what, reason), n) in self.refusals.lock().iter() {
            let _ = writeln!(out, "statecast_refusals_total{{what=\"{what}\",reason=\"{reason}\"}} {n}");
        }
        self.commit_latency.render(&mut out, "statecast_commit_seconds", "From commit to durable.");
        self.delivery_latency.render(&mut out, "statecast_delivery_seconds", "Routing and queueing one commit.");
        out
    }
}
