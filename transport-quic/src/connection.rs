//! The per-connection driver both ends share: a reader task that turns
//! length-prefixed frames of the one bidirectional stream into `Incoming`,
//! and a writer loop that drains the outbox and closes the connection.
//!
//! Frames are a 4-byte big-endian length and that many bytes
//! (tokio-util's `LengthDelimitedCodec`). A zero-length frame carries no
//! message and is skipped: the client sends one first, because a QUIC stream
//! is announced to the peer only by data.
//!
//! Closing maps the core close codes one to one onto QUIC application error
//! codes (see [`app_code`]); the reason travels as the close's reason phrase.

use bytes::{Bytes, BytesMut};
use futures_util::{FutureExt, SinkExt, StreamExt};
use quinn::{RecvStream, SendStream};
use statecast_transport::{
    CloseReason, Connection, ConnectionInfo, Frame, FrameKind, Incoming, OutboxReceiver, Outgoing, close_code,
    outbox_with,
};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec, LengthDelimitedCodecError};
use tokio_util::sync::CancellationToken;

use crate::config::ConnSettings;

/// The most frames the writer queues before one flush.
const WRITE_BATCH: usize = 256;

/// QUIC application error codes: the core close codes (WebSocket numbering),
/// carried unchanged as the CONNECTION_CLOSE error code.
///
/// | code | meaning |
/// |---|---|
/// | 1000 `NORMAL` | a normal close (either side) |
/// | 1001 `GOING_AWAY` | the server is draining (`SERVER_DRAINING`) |
/// | 1008 `POLICY` | unsupported protocol |
/// | 1009 `TOO_BIG` | a length prefix beyond twice the frame limit |
/// | 4001 `UNAUTHENTICATED` | bad or expired token |
/// | 4008 `SLOW_CONSUMER` | the outgoing queue was full: aborted, closed at once, queued frames dropped |
///
/// Errors below 0x100 that the QUIC stack itself raises (handshake, flow
/// control) arrive as transport errors, not as application codes.
pub mod app_code {
    use quinn::VarInt;
    use statecast_transport::close_code;

    pub const NORMAL: VarInt = VarInt::from_u32(close_code::NORMAL as u32);
    pub const GOING_AWAY: VarInt = VarInt::from_u32(close_code::GOING_AWAY as u32);
    pub const POLICY: VarInt = VarInt::from_u32(close_code::POLICY as u32);
    pub const TOO_BIG: VarInt = VarInt::from_u32(close_code::TOO_BIG as u32);
    pub const UNAUTHENTICATED: VarInt = VarInt::from_u32(close_code::UNAUTHENTICATED as u32);
    pub const SLOW_CONSUMER: VarInt = VarInt::from_u32(close_code::SLOW_CONSUMER as u32);

    /// The QUIC application error code for a core close code.
    pub fn from_close_code(code: u16) -> VarInt {
        VarInt::from_u32(u32::from(code))
    }

    /// The core close code for a QUIC application error code, if it is one.
    pub fn to_close_code(code: VarInt) -> Option<u16> {
        u16::try_from(code.into_inner()).ok()
    }
}

/// The longest close reason sent (as for WebSocket close frames).
const MAX_REASON: usize = 123;

/// The reader's framing: frames up to `wire_limit` bytes.
pub(crate) fn framed_read(recv: RecvStream, settings: &ConnSettings) -> FramedRead<RecvStream, LengthDelimitedCodec> {
    FramedRead::with_capacity(recv, read_codec(settings), settings.read_buffer_size)
}

fn read_codec(settings: &ConnSettings) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_type::<u32>()
        .big_endian()
        .max_frame_length(settings.wire_limit())
        .new_codec()
}

/// The writer's framing. It does not police sizes (the peer's reader does),
/// so it takes anything a `u32` length can describe.
pub(crate) fn framed_write(send: SendStream) -> FramedWrite<SendStream, LengthDelimitedCodec> {
    let codec = LengthDelimitedCodec::builder()
        .length_field_type::<u32>()
        .big_endian()
        .max_frame_length(u32::MAX as usize)
        .new_codec();
    FramedWrite::new(send, codec)
}

type Reader = FramedRead<RecvStream, LengthDelimitedCodec>;
type Writer = FramedWrite<SendStream, LengthDelimitedCodec>;

