//! Tables derived from the schema: one per entity type (`id`, `_version`,
//! `_created` and a typed column per field, foreign keys with the declared
//! `on_delete`, an index per reference field), the store's own tables, the
//! SQL of every per-type statement, and the migration that creates what is
//! missing and refuses what it can't apply safely.

use crate::db::{Bind, Col, Conn, Dialect, quote};
use serde_json::Value;
use statecast_core::schema::{EntityType, Field, FieldKind, OnDelete};
use statecast_core::{Row, Schema};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The store's own tables. Entity type names start with a letter, so names
/// starting with `_` never collide with them.
pub(crate) const META: &str = "_statecast_meta";
pub(crate) const IDS: &str = "_statecast_ids";
pub(crate) const APPLIED: &str = "_statecast_applied";
pub(crate) const PURGED: &str = "_statecast_purged";
pub(crate) const LOG: &str = "_statecast_log";
/// PostgreSQL only: the commit sequence.
pub(crate) const SEQ: &str = "_statecast_seq";

/// Why the database can't serve this schema.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error(
        "{ty}.{field}: the table column is {found}, the schema says {wanted}; change it by hand or rename the field"
    )]
    TypeChanged { ty: String, field: String, found: String, wanted: String },
    #[error("{ty}.{field}: a new field that is not nullable needs a default (the table already has rows without it)")]
    NewRequiredField { ty: String, field: String },
    #[error("{ty}.{field}: the schema makes the field {wanted}, the table column is {found}; {hint}")]
    NullabilityChanged { ty: String, field: String, wanted: &'static str, found: &'static str, hint: &'static str },
    #[error(
        "{ty}.{field}: the table column is not nullable and has no default, and the schema no longer has the field; drop the column or give it a default"
    )]
    RemovedRequiredField { ty: String, field: String },
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// One entity type's table and its statements.
#[derive(Debug)]
pub(crate) struct Table {
    pub name: Arc<str>,
    pub quoted: String,
    /// The schema's fields, in column order.
    pub fields: Vec<Field>,
    /// Column reads of `select` (id, _version, _created, fields...).
    pub cols: Vec<Col>,
    /// `SELECT id, _version, _created, fields... FROM "T"`.
    pub select: String,
    pub insert: String,
    pub update: String,
    pub delete: String,
}

fn col_of(kind: &FieldKind) -> Col {
    match kind {
        FieldKind::Int | FieldKind::Reference { .. } => Col::Int,
        FieldKind::Float => Col::Float,
        FieldKind::Bool => Col::Bool,
        FieldKind::String | FieldKind::Timestamp => Col::Text,
        FieldKind::Json => Col::Json,
    }
}

/// The column type a field gets.
pub(crate) fn sql_type(d: Dialect, kind: &FieldKind) -> &'static str {
    match (d, kind) {
        (_, FieldKind::Int | FieldKind::Reference { .. }) => "BIGINT",
        (Dialect::Sqlite, FieldKind::Float) => "REAL",
        (Dialect::Postgres, FieldKind::Float) => "DOUBLE PRECISION",
        (_, FieldKind::Bool) => "BOOLEAN",
        // Timestamps stay text: the RFC 3339 UTC string a client sent is given
        // back byte for byte (a timestamptz would normalize its precision).
        (_, FieldKind::String | FieldKind::Timestamp) => "TEXT",
        (Dialect::Sqlite, FieldKind::Json) => "TEXT",
        (Dialect::Postgres, FieldKind::Json) => "JSONB",
    }
}

/// How an introspected column type compares (lower case, as the database names it).
fn type_matches(d: Dialect, kind: &FieldKind, found: &str) -> bool {
    let found = found.to_ascii_lowercase();
    let want = sql_type(d, kind).to_ascii_lowercase();
    match d {
        Dialect::Sqlite => found == want,
        Dialect::Postgres => matches!(
            (want.as_str(), found.as_str()),
            ("bigint", "bigint")
                | ("double precision", "double precision")
                | ("boolean", "boolean")
                | ("text", "text")
                | ("jsonb", "jsonb")
        ),
    }
}

