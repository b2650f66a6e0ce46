//! QUIC-specific behaviour beyond the shared suite: which certificates a
//! client trusts (and what it says when it doesn't), the application error
//! codes a peer sees, frames on the wire, and shutdown.

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use statecast_core::testkit::transport_suite::Accepted;
use statecast_core::transport::{
    Connection, Frame, FrameKind, Incoming, SendError, Transport, TransportError, close_code,
};
use statecast_transport_quic::{
    ALPN, QuicClientConfig, QuicConfig, QuicTransport, ServerTls, Trust, app_code, connect, ensure_self_signed,
};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::codec::{Framed, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(10);

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out: {what}"),
    }
}

/// A running server with its self-signed certificate in a temp directory.
struct Server {
    url: String,
    addr: SocketAddr,
    fingerprint: String,
    cert_path: std::path::PathBuf,
    accepted: mpsc::UnboundedReceiver<Connection>,
    shutdown: CancellationToken,
    serving: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start(config: impl FnOnce(QuicConfig) -> QuicConfig) -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(QuicConfig::with_tls(ServerTls::SelfSigned { dir: dir.path().to_owned() }));
    let transport = QuicTransport::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), config).await.expect("bind");
    let cert = transport.certificate().clone();
    assert!(cert.self_signed && cert.generated);
    let (url, addr) = (transport.url(), transport.local_addr());
    let (handler, accepted) = Accepted::new();
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let serving = tokio::spawn(async move {
        Box::new(transport).serve(handler, token).await.expect("serve");
    });
    Server {
        url,
        addr,
        fingerprint: cert.fingerprint,
        cert_path: cert.cert_path,
        accepted,
        shutdown,
        serving,
        _dir: dir,
    }
}

async fn connect_with(server: &Server, trust: Trust) -> Result<Connection, TransportError> {
    within("connect", connect(&server.url, &QuicClientConfig::new(trust))).await
}

