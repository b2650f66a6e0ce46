//! The fault tier: the real binary, on the store of this run, under `kill -9`
//! at random moments and slowed flushes (and, as root, a disk that fills),
//! while writers resend by the protocol's rules (`hello.pending`, the same
//! writeId, in order) and a subscriber keeps its view from deltas.
//!
//! A history checker then confirms: every confirmed write is present exactly
//! once (a confirmed create's row, a confirmed save's value, a confirmed
//! delete's absence), no refused write is visible anywhere (in a state or a
//! delta), every delta names the one before it (`prev`), and the subscriber's
//! view equals the store's.
//!
//! A run is seeded: a failure prints the seed and the history. Replay one
//! with `STATECAST_FAULT_SEED=<seed>`; `STATECAST_FAULT_SEEDS=<n>` runs more.

#![allow(clippy::print_stderr)] // progress and skip notes for the person running the tests

mod common;

use common::*;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long the writers write in one seeded run.
const RUN: Duration = Duration::from_secs(5);
/// How long a write may take to be answered, across restarts, before the run fails.
const SETTLE: Duration = Duration::from_secs(30);

/// Seeded, to pick faults (a failing seed replays).
use statecast_core::testkit::rng::SplitMix as Rng;

/// What happened, in order, for the failure report.
#[derive(Default)]
struct History(Mutex<Vec<String>>);

impl History {
    fn note(&self, line: String) {
        if let Ok(mut h) = self.0.lock() {
            h.push(line);
        }
    }
    fn dump(&self) -> String {
        self.0.lock().map(|h| h.join("\n")).unwrap_or_default()
    }
}

/// A write a writer made, and how it ended.
#[derive(Clone, Debug)]
enum Op {
    Create {
        name: String,
        assignee: i64,
    },
    Save {
        id: i64,
        notes: String,
    },
    Delete {
        name: String,
        id: i64,
    },
    /// A write the policy refuses (a save of a task the writer is not assigned).
    Forbidden {
        notes: String,
    },
}

#[derive(Clone, Debug)]
enum Outcome {
    Confirmed {
        created: Option<i64>,
    },
    Refused {
        #[allow(dead_code)] // in the history
        code: i64,
        #[allow(dead_code)]
        reason: String,
    },
}

/// Where the server listens now (a restart picks a new port).
type Url = Arc<Mutex<String>>;

fn current(url: &Url) -> String {
    url.lock().map(|u| u.clone()).unwrap_or_default()
}

fn message(op: &Op, write_id: i64) -> Value {
    let mut w = match op {
        Op::Create { name, assignee } => create_task(1, Some(-1), json!({"name": name, "assignee": assignee})),
        Op::Save { id, notes, .. } => save("job/1", "Task", *id, json!({"notes": notes})),
        Op::Delete { id, .. } => delete("job/1", "Task", *id),
        Op::Forbidden { notes } => save("job/1", "Task", 1, json!({"notes": notes})),
    };
    w["writeId"] = json!(write_id);
    w
}

/// Reads the rest of a state sent in parts.
async fn whole_state(c: &mut Client, first: Value) -> Option<Value> {
    let mut state = first;
    while state.get("last") == Some(&json!(false)) {
        let next = c.next_event(Duration::from_secs(5)).await?;
        let Event::Msg(part) = next else { return None };
        if part["type"] != "state" {
            continue;
        }
        let more = part["instances"].as_array().cloned().unwrap_or_default();
        if let Some(rows) = state["instances"].as_array_mut() {
            rows.extend(more);
        }
        state["last"] = part["last"].clone();
    }
    Some(state)
}

/// Connects, says hello (with `pending`), subscribes to job/1.
async fn session(url: &Url, token: &str, client_id: &str, pending: &[i64]) -> Option<(Client, Value, Value)> {
    let mut c = Client::try_connect(&current(url), Codec::Json).await?;
    c.client_id = client_id.to_owned();
    let hello = json!({"type": "hello", "protocol": 1, "token": token, "clientId": client_id, "pending": pending});
    let welcome = c.try_request(hello, Duration::from_secs(5)).await.filter(|w| w["type"] == "welcome")?;
    let state =
        c.try_request(json!({"type": "subscribe", "channel": "job", "anchorId": 1}), Duration::from_secs(5)).await?;
    if state["type"] != "state" {
        return None;
    }
    let state = whole_state(&mut c, state).await?;
    Some((c, welcome, state))
}