/// A SQL literal for a default value (DDL can't take bind values).
fn literal(d: Dialect, kind: &FieldKind, v: &Value) -> String {
    let text = |s: &str| format!("'{}'", s.replace('\'', "''"));
    match (kind, v) {
        (_, Value::Null) => "NULL".into(),
        (FieldKind::Json, v) => match d {
            Dialect::Sqlite => text(&v.to_string()),
            Dialect::Postgres => format!("{}::jsonb", text(&v.to_string())),
        },
        (FieldKind::Bool, Value::Bool(b)) => match d {
            Dialect::Sqlite => (if *b { "1" } else { "0" }).into(),
            Dialect::Postgres => (if *b { "TRUE" } else { "FALSE" }).into(),
        },
        (FieldKind::Int | FieldKind::Reference { .. }, v) => v.as_i64().map_or("NULL".into(), |n| n.to_string()),
        (FieldKind::Float, v) => v.as_f64().filter(|f| f.is_finite()).map_or("NULL".into(), |f| format!("{f:?}")),
        (_, Value::String(s)) => text(s),
        (_, other) => text(&other.to_string()),
    }
}

fn on_delete(action: OnDelete) -> &'static str {
    match action {
        OnDelete::Cascade => "CASCADE",
        OnDelete::Restrict => "RESTRICT",
        OnDelete::SetNull => "SET NULL",
    }
}

/// The column definition of a field (type, null, default, foreign key).
fn column_def(d: Dialect, f: &Field) -> String {
    let mut def = format!("{} {}", quote(&f.name), sql_type(d, &f.kind));
    if !f.nullable {
        def.push_str(" NOT NULL");
    }
    if let Some(v) = &f.default {
        def.push_str(&format!(" DEFAULT {}", literal(d, &f.kind, v)));
    }
    // SQLite declares the foreign key with the column (it can't add one
    // later); PostgreSQL adds it once every table exists (see `foreign_key`).
    if d == Dialect::Sqlite
        && let Some(fk) = references(f)
    {
        def.push(' ');
        def.push_str(&fk);
    }
    def
}

/// `REFERENCES "Target"(id) ON DELETE …`. Checks are deferred to COMMIT (rows
/// of one transaction may refer to each other in any order); the on-delete
/// action itself is immediate.
fn references(f: &Field) -> Option<String> {
    let target = f.target()?;
    Some(format!(
        "REFERENCES {}(id) ON DELETE {} DEFERRABLE INITIALLY DEFERRED",
        quote(target),
        on_delete(f.delete_action())
    ))
}

/// PostgreSQL: the statement that adds a field's foreign key.
fn foreign_key(d: Dialect, ty: &EntityType, f: &Field) -> Option<String> {
    if d != Dialect::Postgres {
        return None;
    }
    let fk = references(f)?;
    let name = quote(&format!("{}_{}_fkey", ty.name, f.name));
    Some(format!("ALTER TABLE {} ADD CONSTRAINT {name} FOREIGN KEY ({}) {fk}", quote(&ty.name), quote(&f.name)))
}

impl Table {
    fn new(d: Dialect, ty: &EntityType) -> Table {
        let quoted = quote(&ty.name);
        let fields = ty.fields.clone();
        let mut cols = vec![Col::Int, Col::Int, Col::Int];
        let mut select_cols = vec!["id".to_owned(), "_version".to_owned(), "_created".to_owned()];
        for f in &fields {
            let col = col_of(&f.kind);
            cols.push(col);
            select_cols.push(match (d, col) {
                (Dialect::Postgres, Col::Json) => format!("{}::text", quote(&f.name)),
                _ => quote(&f.name),
            });
        }
        let names: Vec<String> = fields.iter().map(|f| quote(&f.name)).collect();
        let value_ph = |i: usize, f: &Field| {
            if col_of(&f.kind) == Col::Json { d.json_ph(i) } else { d.ph(i) }
        };
        let mut insert_cols = vec!["id".to_owned(), "_version".to_owned(), "_created".to_owned()];
        insert_cols.extend(names.iter().cloned());
        let mut insert_vals = vec![d.ph(1), d.ph(2), d.ph(3)];
        insert_vals.extend(fields.iter().enumerate().map(|(i, f)| value_ph(i + 4, f)));
        let insert = format!("INSERT INTO {quoted} ({}) VALUES ({})", insert_cols.join(", "), insert_vals.join(", "));
        let mut sets = vec![format!("_version = {}", d.ph(2)), format!("_created = {}", d.ph(3))];
        sets.extend(fields.iter().enumerate().map(|(i, f)| format!("{} = {}", quote(&f.name), value_ph(i + 4, f))));
        let update = format!("UPDATE {quoted} SET {} WHERE id = {}", sets.join(", "), d.ph(1));
        Table {
            name: ty.name.as_str().into(),
            select: format!("SELECT {} FROM {quoted}", select_cols.join(", ")),
            delete: format!("DELETE FROM {quoted} WHERE id = {}", d.ph(1)),
            quoted,
            fields,
            cols,
            insert,
            update,
        }
    }

