//! The QUIC transport of Statecast: a server ([`QuicTransport`], quinn) and
//! a client connector ([`connect`]) moving whole MessagePack frames.
//!
//! TLS is always on (rustls with the ring provider, TLS 1.3, ALPN
//! `statecast/1`). Each connection carries one bidirectional stream, opened
//! by the client; each frame on it is a 4-byte big-endian length and that
//! many bytes of MessagePack (tokio-util's `LengthDelimitedCodec`). Every
//! frame handed over is [`FrameKind::Binary`](statecast_transport::FrameKind::Binary),
//! so the engine speaks MessagePack on it.
//!
//! Both ends enforce the same frame limit as WebSocket: a frame up to twice
//! the limit is read and reported as
//! [`Incoming::TooLarge`](statecast_transport::Incoming::TooLarge), a
//! length prefix beyond that closes the connection with application code
//! 1009. Outgoing frames wait in the same bounded outbox; a close maps the
//! core close code to the same QUIC application error code ([`app_code`]).
//!
//! Certificates: the server reads a PEM certificate and key
//! ([`ServerTls::Files`]) or makes a self-signed one for local development
//! ([`ServerTls::SelfSigned`]); clients trust a CA file, a pinned SHA-256
//! fingerprint, or (for demos only) anything ([`Trust`]).
//!
//! Features: `client` (the connector) and `server` (`QuicTransport` and the
//! self-signed development certificate, rcgen), both on by default; a client
//! depends on this crate with `default-features = false, features = ["client"]`.

#[cfg(feature = "client")]
mod client;
mod config;
mod connection;
#[cfg(feature = "server")]
mod server;
mod tls;

#[cfg(feature = "client")]
pub use client::{DEFAULT_PORT, connect};
pub use config::{DEFAULT_FRAME_LIMIT, MAX_FRAME_LIMIT, QuicClientConfig, QuicConfig, ServerTls, Trust};
pub use connection::app_code;
#[doc(hidden)]
pub use connection::{FramesEnd, decode_frames};
#[cfg(feature = "server")]
pub use server::QuicTransport;
#[cfg(feature = "server")]
pub use tls::ensure_self_signed;
pub use tls::{
    ALPN, CertError, CertInfo, DEV_CERT_FILE, DEV_KEY_FILE, fingerprint, install_crypto_provider, parse_fingerprint,
};
