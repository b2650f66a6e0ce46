//! The hub's thin async driver: owns the hub's inbox, runs the requests the
//! hub makes through [`HubIo`] as tokio tasks against the store, and feeds
//! their answers back as messages. Also the tasks around it: the
//! durability watermark (one process), the shared log's tailer (several),
//! the bus reader, and [`Settle`], which answers wait on.

use super::io::{HubIo, MoveLoad, Moved, StreamRead};
use super::{Hub, HubMsg, HubSettings, LiveContext, MAX_REPLAY, Revalidate, SCAN_PAGE, SubscribeRequest};
use crate::channel::Channel;
use crate::engine::commit_lock::CommitLock;
use crate::engine::load::{load_context, load_subtree_at};
use crate::engine::metrics::Metrics;
use crate::engine::revocation::Touched;
use crate::engine::streams::SubId;
use crate::error::{ErrorReason, WireError};
use crate::ids::{Id, Seq};
use crate::row::Row;
use crate::schema::{EntityType, Schema};
use crate::store::{Bus, BusEvent, LogEntry, LogRead, Store};
use crate::stream::CompiledFilters;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc, watch};

/// How long an answer waits for the hub to deliver a commit it depends on
/// (shared log) before it is sent anyway.
const SETTLE_WAIT: Duration = Duration::from_secs(10);
/// Shared log: how often the tailer reads the log without a notification.
const TAIL_POLL: Duration = Duration::from_millis(100);
/// Shared log: the most entries the tailer reads at once.
const TAIL_BATCH: usize = 1000;
/// Shared log: how far before the head the tailer starts, so a commit still
/// in progress when the process started is not missed.
const TAIL_BACK: Seq = 1000;
/// A context holding more rows than this is freed off the hub's task.
const FREE_ELSEWHERE_ROWS: usize = 4096;
/// How often the subscription gauge is recounted at most.
pub(super) const GAUGE_EVERY: Duration = Duration::from_millis(50);

/// The engine's handle on the hub task.
pub(crate) struct HubHandle {
    tx: mpsc::UnboundedSender<HubMsg>,
    healthy: Arc<AtomicBool>,
    pub settle: Settle,
}

impl HubHandle {
    pub fn send(&self, msg: HubMsg) {
        if self.tx.send(msg).is_err() {
            tracing::error!("the hub task has stopped");
        }
    }
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::SeqCst)
    }
}

/// Puts a message behind every commit that reads made so far may have seen:
/// with one process, commits reach the hub under the commit lock; with a
/// shared log, once the hub has delivered everything up to the log's head.
#[derive(Clone)]
pub(crate) struct Settle {
    store: Arc<dyn Store>,
    lock: CommitLock,
    delivered: watch::Receiver<Seq>,
}

impl Settle {
    /// After reads of the store: waits until what they may have seen is delivered.
    pub async fn reads(&self) {
        if !self.store.shared_log() {
            drop(self.lock.exclusive().await);
            return;
        }
        match self.store.log_head().await {
            Ok(head) => self.seq(head).await,
            Err(e) => tracing::warn!(error = %e, "can't read the log head; answering without waiting"),
        }
    }

    /// Waits until the commit at `seq` is delivered (never under the commit lock).
    pub async fn seq(&self, seq: Seq) {
        if !self.store.shared_log() {
            drop(self.lock.exclusive().await);
            return;
        }
        let mut rx = self.delivered.clone();
        if tokio::time::timeout(SETTLE_WAIT, rx.wait_for(|d| *d >= seq)).await.is_err() {
            tracing::warn!(seq, "the log tailer has not reached this commit yet; answering anyway");
        }
    }
}

/// Waits until every commit that reads made so far may have seen is durable
/// (call it after [`Settle::reads`]).
pub(crate) async fn durable_after_reads(store: &dyn Store) -> Result<(), WireError> {
    store.wait_durable(store.last_seq()).await.map_err(crate::error::reads_not_durable)
}

