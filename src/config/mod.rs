//! Command-line flags, environment variables and the configuration file of `herald serve`,
//! validated into the `Config` that the rest of the server reads (shared as `Arc<Config>`).

pub mod file;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

pub use crate::server::tls::Files as TlsFiles;

/// `--drain-delay` outside `--dev`: load balancers commonly check health every few seconds.
/// In `--dev` there is none to wait for, and Ctrl-C should stop at once.
const DRAIN_DELAY: Duration = Duration::from_secs(5);

/// Name of the file in the data dir that keeps the `--dev` JWT secret across restarts.
pub const DEV_SECRET_FILE: &str = "dev-jwt-secret";

/// Flags of `herald serve`. Every flag has an environment variable, a key in the
/// configuration file (`file::KEYS`) and a default in `--help`. Values are checked by their
/// parsers, so a bad one is refused naming its flag, variable or key.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Read settings from this TOML file (`herald config example` prints one with every key);
    /// flags and variables override what it sets.
    #[arg(long, env = "HERALD_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Address to listen on. `--dev` forces a loopback address.
    #[arg(long, env = "HERALD_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Serve HTTPS with this certificate chain (PEM, leaf first), offering HTTP/2 and
    /// HTTP/1.1; read again on SIGHUP and when the file changes. Needs `--tls-key`.
    #[arg(long, env = "HERALD_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The private key of `--tls-cert` (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "HERALD_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Directory for the store and the `--dev` JWT secret.
    #[arg(long, env = "HERALD_DATA_DIR", default_value = "./herald-data")]
    pub data_dir: PathBuf,

    /// Keep everything in memory: nothing survives a restart (tests, demos).
    #[arg(long, env = "HERALD_MEMORY")]
    pub memory: bool,

    /// Laptop mode: loopback only, generated JWT secret, open publishing, `/dev/token`.
    #[arg(long, env = "HERALD_DEV")]
    pub dev: bool,

    /// HS256 secret that subscriber and publisher tokens are signed with.
    #[arg(long, env = "HERALD_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// `--jwt-secret` read from this file (surrounding whitespace trimmed), as container
    /// platforms mount secrets.
    #[arg(long, env = "HERALD_JWT_SECRET_FILE", value_name = "FILE", value_parser = read_secret_file, conflicts_with = "jwt_secret")]
    pub jwt_secret_file: Option<SecretFile>,

    /// RS256/ES256 public keys that tokens are signed with (by `kid`): a JWKS file, read
    /// again when it changes, or an identity provider's `https://` JWKS URL.
    #[arg(long, env = "HERALD_JWKS", value_parser = parse_jwks)]
    pub jwks: Option<JwksSource>,

    /// How often a `--jwks` URL is fetched again (also at once, at most every 5 s, when a
    /// token names a key not known yet).
    #[arg(long, env = "HERALD_JWKS_REFRESH", default_value = "5m", value_parser = humantime::parse_duration)]
    pub jwks_refresh: Duration,

    /// Static API key accepted as `Authorization: Bearer <key>` on publishing endpoints.
    /// Repeat the flag for several keys; the variable takes a comma-separated list.
    #[arg(
        long = "publisher-key",
        env = "HERALD_PUBLISHER_KEYS",
        value_delimiter = ',',
        hide_env_values = true,
        value_parser = publisher_key
    )]
    pub publisher_keys: Vec<String>,

    /// `--publisher-key`s read from this file, one per line (blank lines and lines starting
    /// with `#` skipped); added to any given by flag.
    #[arg(long, env = "HERALD_PUBLISHER_KEYS_FILE", value_name = "FILE", value_parser = read_key_file)]
    pub publisher_keys_file: Option<KeyFile>,

    /// Events kept per stream for resuming subscribers.
    #[arg(long, env = "HERALD_HISTORY_SIZE", default_value_t = 1000, value_parser = at_least_one)]
    pub history_size: usize,

    /// How long an event stays in history.
    #[arg(long, env = "HERALD_HISTORY_TTL", default_value = "24h", value_parser = humantime::parse_duration)]
    pub history_ttl: Duration,

    /// How long a stream remembers a publish's `Idempotency-Key`: a repeat within it is
    /// answered with the first publish's ids instead of being appended again.
    #[arg(long, env = "HERALD_IDEMPOTENCY_WINDOW", default_value = "5m", value_parser = longer_than_zero)]
    pub idempotency_window: Duration,

    /// Interval of SSE keep-alive comments, so proxies keep idle streams open.
    #[arg(long, env = "HERALD_SSE_KEEPALIVE", default_value = "15s", value_parser = humantime::parse_duration)]
    pub sse_keepalive: Duration,

    /// Events a subscriber may fall behind before it is disconnected as a slow consumer.
    #[arg(long, env = "HERALD_SUBSCRIBER_QUEUE", default_value_t = 1024, value_parser = at_least_one)]
    pub subscriber_queue: usize,

    /// Most subscribers connected at once, across SSE, WebSocket and long-poll.
    #[arg(long, env = "HERALD_MAX_CONNECTIONS", default_value_t = 65_536)]
    pub max_connections: usize,

    /// Worker threads, each serving connections and owning a shard of the streams; one per
    /// CPU core Herald may run on when not given.
    #[arg(long, env = "HERALD_WORKERS", value_parser = clap::value_parser!(u16).range(1..))]
    pub workers: Option<u16>,

    /// Concurrent long-polls of one instance's notifications; more get 409.
    #[arg(long, env = "HERALD_MAX_LISTENERS_PER_INSTANCE", default_value_t = 4, value_parser = at_least_one)]
    pub max_listeners_per_instance: usize,

    /// Largest request body accepted by publishing endpoints, in bytes.
    #[arg(long, env = "HERALD_MAX_BODY", default_value_t = 1024 * 1024)]
    pub max_body: usize,

    /// How long a request body may go without a byte arriving before the request is answered
    /// 408 and its connection closed (nginx's `client_body_timeout`), so a stalled upload
    /// holds no memory or connection for ever.
    #[arg(long, env = "HERALD_BODY_TIMEOUT", default_value = "60s", value_parser = longer_than_zero)]
    pub body_timeout: Duration,

    /// How long a graceful shutdown may take before connections are cut.
    #[arg(long, env = "HERALD_SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Duration,

    /// How long a draining server keeps accepting connections, answering `/health` with 503,
    /// so that a load balancer takes it out before it stops accepting. 5s, or 0 with --dev.
    #[arg(long, env = "HERALD_DRAIN_DELAY", value_parser = humantime::parse_duration)]
    pub drain_delay: Option<Duration>,

    /// Limit of one webhook attempt, from connecting to the end of the answer.
    #[arg(long, env = "HERALD_WEBHOOK_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub webhook_timeout: Duration,

    /// Delays before each retry of a failed webhook delivery (jittered by up to 20%); after
    /// the last one the delivery is given up.
    #[arg(long, env = "HERALD_WEBHOOK_RETRY_SCHEDULE", default_value = crate::webhook::retry::DEFAULT_SCHEDULE, value_parser = parse_retry_schedule)]
    pub webhook_retry_schedule: RetrySchedule,

    /// Let webhooks target loopback, private and other non-public addresses (implied by --dev).
    #[arg(long, env = "HERALD_WEBHOOK_ALLOW_PRIVATE")]
    pub webhook_allow_private: bool,

    /// Require a publisher credential on the dashboard endpoints (open by default).
    #[arg(long, env = "HERALD_DASHBOARD_AUTH")]
    pub dashboard_auth: bool,

    /// Interval of WebSocket pings; a client that sends no pong for two intervals is closed.
    #[arg(long, env = "HERALD_WS_PING", default_value = "30s", value_parser = longer_than_zero)]
    pub ws_ping: Duration,

    /// How long a new WebSocket may take to send its announcement before it is closed.
    #[arg(long, env = "HERALD_WS_ANNOUNCE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub ws_announce_timeout: Duration,

    /// Cluster mode: keep streams and shared state in this Redis, so that every node started
    /// with the same URL acts as one broker: one server (`redis://127.0.0.1:6379/`), or the
    /// primary that Redis Sentinels watch
    /// (`redis+sentinel://[:password@]h1:26379,h2:26379/mymaster[/db]`), followed through
    /// failovers.
    #[arg(long, alias = "redis-url", env = "HERALD_REDIS", value_parser = parse_redis_url)]
    pub redis: Option<String>,

    /// Cluster mode: a publish is acknowledged only once this many replicas of the Redis
    /// primary hold it (Redis `WAIT`); one that is not replicated within a second answers 503.
    #[arg(long, env = "HERALD_REDIS_REPLICAS", default_value_t = 0)]
    pub redis_replicas: u32,

    /// This node's name in the cluster, unique among the nodes of one Redis; a random one
    /// when not given.
    #[arg(long, env = "HERALD_NODE_NAME", value_parser = not_blank)]
    pub node_name: Option<String>,
}