/// Sends one write until it has an answer, reconnecting (with the write in
/// `pending`) and resending with the same writeId whenever the outcome is unknown.
async fn deliver(conn: &mut Option<Client>, who: &Who, write_id: i64, msg: &Value) -> Result<Outcome, String> {
    let deadline = Instant::now() + SETTLE;
    while Instant::now() < deadline {
        if conn.is_none() {
            let Some((c, welcome, _)) = session(&who.url, who.token, &who.client_id, &[write_id]).await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            *conn = Some(c);
            let applied = welcome["applied"].as_array().cloned().unwrap_or_default();
            if let Some(a) = applied.iter().find(|a| a["writeId"] == write_id) {
                let created = a["created"].as_array().and_then(|c| c.first()).and_then(|c| c["id"].as_i64());
                return Ok(Outcome::Confirmed { created });
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        match c.try_write(msg.clone(), Duration::from_secs(5)).await {
            Some(r) if r["success"] == true => {
                let created = r["instanceId"].as_i64().or_else(|| r["created"][0]["id"].as_i64());
                return Ok(Outcome::Confirmed { created });
            }
            Some(r) => {
                let (code, reason) = error_of(&r);
                if code == 503 {
                    // Unknown or not done: the same write again, a little later.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                return Ok(Outcome::Refused { code, reason });
            }
            None => *conn = None,
        }
    }
    Err(format!("{} write {write_id} got no answer within {SETTLE:?}", who.client_id))
}

struct Who {
    token: &'static str,
    user: i64,
    /// Makes only writes the policy refuses (saves of a task it is not assigned).
    forbidden: bool,
    client_id: String,
    url: Url,
}

/// One writer: creates, saves and deletes its own tasks (or makes only
/// forbidden writes), one at a time, until `stop`.
async fn writer(
    who: Who,
    mut rng: Rng,
    stop: Arc<AtomicBool>,
    history: Arc<History>,
) -> Result<Vec<(Op, Outcome)>, String> {
    let mut conn = None;
    let mut mine: Vec<(String, i64)> = Vec::new();
    let mut done = Vec::new();
    let mut write_id = 0;
    while !stop.load(Ordering::SeqCst) {
        write_id += 1;
        let tag = format!("{}-{write_id}", who.client_id);
        let op = match (who.forbidden, rng.below(10), mine.len()) {
            (true, _, _) => Op::Forbidden { notes: format!("forbidden {tag}") },
            (_, 0..=3, _) | (_, _, 0) => Op::Create { name: format!("task {tag}"), assignee: who.user },
            (_, 4..=8, n) => {
                let id = mine[rng.below(n as u64) as usize].1;
                Op::Save { id, notes: format!("notes {tag}") }
            }
            (_, _, n) => {
                let (name, id) = mine.remove(rng.below(n as u64) as usize);
                Op::Delete { name, id }
            }
        };
        let outcome = deliver(&mut conn, &who, write_id, &message(&op, write_id)).await?;
        history.note(format!("{} #{write_id}: {op:?} → {outcome:?}", who.client_id));
        match (&op, &outcome) {
            (Op::Create { name, .. }, Outcome::Confirmed { created: Some(id) }) => mine.push((name.clone(), *id)),
            (Op::Create { .. }, Outcome::Confirmed { created: None }) => {
                return Err(format!("{} #{write_id}: a confirmed create without its id", who.client_id));
            }
            // Everything alice and bob write is allowed: a refusal is a wrong answer.
            (_, Outcome::Refused { code, reason }) if !who.forbidden => {
                return Err(format!("{} #{write_id}: {op:?} refused {code} {reason}", who.client_id));
            }
            _ => {}
        }
        done.push((op, outcome));
        tokio::time::sleep(rng.ms(0, 15)).await;
    }
    Ok(done)
}

/// The subscriber: a view of job/1 kept from deltas, the `prev` chain checked,
/// no refused value ever seen. Resubscribes after every restart.
async fn subscriber(url: Url, stop: Arc<AtomicBool>, history: Arc<History>) -> Result<BTreeMap<i64, Value>, String> {
    // The last restart may land just as the run stops: an attempt begun
    // against the killed server fails then. Reconnecting may take until
    // SETTLE after the stop, as a write's answer may.
    let mut stopped_at: Option<Instant> = None;
    loop {
        let Some((mut c, _, state)) = session(&url, "bob", "fault-watcher", &[]).await else {
            if stop.load(Ordering::SeqCst) && stopped_at.get_or_insert_with(Instant::now).elapsed() > SETTLE {
                return Err("the subscriber could not reconnect at the end".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let mut view = tasks_of(&state);
        check_no_forbidden(&state, "state")?;
        let mut last = state["seq"].as_i64().ok_or("state without seq")?;
        loop {
            match c.next_event(Duration::from_millis(300)).await {
                Some(Event::Msg(m)) if m["type"] == "delta" => {
                    check_no_forbidden(&m, "delta")?;
                    let (seq, prev) = (m["seq"].as_i64().unwrap_or(-1), m["prev"].as_i64().unwrap_or(-1));
                    if prev != last {
                        return Err(format!("delta {seq} names prev {prev}, but the last one seen was {last}: {m}"));
                    }
                    last = seq;
                    apply(&mut view, &m);
                }
                Some(Event::Msg(_)) => {}
                Some(Event::Closed(_)) => {
                    history.note("watcher: connection ended; resubscribing".into());
                    break;
                }
                None if stop.load(Ordering::SeqCst) => return Ok(view),
                None => {}
            }
        }
    }
}

fn tasks_of(state: &Value) -> BTreeMap<i64, Value> {
    rows(state).into_iter().filter(|((ty, _), _)| ty == "Task").map(|((_, id), row)| (id, row)).collect()
}

fn apply(view: &mut BTreeMap<i64, Value>, delta: &Value) {
    for change in changes(delta).into_iter().filter(|c| c["_type"] == "Task") {
        let Some(id) = change["id"].as_i64() else { continue };
        match change["op"].as_str() {
            Some("delete") => {
                view.remove(&id);
            }
            _ => {
                let row = view.entry(id).or_insert_with(|| json!({}));
                if let (Some(row), Some(fields)) = (row.as_object_mut(), change.as_object()) {
                    for (k, v) in fields {
                        if k != "op" {
                            row.insert(k.clone(), v.clone());
                        }
                    }
                }
            }
        }
    }
}

fn check_no_forbidden(msg: &Value, what: &str) -> Result<(), String> {
    let text = msg.to_string();
    match text.contains("forbidden ") {
        true => Err(format!("a refused write is visible in a {what}: {text}")),
        false => Ok(()),
    }
}

/// The history checker: the final state against every outcome.
fn check_history(done: &[(Op, Outcome)], store: &BTreeMap<i64, Value>) -> Result<(), String> {
    let by_name = |name: &str| store.values().filter(|r| r["name"] == name).count();
    let mut last_notes: BTreeMap<i64, String> = BTreeMap::new();
    let mut deleted = std::collections::BTreeSet::new();
    for (op, outcome) in done {
        match (op, outcome) {
            (Op::Create { name, .. }, Outcome::Confirmed { .. }) => {
                let want = usize::from(!done.iter().any(
                    |(o, out)| matches!((o, out), (Op::Delete { name: n, .. }, Outcome::Confirmed { .. }) if n == name),
                ));
                if by_name(name) != want {
                    return Err(format!("confirmed create {name:?}: {} rows hold it, expected {want}", by_name(name)));
                }
            }
            (Op::Create { name, .. }, Outcome::Refused { .. }) if by_name(name) != 0 => {
                return Err(format!("refused create {name:?} is in the store"));
            }
            (Op::Save { id, notes, .. }, Outcome::Confirmed { .. }) => {
                last_notes.insert(*id, notes.clone());
            }
            (Op::Delete { id, .. }, Outcome::Confirmed { .. }) => {
                deleted.insert(*id);
            }
            (Op::Forbidden { .. }, Outcome::Confirmed { .. }) => {
                return Err(format!("a forbidden write was confirmed: {op:?}"));
            }
            _ => {}
        }
    }
    for (id, notes) in last_notes.iter().filter(|(id, _)| !deleted.contains(id)) {
        let got = store.get(id).map(|r| r["notes"].clone());
        if got != Some(json!(notes)) {
            return Err(format!("Task {id}: the last confirmed save wrote {notes:?}, the store holds {got:?}"));
        }
    }
    for id in &deleted {
        if store.contains_key(id) {
            return Err(format!("Task {id} was deleted (confirmed) but is in the store"));
        }
    }
    Ok(())
}

/// A small tmpfs (root only) whose free space a ballast file takes and gives back.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount() -> Option<SmallDisk> {
        let dir = tempfile::tempdir().ok()?;
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64m", "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        mounted.then_some(SmallDisk { dir })
    }

    /// Takes every free byte.
    fn fill(&self) {
        use std::io::Write as _;
        let Ok(mut f) = std::fs::File::create(self.dir.path().join("ballast")) else { return };
        let block = vec![0u8; 256 * 1024];
        while f.write_all(&block).is_ok() {}
    }

    fn free(&self) {
        let _ = std::fs::remove_file(self.dir.path().join("ballast"));
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

/// One seeded run against a fresh server; with `disk`, on that disk, which
/// fills up once during the run.
#[allow(clippy::print_stderr)] // a helper of the tests: the seed's summary for a failing run
async fn run_seed(seed: u64, disk: Option<&SmallDisk>) -> Result<(), String> {
    let mut rng = Rng(seed);
    let flush_delay = match StoreKind::from_env() {
        // A PostgreSQL commit is durable when it returns: no flush to slow.
        StoreKind::Postgres => 0,
        _ => [0u64, 5, 40][rng.below(3) as usize],
    };
    let history = Arc::new(History::default());
    history.note(format!("seed {seed}: store {:?}, --flush-delay-ms {flush_delay}", StoreKind::from_env()));
    let flags = ["--flush-delay-ms", &flush_delay.to_string()];
    let server = match disk {
        Some(d) => TestServer::start_with_args(d.dir.path(), &flags),
        None => TestServer::start_args(&flags),
    };
    let server = Arc::new(Mutex::new(server));
    let url: Url = Arc::new(Mutex::new(server.lock().map(|s| s.url.clone()).unwrap_or_default()));
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = tokio::spawn(subscriber(url.clone(), stop.clone(), history.clone()));
    let mut writers = Vec::new();
    // bob also writes as a second client that only makes refused writes (task 1 is alice's).
    for (i, (token, user, forbidden)) in
        [("alice", 1, false), ("bob", 2, false), ("bob", 2, true)].into_iter().enumerate()
    {
        let client_id = format!("fault-{seed}-{token}{}", if forbidden { "-forbidden" } else { "" });
        let who = Who { token, user, forbidden, client_id, url: url.clone() };
        writers.push(tokio::spawn(writer(who, Rng(seed ^ (i as u64 + 1) << 32), stop.clone(), history.clone())));
    }
    // The faults: kill -9 at random moments, then start again on the same data.
    let until = Instant::now() + RUN;
    let mut kills = 0;
    let mut filled = false;
    while Instant::now() < until {
        kills += 1;
        tokio::time::sleep(rng.ms(150, 900)).await;
        if let (Some(d), false) = (disk, filled) {
            // The disk fills under the writers for a while: the store refuses
            // (or stops the server); then space comes back.
            filled = true;
            history.note("the disk fills".into());
            d.fill();
            tokio::time::sleep(rng.ms(300, 1000)).await;
            d.free();
            history.note("the disk has room again".into());
        }
        let Ok(mut s) = server.lock() else { break };
        history.note("kill -9; restart".into());
        s.relaunch();
        if let Ok(mut u) = url.lock() {
            *u = s.url.clone();
        }
    }
    stop.store(true, Ordering::SeqCst);
    let mut done = Vec::new();
    for w in writers {
        done.extend(w.await.map_err(|e| format!("writer panicked: {e}"))??);
    }
    let view = watcher.await.map_err(|e| format!("watcher panicked: {e}"))??;
    let (_c, _, state) = session(&url, "carol", "fault-checker", &[]).await.ok_or("no final state")?;
    let store = tasks_of(&state);
    check_no_forbidden(&state, "final state")?;
    check_history(&done, &store).map_err(|e| format!("{e}\n--- history ---\n{}", history.dump()))?;
    if view != store {
        return Err(format!("the subscriber's view differs from the store\nview: {view:?}\nstore: {store:?}"));
    }
    let confirmed = done.iter().filter(|(_, o)| matches!(o, Outcome::Confirmed { .. })).count();
    eprintln!(
        "seed {seed}: {kills} kill -9s, {} writes ({confirmed} confirmed), {} tasks, flush delay {flush_delay} ms",
        done.len(),
        store.len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_writes_survive_kill_9_and_slow_flushes() {
    let seeds: Vec<u64> = match std::env::var("STATECAST_FAULT_SEED").ok().and_then(|s| s.parse().ok()) {
        Some(seed) => vec![seed],
        None => {
            let n = std::env::var("STATECAST_FAULT_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(2);
            let base =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
            (0..n).map(|i| base.wrapping_add(i)).collect()
        }
    };
    for seed in seeds {
        if let Err(e) = run_seed(seed, None).await {
            panic!("fault tier failed with seed {seed} (replay: STATECAST_FAULT_SEED={seed}): {e}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_writes_survive_a_disk_that_fills() {
    if StoreKind::from_env() == StoreKind::Postgres {
        eprintln!("skipped: PostgreSQL keeps its data on its own disk");
        return;
    }
    let Some(disk) = SmallDisk::mount() else {
        eprintln!("skipped: mounting a tmpfs needs root (CI runs as root)");
        return;
    };
    let seed = std::env::var("STATECAST_FAULT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(7, |d| d.as_nanos() as u64)
    });
    if let Err(e) = run_seed(seed, Some(&disk)).await {
        panic!("fault tier (full disk) failed with seed {seed} (replay: STATECAST_FAULT_SEED={seed}): {e}");
    }
}
