//! The two codecs: JSON in text frames, MessagePack (named fields, maps) in
//! binary frames. Decoding goes by the `type` field, never by trying shapes.

use super::v1::{ClientMessage, ServerMessage};
use crate::error::{ErrorReason, WireError};
use crate::frame::{Frame, FrameKind};
use bytes::Bytes;
use serde::de::{self, DeserializeOwned, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};
use std::fmt;

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
            Codec::MsgPack => {
                parse_msgpack(&frame.data).map_err(|detail| DecodeError::Malformed { codec: "MessagePack", detail })
            }
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

/// One MessagePack value and nothing after it (as JSON refuses trailing
/// characters), with every float finite: JSON has no NaN or infinity, and
/// `serde_json` would turn them into `null` (so `ifVersion: NaN` would read as
/// no `ifVersion` at all).
/// Nesting is limited as in JSON (`serde_json` refuses a 128th level), so a
/// value one codec accepts can be sent to a peer on the other.
fn parse_msgpack(data: &[u8]) -> Result<Value, String> {
    let mut rest = data;
    let value = {
        let mut de = rmp_serde::Deserializer::new(&mut rest);
        de.set_max_depth(128);
        Finite::deserialize(&mut de).map_err(|e| e.to_string())?
    };
    match rest.len() {
        0 => Ok(value.0),
        n => Err(format!("{n} trailing bytes after the message")),
    }
}

/// A JSON value read from MessagePack, refusing non-finite floats.
struct Finite(Value);

impl<'de> Deserialize<'de> for Finite {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(FiniteVisitor).map(Finite)
    }
}

struct FiniteVisitor;

impl<'de> Visitor<'de> for FiniteVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a value with finite numbers and string keys")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v).map(Value::Number).ok_or_else(|| E::custom(format!("{v} is not a finite number")))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Finite::deserialize(d).map(|v| v.0)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(Finite(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some((k, Finite(v))) = map.next_entry::<String, Finite>()? {
            out.insert(k, v);
        }
        Ok(Value::Object(out))
    }
}

fn message_type(value: &Value) -> Result<String, DecodeError> {
    value.get("type").and_then(Value::as_str).map(str::to_owned).ok_or(DecodeError::NoType)
}

