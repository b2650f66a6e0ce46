//! The QUIC framing: 4-byte big-endian length-prefixed frames read off the
//! one stream, classified as the reader does (empty frames skipped, frames
//! over the limit reported, a length beyond twice the limit ends the
//! connection), each frame then decoded as MessagePack.

use crate::Bytes as Input;
use statecast_core::protocol::Codec;
use statecast_core::transport::Incoming;
use statecast_transport_quic::{FramesEnd, QuicConfig, decode_frames};

/// The input's first byte picks the frame limit (1..=256 bytes), the second
/// how the rest arrives in chunks; the rest is the stream.
pub fn quic_framing(data: &[u8]) {
    let mut head = Input::new(data);
    let limit = usize::from(head.byte()) + 1;
    let chunk_seed = head.byte();
    let stream = data.get(2..).unwrap_or_default();
    let chunks = split(stream, chunk_seed);
    let config = QuicConfig { frame_limit: limit, ..QuicConfig::default() };
    let (got, end) = decode_frames(&config, &chunks).expect("a valid configuration");
    let (want, want_end) = model(stream, limit);
    assert_eq!(end, want_end, "how the stream ended");
    assert_eq!(got, want, "the frames read");
    // However the bytes are cut, the same frames come out.
    let (whole, whole_end) = decode_frames(&config, &[stream]).expect("a valid configuration");
    assert_eq!((whole, whole_end), (got.clone(), end));
    for item in got {
        if let Incoming::Frame(frame) = item {
            crate::codec::decode(Codec::MsgPack, &frame.data);
        }
    }
}

/// Cuts the stream into chunks of 1..=16 bytes (seed 0: one chunk).
fn split(stream: &[u8], seed: u8) -> Vec<&[u8]> {
    if seed == 0 {
        return vec![stream];
    }
    let mut out = Vec::new();
    let mut rest = stream;
    let mut n = usize::from(seed);
    while !rest.is_empty() {
        let size = (n % 16 + 1).min(rest.len());
        let (chunk, tail) = rest.split_at(size);
        out.push(chunk);
        rest = tail;
        n = n.wrapping_mul(31).wrapping_add(7);
    }
    out
}

/// The framing as the design states it, written plainly.
fn model(mut stream: &[u8], limit: usize) -> (Vec<Incoming>, FramesEnd) {
    let mut out = Vec::new();
    loop {
        if stream.is_empty() {
            return (out, FramesEnd::Finished);
        }
        let Some((len, rest)) = stream.split_first_chunk::<4>() else {
            return (out, FramesEnd::Truncated);
        };
        let len = u32::from_be_bytes(*len) as usize;
        if len > limit * 2 {
            return (out, FramesEnd::TooLarge);
        }
        if rest.is_empty() && len > 0 {
            // tokio-util's codec has taken the length prefix off the buffer: a stream that
            // ends right after one ends cleanly (the announced frame is dropped).
            return (out, FramesEnd::Finished);
        }
        if rest.len() < len {
            return (out, FramesEnd::Truncated);
        }
        let (body, rest) = rest.split_at(len);
        if len > limit {
            out.push(Incoming::TooLarge { size: len, limit });
        } else if len > 0 {
            out.push(Incoming::Frame(statecast_core::transport::Frame::binary(body.to_vec())));
        }
        stream = rest;
    }
}
