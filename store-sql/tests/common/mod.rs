//! What the SQL store's integration tests share: a one-type schema, a note
//! insert, and a PostgreSQL schema of the test's own (when `STATECAST_PG_URL`
//! is set), dropped at the end.
#![allow(dead_code)] // each test binary uses a part of this module

use sqlx::Connection as _;
use statecast_core::Schema;
use statecast_core::store::{NewId, Transaction, TxOp};
use statecast_store_sql::SqlOptions;
use std::sync::Arc;

/// One entity type, `Note { text }`.
pub fn notes_schema() -> Arc<Schema> {
    Schema::builder()
        .entity("Note", |t| {
            t.string("text");
        })
        .build()
        .expect("schema")
}

/// A transaction inserting one note with an automatic id.
pub fn note(text: &str) -> Transaction {
    let fields = serde_json::json!({ "text": text }).as_object().cloned().expect("object");
    Transaction { ops: vec![TxOp::Insert { ty: "Note".into(), id: NewId::Auto, fields }], ..Default::default() }
}

/// A PostgreSQL schema for one test, with an admin connection beside the stores'.
pub struct PgTestSchema {
    pub url: String,
    pub name: String,
    pub admin: sqlx::PgConnection,
}

impl PgTestSchema {
    /// `{prefix}_{pid}`, dropped first if a crashed run left it; `None`
    /// (the test is skipped) when `STATECAST_PG_URL` is not set.
    #[allow(clippy::print_stderr)] // tells why the test did nothing
    pub async fn create(prefix: &str) -> Option<PgTestSchema> {
        let Some(url) = std::env::var("STATECAST_PG_URL").ok().filter(|u| !u.is_empty()) else {
            eprintln!("STATECAST_PG_URL is not set: skipped");
            return None;
        };
        let name = format!("{prefix}_{}", std::process::id());
        let mut admin = sqlx::PgConnection::connect(&url).await.expect("connect");
        let drop = format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE");
        sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&mut admin).await.expect("drop a stale schema");
        Some(PgTestSchema { url, name, admin })
    }

    /// Store options keeping the tables in this schema.
    pub fn options(&self) -> SqlOptions {
        SqlOptions { pg_schema: Some(self.name.clone()), ..SqlOptions::default() }
    }

    /// Drops the schema (close the stores first).
    pub async fn drop_schema(mut self) {
        let drop = format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.name);
        sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&mut self.admin).await.expect("drop schema");
    }
}
