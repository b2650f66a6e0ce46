//! The WebSocket client: connects to a `ws://` URL with tokio-tungstenite and
//! returns the same [`Connection`] the server side hands to the engine.

use bytes::Bytes;
use statecast_transport::{Connection, ConnectionInfo, Frame, FrameKind, TransportError};
use std::sync::Arc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};
use tokio_tungstenite::{Connector, MaybeTlsStream, connect_async_tls_with_config};

use crate::config::WsClientConfig;
use crate::connection::{self, Wire, WireError, WireMessage, close_reason_text};

/// Connects to a `ws://host:port/path` or `wss://host:port/path` URL (TLS
/// with rustls and ring; the server's certificate checked against
/// [`WsClientConfig::ca_file`] or the system's roots).
pub async fn connect(url: &str, config: &WsClientConfig) -> Result<Connection, TransportError> {
    let tls = check_scheme(url)?;
    let connector = if tls { Some(tls_connector(config)?) } else { None };
    let settings = config.validate()?;
    let ws_config = WebSocketConfig::default()
        .max_message_size(Some(settings.wire_limit()))
        .max_frame_size(Some(settings.wire_limit()))
        .read_buffer_size(settings.read_buffer_size)
        .write_buffer_size(settings.write_buffer_size);
    // `true`: TCP_NODELAY, frames are small and latency matters.
    let handshake = connect_async_tls_with_config(url, Some(ws_config), true, connector);
    let (socket, _response) = tokio::time::timeout(config.connect_timeout, handshake)
        .await
        .map_err(|_| {
            TransportError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("connecting to {url} timed out"),
            ))
        })?
        .map_err(|err| connect_error(url, err))?;
    let peer = match socket.get_ref() {
        MaybeTlsStream::Plain(tcp) => tcp.peer_addr().map(|a| a.to_string()).unwrap_or_else(|_| url.to_owned()),
        _ => url.to_owned(),
    };
    tracing::debug!(%peer, "websocket client connected");
    let info = ConnectionInfo { transport: "ws", peer };
    let (conn, driver) = connection::open(socket, info, settings);
    tokio::spawn(driver);
    Ok(conn)
}

/// `Ok(true)` for `wss://`, `Ok(false)` for `ws://`.
fn check_scheme(url: &str) -> Result<bool, TransportError> {
    let scheme = url.split_once("://").map(|(scheme, _)| scheme.to_ascii_lowercase());
    match scheme.as_deref() {
        Some("ws") => Ok(false),
        Some("wss") => Ok(true),
        _ => Err(TransportError::Address(format!("{url}: expected a ws:// or wss:// URL"))),
    }
}

/// rustls with the ring provider (the one provider this workspace builds),
/// trusting the configured CA file or the system's roots.
fn tls_connector(config: &WsClientConfig) -> Result<Connector, TransportError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match &config.ca_file {
        Some(path) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<_, _>>())
                .map_err(|e| TransportError::Address(format!("can't read the CA file {}: {e}", path.display())))?;
            if certs.is_empty() {
                return Err(TransportError::Address(format!("{} holds no certificate", path.display())));
            }
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| TransportError::Address(format!("bad CA certificate in {}: {e}", path.display())))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(TransportError::Address("no system root certificates found; give a CA file".into()));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TransportError::Protocol(format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Connector::Rustls(Arc::new(tls)))
}

fn connect_error(url: &str, err: tungstenite::Error) -> TransportError {
    match err {
        tungstenite::Error::Io(io) => TransportError::Io(io),
        tungstenite::Error::Url(e) => TransportError::Address(format!("{url}: {e}")),
        tungstenite::Error::Http(response) => {
            TransportError::Protocol(format!("{url}: handshake refused with HTTP {}", response.status()))
        }
        other => TransportError::Protocol(format!("{url}: {other}")),
    }
}

impl WireMessage for Message {
    fn into_wire(self) -> Wire {
        match self {
            Message::Text(text) => Wire::Data(Frame { kind: FrameKind::Text, data: Bytes::from(text) }),
            Message::Binary(data) => Wire::Data(Frame { kind: FrameKind::Binary, data }),
            Message::Close(_) => Wire::Close,
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => Wire::Control,
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
        Message::Close(Some(CloseFrame {
            code: CloseCode::from(code),
            reason: Utf8Bytes::from(close_reason_text(reason)),
        }))
    }
}

impl WireError for tungstenite::Error {
    fn is_too_large(&self) -> bool {
        matches!(self, tungstenite::Error::Capacity(_))
    }
    fn is_protocol_violation(&self) -> bool {
        matches!(self, tungstenite::Error::Protocol(_) | tungstenite::Error::Utf8(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ws_and_wss_urls_are_accepted() {
        assert!(matches!(check_scheme("ws://127.0.0.1:1/ws"), Ok(false)));
        assert!(matches!(check_scheme("WS://127.0.0.1:1/ws"), Ok(false)));
        assert!(matches!(check_scheme("wss://example.com/ws"), Ok(true)));
        assert!(matches!(check_scheme("http://example.com"), Err(TransportError::Address(_))));
        assert!(matches!(check_scheme("no scheme"), Err(TransportError::Address(_))));
    }
}
