//! The PostgreSQL backend: row locks in one canonical order, the seq drawn
//! in the last statement before `COMMIT`, the change log tailed in seq order
//! across processes (holes resolved by transaction ids), `LISTEN`/`NOTIFY`
//! to wake the tailers (see the crate docs).

use super::*;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use statecast_core::store::BusEvent;

/// The fingerprint the tables were last migrated to, if they exist.
pub(crate) async fn stored_fingerprint(conn: &mut sqlx::pool::PoolConnection<sqlx::Postgres>) -> Option<String> {
    let sql = format!("SELECT value FROM {META} WHERE key = $1");
    // Outside a transaction: a missing table is an answer ("migrate"), not an error.
    let rows = Conn::Postgres(conn).fetch(&sql, vec![Bind::Text(Some(tables::SCHEMA_KEY.into()))], &[Col::Text]).await;
    rows.ok()?.first().and_then(|r| r[0].as_str().map(str::to_owned))
}

/// Migrates the tables under an advisory lock (processes starting at once
/// migrate one after the other), and records the fingerprint.
pub(crate) async fn migrate_postgres(
    conn: &mut sqlx::pool::PoolConnection<sqlx::Postgres>,
    schema: &Schema,
    pg_schema: Option<&str>,
    fingerprint: &str,
    target: &str,
) -> Result<(), SqlError> {
    use sqlx::Connection as _;
    let mut tx = conn.begin().await.map_err(|e| SqlError::Store(backend(e)))?;
    let mut c = Conn::Postgres(&mut tx);
    if let Some(ns) = pg_schema {
        c.run(&format!("CREATE SCHEMA IF NOT EXISTS {}", db::quote(ns)))
            .await
            .map_err(|e| SqlError::Store(backend(e)))?;
    }
    c.run("SELECT pg_advisory_xact_lock(7312252160533)").await.map_err(|e| SqlError::Store(backend(e)))?;
    for note in tables::migrate(&mut c, schema).await? {
        tracing::info!(db = %target, "{note}");
    }
    meta_set(&mut c, tables::SCHEMA_KEY, fingerprint.to_owned()).await.map_err(|e| SqlError::Store(backend(e)))?;
    tx.commit().await.map_err(|e| SqlError::Store(backend(e)))?;
    Ok(())
}

