//! The protocol's error vocabulary: a numeric code (as in the seed) and a
//! machine-readable reason, with a human message.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Machine-readable reasons carried beside the numeric code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorReason {
    // 400
    InvalidData,
    NotFound,
    NotInContext,
    InvalidId,
    UnknownType,
    UnknownRelation,
    DependencyFailed,
    BadFrame,
    UnsupportedProtocol,
    SnapshotTooLarge,
    /// A message about a context this connection does not subscribe to.
    NotSubscribed,
    // 401
    Unauthenticated,
    TokenExpired,
    // 403
    NotWritable,
    Denied,
    // 404
    UnknownChannel,
    UnknownStream,
    AnchorNotFound,
    // 409
    IdConflict,
    VersionConflict,
    StaleWrite,
    /// A delete blocked by a reference declared `on_delete = restrict`.
    Restricted,
    // 413
    FrameTooLarge,
    // 429
    RateLimited,
    // 500
    Internal,
    // 503
    OutcomeUnknown,
    Contended,
    Unavailable,
    // client-side only
    /// The context was closed before an unsent write could be sent.
    ContextClosed,
    /// A write was not answered within the client's timeout.
    Timeout,
}

impl ErrorReason {
    /// The numeric code that goes with this reason.
    pub fn code(self) -> u16 {
        use ErrorReason::*;
        match self {
            InvalidData | NotFound | NotInContext | InvalidId | UnknownType | UnknownRelation | DependencyFailed
            | BadFrame | UnsupportedProtocol | SnapshotTooLarge | NotSubscribed => 400,
            Unauthenticated | TokenExpired => 401,
            NotWritable | Denied => 403,
            UnknownChannel | UnknownStream | AnchorNotFound => 404,
            IdConflict | VersionConflict | StaleWrite | Restricted | ContextClosed => 409,
            FrameTooLarge => 413,
            RateLimited => 429,
            Internal => 500,
            OutcomeUnknown | Contended | Unavailable | Timeout => 503,
        }
    }

    /// The reason as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        use ErrorReason::*;
        match self {
            InvalidData => "INVALID_DATA",
            NotFound => "NOT_FOUND",
            NotInContext => "NOT_IN_CONTEXT",
            InvalidId => "INVALID_ID",
            UnknownType => "UNKNOWN_TYPE",
            UnknownRelation => "UNKNOWN_RELATION",
            DependencyFailed => "DEPENDENCY_FAILED",
            BadFrame => "BAD_FRAME",
            UnsupportedProtocol => "UNSUPPORTED_PROTOCOL",
            SnapshotTooLarge => "SNAPSHOT_TOO_LARGE",
            NotSubscribed => "NOT_SUBSCRIBED",
            Unauthenticated => "UNAUTHENTICATED",
            TokenExpired => "TOKEN_EXPIRED",
            NotWritable => "NOT_WRITABLE",
            Denied => "DENIED",
            UnknownChannel => "UNKNOWN_CHANNEL",
            UnknownStream => "UNKNOWN_STREAM",
            AnchorNotFound => "ANCHOR_NOT_FOUND",
            IdConflict => "ID_CONFLICT",
            VersionConflict => "VERSION_CONFLICT",
            StaleWrite => "STALE_WRITE",
            Restricted => "RESTRICTED",
            FrameTooLarge => "FRAME_TOO_LARGE",
            RateLimited => "RATE_LIMITED",
            Internal => "INTERNAL",
            OutcomeUnknown => "OUTCOME_UNKNOWN",
            Contended => "CONTENDED",
            Unavailable => "UNAVAILABLE",
            ContextClosed => "CONTEXT_CLOSED",
            Timeout => "TIMEOUT",
        }
    }
}

impl fmt::Display for ErrorReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error as the protocol carries it: `{code, reason, message, field?, op?}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub struct WireError {
    pub code: u16,
    pub reason: ErrorReason,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op: Option<usize>,
}

impl WireError {
    pub fn new(reason: ErrorReason, message: impl Into<String>) -> Self {
        Self { code: reason.code(), reason, message: message.into(), field: None, op: None }
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub fn with_op(mut self, op: usize) -> Self {
        self.op = Some(op);
        self
    }

    pub fn invalid_data(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(ErrorReason::InvalidData, message).with_field(field)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorReason::Internal, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_strings_match_serde() {
        for r in
            [ErrorReason::InvalidData, ErrorReason::StaleWrite, ErrorReason::OutcomeUnknown, ErrorReason::NotSubscribed]
        {
            assert_eq!(serde_json::to_value(r).ok(), Some(serde_json::Value::String(r.as_str().into())));
        }
    }
}
