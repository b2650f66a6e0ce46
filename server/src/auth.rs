//! The server's authenticator: the dev tokens where the mode allows them,
//! then JWT HS256 when a secret is configured.

use crate::config::Config;
use async_trait::async_trait;
use statecast_core::auth::{AuthError, Authenticator};
use statecast_core::{DevTokens, JwtHs256, User};

/// Tries the dev tokens first (never in `prod`), then a JWT.
#[derive(Debug, Default)]
pub struct ServerAuth {
    dev: Option<DevTokens>,
    jwt: Option<JwtHs256>,
}

impl ServerAuth {
    /// Dev tokens (tried first) and/or JWTs, for a server of your own.
    pub fn new(dev: Option<DevTokens>, jwt: Option<JwtHs256>) -> Self {
        Self { dev, jwt }
    }

    /// The authenticator `config` calls for; `dev_tokens` are used only where the mode allows them.
    pub fn for_config(config: &Config, dev_tokens: DevTokens) -> Self {
        Self {
            dev: config.mode.allows_dev_tokens().then_some(dev_tokens),
            // Config::load keeps no empty secret, the one JwtHs256 refuses;
            // were one to get here, JWTs would be refused, never accepted unsigned.
            jwt: config.jwt_secret.as_ref().and_then(|s| {
                let mut jwt =
                    JwtHs256::new(s.expose()).inspect_err(|e| tracing::error!(error = %e, "JWTs are refused")).ok()?;
                if let Some(issuer) = &config.jwt_issuer {
                    jwt = jwt.issuer(issuer);
                }
                if !config.jwt_audience.is_empty() {
                    jwt = jwt.audience(&config.jwt_audience);
                }
                Some(jwt)
            }),
        }
    }

    pub fn accepts_dev_tokens(&self) -> bool {
        self.dev.is_some()
    }

    pub fn accepts_jwt(&self) -> bool {
        self.jwt.is_some()
    }
}

#[async_trait]
impl Authenticator for ServerAuth {
    async fn authenticate(&self, token: &str) -> Result<User, AuthError> {
        if let Some(dev) = &self.dev
            && let Ok(user) = dev.authenticate(token).await
        {
            return Ok(user);
        }
        match &self.jwt {
            Some(jwt) => jwt.authenticate(token).await,
            None => Err(AuthError::Invalid),
        }
    }
}

// The demo app's dev tokens are the fixture.
#[cfg(all(test, feature = "demo"))]
mod tests {
    use super::*;
    use crate::config::{Args, Mode};
    use std::time::Duration;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn config(mode: Mode, secret: Option<&str>) -> Config {
        let args = Args { mode: Some(mode), ..Args::default() };
        Config::load(args, |k| (k == "STATECAST_JWT_SECRET").then(|| secret.map(str::to_owned)).flatten())
            .expect("valid config")
    }

    #[tokio::test]
    async fn demo_accepts_dev_tokens_and_jwts_when_a_secret_is_set() {
        let auth = ServerAuth::for_config(&config(Mode::Demo, None), crate::demo::dev_tokens());
        assert_eq!(auth.authenticate("carol").await.map(|u| u.id), Ok(3));
        assert_eq!(auth.authenticate("mallory").await, Err(AuthError::Invalid));
        assert!(!auth.accepts_jwt());

        let auth = ServerAuth::for_config(&config(Mode::Dev, Some(SECRET)), crate::demo::dev_tokens());
        let token =
            JwtHs256::new(SECRET.as_bytes()).expect("secret").issue(9, "ivan", Duration::from_secs(60)).expect("issue");
        assert_eq!(auth.authenticate(&token).await.map(|u| u.id), Ok(9));
        assert_eq!(auth.authenticate("alice").await.map(|u| u.id), Ok(1));
    }

    #[tokio::test]
    async fn prod_refuses_dev_tokens() {
        let auth = ServerAuth::for_config(&config(Mode::Prod, Some(SECRET)), crate::demo::dev_tokens());
        assert!(!auth.accepts_dev_tokens());
        assert!(auth.authenticate("alice").await.is_err());
        let token = JwtHs256::new(SECRET.as_bytes())
            .expect("secret")
            .issue(1, "alice", Duration::from_secs(60))
            .expect("issue");
        assert_eq!(auth.authenticate(&token).await.map(|u| u.id), Ok(1));
    }
}
