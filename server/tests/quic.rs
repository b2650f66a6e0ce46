//! End to end over QUIC with the real binary: a QUIC client and a WebSocket
//! client share one context; clients that don't trust the certificate are
//! refused with a clear error; the self-signed certificate is kept.

mod common;

use common::*;
use serde_json::{Value, json};
use statecast_core::protocol::Codec;
use statecast_core::protocol::v1::ServerMessage;
use statecast_core::transport::{Connection, Incoming, TransportError};
use statecast_transport_quic::{DEV_CERT_FILE, QuicClientConfig, Trust, connect, ensure_self_signed};

/// A protocol v1 client over QUIC: MessagePack frames via core's codec.
struct QuicClient {
    conn: Connection,
    next_write_id: i64,
}

impl QuicClient {
    async fn connect(server: &TestServer, trust: Trust) -> Result<Self, TransportError> {
        let url = server.quic_url.clone().expect("the server serves QUIC");
        let conn = tokio::time::timeout(RECV_TIMEOUT, connect(&url, &QuicClientConfig::new(trust)))
            .await
            .unwrap_or_else(|_| panic!("connecting to {url} timed out"))?;
        Ok(Self { conn, next_write_id: 1 })
    }

    /// Connects pinning the fingerprint the server printed.
    async fn pinned(server: &TestServer) -> Self {
        Self::connect(server, Trust::Fingerprint(server.quic_fingerprint())).await.expect("a pinned connection")
    }

    async fn send(&mut self, msg: Value) {
        let frame = Codec::MsgPack.encode(&msg).expect("encode MessagePack");
        self.conn.outbox.send(frame).await.expect("send a frame");
    }

    async fn recv(&mut self) -> Value {
        match tokio::time::timeout(RECV_TIMEOUT, self.conn.incoming.recv()).await {
            Ok(Some(Incoming::Frame(frame))) => Codec::MsgPack.parse(&frame).expect("the server sends MessagePack"),
            Ok(Some(Incoming::TooLarge { size, limit })) => panic!("a {size}-byte frame over the {limit} limit"),
            Ok(None) => panic!("the QUIC connection closed while a message was expected"),
            Err(_) => panic!("no message within {RECV_TIMEOUT:?}"),
        }
    }

    async fn recv_type(&mut self, ty: &str) -> Value {
        loop {
            let msg = self.recv().await;
            if msg["type"] == ty {
                return msg;
            }
            assert_ne!(msg["type"], "error", "waiting for `{ty}`: {msg}");
        }
    }

    async fn hello(&mut self, token: &str) -> Value {
        self.send(json!({"type": "hello", "protocol": 1, "token": token, "clientId": format!("quic-{token}")})).await;
        let frame = match tokio::time::timeout(RECV_TIMEOUT, self.conn.incoming.recv()).await {
            Ok(Some(Incoming::Frame(frame))) => frame,
            other => panic!("no welcome: {other:?}"),
        };
        // The welcome decodes as a protocol v1 message, in MessagePack.
        let typed = Codec::MsgPack.decode_server(&frame).expect("a v1 message");
        assert!(matches!(typed, Some(ServerMessage::Welcome { .. })), "not a welcome: {typed:?}");
        Codec::MsgPack.parse(&frame).expect("parse")
    }

    async fn subscribe(&mut self, channel: &str, anchor: i64) -> Value {
        self.send(json!({"type": "subscribe", "channel": channel, "anchorId": anchor})).await;
        let state = self.recv().await;
        assert_eq!(state["type"], "state", "{state}");
        state
    }

    /// Sends a write and reads up to its `writeResponse`.
    async fn write(&mut self, mut msg: Value) -> Value {
        let write_id = self.next_write_id;
        self.next_write_id += 1;
        msg["writeId"] = json!(write_id);
        self.send(msg).await;
        loop {
            let m = self.recv().await;
            if m["type"] == "writeResponse" && m["writeId"] == write_id {
                return m;
            }
        }
    }
}