/// Checks `--redis` as the client will read it, so a typo is refused at start in one line.
fn parse_redis_url(url: &str) -> Result<String, String> {
    crate::cluster::primary::Topology::parse(url).map(|_| url.to_string())
}

/// A count that must be at least 1 (`--history-size`, `--subscriber-queue`, ...).
fn at_least_one(value: &str) -> Result<usize, String> {
    match value.parse::<usize>().map_err(|e| e.to_string())? {
        0 => Err("must be at least 1".into()),
        n => Ok(n),
    }
}

/// A duration that must be longer than zero (`--ws-ping`, `--body-timeout`, ...).
fn longer_than_zero(value: &str) -> Result<Duration, String> {
    match humantime::parse_duration(value).map_err(|e| e.to_string())? {
        d if d.is_zero() => Err("must be longer than zero".into()),
        d => Ok(d),
    }
}

fn not_blank(value: &str) -> Result<String, String> {
    if value.trim().is_empty() {
        return Err("must not be empty".into());
    }
    Ok(value.to_string())
}

/// A `--publisher-key`: a blank one would let a bare `Bearer ` publish. (Its value is a
/// secret, but a blank one reveals nothing in clap's message.)
fn publisher_key(value: &str) -> Result<String, String> {
    if value.trim().is_empty() {
        return Err(
            "must not hold an empty key (HERALD_PUBLISHER_KEYS: no empty item between commas)"
                .into(),
        );
    }
    Ok(value.to_string())
}

