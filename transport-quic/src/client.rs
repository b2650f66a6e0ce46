//! The QUIC client: connects to a `quic://host:port` URL, opens the one
//! bidirectional stream and returns the same [`Connection`] the server side
//! hands to the engine.

use statecast_transport::{Connection, ConnectionInfo, TransportError};
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use crate::config::QuicClientConfig;
use crate::connection::{self, peer_close};
use crate::tls::{self, ALPN, TrustFailure};

/// The port a `quic://` URL without one names (the server's default).
pub const DEFAULT_PORT: u16 = 7101;

/// Connects to `quic://host:port` (the port defaults to 7101), checks the
/// server's certificate as `config.trust` says, and opens the stream.
///
/// A certificate that is not trusted is a [`TransportError::Protocol`] that
/// says why (fingerprint mismatch, unknown issuer, wrong name).
pub async fn connect(url: &str, config: &QuicClientConfig) -> Result<Connection, TransportError> {
    let settings = config.validate()?;
    let target = parse_url(url)?;
    tls::install_crypto_provider();
    let addr = resolve(&target).await?;
    let (crypto, failure) = tls::client_crypto(&config.trust).map_err(|e| TransportError::Protocol(e.to_string()))?;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(crypto)
        .map_err(|e| TransportError::Protocol(format!("the TLS config can't run QUIC: {e}")))?;
    let mut client_config = quinn::ClientConfig::new(Arc::new(crypto));
    client_config.transport_config(Arc::new(settings.transport_config()?));

    let local: SocketAddr =
        if addr.is_ipv4() { (Ipv4Addr::UNSPECIFIED, 0).into() } else { (Ipv6Addr::UNSPECIFIED, 0).into() };
    let endpoint = quinn::Endpoint::client(local)?;
    let server_name = config.server_name.clone().unwrap_or_else(|| target.host.clone());
    let connecting = endpoint
        .connect_with(client_config, addr, &server_name)
        .map_err(|e| TransportError::Address(format!("{url}: {e}")))?;
    let conn = match tokio::time::timeout(config.connect_timeout, connecting).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(err)) => return Err(handshake_error(url, &err, &failure)),
        Err(_) => {
            return Err(TransportError::Io(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connecting to {url} timed out (is a QUIC server listening on UDP {addr}?)"),
            )));
        }
    };
    let (send, recv) = conn.open_bi().await.map_err(|e| TransportError::Protocol(format!("{url}: no stream: {e}")))?;
    let mut writer = connection::framed_write(send);
    // A stream is announced to the server only by data: an empty frame opens it.
    use futures_util::SinkExt as _;
    match tokio::time::timeout(config.connect_timeout, writer.send(bytes::Bytes::new())).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(TransportError::Protocol(format!("{url}: can't open the stream: {e}"))),
        Err(_) => {
            return Err(TransportError::Io(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("opening the stream to {url} timed out"),
            )));
        }
    }
    let reader = connection::framed_read(recv, &settings);
    let info = ConnectionInfo { transport: "quic", peer: conn.remote_address().to_string() };
    tracing::debug!(peer = %info.peer, "QUIC client connected");
    // A client connection ends only when it is closed or lost.
    let never = tokio_util::sync::CancellationToken::new();
    let (connection, driver) = connection::open(conn, writer, reader, info, settings, never);
    tokio::spawn(async move {
        driver.await;
        // The endpoint outlives the connection's driver, so the close is sent.
        drop(endpoint);
    });
    Ok(connection)
}

fn handshake_error(url: &str, err: &quinn::ConnectionError, failure: &TrustFailure) -> TransportError {
    if let Some(why) = failure.lock().take() {
        return TransportError::Protocol(format!("{url}: the server's certificate is not trusted: {why}"));
    }
    if let Some((code, reason)) = peer_close(err) {
        return TransportError::Protocol(format!("{url}: the server closed the connection ({code} {reason})"));
    }
    match err {
        quinn::ConnectionError::TimedOut => TransportError::Io(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("{url}: no answer (is a QUIC server listening there?)"),
        )),
        quinn::ConnectionError::ConnectionClosed(close) if close.error_code == no_application_protocol() => {
            TransportError::Protocol(format!("{url}: the server does not speak {}", String::from_utf8_lossy(ALPN)))
        }
        other => TransportError::Protocol(format!("{url}: QUIC handshake failed: {other}")),
    }
}

/// The TLS alert `no_application_protocol` (120) as a QUIC crypto error.
fn no_application_protocol() -> quinn::TransportErrorCode {
    quinn::TransportErrorCode::crypto(120)
}

/// The parts of a `quic://` URL.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    host: String,
    port: u16,
}

fn parse_url(url: &str) -> Result<Target, TransportError> {
    let bad = |why: &str| TransportError::Address(format!("{url}: {why}"));
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(bad("expected a quic://host:port URL"));
    };
    if !scheme.eq_ignore_ascii_case("quic") {
        return Err(bad("expected a quic://host:port URL"));
    }
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() || authority.contains(['/', '?', '#', '@']) {
        return Err(bad("a quic:// URL is just a host and a port"));
    }
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let Some((host, after)) = bracketed.split_once(']') else {
            return Err(bad("unclosed `[` in the host"));
        };
        match after {
            "" => (host, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => return Err(bad("expected `:port` after the IPv6 address")),
            },
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) if !host.contains(':') => (host, Some(port)),
            Some(_) => return Err(bad("put an IPv6 address in brackets: quic://[::1]:7101")),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| bad(&format!("`{p}` is not a port")))?,
    };
    Ok(Target { host: host.to_owned(), port })
}

async fn resolve(target: &Target) -> Result<SocketAddr, TransportError> {
    let mut addrs = tokio::net::lookup_host((target.host.as_str(), target.port))
        .await
        .map_err(|e| TransportError::Address(format!("can't resolve {}: {e}", target.host)))?;
    addrs.next().ok_or_else(|| TransportError::Address(format!("{} has no address", target.host)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(host: &str, port: u16) -> Target {
        Target { host: host.to_owned(), port }
    }

    #[test]
    fn quic_urls() {
        assert_eq!(parse_url("quic://127.0.0.1:7101").expect("ok"), target("127.0.0.1", 7101));
        assert_eq!(parse_url("QUIC://localhost:9/").expect("ok"), target("localhost", 9));
        assert_eq!(parse_url("quic://example.com").expect("ok"), target("example.com", DEFAULT_PORT));
        assert_eq!(parse_url("quic://[::1]:7101").expect("ok"), target("::1", 7101));
        assert_eq!(parse_url("quic://[::1]").expect("ok"), target("::1", DEFAULT_PORT));
        for bad in [
            "ws://127.0.0.1:7100/ws",
            "127.0.0.1:7101",
            "quic://",
            "quic://host:0",
            "quic://host:port",
            "quic://host:7101/path",
            "quic://::1:7101",
            "quic://[::1",
            "quic://user@host:1",
        ] {
            assert!(matches!(parse_url(bad), Err(TransportError::Address(_))), "{bad}");
        }
    }
}
