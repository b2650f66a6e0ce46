//! The SQLite backend: one writer connection (`BEGIN IMMEDIATE`), a pool
//! of readers, WAL mode with `synchronous = NORMAL`, seqs reserved in durable
//! blocks, and a group-commit flusher that fsyncs the WAL (see the crate docs).

use super::*;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection as _, SqliteConnection};

/// Replaces the writer connection after a transaction failed on it. A failed
/// `COMMIT` (a full disk) can leave SQLite's transaction open and the driver's
/// transaction depth above zero, so the connection would refuse every later
/// `BEGIN`: a fresh connection starts clean, and closing the old one rolls
/// back whatever it still held. If the new one can't be opened now, the old
/// one stays and the next commit tries again.
pub(crate) async fn reset_writer(db: &SqliteDb, conn: &mut SqliteConnection) {
    match SqliteConnection::connect_with(&db.connect).await {
        Ok(fresh) => {
            let old = std::mem::replace(conn, fresh);
            if let Err(e) = old.close().await {
                tracing::debug!(error = %e, "closing the failed SQLite writer connection");
            }
            tracing::info!("the SQLite writer connection was reopened after a failed transaction");
        }
        Err(e) => tracing::warn!(error = %e, "can't reopen the SQLite writer connection yet"),
    }
}

pub(crate) struct SqliteWriter {
    pub(crate) conn: SqliteConnection,
    /// The seq the next commit takes.
    pub(crate) next: Seq,
    /// The highest seq covered by a durable reservation.
    pub(crate) reserved: Seq,
    pub(crate) closed: bool,
}

pub(crate) struct SqliteDb {
    /// How to open the writer connection again after a failed transaction.
    pub(crate) connect: SqliteConnectOptions,
    pub(crate) writer: tokio::sync::Mutex<SqliteWriter>,
    pub(crate) readers: SqlitePool,
    pub(crate) wal: PathBuf,
    pub(crate) wal_file: parking_lot::Mutex<Option<Arc<std::fs::File>>>,
}

impl SqlStore {
    /// Opens (or creates) a SQLite database file. Must be called within a tokio runtime.
    pub async fn open_sqlite(
        path: impl AsRef<Path>,
        schema: Arc<Schema>,
        options: SqlOptions,
    ) -> Result<SqlStore, SqlError> {
        let path = path.as_ref();
        let connect = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        let where_ = || format!("{}", path.display());
        let mut conn = SqliteConnection::connect_with(&connect)
            .await
            .map_err(|e| SqlError::Connect(format!("can't open SQLite database {}: {e}", where_())))?;
        let tables = Tables::new(Dialect::Sqlite, &schema);
        let (epoch, last, reserved) = {
            let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.map_err(|e| SqlError::Store(backend(e)))?;
            let mut c = Conn::Sqlite(&mut tx);
            let notes = tables::migrate(&mut c, &schema).await?;
            for note in notes {
                tracing::info!(db = %where_(), "{note}");
            }
            let epoch = meta_epoch(&mut c).await?;
            let last = meta_u64(&mut c, "last_seq").await?;
            let reserved = meta_u64(&mut c, "seq_reserved").await?;
            tx.commit().await.map_err(|e| SqlError::Store(backend(e)))?;
            (epoch, last, reserved.max(last))
        };
        let readers = SqlitePoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect.clone())
            .await
            .map_err(|e| SqlError::Connect(format!("can't open SQLite database {}: {e}", where_())))?;
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        let db = SqliteDb {
            connect: connect.clone(),
            writer: tokio::sync::Mutex::new(SqliteWriter { conn, next: reserved + 1, reserved, closed: false }),
            readers,
            wal: PathBuf::from(wal),
            wal_file: parking_lot::Mutex::new(None),
        };
        tracing::info!(db = %where_(), %epoch, last_seq = last, reserved, "opened SQLite store");
        let store = Self::start(schema, tables, epoch, options, Backend::Sqlite(db), last, String::new());
        // What the WAL holds at open (perhaps left by a crash in the page cache) is made durable now.
        store.shared.flush().await?;
        Ok(store)
    }
}

impl Shared {
    pub(crate) async fn commit_sqlite(&self, db: &SqliteDb, tx: &Transaction) -> Result<Committed, CommitError> {
        let mut w = db.writer.lock().await;
        if let Some(msg) = self.failure() {
            return Err(StoreError::flush_failed(msg.to_string()).into());
        }
        if w.closed {
            return Err(StoreError::unavailable("the store is closed").into());
        }
        let seq = w.next;
        if seq > w.reserved {
            let reserved = seq.saturating_add(self.options.seq_block);
            meta_set(&mut Conn::Sqlite(&mut w.conn), "seq_reserved", reserved.to_string()).await.map_err(backend)?;
            self.flush().await?;
            w.reserved = reserved;
        }
        let plan = match self.write_sqlite(&mut w.conn, tx, seq).await {
            Ok(plan) => plan,
            Err(e) => {
                if matches!(e, CommitError::Store(_)) {
                    reset_writer(db, &mut w.conn).await;
                }
                return Err(e);
            }
        };
        w.next = seq + 1;
        self.last_seq.store(seq, Ordering::SeqCst);
        drop(w);
        self.wake.notify_one();
        Ok(plan.committed())
    }

    /// One SQLite commit's transaction on the writer connection.
    pub(crate) async fn write_sqlite(
        &self,
        conn: &mut SqliteConnection,
        tx: &Transaction,
        seq: Seq,
    ) -> Result<Plan, CommitError> {
        let mut sql_tx = conn.begin_with("BEGIN IMMEDIATE").await.map_err(backend)?;
        let mut c = Conn::Sqlite(&mut sql_tx);
        let plan = {
            let mut reader = Reader { tables: &self.tables, conn: &mut c, lock: false, retry: false };
            plan::plan(&self.schema, &mut reader, tx, seq).await?
        };
        self.write_rows(&mut c, &plan).await?;
        let d = Dialect::Sqlite;
        if let Some([user, client, write_id, created, at]) = Self::applied_binds(&plan) {
            let sql = format!(
                "INSERT INTO {APPLIED} (user_id, client_id, write_id, seq, created, at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
            );
            c.exec(&sql, vec![user, client, write_id, Bind::Int(Some(i64_of(seq))), created, at])
                .await
                .map_err(|e| write_error(e, "applied write", 0, false))?;
        }
        let sql = format!("INSERT INTO {LOG} (seq, at_ms, changes) VALUES (?1, ?2, ?3)");
        let binds = vec![
            Bind::Int(Some(i64_of(seq))),
            Bind::Int(Some(i64_of(tx.now_ms))),
            Bind::Text(Some(codec::encode_changes(&plan.changes))),
        ];
        c.exec(&sql, binds).await.map_err(backend)?;
        meta_set(&mut c, "last_seq", seq.to_string()).await.map_err(backend)?;
        let by_age = self.age_trim_due(tx.now_ms);
        if let Some(floor) = self.log_floor(&mut c, seq, tx.now_ms, by_age).await.map_err(backend)? {
            c.exec(&format!("DELETE FROM {LOG} WHERE seq <= {}", d.ph(1)), vec![Bind::Int(Some(i64_of(floor)))])
                .await
                .map_err(backend)?;
            meta_set(&mut c, "log_trimmed", floor.to_string()).await.map_err(backend)?;
        }
        sql_tx.commit().await.map_err(|e| match violation(&e) {
            Some(_) => CommitError::Invalid(e.to_string()),
            None => CommitError::Store(backend(e)),
        })?;
        Ok(plan)
    }
}
