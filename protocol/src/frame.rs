//! Frames: whole messages as a transport moves them, text (JSON) or binary
//! (MessagePack).

use bytes::Bytes;

/// Whether a frame is text (JSON) or binary (MessagePack).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FrameKind {
    Text,
    Binary,
}

/// One whole message. Text frames hold UTF-8.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub kind: FrameKind,
    pub data: Bytes,
}

impl Frame {
    pub fn text(s: impl Into<String>) -> Self {
        Self { kind: FrameKind::Text, data: Bytes::from(s.into()) }
    }
    pub fn binary(b: impl Into<Bytes>) -> Self {
        Self { kind: FrameKind::Binary, data: b.into() }
    }
    pub fn len(&self) -> usize {
        self.data.len()
    }
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}
