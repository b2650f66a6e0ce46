//! Settings of the WebSocket server and client, and the per-connection
//! settings both ends share.

use statecast_transport::{DEFAULT_OUTBOX_BYTES, OutboxLimits, TransportError};
use std::time::Duration;

/// The default frame limit (protocol v1: 1 MiB in both directions).
pub const DEFAULT_FRAME_LIMIT: usize = 1 << 20;

/// The default initial size of a connection's read buffer: small, because an
/// idle connection keeps it (it grows for larger frames).
pub const DEFAULT_READ_BUFFER_SIZE: usize = 2 * 1024;

/// The default write buffer: frames queued together (the writer drains every
/// ready frame, then flushes once) reach the socket in writes of about this
/// size instead of one write per frame.
pub const DEFAULT_WRITE_BUFFER_SIZE: usize = 16 * 1024;

/// The most frames the writer queues before one flush.
pub(crate) const WRITE_BATCH: usize = 256;

/// Settings of the WebSocket server.
#[derive(Clone, Debug)]
pub struct WsConfig {
    /// Largest frame handed to the engine. Frames up to twice this size are
    /// read and reported as `Incoming::TooLarge`; larger ones close the
    /// connection with 1009.
    pub frame_limit: usize,
    /// Frames that may wait in a connection's outbox (slow-consumer bound).
    pub outbox_capacity: usize,
    /// Bytes that may wait in a connection's outbox (slow-consumer bound; see
    /// `OutboxLimits`). Default 8 MiB.
    pub outbox_bytes: usize,
    /// Frames read from the socket that may wait for the engine; when full,
    /// reading stops (TCP backpressure on the peer).
    pub incoming_capacity: usize,
    /// The HTTP path that upgrades to WebSocket.
    pub path: String,
    /// How often to ping the peer; `None` sends no pings.
    pub ping_interval: Option<Duration>,
    /// A peer that sends nothing (not even a pong) for this long is dropped.
    pub idle_timeout: Duration,
    /// How long a close handshake (or a close after an oversize frame) may take.
    pub close_timeout: Duration,
    /// Initial size of each connection's read buffer.
    pub read_buffer_size: usize,
    /// Bytes buffered before a write reaches the socket (0: write each frame at once).
    pub write_buffer_size: usize,
    /// The most connections open at once (HTTP and WebSocket); beyond it a
    /// new connection is answered `503` and closed.
    pub max_connections: usize,
    /// How long a connection may take to send its request headers (a socket
    /// that sends nothing is closed after this).
    pub header_read_timeout: Duration,
}

impl Default for WsConfig {
    fn default() -> Self {
        Self {
            frame_limit: DEFAULT_FRAME_LIMIT,
            outbox_capacity: 1024,
            outbox_bytes: DEFAULT_OUTBOX_BYTES,
            incoming_capacity: 64,
            path: "/ws".to_owned(),
            ping_interval: Some(Duration::from_secs(20)),
            idle_timeout: Duration::from_secs(30),
            close_timeout: Duration::from_secs(5),
            read_buffer_size: DEFAULT_READ_BUFFER_SIZE,
            write_buffer_size: DEFAULT_WRITE_BUFFER_SIZE,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_read_timeout: Duration::from_secs(10),
        }
    }
}

/// The default cap on a WebSocket server's open connections.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

impl WsConfig {
    #[cfg(feature = "server")]
    pub(crate) fn validate(&self) -> Result<ConnSettings, TransportError> {
        if !self.path.starts_with('/') || self.path.contains(['{', '}', '*']) {
            return Err(TransportError::Address(format!(
                "websocket path {:?} must start with '/' and hold no route patterns",
                self.path
            )));
        }
        if self.max_connections == 0 {
            return Err(TransportError::Protocol("invalid websocket setting: max_connections must be positive".into()));
        }
        if self.header_read_timeout.is_zero() {
            return Err(TransportError::Protocol(
                "invalid websocket setting: header_read_timeout must be positive".into(),
            ));
        }
        let mut settings = ConnSettings::new(
            self.frame_limit,
            OutboxLimits { frames: self.outbox_capacity, bytes: self.outbox_bytes },
            self.incoming_capacity,
            self.ping_interval,
            self.idle_timeout,
            self.close_timeout,
            self.read_buffer_size,
            self.write_buffer_size,
        )?;
        settings.max_connections = self.max_connections;
        settings.header_read_timeout = self.header_read_timeout;
        Ok(settings)
    }
}

