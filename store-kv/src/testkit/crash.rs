//! kill -9 tests: the test binary runs itself as a writer child process
//! (its `crash_child` test, see [`crate::kv_store_tests`]), kills it with
//! SIGKILL while it is committing, then reopens the store and checks that
//! every commit the child reported durable is there, that the seq continues
//! above every seq the child handed out, and that nothing is corrupt.

use crate::{KvBackend, KvOptions, KvStore};
use statecast_core::store::{AppliedKey, LogRead, NewId, Store, Transaction, TxOp};
use statecast_core::{Fields, OnDelete, Schema};
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Set (to the store path) when this binary runs as the writer child.
const CHILD_PATH: &str = "STATECAST_KV_CRASH_CHILD";
/// The round number the child writes (also its job id and applied-key user).
const CHILD_ROUND: &str = "STATECAST_KV_CRASH_ROUND";
const ROUNDS: i64 = 3;
/// Durable commits the parent waits for before it kills the child.
const DURABLE_BEFORE_KILL: usize = 200;
/// The child commits this many transactions, then waits for the last to be durable.
const BURST: i64 = 5;

fn schema() -> Arc<Schema> {
    Schema::builder()
        .entity("Job", |t| {
            t.string("name");
        })
        .entity("Task", |t| {
            t.reference("job", "Job").on_delete(OnDelete::Cascade);
            t.string("name");
            t.int("n");
        })
        .relation("Job", "tasks", "Task", "job")
        .build()
        .expect("schema")
}

fn obj(v: serde_json::Value) -> Fields {
    v.as_object().cloned().expect("object")
}

fn applied_key(round: i64, n: i64) -> AppliedKey {
    AppliedKey { user: round, client_id: "crash-writer".into(), write_id: n }
}

/// The writer child: a no-op unless started by the parent test.
pub fn crash_child<B: KvBackend>() {
    let Ok(path) = std::env::var(CHILD_PATH) else {
        return;
    };
    let round: i64 = std::env::var(CHILD_ROUND).ok().and_then(|r| r.parse().ok()).expect("round");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(async move {
        // Small seq blocks, so that the run crosses many reservations.
        let options = KvOptions { seq_block: 16, ..KvOptions::default() };
        let store = KvStore::<B>::open_with(&path, schema(), options).expect("child opens the store");
        let mut out = std::io::stdout();
        let job =
            TxOp::Insert { ty: "Job".into(), id: NewId::Given(round), fields: obj(serde_json::json!({"name": "j"})) };
        let c = store.commit(Transaction { ops: vec![job], ..Transaction::default() }).await.expect("job");
        writeln!(out, "COMMITTED {}", c.seq).expect("stdout");
        let mut burst = Vec::new();
        for n in 0.. {
            let ops = vec![
                TxOp::Insert {
                    ty: "Task".into(),
                    id: NewId::Auto,
                    fields: obj(serde_json::json!({"job": round, "name": format!("r{round}-{n}"), "n": n})),
                },
                TxOp::Update { ty: "Job".into(), id: round, fields: obj(serde_json::json!({"name": format!("{n}")})) },
            ];
            let tx = Transaction { ops, applied: Some(applied_key(round, n)), now_ms: 1, ..Transaction::default() };
            let c = store.commit(tx).await.expect("commit");
            writeln!(out, "COMMITTED {}", c.seq).expect("stdout");
            out.flush().expect("stdout");
            burst.push((c.seq, c.created[0].id, n));
            if n % BURST == BURST - 1 {
                store.wait_durable(c.seq).await.expect("durable");
                for (seq, task, n) in burst.drain(..) {
                    writeln!(out, "DURABLE {seq} {task} {n}").expect("stdout");
                }
                out.flush().expect("stdout");
            }
        }
    });
}

/// One commit the child reported durable.
#[derive(Debug, Clone, Copy)]
struct Reported {
    round: i64,
    seq: u64,
    task: i64,
    n: i64,
}

