//! The `statecast-server` binary: the demo app (by default) on the embedded
//! fjall store (or sled, SQLite, PostgreSQL), served over WebSocket and QUIC,
//! until SIGINT/SIGTERM; `statecast-server schema [--ts]` prints the demo
//! schema as JSON or TypeScript; `statecast-server token --sub 1 --ttl 1h`
//! prints a JWT signed with the secret serving uses.

// A binary talks to its user: the listening line on stdout, the rest on stderr.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use clap::Parser;
use statecast_core::Store;
use statecast_server::builder::{ServerBuilder, ServerError};
use statecast_server::config::{Args, Command};
use statecast_server::http::HttpEndpoints;
use statecast_server::{
    Config, Mode, QUIC_FINGERPRINT_PREFIX, ServerAuth, StoreSpec, demo, quic_listening_line, schema_export,
};
use statecast_store_fjall::FjallStore;
use statecast_store_kv::KvOptions;
use statecast_store_sled::SledStore;
use statecast_store_sql::{SqlOptions, SqlStore};
use statecast_transport_quic::QuicConfig;
use statecast_transport_ws::WsConfig;
use std::process::ExitCode;
use std::sync::Arc;

// mimalloc in place of the system allocator: the engine allocates per row
// and per frame, and glibc's malloc was a tenth of the server's time
// (docs/BENCHMARKS.md, session 10: about a fifth more durable writes/s).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(Command::Schema { ts }) = &args.command {
        let schema = demo::schema();
        let channels = demo::channels(&schema);
        let text = match ts {
            true => schema_export::typescript(&schema, &channels),
            false => format!("{:#}\n", schema_export::schema_json(&schema, &channels)),
        };
        // A reader that stops early (`| head`) is no error: exit quietly.
        return match std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("statecast-server: can't write the schema: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let token = match &args.command {
        Some(Command::Token { sub, ttl, name }) => Some((*sub, ttl.clone(), name.clone())),
        _ => None,
    };
    let config = match Config::load(args, |name| std::env::var(name).ok()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("statecast-server: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some((sub, ttl, name)) = token {
        // A token signed as serving would check it: the same secret, issuer and audience.
        return match statecast_server::token::issue(&config, sub, &ttl, name.as_deref()) {
            Ok(token) => {
                println!("{token}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("statecast-server token: {e}");
                ExitCode::from(2)
            }
        };
    }
    statecast_server::init_tracing(&config.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("statecast-server: can't start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("statecast-server: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> Result<(), Box<dyn std::error::Error>> {
    // A taken port is found before the store is opened or seeded.
    if let Err(e) = std::net::TcpListener::bind(config.ws_addr) {
        return Err(format!("can't listen on {} (WebSocket): {e}", config.ws_addr).into());
    }
    let schema = demo::schema();
    let sql_options = SqlOptions {
        log_capacity: config.log_keep,
        log_max_age: config.log_max_age,
        flush_delay: config.flush_delay,
        ..SqlOptions::default()
    };
    let kv_options =
        KvOptions { log_capacity: config.log_keep, flush_delay: config.flush_delay, ..KvOptions::default() };
    let store: Arc<dyn Store> = match &config.store {
        StoreSpec::Sled(path) => Arc::new(
            SledStore::open_with(path, schema.clone(), kv_options)
                .map_err(|e| format!("can't open the sled store in {}: {e}", path.display()))?,
        ),
        StoreSpec::Fjall(path) => Arc::new(
            FjallStore::open_with(path, schema.clone(), kv_options)
                .map_err(|e| format!("can't open the fjall store in {}: {e}", path.display()))?,
        ),
        StoreSpec::Sqlite(path) => Arc::new(
            SqlStore::open_sqlite(path, schema.clone(), sql_options)
                .await
                .map_err(|e| format!("can't open the SQLite store {}: {e}", path.display()))?,
        ),
        StoreSpec::Postgres(url) => Arc::new(
            SqlStore::open_postgres(url, schema.clone(), sql_options)
                .await
                .map_err(|e| format!("can't open the PostgreSQL store {}: {e}", config.store))?,
        ),
    };
    let auth = ServerAuth::for_config(&config, demo::dev_tokens());
    let ws = WsConfig {
        frame_limit: config.frame_limit,
        outbox_capacity: config.outbox_capacity,
        outbox_bytes: config.outbox_bytes,
        path: config.ws_path.clone(),
        ping_interval: Some(config.ping_interval),
        idle_timeout: config.idle_timeout(),
        ..WsConfig::default()
    };
    let mut builder = ServerBuilder::new(schema.clone())
        .channels(demo::channels(&schema))
        .streams(demo::streams(&schema))
        .store(store.clone())
        .authenticator(auth)
        .engine_config(config.engine_config())
        .http_endpoints(HttpEndpoints { inspector: config.inspector, metrics: config.metrics })
        .websocket(config.ws_addr, ws);
    if let Some(addr) = config.quic_addr {
        let quic = QuicConfig {
            frame_limit: config.frame_limit,
            outbox_capacity: config.outbox_capacity,
            outbox_bytes: config.outbox_bytes,
            keep_alive_interval: Some(config.ping_interval),
            idle_timeout: config.idle_timeout(),
            ..QuicConfig::with_tls(config.quic_tls())
        };
        builder = builder.quic(addr, quic);
    }
    let engine = builder.build_engine()?;
    if config.mode.seeds_demo_rows() {
        if demo::seed_if_empty(&engine, config.demo_jobs).await? {
            eprintln!("statecast-server: the store was empty; inserted the demo rows (jobs 1–{})", config.demo_jobs);
        } else if config.demo_jobs != *demo::DEMO_JOBS_RANGE.start() {
            tracing::warn!(
                demo_jobs = config.demo_jobs,
                "--demo-jobs has no effect: the store already holds rows (start on an empty store)"
            );
        }
    }
    let server = builder.serve(engine).await?;
    eprintln!("statecast-server {} — mode {}, store {}", env!("CARGO_PKG_VERSION"), config.mode, config.store);
    if config.mode == Mode::Demo {
        eprintln!("  dev tokens: alice, bob, dave (members of project Apollo: alice, bob), carol (admin)");
        eprintln!(
            "  try: cargo run -p statecast-client --bin statecast -- repl {} --token alice  then  {{\"type\":\"subscribe\",\"channel\":\"job\",\"anchorId\":1}}",
            server.ws_urls().first().map_or("", String::as_str)
        );
    }
    for quic in server.quic_listeners() {
        let cert = &quic.certificate;
        let kind = match (cert.self_signed, cert.generated) {
            (true, true) => "self-signed, generated now",
            (true, false) => "self-signed",
            (false, _) => "from --quic-cert",
        };
        // Absolute, so the line can be copied from any directory.
        let cert_path = std::path::absolute(&cert.cert_path).unwrap_or_else(|_| cert.cert_path.clone());
        eprintln!("  quic: {} certificate {} ({kind})", quic.url(), cert_path.display());
        eprintln!("  {QUIC_FINGERPRINT_PREFIX}{}", cert.fingerprint);
        if cert.self_signed {
            eprintln!("  clients pin it: --fingerprint {}  (or --ca {})", cert.fingerprint, cert_path.display());
        }
    }
    for url in server.ws_urls() {
        let http = url.replacen("ws://", "http://", 1).trim_end_matches(config.ws_path.as_str()).to_owned();
        eprintln!("  inspector: {http}/");
        eprintln!("  health: {http}/healthz");
        println!("listening {url}");
    }
    for quic in server.quic_listeners() {
        println!("{}", quic_listening_line(quic.addr));
    }
    match server.run_until_signal().await {
        Ok(()) => {
            eprintln!("statecast-server: stopped cleanly");
            Ok(())
        }
        Err(e @ ServerError::StoreFailed(_)) => {
            // Exit now, with the store still held: dropping it would run its
            // engine's teardown (joining worker threads, a last journal
            // flush) against the failed device, which can block for good.
            // What was durable is on disk; a restart recovers it.
            eprintln!("statecast-server: {e}");
            std::process::exit(1)
        }
        Err(e) => Err(e.into()),
    }
}
