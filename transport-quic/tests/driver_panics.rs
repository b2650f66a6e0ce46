//! Every way a connection ends, on both sides, without a panic in the
//! spawned driver tasks (where a panic would otherwise go unnoticed). Its
//! own test binary: the panic hook that counts is process-wide.

use statecast_core::testkit::transport_suite::Accepted;
use statecast_core::transport::{Frame, Transport, close_code};
use statecast_transport_quic::{QuicClientConfig, QuicConfig, QuicTransport, ServerTls, Trust, connect};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_driver_panics_however_a_connection_ends() {
    let panics = Arc::new(AtomicUsize::new(0));
    let counter = panics.clone();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        counter.fetch_add(1, Ordering::SeqCst);
        previous(info);
    }));

    let dir = tempfile::tempdir().expect("tempdir");
    let config = QuicConfig {
        frame_limit: 1024,
        close_timeout: Duration::from_millis(500),
        ..QuicConfig::with_tls(ServerTls::SelfSigned { dir: dir.path().to_owned() })
    };
    let transport = QuicTransport::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), config).await.expect("bind");
    let url = transport.url();
    let pin = transport.certificate().fingerprint.clone();
    let (handler, mut accepted) = Accepted::new();
    let shutdown = CancellationToken::new();
    let serving = tokio::spawn(Box::new(transport).serve(handler, shutdown.clone()));
    let client_config = QuicClientConfig { frame_limit: 1024, ..QuicClientConfig::new(Trust::Fingerprint(pin)) };

    for case in 0..5 {
        let client =
            tokio::time::timeout(WAIT, connect(&url, &client_config)).await.expect("in time").expect("connect");
        let mut client = Some(client);
        let mut remote = tokio::time::timeout(WAIT, accepted.recv()).await.expect("in time").expect("accepted");
        match case {
            0 => client = None,
            1 => remote.outbox.close(close_code::UNAUTHENTICATED, "TOKEN_EXPIRED"),
            2 => client.iter().for_each(|c| c.outbox.close(close_code::NORMAL, "bye")),
            3 => remote.outbox.abort(close_code::SLOW_CONSUMER, "SLOW_CONSUMER"),
            _ => {
                // Beyond twice the limit: the server closes with 1009.
                if let Some(c) = &client {
                    let _ = c.outbox.send(Frame::binary(vec![0u8; 4096])).await;
                }
            }
        }
        // Both ends see the end.
        tokio::time::timeout(WAIT, async { while remote.incoming.recv().await.is_some() {} })
            .await
            .expect("server end");
        if let Some(client) = client.as_mut() {
            tokio::time::timeout(WAIT, async { while client.incoming.recv().await.is_some() {} })
                .await
                .expect("client end");
        }
    }
    shutdown.cancel();
    tokio::time::timeout(WAIT, serving).await.expect("serve returns").expect("no panic").expect("serve ok");
    // Let the drivers run their last steps.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(panics.load(Ordering::SeqCst), 0, "a driver task panicked (see the output above)");
}