fn typed<T: DeserializeOwned>(value: Value, ty: String) -> Result<T, DecodeError> {
    serde_json::from_value(value).map_err(|e| DecodeError::Invalid { ty, detail: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::ClientMessage;
    use serde_json::json;

    fn msgpack(v: &Value) -> Frame {
        Frame { kind: FrameKind::Binary, data: Bytes::from(rmp_serde::to_vec_named(v).expect("encodes")) }
    }

    /// A save whose `ifVersion` is any number, encoded as MessagePack (a JSON value can't hold NaN).
    fn save<N: Serialize>(if_version: N) -> Frame {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Save<N> {
            r#type: &'static str,
            write_id: i64,
            operation: &'static str,
            context: &'static str,
            instance_type: &'static str,
            instance_id: i64,
            if_version: N,
        }
        let msg = Save {
            r#type: "write",
            write_id: 1,
            operation: "save",
            context: "job/1",
            instance_type: "Task",
            instance_id: 5,
            if_version,
        };
        Frame { kind: FrameKind::Binary, data: Bytes::from(rmp_serde::to_vec_named(&msg).expect("encodes")) }
    }

    #[test]
    fn msgpack_refuses_non_finite_numbers() {
        let ok = Codec::MsgPack.decode_client(&save(3)).expect("a finite ifVersion decodes");
        assert!(matches!(ok, ClientMessage::Write(w) if w.if_version == Some(3)));
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            // Before the fix, NaN read as null: a save with no version check at all.
            let err = Codec::MsgPack.decode_client(&save(bad)).expect_err("a non-finite ifVersion is refused");
            assert!(matches!(&err, DecodeError::Malformed { detail, .. } if detail.contains("finite")), "{err}");
            let err = Codec::MsgPack.decode_client(&save(bad as f32)).expect_err("as a 32-bit float too");
            assert!(matches!(&err, DecodeError::Malformed { detail, .. } if detail.contains("finite")), "{err}");
        }
        // Inside data, too: a NaN is never silently a null.
        let nested = json!({"type": "ping", "zz": [1]}); // keys sorted: the 1 is the last byte
        let mut bin = rmp_serde::to_vec_named(&nested).expect("encodes");
        let at = bin.len() - 1;
        bin.truncate(at);
        bin.push(0xcb);
        bin.extend(f64::NAN.to_be_bytes());
        let frame = Frame { kind: FrameKind::Binary, data: Bytes::from(bin) };
        assert!(Codec::MsgPack.parse(&frame).is_err());
    }

    #[test]
    fn json_refuses_non_finite_numbers() {
        for bad in [r#"NaN"#, r#"Infinity"#, r#"-Infinity"#, r#"1e400"#] {
            let text = format!(
                r#"{{"type":"write","writeId":1,"operation":"save","instanceType":"Task","instanceId":5,"ifVersion":{bad}}}"#
            );
            let frame = Frame { kind: FrameKind::Text, data: Bytes::from(text) };
            assert!(Codec::Json.decode_client(&frame).is_err(), "{bad} is refused");
        }
    }

    #[test]
    fn json_numbers_round_trip() {
        // Found by fuzzing: without serde_json's `float_roundtrip`, this parsed to an f64
        // that printed and parsed back as another one.
        for text in
            [r#"{"type":"ping","rid":18446744076795315015}"#, r#"{"type":"ping","rid":2.2250738585072011e-308}"#]
        {
            let frame = Frame { kind: FrameKind::Text, data: Bytes::from(text) };
            let msg = Codec::Json.decode_client(&frame).expect("decodes");
            let again = Codec::Json.decode_client(&Codec::Json.encode(&msg).expect("encodes")).expect("decodes again");
            assert_eq!(msg, again);
        }
    }

    #[test]
    fn both_codecs_nest_equally_deep() {
        // Found by fuzzing: MessagePack took values nested deeper than JSON can parse,
        // so a row stored from a MessagePack client could not reach a JSON one.
        for depth in 120..135 {
            let json = format!(r#"{{"type":"ping","rid":{}null{}}}"#, "[".repeat(depth), "]".repeat(depth));
            let mut bin = vec![0x82, 0xa4];
            bin.extend(b"type");
            bin.push(0xa4);
            bin.extend(b"ping");
            bin.push(0xa3);
            bin.extend(b"rid");
            bin.extend(std::iter::repeat_n(0x91, depth));
            bin.push(0xc0);
            let from_json = Codec::Json.decode_client(&Frame { kind: FrameKind::Text, data: Bytes::from(json) });
            let from_msgpack = Codec::MsgPack.decode_client(&Frame { kind: FrameKind::Binary, data: Bytes::from(bin) });
            assert_eq!(from_json.is_ok(), from_msgpack.is_ok(), "depth {depth}");
            if let (Ok(a), Ok(b)) = (from_json, from_msgpack) {
                assert_eq!(a, b);
            }
        }
    }

    #[test]
    fn both_codecs_refuse_trailing_bytes() {
        let ping = json!({"type": "ping"});
        let mut bin = rmp_serde::to_vec_named(&ping).expect("encodes");
        assert!(Codec::MsgPack.decode_client(&msgpack(&ping)).is_ok());
        bin.push(0xc0); // a second value (nil)
        let frame = Frame { kind: FrameKind::Binary, data: Bytes::from(bin.clone()) };
        let err = Codec::MsgPack.decode_client(&frame).expect_err("trailing bytes are refused");
        assert!(err.to_string().contains("trailing"), "{err}");
        bin.pop();
        bin.extend(rmp_serde::to_vec_named(&ping).expect("encodes"));
        let frame = Frame { kind: FrameKind::Binary, data: Bytes::from(bin) };
        assert!(Codec::MsgPack.decode_server(&frame).is_err(), "two messages in one frame are refused");
        let text = Frame { kind: FrameKind::Text, data: Bytes::from_static(br#"{"type":"ping"}{"type":"ping"}"#) };
        assert!(Codec::Json.decode_client(&text).is_err());
    }

    #[test]
    fn msgpack_decodes_as_before() {
        let v = json!({"type": "ping", "rid": {"a": [1, -2, 2.5, "s", null, true, {"b": 18446744073709551615_u64}]}});
        assert_eq!(Codec::MsgPack.parse(&msgpack(&v)).expect("parses"), v);
        // Integer map keys stay refused, like before.
        let frame = Frame { kind: FrameKind::Binary, data: Bytes::from_static(&[0x81, 0x01, 0x02]) };
        assert!(Codec::MsgPack.parse(&frame).is_err());
    }
}