/// Builds the [`Connection`] for an established stream and the future that
/// drives it. The future ends when the connection is closed and must be run
/// (spawned) by the caller. Once `stopping` is cancelled (the server shuts
/// down), the frames already queued are sent and the connection is closed
/// with 1001: a QUIC peer, unlike a TCP one, does not notice a process that
/// exits.
pub(crate) fn open(
    conn: quinn::Connection,
    writer: Writer,
    reader: Reader,
    info: ConnectionInfo,
    settings: ConnSettings,
    stopping: CancellationToken,
) -> (Connection, impl Future<Output = ()> + Send + 'static) {
    let (outbox, outbox_rx) = outbox_with(settings.outbox);
    let (incoming_tx, incoming) = mpsc::channel(settings.incoming_capacity);
    let connection = Connection { info: info.clone(), incoming, outbox };
    let io = Io { conn, writer, reader, incoming: incoming_tx, outbox_rx };
    (connection, drive(io, info, settings, stopping))
}

/// What one connection's driver owns.
struct Io {
    conn: quinn::Connection,
    writer: Writer,
    reader: Reader,
    incoming: mpsc::Sender<Incoming>,
    outbox_rx: OutboxReceiver,
}

/// The reason a stopping server gives.
const SERVER_STOPPING: &str = "SERVER_STOPPING";

/// How the reader ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadEnd {
    /// The peer finished its stream: it is closing.
    Finished,
    /// The connection is gone (closed by either side, timed out, reset).
    Gone,
    /// A length prefix beyond twice the frame limit: the stream can't go on.
    TooLarge,
}

/// How the writer loop ended.
enum WriteEnd {
    Reader(ReadEnd),
    Close(CloseReason),
    Failed,
}

async fn drive(io: Io, info: ConnectionInfo, settings: ConnSettings, stopping: CancellationToken) {
    let Io { conn, mut writer, reader, incoming, mut outbox_rx } = io;
    let mut reader = tokio::spawn(read_loop(reader, incoming, settings.frame_limit));
    let end = write_loop(&mut writer, &mut outbox_rx, &mut reader, &settings, &stopping).await;
    // A finished JoinHandle must not be polled again.
    let reader_done = matches!(end, WriteEnd::Reader(_));
    let aborted = outbox_rx.is_aborted();
    // From here on nothing more is written: senders see a closed outbox.
    outbox_rx.mark_closed();
    drop(outbox_rx);
    match end {
        WriteEnd::Reader(ReadEnd::TooLarge) => {
            let limit = settings.wire_limit();
            tracing::debug!(peer = %info.peer, limit, "closing: frame beyond the hard limit");
            close(&conn, close_code::TOO_BIG, &format!("frame larger than {limit} bytes"));
        }
        WriteEnd::Reader(ReadEnd::Finished) => close(&conn, close_code::NORMAL, ""),
        WriteEnd::Reader(ReadEnd::Gone) | WriteEnd::Failed => close(&conn, close_code::NORMAL, ""),
        WriteEnd::Close(reason) if aborted => {
            // An abort (the engine's 4008 SLOW_CONSUMER): the peer is not
            // reading, so what is queued would never drain.
            close(&conn, reason.code, &reason.reason);
        }
        WriteEnd::Close(reason) => {
            // Everything written reaches the peer before the close: finish
            // the stream and wait until the peer acknowledged all of it.
            let send = writer.get_mut();
            if send.finish().is_ok() && timeout(settings.close_timeout, send.stopped()).await.is_err() {
                tracing::debug!(peer = %info.peer, "the peer did not acknowledge the last frames in time");
            }
            close(&conn, reason.code, &reason.reason);
        }
    }
    // The reader ends once the connection is closed and what arrived before
    // was handed over; it may wait for room in the incoming queue meanwhile.
    if !reader_done && timeout(settings.close_timeout, &mut reader).await.is_err() {
        reader.abort();
    }
    tracing::debug!(peer = %info.peer, transport = info.transport, "connection ended");
}

/// Closes the connection with a core close code (a no-op once it is closed).
fn close(conn: &quinn::Connection, code: u16, reason: &str) {
    conn.close(app_code::from_close_code(code), reason_bytes(reason));
}

