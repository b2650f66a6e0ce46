//! The thin layer over sqlx that the rest of the crate talks to: one
//! connection type for both backends, typed bind values, typed column reads
//! into JSON values, and the mapping of driver errors to store errors.

use serde_json::Value;
use sqlx::AssertSqlSafe;
#[cfg(feature = "postgres")]
use sqlx::PgConnection;
#[cfg(feature = "sqlite")]
use sqlx::SqliteConnection;
use statecast_core::store::StoreError;

/// The SQL dialect of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// The placeholder of the `n`th bind value (1-based).
    pub(crate) fn ph(self, n: usize) -> String {
        match self {
            Dialect::Sqlite => format!("?{n}"),
            Dialect::Postgres => format!("${n}"),
        }
    }

    /// A placeholder for a JSON value bound as text.
    pub(crate) fn json_ph(self, n: usize) -> String {
        match self {
            Dialect::Sqlite => format!("?{n}"),
            Dialect::Postgres => format!("${n}::jsonb"),
        }
    }

    /// `column IN (the ids bound as one value at n)`.
    pub(crate) fn in_ids(self, column: &str, n: usize) -> String {
        match self {
            Dialect::Sqlite => format!("{column} IN (SELECT value FROM json_each(?{n}))"),
            Dialect::Postgres => format!("{column} = ANY(${n})"),
        }
    }

    /// How a list of ids is bound for [`in_ids`](Self::in_ids).
    pub(crate) fn ids(self, ids: &[i64]) -> Bind {
        match self {
            Dialect::Sqlite => Bind::Text(Some(Value::from(ids.to_vec()).to_string())),
            Dialect::Postgres => Bind::IntArray(ids.to_vec()),
        }
    }

    pub(crate) fn greatest(self) -> &'static str {
        match self {
            Dialect::Sqlite => "MAX",
            Dialect::Postgres => "GREATEST",
        }
    }
}

/// Quotes an identifier (`"name"`, inner quotes doubled).
pub(crate) fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// One bind value, typed even when null (PostgreSQL types every parameter).
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Bind {
    Int(Option<i64>),
    Float(Option<f64>),
    Bool(Option<bool>),
    Text(Option<String>),
    /// PostgreSQL only (`= ANY($n)`).
    IntArray(Vec<i64>),
}

/// How to read one column into a JSON value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Col {
    Int,
    Float,
    Bool,
    Text,
    /// Text holding JSON (PostgreSQL selects `jsonb` columns as `::text`).
    Json,
}

/// One result row: a JSON value per requested column (`Null` for SQL NULL).
pub(crate) type Cells = Vec<Value>;

/// A connection of either backend.
pub(crate) enum Conn<'c> {
    #[cfg(feature = "sqlite")]
    Sqlite(&'c mut SqliteConnection),
    #[cfg(feature = "postgres")]
    Postgres(&'c mut PgConnection),
}

macro_rules! bind_all {
    ($q:expr, $binds:expr, $bind_array:expr) => {{
        let mut q = $q;
        for b in $binds {
            q = match b {
                Bind::Int(v) => q.bind(v),
                Bind::Float(v) => q.bind(v),
                Bind::Bool(v) => q.bind(v),
                Bind::Text(v) => q.bind(v),
                Bind::IntArray(v) => $bind_array(q, v),
            };
        }
        q
    }};
}

#[cfg(feature = "postgres")]
fn bind_array_pg<'q>(
    q: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    v: Vec<i64>,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    q.bind(v)
}

#[cfg(feature = "sqlite")]
fn bind_array_sqlite<'q>(
    q: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>,
    v: Vec<i64>,
) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments> {
    q.bind(Value::from(v).to_string())
}

fn decode_cell<R>(row: &R, i: usize, col: Col) -> Result<Value, sqlx::Error>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    for<'r> Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<f64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<bool>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(match col {
        Col::Int => row.try_get::<Option<i64>, _>(i)?.map_or(Value::Null, Value::from),
        Col::Float => row.try_get::<Option<f64>, _>(i)?.map_or(Value::Null, Value::from),
        Col::Bool => row.try_get::<Option<bool>, _>(i)?.map_or(Value::Null, Value::from),
        Col::Text => row.try_get::<Option<String>, _>(i)?.map_or(Value::Null, Value::from),
        Col::Json => match row.try_get::<Option<String>, _>(i)? {
            None => Value::Null,
            Some(text) => serde_json::from_str(&text).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
        },
    })
}

fn decode_rows<R>(rows: Vec<R>, cols: &[Col]) -> Result<Vec<Cells>, sqlx::Error>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    for<'r> Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<f64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<bool>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    rows.iter().map(|r| cols.iter().enumerate().map(|(i, c)| decode_cell(r, i, *c)).collect()).collect()
}

