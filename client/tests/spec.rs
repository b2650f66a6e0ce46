//! The shared behaviour spec: every scenario in `spec/client/*.json` and
//! every filter case in `spec/filters/*.json`, run against the Rust client's
//! pure state machine (`ClientState`). The JavaScript client runs the same
//! files (`clients/js/test/spec.test.js`); the format is in `spec/README.md`.

use serde_json::{Value, json};
use statecast_client::ClientState;
use statecast_client::state::{Effect, StreamViewStatus};
use statecast_client::{ChangeKind, StreamRequest, ViewRow, WriteOptions};
use statecast_core::protocol::v1::{ClientMessage, Operation, ServerMessage, Welcome, WriteOp};
use statecast_core::row::Row;
use statecast_core::schema::EntityType;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Frame keys that must be absent when a scenario does not name them.
const STRICT: [&str; 4] = ["since", "epoch", "snapshot", "after"];

fn spec_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../spec")
}

fn read(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn json_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("spec folder")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json") && !p.ends_with("schema.json"))
        .collect();
    files.sort();
    files
}

// ---- filters ----------------------------------------------------------------

/// The client decides filters with the entity types `welcome` describes; the
/// same cases are decided by the server (core/tests/filter_spec.rs) and the JS client.
#[test]
fn the_client_decides_every_shared_filter_case_as_the_server_does() {
    for file in json_files(&spec_dir().join("filters")) {
        let spec = read(&file);
        let fields: Vec<Value> = spec["fields"]
            .as_object()
            .expect("fields")
            .iter()
            .map(|(name, f)| {
                let mut f = f.clone();
                f["name"] = json!(name);
                f
            })
            .collect();
        let ty = spec["type"].as_str().expect("type");
        let welcome = json!({"types": {ty: {"fields": fields}}});
        let info = statecast_client::tree::SchemaInfo::from_welcome(&welcome);
        let entity: &EntityType = info.entities.get(ty).expect("the type from the schema");
        let cases = spec["cases"].as_array().expect("cases");
        assert!(!cases.is_empty());
        for (i, case) in cases.iter().enumerate() {
            let name = case["row"].as_str().expect("row");
            let mut fields = spec["rows"][name].as_object().cloned().expect("row");
            let id = fields.remove("id").and_then(|v| v.as_i64()).expect("id");
            let row = Row { ty: ty.into(), id, version: 1, created: 1, fields };
            let filters =
                statecast_core::stream::Filters::parse(case["filters"].as_object().expect("filters")).expect("parses");
            let compiled = filters.compile(entity).unwrap_or_else(|e| panic!("case {i}: {e}"));
            assert_eq!(compiled.matches(&row), case["matches"].as_bool().expect("matches"), "case {i}: {case}");
        }
    }
}

// ---- scenarios --------------------------------------------------------------

struct Runner {
    name: String,
    schema: Value,
    state: ClientState,
    frames: Vec<Value>,
    /// alias → writeId, and writeId → how it settled ("ok" or a reason).
    writes: HashMap<String, i64>,
    settled: HashMap<i64, String>,
    streams: HashMap<String, u64>,
    /// context name or stream alias → "kind:Type:key" since the last check.
    changes: HashMap<String, Vec<String>>,
}

fn kind(k: ChangeKind) -> &'static str {
    match k {
        ChangeKind::Added => "added",
        ChangeKind::Updated => "updated",
        ChangeKind::Removed => "removed",
    }
}

fn row_json(r: &ViewRow) -> Value {
    let mut obj = r.fields.clone();
    obj.insert("_type".into(), json!(&*r.ty));
    obj.insert("id".into(), json!(r.id));
    obj.insert("_key".into(), json!(r.key));
    obj.insert("_version".into(), json!(r.version));
    obj.insert("_pending".into(), json!(r.pending));
    Value::Object(obj)
}

fn subset(actual: &Value, expected: &Value, at: &str) {
    for (k, v) in expected.as_object().expect("an object") {
        assert_eq!(actual.get(k), Some(v), "{at}: `{k}` in {actual}");
    }
}

fn sort_key(r: &Value) -> (String, i64) {
    let ty = r["_type"].as_str().unwrap_or("").to_owned();
    (ty, r.get("_key").and_then(Value::as_i64).or_else(|| r["id"].as_i64()).unwrap_or(0))
}

