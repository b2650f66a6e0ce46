//! Composes a server: a schema, channels, a store, an authenticator and
//! transports around one engine; runs until a signal, then drains.

use statecast_core::engine::{EngineBuilder, EngineError};
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
    #[error("a store was given twice: a server has one store")]
    StoreGivenTwice,
    /// `build_engine` (or `start`) was called on a builder that already built its engine.
    #[error("this ServerBuilder already built its engine: a builder builds one engine")]
    AlreadyBuilt,
    /// Neither a channel nor a stream was declared: clients could subscribe to nothing.
    #[error("no channel and no stream was declared: declare one with .channel(..) or .stream(..)")]
    NothingToServe,
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

/// A change to the [`EngineBuilder`], kept until the store is given (the
/// engine builder needs the store to exist).
type EngineStep = Box<dyn FnOnce(EngineBuilder) -> EngineBuilder + Send>;

/// Builds a server: an [`EngineBuilder`] (schema, store, channels, streams,
/// authenticator, config) and the transports that feed the engine it builds.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use statecast_core::store::MemoryStore;
/// use statecast_core::{Channel, DevTokens, Op, Schema, User};
/// use statecast_server::ServerBuilder;
/// use statecast_transport_ws::WsConfig;
/// use std::sync::Arc;
///
/// let schema = Schema::builder()
///     .entity("Room", |t| { t.string("name"); })
///     .entity("Message", |t| { t.reference("room", "Room"); t.string("text"); })
///     .relation("Room", "messages", "Message", "room")
///     .build()?;
/// let room = Channel::builder("room", "Room").include("messages").build(&schema)?;
/// let server = ServerBuilder::new(schema.clone())
///     .store(Arc::new(MemoryStore::new(schema)))
///     .channel(room)
///     .authenticator(DevTokens::new().with("alice", User::new(1, "alice")))
///     .websocket("127.0.0.1:0".parse()?, WsConfig::default())
///     .start()
///     .await?;
/// println!("serving {:?}", server.ws_urls());
/// server.run_until_signal().await?;
/// # Ok(()) }
/// ```
///
/// It builds one engine: [`build_engine`](Self::build_engine) a second time
/// is refused with [`ServerError::AlreadyBuilt`], and so is an engine with no
/// channel and no stream ([`ServerError::NothingToServe`]).
pub struct ServerBuilder {
    schema: Arc<Schema>,
    /// The engine builder once the store is given; `None` after `build_engine`.
    engine: Option<EngineBuilder>,
    /// Steps given before the store, applied to the engine builder once it exists.
    before_store: Vec<EngineStep>,
    has_store: bool,
    store_twice: bool,
    has_auth: bool,
    built: bool,
    channels: usize,
    streams: usize,
    websocket: Vec<(SocketAddr, WsConfig)>,
    quic: Vec<(SocketAddr, QuicConfig)>,
    transports: Vec<Box<dyn Transport>>,
    endpoints: crate::http::HttpEndpoints,
}

impl ServerBuilder {
    pub fn new(schema: Arc<Schema>) -> Self {
        Self {
            schema,
            engine: None,
            before_store: Vec::new(),
            has_store: false,
            store_twice: false,
            has_auth: false,
            built: false,
            channels: 0,
            streams: 0,
            websocket: Vec::new(),
            quic: Vec::new(),
            transports: Vec::new(),
            endpoints: crate::http::HttpEndpoints::default(),
        }
    }

    /// Applies `step` to the engine builder, now or once the store is given.
    fn engine_step(mut self, step: impl FnOnce(EngineBuilder) -> EngineBuilder + Send + 'static) -> Self {
        match self.engine.take() {
            Some(engine) => self.engine = Some(step(engine)),
            None => self.before_store.push(Box::new(step)),
        }
        self
    }

    /// Which optional HTTP endpoints (the inspector page, `/metrics`) the
    /// WebSocket port serves beside `/healthz` and `/readyz` (default: both).
    pub fn http_endpoints(mut self, endpoints: crate::http::HttpEndpoints) -> Self {
        self.endpoints = endpoints;
        self
    }

    /// Declares a channel ([`EngineBuilder::channel`]).
    pub fn channel(mut self, channel: Channel) -> Self {
        self.channels += 1;
        self.engine_step(|b| b.channel(channel))
    }

    pub fn channels(self, channels: impl IntoIterator<Item = Channel>) -> Self {
        channels.into_iter().fold(self, Self::channel)
    }

    /// Declares a stream ([`EngineBuilder::stream`]).
    pub fn stream(mut self, stream: Stream) -> Self {
        self.streams += 1;
        self.engine_step(|b| b.stream(stream))
    }

