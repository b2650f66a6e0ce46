//! `statecast-server token`: a signed JWT from the secret serving uses, and
//! clear refusals (exit code 2).

use statecast_core::{Authenticator, JwtHs256};
use std::process::{Command, Output};

const SECRET: &str = "0123456789abcdef0123456789abcdef-token-test";

fn token(args: &[&str], secret: Option<(&str, &str)>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_statecast-server"));
    cmd.env_remove("STATECAST_JWT_SECRET").env_remove("RUST_LOG").args(args);
    if let Some((var, value)) = secret {
        cmd.env(var, value);
    }
    cmd.output().expect("run statecast-server token")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn prints_a_token_the_server_accepts() {
    let out = token(&["token", "--sub", "1", "--ttl", "1h", "--name", "alice"], Some(("STATECAST_JWT_SECRET", SECRET)));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let printed = text(&out.stdout);
    assert_eq!(printed.lines().count(), 1, "one line: {printed}");
    let user =
        JwtHs256::new(SECRET.as_bytes()).expect("secret").authenticate(printed.trim()).await.expect("a valid token");
    assert_eq!((user.id, user.name.as_str()), (1, "alice"));

    // The variable --jwt-secret-env names, as when serving.
    let out =
        token(&["--jwt-secret-env", "MY_SECRET", "token", "--sub", "2", "--ttl", "30m"], Some(("MY_SECRET", SECRET)));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let user =
        JwtHs256::new(SECRET.as_bytes()).expect("secret").authenticate(text(&out.stdout).trim()).await.expect("valid");
    assert_eq!(user.id, 2);
}

#[test]
fn refusals_exit_2_with_a_message() {
    let no_secret = token(&["token", "--sub", "1", "--ttl", "1h"], None);
    assert_eq!(no_secret.status.code(), Some(2));
    assert!(no_secret.stdout.is_empty());
    let err = text(&no_secret.stderr);
    assert!(err.contains("no JWT secret") && err.contains("STATECAST_JWT_SECRET"), "{err}");

    let bad_ttl = token(&["token", "--sub", "1", "--ttl", "soon"], Some(("STATECAST_JWT_SECRET", SECRET)));
    assert_eq!(bad_ttl.status.code(), Some(2));
    let err = text(&bad_ttl.stderr);
    assert!(err.contains("--ttl `soon`") && err.contains("1h"), "{err}");

    let bad_sub = token(&["token", "--sub", "0", "--ttl", "1h"], Some(("STATECAST_JWT_SECRET", SECRET)));
    assert_eq!(bad_sub.status.code(), Some(2));
    assert!(text(&bad_sub.stderr).contains("positive"), "{}", text(&bad_sub.stderr));

    let no_sub = token(&["token", "--ttl", "1h"], Some(("STATECAST_JWT_SECRET", SECRET)));
    assert_eq!(no_sub.status.code(), Some(2), "clap's usage error");
}
