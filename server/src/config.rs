//! The server's configuration: an optional TOML file (`--config FILE`) whose
//! values command-line flags override. The JWT secret never comes from a flag.

use clap::{Parser, Subcommand, ValueEnum};
use serde::Deserialize;
use statecast_core::EngineConfig;
use statecast_core::transport::DEFAULT_OUTBOX_BYTES;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_WS_ADDR: &str = "127.0.0.1:7100";
pub const DEFAULT_WS_PATH: &str = "/ws";
pub const DEFAULT_QUIC_ADDR: &str = "127.0.0.1:7101";
/// How many jobs the demo rows may hold (`--demo-jobs`): at least the two
/// the demo's tasks live in, at most what fits the one seed batch.
pub const DEMO_JOBS_RANGE: std::ops::RangeInclusive<u32> = 2..=500;

/// The value of `--quic-addr` / `quic_addr` that turns QUIC off.
pub const QUIC_OFF: &str = "off";
/// Where the self-signed QUIC certificate is kept when the store has no directory of its own.
pub const DEFAULT_DATA_DIR: &str = "./statecast-data";
pub const DEFAULT_STORE: &str = "fjall:./statecast-data";
pub const DEFAULT_JWT_SECRET_ENV: &str = "STATECAST_JWT_SECRET";
pub const DEFAULT_FRAME_LIMIT: usize = 1 << 20;
/// Statecast's own crates at `info`, every dependency (fjall, sled, sqlx,
/// hyper, quinn…) at `warn`: their routine lines are not the operator's news.
pub const DEFAULT_LOG: &str = "warn,statecast=info";
/// How many recent commits the change log keeps unless told otherwise.
pub const DEFAULT_LOG_KEEP: u64 = 10_000;
/// The longest group-commit delay `--flush-delay-ms` takes.
pub const MAX_FLUSH_DELAY_MS: u64 = 1000;
/// The shortest age limit for the change log: the other processes' tailers
/// (woken at once, polling every 100 ms) and resuming clients must find it.
pub const MIN_LOG_MAX_AGE_SECS: u64 = 10;
/// Frames outside these bounds make no sense (a `hello` must fit; tungstenite's own cap is 64 MiB).
pub const FRAME_LIMIT_RANGE: std::ops::RangeInclusive<usize> = 1024..=(64 << 20);
/// The shortest JWT secret accepted in `prod` mode (HS256 wants at least 256 bits).
pub const MIN_PROD_SECRET_LEN: usize = 32;

/// What the server runs as.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The demo app with its rows and the dev tokens `alice`, `bob`, `carol`, `dave`.
    #[default]
    Demo,
    /// The demo schema without its rows; dev tokens and (with a secret) JWTs.
    Dev,
    /// JWTs only (a secret is required); no dev tokens, no demo rows.
    Prod,
}

impl Mode {
    /// Are the static dev tokens accepted?
    pub fn allows_dev_tokens(self) -> bool {
        self != Mode::Prod
    }
    /// Are the demo rows inserted into an empty store?
    pub fn seeds_demo_rows(self) -> bool {
        self == Mode::Demo
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Demo => "demo",
            Mode::Dev => "dev",
            Mode::Prod => "prod",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where rows are stored.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreSpec {
    /// `sled:PATH`: the embedded sled store in the directory `PATH`.
    Sled(PathBuf),
    /// `fjall:PATH`: the embedded fjall (LSM-tree) store in the directory `PATH`.
    Fjall(PathBuf),
    /// `sqlite:PATH`: a SQLite database file (created if missing).
    Sqlite(PathBuf),
    /// `postgres://user:password@host:port/db` (or `postgresql://`): a
    /// PostgreSQL database that several server processes may share.
    Postgres(String),
}

impl StoreSpec {
    /// Parses `sled:PATH`, `fjall:PATH`, `sqlite:PATH` or `postgres://…`.
    pub fn parse(spec: &str) -> Result<Self, String> {
        if let Some(path) = spec.strip_prefix("fjall:") {
            if path.is_empty() {
                return Err("`fjall:` needs a directory, e.g. `fjall:./statecast-data`".into());
            }
            return Ok(StoreSpec::Fjall(PathBuf::from(path)));
        }
        if let Some(path) = spec.strip_prefix("sled:") {
            if path.is_empty() {
                return Err("`sled:` needs a directory, e.g. `sled:./statecast-data`".into());
            }
            return Ok(StoreSpec::Sled(PathBuf::from(path)));
        }
        if let Some(path) = spec.strip_prefix("sqlite:") {
            if path.is_empty() {
                return Err("`sqlite:` needs a file path, e.g. `sqlite:./statecast.db`".into());
            }
            return Ok(StoreSpec::Sqlite(PathBuf::from(path)));
        }
        if let Some(rest) = spec.strip_prefix("postgres://").or_else(|| spec.strip_prefix("postgresql://")) {
            if rest.is_empty() {
                return Err("`postgres://` needs a host, e.g. `postgres://user:password@localhost/statecast`".into());
            }
            return Ok(StoreSpec::Postgres(spec.to_owned()));
        }
        Err(format!("unknown store `{spec}`: expected `sled:PATH`, `fjall:PATH`, `sqlite:PATH` or `postgres://…`"))
    }
}

/// A PostgreSQL URL with its password replaced by `***` (for logs and errors).
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

impl StoreSpec {
    /// The directory that holds the server's own files (the self-signed
    /// QUIC certificate): the sled or fjall directory, the SQLite file's
    /// directory, or `./statecast-data` for PostgreSQL.
    pub fn data_dir(&self) -> PathBuf {
        match self {
            StoreSpec::Sled(path) | StoreSpec::Fjall(path) => path.clone(),
            StoreSpec::Sqlite(file) => match file.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
                _ => PathBuf::from("."),
            },
            StoreSpec::Postgres(_) => PathBuf::from("./statecast-data"),
        }
    }
}

impl fmt::Display for StoreSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreSpec::Sled(path) => write!(f, "sled:{}", path.display()),
            StoreSpec::Fjall(path) => write!(f, "fjall:{}", path.display()),
            StoreSpec::Sqlite(path) => write!(f, "sqlite:{}", path.display()),
            StoreSpec::Postgres(url) => f.write_str(&redact_url(url)),
        }
    }
}

