//! Settings of the QUIC server and client, and the per-connection settings
//! both ends share.

use statecast_transport::{DEFAULT_OUTBOX_BYTES, OutboxLimits, TransportError};
use std::path::PathBuf;
use std::time::Duration;

/// The default frame limit (protocol v1: 1 MiB in both directions).
pub const DEFAULT_FRAME_LIMIT: usize = 1 << 20;

/// The largest frame limit: the length prefix is a `u32`, and the reader
/// accepts up to twice the limit.
pub const MAX_FRAME_LIMIT: usize = (u32::MAX / 2) as usize;

/// Where the server's certificate and private key come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerTls {
    /// A PEM certificate chain (leaf first) and a PEM private key (PKCS#8,
    /// PKCS#1 or SEC1).
    Files { cert: PathBuf, key: PathBuf },
    /// A self-signed certificate for local development, kept in `dir` as
    /// `quic-cert.pem` and `quic-key.pem`: generated at the first start,
    /// reused afterwards. Clients pin its fingerprint or trust the cert file.
    SelfSigned { dir: PathBuf },
}

/// Settings of the QUIC server.
#[derive(Clone, Debug)]
pub struct QuicConfig {
    /// The certificate the server presents.
    pub tls: ServerTls,
    /// Largest frame handed to the engine. Frames up to twice this size are
    /// read and reported as `Incoming::TooLarge`; a length prefix beyond that
    /// closes the connection with application code 1009.
    pub frame_limit: usize,
    /// Frames that may wait in a connection's outbox (slow-consumer bound).
    pub outbox_capacity: usize,
    /// Bytes that may wait in a connection's outbox (slow-consumer bound).
    /// Default 8 MiB.
    pub outbox_bytes: usize,
    /// Frames read from the stream that may wait for the engine; when full,
    /// reading stops (QUIC flow control holds the peer back).
    pub incoming_capacity: usize,
    /// How often to send QUIC keep-alive pings; `None` sends none.
    pub keep_alive_interval: Option<Duration>,
    /// A peer that sends nothing (not even an acknowledgement) for this long is dropped.
    pub idle_timeout: Duration,
    /// How long a graceful close may wait for the peer to acknowledge what was sent.
    pub close_timeout: Duration,
    /// How long a client may take to finish the handshake and open its stream.
    pub handshake_timeout: Duration,
    /// Initial size of each connection's read buffer.
    pub read_buffer_size: usize,
    /// Bytes one stream may have in flight in each direction (QUIC flow control window).
    pub stream_window: u32,
}

impl Default for QuicConfig {
    fn default() -> Self {
        Self {
            tls: ServerTls::SelfSigned { dir: PathBuf::from("statecast-data") },
            frame_limit: DEFAULT_FRAME_LIMIT,
            outbox_capacity: 1024,
            outbox_bytes: DEFAULT_OUTBOX_BYTES,
            incoming_capacity: 64,
            keep_alive_interval: Some(Duration::from_secs(20)),
            idle_timeout: Duration::from_secs(30),
            close_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(10),
            read_buffer_size: 8 * 1024,
            stream_window: 1 << 20,
        }
    }
}

impl QuicConfig {
    /// The default settings with the given certificate.
    pub fn with_tls(tls: ServerTls) -> Self {
        Self { tls, ..Self::default() }
    }

    pub(crate) fn validate(&self) -> Result<ConnSettings, TransportError> {
        if self.handshake_timeout.is_zero() {
            return Err(invalid("handshake_timeout must be positive"));
        }
        ConnSettings::new(Common {
            frame_limit: self.frame_limit,
            outbox: OutboxLimits { frames: self.outbox_capacity, bytes: self.outbox_bytes },
            incoming_capacity: self.incoming_capacity,
            keep_alive_interval: self.keep_alive_interval,
            idle_timeout: self.idle_timeout,
            close_timeout: self.close_timeout,
            read_buffer_size: self.read_buffer_size,
            stream_window: self.stream_window,
        })
    }
}

/// Which server certificates a client accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trust {
    /// Certificates issued by one of the CA certificates in this PEM file
    /// (a self-signed server certificate can be its own CA file), valid for
    /// the host name of the URL.
    CaFile(PathBuf),
    /// Exactly the certificate with this SHA-256 fingerprint (64 hex digits;
    /// colons and case are ignored). Names and dates are not checked; the
    /// server must still prove it holds the certificate's key.
    Fingerprint(String),
    /// Any certificate. For local demos only: anyone on the path can pose as
    /// the server.
    InsecureDev,
}

/// Settings of a client connection made by [`connect`](crate::connect).
#[derive(Clone, Debug)]
pub struct QuicClientConfig {
    /// Which server certificates to accept.
    pub trust: Trust,
    /// The name checked against the certificate (and sent as SNI); defaults
    /// to the URL's host.
    pub server_name: Option<String>,
    /// Largest frame handed to the caller (same rules as [`QuicConfig::frame_limit`]).
    pub frame_limit: usize,
    /// Frames that may wait in the outbox.
    pub outbox_capacity: usize,
    /// Bytes that may wait in the outbox.
    pub outbox_bytes: usize,
    /// Frames read from the stream that may wait for the caller.
    pub incoming_capacity: usize,
    /// How often to send QUIC keep-alive pings; `None` sends none.
    pub keep_alive_interval: Option<Duration>,
    /// A server that sends nothing for this long is dropped.
    pub idle_timeout: Duration,
    /// How long a graceful close may wait for the server to acknowledge what was sent.
    pub close_timeout: Duration,
    /// How long the QUIC handshake may take.
    pub connect_timeout: Duration,
    /// Initial size of the read buffer.
    pub read_buffer_size: usize,
    /// Bytes the stream may have in flight in each direction.
    pub stream_window: u32,
}

