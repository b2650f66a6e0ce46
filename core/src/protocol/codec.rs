//! The two codecs: JSON in text frames, MessagePack (named fields, maps) in
//! binary frames. Decoding goes by the `type` field, never by trying shapes.

use super::v1::{ClientMessage, ServerMessage};
use crate::error::{ErrorReason, WireError};
use crate::transport::{Frame, FrameKind};
use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// The codec a connection speaks, fixed by its `hello` frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Codec {
    Json,
    MsgPack,
}

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed {codec} frame: {detail}")]
    Malformed { codec: &'static str, detail: String },
    #[error("a frame must be a map with a string `type`")]
    NoType,
    #[error("unknown message type `{0}`")]
    UnknownType(String),
    #[error("invalid `{ty}` message: {detail}")]
    Invalid { ty: String, detail: String },
    #[error("this connection speaks {expected}; a {got} frame is not accepted")]
    WrongCodec { expected: &'static str, got: &'static str },
}

impl DecodeError {
    pub fn to_wire(&self) -> WireError {
        WireError::new(ErrorReason::BadFrame, self.to_string())
    }
}

impl Codec {
    pub fn for_frame(kind: FrameKind) -> Codec {
        match kind {
            FrameKind::Text => Codec::Json,
            FrameKind::Binary => Codec::MsgPack,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Codec::Json => "JSON (text frames)",
            Codec::MsgPack => "MessagePack (binary frames)",
        }
    }

    /// Index for per-codec caches.
    pub fn index(self) -> usize {
        match self {
            Codec::Json => 0,
            Codec::MsgPack => 1,
        }
    }

    /// Encodes any message into a frame of this codec.
    pub fn encode<T: Serialize>(self, msg: &T) -> Result<Frame, WireError> {
        match self {
            Codec::Json => serde_json::to_vec(msg).map(|v| Frame { kind: FrameKind::Text, data: Bytes::from(v) }),
            Codec::MsgPack => rmp_serde::to_vec_named(msg)
                .map(|v| Frame { kind: FrameKind::Binary, data: Bytes::from(v) })
                .map_err(|e| serde_json::Error::io(std::io::Error::other(e.to_string()))),
        }
        .map_err(|e| WireError::internal(format!("encoding failed: {e}")))
    }

    /// Parses a frame of this codec into a generic value.
    pub fn parse(self, frame: &Frame) -> Result<Value, DecodeError> {
        let got = Codec::for_frame(frame.kind);
        if got != self {
            return Err(DecodeError::WrongCodec { expected: self.name(), got: got.name() });
        }
        match self {
            Codec::Json => serde_json::from_slice(&frame.data)
                .map_err(|e| DecodeError::Malformed { codec: "JSON", detail: e.to_string() }),
            Codec::MsgPack => rmp_serde::from_slice(&frame.data)
                .map_err(|e| DecodeError::Malformed { codec: "MessagePack", detail: e.to_string() }),
        }
    }

    /// Decodes a client message.
    pub fn decode_client(self, frame: &Frame) -> Result<ClientMessage, DecodeError> {
        let value = self.parse(frame)?;
        let ty = message_type(&value)?;
        if !ClientMessage::TYPES.contains(&ty.as_str()) {
            return Err(DecodeError::UnknownType(ty));
        }
        if ty == "subscribe" && value.get("channel").is_some() && value.get("stream").is_some() {
            return Err(DecodeError::Invalid { ty, detail: "give either `channel` or `stream`, not both".into() });
        }
        typed(value, ty)
    }

    /// Decodes a server message; `Ok(None)` for a type this client doesn't know.
    pub fn decode_server(self, frame: &Frame) -> Result<Option<ServerMessage>, DecodeError> {
        let value = self.parse(frame)?;
        let ty = message_type(&value)?;
        if !ServerMessage::TYPES.contains(&ty.as_str()) {
            return Ok(None);
        }
        typed(value, ty).map(Some)
    }
}

fn message_type(value: &Value) -> Result<String, DecodeError> {
    value.get("type").and_then(Value::as_str).map(str::to_owned).ok_or(DecodeError::NoType)
}

fn typed<T: DeserializeOwned>(value: Value, ty: String) -> Result<T, DecodeError> {
    serde_json::from_value(value).map_err(|e| DecodeError::Invalid { ty, detail: e.to_string() })
}