fn reason_bytes(reason: &str) -> &[u8] {
    let mut end = reason.len().min(MAX_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason.as_bytes()[..end]
}

async fn write_loop(
    writer: &mut Writer,
    outbox_rx: &mut OutboxReceiver,
    reader: &mut JoinHandle<ReadEnd>,
    settings: &ConnSettings,
    stopping: &CancellationToken,
) -> WriteEnd {
    // A write that can't finish within the idle timeout means the peer stopped reading.
    let write_timeout = settings.idle_timeout;
    let mut warned_text = false;
    // Reused for every batch of ready frames.
    let mut batch: Vec<Bytes> = Vec::new();
    loop {
        let out = if stopping.is_cancelled() {
            // Send what is queued, then close.
            match outbox_rx.next().now_or_never() {
                Some(out) => out,
                None => {
                    return WriteEnd::Close(CloseReason {
                        code: close_code::GOING_AWAY,
                        reason: SERVER_STOPPING.to_owned(),
                    });
                }
            }
        } else {
            tokio::select! {
                biased;
                end = &mut *reader => return WriteEnd::Reader(end.unwrap_or(ReadEnd::Gone)),
                () = stopping.cancelled() => continue,
                out = outbox_rx.next() => out,
            }
        };
        match out {
            Some(Outgoing::Frame(frame)) => {
                if frame.len() > settings.frame_limit {
                    tracing::warn!(
                        size = frame.len(),
                        limit = settings.frame_limit,
                        "sending a frame over the frame limit"
                    );
                }
                if frame.kind == FrameKind::Text && !warned_text {
                    warned_text = true;
                    tracing::warn!(
                        "QUIC carries MessagePack only: a text frame is sent as bytes and the peer sees it as binary"
                    );
                }
                // Every frame ready now goes out with this one, flushed once.
                batch.push(frame.data);
                for _ in 1..WRITE_BATCH {
                    let Some(more) = outbox_rx.try_next_frame() else { break };
                    batch.push(more.data);
                }
                match write_frames(writer, outbox_rx, &mut batch, write_timeout, settings.close_timeout).await {
                    Written::Done => {}
                    Written::Failed => return WriteEnd::Failed,
                    Written::Aborted => {
                        let reason = match outbox_rx.next().await {
                            Some(Outgoing::Close(reason)) => reason,
                            _ => CloseReason { code: close_code::SLOW_CONSUMER, reason: "SLOW_CONSUMER".into() },
                        };
                        return WriteEnd::Close(reason);
                    }
                }
            }
            Some(Outgoing::Close(reason)) => return WriteEnd::Close(reason),
            // Every outbox handle is gone: the owner left without a word.
            None => return WriteEnd::Close(CloseReason { code: close_code::NORMAL, reason: String::new() }),
        }
    }
}

/// How one write ended.
enum Written {
    Done,
    Failed,
    /// The owner aborted the connection while the write waited for the peer.
    Aborted,
}

/// Writes a batch of frames with one flush. A write blocked by flow control
/// (the peer reads slowly) gives way to an abort at once; after a plain close
/// it may go on for the close timeout.
async fn write_frames(
    writer: &mut Writer,
    outbox_rx: &OutboxReceiver,
    batch: &mut Vec<Bytes>,
    limit: Duration,
    close_timeout: Duration,
) -> Written {
    let write = send_within(writer, batch, limit);
    tokio::pin!(write);
    let mut close_deadline = None;
    loop {
        let closing = async {
            match close_deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            ok = &mut write => return if ok { Written::Done } else { Written::Failed },
            () = outbox_rx.close_requested(), if close_deadline.is_none() => {
                if outbox_rx.is_aborted() {
                    return Written::Aborted;
                }
                close_deadline = Some(tokio::time::Instant::now() + close_timeout);
            }
            () = closing => {
                tracing::debug!("closing: the peer did not take the last frames within the close timeout");
                return Written::Failed;
            }
        }
    }
}

/// Queues every frame of a batch and flushes once; false when it failed or
/// the whole batch took longer than `limit`.
async fn send_within(writer: &mut Writer, batch: &mut Vec<Bytes>, limit: Duration) -> bool {
    let send = async {
        for data in batch.drain(..) {
            writer.feed(data).await?;
        }
        SinkExt::<Bytes>::flush(writer).await
    };
    match timeout(limit, send).await {
        Ok(Ok(())) => true,
        Ok(Err(err)) => {
            tracing::debug!(error = %err, "QUIC write failed");
            false
        }
        Err(_) => {
            tracing::debug!("QUIC write timed out: the peer stopped reading");
            false
        }
    }
}

async fn read_loop(mut reader: Reader, incoming: mpsc::Sender<Incoming>, limit: usize) -> ReadEnd {
    // `None` once the owner dropped its receiver: frames are then discarded,
    // but reading goes on so the end of the connection is still seen.
    let mut incoming = Some(incoming);
    loop {
        let data = match reader.next().await {
            None => return ReadEnd::Finished,
            Some(Ok(data)) => data,
            Some(Err(err)) if is_too_large(&err) => return ReadEnd::TooLarge,
            Some(Err(err)) => {
                log_read_end(&err);
                return ReadEnd::Gone;
            }
        };
        let (Some(item), Some(tx)) = (incoming_item(data, limit), incoming.as_ref()) else {
            continue;
        };
        if tx.send(item).await.is_err() {
            incoming = None;
        }
    }
}

/// What one frame read becomes: nothing (a zero-length frame), the frame, or
/// a report of a frame over the limit.
fn incoming_item(data: BytesMut, limit: usize) -> Option<Incoming> {
    if data.is_empty() {
        None
    } else if data.len() > limit {
        Some(Incoming::TooLarge { size: data.len(), limit })
    } else {
        Some(Incoming::Frame(Frame::binary(data.freeze())))
    }
}

/// How the reader's framing ended in [`decode_frames`].
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FramesEnd {
    /// The bytes ended on a frame boundary.
    Finished,
    /// The bytes ended inside a frame.
    Truncated,
    /// A length prefix beyond twice the frame limit (the connection closes with 1009).
    TooLarge,
}

/// The reader's framing and frame classification over bytes that arrive in
/// `chunks`, then the end of the stream: what a connection hands the engine.
/// For fuzzing and tests; not an API.
#[doc(hidden)]
pub fn decode_frames(
    config: &crate::QuicConfig,
    chunks: &[&[u8]],
) -> Result<(Vec<Incoming>, FramesEnd), statecast_transport::TransportError> {
    use tokio_util::codec::Decoder;
    let settings = config.validate()?;
    let mut codec = read_codec(&settings);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut push = |data| out.extend(incoming_item(data, settings.frame_limit));
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(data)) => push(data),
                Ok(None) => break,
                Err(err) if is_too_large(&err) => return Ok((out, FramesEnd::TooLarge)),
                Err(err) => unreachable!("the length codec fails only on a long frame: {err}"),
            }
        }
    }
    match codec.decode_eof(&mut buf) {
        Ok(Some(data)) => unreachable!("a whole frame was left undecoded ({} bytes)", data.len()),
        Ok(None) => Ok((out, FramesEnd::Finished)),
        Err(err) if is_too_large(&err) => Ok((out, FramesEnd::TooLarge)),
        Err(_) => Ok((out, FramesEnd::Truncated)),
    }
}