    pub(crate) fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// Decodes one selected row.
    pub(crate) fn row(&self, cells: Vec<Value>) -> Result<Row, String> {
        let mut it = cells.into_iter();
        let mut int = |what: &str| {
            it.next()
                .and_then(|v| v.as_i64())
                .ok_or_else(|| format!("{}: `{what}` is missing or not an integer", self.name))
        };
        let id = int("id")?;
        let version = int("_version")?;
        let created = int("_created")?;
        let mut fields = statecast_core::row::Fields::new();
        for (f, v) in self.fields.iter().zip(it) {
            fields.insert(f.name.clone(), v);
        }
        Ok(Row { ty: self.name.clone(), id, version: version.max(0) as u64, created: created.max(0) as u64, fields })
    }

    /// The bind values of `insert`/`update` for a row (id, version, created, fields...).
    pub(crate) fn binds(&self, row: &Row) -> Result<Vec<Bind>, String> {
        if let Some(unknown) = row.fields.keys().find(|k| self.field(k).is_none()) {
            return Err(format!("{} has no field `{unknown}`", self.name));
        }
        let seq = |s: u64| i64::try_from(s).map_err(|_| format!("seq {s} is out of range"));
        let mut binds =
            vec![Bind::Int(Some(row.id)), Bind::Int(Some(seq(row.version)?)), Bind::Int(Some(seq(row.created)?))];
        for f in &self.fields {
            let v = row.get(&f.name);
            let bad = || format!("{}.{}: {v} does not fit the field's type", self.name, f.name);
            binds.push(match col_of(&f.kind) {
                Col::Int => Bind::Int(if v.is_null() { None } else { Some(v.as_i64().ok_or_else(bad)?) }),
                Col::Float => Bind::Float(if v.is_null() { None } else { Some(v.as_f64().ok_or_else(bad)?) }),
                Col::Bool => Bind::Bool(if v.is_null() { None } else { Some(v.as_bool().ok_or_else(bad)?) }),
                Col::Text => Bind::Text(if v.is_null() { None } else { Some(v.as_str().ok_or_else(bad)?.to_owned()) }),
                Col::Json => Bind::Text(if v.is_null() { None } else { Some(v.to_string()) }),
            });
        }
        Ok(binds)
    }
}

/// Every entity table, by type name.
#[derive(Debug)]
pub(crate) struct Tables {
    pub dialect: Dialect,
    pub by_name: BTreeMap<String, Table>,
}

impl Tables {
    pub(crate) fn new(d: Dialect, schema: &Schema) -> Tables {
        Tables { dialect: d, by_name: schema.types.values().map(|t| (t.name.clone(), Table::new(d, t))).collect() }
    }

    pub(crate) fn get(&self, ty: &str) -> Option<&Table> {
        self.by_name.get(ty)
    }

    /// The `SELECT` of one row (locked until commit when `lock`).
    pub(crate) fn get_sql(&self, t: &Table, lock: RowLock) -> String {
        let lock = match (lock, self.dialect) {
            (RowLock::Update, Dialect::Postgres) => " FOR UPDATE",
            (RowLock::Share, Dialect::Postgres) => " FOR SHARE",
            _ => "",
        };
        format!("{} WHERE id = {}{lock}", t.select, self.dialect.ph(1))
    }
}

/// How a commit's read locks a row until `COMMIT` (PostgreSQL only: SQLite
/// has one writer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RowLock {
    None,
    /// Only checked: other commits may check it too, a writer of it waits.
    Share,
    /// May be written: one commit at a time.
    Update,
}

