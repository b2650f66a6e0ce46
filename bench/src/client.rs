//! Minimal protocol v1 clients for the load generator: JSON over WebSocket
//! and MessagePack over QUIC, behind one face.
//!
//! Hot paths decode frames into the small typed [`Msg`] (unknown fields
//! skipped) rather than a `serde_json::Value` tree, so the generator spends
//! as little CPU per delivery as it can.

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use statecast_core::protocol::Codec;
use statecast_core::transport::{Connection, Incoming, Outbox};
use statecast_transport_quic::{QuicClientConfig, Trust};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The generator's read buffer: room for a burst of deltas per read.
const GENERATOR_READ_BUFFER: usize = 8 * 1024;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Which transport a client uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// WebSocket, JSON text frames.
    Ws,
    /// WebSocket, MessagePack binary frames.
    WsMsgpack,
    /// QUIC, MessagePack frames, certificate pinned by fingerprint.
    Quic,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Ws => "WebSocket (JSON)",
            Kind::WsMsgpack => "WebSocket (MessagePack)",
            Kind::Quic => "QUIC (MessagePack)",
        }
    }
}

/// Where a server listens, and how to trust its QUIC certificate.
#[derive(Clone, Debug)]
pub struct Target {
    pub ws_url: String,
    pub quic_url: Option<String>,
    pub quic_fingerprint: Option<String>,
}

impl Target {
    /// `host:port` of the WebSocket listener.
    pub fn ws_addr(&self) -> Result<SocketAddr, BoxError> {
        let hostport = self.ws_url.trim_start_matches("ws://").split('/').next().ok_or("bad ws url")?;
        Ok(hostport.parse()?)
    }
}

/// One change of a `delta` or one row of a `state`: only what the harness checks.
#[derive(Debug, Deserialize)]
pub struct Change {
    #[serde(default)]
    pub op: Option<String>,
    #[serde(default)]
    pub id: i64,
    #[serde(default)]
    pub notes: Option<String>,
}

/// A server message, decoded only as far as the harness needs.
#[derive(Debug, Deserialize)]
pub struct Msg {
    #[serde(rename = "type")]
    pub ty: String,
    #[serde(default)]
    pub seq: Option<u64>,
    #[serde(default)]
    pub prev: Option<u64>,
    #[serde(default)]
    pub changes: Vec<Change>,
    #[serde(default)]
    pub instances: Vec<Change>,
    #[serde(default)]
    pub part: Option<u64>,
    #[serde(default)]
    pub last: Option<bool>,
    #[serde(default, rename = "writeId")]
    pub write_id: Option<u64>,
    #[serde(default)]
    pub success: Option<bool>,
    #[serde(default, rename = "instanceId")]
    pub instance_id: Option<i64>,
    #[serde(default)]
    pub error: Option<WireErr>,
}

#[derive(Debug, Deserialize)]
pub struct WireErr {
    #[serde(default)]
    pub code: u16,
    #[serde(default)]
    pub reason: String,
}

/// One received frame, still encoded.
pub enum Frame {
    Json(tokio_tungstenite::tungstenite::Utf8Bytes),
    MsgPack(statecast_core::transport::Frame),
}

impl Frame {
    pub fn len(&self) -> usize {
        match self {
            Frame::Json(s) => s.len(),
            Frame::MsgPack(b) => b.len(),
        }
    }

    /// The frame's encoded bytes.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Frame::Json(s) => s.as_bytes(),
            Frame::MsgPack(b) => &b.data,
        }
    }

    /// Whether the encoded frame holds `word` anywhere (both codecs carry
    /// strings as they are): a cheap test before decoding, so a generator
    /// waiting for one kind of message does not parse every delta.
    pub fn mentions(&self, word: &str) -> bool {
        self.bytes().windows(word.len()).any(|w| w == word.as_bytes())
    }

    pub fn decode(&self) -> Result<Msg, BoxError> {
        Ok(match self {
            Frame::Json(s) => serde_json::from_str(s)?,
            Frame::MsgPack(b) => rmp_serde::from_slice(&b.data)?,
        })
    }

    /// Decodes into a scenario's own typed struct (unknown fields skipped).
    pub fn decode_as<T: serde::de::DeserializeOwned>(&self) -> Result<T, BoxError> {
        Ok(match self {
            Frame::Json(s) => serde_json::from_str(s)?,
            Frame::MsgPack(b) => rmp_serde::from_slice(&b.data)?,
        })
    }

    pub fn value(&self) -> Result<Value, BoxError> {
        Ok(match self {
            Frame::Json(s) => serde_json::from_str(s)?,
            Frame::MsgPack(b) => Codec::MsgPack.parse(b)?,
        })
    }
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub enum Client {
    /// With the codec its frames use (text JSON or binary MessagePack).
    Ws(Box<Ws>, Codec),
    Quic(Connection),
}