/// Parsed `--webhook-retry-schedule`: the delays before each retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySchedule(pub Vec<Duration>);

fn parse_retry_schedule(value: &str) -> Result<RetrySchedule, String> {
    crate::webhook::retry::parse_schedule(value)
        .map(RetrySchedule)
        .map_err(|e| e.to_string())
}

/// `--jwt-secret-file`: the file and the secret it holds, read once at start.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretFile {
    pub path: PathBuf,
    pub secret: String,
}

/// Names the file, never the secret (`ServeArgs` is logged in tests and errors).
impl std::fmt::Debug for SecretFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretFile({})", self.path.display())
    }
}

/// Reads a secret file, refusing one too short to be an HS256 secret: an empty file is as
/// dangerous as an unset variable.
pub fn read_secret_file(path: &str) -> Result<SecretFile, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read it: {e}"))?;
    let secret = text.trim().to_string();
    if secret.len() < MIN_SECRET_BYTES {
        return Err(format!(
            "holds {} bytes; an HS256 secret needs at least {MIN_SECRET_BYTES} (RFC 7518 §3.2), e.g. `openssl rand -hex 32`",
            secret.len()
        ));
    }
    Ok(SecretFile {
        path: path.into(),
        secret,
    })
}

/// `--publisher-keys-file`: the file and the keys it lists.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyFile {
    pub path: PathBuf,
    pub keys: Vec<String>,
}

impl std::fmt::Debug for KeyFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "KeyFile({}, {} keys)",
            self.path.display(),
            self.keys.len()
        )
    }
}

fn read_key_file(path: &str) -> Result<KeyFile, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read it: {e}"))?;
    let keys: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(String::from)
        .collect();
    if keys.is_empty() {
        return Err("lists no key".into());
    }
    Ok(KeyFile {
        path: path.into(),
        keys,
    })
}

/// Where the `--jwks` keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// A JWKS file, read again when it changes.
    File(PathBuf),
    /// An `http(s)://` URL, fetched again every `--jwks-refresh`.
    Url(String),
}

impl std::fmt::Display for JwksSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwksSource::File(path) => write!(f, "file {}", path.display()),
            JwksSource::Url(url) => write!(f, "at {url}"),
        }
    }
}

/// `--jwks`: a URL when it starts with `http://` or `https://`, a file otherwise.
fn parse_jwks(value: &str) -> Result<JwksSource, String> {
    let lower = value.to_ascii_lowercase();
    if lower.starts_with("https://") || lower.starts_with("http://") {
        url::Url::parse(value)
            .map(|_| JwksSource::Url(value.to_string()))
            .map_err(|e| format!("not a URL ({e})"))
    } else if value.is_empty() {
        Err("empty; give a JWKS file or an https:// URL".into())
    } else {
        Ok(JwksSource::File(value.into()))
    }
}

/// How subscriber and publisher tokens are verified.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// HS256 with this secret.
    Secret(String),
    /// RS256/ES256 with the keys of a JWKS, and HS256 too if a secret is also given.
    Jwks {
        source: JwksSource,
        /// How often a URL is fetched again.
        refresh: Duration,
        secret: Option<String>,
    },
}

