//! The shared transport conformance suite, run against the WebSocket
//! transport (and the in-memory reference, for comparison).

use async_trait::async_trait;
use statecast_core::testkit::transport_suite::{MemoryHarness, RunningServer, SuiteLimits, TransportHarness};
use statecast_core::transport::{Connection, ConnectionHandler, Transport, TransportError};
use statecast_transport_ws::{WsClientConfig, WsConfig, WsTransport, connect};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Default)]
struct WsHarness;

#[async_trait]
impl TransportHarness for WsHarness {
    async fn start(&self, limits: SuiteLimits, handler: Arc<dyn ConnectionHandler>) -> RunningServer {
        let config = WsConfig {
            frame_limit: limits.frame_limit,
            outbox_capacity: limits.outbox_capacity,
            incoming_capacity: limits.outbox_capacity,
            ..WsConfig::default()
        };
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let transport = match WsTransport::bind(addr, config).await {
            Ok(transport) => transport,
            Err(err) => panic!("bind failed: {err}"),
        };
        let url = transport.url();
        let shutdown = CancellationToken::new();
        let serving = shutdown.clone();
        tokio::spawn(async move {
            if let Err(err) = Box::new(transport).serve(handler, serving).await {
                tracing::error!(error = %err, "websocket server failed");
            }
        });
        RunningServer { url, shutdown }
    }

    async fn connect(&self, url: &str, limits: SuiteLimits) -> Result<Connection, TransportError> {
        let config = WsClientConfig {
            frame_limit: limits.frame_limit,
            outbox_capacity: limits.outbox_capacity,
            incoming_capacity: limits.outbox_capacity,
            ..WsClientConfig::default()
        };
        connect(url, &config).await
    }
}

mod ws {
    statecast_core::transport_conformance_tests!(super::WsHarness);
}

mod memory {
    statecast_core::transport_conformance_tests!(super::MemoryHarness::default());
}
