//! The baseline: a bare tokio-tungstenite broadcast server, no engine.
//!
//! It speaks just enough of protocol v1 for the harness's clients, in JSON
//! text frames or MessagePack binary frames (as the first frame is):
//! `hello` → `welcome`, `subscribe` → an empty `state`, and each `write` →
//! a delta-shaped frame of the same shape (and so about the same size) as
//! the engine's, encoded once per codec and shared by every subscriber, plus a
//! `writeResponse` to the writer. No store, no checks: what is left is the
//! cost of the transport and the broadcast, the ceiling the engine is
//! measured against. Its WebSocket buffers are sized as the engine's
//! transport sizes them by default (`statecast_transport_ws::DEFAULT_READ_BUFFER_SIZE`
//! and `DEFAULT_WRITE_BUFFER_SIZE`: 2 KiB initial read, 16 KiB write). Run as `statecast-bench baseline-server`; it prints
//! `listening ws://127.0.0.1:PORT/ws` like the real server.

use crate::client::BoxError;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use statecast_core::protocol::Codec;
use statecast_core::transport::Frame;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, broadcast};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Bytes, Message, Utf8Bytes};

/// Deltas a subscriber may fall behind before it is dropped (the engine's
/// default outbox holds 1,024 frames).
const LAG_LIMIT: usize = 1024;

struct Hub {
    /// The last seq; held while a delta is published so that a subscribe sees
    /// a seq and a receiver that agree.
    seq: Mutex<u64>,
    json: broadcast::Sender<Utf8Bytes>,
    msgpack: broadcast::Sender<Bytes>,
}

/// A subscriber's end of the broadcast, in its codec.
enum Sub {
    Json(broadcast::Receiver<Utf8Bytes>),
    MsgPack(broadcast::Receiver<Bytes>),
}

impl Sub {
    async fn recv(&mut self) -> Result<Message, broadcast::error::RecvError> {
        Ok(match self {
            Sub::Json(rx) => Message::Text(rx.recv().await?),
            Sub::MsgPack(rx) => Message::Binary(rx.recv().await?),
        })
    }
    fn try_recv(&mut self) -> Option<Message> {
        match self {
            Sub::Json(rx) => rx.try_recv().ok().map(Message::Text),
            Sub::MsgPack(rx) => rx.try_recv().ok().map(Message::Binary),
        }
    }
}

/// A message as a frame in `codec`.
fn encode(codec: Codec, v: &Value) -> Result<Message, BoxError> {
    Ok(match codec {
        Codec::Json => Message::text(v.to_string()),
        Codec::MsgPack => Message::Binary(codec.encode(v)?.data),
    })
}

pub async fn run(addr: &str) -> Result<(), BoxError> {
    let listener = TcpListener::bind(addr).await?;
    println!("listening ws://{}/ws", listener.local_addr()?);
    let (json, _) = broadcast::channel(LAG_LIMIT);
    let (msgpack, _) = broadcast::channel(LAG_LIMIT);
    let hub = Arc::new(Hub { seq: Mutex::new(0), json, msgpack });
    loop {
        let (tcp, _) = listener.accept().await?;
        let hub = hub.clone();
        tokio::spawn(async move {
            // A failed connection ends only itself.
            let _ = serve(tcp, hub).await;
        });
    }
}

async fn serve(tcp: TcpStream, hub: Arc<Hub>) -> Result<(), BoxError> {
    tcp.set_nodelay(true)?;
    // The same buffer sizes as the engine's WebSocket transport (its defaults).
    let config = WebSocketConfig::default()
        .read_buffer_size(statecast_transport_ws::DEFAULT_READ_BUFFER_SIZE)
        .write_buffer_size(statecast_transport_ws::DEFAULT_WRITE_BUFFER_SIZE);
    let ws = tokio_tungstenite::accept_async_with_config(tcp, Some(config)).await?;
    let (mut sink, mut stream) = ws.split();
    let mut sub: Option<Sub> = None;
    let mut codec = Codec::Json;
    loop {
        tokio::select! {
            incoming = stream.next() => {
                let Some(msg) = incoming else { return Ok(()) };
                let v: Value = match msg? {
                    Message::Text(text) => serde_json::from_str(&text)?,
                    Message::Binary(data) => {
                        codec = Codec::MsgPack;
                        Codec::MsgPack.parse(&Frame::binary(data))?
                    }
                    _ => continue,
                };
                match v["type"].as_str() {
                    Some("hello") => {
                        let welcome = json!({"type": "welcome", "connectionId": "baseline", "user": {"id": 1},
                            "epoch": "baseline", "applied": []});
                        sink.send(encode(codec, &welcome)?).await?;
                    }
                    Some("subscribe") => {
                        let anchor = v["anchorId"].as_i64().unwrap_or(1);
                        let seq = hub.seq.lock().await;
                        sub = Some(match codec {
                            Codec::Json => Sub::Json(hub.json.subscribe()),
                            Codec::MsgPack => Sub::MsgPack(hub.msgpack.subscribe()),
                        });
                        let state = json!({"type": "state", "context": format!("job/{anchor}"), "channel": "job",
                            "anchorId": anchor, "epoch": "baseline", "seq": *seq, "instances": []});
                        drop(seq);
                        sink.send(encode(codec, &state)?).await?;
                    }
                    Some("write") => {
                        let mut seq = hub.seq.lock().await;
                        *seq += 1;
                        let n = *seq;
                        // The engine's delta for a save of one field, same field names.
                        let mut change = json!({"op": "update", "_type": v["instanceType"], "id": v["instanceId"],
                            "_version": n});
                        if let (Some(c), Some(data)) = (change.as_object_mut(), v["data"].as_object()) {
                            for (k, val) in data {
                                c.insert(k.clone(), val.clone());
                            }
                        }
                        let delta = json!({"type": "delta", "context": v["context"], "seq": n, "prev": n - 1,
                            "changes": [change]});
                        // Encoded once per codec. No receivers is fine: nobody subscribed yet.
                        let _ = hub.json.send(Utf8Bytes::from(delta.to_string()));
                        let _ = hub.msgpack.send(Codec::MsgPack.encode(&delta)?.data);
                        drop(seq);
                        let resp = json!({"type": "writeResponse", "writeId": v["writeId"], "success": true, "seq": n});
                        sink.send(encode(codec, &resp)?).await?;
                    }
                    Some("ping") => sink.send(encode(codec, &json!({"type": "pong"}))?).await?,
                    _ => {}
                }
            }
            delta = recv(&mut sub) => {
                match delta {
                    Ok(message) => {
                        sink.feed(message).await?;
                        // Batch: queue whatever else is ready, then flush once.
                        while let Some(more) = sub.as_mut().and_then(Sub::try_recv) {
                            sink.feed(more).await?;
                        }
                        sink.flush().await?;
                    }
                    // A slow consumer is dropped, as the engine does.
                    Err(_) => return Ok(()),
                }
            }
        }
    }
}

async fn recv(sub: &mut Option<Sub>) -> Result<Message, broadcast::error::RecvError> {
    match sub {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