/// Refuses an HS256 secret that would let anyone forge tokens: empty or shorter than
/// `MIN_SECRET_BYTES`, such as an unset variable expanded into the flag. `flag` names where it
/// came from.
pub fn check_secret(secret: &str, flag: &str) -> Result<(), ConfigError> {
    if secret.len() < MIN_SECRET_BYTES {
        return Err(ConfigError::WeakSecret {
            flag: flag.to_string(),
            len: secret.len(),
        });
    }
    Ok(())
}

/// The shortest HS256 secret accepted: RFC 7518 §3.2 asks for a key of at least the hash's
/// 256 bits.
pub const MIN_SECRET_BYTES: usize = 32;

/// The validated configuration of one server.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub memory: bool,
    pub dev: bool,
    pub keys: KeySource,
    pub publisher_keys: Vec<String>,
    pub history_size: usize,
    pub history_ttl: Duration,
    pub idempotency_window: Duration,
    pub sse_keepalive: Duration,
    pub subscriber_queue: usize,
    pub max_connections: usize,
    /// Resolved `--workers`.
    pub workers: usize,
    pub max_listeners_per_instance: usize,
    pub max_body: usize,
    pub body_timeout: Duration,
    pub shutdown_timeout: Duration,
    /// `--tls-cert` and `--tls-key`: HTTPS instead of plaintext.
    pub tls: Option<TlsFiles>,
    /// Resolved `--drain-delay`.
    pub drain_delay: Duration,
    pub webhook_timeout: Duration,
    /// Parsed `--webhook-retry-schedule`.
    pub webhook_retry_schedule: Vec<Duration>,
    pub webhook_allow_private: bool,
    pub dashboard_auth: bool,
    pub ws_ping: Duration,
    pub ws_announce_timeout: Duration,
    /// Cluster mode: Redis and this node's name in it; `None` for one node on its own store.
    pub cluster: Option<crate::cluster::ClusterConfig>,
}