impl Conn<'_> {
    pub(crate) fn dialect(&self) -> Dialect {
        match self {
            #[cfg(feature = "sqlite")]
            Conn::Sqlite(_) => Dialect::Sqlite,
            #[cfg(feature = "postgres")]
            Conn::Postgres(_) => Dialect::Postgres,
        }
    }

    /// Runs a statement; returns the number of rows it affected.
    pub(crate) async fn exec(&mut self, sql: &str, binds: Vec<Bind>) -> Result<u64, sqlx::Error> {
        match self {
            #[cfg(feature = "sqlite")]
            Conn::Sqlite(c) => {
                let q = bind_all!(sqlx::query(AssertSqlSafe(sql.to_owned())), binds, bind_array_sqlite);
                Ok(q.execute(&mut **c).await?.rows_affected())
            }
            #[cfg(feature = "postgres")]
            Conn::Postgres(c) => {
                let q = bind_all!(sqlx::query(AssertSqlSafe(sql.to_owned())), binds, bind_array_pg);
                Ok(q.execute(&mut **c).await?.rows_affected())
            }
        }
    }

    /// Runs a query and reads the columns as `cols` says.
    pub(crate) async fn fetch(&mut self, sql: &str, binds: Vec<Bind>, cols: &[Col]) -> Result<Vec<Cells>, sqlx::Error> {
        match self {
            #[cfg(feature = "sqlite")]
            Conn::Sqlite(c) => {
                let q = bind_all!(sqlx::query(AssertSqlSafe(sql.to_owned())), binds, bind_array_sqlite);
                decode_rows(q.fetch_all(&mut **c).await?, cols)
            }
            #[cfg(feature = "postgres")]
            Conn::Postgres(c) => {
                let q = bind_all!(sqlx::query(AssertSqlSafe(sql.to_owned())), binds, bind_array_pg);
                decode_rows(q.fetch_all(&mut **c).await?, cols)
            }
        }
    }

    /// Runs a statement with no bind values and no result (DDL, `BEGIN`, pragmas).
    pub(crate) async fn run(&mut self, sql: &str) -> Result<(), sqlx::Error> {
        self.exec(sql, Vec::new()).await.map(|_| ())
    }
}

/// The SQLSTATE class of a database error (`"40"` for transaction rollbacks, …).
pub(crate) fn sqlstate(e: &sqlx::Error) -> Option<String> {
    match e {
        sqlx::Error::Database(d) => d.code().map(|c| c.into_owned()),
        _ => None,
    }
}

/// The constraint kind of a database error, if it is one.
pub(crate) fn violation(e: &sqlx::Error) -> Option<sqlx::error::ErrorKind> {
    match e {
        sqlx::Error::Database(d) => Some(d.kind()).filter(|k| *k != sqlx::error::ErrorKind::Other),
        _ => None,
    }
}

/// True for PostgreSQL serialization failures and deadlocks (worth a retry)
/// and SQLite's "database is locked".
pub(crate) fn is_retryable(e: &sqlx::Error) -> bool {
    matches!(sqlstate(e).as_deref(), Some("40001" | "40P01" | "5" | "6" | "517"))
}

/// True when the error came from the database server itself (the statement
/// was received and refused), not from a broken connection.
pub(crate) fn is_database_error(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(_))
}

/// A failure to get a connection: the database can't be reached.
pub(crate) fn unavailable(e: sqlx::Error) -> StoreError {
    StoreError::unavailable(format!("can't reach the database: {e}")).with_source(e)
}

/// Any other driver failure (the statement failed, or the connection broke
/// before `COMMIT`): nothing was committed.
pub(crate) fn backend(e: sqlx::Error) -> StoreError {
    if out_of_resources(&e) {
        return StoreError::unavailable(format!("the database is out of space or failing I/O: {e}")).with_source(e);
    }
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => unavailable(e),
        sqlx::Error::Decode(_) | sqlx::Error::ColumnDecode { .. } => StoreError::corrupt(e.to_string()).with_source(e),
        sqlx::Error::Io(_) | sqlx::Error::Protocol(_) | sqlx::Error::Tls(_) => {
            StoreError::backend(format!("the database connection failed: {e}")).with_source(e)
        }
        _ => StoreError::backend(e.to_string()).with_source(e),
    }
}

/// A database error that goes away with the cause (a full disk, failing I/O,
/// PostgreSQL's insufficient resources): answered 503, not 500.
fn out_of_resources(e: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = e else { return false };
    let Some(code) = db.code() else { return false };
    // PostgreSQL: a five-character SQLSTATE; class 53 is insufficient
    // resources (disk full, out of memory).
    if code.len() == 5 {
        return code.starts_with("53");
    }
    // SQLite: a number (at most four digits); the primary result code is the
    // low byte of the extended code.
    const SQLITE_IOERR: u32 = 10;
    const SQLITE_FULL: u32 = 13;
    code.parse::<u32>().is_ok_and(|n| matches!(n & 0xff, SQLITE_IOERR | SQLITE_FULL))
}
