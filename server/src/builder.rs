//! Composes a server: a schema, channels, a store, an authenticator and
//! transports around one engine; runs until a signal, then drains.

use statecast_core::engine::EngineError;
use statecast_core::transport::{ConnectionHandler, Transport, TransportError};
use statecast_core::{Authenticator, Channel, Engine, EngineConfig, Schema, Store, Stream};
use statecast_transport_quic::{CertInfo, QuicConfig, QuicTransport};
use statecast_transport_ws::{WsConfig, WsTransport};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("no store was given")]
    NoStore,
    #[error("no authenticator was given")]
    NoAuthenticator,
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("can't listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: TransportError },
    /// The store failed fatally and the server stopped; every durable write is
    /// kept, and a restart (once the cause, such as a full disk, is gone)
    /// recovers them.
    #[error("the store failed and the server stopped ({0}); restart it once the cause is fixed")]
    StoreFailed(String),
    #[error("{0}")]
    Other(String),
}

/// Builds a server. Every part is yours to choose; see the crate docs.
pub struct ServerBuilder {
    schema: Arc<Schema>,
    channels: Vec<Channel>,
    streams: Vec<Stream>,
    store: Option<Arc<dyn Store>>,
    auth: Option<Arc<dyn Authenticator>>,
    engine_config: EngineConfig,
    websocket: Vec<(SocketAddr, WsConfig)>,
    quic: Vec<(SocketAddr, QuicConfig)>,
    endpoints: crate::http::HttpEndpoints,
}

impl ServerBuilder {
    pub fn new(schema: Arc<Schema>) -> Self {
        Self {
            schema,
            channels: Vec::new(),
            streams: Vec::new(),
            store: None,
            auth: None,
            engine_config: EngineConfig::default(),
            websocket: Vec::new(),
            quic: Vec::new(),
            endpoints: crate::http::HttpEndpoints::default(),
        }
    }

    /// Which optional HTTP endpoints (the inspector page, `/metrics`) the
    /// WebSocket port serves beside `/healthz` and `/readyz` (default: both).
    pub fn http_endpoints(mut self, endpoints: crate::http::HttpEndpoints) -> Self {
        self.endpoints = endpoints;
        self
    }

    pub fn channel(mut self, channel: Channel) -> Self {
        self.channels.push(channel);
        self
    }

    pub fn channels(mut self, channels: impl IntoIterator<Item = Channel>) -> Self {
        self.channels.extend(channels);
        self
    }

    pub fn stream(mut self, stream: Stream) -> Self {
        self.streams.push(stream);
        self
    }

    pub fn streams(mut self, streams: impl IntoIterator<Item = Stream>) -> Self {
        self.streams.extend(streams);
        self
    }

    pub fn store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    pub fn authenticator(mut self, auth: impl Authenticator) -> Self {
        self.auth = Some(Arc::new(auth));
        self
    }

    pub fn shared_authenticator(mut self, auth: Arc<dyn Authenticator>) -> Self {
        self.auth = Some(auth);
        self
    }

    pub fn engine_config(mut self, config: EngineConfig) -> Self {
        self.engine_config = config;
        self
    }

    /// Serves WebSocket (and `/healthz`, `/readyz`, `/metrics`, and the inspector page at `/`) on `addr`.
    pub fn websocket(mut self, addr: SocketAddr, config: WsConfig) -> Self {
        self.websocket.push((addr, config));
        self
    }

    /// Serves QUIC (UDP) on `addr`, beside any other transport: every
    /// transport feeds the same engine, so contexts and broadcasts are shared.
    pub fn quic(mut self, addr: SocketAddr, config: QuicConfig) -> Self {
        self.quic.push((addr, config));
        self
    }

    /// Builds the engine (without listening), e.g. to seed data first.
    pub fn build_engine(&mut self) -> Result<Engine, ServerError> {
        let store = self.store.clone().ok_or(ServerError::NoStore)?;
        let auth = self.auth.clone().ok_or(ServerError::NoAuthenticator)?;
        let mut builder =
            Engine::builder(self.schema.clone(), store).shared_authenticator(auth).config(self.engine_config.clone());
        for channel in std::mem::take(&mut self.channels) {
            builder = builder.channel(channel);
        }
        for stream in std::mem::take(&mut self.streams) {
            builder = builder.stream(stream);
        }
        Ok(builder.build()?)
    }