/// The sending half of a split client.
pub enum Tx {
    Ws(SplitSink<Ws, Message>, Codec),
    Quic(Outbox),
}

/// A message as a WebSocket frame in `codec`.
fn ws_message(codec: Codec, v: &Value) -> Result<Message, BoxError> {
    Ok(match codec {
        Codec::Json => Message::text(v.to_string()),
        Codec::MsgPack => Message::binary(Codec::MsgPack.encode(v)?.data),
    })
}

/// The receiving half of a split client.
pub enum Rx {
    Ws(SplitStream<Ws>),
    Quic(mpsc::Receiver<Incoming>),
}

impl Tx {
    pub async fn send(&mut self, v: &Value) -> Result<(), BoxError> {
        match self {
            Tx::Ws(ws, codec) => ws.send(ws_message(*codec, v)?).await?,
            Tx::Quic(outbox) => outbox.send(Codec::MsgPack.encode(v)?).await?,
        }
        Ok(())
    }
}

impl Rx {
    /// The next frame; `Ok(None)` on timeout, an error when the connection ended.
    pub async fn recv_timeout(&mut self, t: Duration) -> Result<Option<Frame>, BoxError> {
        match self {
            Rx::Ws(ws) => recv_ws(ws, t).await,
            Rx::Quic(incoming) => recv_quic(incoming, t).await,
        }
    }
}

async fn recv_ws<S>(ws: &mut S, t: Duration) -> Result<Option<Frame>, BoxError>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let deadline = tokio::time::Instant::now() + t;
    loop {
        let next = match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(n) => n,
            Err(_) => return Ok(None),
        };
        match next {
            Some(Ok(Message::Text(s))) => return Ok(Some(Frame::Json(s))),
            Some(Ok(Message::Binary(b))) => {
                return Ok(Some(Frame::MsgPack(statecast_core::transport::Frame::binary(b))));
            }
            Some(Ok(Message::Close(_))) | None => return Err("connection closed".into()),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
        }
    }
}

async fn recv_quic(incoming: &mut mpsc::Receiver<Incoming>, t: Duration) -> Result<Option<Frame>, BoxError> {
    match tokio::time::timeout(t, incoming.recv()).await {
        Err(_) => Ok(None),
        Ok(None) => Err("connection closed".into()),
        Ok(Some(Incoming::Frame(frame))) => Ok(Some(Frame::MsgPack(frame))),
        Ok(Some(Incoming::TooLarge { size, limit })) => {
            Err(format!("a {size}-byte frame over the {limit} limit").into())
        }
    }
}

impl Client {
    pub async fn connect(kind: Kind, target: &Target) -> Result<Self, BoxError> {
        Self::connect_from(kind, target, None).await
    }

    /// Connects; a WebSocket client binds its socket to `source` first when
    /// given (another 127.x.y.z address, for more ephemeral ports).
    pub async fn connect_from(kind: Kind, target: &Target, source: Option<IpAddr>) -> Result<Self, BoxError> {
        match kind {
            Kind::Ws | Kind::WsMsgpack => {
                let addr = target.ws_addr()?;
                let socket = TcpSocket::new_v4()?;
                if let Some(ip) = source {
                    socket.bind(SocketAddr::new(ip, 0))?;
                }
                let tcp = socket.connect(addr).await?;
                tcp.set_nodelay(true)?;
                // tungstenite zeroes its whole read buffer before each read: at its
                // 128 KiB default that memset was a fifth of the generator's CPU,
                // taken from the server on a shared machine.
                let config = WebSocketConfig::default()
                    .read_buffer_size(GENERATOR_READ_BUFFER)
                    .write_buffer_size(statecast_transport_ws::DEFAULT_WRITE_BUFFER_SIZE);
                let (ws, _) = tokio_tungstenite::client_async_with_config(
                    &target.ws_url,
                    MaybeTlsStream::Plain(tcp),
                    Some(config),
                )
                .await?;
                let codec = if kind == Kind::WsMsgpack { Codec::MsgPack } else { Codec::Json };
                Ok(Client::Ws(Box::new(ws), codec))
            }
            Kind::Quic => {
                let url = target.quic_url.as_deref().ok_or("the server does not serve QUIC")?;
                let pin = target.quic_fingerprint.clone().ok_or("no QUIC fingerprint")?;
                let config = QuicClientConfig::new(Trust::Fingerprint(pin));
                Ok(Client::Quic(statecast_transport_quic::connect(url, &config).await?))
            }
        }
    }

