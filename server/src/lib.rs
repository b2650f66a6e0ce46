//! The Statecast server: configuration, the authenticator, the demo app and
//! what the `statecast-server` binary shares with its tests.

pub mod auth;
pub mod builder;
pub mod config;
#[cfg(feature = "demo")]
pub mod demo;
pub mod http;
pub mod schema_export;
pub mod token;

pub use auth::ServerAuth;
pub use builder::{QuicListener, RunningServer, ServerBuilder, ServerError};
pub use config::{Config, ConfigError, Mode, StoreSpec};

use std::net::SocketAddr;

/// The start of the one line the binary prints on stdout once it accepts connections.
pub const LISTENING_PREFIX: &str = "listening ws://";

/// The line the binary prints on stdout once it listens: `listening ws://127.0.0.1:7100/ws`.
/// Tests and scripts read it to learn the port (`--ws-addr 127.0.0.1:0`).
pub fn listening_line(addr: SocketAddr, path: &str) -> String {
    format!("{LISTENING_PREFIX}{addr}{path}")
}

/// The start of the line the binary prints on stdout after the WebSocket
/// one when QUIC is on: `listening quic://127.0.0.1:7101`.
pub const QUIC_LISTENING_PREFIX: &str = "listening quic://";

/// The QUIC listening line (`--quic-addr 127.0.0.1:0` picks a free port).
pub fn quic_listening_line(addr: SocketAddr) -> String {
    format!("{QUIC_LISTENING_PREFIX}{addr}")
}

/// The line on stderr that carries the QUIC certificate's SHA-256
/// fingerprint, for clients to pin: `  quic fingerprint (sha-256): 3f2a…`.
pub const QUIC_FINGERPRINT_PREFIX: &str = "quic fingerprint (sha-256): ";

/// Logs to stderr with `filter` (stdout carries only the listening line).
/// Does nothing if a subscriber is already set.
pub fn init_tracing(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(config::DEFAULT_LOG));
    // Colour only for a person at a terminal: none in files, pipes and journals.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listening_line() {
        let addr: SocketAddr = "127.0.0.1:7100".parse().expect("addr");
        assert_eq!(listening_line(addr, "/ws"), "listening ws://127.0.0.1:7100/ws");
        let v6: SocketAddr = "[::1]:80".parse().expect("addr");
        assert_eq!(listening_line(v6, "/ws"), "listening ws://[::1]:80/ws");
        assert_eq!(quic_listening_line("127.0.0.1:7101".parse().expect("addr")), "listening quic://127.0.0.1:7101");
    }
}
