//! The WebSocket transport of Statecast: a server ([`WsTransport`], axum) and
//! a client connector ([`connect`], tokio-tungstenite) moving whole frames.
//!
//! Text frames carry JSON, binary frames MessagePack; both ends enforce the
//! same frame limit: a frame up to twice the limit is read and reported as
//! [`Incoming::TooLarge`](statecast_transport::Incoming::TooLarge), a
//! larger one closes the connection with 1009. Each connection is two small
//! tasks (reader and writer) around bounded queues; the writer pings the peer
//! and drops it when it stays silent past the idle timeout.
//!
//! Features: `client` (the connector) and `server` (`WsTransport`, axum and
//! hyper), both on by default; a client depends on this crate with
//! `default-features = false, features = ["client"]`.

#[cfg(feature = "client")]
mod client;
mod config;
mod connection;
#[cfg(feature = "server")]
mod server;

#[cfg(feature = "client")]
pub use client::connect;
pub use config::{
    DEFAULT_FRAME_LIMIT, DEFAULT_MAX_CONNECTIONS, DEFAULT_READ_BUFFER_SIZE, DEFAULT_WRITE_BUFFER_SIZE, WsClientConfig,
    WsConfig,
};
#[cfg(feature = "server")]
pub use server::WsTransport;