impl fmt::Debug for StoreSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreSpec({self})")
    }
}

/// A secret that never shows in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// The command line. Every flag overrides the same key of the config file.
#[derive(Clone, Debug, Default, Parser)]
#[command(name = "statecast-server", version, about = "Statecast: real-time state channels with optimistic writes")]
pub struct Args {
    /// What to do instead of serving (nothing: serve).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// A TOML config file; flags override its values.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// WebSocket listen address [default: 127.0.0.1:7100].
    #[arg(long, value_name = "HOST:PORT")]
    pub ws_addr: Option<SocketAddr>,
    /// WebSocket path [default: /ws].
    #[arg(long, value_name = "PATH")]
    pub ws_path: Option<String>,
    /// QUIC listen address (UDP), or `off` [default: 127.0.0.1:7101].
    #[arg(long, value_name = "HOST:PORT|off")]
    pub quic_addr: Option<String>,
    /// The QUIC certificate chain (PEM); with --quic-key. Without both, a
    /// self-signed certificate is made in (and reused from) the data directory.
    #[arg(long, value_name = "FILE", requires = "quic_key")]
    pub quic_cert: Option<PathBuf>,
    /// The QUIC private key (PEM); with --quic-cert.
    #[arg(long, value_name = "FILE", requires = "quic_cert")]
    pub quic_key: Option<PathBuf>,
    /// Where rows are stored: `sled:PATH`, `fjall:PATH`, `sqlite:PATH` or `postgres://user:password@host/db`
    /// [default: fjall:./statecast-data].
    #[arg(long, value_name = "SPEC")]
    pub store: Option<String>,
    /// demo (demo app + dev tokens), dev, or prod (JWT only) [default: demo].
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,
    /// How many jobs (contexts `job/1` … `job/N`) the demo rows hold, 2 to 500; only
    /// in demo mode, when the rows are inserted into an empty store [default: 2].
    #[arg(long, value_name = "N")]
    pub demo_jobs: Option<u32>,
    /// The environment variable holding the JWT HS256 secret [default: STATECAST_JWT_SECRET].
    #[arg(long, value_name = "NAME")]
    pub jwt_secret_env: Option<String>,
    /// Accept only JWTs whose `iss` claim is this [default: `iss` not checked].
    #[arg(long, value_name = "ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Accept only JWTs whose `aud` claim names this (repeat for several)
    /// [default: `aud` not checked].
    #[arg(long, value_name = "AUDIENCE")]
    pub jwt_audience: Vec<String>,
    /// The largest frame accepted or sent, in bytes [default: 1048576].
    #[arg(long, value_name = "BYTES")]
    pub frame_limit: Option<usize>,
    /// Frames queued per connection before it is closed as a slow consumer [default: 1024].
    #[arg(long, value_name = "FRAMES")]
    pub outbox_capacity: Option<usize>,
    /// Bytes queued per connection before it is closed as a slow consumer
    /// (4008); at least the frame limit [default: 8388608].
    #[arg(long, value_name = "BYTES")]
    pub outbox_bytes: Option<usize>,
    /// Route stream changes by the streams' index fields (`false` decides every
    /// change for every subscription: same events, for benchmarks) [default: true].
    #[arg(long, value_name = "BOOL")]
    pub stream_index: Option<bool>,
    /// How many recent commits the change log keeps for `since` resumes and
    /// other processes' tailers [default: 10000].
    #[arg(long, value_name = "COMMITS")]
    pub log_keep: Option<u64>,
    /// Also trim change-log entries older than this many seconds (SQL stores;
    /// at least 10) [default: no age limit].
    #[arg(long, value_name = "SECS")]
    pub log_max_age: Option<u64>,
    /// How long the embedded stores (fjall, sled, SQLite) wait after a commit
    /// before syncing it to disk, so more commits share one sync; each
    /// confirmation waits that much longer. At most 1000 [default: 0].
    #[arg(long, value_name = "MS")]
    pub flush_delay_ms: Option<u64>,
    /// How often the server pings each connection; one that answers nothing
    /// for 1.5 intervals is dropped (its presence leaves within two), 1 to
    /// 3600 [default: 20].
    #[arg(long, value_name = "SECS")]
    pub ping_interval: Option<u64>,
    /// Serve the inspector page at `/` [default: true, false in prod mode].
    #[arg(long, value_name = "BOOL")]
    pub inspector: Option<bool>,
    /// Serve `/metrics` (unauthenticated: keep the port private or turn it off) [default: true].
    #[arg(long, value_name = "BOOL")]
    pub metrics: Option<bool>,
    /// Log filter (tracing `EnvFilter` syntax) [default: $RUST_LOG, else the file's `log`, else info].
    #[arg(long, value_name = "FILTER")]
    pub log: Option<String>,
}

