//! The authenticated user, as `authenticated` reports it and policies see it.

use crate::ids::Id;
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The longest a connection's token is trusted without a new `auth`, whatever
/// its `exp` says (about ten years).
pub const MAX_TOKEN_LIFE: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// An authenticated user.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    pub id: Id,
    pub name: String,
    /// Every claim of the token, for policies that need more than the id.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub claims: serde_json::Value,
    /// When the token stops being valid (Unix seconds), if it expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

impl User {
    pub fn new(id: Id, name: impl Into<String>) -> Self {
        Self { id, name: name.into(), claims: serde_json::Value::Null, expires_at: None }
    }

    /// Time left before the token expires (zero when already expired), at
    /// most [`MAX_TOKEN_LIFE`]: an `exp` far in the future (up to 2^64−1)
    /// must not overflow a clock.
    pub fn time_left(&self) -> Option<Duration> {
        let exp = self.expires_at?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        Some(Duration::from_secs(exp.saturating_sub(now)).min(MAX_TOKEN_LIFE))
    }
}