/// The store's own tables.
fn internal_ddl(d: Dialect) -> Vec<String> {
    let mut ddl = vec![
        format!("CREATE TABLE IF NOT EXISTS {META} (key TEXT PRIMARY KEY, value TEXT NOT NULL)"),
        format!("CREATE TABLE IF NOT EXISTS {IDS} (type TEXT PRIMARY KEY, last_id BIGINT NOT NULL)"),
        format!(
            "CREATE TABLE IF NOT EXISTS {APPLIED} (user_id BIGINT NOT NULL, client_id TEXT NOT NULL, \
             write_id BIGINT NOT NULL, seq BIGINT NOT NULL, created TEXT NOT NULL, at_ms BIGINT NOT NULL, \
             PRIMARY KEY (user_id, client_id, write_id))"
        ),
        format!("CREATE INDEX IF NOT EXISTS {APPLIED}_at_ms ON {APPLIED} (at_ms)"),
        format!(
            "CREATE TABLE IF NOT EXISTS {PURGED} (user_id BIGINT NOT NULL, client_id TEXT NOT NULL, \
             write_id BIGINT NOT NULL, PRIMARY KEY (user_id, client_id))"
        ),
    ];
    match d {
        Dialect::Sqlite => ddl.push(format!(
            "CREATE TABLE IF NOT EXISTS {LOG} (seq INTEGER PRIMARY KEY, at_ms BIGINT NOT NULL, changes TEXT NOT NULL)"
        )),
        Dialect::Postgres => {
            ddl.push(format!(
                "CREATE TABLE IF NOT EXISTS {LOG} (seq BIGINT PRIMARY KEY, at_ms BIGINT NOT NULL, \
                 changes JSONB NOT NULL, xid XID8 NOT NULL DEFAULT pg_current_xact_id())"
            ));
            ddl.push(format!("CREATE SEQUENCE IF NOT EXISTS {SEQ} AS BIGINT MINVALUE 1"));
        }
    }
    // Trimming by age finds the newest entry older than the cutoff.
    ddl.push(format!("CREATE INDEX IF NOT EXISTS {LOG}_at_ms ON {LOG} (at_ms)"));
    ddl
}

/// One existing column: its type as the database names it, and whether it is nullable / has a default.
#[derive(Debug)]
struct Column {
    ty: String,
    nullable: bool,
    has_default: bool,
}

async fn existing_columns(conn: &mut Conn<'_>, table: &str) -> Result<Option<BTreeMap<String, Column>>, sqlx::Error> {
    let rows = match conn.dialect() {
        Dialect::Sqlite => {
            let sql =
                format!("SELECT name, type, \"notnull\", dflt_value IS NOT NULL FROM pragma_table_info({})", "?1");
            conn.fetch(&sql, vec![Bind::Text(Some(table.to_owned()))], &[Col::Text, Col::Text, Col::Int, Col::Int])
                .await?
        }
        Dialect::Postgres => {
            let sql = "SELECT column_name::text, data_type::text, CASE WHEN is_nullable = 'NO' THEN 1 ELSE 0 END::int8, \
                       CASE WHEN column_default IS NOT NULL THEN 1 ELSE 0 END::int8 FROM information_schema.columns \
                       WHERE table_schema = current_schema() AND table_name = $1";
            conn.fetch(sql, vec![Bind::Text(Some(table.to_owned()))], &[Col::Text, Col::Text, Col::Int, Col::Int])
                .await?
        }
    };
    if rows.is_empty() {
        return Ok(None);
    }
    let mut cols = BTreeMap::new();
    for r in rows {
        let name = r[0].as_str().unwrap_or_default().to_owned();
        let ty = r[1].as_str().unwrap_or_default().to_owned();
        cols.insert(name, Column { ty, nullable: r[2].as_i64() == Some(0), has_default: r[3].as_i64() == Some(1) });
    }
    Ok(Some(cols))
}

/// Creates what is missing and checks what exists; refuses, before changing
/// anything, what can't be applied safely. Runs inside the caller's transaction.
/// The meta key holding [`fingerprint`] once migrated.
pub(crate) const SCHEMA_KEY: &str = "schema";

/// What the database's tables are migrated to, as text: every DDL statement
/// the schema leads to. Equal to the stored one, nothing needs migrating, so
/// a process can start without taking a lock other processes' commits would
/// wait on (`CREATE INDEX IF NOT EXISTS` takes a table lock even when the
/// index exists).
pub(crate) fn fingerprint(d: Dialect, schema: &Schema) -> String {
    let mut parts = internal_ddl(d);
    for ty in schema.types.values() {
        parts.push(format!("table {}", ty.name));
        parts.extend(ty.fields.iter().map(|f| column_def(d, f)));
        parts.extend(ty.fields.iter().filter_map(|f| foreign_key(d, ty, f)));
    }
    parts.join("\n")
}