/// Starts the hub and its tasks.
pub(crate) fn spawn(
    schema: Arc<Schema>,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    frame_limit: usize,
    commit_lock: CommitLock,
    settings: HubSettings,
    revalidate: Option<Revalidate>,
) -> HubHandle {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let healthy = Arc::new(AtomicBool::new(true));
    let (delivered, delivered_rx) = watch::channel(store.last_seq());
    let settle = Settle { store: store.clone(), lock: commit_lock.clone(), delivered: delivered_rx };
    if store.shared_log() {
        tokio::spawn(run_tailer(store.clone(), tx.downgrade(), commit_lock, store.last_seq()));
    }
    let bus = store.bus();
    let (watch, revalidate_tx) = match revalidate {
        Some(Revalidate { watch, tx }) => (Some(watch), Some(tx)),
        None => (None, None),
    };
    let durability = (!store.shared_log()).then(|| {
        let (durable_tx, durable_rx) = mpsc::unbounded_channel();
        tokio::spawn(run_durability(store.clone(), durable_rx, tx.downgrade()));
        durable_tx
    });
    let io = TokioIo {
        store: store.clone(),
        me: tx.downgrade(),
        settle: settle.clone(),
        delivered,
        durability,
        revalidate: revalidate_tx,
        bus: bus.clone(),
    };
    let start = super::Start {
        schema,
        epoch: store.epoch().to_owned(),
        seq: store.last_seq(),
        shared_log: store.shared_log(),
        on_bus: bus.is_some(),
        metrics,
        frame_limit,
        healthy: healthy.clone(),
        settings,
        watch,
    };
    let mut hub = Hub::new(start, Box::new(io));
    if let Some(bus) = bus {
        spawn_bus_reader(bus, tx.downgrade());
        hub.bus_joined();
    }
    tokio::spawn(async move {
        loop {
            let msg = if hub.gauge_dirty() {
                tokio::select! {
                    msg = rx.recv() => msg,
                    _ = tokio::time::sleep(GAUGE_EVERY) => {
                        hub.recount_subscriptions();
                        continue;
                    }
                }
            } else {
                rx.recv().await
            };
            let Some(msg) = msg else { break };
            hub.handle(msg);
        }
    });
    HubHandle { tx, healthy, settle }
}

/// [`HubIo`] on tokio and the store.
struct TokioIo {
    store: Arc<dyn Store>,
    me: mpsc::WeakUnboundedSender<HubMsg>,
    settle: Settle,
    delivered: watch::Sender<Seq>,
    /// One process: where commits go to wait for durability (see [`run_durability`]).
    durability: Option<mpsc::UnboundedSender<Seq>>,
    revalidate: Option<mpsc::UnboundedSender<Touched>>,
    bus: Option<Arc<dyn Bus>>,
}

impl TokioIo {
    /// Runs `read` off the hub's task and sends its answer to the hub.
    fn answer<F>(&self, read: F)
    where
        F: Future<Output = HubMsg> + Send + 'static,
    {
        let me = self.me.clone();
        tokio::spawn(async move {
            let msg = read.await;
            if let Some(tx) = me.upgrade() {
                let _ = tx.send(msg);
            }
        });
    }
}

impl HubIo for TokioIo {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn load_context(&mut self, context: String, channel: Arc<Channel>, anchor_id: Id) {
        let (store, settle) = (self.store.clone(), self.settle.clone());
        self.answer(async move {
            let result = load_context(&*store, &channel, anchor_id).await;
            let (result, durable) = settle_read(&*store, &settle, result).await;
            HubMsg::Loaded { context, result, durable }
        });
    }

    fn read_log(&mut self, req: SubscribeRequest, since: Seq, upto: Seq) {
        let store = self.store.clone();
        self.answer(async move {
            let entries = read_log(&*store, since, upto).await;
            HubMsg::Backfilled { req, upto, entries }
        });
    }

    fn load_moves(&mut self, seq: Seq, loads: Vec<MoveLoad>) {
        let store = self.store.clone();
        self.answer(async move { HubMsg::MovesLoaded { seq, moved: load_moves(&*store, seq, loads).await } });
    }

    fn load_stream(&mut self, sub: SubId, read: StreamRead) {
        let (store, settle) = (self.store.clone(), self.settle.clone());
        self.answer(async move {
            let result = match read {
                StreamRead::Since(since) => match store.changes_since(since, MAX_REPLAY).await {
                    Ok(LogRead::Entries(entries)) => Ok(super::StreamLoad::Log { since, entries: Some(entries) }),
                    Ok(LogRead::Trimmed) => Ok(super::StreamLoad::Log { since, entries: None }),
                    Err(e) => Err(e.into()),
                },
                StreamRead::Snapshot { entity: Some(entity), filters, limit } => {
                    load_snapshot(&*store, &entity, &filters, limit).await.map(super::StreamLoad::Snapshot)
                }
                StreamRead::Snapshot { entity: None, .. } => {
                    Err(WireError::internal("the stream's type is not in the schema"))
                }
            };
            let (result, durable) = settle_read(&*store, &settle, result).await;
            HubMsg::StreamLoaded { sub, result, durable }
        });
    }

