//! The stream filter parser: a subscribe's `filters` map parsed, checked
//! against a type and compiled; then decided on rows the store could hold
//! (every value valid for its field). Either an error naming a key, or a
//! filter whose evaluation never panics and whose routing (the hub's index
//! groups, the snapshot's reads) never misses a row it matches.

use serde_json::{Map, Value, json};
use statecast_core::row::{Fields, Row};
use statecast_core::schema::{EntityType, Schema};
use statecast_core::stream::Filters;
use std::sync::{Arc, LazyLock};

static TASK: LazyLock<EntityType> = LazyLock::new(|| {
    let schema: Arc<Schema> = Schema::builder()
        .entity("Job", |t| {
            t.string("name");
        })
        .entity("Task", |t| {
            t.reference("job", "Job");
            t.string("name").max_len(50);
            t.int("points").nullable();
            t.float("weight").default(1.0);
            t.bool("done").default(false);
            t.timestamp("due").nullable();
            t.json("meta").nullable();
            t.reference("assignee", "Job").nullable();
        })
        .build()
        .expect("the filter target's schema is valid");
    schema.entity("Task").cloned().expect("Task")
});

/// Values every field is tried with (those valid for it).
static VALUES: LazyLock<Vec<Value>> = LazyLock::new(|| {
    let v = json!([
        null, 0, 1, -1, 3, 7, 9007199254740991_i64, -9007199254740991_i64, 0.0, -0.0, 2.5, 1e300, -1e-300,
        true, false, "", "x", "Fix Bug", "fix bug", "FIX", "ß", "SS", "İ", "i̇", "\u{212A}", "k",
        "2026-01-02T00:00:00Z", "2026-01-02T00:00:00.5Z", "1970-01-01T00:00:00Z", [1, 2], {"a": 1}
    ]);
    v.as_array().cloned().unwrap_or_default()
});

/// The input is JSON: the `filters` object of a stream `subscribe`.
pub fn filter(data: &[u8]) {
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(data) else { return };
    let ty = &*TASK;
    let Ok(client) = Filters::parse(&map) else { return };
    // As a scope merged over the client's, too (the server's path).
    let scope = Filters::new().eq("job", 1);
    for filters in [client.clone(), scope.merged_over(&client), client.merged_over(&scope)] {
        let Ok(compiled) = filters.compile(ty) else {
            continue;
        };
        for row in rows(ty, &map) {
            let _ = compiled.matches(&row);
            if let Err(e) = compiled.check_routing(ty, &row) {
                panic!("{e}\nfilters: {map:?}\nrow: {row:?}");
            }
        }
    }
}

fn base() -> Fields {
    let v = json!({"job": 1, "name": "Fix Bug", "points": 3, "weight": 1.0, "done": false,
                   "due": null, "meta": null, "assignee": null});
    v.as_object().cloned().unwrap_or_default()
}

/// Rows to decide: the base row with each field set to each candidate value
/// (the filters' own values and a fixed list), and one row taking every
/// filter's value at once.
fn rows(ty: &EntityType, filters: &Map<String, Value>) -> Vec<Row> {
    let mut candidates: Vec<Value> = Vec::new();
    let mut all = base();
    let mut all_id = 1;
    for (key, value) in filters.iter().take(16) {
        let field = key.rsplit_once("__").map_or(key.as_str(), |(f, _)| f);
        let first = value.as_array().and_then(|a| a.first()).unwrap_or(value);
        if field == "id" {
            all_id = first.as_i64().unwrap_or(all_id);
        } else if ty.field(field).is_some_and(|f| f.check(first).is_ok()) {
            all.insert(field.to_owned(), first.clone());
        }
        candidates.push(value.clone());
        candidates.extend(value.as_array().into_iter().flatten().take(8).cloned());
    }
    candidates.extend(VALUES.iter().cloned());
    let mut out = vec![row(1, all.clone()), row(all_id, all)];
    for value in &candidates {
        if let Some(id) = value.as_i64() {
            out.push(row(id, base()));
        }
        for f in &ty.fields {
            if f.check(value).is_ok() {
                let mut fields = base();
                fields.insert(f.name.clone(), value.clone());
                out.push(row(1, fields));
            }
        }
    }
    out
}

fn row(id: i64, fields: Fields) -> Row {
    Row { ty: "Task".into(), id, version: 1, created: 1, fields }
}
