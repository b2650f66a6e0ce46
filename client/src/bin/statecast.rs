//! `statecast`: watch a context or a stream live, send one write, or speak
//! the protocol frame by frame (`repl`), from the command line.

// A command-line tool: stdout carries its output, stderr its errors.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use clap::{Parser, Subcommand};
use serde_json::{Value, json};
use statecast_client::{
    ChangeKind, Client, ClientConfig, ClientError, QuicTrust, StreamRequest, StreamViewEvent, ViewEvent, ViewRow,
    WriteOptions,
};
use statecast_protocol::Codec;
use statecast_protocol::v1::Write;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(name = "statecast", version, about = "Statecast command-line client")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// How to reach the server.
#[derive(clap::Args, Debug)]
struct Conn {
    /// Server URL: ws://127.0.0.1:7100/ws, wss://host/ws or quic://127.0.0.1:7101
    url: String,
    #[arg(long, env = "STATECAST_TOKEN")]
    token: String,
    /// Speak MessagePack (binary frames) instead of JSON over WebSocket (QUIC always does).
    #[arg(long)]
    msgpack: bool,
    /// wss:// and QUIC: trust server certificates issued by the CA(s) in this PEM file.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["fingerprint", "insecure_dev"])]
    ca: Option<std::path::PathBuf>,
    /// QUIC: trust exactly the certificate with this SHA-256 fingerprint (the server prints it).
    #[arg(long, value_name = "HEX", conflicts_with = "insecure_dev")]
    fingerprint: Option<String>,
    /// QUIC: trust any certificate. For local demos only.
    #[arg(long)]
    insecure_dev: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print a context's view as one JSON line per change (rows with their pending mark).
    Watch {
        #[command(flatten)]
        conn: Conn,
        /// Channel name, e.g. job
        channel: String,
        /// Anchor id, e.g. 1
        anchor: i64,
    },
    /// Send one write (the seed's message without `type`/`writeId`) and print the answer.
    Write {
        #[command(flatten)]
        conn: Conn,
        /// The write as JSON, e.g. '{"operation":"save","instanceType":"Task","instanceId":1,"data":{"status":"done"}}'
        write: String,
        /// The context to check the write against (default: the write's `context`).
        #[arg(long)]
        context: Option<String>,
    },
    /// Print a live stream view: with --snapshot its rows first (`{"snapshot": row}`),
    /// then each change once (`{"seq", "action", "id", "data", "row"}`).
    Stream {
        #[command(flatten)]
        conn: Conn,
        /// The stream's name, e.g. tasks
        name: String,
        // The help is an attribute, not a doc comment, because rustdoc would
        // read `[__LOOKUP]` as a link.
        #[arg(
            long = "filter",
            value_name = "FIELD[__LOOKUP]=VALUE",
            help = "A filter FIELD[__LOOKUP]=VALUE (VALUE is JSON if it parses, else a string); repeatable."
        )]
        filters: Vec<String>,
        /// Project full-payload events to these fields.
        #[arg(long, value_delimiter = ',')]
        fields: Option<Vec<String>>,
        /// Start the view from the rows that match now (printed first).
        #[arg(long)]
        snapshot: bool,
    },
    /// Speak the protocol by hand: says hello with the token, then sends each
    /// line of stdin as one frame (JSON; a `write` without `writeId` gets the
    /// next one) and prints every frame received as one JSON line. At the end
    /// of stdin it waits for the answers to what it sent, then exits.
    Repl {
        #[command(flatten)]
        conn: Conn,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(2, &format!("can't start the async runtime: {e}")),
    };
    runtime.block_on(async {
        match cli.command {
            Command::Watch { conn, channel, anchor } => watch(conn, channel, anchor).await,
            Command::Write { conn, write, context } => write_once(conn, write, context).await,
            Command::Stream { conn, name, filters, fields, snapshot } => {
                stream(conn, name, filters, fields, snapshot).await
            }
            Command::Repl { conn } => repl(conn).await,
        }
    })
}

fn fail(code: u8, message: &str) -> ExitCode {
    eprintln!("statecast: {message}");
    ExitCode::from(code)
}

fn client_error(e: &ClientError) -> ExitCode {
    match e {
        ClientError::Unauthenticated(w) => {
            fail(3, &format!("the server refused the token: {} {}: {}", w.code, w.reason, w.message))
        }
        ClientError::Refused(w) => fail(1, &format!("refused: {} {}: {}", w.code, w.reason, w.message)),
        other => fail(2, &other.to_string()),
    }
}

