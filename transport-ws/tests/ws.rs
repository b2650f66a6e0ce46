//! WebSocket-specific behaviour beyond the shared suite: keepalive, extra
//! HTTP routes on the same port, shutdown, configuration and URL errors.

use axum::Router;
use axum::routing::get;
use statecast_core::testkit::transport_suite::Accepted;
use statecast_core::transport::{Connection, Frame, Incoming, Transport, TransportError};
use statecast_transport_ws::{WsClientConfig, WsConfig, WsTransport, connect};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(10);

struct Server {
    url: String,
    addr: SocketAddr,
    accepted: mpsc::UnboundedReceiver<Connection>,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), TransportError>>,
}

fn localhost() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

async fn start(config: WsConfig, routes: Router) -> Server {
    let transport = WsTransport::bind(localhost(), config).await.expect("bind");
    let transport = transport.with_routes(routes);
    let (url, addr) = (transport.url(), transport.local_addr());
    let (handler, accepted) = Accepted::new();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(Box::new(transport).serve(handler, shutdown.clone()));
    Server { url, addr, accepted, shutdown, task }
}

async fn accept(server: &mut Server) -> Connection {
    timeout(WAIT, server.accepted.recv()).await.expect("accept in time").expect("a connection")
}

async fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut tcp = TcpStream::connect(addr).await.expect("tcp connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.expect("write request");
    let mut response = Vec::new();
    timeout(WAIT, tcp.read_to_end(&mut response)).await.expect("response in time").expect("read response");
    String::from_utf8_lossy(&response).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_peer_is_dropped_and_answering_peer_is_kept() {
    let config = WsConfig {
        // Generous beside the ping interval: a loaded machine can hold the
        // answering client back for a few hundred ms.
        ping_interval: Some(Duration::from_millis(100)),
        idle_timeout: Duration::from_millis(1_000),
        ..WsConfig::default()
    };
    let mut server = start(config, Router::new()).await;

    // A raw client that never reads never answers the pings.
    let (silent, _) = tokio_tungstenite::connect_async(server.url.as_str()).await.expect("raw connect");
    let mut silent_remote = accept(&mut server).await;
    // Our client reads (so answers pings) but never pings or sends by itself.
    let quiet = WsClientConfig { ping_interval: None, ..WsClientConfig::default() };
    let mut client = connect(&server.url, &quiet).await.expect("connect");
    let mut answering_remote = accept(&mut server).await;

    let ended = timeout(WAIT, silent_remote.incoming.recv()).await.expect("silent peer dropped in time");
    assert_eq!(ended, None);
    timeout(WAIT, silent_remote.outbox.closed()).await.expect("outbox closed");

    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert!(!answering_remote.outbox.is_closed(), "a peer answering pings was dropped");
    answering_remote.outbox.send(Frame::text("alive")).await.expect("send");
    let got = timeout(WAIT, client.incoming.recv()).await.expect("frame in time");
    assert_eq!(got, Some(Incoming::Frame(Frame::text("alive"))));
    client.outbox.send(Frame::text("still")).await.expect("send");
    let got = timeout(WAIT, answering_remote.incoming.recv()).await.expect("frame in time");
    assert_eq!(got, Some(Incoming::Frame(Frame::text("still"))));
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extra_routes_share_the_port() {
    let routes = Router::new().route("/healthz", get(|| async { "ok" }));
    let mut server = start(WsConfig::default(), routes).await;

    let health = http_get(server.addr, "/healthz").await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(health.ends_with("ok"), "{health}");
    let missing = http_get(server.addr, "/missing").await;
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
    // A plain GET on the WebSocket path is refused, not a crash.
    let plain = http_get(server.addr, "/ws").await;
    assert!(plain.starts_with("HTTP/1.1 4"), "{plain}");

    let mut client = connect(&server.url, &WsClientConfig::default()).await.expect("connect");
    let remote = accept(&mut server).await;
    remote.outbox.send(Frame::binary(&b"hi"[..])).await.expect("send");
    let got = timeout(WAIT, client.incoming.recv()).await.expect("frame in time");
    assert_eq!(got, Some(Incoming::Frame(Frame::binary(&b"hi"[..]))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_accepting_and_leaves_open_connections_to_their_owner() {
    let mut server = start(WsConfig::default(), Router::new()).await;
    let mut client = connect(&server.url, &WsClientConfig::default()).await.expect("connect");
    let mut remote = accept(&mut server).await;

    server.shutdown.cancel();
    let served = timeout(WAIT, server.task).await.expect("serve returns in time").expect("serve task");
    assert!(served.is_ok(), "{served:?}");
    assert!(connect(&server.url, &WsClientConfig::default()).await.is_err(), "accepted after shutdown");

    // The open connection still works until its owner closes it.
    client.outbox.send(Frame::text("drain")).await.expect("send");
    let got = timeout(WAIT, remote.incoming.recv()).await.expect("frame in time");
    assert_eq!(got, Some(Incoming::Frame(Frame::text("drain"))));
    remote.outbox.close(1001, "going away");
    assert_eq!(timeout(WAIT, client.incoming.recv()).await.expect("end in time"), None);
}

#[tokio::test]
async fn bad_settings_and_urls_are_typed_errors() {
    let bad_path = WsConfig { path: "ws".into(), ..WsConfig::default() };
    assert!(matches!(WsTransport::bind(localhost(), bad_path).await, Err(TransportError::Address(_))));
    let bad_pattern = WsConfig { path: "/ws/{id}".into(), ..WsConfig::default() };
    assert!(matches!(WsTransport::bind(localhost(), bad_pattern).await, Err(TransportError::Address(_))));
    let no_limit = WsConfig { frame_limit: 0, ..WsConfig::default() };
    assert!(WsTransport::bind(localhost(), no_limit).await.is_err());

    let config = WsClientConfig::default();
    // wss:// is supported; a CA file that does not exist is a clear address error.
    let missing_ca = WsClientConfig { ca_file: Some("/nonexistent/ca.pem".into()), ..config.clone() };
    assert!(matches!(connect("wss://127.0.0.1:1/ws", &missing_ca).await, Err(TransportError::Address(_))));
    assert!(matches!(connect("http://127.0.0.1:1/ws", &config).await, Err(TransportError::Address(_))));
    // Nothing listens on a port we just released.
    let port = std::net::TcpListener::bind(localhost()).and_then(|l| l.local_addr()).expect("free port").port();
    assert!(matches!(connect(&format!("ws://127.0.0.1:{port}/ws"), &config).await, Err(TransportError::Io(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_beyond_twice_the_limit_is_closed_with_1009() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

    // Small enough that the whole frame is read at once (no unread bytes
    // left to turn the close into a reset).
    let config = WsConfig { frame_limit: 1024, ..WsConfig::default() };
    let mut server = start(config, Router::new()).await;
    let (mut raw, _) = tokio_tungstenite::connect_async(server.url.as_str()).await.expect("raw connect");
    let mut remote = accept(&mut server).await;
    raw.send(Message::binary(vec![7u8; 2 * 1024 + 1])).await.expect("send");
    let reply = timeout(WAIT, raw.next()).await.expect("reply in time");
    match reply {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Size),
        other => panic!("expected a 1009 close, got {other:?}"),
    }
    assert_eq!(timeout(WAIT, remote.incoming.recv()).await.expect("end in time"), None);
}

/// Opens a raw TCP connection and completes the WebSocket handshake by hand.
async fn raw_websocket(addr: SocketAddr) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).await.expect("tcp connect");
    let request = "GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                   Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    tcp.write_all(request.as_bytes()).await.expect("write handshake");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        timeout(WAIT, tcp.read_exact(&mut byte)).await.expect("handshake in time").expect("read handshake");
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    tcp
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protocol_violation_is_closed_with_1002() {
    let mut server = start(WsConfig::default(), Router::new()).await;
    let mut tcp = raw_websocket(server.addr).await;
    let _conn = accept(&mut server).await;
    // A client frame must be masked: an unmasked one breaks the protocol.
    tcp.write_all(&[0x81, 0x02, b'h', b'i']).await.expect("write frame");
    let mut reply = Vec::new();
    timeout(WAIT, tcp.read_to_end(&mut reply)).await.expect("closed in time").ok();
    assert!(reply.len() >= 4 && reply[0] == 0x88, "a close frame, not a dropped socket: {reply:?}");
    assert_eq!(u16::from_be_bytes([reply[2], reply[3]]), 1002, "{reply:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_that_sends_no_request_is_closed_after_the_header_timeout() {
    let config = WsConfig { header_read_timeout: Duration::from_millis(300), ..WsConfig::default() };
    let server = start(config, Router::new()).await;
    // The clock starts before the connect: the server may accept (and start
    // its timer) before this task is scheduled again after the handshake.
    let started = std::time::Instant::now();
    let mut tcp = TcpStream::connect(server.addr).await.expect("tcp connect");
    let mut buf = Vec::new();
    timeout(WAIT, tcp.read_to_end(&mut buf)).await.expect("closed in time").ok();
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(300), "closed after {waited:?}, before the 300 ms timeout");
    // A request sent in time is served.
    assert!(http_get(server.addr, "/nothing-here").await.starts_with("HTTP/1.1 404"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_are_refused_with_503() {
    let config = WsConfig { max_connections: 2, ..WsConfig::default() };
    let mut server = start(config, Router::new()).await;
    let _a = connect(&server.url, &WsClientConfig::default()).await.expect("first");
    let _b = connect(&server.url, &WsClientConfig::default()).await.expect("second");
    let (_ca, _cb) = (accept(&mut server).await, accept(&mut server).await);
    let refused = http_get(server.addr, "/").await;
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(connect(&server.url, &WsClientConfig::default()).await.is_err(), "a third WebSocket is refused");
    // One gone makes room.
    // One gone makes room, as soon as the server has seen the close (how soon
    // depends on the machine's load, so the test retries rather than sleeps).
    drop((_a, _ca));
    let deadline = tokio::time::Instant::now() + WAIT;
    let _c = loop {
        match connect(&server.url, &WsClientConfig::default()).await {
            Ok(c) => break c,
            Err(_) if tokio::time::Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => panic!("no room after a connection closed: {e}"),
        }
    };
}