impl QuicClientConfig {
    /// The default settings with the given trust.
    pub fn new(trust: Trust) -> Self {
        Self {
            trust,
            server_name: None,
            frame_limit: DEFAULT_FRAME_LIMIT,
            outbox_capacity: 256,
            outbox_bytes: DEFAULT_OUTBOX_BYTES,
            incoming_capacity: 256,
            keep_alive_interval: Some(Duration::from_secs(20)),
            idle_timeout: Duration::from_secs(30),
            close_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(10),
            read_buffer_size: 8 * 1024,
            stream_window: 1 << 20,
        }
    }

    #[cfg(feature = "client")]
    pub(crate) fn validate(&self) -> Result<ConnSettings, TransportError> {
        if self.connect_timeout.is_zero() {
            return Err(invalid("connect_timeout must be positive"));
        }
        ConnSettings::new(Common {
            frame_limit: self.frame_limit,
            outbox: OutboxLimits { frames: self.outbox_capacity, bytes: self.outbox_bytes },
            incoming_capacity: self.incoming_capacity,
            keep_alive_interval: self.keep_alive_interval,
            idle_timeout: self.idle_timeout,
            close_timeout: self.close_timeout,
            read_buffer_size: self.read_buffer_size,
            stream_window: self.stream_window,
        })
    }
}

/// The settings both configs share, before they are checked.
struct Common {
    frame_limit: usize,
    outbox: OutboxLimits,
    incoming_capacity: usize,
    keep_alive_interval: Option<Duration>,
    idle_timeout: Duration,
    close_timeout: Duration,
    read_buffer_size: usize,
    stream_window: u32,
}

fn invalid(what: &str) -> TransportError {
    TransportError::Protocol(format!("invalid QUIC setting: {what}"))
}

/// What one connection's driver needs, checked once.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConnSettings {
    pub frame_limit: usize,
    pub outbox: OutboxLimits,
    pub incoming_capacity: usize,
    pub keep_alive_interval: Option<Duration>,
    pub idle_timeout: Duration,
    pub close_timeout: Duration,
    pub read_buffer_size: usize,
    pub stream_window: u32,
}

impl ConnSettings {
    fn new(c: Common) -> Result<Self, TransportError> {
        if c.frame_limit == 0 || c.frame_limit > MAX_FRAME_LIMIT {
            return Err(invalid(&format!("frame_limit must be within 1..={MAX_FRAME_LIMIT}")));
        }
        if c.keep_alive_interval.is_some_and(|k| k.is_zero()) {
            return Err(invalid("keep_alive_interval must be positive"));
        }
        if c.idle_timeout.is_zero() {
            return Err(invalid("idle_timeout must be positive"));
        }
        if c.keep_alive_interval.is_some_and(|k| k >= c.idle_timeout) {
            return Err(invalid("keep_alive_interval must be shorter than idle_timeout"));
        }
        if c.stream_window < 1024 {
            return Err(invalid("stream_window must be at least 1024 bytes"));
        }
        Ok(Self {
            frame_limit: c.frame_limit,
            outbox: OutboxLimits { frames: c.outbox.frames.max(1), bytes: c.outbox.bytes.max(1) },
            incoming_capacity: c.incoming_capacity.max(1),
            keep_alive_interval: c.keep_alive_interval,
            idle_timeout: c.idle_timeout,
            close_timeout: c.close_timeout,
            read_buffer_size: c.read_buffer_size.max(1024),
            stream_window: c.stream_window,
        })
    }

    /// What the reader accepts: twice the frame limit, so frames just over
    /// the limit can be reported instead of killing the connection.
    pub fn wire_limit(&self) -> usize {
        self.frame_limit.saturating_mul(2)
    }

    /// QUIC transport parameters for one connection of this transport.
    pub fn transport_config(&self) -> Result<quinn::TransportConfig, TransportError> {
        let idle = quinn::IdleTimeout::try_from(self.idle_timeout).map_err(|_| invalid("idle_timeout is too long"))?;
        let mut transport = quinn::TransportConfig::default();
        transport
            .max_idle_timeout(Some(idle))
            .keep_alive_interval(self.keep_alive_interval)
            // One bidirectional stream per connection, opened by the client.
            .max_concurrent_bidi_streams(1u32.into())
            .max_concurrent_uni_streams(0u32.into())
            .stream_receive_window(self.stream_window.into())
            .receive_window(self.stream_window.into())
            .send_window(u64::from(self.stream_window));
        Ok(transport)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        assert!(QuicConfig::default().validate().is_ok());
        assert!(QuicClientConfig::new(Trust::InsecureDev).validate().is_ok());
        let bad = [
            QuicConfig { frame_limit: 0, ..QuicConfig::default() },
            QuicConfig { idle_timeout: Duration::ZERO, ..QuicConfig::default() },
            QuicConfig { keep_alive_interval: Some(Duration::from_secs(90)), ..QuicConfig::default() },
            QuicConfig { handshake_timeout: Duration::ZERO, ..QuicConfig::default() },
            QuicConfig { stream_window: 10, ..QuicConfig::default() },
        ];
        for config in bad {
            let err = config.validate().expect_err("must be refused").to_string();
            assert!(err.starts_with("invalid QUIC setting"), "{err}");
        }
    }

    #[test]
    fn the_wire_limit_is_twice_the_frame_limit() {
        let settings = QuicConfig { frame_limit: 1000, ..QuicConfig::default() }.validate().expect("valid");
        assert_eq!(settings.wire_limit(), 2000);
    }
}
