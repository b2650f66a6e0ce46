//! The store conformance suite from `statecast-core`, on SQLite (a file in a
//! temp dir) and, when `STATECAST_PG_URL` is set, on PostgreSQL (each test in
//! its own schema, so tests run in parallel).

#![allow(clippy::print_stderr)]

use async_trait::async_trait;
use statecast_core::Schema;
use statecast_core::store::Store;
use statecast_core::testkit::store_suite::StoreFactory;
use statecast_store_sql::{SqlOptions, SqlStore};
use std::sync::Arc;

/// One SQLite database file in a temp dir (removed when the factory is dropped).
struct SqliteFactory {
    dir: tempfile::TempDir,
}

impl SqliteFactory {
    fn new() -> Self {
        Self { dir: tempfile::tempdir().expect("temp dir") }
    }
}

#[async_trait]
impl StoreFactory for SqliteFactory {
    async fn open(&self, schema: Arc<Schema>) -> Arc<dyn Store> {
        let path = self.dir.path().join("statecast.db");
        Arc::new(SqlStore::open_sqlite(path, schema, SqlOptions::default()).await.expect("open SQLite store"))
    }
    fn persistent(&self) -> bool {
        true
    }
}

mod sqlite {
    use super::*;
    statecast_core::store_conformance_tests!(SqliteFactory::new());
}

mod postgres {
    use super::*;

    /// One PostgreSQL schema, dropped when the factory is dropped.
    pub struct PgFactory {
        url: String,
        schema: String,
    }

    impl PgFactory {
        pub fn new() -> Option<Self> {
            let url = std::env::var("STATECAST_PG_URL").ok().filter(|u| !u.is_empty())?;
            Some(Self { url, schema: format!("conformance_{:016x}", rand_u64()) })
        }
    }

    fn rand_u64() -> u64 {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
        h.finish()
    }

    impl Drop for PgFactory {
        fn drop(&mut self) {
            let (url, schema) = (self.url.clone(), self.schema.clone());
            // Drop is synchronous: clean up on a thread with its own runtime.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
                rt.block_on(async move {
                    use sqlx::Connection as _;
                    if let Ok(mut c) = sqlx::PgConnection::connect(&url).await {
                        let sql = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE");
                        let _ = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut c).await;
                    }
                });
            })
            .join();
        }
    }

    /// Stands in when `STATECAST_PG_URL` is not set: the case passes without running.
    pub enum MaybePg {
        Pg(PgFactory),
        Skipped,
    }

    #[async_trait]
    impl StoreFactory for MaybePg {
        async fn open(&self, schema: Arc<Schema>) -> Arc<dyn Store> {
            match self {
                MaybePg::Pg(f) => {
                    let options = SqlOptions { pg_schema: Some(f.schema.clone()), ..SqlOptions::default() };
                    Arc::new(SqlStore::open_postgres(&f.url, schema, options).await.expect("open PostgreSQL store"))
                }
                MaybePg::Skipped => Arc::new(statecast_core::store::MemoryStore::new(schema)),
            }
        }
        fn persistent(&self) -> bool {
            matches!(self, MaybePg::Pg(_))
        }
    }

    pub fn factory() -> MaybePg {
        match PgFactory::new() {
            Some(f) => MaybePg::Pg(f),
            None => {
                eprintln!("STATECAST_PG_URL is not set: the PostgreSQL case runs on the memory store instead");
                MaybePg::Skipped
            }
        }
    }

    statecast_core::store_conformance_tests!(factory());
}