fn config(conn: Conn) -> ClientConfig {
    let mut cfg = ClientConfig::new(conn.url, conn.token);
    if conn.msgpack {
        cfg.codec = Codec::MsgPack;
    }
    cfg.tls_ca_file = conn.ca.clone();
    cfg.quic_trust = match (conn.ca, conn.fingerprint, conn.insecure_dev) {
        (Some(ca), _, _) => Some(QuicTrust::CaFile(ca)),
        (None, Some(fp), _) => Some(QuicTrust::Fingerprint(fp)),
        (None, None, true) => Some(QuicTrust::InsecureDev),
        (None, None, false) => None,
    };
    cfg
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

async fn watch(conn: Conn, channel: String, anchor: i64) -> ExitCode {
    let client = match Client::connect(config(conn)).await {
        Ok(c) => c,
        Err(e) => return client_error(&e),
    };
    let ctx = match client.subscribe(&channel, anchor).await {
        Ok(c) => c,
        Err(e) => return client_error(&e),
    };
    let mut events = ctx.watch();
    let print = |ctx: &statecast_client::Context| {
        let rows: Vec<Value> = ctx.view().iter().map(row_json).collect();
        println!("{}", json!({"context": ctx.name(), "seq": ctx.seq(), "rows": rows}));
    };
    print(&ctx);
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Ok(ViewEvent::Closed(reason)) => {
                    println!("{}", json!({"context": ctx.name(), "closed": reason}));
                    return ExitCode::SUCCESS;
                }
                Ok(_) => print(&ctx),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => print(&ctx),
                Err(_) => return ExitCode::SUCCESS,
            },
            _ = tokio::signal::ctrl_c() => return ExitCode::SUCCESS,
        }
    }
}

async fn write_once(conn: Conn, write: String, context: Option<String>) -> ExitCode {
    let mut value: Value = match serde_json::from_str(&write) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => return fail(2, "the write must be a JSON object"),
        Err(e) => return fail(2, &format!("the write is not valid JSON: {e}")),
    };
    value["writeId"] = json!(0);
    let context = context.or_else(|| value.get("context").and_then(Value::as_str).map(str::to_owned));
    let Some(context) = context else { return fail(2, "name the context with --context (or `context` in the write)") };
    let Some((channel, anchor)) = statecast_protocol::context::parse_context(&context) else {
        return fail(2, &format!("`{context}` is not a context name like job/1"));
    };
    let ops = match serde_json::from_value::<Write>(value)
        .map_err(|e| e.to_string())
        .and_then(|w| w.row_ops().map_err(|e| e.message))
    {
        Ok(ops) => ops,
        Err(e) => return fail(2, &format!("the write is not valid: {e}")),
    };
    let client = match Client::connect(config(conn)).await {
        Ok(c) => c,
        Err(e) => return client_error(&e),
    };
    let ctx = match client.subscribe(channel, anchor).await {
        Ok(c) => c,
        Err(e) => return client_error(&e),
    };
    let handle = match ctx.write(ops, WriteOptions { optimistic: false, temp_ids: true }) {
        Ok(h) => h,
        Err(e) => return client_error(&e),
    };
    let write_id = handle.write_id;
    let result = handle.await;
    client.close().await;
    match result {
        Ok(o) => {
            println!(
                "{}",
                json!({"type": "writeResponse", "writeId": write_id, "success": true, "seq": o.seq, "created": o.created, "duplicate": o.duplicate})
            );
            ExitCode::SUCCESS
        }
        Err(ClientError::Refused(e)) => {
            println!("{}", json!({"type": "writeResponse", "writeId": write_id, "success": false, "error": e}));
            fail(1, &format!("refused: {} {}: {}", e.code, e.reason, e.message))
        }
        Err(e) => client_error(&e),
    }
}

/// `FIELD[__LOOKUP]=VALUE` → (key, JSON value or string).
fn parse_filter(f: &str) -> Result<(String, Value), String> {
    let (key, value) = f.split_once('=').ok_or_else(|| format!("`{f}`: expected FIELD[__LOOKUP]=VALUE"))?;
    if key.is_empty() {
        return Err(format!("`{f}`: the field name is missing"));
    }
    let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_owned()));
    Ok((key.to_owned(), value))
}

async fn stream(
    conn: Conn,
    name: String,
    filters: Vec<String>,
    fields: Option<Vec<String>>,
    snapshot: bool,
) -> ExitCode {
    let mut request = StreamRequest::new(name);
    for f in &filters {
        match parse_filter(f) {
            Ok((k, v)) => request = request.filter(&k, v),
            Err(e) => return fail(2, &e),
        }
    }
    request.fields = fields;
    request.snapshot = snapshot;
    let view_name = request.name.clone();
    let client = match Client::connect(config(conn)).await {
        Ok(c) => c,
        Err(e) => return client_error(&e),
    };
    let mut view = match client.stream(request).await {
        Ok(s) => s,
        Err(e) => return client_error(&e),
    };
    for row in view.rows() {
        println!("{}", json!({"snapshot": row_json(&row)}));
    }
    loop {
        tokio::select! {
            event = view.next() => match event {
                Some(StreamViewEvent::Changed(changes)) => {
                    let seq = view.info().and_then(|i| i.seq);
                    for c in changes {
                        let row = view.row(c.key);
                        let action = match c.kind {
                            ChangeKind::Added => "create",
                            ChangeKind::Updated => "update",
                            ChangeKind::Removed => "delete",
                        };
                        let id = row.as_ref().map_or(c.key, |r| r.id);
                        let data = row.as_ref().map(|r| Value::Object(r.fields.clone()));
                        let row = row.as_ref().map(row_json);
                        println!("{}", json!({"seq": seq, "action": action, "id": id, "key": c.key, "data": data, "row": row}));
                    }
                }
                Some(StreamViewEvent::Closed(reason)) => {
                    println!("{}", json!({"stream": view_name, "closed": reason}));
                    return ExitCode::SUCCESS;
                }
                None => return ExitCode::SUCCESS,
            },
            _ = tokio::signal::ctrl_c() => return ExitCode::SUCCESS,
        }
    }
}