    fn wait_durable(&mut self, seq: Seq) {
        if let Some(tx) = &self.durability {
            let _ = tx.send(seq);
        }
    }

    fn delivered(&mut self, seq: Seq) {
        self.delivered.send_if_modified(|d| {
            let advance = seq > *d;
            if advance {
                *d = seq;
            }
            advance
        });
    }

    fn revalidate(&mut self, touched: Touched) {
        if let Some(tx) = &self.revalidate {
            let _ = tx.send(touched);
        }
    }

    fn publish(&mut self, text: String) {
        if let Some(bus) = &self.bus {
            bus.publish(text);
        }
    }

    fn free(&mut self, ctx: Box<LiveContext>) {
        // Dropping a large context's maps (one deallocation per row) would hold up the hub.
        if ctx.rows.len() > FREE_ELSEWHERE_ROWS {
            tokio::task::spawn_blocking(move || drop(ctx));
        }
    }
}

/// A load's answer goes behind every commit whose rows it may have read,
/// and only once they are durable; it carries the durable seq then.
async fn settle_read<T>(
    store: &dyn Store,
    settle: &Settle,
    result: Result<T, WireError>,
) -> (Result<T, WireError>, Seq) {
    settle.reads().await;
    match durable_after_reads(store).await {
        Ok(()) => (result, store.durable_seq()),
        Err(e) => (Err(e), store.durable_seq()),
    }
}

/// One process: waits for the commits' durability in seq order, off the
/// hub's loop, and tells the hub (`Durable`). Commits queued meanwhile are
/// waited for at once: durability is a watermark.
async fn run_durability(
    store: Arc<dyn Store>,
    mut rx: mpsc::UnboundedReceiver<Seq>,
    hub: mpsc::WeakUnboundedSender<HubMsg>,
) {
    while let Some(mut through) = rx.recv().await {
        while let Ok(more) = rx.try_recv() {
            through = through.max(more);
        }
        let result = store.wait_durable(through).await;
        let Some(tx) = hub.upgrade() else { return };
        if tx.send(HubMsg::Durable { through, result }).is_err() {
            return;
        }
    }
}

