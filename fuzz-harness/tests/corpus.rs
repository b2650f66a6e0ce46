//! The stable tier of the fuzz targets: every kept corpus file
//! (`fuzz/corpus/<target>/`) through the target's checks, then a short
//! random run per target (random bytes, and corpus files with random edits).

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use statecast_fuzz_harness::TARGETS;
use std::path::PathBuf;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files.into_iter().map(|p| (p.clone(), std::fs::read(&p).expect("a corpus file reads"))).collect()
}

fn target(name: &str) -> fn(&[u8]) {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f).expect("a known target")
}

fn replay(name: &str) {
    let files = corpus(name);
    assert!(!files.is_empty(), "the corpus of {name} is empty");
    let check = target(name);
    for (path, data) in files {
        if std::panic::catch_unwind(|| check(&data)).is_err() {
            panic!("{name}: {} fails (run it in the fuzz target to see why)", path.display());
        }
    }
}

/// One edit of a corpus file: where, what, and the byte.
fn edits() -> impl Strategy<Value = Vec<(usize, u8, u8)>> {
    prop::collection::vec((any::<usize>(), 0u8..4, any::<u8>()), 0..8)
}

fn edit(mut data: Vec<u8>, edits: &[(usize, u8, u8)]) -> Vec<u8> {
    for &(at, op, b) in edits {
        let at = if data.is_empty() { 0 } else { at % (data.len() + 1) };
        match op {
            0 => data.insert(at, b),
            1 if at < data.len() => data[at] = b,
            2 if at < data.len() => {
                data.remove(at);
            }
            _ => {
                // Copy a run from elsewhere in the file (how JSON grows a nested value).
                let from = usize::from(b) % (data.len() + 1);
                let run: Vec<u8> = data[from..(from + 8).min(data.len())].to_vec();
                data.splice(at..at, run);
            }
        }
    }
    data
}

fn random_run(name: &str, cases: u32) {
    let check = target(name);
    let files: Vec<Vec<u8>> = corpus(name).into_iter().map(|(_, d)| d).collect();
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    runner
        .run(&prop::collection::vec(any::<u8>(), 0..256), |data| {
            check(&data);
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{name} on random bytes: {e}"));
    runner
        .run(&(any::<prop::sample::Index>(), edits()), |(i, e)| {
            check(&edit(i.get(&files).clone(), &e));
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{name} on an edited corpus file: {e}"));
}

macro_rules! target_tests {
    ($($name:ident: $cases:expr),* $(,)?) => {
        mod replay {
            $(#[test] fn $name() { super::replay(stringify!($name)); })*
        }
        mod random {
            $(#[test] fn $name() { super::random_run(stringify!($name), $cases); })*
        }
    };
}

target_tests! {
    json_decode: 2000,
    msgpack_decode: 2000,
    quic_framing: 2000,
    filter: 500,
    write_validator: 200,
    client_state: 500,
}
