//! The QUIC server: a quinn endpoint on one UDP socket; each accepted
//! connection waits for the client's one bidirectional stream and becomes a
//! [`Connection`](statecast_transport::Connection) for the engine.

use async_trait::async_trait;
use statecast_transport::{ConnectionHandler, ConnectionInfo, Transport, TransportError};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use crate::config::{ConnSettings, QuicConfig};
use crate::connection::{self, app_code};
use crate::tls::{self, CertInfo};

/// How long a stopping server waits for the closes of the connections it cut to go out.
const FINAL_CLOSE_WAIT: Duration = Duration::from_secs(1);

/// The QUIC transport, bound and ready to [`serve`](Transport::serve).
pub struct QuicTransport {
    endpoint: quinn::Endpoint,
    local_addr: SocketAddr,
    settings: ConnSettings,
    handshake_timeout: Duration,
    cert: CertInfo,
}

impl std::fmt::Debug for QuicTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicTransport")
            .field("local_addr", &self.local_addr)
            .field("settings", &self.settings)
            .field("cert", &self.cert)
            .finish_non_exhaustive()
    }
}

impl QuicTransport {
    /// Loads (or, for [`ServerTls::SelfSigned`](crate::ServerTls::SelfSigned),
    /// makes) the certificate and binds `addr` (UDP; port 0 picks a free port).
    pub async fn bind(addr: SocketAddr, config: QuicConfig) -> Result<Self, TransportError> {
        let settings = config.validate()?;
        tls::install_crypto_provider();
        let cert = tls::load_server_cert(&config.tls).map_err(|e| TransportError::Protocol(e.to_string()))?;
        let crypto = tls::server_crypto(&cert).map_err(|e| TransportError::Protocol(e.to_string()))?;
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(crypto)
            .map_err(|e| TransportError::Protocol(format!("the TLS config can't serve QUIC: {e}")))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        server.transport_config(Arc::new(settings.transport_config()?));
        let endpoint = quinn::Endpoint::server(server, addr)?;
        let local_addr = endpoint.local_addr()?;
        Ok(Self { endpoint, local_addr, settings, handshake_timeout: config.handshake_timeout, cert: cert.info })
    }

    /// The URL clients connect to (`quic://addr`).
    pub fn url(&self) -> String {
        format!("quic://{}", self.local_addr)
    }

    /// The certificate it presents: its file and SHA-256 fingerprint.
    pub fn certificate(&self) -> &CertInfo {
        &self.cert
    }
}

#[async_trait]
impl Transport for QuicTransport {
    fn name(&self) -> &'static str {
        "quic"
    }

    fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` is cancelled. Then it accepts no more
    /// connections and closes the open ones gracefully: the frames already
    /// queued (the engine's `goaway`) are sent, then a close with 1001
    /// `SERVER_STOPPING`. (A WebSocket peer learns that the process exited
    /// from TCP; a QUIC peer would only notice at its idle timeout.) Returns
    /// once they are closed, or after the close timeout, closing the rest at once.
    async fn serve(
        self: Box<Self>,
        handler: Arc<dyn ConnectionHandler>,
        shutdown: CancellationToken,
    ) -> Result<(), TransportError> {
        let this = *self;
        tracing::info!(addr = %this.local_addr, fingerprint = %this.cert.fingerprint, "QUIC transport listening");
        loop {
            let incoming = tokio::select! {
                _ = shutdown.cancelled() => break,
                incoming = this.endpoint.accept() => incoming,
            };
            let Some(incoming) = incoming else { break };
            let handler = handler.clone();
            let (settings, handshake_timeout) = (this.settings, this.handshake_timeout);
            let stopping = shutdown.clone();
            tokio::spawn(async move {
                let peer = incoming.remote_address();
                match accept(incoming, settings, handshake_timeout, stopping).await {
                    Ok((conn, driver)) => {
                        handler.handle(conn);
                        driver.await;
                    }
                    Err(why) => tracing::debug!(%peer, %why, "QUIC connection not accepted"),
                }
            });
        }
        // Refuse new connections; let the open ones finish within the close
        // timeout, then close what is left, and give those closes a moment
        // to go out: a process that exits right after a close never sends it.
        this.endpoint.set_server_config(None);
        if tokio::time::timeout(this.settings.close_timeout, this.endpoint.wait_idle()).await.is_err() {
            tracing::debug!(open = this.endpoint.open_connections(), "closing QUIC connections still open at shutdown");
            this.endpoint.close(app_code::GOING_AWAY, b"SERVER_STOPPING");
            let _ = tokio::time::timeout(FINAL_CLOSE_WAIT, this.endpoint.wait_idle()).await;
        }
        tracing::info!(addr = %this.local_addr, "QUIC transport stopped");
        Ok(())
    }
}

/// Completes the handshake and waits for the client's stream.
async fn accept(
    incoming: quinn::Incoming,
    settings: ConnSettings,
    handshake_timeout: Duration,
    stopping: CancellationToken,
) -> Result<(statecast_transport::Connection, impl Future<Output = ()> + Send + 'static), String> {
    let connecting = incoming.accept().map_err(|e| format!("refused: {e}"))?;
    let conn = tokio::time::timeout(handshake_timeout, connecting)
        .await
        .map_err(|_| "the handshake timed out".to_owned())?
        .map_err(|e| format!("handshake failed: {e}"))?;
    let stream = tokio::time::timeout(handshake_timeout, conn.accept_bi()).await;
    let (send, recv) = match stream {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(format!("no stream: {e}")),
        Err(_) => {
            conn.close(app_code::POLICY, b"no stream opened");
            return Err("the client opened no stream in time".to_owned());
        }
    };
    let info = ConnectionInfo { transport: "quic", peer: conn.remote_address().to_string() };
    tracing::debug!(peer = %info.peer, "QUIC connection opened");
    let reader = connection::framed_read(recv, &settings);
    let writer = connection::framed_write(send);
    Ok(connection::open(conn, writer, reader, info, settings, stopping))
}
