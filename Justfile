# The commands people run. `just --list` shows them.

# Run the demo server (WebSocket on 127.0.0.1:7100, path /ws; QUIC on 127.0.0.1:7101; data in ./statecast-data).
run *ARGS:
    cargo run --release -p statecast-server -- {{ARGS}}

# Every test of every crate, end-to-end tests included.
test:
    cargo test --workspace --all-features

# Only the server's end-to-end tests (they start the real binary).
e2e-server:
    cargo test -p statecast-server --tests

# The browser tier: the JS client's unit tests, then the inspector in headless
# Chromium against the real binary (installs chromium and the npm packages if missing).
e2e:
    .ci/e2e

# Print TypeScript interfaces for the demo app's entity types.
schema-ts:
    cargo run -q -p statecast-server -- schema --ts

# Benchmarks against the release server and a bare WebSocket broadcast baseline
# (see docs/BENCHMARKS.md). `just bench` is the quick mode (about a minute);
# `just bench --full` sweeps everything. Raises the open-file limit for the
# 10,000 idle connections of the memory scenario.
bench *ARGS:
    cargo build --release -p statecast-server -p statecast-bench
    ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"; cargo run --release -p statecast-bench -- {{ARGS}}

# Lints, warnings as errors.
lint:
    cargo clippy --workspace --all-targets --all-features -- -D warnings

# The API docs, warnings as errors (what CI checks).
doc:
    RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --workspace --all-features

# Format the code.
fmt:
    cargo fmt --all

# What CI runs: format check, lints, docs, tests.
ci:
    .ci/run