fn is_too_large(err: &std::io::Error) -> bool {
    err.get_ref().is_some_and(|inner| inner.is::<LengthDelimitedCodecError>())
}

fn log_read_end(err: &std::io::Error) {
    let lost = err.get_ref().and_then(|inner| inner.downcast_ref::<quinn::ReadError>());
    match lost {
        Some(quinn::ReadError::ConnectionLost(quinn::ConnectionError::ApplicationClosed(close))) => {
            let reason = String::from_utf8_lossy(&close.reason);
            tracing::debug!(code = %close.error_code, %reason, "the peer closed the connection");
        }
        Some(quinn::ReadError::ConnectionLost(quinn::ConnectionError::LocallyClosed)) => {}
        _ => tracing::debug!(error = %err, "QUIC read ended"),
    }
}

#[cfg(feature = "client")]
/// The close code and reason of a connection error, when the peer closed it.
pub(crate) fn peer_close(err: &quinn::ConnectionError) -> Option<(u16, String)> {
    match err {
        quinn::ConnectionError::ApplicationClosed(close) => {
            let code = app_code::to_close_code(close.error_code)?;
            Some((code, String::from_utf8_lossy(&close.reason).into_owned()))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quinn::VarInt;

    #[test]
    fn close_codes_map_one_to_one() {
        for code in [
            close_code::NORMAL,
            close_code::GOING_AWAY,
            close_code::POLICY,
            close_code::TOO_BIG,
            close_code::UNAUTHENTICATED,
            close_code::SLOW_CONSUMER,
        ] {
            assert_eq!(app_code::to_close_code(app_code::from_close_code(code)), Some(code));
        }
        assert_eq!(app_code::SLOW_CONSUMER.into_inner(), 4008);
        assert_eq!(app_code::to_close_code(VarInt::from_u32(70_000)), None);
    }

    #[test]
    fn reasons_are_cut_at_a_char_boundary() {
        let long = "é".repeat(100);
        let cut = reason_bytes(&long);
        assert!(cut.len() <= MAX_REASON);
        assert!(std::str::from_utf8(cut).is_ok());
        assert_eq!(reason_bytes("SLOW_CONSUMER"), b"SLOW_CONSUMER");
    }
}
