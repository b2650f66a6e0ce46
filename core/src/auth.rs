//! Authentication: a token becomes a [`User`]. Built in: static dev tokens
//! (demo and development only) and HMAC-signed JWTs (HS256) for real use.

use crate::ids::Id;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use statecast_protocol::user::{MAX_TOKEN_LIFE, User};

/// Why a token was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("unknown or invalid token")]
    Invalid,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid: {0}")]
    Malformed(String),
}

/// A secret [`JwtHs256`] can't use. An empty HMAC key is refused: anyone
/// could sign tokens with it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unusable JWT secret: {0}")]
pub struct BadSecret(String);

/// Turns a token into a user.
#[async_trait]
pub trait Authenticator: Send + Sync + 'static {
    async fn authenticate(&self, token: &str) -> Result<User, AuthError>;
}

/// Static tokens, each naming a user. For the demo and development only.
#[derive(Debug, Default, Clone)]
pub struct DevTokens {
    users: HashMap<String, User>,
}

impl DevTokens {
    pub fn new() -> Self {
        Self::default()
    }

    /// Accepts `token` as `user`.
    pub fn with(mut self, token: &str, user: User) -> Self {
        self.users.insert(token.to_owned(), user);
        self
    }

    pub fn tokens(&self) -> impl Iterator<Item = (&str, &User)> {
        self.users.iter().map(|(t, u)| (t.as_str(), u))
    }
}

#[async_trait]
impl Authenticator for DevTokens {
    async fn authenticate(&self, token: &str) -> Result<User, AuthError> {
        self.users.get(token).cloned().ok_or(AuthError::Invalid)
    }
}

/// JWTs signed with HMAC-SHA256. The `sub` claim is the user id (a number or a
/// numeric string); `name` is optional; `exp` is required.
pub struct JwtHs256 {
    key: jsonwebtoken::DecodingKey,
    encoding: jsonwebtoken::EncodingKey,
    validation: jsonwebtoken::Validation,
}

impl std::fmt::Debug for JwtHs256 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JwtHs256 { .. }")
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: serde_json::Value,
    #[serde(default)]
    name: Option<String>,
    exp: u64,
    #[serde(flatten)]
    rest: serde_json::Map<String, serde_json::Value>,
}

impl JwtHs256 {
    /// Tokens signed with `secret`. `exp` is required and `nbf` checked when
    /// present; `iss` and `aud` are not checked until
    /// [`issuer`](Self::issuer) and [`audience`](Self::audience) name them.
    ///
    /// # Errors
    ///
    /// [`BadSecret`] when `secret` is empty.
    pub fn new(secret: &[u8]) -> Result<Self, BadSecret> {
        if secret.is_empty() {
            return Err(BadSecret("it is empty".into()));
        }
        let unusable = |e: jsonwebtoken::errors::Error| BadSecret(e.to_string());
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.leeway = 0;
        validation.validate_nbf = true;
        // With no audience configured, a token's `aud` is not checked (rather
        // than every token that carries one being refused).
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp"]);
        Ok(Self {
            key: jsonwebtoken::DecodingKey::from_secret(secret).map_err(unusable)?,
            encoding: jsonwebtoken::EncodingKey::from_secret(secret).map_err(unusable)?,
            validation,
        })
    }

    /// Accepts only tokens whose `iss` is `issuer`.
    pub fn issuer(mut self, issuer: &str) -> Self {
        self.validation.set_issuer(&[issuer]);
        self.validation.required_spec_claims.insert("iss".to_owned());
        self
    }

    /// Accepts only tokens whose `aud` names one of `audience`.
    pub fn audience<S: ToString>(mut self, audience: &[S]) -> Self {
        self.validation.set_audience(audience);
        self.validation.validate_aud = true;
        self.validation.required_spec_claims.insert("aud".to_owned());
        self
    }

    /// Signs a token for `user_id` valid for `ttl` (for tools and tests).
    pub fn issue(&self, user_id: Id, name: &str, ttl: Duration) -> Result<String, AuthError> {
        let exp = (SystemTime::now() + ttl).duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let claims =
            Claims { sub: user_id.to_string().into(), name: Some(name.to_owned()), exp, rest: Default::default() };
        jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| AuthError::Malformed(e.to_string()))
    }
}

