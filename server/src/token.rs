//! `statecast-server token`: a signed JWT for a user, for trying a server in
//! `dev` or `prod` mode from the command line (`statecast repl … --token "$(…)"`).

use crate::config::Config;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The longest `--ttl` accepted (the engine caps a token's life at ten years too).
pub const MAX_TTL: Duration = Duration::from_secs(10 * 366 * 24 * 3600);

/// Why no token was printed (the binary exits 2 with the message).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error(
        "no JWT secret: set the environment variable `{env}` (the one serving reads; see --jwt-secret-env) \
         or `jwt_secret` in the config file"
    )]
    NoSecret { env: String },
    #[error("--ttl `{ttl}`: {why} (give a duration like 30m, 1h or 7d)")]
    BadTtl { ttl: String, why: String },
    #[error("--sub {0}: a user id is a positive number")]
    BadSub(i64),
    #[error("can't sign the token: {0}")]
    Sign(String),
}

/// Parses `--ttl`: a humane duration, more than zero, at most [`MAX_TTL`].
pub fn parse_ttl(ttl: &str) -> Result<Duration, TokenError> {
    let bad = |why: String| TokenError::BadTtl { ttl: ttl.to_owned(), why };
    let d = humantime::parse_duration(ttl.trim()).map_err(|e| bad(e.to_string()))?;
    if d.as_secs() == 0 {
        return Err(bad("a token must live at least a second".into()));
    }
    if d > MAX_TTL {
        return Err(bad("at most ten years".into()));
    }
    Ok(d)
}

/// Signs a token for user `sub` valid for `ttl`, with the secret, issuer and
/// audience of `config` (so the server started with the same settings accepts it).
pub fn issue(config: &Config, sub: i64, ttl: &str, name: Option<&str>) -> Result<String, TokenError> {
    if sub <= 0 {
        return Err(TokenError::BadSub(sub));
    }
    let ttl = parse_ttl(ttl)?;
    let secret =
        config.jwt_secret.as_ref().ok_or_else(|| TokenError::NoSecret { env: config.jwt_secret_env.clone() })?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let mut claims = serde_json::json!({"sub": sub.to_string(), "iat": now, "exp": now + ttl.as_secs()});
    if let Some(name) = name {
        claims["name"] = name.into();
    }
    if let Some(issuer) = &config.jwt_issuer {
        claims["iss"] = issuer.as_str().into();
    }
    if !config.jwt_audience.is_empty() {
        claims["aud"] = config.jwt_audience.clone().into();
    }
    let key = jsonwebtoken::EncodingKey::from_secret(secret.expose()).map_err(|e| TokenError::Sign(e.to_string()))?;
    jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256), &claims, &key)
        .map_err(|e| TokenError::Sign(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Args;
    use clap::Parser;
    use statecast_core::{Authenticator, JwtHs256};

    fn config(secret: Option<&str>, extra: &[&str]) -> Config {
        let args = Args::parse_from(["statecast-server"].iter().chain(extra));
        let secret = secret.map(str::to_owned);
        Config::load(args, move |name| (name == "STATECAST_JWT_SECRET").then(|| secret.clone()).flatten())
            .expect("config")
    }

    #[tokio::test]
    async fn a_token_the_server_accepts() {
        let secret = "a-secret-of-at-least-32-bytes-long!!";
        let token = issue(&config(Some(secret), &[]), 7, "1h", Some("alice")).expect("token");
        let user = JwtHs256::new(secret.as_bytes()).expect("secret").authenticate(&token).await.expect("accepted");
        assert_eq!((user.id, user.name.as_str()), (7, "alice"));
        let left = user.time_left().expect("exp");
        assert!(left > Duration::from_secs(3500) && left <= Duration::from_secs(3600), "{left:?}");
        let nameless = issue(&config(Some(secret), &[]), 8, "30m", None).expect("token");
        assert_eq!(
            JwtHs256::new(secret.as_bytes()).expect("secret").authenticate(&nameless).await.expect("ok").name,
            "8"
        );
    }

    #[tokio::test]
    async fn issuer_and_audience_are_signed_in() {
        let secret = "a-secret-of-at-least-32-bytes-long!!";
        let c = config(Some(secret), &["--jwt-issuer", "idp", "--jwt-audience", "board"]);
        let token = issue(&c, 1, "1h", None).expect("token");
        let strict = JwtHs256::new(secret.as_bytes()).expect("secret").issuer("idp").audience(&["board"]);
        assert_eq!(strict.authenticate(&token).await.map(|u| u.id), Ok(1));
    }

    #[test]
    fn refusals_say_why() {
        let none = issue(&config(None, &[]), 1, "1h", None).expect_err("no secret");
        assert_eq!(none, TokenError::NoSecret { env: "STATECAST_JWT_SECRET".into() });
        assert!(none.to_string().contains("STATECAST_JWT_SECRET"), "{none}");
        let c = config(Some("s"), &[]);
        for ttl in ["soon", "0s", "", "-1h", "20y"] {
            assert!(matches!(issue(&c, 1, ttl, None), Err(TokenError::BadTtl { .. })), "{ttl}");
        }
        assert_eq!(issue(&c, 0, "1h", None), Err(TokenError::BadSub(0)));
    }
}