impl SqlStore {
    /// Connects to a PostgreSQL database (`postgres://user:password@host:port/db`).
    pub async fn open_postgres(url: &str, schema: Arc<Schema>, options: SqlOptions) -> Result<SqlStore, SqlError> {
        use std::str::FromStr;
        let mut connect = PgConnectOptions::from_str(url)
            .map_err(|e| SqlError::Spec(format!("bad PostgreSQL URL: {e}")))?
            .application_name("statecast");
        if let Some(ns) = &options.pg_schema {
            connect = connect.options([("search_path", ns.as_str())]);
        }
        let target = format!("{}:{}/{}", connect.get_host(), connect.get_port(), connect.get_database().unwrap_or(""));
        // One direct connection first: its error names the cause (refused,
        // bad password, no such database) where the pool would only time out.
        {
            use sqlx::Connection as _;
            let probe = sqlx::PgConnection::connect_with(&connect)
                .await
                .map_err(|e| SqlError::Connect(format!("PostgreSQL at {target}: {e}")))?;
            let _ = probe.close().await;
        }
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .acquire_timeout(options.acquire_timeout)
            .test_before_acquire(true)
            .connect_with(connect)
            .await
            .map_err(|e| SqlError::Connect(format!("PostgreSQL at {target}: {e}")))?;
        let tables = Tables::new(Dialect::Postgres, &schema);
        let mut conn = pool.acquire().await.map_err(|e| SqlError::Connect(format!("PostgreSQL at {target}: {e}")))?;
        let fingerprint = tables::fingerprint(Dialect::Postgres, &schema);
        // Other processes may be committing: when the tables are current, no
        // DDL runs and no lock is taken.
        if stored_fingerprint(&mut conn).await.as_deref() != Some(fingerprint.as_str()) {
            migrate_postgres(&mut conn, &schema, options.pg_schema.as_deref(), &fingerprint, &target).await?;
        } else {
            tracing::debug!(db = %target, "the tables are current: no migration");
        }
        let (epoch, last, channel) = {
            use sqlx::Connection as _;
            let mut tx = conn.begin().await.map_err(|e| SqlError::Store(backend(e)))?;
            let mut c = Conn::Postgres(&mut tx);
            let epoch = meta_epoch(&mut c).await?;
            let rows = c
                .fetch(
                    &format!("SELECT last_value, CASE WHEN is_called THEN 1 ELSE 0 END::int8 FROM {SEQ}"),
                    vec![],
                    &[Col::Int, Col::Int],
                )
                .await
                .map_err(|e| SqlError::Store(backend(e)))?;
            let last = rows.first().filter(|r| r[1].as_i64() == Some(1)).map_or(0, |r| u64_of(&r[0]));
            for (name, want) in [("synchronous_commit", "off"), ("fsync", "off")] {
                let v = c
                    .fetch(&format!("SHOW {name}"), vec![], &[Col::Text])
                    .await
                    .map_err(|e| SqlError::Store(backend(e)))?;
                if v.first().and_then(|r| r[0].as_str()) == Some(want) {
                    tracing::warn!(
                        setting = name,
                        "PostgreSQL has {name} = off: a confirmed write may be lost in a crash"
                    );
                }
            }
            // One NOTIFY channel per schema: stores in other schemas of the database don't wake this one.
            let ns = c
                .fetch("SELECT current_schema()::text", vec![], &[Col::Text])
                .await
                .map_err(|e| SqlError::Store(backend(e)))?;
            let channel = format!("statecast_log_{}", ns.first().and_then(|r| r[0].as_str()).unwrap_or("public"));
            tx.commit().await.map_err(|e| SqlError::Store(backend(e)))?;
            (epoch, last, channel)
        };
        drop(conn);
        tracing::info!(db = %target, %epoch, last_seq = last, "opened PostgreSQL store");
        Ok(Self::start(schema, tables, epoch, options, Backend::Postgres(pool), last, channel))
    }
}