/// The `rid` of the ping `repl` sends at the end of stdin: its `pong` comes
/// after the answers to every frame sent before it.
const REPL_EOF_RID: &str = "statecast-repl-eof";

async fn repl(conn: Conn) -> ExitCode {
    use statecast_transport::Incoming;
    use tokio::io::AsyncBufReadExt;
    let cfg = config(conn);
    let quic = cfg.url.starts_with("quic://");
    let codec = if quic { Codec::MsgPack } else { cfg.codec };
    let connected = if quic {
        let Some(trust) = cfg.quic_trust.clone() else {
            return fail(2, "quic:// needs --fingerprint HEX, --ca FILE or --insecure-dev");
        };
        statecast_transport_quic::connect(&cfg.url, &statecast_transport_quic::QuicClientConfig::new(trust)).await
    } else {
        let ws = statecast_transport_ws::WsClientConfig { ca_file: cfg.tls_ca_file.clone(), ..Default::default() };
        statecast_transport_ws::connect(&cfg.url, &ws).await
    };
    let mut link = match connected {
        Ok(c) => c,
        Err(e) => return fail(2, &format!("can't connect to {}: {e}", cfg.url)),
    };
    let send = |link: &statecast_transport::Connection, msg: &Value| {
        let frame = codec.encode(msg).map_err(|e| e.message);
        let outbox = link.outbox.clone();
        async move { outbox.send(frame?).await.map_err(|e| e.to_string()) }
    };
    let client_id: String =
        (0..32).map(|_| char::from_digit(rand::random_range(0..16u32), 16).unwrap_or('0')).collect();
    let hello = json!({"type": "hello", "protocol": 1, "token": cfg.token, "clientId": client_id});
    if let Err(e) = send(&link, &hello).await {
        return fail(2, &format!("can't say hello: {e}"));
    }
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let (mut stdin_open, mut welcomed, mut next_write_id) = (true, false, 1i64);
    loop {
        tokio::select! {
            incoming = link.incoming.recv() => {
                let frame = match incoming {
                    Some(Incoming::Frame(f)) => f,
                    Some(Incoming::TooLarge { size, limit }) => {
                        eprintln!("statecast: a frame of {size} bytes was over the limit ({limit}) and dropped");
                        continue;
                    }
                    None => {
                        return match welcomed {
                            true => fail(1, "the server closed the connection"),
                            false => fail(3, "the server closed the connection before `welcome`"),
                        };
                    }
                };
                let msg = match codec.parse(&frame) {
                    Ok(m) => m,
                    Err(e) => {
                        eprintln!("statecast: a frame that is not {}: {e}", codec.name());
                        continue;
                    }
                };
                if msg["type"] == "pong" && msg["rid"] == REPL_EOF_RID {
                    link.outbox.close(statecast_transport::close_code::NORMAL, "bye");
                    return ExitCode::SUCCESS;
                }
                if msg["type"] == "welcome" {
                    welcomed = true;
                }
                // JSON as the server sent it (its field order); MessagePack as JSON.
                match std::str::from_utf8(&frame.data) {
                    Ok(text) if codec == Codec::Json => println!("{text}"),
                    _ => println!("{msg}"),
                }
                if !welcomed && msg["type"] == "error" {
                    return fail(3, "the server refused the hello");
                }
            }
            line = lines.next_line(), if stdin_open => {
                let mut msg = match line {
                    Ok(Some(line)) if line.trim().is_empty() || line.trim_start().starts_with('#') => continue,
                    Ok(Some(line)) => match serde_json::from_str::<Value>(&line) {
                        Ok(v @ Value::Object(_)) => v,
                        Ok(_) | Err(_) => {
                            eprintln!("statecast: not sent: each line is one JSON object, e.g. {{\"type\":\"ping\"}}");
                            continue;
                        }
                    },
                    Ok(None) | Err(_) => {
                        stdin_open = false;
                        json!({"type": "ping", "rid": REPL_EOF_RID})
                    }
                };
                if msg["type"] == "write" && msg.get("writeId").is_none() {
                    msg["writeId"] = json!(next_write_id);
                }
                if let Some(id) = msg["writeId"].as_i64() {
                    next_write_id = next_write_id.max(id + 1);
                }
                if let Err(e) = send(&link, &msg).await {
                    // The connection is closed: what the server said before
                    // closing (a refused hello, say) may still be in the
                    // inbox, and decides the exit code. Read it to the end.
                    eprintln!("statecast: not sent: {e}");
                    stdin_open = false;
                }
            }
            _ = tokio::signal::ctrl_c() => return ExitCode::SUCCESS,
        }
    }
}