fn refusal(result: Result<Connection, TransportError>) -> String {
    match result {
        Ok(_) => panic!("the connection should have been refused"),
        Err(TransportError::Protocol(message)) => message,
        Err(other) => panic!("expected a protocol error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_pinned_fingerprint_is_trusted_in_any_spelling() {
    let mut server = start(|c| c).await;
    let colons = server
        .fingerprint
        .as_bytes()
        .chunks(2)
        .map(|p| String::from_utf8_lossy(p).to_uppercase())
        .collect::<Vec<_>>()
        .join(":");
    for pin in [server.fingerprint.clone(), colons] {
        let mut client = connect_with(&server, Trust::Fingerprint(pin)).await.expect("trusted");
        let mut remote = within("accept", server.accepted.recv()).await.expect("accepted");
        assert_eq!(remote.info.transport, "quic");
        client.outbox.send(Frame::binary(&b"\x81\xa4type\xa4ping"[..])).await.expect("send");
        let got = within("recv", remote.incoming.recv()).await;
        assert_eq!(got, Some(Incoming::Frame(Frame::binary(&b"\x81\xa4type\xa4ping"[..]))));
        remote.outbox.send(Frame::binary(&b"pong"[..])).await.expect("send back");
        assert_eq!(within("recv", client.incoming.recv()).await, Some(Incoming::Frame(Frame::binary(&b"pong"[..]))));
    }
}

#[tokio::test]
async fn a_wrong_fingerprint_is_refused_and_says_so() {
    let mut server = start(|c| c).await;
    let wrong = "00".repeat(32);
    let message = refusal(connect_with(&server, Trust::Fingerprint(wrong.clone())).await);
    assert!(message.contains("not trusted") && message.contains("fingerprint mismatch"), "{message}");
    assert!(message.contains(&wrong) && message.contains(&server.fingerprint), "names both: {message}");
    // Nothing reached the engine.
    assert!(tokio::time::timeout(Duration::from_millis(200), server.accepted.recv()).await.is_err());
}

#[tokio::test]
async fn the_certificate_file_is_its_own_ca() {
    let mut server = start(|c| c).await;
    let _client = connect_with(&server, Trust::CaFile(server.cert_path.clone())).await.expect("trusted by its file");
    within("accept", server.accepted.recv()).await.expect("accepted");
}

#[tokio::test]
async fn an_unknown_issuer_is_refused_and_says_so() {
    let server = start(|c| c).await;
    let other = tempfile::tempdir().expect("tempdir");
    let other_cert = ensure_self_signed(other.path()).expect("another cert").cert_path;
    let message = refusal(connect_with(&server, Trust::CaFile(other_cert.clone())).await);
    assert!(message.contains("not trusted") && message.contains("unknown issuer"), "{message}");
    assert!(message.contains(&other_cert.display().to_string()), "names the CA file: {message}");
}

#[tokio::test]
async fn a_certificate_for_another_name_is_refused() {
    let server = start(|c| c).await;
    let config = QuicClientConfig {
        server_name: Some("statecast.example".into()),
        ..QuicClientConfig::new(Trust::CaFile(server.cert_path.clone()))
    };
    let message = refusal(within("connect", connect(&server.url, &config)).await);
    assert!(message.contains("not valid for the name statecast.example"), "{message}");
}

#[tokio::test]
async fn insecure_dev_trusts_anything() {
    let mut server = start(|c| c).await;
    let _client = connect_with(&server, Trust::InsecureDev).await.expect("insecure dev");
    within("accept", server.accepted.recv()).await.expect("accepted");
}

#[tokio::test]
async fn a_missing_ca_file_or_bad_url_is_a_clear_error() {
    let server = start(|c| c).await;
    let message = refusal(connect_with(&server, Trust::CaFile("/nonexistent/ca.pem".into())).await);
    assert!(message.contains("/nonexistent/ca.pem"), "{message}");
    let err = connect("ws://127.0.0.1:1/ws", &QuicClientConfig::new(Trust::InsecureDev)).await.err();
    assert!(matches!(err, Some(TransportError::Address(m)) if m.contains("quic://")));
}

#[tokio::test]
async fn nobody_listening_times_out_within_the_connect_timeout() {
    // A UDP port nobody reads: bind one and keep it silent.
    let silent = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("udp");
    let url = format!("quic://{}", silent.local_addr().expect("addr"));
    let config =
        QuicClientConfig { connect_timeout: Duration::from_millis(300), ..QuicClientConfig::new(Trust::InsecureDev) };
    let err = within("connect", connect(&url, &config)).await.err();
    assert!(matches!(&err, Some(TransportError::Io(e)) if e.kind() == std::io::ErrorKind::TimedOut), "{err:?}");
}

/// A bare quinn client (no statecast driver) to see what goes over the wire.
async fn raw_client(server: &Server, alpn: &[u8]) -> Result<quinn::Connection, quinn::ConnectionError> {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(&server.cert_path).expect("cert");
    use rustls::pki_types::pem::PemObject as _;
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert.expect("pem")).expect("root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![alpn.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("quic tls");
    let endpoint = quinn::Endpoint::client(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).expect("endpoint");
    let connecting =
        endpoint.connect_with(quinn::ClientConfig::new(Arc::new(crypto)), server.addr, "127.0.0.1").expect("connect");
    within("handshake", connecting).await
}

type RawStream = Framed<tokio::io::Join<quinn::RecvStream, quinn::SendStream>, LengthDelimitedCodec>;

/// Opens the stream the way the protocol says: 4-byte big-endian lengths.
async fn raw_stream(conn: &quinn::Connection) -> RawStream {
    let (send, recv) = conn.open_bi().await.expect("open_bi");
    let mut framed = Framed::new(tokio::io::join(recv, send), LengthDelimitedCodec::new());
    framed.send(Bytes::new()).await.expect("opening frame");
    framed
}

fn app_close(err: quinn::ConnectionError) -> (u64, String) {
    match err {
        quinn::ConnectionError::ApplicationClosed(close) => {
            (close.error_code.into_inner(), String::from_utf8_lossy(&close.reason).into_owned())
        }
        other => panic!("expected an application close, got {other}"),
    }
}

#[tokio::test]
async fn frames_are_length_prefixed_msgpack_and_binary() {
    let mut server = start(|c| c).await;
    let conn = raw_client(&server, ALPN).await.expect("handshake");
    let mut stream = raw_stream(&conn).await;
    let mut remote = within("accept", server.accepted.recv()).await.expect("accepted");
    stream.send(Bytes::from_static(b"\x81\xa4type\xa4ping")).await.expect("send");
    let Some(Incoming::Frame(frame)) = within("recv", remote.incoming.recv()).await else { panic!("no frame") };
    assert_eq!((frame.kind, &frame.data[..]), (FrameKind::Binary, &b"\x81\xa4type\xa4ping"[..]));
    // Empty frames carry no message and are skipped.
    stream.send(Bytes::new()).await.expect("empty");
    stream.send(Bytes::from_static(b"next")).await.expect("send");
    assert_eq!(within("recv", remote.incoming.recv()).await, Some(Incoming::Frame(Frame::binary(&b"next"[..]))));
    remote.outbox.send(Frame::binary(&b"down"[..])).await.expect("send down");
    let got = within("read", stream.next()).await.expect("a frame").expect("ok");
    assert_eq!(&got[..], b"down");
}

#[tokio::test]
async fn a_wrong_alpn_is_refused_by_the_server() {
    let server = start(|c| c).await;
    let err = raw_client(&server, b"h3").await.expect_err("no common protocol");
    assert!(err.to_string().contains("no_application_protocol") || err.to_string().contains("120"), "{err}");
}

#[tokio::test]
async fn closes_carry_the_core_close_code_as_the_application_code() {
    let mut server = start(|c| c).await;
    for (code, reason) in [
        (close_code::UNAUTHENTICATED, "TOKEN_EXPIRED"),
        (close_code::GOING_AWAY, "SERVER_DRAINING"),
        (close_code::NORMAL, ""),
    ] {
        let conn = raw_client(&server, ALPN).await.expect("handshake");
        let mut stream = raw_stream(&conn).await;
        let remote = within("accept", server.accepted.recv()).await.expect("accepted");
        remote.outbox.send(Frame::binary(&b"last words"[..])).await.expect("send");
        remote.outbox.close(code, reason);
        // What was queued before the close arrives first.
        let got = within("read", stream.next()).await.expect("a frame").expect("ok");
        assert_eq!(&got[..], b"last words");
        let err = within("closed", conn.closed()).await;
        assert_eq!(app_close(err), (u64::from(code), reason.to_owned()));
    }
}

#[tokio::test]
async fn a_slow_consumer_is_closed_at_once_with_4008() {
    // A small window: a burst of a megabyte into a peer that is busy could
    // overflow its UDP buffer on a loaded machine and take the one close
    // packet with it (a real client would then see a reset, later).
    let mut server = start(|c| QuicConfig { outbox_capacity: 4, stream_window: 64 * 1024, ..c }).await;
    let conn = raw_client(&server, ALPN).await.expect("handshake");
    let _stream = raw_stream(&conn).await; // never read
    let remote = within("accept", server.accepted.recv()).await.expect("accepted");
    let big = Frame::binary(vec![7u8; 16 * 1024]);
    let mut pushed = 0;
    loop {
        match remote.outbox.try_send(big.clone()) {
            Ok(()) => pushed += 1,
            Err(SendError::Full) => break,
            Err(SendError::Closed) => panic!("closed after {pushed}"),
        }
        assert!(pushed < 10_000, "never full");
        tokio::task::yield_now().await;
    }
    remote.outbox.abort(close_code::SLOW_CONSUMER, "SLOW_CONSUMER");
    let err = within("closed at once", conn.closed()).await;
    assert_eq!(app_close(err), (app_code::SLOW_CONSUMER.into_inner(), "SLOW_CONSUMER".to_owned()));
}

#[tokio::test]
async fn a_length_beyond_twice_the_limit_closes_with_1009() {
    let mut server = start(|c| QuicConfig { frame_limit: 1024, ..c }).await;
    let conn = raw_client(&server, ALPN).await.expect("handshake");
    let (mut send, _recv) = conn.open_bi().await.expect("open_bi");
    send.write_all(&[0, 0, 0, 0]).await.expect("opening frame");
    let _remote = within("accept", server.accepted.recv()).await.expect("accepted");
    // Only the length prefix: the server need not see the body to refuse it.
    send.write_all(&(2049u32).to_be_bytes()).await.expect("prefix");
    let err = within("closed", conn.closed()).await;
    let (code, reason) = app_close(err);
    assert_eq!(code, u64::from(close_code::TOO_BIG));
    assert!(reason.contains("2048"), "{reason}");
}

#[tokio::test]
async fn shutdown_sends_what_is_queued_then_closes_with_1001() {
    let mut server = start(|c| QuicConfig { close_timeout: Duration::from_secs(2), ..c }).await;
    let conn = raw_client(&server, ALPN).await.expect("handshake");
    let mut stream = raw_stream(&conn).await;
    let remote = within("accept", server.accepted.recv()).await.expect("accepted");
    // The engine queues its `goaway`, then the transport is told to stop.
    remote.outbox.send(Frame::binary(&b"goaway"[..])).await.expect("send");
    server.shutdown.cancel();
    let got = within("read", stream.next()).await.expect("a frame").expect("ok");
    assert_eq!(&got[..], b"goaway", "what was queued arrives before the close");
    let err = within("closed", conn.closed()).await;
    assert_eq!(app_close(err), (u64::from(close_code::GOING_AWAY), "SERVER_STOPPING".to_owned()));
    within("the engine's end is closed", remote.outbox.closed()).await;
    within("serve returns", &mut server.serving).await.expect("serve task");

    let config = QuicClientConfig {
        connect_timeout: Duration::from_millis(500),
        ..QuicClientConfig::new(Trust::Fingerprint(server.fingerprint.clone()))
    };
    assert!(connect(&server.url, &config).await.is_err(), "a new connection is refused after shutdown");
}
