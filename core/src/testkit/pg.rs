//! PostgreSQL for tests: the URL `.ci/run` exports, `psql`, and a fresh
//! schema per test, dropped afterwards. Test-only code: it panics on failure.

use std::process::Command;

/// The PostgreSQL URL of the tests (`STATECAST_PG_URL`, set by `.ci/run`).
pub fn pg_url() -> Option<String> {
    std::env::var("STATECAST_PG_URL").ok().filter(|u| !u.is_empty())
}

/// Runs SQL on the test database with `psql` (as the URL's role); the output, trimmed.
#[allow(clippy::expect_used)]
pub fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args([url, "-X", "-q", "-tA", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .expect("run psql (install the PostgreSQL client)");
    assert!(out.status.success(), "psql {url} {sql}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A fresh PostgreSQL schema for one test (dropped on drop).
pub struct PgSchema {
    pub url: String,
    pub name: String,
}

impl PgSchema {
    /// Creates `{prefix}_{pid}_{nanos}` on the database at `url`.
    pub fn create(url: &str, prefix: &str) -> PgSchema {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let name = format!("{prefix}_{}_{}", std::process::id(), nanos % 1_000_000_000_000);
        psql(url, &format!("CREATE SCHEMA {name}"));
        PgSchema { url: url.to_owned(), name }
    }

    /// The store URL whose connections use this schema.
    pub fn store_url(&self) -> String {
        let sep = if self.url.contains('?') { '&' } else { '?' };
        format!("{}{sep}options[search_path]={}", self.url, self.name)
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([&self.url, "-X", "-q", "-c", &format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name)])
            .output();
    }
}