/// PostgreSQL: `LISTEN`s on the store's channel and wakes the tailer on each
/// notification. `recv` reconnects by itself after a lost connection; the
/// tailer is woken then too, since notifications sent meanwhile are lost.
pub(crate) async fn run_listener(shared: Arc<Shared>) {
    use sqlx::postgres::PgListener;
    let Backend::Postgres(pool) = &shared.backend else { return };
    let mut listener: Option<PgListener> = None;
    while !shared.stopping.load(Ordering::SeqCst) {
        let Some(l) = listener.as_mut() else {
            match PgListener::connect_with(pool).await {
                Ok(mut l) => match l.listen_all([shared.channel.as_str(), shared.bus_channel.as_str()]).await {
                    Ok(()) => {
                        tracing::debug!(channel = %shared.channel, "listening for commits of other processes");
                        listener = Some(l);
                        shared.log_wake.notify_one();
                        let _ = shared.bus_in.send(BusEvent::Joined);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "LISTEN failed; the tailer polls meanwhile");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %e, "can't connect the LISTEN connection; the tailer polls meanwhile");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
            continue;
        };
        match l.recv().await {
            Ok(n) if n.channel() == shared.bus_channel => {
                // Nobody listening (no engine yet) is not an error.
                let _ = shared.bus_in.send(BusEvent::Message(Arc::from(n.payload())));
            }
            Ok(_) => shared.log_wake.notify_one(),
            Err(e) => {
                tracing::warn!(error = %e, "the LISTEN connection failed; reconnecting");
                listener = None;
                shared.log_wake.notify_one();
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// PostgreSQL: wakes the local tailer and, coalesced, sends one `NOTIFY`
/// (after the commit, outside its transaction) to the tailers of the other
/// processes. Commits made while one is on its way ride on the next.
pub(crate) fn notify_commit(shared: &Arc<Shared>) {
    shared.log_wake.notify_one();
    if shared.notify_pending.swap(true, Ordering::SeqCst) {
        return;
    }
    let shared = shared.clone();
    tokio::spawn(async move {
        // Cleared before sending: a commit from now on asks for another one.
        shared.notify_pending.store(false, Ordering::SeqCst);
        if let Backend::Postgres(pool) = &shared.backend
            && let Err(e) = sqlx::query("SELECT pg_notify($1, '')").bind(&shared.channel).execute(pool).await
        {
            tracing::debug!(error = %e, "NOTIFY failed; other processes find the commit by polling");
        }
    });
}

impl Shared {
    pub(crate) async fn commit_postgres(&self, pool: &PgPool, tx: &Transaction) -> Result<Committed, CommitError> {
        use sqlx::Connection as _;
        let mut conn = pool.acquire().await.map_err(unavailable)?;
        let mut sql_tx = conn.begin().await.map_err(backend)?;
        let mut c = Conn::Postgres(&mut sql_tx);
        // Planned with seq 0: the real seq is drawn last; rows are stamped then.
        let mut plan = {
            let mut reader = Reader { tables: &self.tables, conn: &mut c, lock: true, retry: false };
            match plan::plan(&self.schema, &mut reader, tx, 0).await {
                Ok(p) => p,
                Err(CommitError::Store(_)) if reader.retry => {
                    return Err(CommitError::Conflict { ty: "(locked rows)".into(), id: 0 });
                }
                Err(e) => return Err(e),
            }
        };
        self.write_rows(&mut c, &plan).await?;
        let seq = self.draw_seq(&mut c, &plan, tx.now_ms).await?;
        self.in_flight.lock().insert(seq);
        let result = sql_tx.commit().await;
        self.settle(seq, result.is_ok());
        if let Err(e) = result {
            // A deferred constraint or a serialization failure refused the
            // commit; anything else (a broken connection, a server shutting
            // down) leaves its fate unknown: the server may have committed.
            return Err(match (violation(&e), is_retryable(&e)) {
                (Some(_), _) if is_database_error(&e) => CommitError::Invalid(e.to_string()),
                (None, true) => CommitError::Conflict { ty: "(commit)".into(), id: 0 },
                _ => CommitError::Store(StoreError::outcome_unknown(e.to_string()).with_source(e)),
            });
        }
        drop(conn);
        stamp(&mut plan, seq);
        let by_age = self.age_trim_due(tx.now_ms);
        if seq.is_multiple_of(64) || by_age {
            self.trim_log_postgres(pool, seq, tx.now_ms, by_age).await;
        }
        Ok(plan.committed())
    }

    /// The last statement before `COMMIT`: draws the seq, stamps it on every
    /// written row, and writes the change log entry and the applied record.
    pub(crate) async fn draw_seq(&self, c: &mut Conn<'_>, plan: &Plan, now_ms: u64) -> Result<Seq, CommitError> {
        let mut by_type: HashMap<&str, Vec<Id>> = HashMap::new();
        for change in plan.changes.iter().filter(|c| c.after.is_some()) {
            by_type.entry(&change.key.ty).or_default().push(change.key.id);
        }
        // The transaction id is assigned before the seq is drawn, so a tailer
        // waiting at a hole knows which transactions could still fill it.
        let mut sql =
            format!("WITH x AS (SELECT pg_current_xact_id() AS xid), s AS (SELECT nextval('{SEQ}') AS seq FROM x)");
        let mut binds = Vec::new();
        for (i, (ty, ids)) in by_type.iter().enumerate() {
            let t = self.tables.get(ty).ok_or_else(|| CommitError::Invalid(format!("unknown type `{ty}`")))?;
            binds.push(Bind::IntArray(ids.clone()));
            sql.push_str(&format!(
                ", v{i} AS (UPDATE {q} SET _version = s.seq, _created = CASE WHEN {q}._created = 0 THEN s.seq \
                 ELSE {q}._created END FROM s WHERE {q}.id = ANY(${n}))",
                q = t.quoted,
                n = binds.len()
            ));
        }
        binds.push(Bind::Int(Some(i64_of(now_ms))));
        binds.push(Bind::Text(Some(codec::encode_changes(&plan.changes))));
        sql.push_str(&format!(
            ", l AS (INSERT INTO {LOG} (seq, at_ms, changes) SELECT s.seq, ${}, ${}::jsonb FROM s)",
            binds.len() - 1,
            binds.len()
        ));
        if let Some(applied) = Self::applied_binds(plan) {
            let n = binds.len();
            binds.extend(applied);
            sql.push_str(&format!(
                ", a AS (INSERT INTO {APPLIED} (user_id, client_id, write_id, seq, created, at_ms) \
                 SELECT ${}, ${}, ${}, s.seq, ${}, ${} FROM s)",
                n + 1,
                n + 2,
                n + 3,
                n + 4,
                n + 5
            ));
        }
        sql.push_str(" SELECT seq FROM s");
        let rows = c.fetch(&sql, binds, &[Col::Int]).await.map_err(|e| {
            // A unique violation here is the applied key, recorded meanwhile by
            // another process: a retry finds the record and answers `duplicate`.
            let write_id = plan.applied.as_ref().map_or(0, |(k, _)| k.write_id);
            write_error(e, "applied write", write_id, false)
        })?;
        rows.first()
            .and_then(|r| r[0].as_i64())
            .map(|s| s as Seq)
            .ok_or_else(|| CommitError::Store(StoreError::backend("the seq draw returned nothing")))
    }

    /// Reads the change log after `after` with the snapshot it was read in
    /// and resolves holes (see [`Hole`]).
    pub(crate) async fn tail_postgres(&self, pool: &PgPool, after: Seq, limit: usize) -> Result<Tail, StoreError> {
        let sql = format!(
            "SELECT l.seq, l.changes::text, pg_snapshot_xmin(pg_current_snapshot())::text::int8, \
             (SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM {SEQ})::int8, \
             (SELECT value FROM {META} WHERE key = 'log_trimmed') \
             FROM (SELECT 1) AS one LEFT JOIN LATERAL \
             (SELECT seq, changes FROM {LOG} WHERE seq > $1 ORDER BY seq LIMIT $2) AS l ON true ORDER BY l.seq"
        );
        let limit = limit.max(1);
        let rows = {
            let mut conn = pool.acquire().await.map_err(unavailable)?;
            let binds = vec![Bind::Int(Some(i64_of(after))), Bind::Int(Some(i64::try_from(limit).unwrap_or(i64::MAX)))];
            Conn::Postgres(&mut conn)
                .fetch(&sql, binds, &[Col::Int, Col::Text, Col::Int, Col::Int, Col::Text])
                .await
                .map_err(backend)?
        };
        let Some(first) = rows.first() else {
            return Err(StoreError::backend("the log read returned nothing"));
        };
        let (xmin, head) = (first[2].as_i64().unwrap_or(0), u64_of(&first[3]));
        let floor: Seq = match first[4].as_str() {
            None => 0,
            Some(v) => {
                v.parse().map_err(|_| StoreError::corrupt(format!("meta `log_trimmed` is not a number: {v:?}")))?
            }
        };
        let mut tail = Tail { entries: Vec::new(), through: after, trimmed: false };
        if after < floor {
            tail.trimmed = true;
            tail.through = floor;
        }
        let full = rows.iter().filter(|r| !r[0].is_null()).count() >= limit;
        for r in rows.iter().filter(|r| !r[0].is_null()) {
            let seq = u64_of(&r[0]);
            if seq <= tail.through {
                continue;
            }
            // A gap before a visible entry: a commit still in flight, or an aborted one.
            while tail.through + 1 < seq {
                match self.settled(tail.through + 1, seq - 1, xmin, pool).await? {
                    Some(to) => tail.through = to,
                    None => return Ok(tail),
                }
            }
            tail.entries.push(LogEntry { seq, changes: codec::decode_changes(seq, r[1].as_str().unwrap_or("[]"))? });
            tail.through = seq;
        }
        // A gap at the end: seqs drawn, none visible after them.
        if !full && tail.through < head {
            while tail.through < head {
                match self.settled(tail.through + 1, head, xmin, pool).await? {
                    Some(to) => tail.through = to,
                    None => break,
                }
            }
        }
        Ok(tail)
    }

    /// Whether the missing seqs `from..=to` are settled as of a log read whose
    /// snapshot had `xmin`: the last seq settled, or None to wait. The first
    /// sight of a hole assigns the transaction id that bounds its drawers (see [`Hole`]).
    pub(crate) async fn settled(
        &self,
        from: Seq,
        to: Seq,
        xmin: i64,
        pool: &PgPool,
    ) -> Result<Option<Seq>, StoreError> {
        let known = *self.hole.lock();
        let hole = match known {
            Some(h) if h.from == from => h,
            _ => {
                let mut conn = pool.acquire().await.map_err(unavailable)?;
                let rows = Conn::Postgres(&mut conn)
                    .fetch("SELECT pg_current_xact_id()::text::int8", vec![], &[Col::Int])
                    .await
                    .map_err(backend)?;
                let xid = rows
                    .first()
                    .and_then(|r| r[0].as_i64())
                    .ok_or_else(|| StoreError::backend("pg_current_xact_id() returned nothing"))?;
                let h = Hole { from, to, xid };
                *self.hole.lock() = Some(h);
                h
            }
        };
        if xmin >= hole.xid {
            tracing::debug!(from, to = hole.to.min(to), "skipping seqs of aborted commits");
            *self.hole.lock() = None;
            Ok(Some(hole.to.min(to)))
        } else {
            Ok(None)
        }
    }

    pub(crate) async fn trim_log_postgres(&self, pool: &PgPool, seq: Seq, now_ms: u64, by_age: bool) {
        let mut floor = 0;
        let result: Result<(), sqlx::Error> = async {
            use sqlx::Connection as _;
            let mut conn = pool.acquire().await?;
            let mut tx = conn.begin().await?;
            let mut c = Conn::Postgres(&mut tx);
            let Some(found) = self.log_floor(&mut c, seq, now_ms, by_age).await? else { return Ok(()) };
            floor = found;
            c.exec(&format!("DELETE FROM {LOG} WHERE seq <= $1"), vec![Bind::Int(Some(i64_of(floor)))]).await?;
            let sql = format!(
                "INSERT INTO {META} (key, value) VALUES ('log_trimmed', $1) ON CONFLICT (key) DO UPDATE \
                 SET value = GREATEST({META}.value::bigint, excluded.value::bigint)::text"
            );
            c.exec(&sql, vec![Bind::Text(Some(floor.to_string()))]).await?;
            tx.commit().await
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, floor, "couldn't trim the change log; will retry later");
        }
    }
}

/// PostgreSQL: the [`Bus`](statecast_core::store::Bus) between the
/// processes on this database, on `NOTIFY` (a channel per schema, beside the
/// log's). One task sends the messages one after another, so they arrive in
/// the order published; the listener above receives them.
pub(crate) struct PgBus {
    out: tokio::sync::mpsc::UnboundedSender<String>,
    shared: Arc<Shared>,
}

impl PgBus {
    pub(crate) fn start(shared: Arc<Shared>) -> (Arc<PgBus>, JoinHandle<()>) {
        let (out, rx) = tokio::sync::mpsc::unbounded_channel();
        let sender = tokio::spawn(run_bus_sender(shared.clone(), rx));
        (Arc::new(PgBus { out, shared }), sender)
    }
}

impl statecast_core::store::Bus for PgBus {
    fn publish(&self, message: String) {
        self.shared.bus_pending.fetch_add(1, Ordering::SeqCst);
        if self.out.send(message).is_err() {
            self.shared.bus_pending.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<BusEvent> {
        self.shared.bus_in.subscribe()
    }
}

async fn run_bus_sender(shared: Arc<Shared>, mut rx: tokio::sync::mpsc::UnboundedReceiver<String>) {
    let Backend::Postgres(pool) = &shared.backend else { return };
    while let Some(message) = rx.recv().await {
        // Best effort, as the bus promises: its users repeat themselves.
        if let Err(e) =
            sqlx::query("SELECT pg_notify($1, $2)").bind(&shared.bus_channel).bind(&message).execute(pool).await
        {
            tracing::debug!(error = %e, "a bus message was not sent");
        }
        shared.bus_pending.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How long closing waits for the bus's last messages (the engine's `bye`).
const BUS_DRAIN: Duration = Duration::from_secs(1);

/// Waits (at most [`BUS_DRAIN`]) until every message published is sent.
pub(crate) async fn drain_bus(shared: &Shared) {
    let deadline = tokio::time::Instant::now() + BUS_DRAIN;
    while shared.bus_pending.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