/// Shared log: reads the log in seq order (woken by notifications, else every
/// [`TAIL_POLL`]) and hands the entries to the hub. Store failures (a database
/// restart) are retried with a backoff; it resumes after the last seq handed over.
async fn run_tailer(store: Arc<dyn Store>, hub: mpsc::WeakUnboundedSender<HubMsg>, lock: CommitLock, head: Seq) {
    let mut after = head.saturating_sub(TAIL_BACK);
    let mut backoff = TAIL_POLL;
    let mut failing = false;
    loop {
        if hub.strong_count() == 0 {
            return;
        }
        match store.tail_log(after, TAIL_BATCH).await {
            Ok(tail) => {
                if failing {
                    tracing::info!(after, "reading the change log again");
                    failing = false;
                }
                backoff = TAIL_POLL;
                if tail.trimmed {
                    tracing::error!(
                        after,
                        through = tail.through,
                        "the change log was trimmed past this process's position: commits in between are not \
                         broadcast here (raise the log capacity)"
                    );
                }
                let full = tail.entries.len() >= TAIL_BATCH;
                if tail.through > after || !tail.entries.is_empty() {
                    after = tail.through;
                    // Local writers hand their commit to the hub under this lock
                    // before it becomes visible here; taking it exclusively puts
                    // this behind every one of them that this read could hold.
                    let _guard = lock.exclusive().await;
                    let Some(tx) = hub.upgrade() else { return };
                    if tx.send(HubMsg::Tailed { entries: tail.entries, through: tail.through }).is_err() {
                        return;
                    }
                }
                if !full {
                    store.wait_log(TAIL_POLL).await;
                }
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, after, "reading the change log failed; retrying");
                    failing = true;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// The change log `(since, upto]`, or None when it no longer reaches back
/// (trimmed) or can't be read (the subscriber then gets the whole state).
async fn read_log(store: &dyn Store, since: Seq, upto: Seq) -> Option<Vec<LogEntry>> {
    let mut entries: Vec<LogEntry> = Vec::new();
    let mut after = since;
    while after < upto {
        match store.changes_since(after, SCAN_PAGE).await {
            Ok(LogRead::Entries(page)) => {
                let Some(last) = page.last().map(|e| e.seq) else { break };
                let short = page.len() < SCAN_PAGE;
                entries.extend(page.into_iter().filter(|e| e.seq <= upto));
                after = last;
                if short {
                    break;
                }
            }
            Ok(LogRead::Trimmed) => return None,
            Err(e) => {
                tracing::warn!(error = %e, since, "can't read the change log for a `since` subscribe");
                return None;
            }
        }
    }
    Some(entries)
}

/// Reads the subtrees commit `seq` moved, as they stood at that commit.
async fn load_moves(store: &dyn Store, seq: Seq, loads: Vec<MoveLoad>) -> Moved {
    let mut moved = Moved::new();
    for MoveLoad { channel, name, row } in loads {
        match load_subtree_at(store, &channel, &row, seq).await {
            Ok(rows) => {
                moved.insert((name, row.key()), rows);
            }
            Err(e) => tracing::error!(error = %e, "loading a moved subtree failed"),
        }
    }
    moved
}

/// The rows of `ty` that match `filters` now, at most `limit` (else 400
/// `SNAPSHOT_TOO_LARGE`): by id when the filters fix ids, by reference when
/// they fix a reference field, else a paged scan of the type.
async fn load_snapshot(
    store: &dyn Store,
    ty: &EntityType,
    filters: &CompiledFilters,
    limit: usize,
) -> Result<Vec<Row>, WireError> {
    let mut out = Vec::new();
    let keep = |rows: Vec<Row>, out: &mut Vec<Row>| -> Result<(), WireError> {
        out.extend(rows.into_iter().filter(|r| filters.matches(r)));
        if out.len() > limit { Err(snapshot_too_large(limit)) } else { Ok(()) }
    };
    if let Some(mut ids) = filters.fixed_ids() {
        ids.sort_unstable();
        ids.dedup();
        keep(store.get_many(&ty.name, &ids).await.map_err(WireError::from)?, &mut out)?;
    } else if let Some((field, ids)) = filters.fixed_reference(ty) {
        keep(store.children(&ty.name, field, &ids).await.map_err(WireError::from)?, &mut out)?;
    } else {
        let mut after = None;
        loop {
            let page = store.scan(&ty.name, after, SCAN_PAGE).await.map_err(WireError::from)?;
            let done = page.len() < SCAN_PAGE;
            after = page.last().map(|r| r.id);
            keep(page, &mut out)?;
            if done {
                break;
            }
        }
    }
    Ok(out)
}

pub(super) fn snapshot_too_large(limit: usize) -> WireError {
    WireError::new(
        ErrorReason::SnapshotTooLarge,
        format!("more than {limit} rows match; narrow the filters or subscribe without `snapshot`"),
    )
}

/// Feeds the hub the bus's messages and a tick every [`BEAT_EVERY`], and
/// asks the other processes for their presence once. Ends with the hub.
///
/// [`BEAT_EVERY`]: crate::engine::presence::BEAT_EVERY
fn spawn_bus_reader(bus: Arc<dyn Bus>, hub: mpsc::WeakUnboundedSender<HubMsg>) {
    let mut rx = bus.subscribe();
    tokio::spawn(async move {
        let mut beat = tokio::time::interval(crate::engine::presence::BEAT_EVERY);
        loop {
            let msg = tokio::select! {
                got = rx.recv() => match got {
                    Ok(BusEvent::Message(raw)) => HubMsg::Bus(raw),
                    // Joined (again): what was sent meanwhile is lost; ask.
                    Ok(BusEvent::Joined) => HubMsg::BusJoined,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "the hub fell behind the bus; presence repairs at the next sync");
                        continue;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = beat.tick() => HubMsg::PresenceTick(Instant::now()),
            };
            let Some(tx) = hub.upgrade() else { return };
            if tx.send(msg).is_err() {
                return;
            }
        }
    });
}
