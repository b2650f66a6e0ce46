//! The shared filter-lookup cases (`spec/filters/*.json`) decided by the
//! server's evaluator. The Rust and JavaScript clients run the same files, so
//! a row moves in or out of a client's stream view exactly as the server decides.

use serde_json::Value;
use statecast_core::row::Row;
use statecast_core::schema::{EntityType, FieldKind};
use statecast_core::stream::Filters;
use std::collections::BTreeMap;
use std::path::PathBuf;

fn spec_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../spec/filters")
}

fn entity(spec: &Value) -> EntityType {
    let mut ty = EntityType {
        name: spec["type"].as_str().unwrap_or("T").to_owned(),
        fields: Vec::new(),
        relations: BTreeMap::new(),
    };
    for (name, f) in spec["fields"].as_object().into_iter().flatten() {
        let kind = match f["kind"].as_str() {
            Some("string") => FieldKind::String,
            Some("int") => FieldKind::Int,
            Some("float") => FieldKind::Float,
            Some("bool") => FieldKind::Bool,
            Some("json") => FieldKind::Json,
            Some("timestamp") => FieldKind::Timestamp,
            Some("reference") => FieldKind::Reference { target: f["target"].as_str().unwrap_or("T").to_owned() },
            other => panic!("unknown kind {other:?} for `{name}`"),
        };
        let field = ty.add(name, kind);
        if f["nullable"].as_bool() == Some(true) {
            field.nullable();
        }
    }
    ty
}

#[test]
fn the_server_decides_every_shared_filter_case() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(spec_dir())
        .expect("spec/filters exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no filter spec files");
    let mut decided = 0;
    for file in files {
        let text = std::fs::read_to_string(&file).expect("readable");
        let spec: Value = serde_json::from_str(&text).expect("valid JSON");
        let ty = entity(&spec);
        for (i, case) in spec["cases"].as_array().expect("cases").iter().enumerate() {
            let row_name = case["row"].as_str().expect("row name");
            let mut fields = spec["rows"][row_name].as_object().cloned().expect("row exists");
            let id = fields.remove("id").and_then(|v| v.as_i64()).expect("row id");
            let row = Row { ty: ty.name.as_str().into(), id, version: 1, created: 1, fields };
            let filters = Filters::parse(case["filters"].as_object().expect("filters object")).expect("parses");
            let compiled = filters.compile(&ty).unwrap_or_else(|e| panic!("{}#{i}: {e}", file.display()));
            let want = case["matches"].as_bool().expect("matches");
            assert_eq!(compiled.matches(&row), want, "{} case {i}: {} on {row_name}", file.display(), case["filters"]);
            decided += 1;
        }
    }
    assert!(decided >= 50, "only {decided} cases");
}
