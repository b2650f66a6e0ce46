//! The WebSocket server: axum on a tokio listener, one [`Connection`] per
//! upgraded socket, extra HTTP routes served on the same port.

use async_trait::async_trait;
use axum::Extension;
use axum::Router;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::response::Response;
use axum::routing::get;
use bytes::Bytes;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use statecast_transport::{ConnectionHandler, ConnectionInfo, Frame, FrameKind, Transport, TransportError};
use std::error::Error as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_tungstenite::tungstenite;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

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
    ///
    /// Its own accept loop rather than `axum::serve`, for what a server on
    /// the open internet needs: a deadline for the request headers (a socket
    /// that never sends a request is closed) and a cap on open connections
    /// (beyond it a connection gets `503` and is closed at once).
    async fn serve(
        self: Box<Self>,
        handler: Arc<dyn ConnectionHandler>,
        shutdown: CancellationToken,
    ) -> Result<(), TransportError> {
        let this = *self;
        let settings = this.settings;
        let upgrades = Arc::new(Upgrades { handler, settings });
        // Unmatched requests fall through to the extra routes, so they can
        // never clash with the WebSocket path.
        let app = Router::new().route(&this.path, get(upgrade)).with_state(upgrades).fallback_service(this.routes);
        // HTTP/1.1 only: browsers open WebSockets over it, and a version
        // sniffer would wait for a silent socket's first bytes without a deadline.
        let mut builder = http1::Builder::new();
        builder.timer(TokioTimer::new()).header_read_timeout(settings.header_read_timeout);
        let builder = Arc::new(builder);
        let slots = Arc::new(Semaphore::new(settings.max_connections));
        let tasks = TaskTracker::new();
        tracing::info!(addr = %this.local_addr, path = %this.path, "websocket transport listening");
        loop {
            let (tcp, peer) = tokio::select! {
                accepted = this.listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: wait a little
                        // instead of spinning on the error.
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                        continue;
                    }
                },
                () = shutdown.cancelled() => break,
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tracing::debug!(%peer, max = settings.max_connections, "refusing a connection: at the connection cap");
                tasks.spawn(refuse_busy(tcp));
                continue;
            };
            if let Err(err) = tcp.set_nodelay(true) {
                tracing::warn!(error = %err, "could not set TCP_NODELAY");
            }
            let slot = ConnSlot(Arc::new(slot));
            let service = app.clone().map_request(move |mut req: axum::extract::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                req.extensions_mut().insert(slot.clone());
                req
            });
            let (builder, shutdown) = (builder.clone(), shutdown.clone());
            tasks.spawn(async move {
                // A socket that sends nothing at all is let go at the same deadline.
                let mut first = [0u8; 1];
                if !matches!(
                    tokio::time::timeout(settings.header_read_timeout, tcp.peek(&mut first)).await,
                    Ok(Ok(1..))
                ) {
                    tracing::debug!(%peer, "closing a connection that sent no request");
                    return;
                }
                let conn =
                    builder.serve_connection(TokioIo::new(tcp), TowerToHyperService::new(service)).with_upgrades();
                let mut conn = std::pin::pin!(conn);
                let served = tokio::select! {
                    served = conn.as_mut() => served,
                    () = shutdown.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    }
                };
                if let Err(e) = served {
                    tracing::debug!(%peer, error = %e, "http connection ended with an error");
                }
            });
        }
        tasks.close();
        if tokio::time::timeout(settings.close_timeout, tasks.wait()).await.is_err() {
            tracing::debug!("http connections still open after the close timeout");
        }
        tracing::info!(addr = %this.local_addr, "websocket transport stopped");
        Ok(())
    }
}

/// How long the accept loop pauses after a failed accept.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// One of the transport's connection slots, held until the connection ends
/// (an upgraded WebSocket keeps it after its HTTP request is done).
#[derive(Clone)]
struct ConnSlot(#[allow(dead_code)] Arc<OwnedSemaphorePermit>);

/// Answers a connection over the cap with `503` and closes it.
async fn refuse_busy(mut tcp: TcpStream) {
    const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\ncontent-type: text/plain\r\n\
        content-length: 45\r\nconnection: close\r\n\r\nthe server holds too many connections; retry\n";
    let _ = tokio::time::timeout(Duration::from_secs(1), tcp.write_all(BUSY)).await;
    let _ = tcp.shutdown().await;
}

async fn upgrade(
    State(upgrades): State<Arc<Upgrades>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    slot: Option<Extension<ConnSlot>>,
    ws: WebSocketUpgrade,
) -> Response {
    let settings = upgrades.settings;
    ws.max_message_size(settings.wire_limit())
        .max_frame_size(settings.wire_limit())
        .read_buffer_size(settings.read_buffer_size)
        .write_buffer_size(settings.write_buffer_size)
        .on_failed_upgrade(move |err| tracing::debug!(%peer, error = %err, "websocket upgrade failed"))
        .on_upgrade(move |socket: WebSocket| async move {
            // The connection's slot is held until the socket ends.
            let _slot = slot;
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
    fn is_protocol_violation(&self) -> bool {
        self.source()
            .and_then(|inner| inner.downcast_ref::<tungstenite::Error>())
            .is_some_and(|err| matches!(err, tungstenite::Error::Protocol(_) | tungstenite::Error::Utf8(_)))
    }
}