/// What the binary does instead of serving.
#[derive(Clone, Debug, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Print the app's schema and channels: the JSON clients get in `welcome`, or TypeScript with --ts.
    Schema {
        /// Print TypeScript interfaces for the entity types instead of JSON.
        #[arg(long)]
        ts: bool,
    },
    /// Print a JWT (HS256) signed with the secret serving uses (the variable
    /// --jwt-secret-env names, default STATECAST_JWT_SECRET, or the config
    /// file's `jwt_secret`), with the --jwt-issuer / --jwt-audience claims.
    Token {
        /// The user id (the token's `sub`), a positive number.
        #[arg(long, value_name = "ID")]
        sub: i64,
        /// How long the token is valid: 30m, 1h, 7d, …
        #[arg(long, value_name = "DURATION")]
        ttl: String,
        /// The user's name (the token's `name`).
        #[arg(long)]
        name: Option<String>,
    },
}

/// The config file: the same keys as the flags, in snake_case, plus `jwt_secret`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub ws_addr: Option<String>,
    pub ws_path: Option<String>,
    pub quic_addr: Option<String>,
    pub quic_cert: Option<PathBuf>,
    pub quic_key: Option<PathBuf>,
    pub store: Option<String>,
    pub mode: Option<Mode>,
    pub demo_jobs: Option<u32>,
    pub jwt_secret_env: Option<String>,
    pub jwt_secret: Option<String>,
    pub jwt_issuer: Option<String>,
    #[serde(default)]
    pub jwt_audience: Vec<String>,
    pub frame_limit: Option<usize>,
    pub outbox_capacity: Option<usize>,
    pub outbox_bytes: Option<usize>,
    pub stream_index: Option<bool>,
    pub log_keep: Option<u64>,
    pub log_max_age: Option<u64>,
    pub flush_delay_ms: Option<u64>,
    pub ping_interval: Option<u64>,
    pub inspector: Option<bool>,
    pub metrics: Option<bool>,
    pub log: Option<String>,
}

/// Why the configuration was refused. Every message names the flag or key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
    #[error(
        "mode `prod` needs a JWT secret: set the environment variable `{env}` (see --jwt-secret-env) \
         or `jwt_secret` in the config file"
    )]
    MissingSecret { env: String },
}

/// The resolved configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub ws_addr: SocketAddr,
    pub ws_path: String,
    /// The QUIC address; `None` when QUIC is off.
    pub quic_addr: Option<SocketAddr>,
    /// The QUIC certificate and key files; `None` for the self-signed development certificate.
    pub quic_cert: Option<(PathBuf, PathBuf)>,
    pub store: StoreSpec,
    pub mode: Mode,
    /// How many jobs the demo rows hold (demo mode).
    pub demo_jobs: u32,
    /// The environment variable the secret was looked up in.
    pub jwt_secret_env: String,
    /// The JWT HS256 secret, from that variable or else the file's `jwt_secret`.
    pub jwt_secret: Option<Secret>,
    /// The `iss` a JWT must carry, if checked.
    pub jwt_issuer: Option<String>,
    /// The `aud` values a JWT may carry (one must match), if checked.
    pub jwt_audience: Vec<String>,
    pub frame_limit: usize,
    pub outbox_capacity: usize,
    /// Bytes queued per connection before it counts as a slow consumer.
    pub outbox_bytes: usize,
    pub stream_index: bool,
    /// How many recent commits the change log keeps.
    pub log_keep: u64,
    /// Change-log entries older than this are trimmed too (SQL stores only).
    pub log_max_age: Option<Duration>,
    /// The embedded stores' group-commit delay before each sync.
    pub flush_delay: Duration,
    /// How often connections are pinged (a silent one is dropped after 1.5×).
    pub ping_interval: Duration,
    /// Serve the inspector page.
    pub inspector: bool,
    /// Serve `/metrics`.
    pub metrics: bool,
    pub log: String,
}

impl Config {
    /// How long a connection may stay silent (pongs included) before it is
    /// dropped: 1.5 ping intervals, so a peer that vanished is noticed at
    /// the second ping at the latest.
    pub fn idle_timeout(&self) -> Duration {
        self.ping_interval * 3 / 2
    }
}

/// Where a value came from, to name it in an error.
struct Origin<'a> {
    flag: &'static str,
    key: &'static str,
    file: Option<&'a Path>,
}

impl Origin<'_> {
    fn name(&self, from_flag: bool) -> String {
        match (from_flag, self.file) {
            (true, _) => self.flag.to_owned(),
            (false, Some(path)) => format!("`{}` in {}", self.key, path.display()),
            (false, None) => format!("the default of {}", self.flag),
        }
    }

    fn invalid(&self, from_flag: bool, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid { key: self.name(from_flag), message: message.into() }
    }
}

/// Picks the flag's value over the file's; tells whether it came from the flag.
fn pick<T>(flag: Option<T>, file: Option<T>) -> Option<(T, bool)> {
    flag.map(|v| (v, true)).or_else(|| file.map(|v| (v, false)))
}