    /// Binds every transport and starts serving with `engine`.
    pub async fn serve(self, engine: Engine) -> Result<RunningServer, ServerError> {
        let shutdown = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let mut ws_addrs = Vec::new();
        let handler: Arc<dyn ConnectionHandler> = Arc::new(engine.clone());
        for (addr, config) in self.websocket {
            let path = config.path.clone();
            let transport = WsTransport::bind(addr, config)
                .await
                .map_err(|source| ServerError::Bind { addr, source })?
                .with_routes(crate::http::routes(engine.clone(), &path, self.endpoints));
            ws_addrs.push((transport.local_addr(), path));
            let (handler, token) = (handler.clone(), shutdown.clone());
            tasks.spawn(async move {
                if let Err(e) = Box::new(transport).serve(handler, token).await {
                    tracing::error!(error = %e, "the WebSocket transport stopped");
                }
            });
        }
        let mut quic = Vec::new();
        for (addr, config) in self.quic {
            let transport =
                QuicTransport::bind(addr, config).await.map_err(|source| ServerError::Bind { addr, source })?;
            quic.push(QuicListener { addr: transport.local_addr(), certificate: transport.certificate().clone() });
            let (handler, token) = (handler.clone(), shutdown.clone());
            tasks.spawn(async move {
                if let Err(e) = Box::new(transport).serve(handler, token).await {
                    tracing::error!(error = %e, "the QUIC transport stopped");
                }
            });
        }
        Ok(RunningServer { engine, ws_addrs, quic, shutdown, tasks })
    }

    /// Builds the engine and serves.
    pub async fn start(mut self) -> Result<RunningServer, ServerError> {
        let engine = self.build_engine()?;
        self.serve(engine).await
    }
}

/// A QUIC address a server listens on, and the certificate it presents there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuicListener {
    pub addr: SocketAddr,
    pub certificate: CertInfo,
}

impl QuicListener {
    /// The URL clients connect to (`quic://127.0.0.1:7101`).
    pub fn url(&self) -> String {
        format!("quic://{}", self.addr)
    }
}

/// A serving server.
pub struct RunningServer {
    engine: Engine,
    ws_addrs: Vec<(SocketAddr, String)>,
    quic: Vec<QuicListener>,
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
}

impl RunningServer {
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The WebSocket URLs it serves (`ws://127.0.0.1:7100/ws`).
    pub fn ws_urls(&self) -> Vec<String> {
        self.ws_addrs.iter().map(|(a, p)| format!("ws://{a}{p}")).collect()
    }

    /// The QUIC addresses it serves, with their certificates.
    pub fn quic_listeners(&self) -> &[QuicListener] {
        &self.quic
    }

    /// Runs until SIGINT or SIGTERM, then shuts down gracefully. Stops by
    /// itself, with [`ServerError::StoreFailed`], when the store fails fatally
    /// (a failed flush or write: what it holds in memory may differ from the
    /// disk, and only a restart recovers a consistent state).
    pub async fn run_until_signal(self) -> Result<(), ServerError> {
        let failure = tokio::select! {
            () = wait_for_signal() => {
                tracing::info!("signal received: draining");
                None
            }
            failure = self.engine.store_failed() => {
                tracing::error!(%failure, "the store failed: stopping; restart once the cause is fixed");
                Some(failure)
            }
        };
        match failure {
            None => {
                self.shutdown().await;
                Ok(())
            }
            Some(failure) => {
                // Draining may wait on a store that no longer answers (a
                // stuck device, an engine's worker retrying a full disk): it
                // gets a deadline, and what is durable is on disk already.
                if tokio::time::timeout(STORE_FAILED_DRAIN, self.shutdown()).await.is_err() {
                    tracing::error!(
                        deadline = ?STORE_FAILED_DRAIN,
                        "draining after the store failed did not finish in time; stopping anyway"
                    );
                }
                Err(ServerError::StoreFailed(failure))
            }
        }
    }

    /// Stops accepting, sends `goaway`, drains in-flight writes, flushes the
    /// store and stops the transports.
    pub async fn shutdown(mut self) {
        self.engine.shutdown().await;
        self.shutdown.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// How long a server whose store failed drains before it stops regardless.
const STORE_FAILED_DRAIN: Duration = Duration::from_secs(5);

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "can't listen for SIGTERM; only Ctrl-C stops the server");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