impl Runner {
    fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            schema: read(&spec_dir().join("client/schema.json")),
            state: ClientState::new("spec"),
            frames: Vec::new(),
            writes: HashMap::new(),
            settled: HashMap::new(),
            streams: HashMap::new(),
            changes: HashMap::new(),
        }
    }

    fn effects(&mut self, effects: Vec<Effect>) {
        for e in effects {
            match e {
                Effect::Settled { write_id, result } => {
                    let how = match result {
                        Ok(_) => "ok".to_owned(),
                        Err(e) => e.reason.to_string(),
                    };
                    self.settled.entry(write_id).or_insert(how);
                }
                Effect::Changed { context, changes } => {
                    let list = self.changes.entry(context).or_default();
                    list.extend(changes.iter().map(|c| format!("{}:{}:{}", kind(c.kind), c.ty, c.key)));
                }
                Effect::StreamChanged { stream, changes } => {
                    let alias = self.streams.iter().find(|(_, l)| **l == stream).map(|(a, _)| a.clone());
                    if let Some(alias) = alias {
                        let list = self.changes.entry(alias).or_default();
                        list.extend(changes.iter().map(|c| format!("{}:{}:{}", kind(c.kind), c.ty, c.key)));
                    }
                }
                _ => {}
            }
        }
        // What the driver would send now (it flushes only while connected):
        // the queued subscribes and unsubscribes, then the writes.
        if !self.state.is_online() {
            return;
        }
        let control = self.state.take_control();
        let writes = self.state.take_sendable();
        for m in control.into_iter().chain(writes.into_iter().map(ClientMessage::Write)) {
            self.frames.push(serde_json::to_value(&m).expect("encodes"));
        }
    }

    fn create_op(&self, c: &Value) -> WriteOp {
        let parent = &c["parent"];
        WriteOp {
            operation: Operation::Create,
            instance_type: c["type"].as_str().expect("type").to_owned(),
            instance_id: c["id"].as_i64(),
            parent_type: parent["type"].as_str().map(str::to_owned),
            parent_id: parent["id"].as_i64(),
            relation_name: parent["relation"].as_str().map(str::to_owned),
            data: c["data"].as_object().cloned(),
            if_version: None,
        }
    }

    fn simple_op(op: Operation, c: &Value) -> WriteOp {
        WriteOp {
            operation: op,
            instance_type: c["type"].as_str().expect("type").to_owned(),
            instance_id: c["id"].as_i64(),
            parent_type: None,
            parent_id: None,
            relation_name: None,
            data: c["data"].as_object().cloned(),
            if_version: None,
        }
    }

    fn write(&mut self, context: &str, ops: Vec<WriteOp>, opts: WriteOptions, alias: Option<&str>) {
        match self.state.write(context, ops, opts) {
            Ok((write_id, _, effects)) => {
                if let Some(a) = alias {
                    self.writes.insert(a.to_owned(), write_id);
                }
                self.effects(effects);
            }
            Err(e) => panic!("{}: the write was refused locally: {e}", self.name),
        }
    }

    fn step(&mut self, s: &Value, i: usize) {
        let obj = s.as_object().expect("a step is an object");
        let (verb, arg) = obj.iter().find(|(k, _)| *k != "as").expect("a verb");
        let at = format!("{} step {i} ({verb})", self.name);
        let alias = s.get("as").and_then(Value::as_str);
        match verb.as_str() {
            "welcome" => {
                let mut w = arg.clone();
                w["type"] = json!("welcome");
                w["connectionId"] = json!("c");
                w["user"] = json!({"id": 1, "name": "alice"});
                w["schema"] = self.schema.clone();
                let welcome: Welcome = serde_json::from_value(w).expect("welcome");
                let effects = self.state.connected(&welcome);
                self.effects(effects);
            }
            "disconnect" => {
                self.state.connection_lost();
                self.effects(Vec::new());
            }
            "subscribe" => {
                let name = arg.as_str().expect("context");
                let (channel, anchor) = name.split_once('/').expect("channel/anchor");
                self.state.add_context(name, channel, anchor.parse().expect("anchor id"));
                self.changes.insert(name.to_owned(), Vec::new());
                self.effects(Vec::new());
            }
            "unsubscribe" => {
                let effects = self.state.unsubscribe(arg.as_str().expect("context"));
                self.effects(effects);
            }
            "save" | "delete" => {
                let op = if verb == "save" { Operation::Save } else { Operation::Delete };
                let opts = WriteOptions { optimistic: arg["optimistic"].as_bool() != Some(false), temp_ids: false };
                let context = arg["context"].as_str().expect("context").to_owned();
                self.write(&context, vec![Self::simple_op(op, arg)], opts, alias);
            }
            "create" => {
                let opts = WriteOptions { optimistic: true, temp_ids: arg["temp"].as_bool() == Some(true) };
                let context = arg["context"].as_str().expect("context").to_owned();
                let op = self.create_op(arg);
                self.write(&context, vec![op], opts, alias);
            }
            "batch" => {
                let context = arg["context"].as_str().expect("context").to_owned();
                let mut temp = false;
                let ops = arg["ops"]
                    .as_array()
                    .expect("ops")
                    .iter()
                    .map(|op| match op["op"].as_str() {
                        Some("save") => Self::simple_op(Operation::Save, op),
                        Some("delete") => Self::simple_op(Operation::Delete, op),
                        _ => {
                            temp |= op["temp"].as_bool() == Some(true);
                            self.create_op(op)
                        }
                    })
                    .collect();
                self.write(&context, ops, WriteOptions { optimistic: true, temp_ids: temp }, alias);
            }
            "server" => {
                let msg: ServerMessage =
                    serde_json::from_value(arg.clone()).unwrap_or_else(|e| panic!("{at}: {e}: {arg}"));
                let effects = self.state.receive(msg);
                self.effects(effects);
            }
            "backoff_passes" => {
                // The driver's retry timer fired: writes waiting to be resent may go.
                for id in self.state.unanswered_write_ids() {
                    self.state.retry_due(id);
                }
                self.effects(Vec::new());
            }
            "time_passes" => {
                // The client's handles time out (the shell's timer); the writes stay queued.
                for id in self.state.unanswered_write_ids() {
                    self.settled.entry(id).or_insert_with(|| "TIMEOUT".to_owned());
                }
            }
            "stream" => {
                let mut request = StreamRequest::new(arg["name"].as_str().expect("name"));
                if let Some(f) = arg["filters"].as_object() {
                    request.filters = f.clone();
                }
                request.fields =
                    arg["fields"].as_array().map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect());
                request.id = arg["id"].as_i64();
                request.snapshot = arg["snapshot"].as_bool() == Some(true);
                let local = self.state.add_stream(request);
                let alias = alias.expect("a stream needs `as`").to_owned();
                self.streams.insert(alias.clone(), local);
                self.changes.insert(alias, Vec::new());
                self.effects(Vec::new());
            }
            "close_stream" => {
                let local = self.streams[arg.as_str().expect("alias")];
                self.state.remove_stream(local);
                self.effects(Vec::new());
            }
            "expect_frames" => {
                let got = std::mem::take(&mut self.frames);
                let want = arg.as_array().expect("frames");
                assert_eq!(got.len(), want.len(), "{at}: frames {}", Value::Array(got.clone()));
                for (j, (g, w)) in got.iter().zip(want).enumerate() {
                    subset(g, w, &format!("{at} frame {j}"));
                    for k in STRICT {
                        assert!(w.get(k).is_some() || g.get(k).is_none(), "{at} frame {j}: unexpected `{k}` in {g}");
                    }
                }
            }
            "expect_view" => {
                let rows: Vec<ViewRow> = match (arg["context"].as_str(), arg["stream"].as_str()) {
                    (Some(c), _) => self.state.view(c),
                    (None, Some(s)) => self.streams.get(s).map(|l| self.state.stream_rows(*l)).unwrap_or_default(),
                    _ => panic!("{at}: expect_view needs context or stream"),
                };
                let mut rows: Vec<Value> = rows.iter().map(row_json).collect();
                rows.sort_by_key(sort_key);
                let mut want = arg["rows"].as_array().expect("rows").clone();
                want.sort_by_key(sort_key);
                let keys: Vec<String> = rows.iter().map(|r| format!("{}:{}", r["_type"], r["_key"])).collect();
                assert_eq!(rows.len(), want.len(), "{at}: rows {keys:?}");
                for (j, (g, w)) in rows.iter().zip(&want).enumerate() {
                    subset(g, w, &format!("{at} row {j}"));
                }
            }
            "expect_changes" => {
                let key = arg["context"].as_str().or_else(|| arg["stream"].as_str()).expect("target");
                let got = self.changes.insert(key.to_owned(), Vec::new()).unwrap_or_default();
                let mut got: Vec<String> =
                    got.into_iter().collect::<std::collections::BTreeSet<_>>().into_iter().collect();
                got.sort();
                let mut want: Vec<String> = arg["changes"]
                    .as_array()
                    .expect("changes")
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect();
                want.sort();
                assert_eq!(got, want, "{at}: changes of {key}");
            }
            "expect_settled" => {
                for (alias, want) in arg.as_object().expect("map") {
                    let got = self.writes.get(alias).and_then(|id| self.settled.get(id)).cloned();
                    assert_eq!(got.as_deref(), want.as_str(), "{at}: write {alias}");
                }
            }
            "expect_status" => {
                for (key, want) in arg.as_object().expect("map") {
                    let status = match self.streams.get(key) {
                        Some(local) => match self.state.stream_info(*local) {
                            Some(i) if i.status == StreamViewStatus::Ready => "ready",
                            Some(_) => "loading",
                            None => "closed",
                        },
                        None if !self.state.has_context(key) => "closed",
                        None if self.state.is_loaded(key) => "ready",
                        None => "loading",
                    };
                    assert_eq!(Some(status), want.as_str(), "{at}: status of {key}");
                }
            }
            "expect_pending" => {
                let want: Vec<i64> = arg.as_array().expect("ids").iter().filter_map(Value::as_i64).collect();
                assert_eq!(self.state.pending_write_ids(), want, "{at}: hello.pending");
            }
            "note" => {}
            other => panic!("{at}: unknown step `{other}`"),
        }
    }
}

#[test]
fn every_client_scenario_holds() {
    let files = json_files(&spec_dir().join("client"));
    assert!(files.len() >= 11, "only {} scenarios", files.len());
    for file in files {
        let scenario = read(&file);
        let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("?").to_owned();
        let mut runner = Runner::new(&name);
        for (i, step) in scenario["steps"].as_array().expect("steps").iter().enumerate() {
            runner.step(step, i);
        }
    }
}