impl Config {
    /// Parses the process's command line and environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::load(Args::parse(), |name| std::env::var(name).ok())
    }

    /// Resolves `args` (and the file they name) with `env` for environment lookups.
    pub fn load(args: Args, env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => Some(read_file(path)?),
            None => None,
        };
        Self::resolve(args, file.unwrap_or_default(), env)
    }

    fn resolve(args: Args, file: FileConfig, env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let path = args.config.as_deref();
        let origin = |flag, key| Origin { flag, key, file: path };

        let ws_addr =
            match pick(args.ws_addr.map(Ok), file.ws_addr.map(|s| s.parse::<SocketAddr>().map_err(|e| (s, e)))) {
                Some((Ok(addr), _)) => addr,
                Some((Err((s, e)), from_flag)) => {
                    return Err(origin("--ws-addr", "ws_addr")
                        .invalid(from_flag, format!("`{s}` is not an IP address and port like 127.0.0.1:7100 ({e})")));
                }
                None => DEFAULT_WS_ADDR
                    .parse()
                    .map_err(|e| origin("--ws-addr", "ws_addr").invalid(false, format!("{e}")))?,
            };

        let (ws_path, from_flag) = pick(args.ws_path, file.ws_path).unwrap_or((DEFAULT_WS_PATH.into(), false));
        if !ws_path.starts_with('/') || ws_path.contains(char::is_whitespace) {
            return Err(origin("--ws-path", "ws_path")
                .invalid(from_flag, format!("`{ws_path}` must start with `/` and contain no spaces")));
        }

        let (quic_addr, from_flag) = pick(args.quic_addr, file.quic_addr).unwrap_or((DEFAULT_QUIC_ADDR.into(), false));
        let quic_addr = if quic_addr.trim().eq_ignore_ascii_case(QUIC_OFF) {
            None
        } else {
            Some(quic_addr.trim().parse::<SocketAddr>().map_err(|e| {
                origin("--quic-addr", "quic_addr").invalid(
                    from_flag,
                    format!("`{quic_addr}` is not an IP address and port like 127.0.0.1:7101, nor `off` ({e})"),
                )
            })?)
        };

        // The certificate and its key come as a pair, from the flags or else from the file.
        let quic_cert = match (args.quic_cert, args.quic_key, file.quic_cert, file.quic_key) {
            (Some(cert), Some(key), _, _) => Some((cert, key)),
            (Some(_), None, ..) => return Err(origin("--quic-cert", "").invalid(true, "needs --quic-key as well")),
            (None, Some(_), ..) => return Err(origin("--quic-key", "").invalid(true, "needs --quic-cert as well")),
            (None, None, Some(cert), Some(key)) => Some((cert, key)),
            (None, None, Some(_), None) => {
                return Err(origin("--quic-cert", "quic_cert").invalid(false, "needs `quic_key` as well"));
            }
            (None, None, None, Some(_)) => {
                return Err(origin("--quic-key", "quic_key").invalid(false, "needs `quic_cert` as well"));
            }
            (None, None, None, None) => None,
        };

        let (store, from_flag) = pick(args.store, file.store).unwrap_or((DEFAULT_STORE.into(), false));
        let store = StoreSpec::parse(&store).map_err(|m| origin("--store", "store").invalid(from_flag, m))?;

        let mode = pick(args.mode, file.mode).map_or(Mode::default(), |(m, _)| m);

        let demo_jobs = match pick(args.demo_jobs, file.demo_jobs) {
            None => *DEMO_JOBS_RANGE.start(),
            Some((jobs, from_flag)) => {
                let origin = origin("--demo-jobs", "demo_jobs");
                if !mode.seeds_demo_rows() {
                    return Err(
                        origin.invalid(from_flag, format!("mode `{mode}` inserts no demo rows: use --mode demo"))
                    );
                }
                let range = DEMO_JOBS_RANGE;
                if !range.contains(&jobs) {
                    return Err(origin.invalid(
                        from_flag,
                        format!(
                            "{jobs} jobs is outside {}..={} (the demo rows are one batch)",
                            range.start(),
                            range.end()
                        ),
                    ));
                }
                jobs
            }
        };

        let (jwt_secret_env, from_flag) =
            pick(args.jwt_secret_env, file.jwt_secret_env).unwrap_or((DEFAULT_JWT_SECRET_ENV.into(), false));
        if jwt_secret_env.is_empty() || jwt_secret_env.contains(['=', '\0']) {
            return Err(origin("--jwt-secret-env", "jwt_secret_env")
                .invalid(from_flag, format!("`{jwt_secret_env}` is not an environment variable name")));
        }
        let from_env = env(&jwt_secret_env).filter(|s| !s.is_empty());
        let secret_origin = if from_env.is_some() {
            format!("the environment variable `{jwt_secret_env}`")
        } else {
            origin("", "jwt_secret").name(false)
        };
        let jwt_secret = from_env.or(file.jwt_secret.filter(|s| !s.is_empty())).map(Secret);
        let jwt_issuer = args.jwt_issuer.or(file.jwt_issuer).filter(|s| !s.is_empty());
        let file_audience_unused = !args.jwt_audience.is_empty();
        let jwt_audience = if file_audience_unused { args.jwt_audience } else { file.jwt_audience };
        if jwt_audience.iter().any(String::is_empty) {
            let from_flag = file_audience_unused;
            return Err(origin("--jwt-audience", "jwt_audience").invalid(from_flag, "an audience can't be empty"));
        }

        let (frame_limit, from_flag) = pick(args.frame_limit, file.frame_limit).unwrap_or((DEFAULT_FRAME_LIMIT, false));
        if !FRAME_LIMIT_RANGE.contains(&frame_limit) {
            return Err(origin("--frame-limit", "frame_limit").invalid(
                from_flag,
                format!("{frame_limit} bytes is outside {}..={}", FRAME_LIMIT_RANGE.start(), FRAME_LIMIT_RANGE.end()),
            ));
        }

        let default_outbox = EngineConfig::default().outbox_capacity;
        let (outbox_capacity, from_flag) =
            pick(args.outbox_capacity, file.outbox_capacity).unwrap_or((default_outbox, false));
        if outbox_capacity == 0 {
            return Err(origin("--outbox-capacity", "outbox_capacity").invalid(from_flag, "must be at least 1"));
        }

        let (outbox_bytes, from_flag) =
            pick(args.outbox_bytes, file.outbox_bytes).unwrap_or((DEFAULT_OUTBOX_BYTES.max(frame_limit), false));
        if outbox_bytes < frame_limit {
            return Err(origin("--outbox-bytes", "outbox_bytes").invalid(
                from_flag,
                format!("{outbox_bytes} bytes is below the frame limit ({frame_limit}): one frame must fit"),
            ));
        }

        let stream_index = args.stream_index.or(file.stream_index).unwrap_or(true);

        let (log_keep, from_flag) = pick(args.log_keep, file.log_keep).unwrap_or((DEFAULT_LOG_KEEP, false));
        if log_keep == 0 {
            return Err(origin("--log-keep", "log_keep").invalid(from_flag, "must be at least 1 commit"));
        }
        let log_max_age = match pick(args.log_max_age, file.log_max_age) {
            None => None,
            Some((secs, from_flag)) => {
                let origin = origin("--log-max-age", "log_max_age");
                if secs < MIN_LOG_MAX_AGE_SECS {
                    return Err(origin.invalid(
                        from_flag,
                        format!(
                            "{secs} s is too short: other processes and resuming clients read the log, \
                             keep it at least {MIN_LOG_MAX_AGE_SECS} s"
                        ),
                    ));
                }
                if matches!(store, StoreSpec::Sled(_) | StoreSpec::Fjall(_)) {
                    return Err(origin.invalid(
                        from_flag,
                        "the embedded stores (sled, fjall) trim their change log by count only: use --log-keep (`log_keep`)",
                    ));
                }
                Some(Duration::from_secs(secs))
            }
        };

        let (flush_delay_ms, from_flag) = pick(args.flush_delay_ms, file.flush_delay_ms).unwrap_or((0, false));
        if flush_delay_ms > MAX_FLUSH_DELAY_MS {
            return Err(origin("--flush-delay-ms", "flush_delay_ms")
                .invalid(from_flag, format!("{flush_delay_ms} ms is above {MAX_FLUSH_DELAY_MS} ms")));
        }
        if flush_delay_ms > 0 && matches!(store, StoreSpec::Postgres(_)) {
            return Err(origin("--flush-delay-ms", "flush_delay_ms")
                .invalid(from_flag, "PostgreSQL makes each commit durable itself: use its `commit_delay`"));
        }
        let flush_delay = Duration::from_millis(flush_delay_ms);
        let (ping_secs, from_flag) = pick(args.ping_interval, file.ping_interval).unwrap_or((20, false));
        if !(1..=3600).contains(&ping_secs) {
            return Err(origin("--ping-interval", "ping_interval")
                .invalid(from_flag, format!("{ping_secs} s is not between 1 and 3600 s")));
        }
        let ping_interval = Duration::from_secs(ping_secs);
        let inspector = args.inspector.or(file.inspector).unwrap_or(mode != Mode::Prod);
        let metrics = args.metrics.or(file.metrics).unwrap_or(true);

        // Precedence for the log filter: flag, then RUST_LOG, then the file, then `info`.
        let (log, log_name) = match (args.log, env("RUST_LOG").filter(|s| !s.is_empty()), file.log) {
            (Some(l), _, _) => (l, "--log".to_owned()),
            (None, Some(l), _) => (l, "the environment variable `RUST_LOG`".to_owned()),
            (None, None, Some(l)) => (l, origin("--log", "log").name(false)),
            (None, None, None) => (DEFAULT_LOG.to_owned(), "--log".to_owned()),
        };
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&log) {
            return Err(ConfigError::Invalid { key: log_name, message: format!("`{log}` is not a log filter: {e}") });
        }

        if mode == Mode::Prod {
            match &jwt_secret {
                None => return Err(ConfigError::MissingSecret { env: jwt_secret_env }),
                Some(s) if s.expose().len() < MIN_PROD_SECRET_LEN => {
                    return Err(ConfigError::Invalid {
                        key: secret_origin,
                        message: format!("a prod JWT secret must be at least {MIN_PROD_SECRET_LEN} bytes long"),
                    });
                }
                Some(_) => {}
            }
        }

        Ok(Config {
            ws_addr,
            ws_path,
            quic_addr,
            quic_cert,
            store,
            mode,
            demo_jobs,
            jwt_secret_env,
            jwt_secret,
            jwt_issuer,
            jwt_audience,
            frame_limit,
            outbox_capacity,
            outbox_bytes,
            stream_index,
            log_keep,
            log_max_age,
            flush_delay,
            ping_interval,
            inspector,
            metrics,
            log,
        })
    }

    /// Where the QUIC certificate comes from: the configured files, or the
    /// self-signed development certificate in the store's data directory.
    pub fn quic_tls(&self) -> statecast_transport_quic::ServerTls {
        match &self.quic_cert {
            Some((cert, key)) => statecast_transport_quic::ServerTls::Files { cert: cert.clone(), key: key.clone() },
            None => statecast_transport_quic::ServerTls::SelfSigned { dir: self.store.data_dir() },
        }
    }

    /// The engine tunables this configuration sets (the rest keep their defaults).
    pub fn engine_config(&self) -> EngineConfig {
        EngineConfig {
            frame_limit: self.frame_limit,
            outbox_capacity: self.outbox_capacity,
            stream_index: self.stream_index,
            ..EngineConfig::default()
        }
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse { path: path.into(), message: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn args(flags: &[&str]) -> Args {
        let argv = std::iter::once("statecast-server").chain(flags.iter().copied());
        Args::try_parse_from(argv).expect("flags parse")
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn load(flags: &[&str]) -> Result<Config, ConfigError> {
        Config::load(args(flags), no_env)
    }

    /// Writes `toml` to a file in a fresh directory; returns both (the directory must outlive the test).
    fn config_file(toml: &str) -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("statecast.toml");
        std::fs::write(&path, toml).expect("write config");
        let path = path.to_str().expect("utf-8 path").to_owned();
        (dir, path)
    }

    fn error(r: Result<Config, ConfigError>) -> String {
        r.expect_err("must be refused").to_string()
    }

    #[test]
    fn defaults() {
        let c = load(&[]).expect("defaults are valid");
        assert_eq!(c.ws_addr, "127.0.0.1:7100".parse().expect("addr"));
        assert_eq!(c.ws_path, "/ws");
        assert_eq!(c.quic_addr, Some("127.0.0.1:7101".parse().expect("addr")));
        assert_eq!(c.quic_cert, None);
        assert_eq!(
            c.quic_tls(),
            statecast_transport_quic::ServerTls::SelfSigned { dir: "./statecast-data".into() },
            "the self-signed certificate lives in the store directory"
        );
        assert_eq!(c.store, StoreSpec::Fjall("./statecast-data".into()));
        assert_eq!(c.mode, Mode::Demo);
        assert_eq!(c.jwt_secret_env, "STATECAST_JWT_SECRET");
        assert_eq!(c.jwt_secret, None);
        assert_eq!(c.frame_limit, 1_048_576);
        assert_eq!(c.outbox_capacity, EngineConfig::default().outbox_capacity);
        assert_eq!(c.log, DEFAULT_LOG);
        assert!(c.mode.allows_dev_tokens() && c.mode.seeds_demo_rows());
    }

    #[test]
    fn flags_set_every_value() {
        let c = load(&[
            "--ws-addr",
            "127.0.0.1:0",
            "--ws-path",
            "/sync",
            "--store",
            "sled:/tmp/x",
            "--mode",
            "dev",
            "--jwt-secret-env",
            "MY_SECRET",
            "--frame-limit",
            "4096",
            "--outbox-capacity",
            "8",
            "--log",
            "debug,sled=warn",
        ])
        .expect("valid");
        assert_eq!(c.ws_addr.port(), 0);
        assert_eq!(c.ws_path, "/sync");
        assert_eq!(c.store, StoreSpec::Sled("/tmp/x".into()));
        assert_eq!(c.mode, Mode::Dev);
        assert_eq!(c.jwt_secret_env, "MY_SECRET");
        assert_eq!((c.frame_limit, c.outbox_capacity), (4096, 8));
        assert_eq!(c.log, "debug,sled=warn");
        let e = c.engine_config();
        assert_eq!((e.frame_limit, e.outbox_capacity), (4096, 8));
    }

    #[test]
    fn the_stream_index_is_on_unless_turned_off() {
        assert!(load(&[]).expect("valid").engine_config().stream_index);
        let c = load(&["--stream-index", "false"]).expect("valid");
        assert!(!c.stream_index && !c.engine_config().stream_index);
        let (_dir, path) = config_file("stream_index = false");
        assert!(!load(&["--config", &path]).expect("valid").stream_index);
        assert!(load(&["--config", &path, "--stream-index", "true"]).expect("valid").stream_index);
    }

    #[test]
    fn the_file_is_read_and_flags_override_it() {
        let (_dir, path) = config_file(
            r#"
            ws_addr = "0.0.0.0:9000"
            ws_path = "/live"
            store = "sled:/var/lib/statecast"
            mode = "dev"
            frame_limit = 2048
            outbox_capacity = 16
            log = "warn"
            "#,
        );
        let c = load(&["--config", &path]).expect("valid file");
        assert_eq!(c.ws_addr, "0.0.0.0:9000".parse().expect("addr"));
        assert_eq!((c.ws_path.as_str(), c.mode, c.frame_limit, c.outbox_capacity), ("/live", Mode::Dev, 2048, 16));
        assert_eq!(c.store, StoreSpec::Sled("/var/lib/statecast".into()));
        assert_eq!(c.log, "warn");

        let c = load(&["--config", &path, "--ws-addr", "127.0.0.1:1", "--frame-limit", "4096", "--mode", "demo"])
            .expect("valid");
        assert_eq!(c.ws_addr, "127.0.0.1:1".parse().expect("addr"));
        assert_eq!((c.frame_limit, c.mode), (4096, Mode::Demo));
        assert_eq!(c.ws_path, "/live", "keys without a flag keep the file's value");
    }

    #[test]
    fn the_secret_comes_from_the_named_variable_or_the_file() {
        let vars: HashMap<&str, &str> = [("STATECAST_JWT_SECRET", "from-env"), ("OTHER", "from-other")].into();
        let env = |k: &str| vars.get(k).map(|v| (*v).to_owned());
        let c = Config::load(args(&[]), env).expect("valid");
        assert_eq!(c.jwt_secret, Some(Secret::new("from-env")));
        let c = Config::load(args(&["--jwt-secret-env", "OTHER"]), env).expect("valid");
        assert_eq!(c.jwt_secret, Some(Secret::new("from-other")));

        let (_dir, path) = config_file(r#"jwt_secret = "from-file""#);
        let c = load(&["--config", &path]).expect("valid");
        assert_eq!(c.jwt_secret, Some(Secret::new("from-file")));
        let c = Config::load(args(&["--config", &path]), env).expect("valid");
        assert_eq!(c.jwt_secret, Some(Secret::new("from-env")), "the environment wins over the file");
        assert_eq!(format!("{:?}", c.jwt_secret), "Some(Secret(..))", "secrets are not printed");
    }

    #[test]
    fn change_log_retention_by_count_and_age() {
        let c = load(&[]).expect("valid");
        assert_eq!((c.log_keep, c.log_max_age), (DEFAULT_LOG_KEEP, None), "by count only by default");
        let c = load(&["--store", "sqlite:/tmp/s.db", "--log-keep", "500", "--log-max-age", "3600"]).expect("valid");
        assert_eq!((c.log_keep, c.log_max_age), (500, Some(Duration::from_secs(3600))));
        let (_dir, path) = config_file("store = \"postgres://u@h/db\"\nlog_keep = 20\nlog_max_age = 60");
        let c = load(&["--config", &path]).expect("valid file");
        assert_eq!((c.log_keep, c.log_max_age), (20, Some(Duration::from_secs(60))));
        let c = load(&["--config", &path, "--log-keep", "30"]).expect("valid");
        assert_eq!(c.log_keep, 30, "the flag wins");

        let e = error(load(&["--log-keep", "0"]));
        assert!(e.starts_with("--log-keep: ") && e.contains("at least 1"), "{e}");
        let e = error(load(&["--store", "sqlite:/tmp/s.db", "--log-max-age", "9"]));
        assert!(e.starts_with("--log-max-age: ") && e.contains("at least 10 s"), "{e}");
        let e = error(load(&["--log-max-age", "60"]));
        assert!(e.starts_with("--log-max-age: ") && e.contains("sled") && e.contains("--log-keep"), "{e}");
        let (_dir, path) = config_file("store = \"sqlite:/tmp/s.db\"\nlog_max_age = 1");
        let e = error(load(&["--config", &path]));
        assert!(e.contains("`log_max_age`") && e.contains("at least 10 s"), "{e}");
        assert!(Args::try_parse_from(["statecast-server", "--log-keep", "-5"]).is_err(), "not a count");
    }

    #[test]
    fn demo_jobs_only_in_demo_mode_and_in_range() {
        assert_eq!(load(&[]).expect("valid").demo_jobs, 2);
        assert_eq!(load(&["--demo-jobs", "64"]).expect("valid").demo_jobs, 64);
        let (_dir, path) = config_file("demo_jobs = 500");
        assert_eq!(load(&["--config", &path]).expect("valid file").demo_jobs, 500);

        let e = error(load(&["--demo-jobs", "1"]));
        assert!(e.starts_with("--demo-jobs: ") && e.contains("outside 2..=500"), "{e}");
        let e = error(load(&["--demo-jobs", "501"]));
        assert!(e.starts_with("--demo-jobs: ") && e.contains("outside 2..=500"), "{e}");
        let e = error(load(&["--mode", "dev", "--demo-jobs", "8"]));
        assert!(e.starts_with("--demo-jobs: ") && e.contains("mode `dev`"), "{e}");
        let (_dir, path) = config_file("mode = \"dev\"\ndemo_jobs = 8");
        let e = error(load(&["--config", &path]));
        assert!(e.contains("`demo_jobs`") && e.contains("mode `dev`"), "{e}");
        assert!(Args::try_parse_from(["statecast-server", "--demo-jobs", "-3"]).is_err(), "not a count");
    }

    #[test]
    fn the_schema_subcommand() {
        assert_eq!(args(&[]).command, None, "no subcommand: serve");
        assert_eq!(args(&["schema"]).command, Some(Command::Schema { ts: false }));
        assert_eq!(args(&["schema", "--ts"]).command, Some(Command::Schema { ts: true }));
        assert!(Args::try_parse_from(["statecast-server", "schema", "--tsx"]).is_err());
        assert!(load(&["--ws-addr", "127.0.0.1:0"]).is_ok(), "flags without a subcommand still serve");
    }

    #[test]
    fn quic_settings_from_flags_and_file() {
        let c = load(&["--quic-addr", "127.0.0.1:0", "--store", "sled:/tmp/d"]).expect("valid");
        assert_eq!(c.quic_addr.map(|a| a.port()), Some(0));
        assert_eq!(c.quic_tls(), statecast_transport_quic::ServerTls::SelfSigned { dir: "/tmp/d".into() });
        assert_eq!(load(&["--quic-addr", "off"]).expect("valid").quic_addr, None);
        assert_eq!(load(&["--quic-addr", "OFF"]).expect("valid").quic_addr, None);
        let c = load(&["--quic-cert", "c.pem", "--quic-key", "k.pem"]).expect("valid");
        assert_eq!(
            c.quic_tls(),
            statecast_transport_quic::ServerTls::Files { cert: "c.pem".into(), key: "k.pem".into() }
        );

        let (_dir, path) = config_file(
            r#"
            quic_addr = "0.0.0.0:9001"
            quic_cert = "/etc/statecast/cert.pem"
            quic_key = "/etc/statecast/key.pem"
            "#,
        );
        let c = load(&["--config", &path]).expect("valid file");
        assert_eq!(c.quic_addr, Some("0.0.0.0:9001".parse().expect("addr")));
        assert_eq!(c.quic_cert, Some(("/etc/statecast/cert.pem".into(), "/etc/statecast/key.pem".into())));
        let c = load(&["--config", &path, "--quic-addr", "off"]).expect("valid");
        assert_eq!(c.quic_addr, None, "the flag wins");

        let e = error(load(&["--quic-addr", "nowhere"]));
        assert!(e.starts_with("--quic-addr: ") && e.contains("off"), "{e}");
        let (_dir, path) = config_file(r#"quic_addr = "udp://x""#);
        let e = error(load(&["--config", &path]));
        assert!(e.starts_with("`quic_addr`") && e.contains(&path), "{e}");
        let (_dir, path) = config_file(r#"quic_cert = "c.pem""#);
        let e = error(load(&["--config", &path]));
        assert!(e.contains("quic_key"), "{e}");
        let e = Args::try_parse_from(["statecast-server", "--quic-cert", "c.pem"]).expect_err("alone").to_string();
        assert!(e.contains("--quic-key"), "{e}");
    }

    #[test]
    fn the_secret_is_never_a_flag() {
        assert!(Args::try_parse_from(["statecast-server", "--jwt-secret", "x"]).is_err());
    }

    #[test]
    fn prod_needs_a_long_enough_secret() {
        let e = error(load(&["--mode", "prod"]));
        assert!(e.contains("STATECAST_JWT_SECRET") && e.contains("prod"), "{e}");
        let short = |_: &str| Some("short".to_owned());
        let e = error(Config::load(args(&["--mode", "prod"]), short));
        assert!(e.contains("STATECAST_JWT_SECRET") && e.contains("32"), "{e}");
        let long = |_: &str| Some("x".repeat(MIN_PROD_SECRET_LEN));
        let c = Config::load(args(&["--mode", "prod"]), long).expect("valid");
        assert!(!c.mode.allows_dev_tokens() && !c.mode.seeds_demo_rows());
    }

    #[test]
    fn store_specs() {
        assert_eq!(StoreSpec::parse("sled:data"), Ok(StoreSpec::Sled("data".into())));
        assert_eq!(StoreSpec::Sled("data".into()).to_string(), "sled:data");
        assert_eq!(StoreSpec::parse("fjall:data"), Ok(StoreSpec::Fjall("data".into())));
        assert_eq!(StoreSpec::Fjall("data".into()).to_string(), "fjall:data");
        assert_eq!(StoreSpec::parse("sqlite:db.sqlite"), Ok(StoreSpec::Sqlite("db.sqlite".into())));
        assert_eq!(StoreSpec::Sqlite("db.sqlite".into()).to_string(), "sqlite:db.sqlite");
        let url = "postgres://app:s3cret@db.example:5432/statecast?sslmode=require";
        assert_eq!(StoreSpec::parse(url), Ok(StoreSpec::Postgres(url.into())));
        let shown = StoreSpec::Postgres(url.into()).to_string();
        assert_eq!(shown, "postgres://app:***@db.example:5432/statecast?sslmode=require");
        assert!(!format!("{:?}", StoreSpec::Postgres(url.into())).contains("s3cret"));
        assert_eq!(
            StoreSpec::parse("postgresql://localhost/db"),
            Ok(StoreSpec::Postgres("postgresql://localhost/db".into()))
        );
        assert_eq!(redact_url("postgres://localhost/db"), "postgres://localhost/db");
        for (spec, needle) in [
            ("sled:", "needs a directory"),
            ("fjall:", "needs a directory"),
            ("sqlite:", "needs a file path"),
            ("postgres://", "needs a host"),
            ("redis://x", "unknown store"),
            ("./data", "unknown store"),
        ] {
            let e = StoreSpec::parse(spec).expect_err(spec);
            assert!(e.contains(needle), "{spec}: {e}");
            let e = error(load(&["--store", spec]));
            assert!(e.starts_with("--store: "), "{e}");
        }
    }

    #[test]
    fn bad_flags_name_the_flag() {
        let e = Args::try_parse_from(["statecast-server", "--ws-addr", "nowhere"]).expect_err("bad addr").to_string();
        assert!(e.contains("--ws-addr"), "{e}");
        let e = Args::try_parse_from(["statecast-server", "--mode", "staging"]).expect_err("bad mode").to_string();
        assert!(e.contains("--mode"), "{e}");
        let e = Args::try_parse_from(["statecast-server", "--frame-limit", "-1"]).expect_err("bad limit").to_string();
        assert!(e.contains("--frame-limit") || e.contains("-1"), "{e}");

        for (flags, key) in [
            (&["--ws-path", "ws"][..], "--ws-path"),
            (&["--frame-limit", "10"], "--frame-limit"),
            (&["--frame-limit", "1000000000"], "--frame-limit"),
            (&["--outbox-capacity", "0"], "--outbox-capacity"),
            (&["--log", "info,,=%%"], "--log"),
            (&["--jwt-secret-env", ""], "--jwt-secret-env"),
        ] {
            let e = error(load(flags));
            assert!(e.starts_with(&format!("{key}: ")), "{flags:?}: {e}");
        }
    }

    #[test]
    fn bad_file_values_name_the_key_and_file() {
        for (toml, key) in [
            (r#"ws_addr = "nowhere""#, "`ws_addr`"),
            (r#"ws_path = "ws""#, "`ws_path`"),
            (r#"store = "mysql://x""#, "`store`"),
            ("frame_limit = 1", "`frame_limit`"),
            ("outbox_capacity = 0", "`outbox_capacity`"),
        ] {
            let (_dir, path) = config_file(toml);
            let e = error(load(&["--config", &path]));
            assert!(e.starts_with(key) && e.contains(&path), "{toml}: {e}");
        }
        for (toml, needle) in [
            (r#"mode = "staging""#, "mode"),
            ("frame_limit = -5", "frame_limit"),
            (r#"ws_adr = "127.0.0.1:1""#, "ws_adr"),
            ("frame_limit = ", "frame_limit"),
        ] {
            let (_dir, path) = config_file(toml);
            let e = error(load(&["--config", &path]));
            assert!(e.contains(&path) && e.contains(needle), "{toml}: {e}");
        }
    }

    #[test]
    fn a_flag_fixes_a_bad_file_value() {
        let (_dir, path) = config_file(r#"ws_path = "ws""#);
        let c = load(&["--config", &path, "--ws-path", "/ok"]).expect("the flag wins");
        assert_eq!(c.ws_path, "/ok");
    }

    #[test]
    fn a_missing_file_is_an_error() {
        let e = error(load(&["--config", "/nonexistent/statecast.toml"]));
        assert!(e.contains("/nonexistent/statecast.toml"), "{e}");
    }

    #[test]
    fn log_precedence() {
        let (_dir, path) = config_file(r#"log = "warn""#);
        let rust_log = |k: &str| (k == "RUST_LOG").then(|| "debug".to_owned());
        assert_eq!(load(&["--config", &path]).expect("valid").log, "warn");
        assert_eq!(Config::load(args(&["--config", &path]), rust_log).expect("valid").log, "debug");
        assert_eq!(Config::load(args(&["--config", &path, "--log", "error"]), rust_log).expect("valid").log, "error");
    }
}
