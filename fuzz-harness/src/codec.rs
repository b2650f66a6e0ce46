//! The frame decoders: JSON text frames and MessagePack binary frames, as a
//! client's frame reaches the server (`decode_client`) and a server's frame
//! reaches a client (`decode_server`).

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use statecast_core::protocol::Codec;
use statecast_core::protocol::v1::ClientMessage;
use statecast_core::transport::{Frame, FrameKind};
use std::fmt::Debug;

/// A JSON text frame through both decoders.
pub fn json_decode(data: &[u8]) {
    decode(Codec::Json, data);
}

/// A MessagePack binary frame through both decoders.
pub fn msgpack_decode(data: &[u8]) {
    decode(Codec::MsgPack, data);
}

fn frame(codec: Codec, data: &[u8]) -> Frame {
    let kind = match codec {
        Codec::Json => FrameKind::Text,
        Codec::MsgPack => FrameKind::Binary,
    };
    Frame { kind, data: Bytes::copy_from_slice(data) }
}

/// Either a typed error or a message that survives a round trip.
pub(crate) fn decode(codec: Codec, data: &[u8]) {
    let f = frame(codec, data);
    let other = match codec {
        Codec::Json => Codec::MsgPack,
        Codec::MsgPack => Codec::Json,
    };
    // The other codec's frame kind is refused before anything is read.
    let wrong = frame(other, data);
    assert!(codec.decode_client(&wrong).is_err() && codec.decode_server(&wrong).is_err());
    let mut decoded = false;
    if let Ok(msg) = codec.decode_client(&f) {
        round_trip(&msg, |c, fr| c.decode_client(fr).map(Some));
        decoded = true;
    }
    if let Ok(Some(msg)) = codec.decode_server(&f) {
        round_trip(&msg, |c, fr| c.decode_server(fr));
        decoded = true;
    }
    if decoded {
        // A frame is one message: anything after it is refused.
        let trailing = match codec {
            Codec::Json => b"0".as_slice(),
            Codec::MsgPack => [0xc0].as_slice(),
        };
        let longer = frame(codec, &[data, trailing].concat());
        assert!(codec.decode_client(&longer).is_err(), "a client frame with a trailing value decoded");
        assert!(codec.decode_server(&longer).is_err(), "a server frame with a trailing value decoded");
    }
}

/// The message re-encodes in both codecs and decodes to the same value.
fn round_trip<M, E: Debug>(msg: &M, decode: impl Fn(Codec, &Frame) -> Result<Option<M>, E>)
where
    M: Serialize + DeserializeOwned + PartialEq + Debug,
{
    for codec in [Codec::Json, Codec::MsgPack] {
        let encoded = codec.encode(msg).unwrap_or_else(|e| panic!("{codec:?} can't encode {msg:?}: {e}"));
        let again = decode(codec, &encoded).unwrap_or_else(|e| panic!("{codec:?} refuses its own {msg:?}: {e:?}"));
        assert_eq!(again.as_ref(), Some(msg), "{codec:?} round trip");
    }
}

/// Decodes a client frame for other targets (the same path as the session).
pub(crate) fn client_message(codec: Codec, data: &[u8]) -> Option<ClientMessage> {
    codec.decode_client(&frame(codec, data)).ok()
}