    pub fn streams(self, streams: impl IntoIterator<Item = Stream>) -> Self {
        streams.into_iter().fold(self, Self::stream)
    }

    /// Where rows live: starts the engine builder ([`Engine::builder`]) and
    /// applies what was declared so far. One store per server: a second is
    /// refused by `build_engine` ([`ServerError::StoreGivenTwice`]).
    pub fn store(mut self, store: Arc<dyn Store>) -> Self {
        if self.has_store {
            self.store_twice = true;
            return self;
        }
        self.has_store = true;
        let steps = std::mem::take(&mut self.before_store);
        self.engine = Some(steps.into_iter().fold(Engine::builder(self.schema.clone(), store), |b, step| step(b)));
        self
    }

    pub fn authenticator(mut self, auth: impl Authenticator) -> Self {
        self.has_auth = true;
        self.engine_step(|b| b.authenticator(auth))
    }

    pub fn shared_authenticator(mut self, auth: Arc<dyn Authenticator>) -> Self {
        self.has_auth = true;
        self.engine_step(|b| b.shared_authenticator(auth))
    }

    pub fn engine_config(self, config: EngineConfig) -> Self {
        self.engine_step(|b| b.config(config))
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

    /// Serves any other [`Transport`] (one already bound) beside the others:
    /// it hands each connection it accepts to the same engine.
    pub fn transport(mut self, transport: Box<dyn Transport>) -> Self {
        self.transports.push(transport);
        self
    }

    /// Builds the engine (without listening), e.g. to seed data first; then
    /// [`serve`](Self::serve) it. Refused when called a second time, and when
    /// nothing was declared to subscribe to.
    pub fn build_engine(&mut self) -> Result<Engine, ServerError> {
        if self.built {
            return Err(ServerError::AlreadyBuilt);
        }
        if !self.has_store {
            return Err(ServerError::NoStore);
        }
        if self.store_twice {
            return Err(ServerError::StoreGivenTwice);
        }
        if !self.has_auth {
            return Err(ServerError::NoAuthenticator);
        }
        if self.channels == 0 && self.streams == 0 {
            return Err(ServerError::NothingToServe);
        }
        let engine = self.engine.take().ok_or(ServerError::AlreadyBuilt)?;
        self.built = true;
        Ok(engine.build()?)
    }

    /// Binds every transport and starts serving with `engine`.
    pub async fn serve(self, engine: Engine) -> Result<RunningServer, ServerError> {
        let shutdown = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let mut ws_addrs = Vec::new();
        let mut other = Vec::new();
        let handler: Arc<dyn ConnectionHandler> = Arc::new(engine.clone());
        for (addr, config) in self.websocket {
            let path = config.path.clone();
            let transport = WsTransport::bind(addr, config)
                .await
                .map_err(|source| ServerError::Bind { addr, source })?
                .with_routes(crate::http::routes(engine.clone(), &path, self.endpoints));
            ws_addrs.push((transport.local_addr(), path));
            spawn_transport(&mut tasks, Box::new(transport), &handler, &shutdown);
        }
        let mut quic = Vec::new();
        for (addr, config) in self.quic {
            let transport =
                QuicTransport::bind(addr, config).await.map_err(|source| ServerError::Bind { addr, source })?;
            quic.push(QuicListener { addr: transport.local_addr(), certificate: transport.certificate().clone() });
            spawn_transport(&mut tasks, Box::new(transport), &handler, &shutdown);
        }
        for transport in self.transports {
            other.push((transport.name(), transport.local_addr()));
            spawn_transport(&mut tasks, transport, &handler, &shutdown);
        }
        Ok(RunningServer { engine, ws_addrs, quic, other, shutdown, tasks })
    }

    /// Builds the engine and serves.
    pub async fn start(mut self) -> Result<RunningServer, ServerError> {
        let engine = self.build_engine()?;
        self.serve(engine).await
    }
}

fn spawn_transport(
    tasks: &mut JoinSet<()>,
    transport: Box<dyn Transport>,
    handler: &Arc<dyn ConnectionHandler>,
    shutdown: &CancellationToken,
) {
    let (handler, token) = (handler.clone(), shutdown.clone());
    tasks.spawn(async move {
        let name = transport.name();
        if let Err(e) = transport.serve(handler, token).await {
            tracing::error!(error = %e, transport = name, "a transport stopped");
        }
    });
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
    /// The transports given with `ServerBuilder::transport`: (name, address).
    other: Vec<(&'static str, SocketAddr)>,
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

    /// The transports given with [`ServerBuilder::transport`]: their names and addresses.
    pub fn other_transports(&self) -> &[(&'static str, SocketAddr)] {
        &self.other
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