#[async_trait]
impl Authenticator for JwtHs256 {
    async fn authenticate(&self, token: &str) -> Result<User, AuthError> {
        use jsonwebtoken::errors::ErrorKind;
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::ImmatureSignature => AuthError::Malformed("the token is not valid yet (`nbf`)".into()),
            ErrorKind::InvalidIssuer => AuthError::Malformed("the token's issuer (`iss`) is not accepted".into()),
            ErrorKind::InvalidAudience => AuthError::Malformed("the token's audience (`aud`) is not accepted".into()),
            ErrorKind::InvalidSignature | ErrorKind::InvalidToken | ErrorKind::InvalidAlgorithm => AuthError::Invalid,
            _ => AuthError::Malformed(e.to_string()),
        })?;
        let c = data.claims;
        let id = match &c.sub {
            serde_json::Value::Number(n) => n.as_i64(),
            serde_json::Value::String(s) => s.parse().ok(),
            _ => None,
        }
        .ok_or_else(|| AuthError::Malformed("`sub` must be a numeric user id".into()))?;
        let mut claims = c.rest;
        claims.insert("sub".into(), c.sub.clone());
        Ok(User {
            id,
            name: c.name.unwrap_or_else(|| id.to_string()),
            claims: serde_json::Value::Object(claims),
            expires_at: Some(c.exp),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jwt_round_trip_and_refusals() {
        let auth = JwtHs256::new(b"secret").expect("secret");
        let token = auth.issue(7, "gina", Duration::from_secs(60)).expect("issue");
        let user = auth.authenticate(&token).await.expect("valid");
        assert_eq!((user.id, user.name.as_str()), (7, "gina"));
        assert!(user.expires_at.is_some());

        let other = JwtHs256::new(b"other").expect("secret");
        assert_eq!(other.authenticate(&token).await, Err(AuthError::Invalid));
        assert!(auth.authenticate("garbage").await.is_err());
        let expired = JwtHs256::new(b"secret").expect("secret");
        let claims = Claims { sub: 7.into(), name: None, exp: 1, rest: Default::default() };
        let old = jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &expired.encoding).expect("encode");
        assert_eq!(auth.authenticate(&old).await, Err(AuthError::Expired));
    }

    fn signed(auth: &JwtHs256, claims: serde_json::Value) -> String {
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &auth.encoding).expect("encode")
    }

    fn in_secs(secs: i64) -> u64 {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs();
        now.saturating_add_signed(secs)
    }

    #[tokio::test]
    async fn an_exp_at_the_end_of_time_is_capped_not_a_panic() {
        let auth = JwtHs256::new(b"secret").expect("secret");
        let token = signed(&auth, serde_json::json!({"sub": 1, "exp": u64::MAX}));
        let user = auth.authenticate(&token).await.expect("valid");
        let left = user.time_left().expect("expires");
        assert_eq!(left, MAX_TOKEN_LIFE);
        // What the session does with it.
        assert!(std::time::Instant::now().checked_add(left).is_some());
    }

    #[tokio::test]
    async fn nbf_in_the_future_is_refused() {
        let auth = JwtHs256::new(b"secret").expect("secret");
        let early = signed(&auth, serde_json::json!({"sub": 1, "exp": in_secs(60), "nbf": in_secs(30)}));
        assert!(matches!(auth.authenticate(&early).await, Err(AuthError::Malformed(m)) if m.contains("nbf")));
        let due = signed(&auth, serde_json::json!({"sub": 1, "exp": in_secs(60), "nbf": in_secs(-1)}));
        assert!(auth.authenticate(&due).await.is_ok());
    }

    #[tokio::test]
    async fn iss_and_aud_are_checked_only_when_configured() {
        let claims = serde_json::json!({"sub": 1, "exp": in_secs(60), "iss": "idp", "aud": "statecast"});
        let open = JwtHs256::new(b"secret").expect("secret");
        assert!(open.authenticate(&signed(&open, claims.clone())).await.is_ok(), "an `aud` alone is no refusal");

        let strict = JwtHs256::new(b"secret").expect("secret").issuer("idp").audience(&["statecast"]);
        assert!(strict.authenticate(&signed(&strict, claims.clone())).await.is_ok());
        let mut other_iss = claims.clone();
        other_iss["iss"] = "elsewhere".into();
        let refused = strict.authenticate(&signed(&strict, other_iss)).await;
        assert!(matches!(refused, Err(AuthError::Malformed(m)) if m.contains("iss")));
        let mut other_aud = claims.clone();
        other_aud["aud"] = "another-app".into();
        let refused = strict.authenticate(&signed(&strict, other_aud)).await;
        assert!(matches!(refused, Err(AuthError::Malformed(m)) if m.contains("aud")));
        let mut no_aud = claims;
        no_aud.as_object_mut().expect("object").remove("aud");
        assert!(strict.authenticate(&signed(&strict, no_aud)).await.is_err(), "a configured audience is required");
    }

    #[test]
    fn an_empty_secret_is_refused() {
        let refused = JwtHs256::new(b"").map(|_| ()).expect_err("an empty HMAC key");
        assert!(refused.to_string().contains("empty"), "{refused}");
    }

    #[tokio::test]
    async fn dev_tokens_name_users() {
        let dev = DevTokens::new().with("alice", User::new(1, "alice"));
        assert_eq!(dev.authenticate("alice").await.map(|u| u.id), Ok(1));
        assert_eq!(dev.authenticate("mallory").await, Err(AuthError::Invalid));
    }
}
