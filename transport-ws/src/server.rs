//! The WebSocket server: axum on a tokio listener, one [`Connection`] per
//! upgraded socket, extra HTTP routes served on the same port.

use async_trait::async_trait;
use axum::Router;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::response::Response;
use axum::routing::get;
use axum::serve::ListenerExt;
use bytes::Bytes;
use statecast_core::transport::{ConnectionHandler, ConnectionInfo, Frame, FrameKind, Transport, TransportError};
use std::error::Error as _;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite;
use tokio_util::sync::CancellationToken;

use crate::config::{ConnSettings, WsConfig};
use crate::connection::{self, Wire, WireError, WireMessage, close_reason_text};

/// The WebSocket transport, bound and ready to [`serve`](Transport::serve).
pub struct WsTransport {
    listener: TcpListener,
    local_addr: SocketAddr,
    path: String,
    settings: ConnSettings,
    routes: Router,
}

impl std::fmt::Debug for WsTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsTransport")
            .field("local_addr", &self.local_addr)
            .field("path", &self.path)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl WsTransport {
    /// Binds `addr` (port 0 picks a free port; see [`local_addr`](Transport::local_addr)).
    pub async fn bind(addr: SocketAddr, config: WsConfig) -> Result<Self, TransportError> {
        let settings = config.validate()?;
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        Ok(Self { listener, local_addr, path: config.path, settings, routes: Router::new() })
    }

    /// Adds HTTP routes served on the same port (health checks, metrics).
    /// The WebSocket path takes precedence over a route with the same path.
    pub fn with_routes(mut self, router: Router) -> Self {
        self.routes = self.routes.merge(router);
        self
    }

    /// The URL clients connect to (`ws://addr/path`).
    pub fn url(&self) -> String {
        format!("ws://{}{}", self.local_addr, self.path)
    }
}

struct Upgrades {
    handler: Arc<dyn ConnectionHandler>,
    settings: ConnSettings,
}

#[async_trait]
impl Transport for WsTransport {
    fn name(&self) -> &'static str {
        "ws"
    }

    fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` is cancelled. Upgraded connections are not
    /// cut by the shutdown: their owner (the engine) closes them.
    async fn serve(
        self: Box<Self>,
        handler: Arc<dyn ConnectionHandler>,
        shutdown: CancellationToken,
    ) -> Result<(), TransportError> {
        let this = *self;
        let upgrades = Arc::new(Upgrades { handler, settings: this.settings });
        // Unmatched requests fall through to the extra routes, so they can
        // never clash with the WebSocket path.
        let app = Router::new().route(&this.path, get(upgrade)).with_state(upgrades).fallback_service(this.routes);
        let listener = this.listener.tap_io(|tcp| {
            if let Err(err) = tcp.set_nodelay(true) {
                tracing::warn!(error = %err, "could not set TCP_NODELAY");
            }
        });
        tracing::info!(addr = %this.local_addr, path = %this.path, "websocket transport listening");
        axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await?;
        tracing::info!(addr = %this.local_addr, "websocket transport stopped");
        Ok(())
    }
}

async fn upgrade(
    State(upgrades): State<Arc<Upgrades>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ws: WebSocketUpgrade,
) -> Response {
    let settings = upgrades.settings;
    ws.max_message_size(settings.wire_limit())
        .max_frame_size(settings.wire_limit())
        .read_buffer_size(settings.read_buffer_size)
        .write_buffer_size(settings.write_buffer_size)
        .on_failed_upgrade(move |err| tracing::debug!(%peer, error = %err, "websocket upgrade failed"))
        .on_upgrade(move |socket: WebSocket| async move {
            let info = ConnectionInfo { transport: "ws", peer: peer.to_string() };
            tracing::debug!(%peer, "websocket connection opened");
            let (conn, driver) = connection::open(socket, info, settings);
            upgrades.handler.handle(conn);
            driver.await;
        })
}

impl WireMessage for Message {
    fn into_wire(self) -> Wire {
        match self {
            Message::Text(text) => Wire::Data(Frame { kind: FrameKind::Text, data: Bytes::from(text) }),
            Message::Binary(data) => Wire::Data(Frame { kind: FrameKind::Binary, data }),
            Message::Close(_) => Wire::Close,
            Message::Ping(_) | Message::Pong(_) => Wire::Control,
        }
    }

    fn from_frame(frame: Frame) -> Option<Self> {
        match frame.kind {
            FrameKind::Text => Utf8Bytes::try_from(frame.data).ok().map(Message::Text),
            FrameKind::Binary => Some(Message::Binary(frame.data)),
        }
    }

    fn ping() -> Self {
        Message::Ping(Bytes::new())
    }

    fn close(code: u16, reason: String) -> Self {
        Message::Close(Some(CloseFrame { code, reason: Utf8Bytes::from(close_reason_text(reason)) }))
    }
}

impl WireError for axum::Error {
    fn is_too_large(&self) -> bool {
        self.source()
            .and_then(|inner| inner.downcast_ref::<tungstenite::Error>())
            .is_some_and(|err| matches!(err, tungstenite::Error::Capacity(_)))
    }
}