fn refusal(result: Result<QuicClient, TransportError>) -> String {
    match result {
        Ok(_) => panic!("an untrusted certificate was accepted"),
        Err(TransportError::Protocol(message)) => message,
        Err(other) => panic!("expected a clear refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn a_quic_client_and_a_websocket_client_see_each_others_writes() {
    let server = TestServer::start();
    let (mut bob, ws_state) = server.subscribed("bob", 1).await;

    let mut alice = QuicClient::pinned(&server).await;
    let welcome = alice.hello("alice").await;
    assert_eq!(welcome["user"]["id"], 1, "{welcome}");
    let quic_state = alice.subscribe("job", 1).await;
    assert_eq!(rows(&quic_state), rows(&ws_state), "one store, one context");

    // QUIC → WebSocket: alice (task 1's assignee) changes its status.
    let response = alice.write(save("job/1", "Task", 1, json!({"status": "doing"}))).await;
    assert_eq!(response["success"], true, "{response}");
    let delta = bob.recv_type("delta").await;
    assert_eq!(delta["seq"], response["seq"]);
    let change = &changes(&delta)[0];
    assert_eq!((change["_type"].clone(), change["id"].clone()), (json!("Task"), json!(1)));
    assert_eq!(change["status"], "doing");
    assert!(delta.get("writeId").is_none(), "only the writer's copy carries the writeId");

    // WebSocket → QUIC: bob (task 2's assignee) changes task 2.
    let w = bob.write(save("job/1", "Task", 2, json!({"status": "done", "notes": "over ws"}))).await;
    let seq = w.ok()["seq"].clone();
    let delta = alice.recv_type("delta").await;
    assert_eq!(delta["seq"], seq);
    let change = &changes(&delta)[0];
    assert_eq!(
        (change["id"].clone(), change["status"].clone(), change["notes"].clone()),
        (json!(2), json!("done"), json!("over ws"))
    );

    // A create over QUIC joins the context for the WebSocket client.
    let response = alice.write(create_task(1, None, json!({"name": "Made over QUIC"}))).await;
    assert_eq!(response["success"], true, "{response}");
    let id = response["instanceId"].as_i64().expect("instanceId");
    let delta = bob.recv_type("delta").await;
    let change = &changes(&delta)[0];
    assert_eq!((change["op"].clone(), change["id"].clone()), (json!("create"), json!(id)));
    assert_eq!(change["name"], "Made over QUIC");
    assert_eq!(change["created_by"], 1);
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_certificate_is_refused() {
    let server = TestServer::start();
    let printed = server.quic_fingerprint();

    let wrong = "ab".repeat(32);
    let message = refusal(QuicClient::connect(&server, Trust::Fingerprint(wrong.clone())).await);
    assert!(message.contains("fingerprint mismatch"), "{message}");
    assert!(message.contains(&wrong) && message.contains(&printed), "names both fingerprints: {message}");

    // A CA file that did not issue the server's certificate.
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let other_ca = ensure_self_signed(elsewhere.path()).expect("another certificate").cert_path;
    let message = refusal(QuicClient::connect(&server, Trust::CaFile(other_ca)).await);
    assert!(message.contains("unknown issuer"), "{message}");

    // The server's own certificate file is a CA file that works.
    let own = server.cert_dir().join(DEV_CERT_FILE);
    let mut client = QuicClient::connect(&server, Trust::CaFile(own)).await.expect("trusted by its own file");
    client.hello("dave").await;
}

#[tokio::test]
async fn the_self_signed_certificate_is_kept_in_the_data_dir_across_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = TestServer::start_with(dir.path());
    let first = server.quic_fingerprint();
    assert_eq!(first.len(), 64, "{first}");
    assert!(server.stderr().contains("generated now"), "{}", server.stderr());
    let cert = server.cert_dir().join(DEV_CERT_FILE);
    assert!(server.stderr().contains(&cert.display().to_string()), "prints the certificate's path");
    let on_disk = ensure_self_signed(&server.cert_dir()).expect("the files are there");
    assert!(!on_disk.generated);
    assert_eq!(on_disk.fingerprint, first, "the printed fingerprint is the file's");

    server.restart();
    assert_eq!(server.quic_fingerprint(), first, "the same certificate after a restart");
    let mut alice = QuicClient::pinned(&server).await;
    alice.hello("alice").await;
}

#[tokio::test]
async fn certificate_files_from_the_flags_are_served() {
    let certs = tempfile::tempdir().expect("tempdir");
    let info = ensure_self_signed(certs.path()).expect("a certificate");
    let (cert, key) = (info.cert_path.display().to_string(), info.key_path.display().to_string());
    let server = TestServer::start_args(&["--quic-cert", &cert, "--quic-key", &key]);
    assert_eq!(server.quic_fingerprint(), info.fingerprint);
    assert!(!server.cert_dir().join(DEV_CERT_FILE).exists(), "no self-signed certificate is made");
    let mut bob = QuicClient::connect(&server, Trust::CaFile(info.cert_path.clone())).await.expect("trusted");
    bob.hello("bob").await;
}

#[tokio::test]
async fn quic_can_be_turned_off() {
    let server = TestServer::start_args(&["--quic-addr", "off"]);
    assert_eq!(server.quic_url, None);
    assert!(!server.stderr().contains("quic fingerprint"));
    let (mut alice, _) = server.subscribed("alice", 1).await;
    alice.ping().await;
}

// Multi-threaded: `terminate` blocks its thread, and the QUIC client must
// keep acknowledging meanwhile (unlike TCP, QUIC lives in the runtime).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_sends_goaway_over_quic_and_closes_the_connection() {
    let mut server = TestServer::start();
    let mut alice = QuicClient::pinned(&server).await;
    alice.hello("alice").await;
    alice.subscribe("job", 1).await;
    let status = server.terminate(std::time::Duration::from_secs(15)).expect("the server exits after SIGTERM");
    assert!(status.success(), "{status:?}\n{}", server.stderr());
    let mut got_goaway = false;
    loop {
        match tokio::time::timeout(RECV_TIMEOUT, alice.conn.incoming.recv()).await {
            Ok(Some(Incoming::Frame(frame))) => {
                let msg = Codec::MsgPack.parse(&frame).expect("MessagePack");
                got_goaway |= msg["type"] == "goaway";
            }
            Ok(Some(other)) => panic!("unexpected {other:?}"),
            Ok(None) => break,
            // The server closes its QUIC connections itself: without that the
            // client would only notice at its 60 s idle timeout, long after this.
            Err(_) => panic!("the QUIC connection did not end after the server stopped\n{}", server.stderr()),
        }
    }
    assert!(got_goaway, "the QUIC client is told to go away before the close");
}