pub(crate) async fn migrate(conn: &mut Conn<'_>, schema: &Schema) -> Result<Vec<String>, MigrationError> {
    let d = conn.dialect();
    for stmt in internal_ddl(d) {
        conn.run(&stmt).await?;
    }
    let mut plan: Vec<String> = Vec::new();
    let mut fks: Vec<String> = Vec::new();
    let mut notes = Vec::new();
    for ty in schema.types.values() {
        let quoted = quote(&ty.name);
        match existing_columns(conn, &ty.name).await? {
            None => {
                let mut defs = vec![
                    "id BIGINT PRIMARY KEY".to_owned(),
                    "_version BIGINT NOT NULL".to_owned(),
                    "_created BIGINT NOT NULL".to_owned(),
                ];
                defs.extend(ty.fields.iter().map(|f| column_def(d, f)));
                fks.extend(ty.fields.iter().filter_map(|f| foreign_key(d, ty, f)));
                plan.push(format!("CREATE TABLE {quoted} ({})", defs.join(", ")));
                notes.push(format!("created table {}", ty.name));
            }
            Some(cols) => {
                for f in &ty.fields {
                    match cols.get(&f.name) {
                        Some(c) => check_column(d, ty, f, c, &mut plan)?,
                        None => {
                            if !f.nullable && f.default.is_none() {
                                return Err(MigrationError::NewRequiredField {
                                    ty: ty.name.clone(),
                                    field: f.name.clone(),
                                });
                            }
                            let mut def = column_def(d, f);
                            if d == Dialect::Sqlite && f.target().is_some() && !f.nullable {
                                // SQLite can't add a NOT NULL reference with a non-null default.
                                def = def.replace(" NOT NULL", "");
                            }
                            fks.extend(foreign_key(d, ty, f));
                            plan.push(format!("ALTER TABLE {quoted} ADD COLUMN {def}"));
                            notes.push(format!("added column {}.{}", ty.name, f.name));
                        }
                    }
                }
                for (name, c) in &cols {
                    let internal = name == "id" || name.starts_with('_');
                    if internal || ty.field(name).is_some() {
                        continue;
                    }
                    if !c.nullable && !c.has_default {
                        return Err(MigrationError::RemovedRequiredField { ty: ty.name.clone(), field: name.clone() });
                    }
                    tracing::warn!(table = %ty.name, column = %name, "the schema no longer has this column's field; it is kept and ignored");
                }
            }
        }
    }
    plan.extend(fks);
    for ty in schema.types.values() {
        for f in ty.fields.iter().filter(|f| f.target().is_some()) {
            let index = quote(&format!("{}_{}_idx", ty.name, f.name));
            plan.push(format!("CREATE INDEX IF NOT EXISTS {index} ON {} ({})", quote(&ty.name), quote(&f.name)));
        }
    }
    for stmt in &plan {
        conn.run(stmt).await?;
    }
    for ty in schema.types.keys() {
        let sql = format!("INSERT INTO {IDS} (type, last_id) VALUES ({}, 0) ON CONFLICT (type) DO NOTHING", d.ph(1));
        conn.exec(&sql, vec![Bind::Text(Some(ty.clone()))]).await?;
    }
    Ok(notes)
}

fn check_column(
    d: Dialect,
    ty: &EntityType,
    f: &Field,
    c: &Column,
    plan: &mut Vec<String>,
) -> Result<(), MigrationError> {
    if !type_matches(d, &f.kind, &c.ty) {
        return Err(MigrationError::TypeChanged {
            ty: ty.name.clone(),
            field: f.name.clone(),
            found: c.ty.clone(),
            wanted: sql_type(d, &f.kind).to_owned(),
        });
    }
    match (f.nullable, c.nullable) {
        (true, false) if d == Dialect::Postgres => {
            plan.push(format!("ALTER TABLE {} ALTER COLUMN {} DROP NOT NULL", quote(&ty.name), quote(&f.name)));
        }
        (true, false) => {
            return Err(MigrationError::NullabilityChanged {
                ty: ty.name.clone(),
                field: f.name.clone(),
                wanted: "nullable",
                found: "NOT NULL",
                hint: "SQLite can't drop NOT NULL in place; rebuild the table by hand",
            });
        }
        (false, true) => {
            return Err(MigrationError::NullabilityChanged {
                ty: ty.name.clone(),
                field: f.name.clone(),
                wanted: "not nullable",
                found: "nullable",
                hint: "existing rows may hold NULL; fill them and add the constraint by hand",
            });
        }
        _ => {}
    }
    Ok(())
}