/// Why a configuration cannot be used; each message says which flag to change.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("no token verification key: set --jwt-secret, --jwt-secret-file or --jwks (HERALD_JWT_SECRET, HERALD_JWT_SECRET_FILE, HERALD_JWKS; auth.jwt_secret, auth.jwt_secret_file, auth.jwks in a --config file), or run with --dev")]
    NoVerificationKey,
    #[error("{flag} is {len} bytes long; an HS256 secret needs at least {MIN_SECRET_BYTES} (RFC 7518 §3.2), e.g. `openssl rand -hex 32`")]
    WeakSecret { flag: String, len: usize },
    #[error(
        "--redis-replicas (redis.replicas) needs --redis (redis.url): replicas of which Redis?"
    )]
    ReplicasWithoutRedis,
    #[error("cannot serve TLS: {0}")]
    Tls(crate::server::tls::LoadError),
    #[error("cannot keep the dev JWT secret in {path}: {source}")]
    DevSecret {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl ServeArgs {
    /// Applies the `--dev` rules and refuses configurations that cannot serve safely.
    pub fn into_config(self) -> Result<Config, ConfigError> {
        self.resolve(true)
    }

    /// What `into_config` checks, and that the TLS pair loads, without writing anything: for
    /// `herald config check`.
    pub fn check(self) -> Result<Config, ConfigError> {
        let config = self.resolve(false)?;
        if let Some(files) = &config.tls {
            crate::server::tls::Tls::load(files.clone()).map_err(ConfigError::Tls)?;
        }
        Ok(config)
    }

    /// `persist`: whether a `--dev` secret may be generated and written to the data dir.
    fn resolve(self, persist: bool) -> Result<Config, ConfigError> {
        if self.redis_replicas > 0 && self.redis.is_none() {
            return Err(ConfigError::ReplicasWithoutRedis);
        }
        let mut listen = self.listen;
        if self.dev && !listen.ip().is_loopback() {
            log::warn!(
                "--dev listens on loopback only; using 127.0.0.1:{}",
                listen.port()
            );
            listen.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        if let Some(secret) = &self.jwt_secret {
            check_secret(secret, "--jwt-secret (HERALD_JWT_SECRET)")?;
        }
        let mut publisher_keys = self.publisher_keys;
        publisher_keys.extend(self.publisher_keys_file.into_iter().flat_map(|f| f.keys));
        let secret = match (
            self.jwt_secret.or(self.jwt_secret_file.map(|f| f.secret)),
            self.dev,
        ) {
            (Some(s), _) => Some(s),
            (None, true) if self.jwks.is_none() => {
                Some(dev_secret(&self.data_dir, self.memory || !persist)?)
            }
            (None, _) => None,
        };
        let keys = match (self.jwks, secret) {
            (Some(source), secret) => KeySource::Jwks {
                source,
                refresh: self.jwks_refresh,
                secret,
            },
            (None, Some(secret)) => KeySource::Secret(secret),
            (None, None) => return Err(ConfigError::NoVerificationKey),
        };
        Ok(Config {
            listen,
            data_dir: self.data_dir,
            memory: self.memory,
            dev: self.dev,
            keys,
            publisher_keys,
            history_size: self.history_size,
            history_ttl: self.history_ttl,
            idempotency_window: self.idempotency_window,
            sse_keepalive: self.sse_keepalive,
            subscriber_queue: self.subscriber_queue,
            max_connections: self.max_connections,
            workers: self.workers.map_or_else(default_workers, usize::from),
            max_listeners_per_instance: self.max_listeners_per_instance,
            max_body: self.max_body,
            body_timeout: self.body_timeout,
            shutdown_timeout: self.shutdown_timeout,
            tls: self
                .tls_cert
                .zip(self.tls_key)
                .map(|(cert, key)| TlsFiles { cert, key }),
            drain_delay: self.drain_delay.unwrap_or(if self.dev {
                Duration::ZERO
            } else {
                DRAIN_DELAY
            }),
            webhook_timeout: self.webhook_timeout,
            webhook_retry_schedule: self.webhook_retry_schedule.0,
            webhook_allow_private: self.webhook_allow_private,
            dashboard_auth: self.dashboard_auth,
            ws_ping: self.ws_ping,
            ws_announce_timeout: self.ws_announce_timeout,
            cluster: self.redis.map(|redis_url| crate::cluster::ClusterConfig {
                topology: crate::cluster::primary::Topology::parse(&redis_url)
                    .expect("checked by the flag's parser"),
                redis_url,
                replicas: self.redis_replicas,
                node: self
                    .node_name
                    .unwrap_or_else(|| format!("node-{:08x}", rand::random::<u32>())),
            }),
        })
    }
}

/// The `--dev` secret: read from the data dir, or generated and written there so tokens
/// minted before a restart keep working. With `--memory` nothing is written.
fn dev_secret(data_dir: &std::path::Path, memory: bool) -> Result<String, ConfigError> {
    let generate = || {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
    };
    if memory {
        return Ok(generate());
    }
    if let Some(secret) = read_dev_secret(data_dir) {
        return Ok(secret);
    }
    let path = data_dir.join(DEV_SECRET_FILE);
    let secret = generate();
    std::fs::create_dir_all(data_dir)
        .and_then(|()| std::fs::write(&path, &secret))
        .map_err(|source| ConfigError::DevSecret { path, source })?;
    Ok(secret)
}

/// Reads the `--dev` secret that a server keeps in `data_dir`, for `herald token`.
pub fn read_dev_secret(data_dir: &std::path::Path) -> Option<String> {
    let s = std::fs::read_to_string(data_dir.join(DEV_SECRET_FILE)).ok()?;
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

/// One worker per CPU core this process may run on (its affinity mask, as `taskset` sets it).
fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

impl Config {
    /// A configuration for tests and embedding: in memory, on a random loopback port.
    pub fn for_tests(jwt_secret: &str) -> Self {
        Config {
            listen: "127.0.0.1:0".parse().expect("valid literal address"),
            data_dir: PathBuf::from("./herald-data"),
            memory: true,
            dev: false,
            keys: KeySource::Secret(jwt_secret.to_string()),
            publisher_keys: Vec::new(),
            history_size: 1000,
            history_ttl: Duration::from_secs(24 * 3600),
            idempotency_window: Duration::from_secs(5 * 60),
            sse_keepalive: Duration::from_secs(15),
            subscriber_queue: 1024,
            max_connections: 65_536,
            workers: default_workers(),
            max_listeners_per_instance: 4,
            max_body: 1024 * 1024,
            body_timeout: Duration::from_secs(60),
            shutdown_timeout: Duration::from_secs(30),
            tls: None,
            drain_delay: Duration::ZERO,
            webhook_timeout: Duration::from_secs(10),
            webhook_retry_schedule: crate::webhook::retry::parse_schedule(
                crate::webhook::retry::DEFAULT_SCHEDULE,
            )
            .expect("the default schedule parses"),
            webhook_allow_private: false,
            dashboard_auth: false,
            ws_ping: Duration::from_secs(30),
            ws_announce_timeout: Duration::from_secs(10),
            cluster: None,
        }
    }
}
