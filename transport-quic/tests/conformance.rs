//! The shared transport conformance suite, run against the QUIC transport.
//! QUIC carries MessagePack only, so the cases run with binary frames.

use async_trait::async_trait;
use statecast_core::testkit::transport_suite::{RunningServer, SuiteLimits, TransportHarness};
use statecast_core::transport::{Connection, ConnectionHandler, Transport, TransportError};
use statecast_transport_quic::{QuicClientConfig, QuicConfig, QuicTransport, ServerTls, Trust, connect};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Starts servers with a self-signed certificate in a temp directory; the
/// client pins its fingerprint.
#[derive(Debug)]
struct QuicHarness {
    dir: tempfile::TempDir,
    fingerprint: parking_lot::Mutex<Option<String>>,
}

impl QuicHarness {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
        Self { dir, fingerprint: parking_lot::Mutex::new(None) }
    }
}

#[async_trait]
impl TransportHarness for QuicHarness {
    async fn start(&self, limits: SuiteLimits, handler: Arc<dyn ConnectionHandler>) -> RunningServer {
        let config = QuicConfig {
            frame_limit: limits.frame_limit,
            outbox_capacity: limits.outbox_capacity,
            incoming_capacity: limits.outbox_capacity,
            ..QuicConfig::with_tls(ServerTls::SelfSigned { dir: self.dir.path().to_owned() })
        };
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let transport = match QuicTransport::bind(addr, config).await {
            Ok(transport) => transport,
            Err(err) => panic!("bind failed: {err}"),
        };
        *self.fingerprint.lock() = Some(transport.certificate().fingerprint.clone());
        let url = transport.url();
        let shutdown = CancellationToken::new();
        let serving = shutdown.clone();
        tokio::spawn(async move {
            if let Err(err) = Box::new(transport).serve(handler, serving).await {
                tracing::error!(error = %err, "QUIC server failed");
            }
        });
        RunningServer { url, shutdown }
    }

    async fn connect(&self, url: &str, limits: SuiteLimits) -> Result<Connection, TransportError> {
        let pin = self.fingerprint.lock().clone().unwrap_or_default();
        let config = QuicClientConfig {
            frame_limit: limits.frame_limit,
            outbox_capacity: limits.outbox_capacity,
            incoming_capacity: limits.outbox_capacity,
            ..QuicClientConfig::new(Trust::Fingerprint(pin))
        };
        connect(url, &config).await
    }

    fn carries_text_frames(&self) -> bool {
        false
    }
}

mod quic {
    statecast_core::transport_conformance_tests!(super::QuicHarness::new());
}