/// Runs one child round; returns the durable commits it reported and the highest seq it printed.
fn run_child(path: &std::path::Path, round: i64) -> (Vec<Reported>, u64) {
    let exe = std::env::current_exe().expect("current exe");
    let mut child = Command::new(exe)
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_PATH, path)
        .env(CHILD_ROUND, round.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the writer child");
    let stdout = child.stdout.take().expect("child stdout");
    let (lines_tx, lines_rx) = mpsc::channel();
    // Drains the pipe so the child never blocks on it, up to its death.
    let drain = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let (mut reported, mut max_seen) = (Vec::new(), 0);
    let mut take = |line: &str, reported: &mut Vec<Reported>| {
        let parts: Vec<&str> = line.split_whitespace().collect();
        match parts.as_slice() {
            ["COMMITTED", seq] => max_seen = max_seen.max(seq.parse().expect("seq")),
            ["DURABLE", seq, task, n] => reported.push(Reported {
                round,
                seq: seq.parse().expect("seq"),
                task: task.parse().expect("task"),
                n: n.parse().expect("n"),
            }),
            _ => {}
        }
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while reported.len() < DURABLE_BEFORE_KILL {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines_rx.recv_timeout(left) {
            Ok(line) => take(&line, &mut reported),
            Err(e) => panic!("the child stopped reporting ({e:?}) after {} durable commits", reported.len()),
        }
    }
    // Let the child run on a little (a varying while) so the kill lands among
    // commits in flight, not right after a report.
    let jitter = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    std::thread::sleep(Duration::from_millis(5 + u64::from(jitter % 40)));
    child.kill().expect("SIGKILL the child");
    let status = child.wait().expect("reap the child");
    assert!(!status.success(), "the child must have been killed, not exited: {status:?}");
    drain.join().expect("drain thread");
    // What the child printed before it died.
    while let Ok(line) = lines_rx.try_recv() {
        take(&line, &mut reported);
    }
    (reported, max_seen)
}

async fn verify<B: KvBackend>(path: &std::path::Path, reported: &[Reported], max_seen: u64) {
    let store = KvStore::<B>::open(path, schema()).expect("reopen after kill -9");
    let max_durable = reported.iter().map(|r| r.seq).max().unwrap_or(0);
    assert!(store.last_seq() >= max_durable, "last_seq {} < reported durable {max_durable}", store.last_seq());
    assert!(store.durable_seq() >= max_durable);
    for r in reported {
        let row = store.get("Task", r.task).await.expect("get").unwrap_or_else(|| panic!("lost durable commit {r:?}"));
        assert_eq!((row.version, row.created), (r.seq, r.seq), "{r:?}");
        assert_eq!(row.get_i64("n"), Some(r.n));
        assert_eq!(row.get_i64("job"), Some(r.round));
        let rec = store.applied(&applied_key(r.round, r.n)).await.expect("applied").expect("applied record");
        assert_eq!(rec.seq, r.seq);
        assert_eq!(rec.created.first().map(|c| c.id), Some(r.task));
    }
    // Every row and index entry decodes and agrees.
    let rounds: BTreeSet<i64> = reported.iter().map(|r| r.round).collect();
    for round in &rounds {
        let job = store.get("Job", *round).await.expect("get").expect("job row");
        let last_of_round = reported.iter().filter(|r| r.round == *round).map(|r| r.seq).max().unwrap_or(0);
        assert!(job.version >= last_of_round);
        let children = store.children("Task", "job", &[*round]).await.expect("children");
        let ns: Vec<i64> = children.iter().filter_map(|r| r.get_i64("n")).collect();
        assert_eq!(ns, (0..ns.len() as i64).collect::<Vec<_>>(), "round {round}: tasks in commit order, no holes");
        let ids: BTreeSet<i64> = children.iter().map(|r| r.id).collect();
        for r in reported.iter().filter(|r| r.round == *round) {
            assert!(ids.contains(&r.task), "{r:?} missing from children");
        }
    }
    let LogRead::Entries(log) = store.changes_since(0, 100_000).await.expect("log") else {
        panic!("the log holds every commit of this test")
    };
    assert!(log.windows(2).all(|w| w[0].seq < w[1].seq), "log in seq order");
    let logged: BTreeSet<u64> = log.iter().map(|e| e.seq).collect();
    assert!(reported.iter().all(|r| logged.contains(&r.seq)), "every durable commit is in the log");

    let c = store
        .commit(Transaction {
            ops: vec![TxOp::Update { ty: "Job".into(), id: 1, fields: obj(serde_json::json!({"name": "parent"})) }],
            ..Transaction::default()
        })
        .await
        .expect("commit after recovery");
    assert!(c.seq > max_seen, "seq {} reuses a number the child handed out (max {max_seen})", c.seq);
    store.wait_durable(c.seq).await.expect("durable");
    store.close().await.expect("close");
}

pub fn commits_reported_durable_survive_kill_9<B: KvBackend>() {
    if std::env::var(CHILD_PATH).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("db");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let mut reported = Vec::new();
    let mut max_seen = 0;
    for round in 1..=ROUNDS {
        let (mut r, seen) = run_child(&path, round);
        assert!(r.len() >= DURABLE_BEFORE_KILL);
        assert!(r.iter().all(|x| x.seq > max_seen), "round {round} reused a seq of an earlier round");
        reported.append(&mut r);
        max_seen = max_seen.max(seen);
        rt.block_on(verify::<B>(&path, &reported, max_seen));
        // The parent's own commit took a seq too.
        max_seen += 1;
    }
}