    pub fn split(self) -> (Tx, Rx) {
        match self {
            Client::Ws(ws, codec) => {
                let (tx, rx) = (*ws).split();
                (Tx::Ws(tx, codec), Rx::Ws(rx))
            }
            Client::Quic(conn) => (Tx::Quic(conn.outbox), Rx::Quic(conn.incoming)),
        }
    }

    pub async fn send(&mut self, v: Value) -> Result<(), BoxError> {
        match self {
            Client::Ws(ws, codec) => ws.send(ws_message(*codec, &v)?).await?,
            Client::Quic(conn) => {
                let frame = Codec::MsgPack.encode(&v)?;
                conn.outbox.send(frame).await?;
            }
        }
        Ok(())
    }

    /// The next frame, still encoded; `Ok(None)` on timeout.
    pub async fn recv_frame(&mut self, t: Duration) -> Result<Option<Frame>, BoxError> {
        match self {
            Client::Ws(ws, _) => recv_ws(ws.as_mut(), t).await,
            Client::Quic(conn) => recv_quic(&mut conn.incoming, t).await,
        }
    }

    /// The next message; `Ok(None)` on timeout.
    pub async fn recv_timeout(&mut self, t: Duration) -> Result<Option<Value>, BoxError> {
        match self.recv_frame(t).await? {
            Some(f) => Ok(Some(f.value()?)),
            None => Ok(None),
        }
    }

    async fn expect(&mut self, ty: &str) -> Result<Value, BoxError> {
        loop {
            match self.recv_timeout(Duration::from_secs(30)).await? {
                Some(m) if m["type"] == ty => return Ok(m),
                Some(m) if m["type"] == "error" => return Err(format!("server error: {m}").into()),
                Some(_) => continue,
                None => return Err(format!("timed out waiting for {ty}").into()),
            }
        }
    }

    pub async fn hello(&mut self, token: &str) -> Result<Value, BoxError> {
        self.send(json!({"type": "hello", "protocol": 1, "token": token})).await?;
        self.expect("welcome").await
    }

    /// Sends a stream subscribe without waiting for its answer.
    pub async fn subscribe_stream(&mut self, sub: Value) -> Result<(), BoxError> {
        let mut sub = sub;
        sub["type"] = json!("subscribe");
        self.send(sub).await
    }

    /// Waits for the next `subscribed`.
    pub async fn subscribed(&mut self) -> Result<Value, BoxError> {
        self.expect("subscribed").await
    }

    pub async fn subscribe(&mut self, channel: &str, anchor: i64) -> Result<Value, BoxError> {
        self.send(json!({"type": "subscribe", "channel": channel, "anchorId": anchor})).await?;
        self.expect("state").await
    }

    /// Subscribes and reads the whole state (every part) into a view:
    /// returns the state's `seq` and the rows (id → notes).
    pub async fn subscribe_view(&mut self, channel: &str, anchor: i64) -> Result<(u64, View), BoxError> {
        self.send(json!({"type": "subscribe", "channel": channel, "anchorId": anchor})).await?;
        let mut view = View::new();
        loop {
            let Some(frame) = self.recv_frame(Duration::from_secs(30)).await? else {
                return Err("timed out waiting for state".into());
            };
            let m = frame.decode()?;
            if m.ty == "error" {
                return Err(format!("server error: {}", frame.value()?).into());
            }
            if m.ty != "state" {
                continue;
            }
            for row in m.instances {
                view.insert(row.id, row.notes.unwrap_or_default());
            }
            if m.part.is_none() || m.last == Some(true) {
                return Ok((m.seq.unwrap_or(0), view));
            }
        }
    }

    /// Subscribes and reads the whole state (every part); returns how many rows it held.
    pub async fn subscribe_all(&mut self, channel: &str, anchor: i64) -> Result<usize, BoxError> {
        Ok(self.subscribe_view(channel, anchor).await?.1.len())
    }

    /// Sends a write and waits for its `writeResponse`.
    pub async fn write(&mut self, msg: Value) -> Result<Value, BoxError> {
        let id = msg["writeId"].clone();
        self.send(msg).await?;
        loop {
            let m = self.expect("writeResponse").await?;
            if m["writeId"] == id {
                return Ok(m);
            }
        }
    }
}

/// A subscriber's view of a context: row id → `notes` (rows without notes hold "").
pub type View = std::collections::BTreeMap<i64, String>;

/// Applies a delta's changes to a view.
pub fn apply(view: &mut View, changes: &[Change]) {
    for c in changes {
        match c.op.as_deref() {
            Some("delete") => {
                view.remove(&c.id);
            }
            Some("create") => {
                view.insert(c.id, c.notes.clone().unwrap_or_default());
            }
            _ => {
                if let Some(n) = &c.notes {
                    view.insert(c.id, n.clone());
                } else {
                    view.entry(c.id).or_default();
                }
            }
        }
    }
}