/// Settings of a client connection made by [`connect`](crate::connect).
#[derive(Clone, Debug)]
pub struct WsClientConfig {
    /// Largest frame handed to the caller (same rules as [`WsConfig::frame_limit`]).
    pub frame_limit: usize,
    /// Frames that may wait in the outbox.
    pub outbox_capacity: usize,
    /// Bytes that may wait in the outbox.
    pub outbox_bytes: usize,
    /// Frames read from the socket that may wait for the caller.
    pub incoming_capacity: usize,
    /// How often to ping the server; `None` sends no pings.
    pub ping_interval: Option<Duration>,
    /// A server that sends nothing for this long is dropped.
    pub idle_timeout: Duration,
    /// How long a close handshake may take.
    pub close_timeout: Duration,
    /// How long the TCP connect and the WebSocket handshake may take.
    pub connect_timeout: Duration,
    /// Initial size of the read buffer.
    pub read_buffer_size: usize,
    /// Bytes buffered before a write reaches the socket (0: write each frame at once).
    pub write_buffer_size: usize,
    /// For `wss://`: trust server certificates issued by the CA(s) in this PEM
    /// file; `None` trusts the system's root certificates.
    pub ca_file: Option<std::path::PathBuf>,
}

impl Default for WsClientConfig {
    fn default() -> Self {
        Self {
            frame_limit: DEFAULT_FRAME_LIMIT,
            outbox_capacity: 256,
            outbox_bytes: DEFAULT_OUTBOX_BYTES,
            incoming_capacity: 256,
            ping_interval: Some(Duration::from_secs(20)),
            idle_timeout: Duration::from_secs(30),
            close_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(10),
            read_buffer_size: DEFAULT_READ_BUFFER_SIZE,
            write_buffer_size: DEFAULT_WRITE_BUFFER_SIZE,
            ca_file: None,
        }
    }
}

impl WsClientConfig {
    #[cfg(feature = "client")]
    pub(crate) fn validate(&self) -> Result<ConnSettings, TransportError> {
        ConnSettings::new(
            self.frame_limit,
            OutboxLimits { frames: self.outbox_capacity, bytes: self.outbox_bytes },
            self.incoming_capacity,
            self.ping_interval,
            self.idle_timeout,
            self.close_timeout,
            self.read_buffer_size,
            self.write_buffer_size,
        )
    }
}

/// What one connection's driver needs, checked once.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConnSettings {
    pub frame_limit: usize,
    pub outbox: OutboxLimits,
    pub incoming_capacity: usize,
    pub ping_interval: Option<Duration>,
    pub idle_timeout: Duration,
    pub close_timeout: Duration,
    pub read_buffer_size: usize,
    pub write_buffer_size: usize,
    /// Server only.
    #[cfg_attr(not(feature = "server"), allow(dead_code))]
    pub max_connections: usize,
    /// Server only.
    #[cfg_attr(not(feature = "server"), allow(dead_code))]
    pub header_read_timeout: Duration,
}

impl ConnSettings {
    #[allow(clippy::too_many_arguments)]
    fn new(
        frame_limit: usize,
        outbox: OutboxLimits,
        incoming_capacity: usize,
        ping_interval: Option<Duration>,
        idle_timeout: Duration,
        close_timeout: Duration,
        read_buffer_size: usize,
        write_buffer_size: usize,
    ) -> Result<Self, TransportError> {
        let invalid = |what: &str| Err(TransportError::Protocol(format!("invalid websocket setting: {what}")));
        if frame_limit == 0 {
            return invalid("frame_limit must be positive");
        }
        if ping_interval.is_some_and(|p| p.is_zero()) {
            return invalid("ping_interval must be positive");
        }
        if idle_timeout.is_zero() {
            return invalid("idle_timeout must be positive");
        }
        Ok(Self {
            frame_limit,
            outbox: OutboxLimits { frames: outbox.frames.max(1), bytes: outbox.bytes.max(1) },
            incoming_capacity: incoming_capacity.max(1),
            ping_interval,
            idle_timeout,
            close_timeout,
            read_buffer_size: read_buffer_size.max(1024),
            // tungstenite requires its (unbounded) max write buffer to be larger.
            write_buffer_size: write_buffer_size.min(frame_limit),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_read_timeout: Duration::from_secs(10),
        })
    }

    /// What the WebSocket layer accepts: twice the frame limit, so frames just
    /// over the limit can be reported instead of killing the connection.
    pub fn wire_limit(&self) -> usize {
        self.frame_limit.saturating_mul(2)
    }
}
