//! Settings for clients and servers, each with documented defaults.

use crate::error::{Error, Result};
use std::path::PathBuf;
use std::time::Duration;

/// The broker a fresh RabbitMQ install answers on: `amqp://guest:guest@127.0.0.1:5672/%2f`.
pub const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// RabbitMQ 4's default `max_message_size`: 16 MiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;

/// The request queue of RabbitMQ tutorial 6: `rpc_queue`.
pub const DEFAULT_QUEUE: &str = "rpc_queue";

/// How to reach the broker; shared by clients and servers.
///
/// Start from [`ConnectionConfig::new`], [`str::parse`] (which checks the URL at once) or
/// [`Default`], then set what differs; every setter documents its default, and the settings
/// are checked together when they are used (a connection, [`ConnectionConfig::validate`]):
///
/// ```
/// use std::time::Duration;
///
/// let config: fib_rpc::ConnectionConfig = "amqp://app:secret@broker:5672/%2f".parse()?;
/// let config = config.connect_timeout(Duration::from_secs(2));
/// assert_eq!(config.get_connect_timeout(), Duration::from_secs(2));
/// assert!(!format!("{config:?}").contains("secret"));
/// # Ok::<(), fib_rpc::Error>(())
/// ```
///
/// Where the URL's query sets `heartbeat` (seconds) or `connection_timeout` (milliseconds), the
/// URL wins over the settings of the same meaning.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectionConfig {
    pub(crate) urls: Vec<String>,
    pub(crate) heartbeat: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) close_timeout: Duration,
    pub(crate) tls: TlsOptions,
    pub(crate) max_message_size: usize,
    pub(crate) connection_name: Option<String>,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        ConnectionConfig {
            urls: vec![DEFAULT_URL.to_owned()],
            heartbeat: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            close_timeout: Duration::from_secs(5),
            tls: TlsOptions::default(),
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            connection_name: None,
        }
    }
}

impl ConnectionConfig {
    /// Defaults, with the broker at this `amqp://user:password@host:port/vhost` URL, or these
    /// URLs separated by commas (checked when connecting; [`str::parse`] checks them at once).
    pub fn new(urls: impl AsRef<str>) -> Self {
        ConnectionConfig::with_urls(urls.as_ref().split(','))
    }

    /// Defaults, with these broker URLs (the nodes of a cluster). A connection goes to the
    /// first that answers, in the order given; after losing one, the next connection tries the
    /// one after it first. Give clients the nodes in different orders to spread them.
    pub fn with_urls<I>(urls: I) -> Self
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        ConnectionConfig {
            urls: urls
                .into_iter()
                .map(|url| url.as_ref().trim().to_owned())
                .filter(|url| !url.is_empty())
                .collect(),
            ..ConnectionConfig::default()
        }
    }

    /// AMQP heartbeat interval; default 10 s, so a silent network cut ends an idle connection
    /// within about 20 s (the AMQP driver's own default of 60 s would take two minutes). At
    /// least 1 s: zero, which would turn heartbeats off, is refused. Calls never rely on it: each keeps its
    /// own timeout whatever the network does.
    pub fn heartbeat(mut self, heartbeat: Duration) -> Self {
        self.heartbeat = heartbeat;
        self
    }

    /// Bound on the TCP connect and the AMQP handshake together; default 5 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Bound on closing a connection (the broker's close handshake, a consumer's cancel); past
    /// it the socket is shut down, as during a network cut, where the broker never answers.
    /// Default 5 s.
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.close_timeout = timeout;
        self
    }

    /// How `amqps://` endpoints are secured; default [`TlsOptions::default`]. The URL's query
    /// parameters win over it.
    pub fn tls(mut self, tls: TlsOptions) -> Self {
        self.tls = tls;
        self
    }

    /// The largest message body the broker takes, in bytes; default 16 MiB, RabbitMQ 4's
    /// `max_message_size` (3.x defaulted to 128 MiB). A request (or, in a server, a reply)
    /// larger than this fails at once with [`Error::TooLarge`] (an error reply for a server's
    /// reply) instead of making the broker close the channel. A broker whose limit is lower
    /// still refuses with its own reason, and the lower limit is used from then on. At least 1.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// Shown by the broker as the connection's `information` client property (`rabbitmqctl
    /// list_connections client_properties`, the management UI); default: none, and the
    /// connection is labelled `fib-rpc client` or `fib-rpc server on <queue>`.
    pub fn connection_name(mut self, name: impl Into<String>) -> Self {
        self.connection_name = Some(name.into());
        self
    }

    /// The broker URLs, in the order they are tried. Printed by `Debug` with passwords
    /// replaced by `***`.
    pub fn get_urls(&self) -> impl ExactSizeIterator<Item = &str> {
        self.urls.iter().map(String::as_str)
    }

    /// See [`ConnectionConfig::heartbeat`].
    pub fn get_heartbeat(&self) -> Duration {
        self.heartbeat
    }

    /// See [`ConnectionConfig::connect_timeout`].
    pub fn get_connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// See [`ConnectionConfig::close_timeout`].
    pub fn get_close_timeout(&self) -> Duration {
        self.close_timeout
    }

    /// See [`ConnectionConfig::tls`].
    pub fn get_tls(&self) -> &TlsOptions {
        &self.tls
    }

    /// See [`ConnectionConfig::max_message_size`].
    pub fn get_max_message_size(&self) -> usize {
        self.max_message_size
    }

    /// See [`ConnectionConfig::connection_name`].
    pub fn get_connection_name(&self) -> Option<&str> {
        self.connection_name.as_deref()
    }
}

impl From<&str> for ConnectionConfig {
    /// [`ConnectionConfig::new`].
    fn from(urls: &str) -> Self {
        ConnectionConfig::new(urls)
    }
}

impl From<String> for ConnectionConfig {
    /// [`ConnectionConfig::new`].
    fn from(urls: String) -> Self {
        ConnectionConfig::new(urls)
    }
}

impl From<&String> for ConnectionConfig {
    /// [`ConnectionConfig::new`].
    fn from(urls: &String) -> Self {
        ConnectionConfig::new(urls)
    }
}

impl From<&ConnectionConfig> for ConnectionConfig {
    fn from(config: &ConnectionConfig) -> Self {
        config.clone()
    }
}

impl std::fmt::Debug for ConnectionConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionConfig")
            .field(
                "urls",
                &self
                    .urls
                    .iter()
                    .map(|url| redacted(url))
                    .collect::<Vec<_>>(),
            )
            .field("heartbeat", &self.heartbeat)
            .field("connect_timeout", &self.connect_timeout)
            .field("close_timeout", &self.close_timeout)
            .field("tls", &self.tls)
            .field("max_message_size", &self.max_message_size)
            .field("connection_name", &self.connection_name)
            .finish()
    }
}

/// TLS settings of `amqps://` endpoints, as RabbitMQ's URI spec names them in a URL's query:
/// `cacertfile`, `certfile`, `keyfile`, `server_name_indication`, `verify=verify_none`.
///
/// By default ([`TlsOptions::default`]) the broker's certificate is verified against the
/// system's CAs and the host name of the URL, and no client certificate is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsOptions {
    pub(crate) ca_file: Option<PathBuf>,
    pub(crate) cert_file: Option<PathBuf>,
    pub(crate) key_file: Option<PathBuf>,
    pub(crate) server_name: Option<String>,
    pub(crate) verify_peer: bool,
}

impl Default for TlsOptions {
    fn default() -> Self {
        TlsOptions {
            ca_file: None,
            cert_file: None,
            key_file: None,
            server_name: None,
            verify_peer: true,
        }
    }
}

impl TlsOptions {
    /// A PEM file of CAs trusted besides the system's (`cacertfile`); default none.
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }

    /// A PEM client certificate chain and its private key, for brokers that require one
    /// (`certfile`, `keyfile`); default none. Only the key's path is ever shown.
    pub fn client_certificate(
        mut self,
        cert_file: impl Into<PathBuf>,
        key_file: impl Into<PathBuf>,
    ) -> Self {
        self.cert_file = Some(cert_file.into());
        self.key_file = Some(key_file.into());
        self
    }

    /// The name the broker's certificate must hold, and is asked for by SNI, if not the URL's
    /// host (`server_name_indication`); default: the URL's host.
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// Whether to verify the broker's certificate; default true. False
    /// (`verify=verify_none`) accepts any, and says so in the log: only for tests.
    pub fn verify_peer(mut self, verify: bool) -> Self {
        self.verify_peer = verify;
        self
    }

    /// See [`TlsOptions::ca_file`].
    pub fn get_ca_file(&self) -> Option<&std::path::Path> {
        self.ca_file.as_deref()
    }

    /// The client certificate chain's path; see [`TlsOptions::client_certificate`].
    pub fn get_cert_file(&self) -> Option<&std::path::Path> {
        self.cert_file.as_deref()
    }

    /// The client key's path; see [`TlsOptions::client_certificate`].
    pub fn get_key_file(&self) -> Option<&std::path::Path> {
        self.key_file.as_deref()
    }

    /// See [`TlsOptions::server_name`].
    pub fn get_server_name(&self) -> Option<&str> {
        self.server_name.as_deref()
    }

    /// See [`TlsOptions::verify_peer`].
    pub fn get_verify_peer(&self) -> bool {
        self.verify_peer
    }
}

/// `url` with the password, if any, replaced by `***`.
pub(crate) fn redacted(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|at| at + 3) else {
        return url.to_owned();
    };
    let authority_end = url[scheme_end..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |at| scheme_end + at);
    let authority = &url[scheme_end..authority_end];
    match (authority.rfind('@'), authority.find(':')) {
        (Some(at), Some(colon)) if colon < at => format!(
            "{}{}:***{}",
            &url[..scheme_end],
            &authority[..colon],
            &url[scheme_end + at..]
        ),
        _ => url.to_owned(),
    }
}

/// Client settings: [`ClientConfig::new`], a [`ConnectionConfig`] (`From`) or [`Default`], then
/// set what differs.
///
/// ```
/// use std::time::Duration;
///
/// let config = fib_rpc::ClientConfig::new("amqp://broker/%2f")
///     .call_timeout(Duration::from_secs(2))
///     .require_consumer(false);
/// assert_eq!(config.get_call_timeout(), Duration::from_secs(2));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    pub(crate) connection: ConnectionConfig,
    pub(crate) call_timeout: Duration,
    pub(crate) require_consumer: bool,
    pub(crate) reply_mode: ReplyMode,
}

/// How a client receives its replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ReplyMode {
    /// An exclusive, server-named callback queue per connection, as in the tutorial (default).
    #[default]
    CallbackQueue,
    /// RabbitMQ's direct reply-to (`amq.rabbitmq.reply-to`): no queue at all; replies go straight
    /// to the client's channel. Needs RabbitMQ; a reply arriving after the connection is gone is
    /// dropped by the broker.
    DirectReplyTo,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig::from(ConnectionConfig::default())
    }
}

impl From<ConnectionConfig> for ClientConfig {
    /// Client defaults, with these connection settings.
    fn from(connection: ConnectionConfig) -> Self {
        ClientConfig {
            connection,
            call_timeout: Duration::from_secs(5),
            require_consumer: true,
            reply_mode: ReplyMode::default(),
        }
    }
}

impl From<&ConnectionConfig> for ClientConfig {
    /// Client defaults, with these connection settings.
    fn from(connection: &ConnectionConfig) -> Self {
        ClientConfig::from(connection.clone())
    }
}

impl From<&str> for ClientConfig {
    /// [`ClientConfig::new`].
    fn from(urls: &str) -> Self {
        ClientConfig::new(urls)
    }
}

impl From<&String> for ClientConfig {
    /// [`ClientConfig::new`].
    fn from(urls: &String) -> Self {
        ClientConfig::new(urls)
    }
}

impl From<&ClientConfig> for ClientConfig {
    fn from(config: &ClientConfig) -> Self {
        config.clone()
    }
}

impl From<String> for ClientConfig {
    /// [`ClientConfig::new`].
    fn from(urls: String) -> Self {
        ClientConfig::new(urls)
    }
}

impl ClientConfig {
    /// Defaults, with the broker at `url` (or several, separated by commas).
    pub fn new(url: impl AsRef<str>) -> Self {
        ClientConfig::from(ConnectionConfig::new(url))
    }

    /// Where the broker is; default [`ConnectionConfig::default`].
    pub fn connection(mut self, connection: ConnectionConfig) -> Self {
        self.connection = connection;
        self
    }

    /// The timeout of every call that does not name its own; default 5 s.
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// If true (default), a call to a queue that is missing or has no consumer fails at once
    /// with [`Error::NoServer`] instead of waiting out its timeout. The consumer count is asked
    /// of the broker on a separate channel and a positive answer is trusted for one second, so
    /// the check costs nothing on the hot path. Set false to queue work for a server that will
    /// start within the call's timeout: a call then waits (within its timeout) for a server to
    /// declare a missing queue, and leaves requests in an idle one.
    pub fn require_consumer(mut self, require: bool) -> Self {
        self.require_consumer = require;
        self
    }

    /// Where replies come back; default [`ReplyMode::CallbackQueue`].
    pub fn reply_mode(mut self, mode: ReplyMode) -> Self {
        self.reply_mode = mode;
        self
    }

    /// See [`ClientConfig::connection`].
    pub fn get_connection(&self) -> &ConnectionConfig {
        &self.connection
    }

    /// See [`ClientConfig::call_timeout`].
    pub fn get_call_timeout(&self) -> Duration {
        self.call_timeout
    }

    /// See [`ClientConfig::require_consumer`].
    pub fn get_require_consumer(&self) -> bool {
        self.require_consumer
    }

    /// See [`ClientConfig::reply_mode`].
    pub fn get_reply_mode(&self) -> ReplyMode {
        self.reply_mode
    }

    /// Checks these settings together, as a client does before it connects: the connection's
    /// ([`ConnectionConfig::validate`]) and a call timeout above zero.
    pub fn validate(&self) -> Result<()> {
        if self.call_timeout.is_zero() {
            return Err(Error::Config("call_timeout must be above zero".into()));
        }
        self.connection.validate()
    }
}

/// How the server declares its request queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum QueueType {
    /// Durable, `x-queue-type: quorum`: what the official tutorials declare today (default).
    #[default]
    Quorum,
    /// Durable classic queue, declared without a queue-type argument.
    Classic,
}

impl std::str::FromStr for QueueType {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        match text {
            "quorum" => Ok(QueueType::Quorum),
            "classic" => Ok(QueueType::Classic),
            other => Err(Error::Config(format!(
                "unknown queue type {other:?}: expected quorum or classic"
            ))),
        }
    }
}

/// Server settings: [`ServerConfig::new`], a [`ConnectionConfig`] (`From`) or [`Default`], then
/// set what differs.
///
/// ```
/// let config = fib_rpc::ServerConfig::new("amqp://broker/%2f", "fib")
///     .workers(4)
///     .queue_type(fib_rpc::QueueType::Classic);
/// assert_eq!(config.get_queue(), "fib");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    pub(crate) connection: ConnectionConfig,
    pub(crate) queue: String,
    pub(crate) queue_type: QueueType,
    pub(crate) workers: usize,
    pub(crate) prefetch: u16,
    pub(crate) reconnect_initial: Duration,
    pub(crate) reconnect_max: Duration,
    pub(crate) drain_timeout: Duration,
    pub(crate) consumer_timeout: Option<Duration>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig::from(ConnectionConfig::default())
    }
}

impl From<ConnectionConfig> for ServerConfig {
    /// Server defaults, serving [`DEFAULT_QUEUE`] with these connection settings.
    fn from(connection: ConnectionConfig) -> Self {
        ServerConfig {
            connection,
            queue: DEFAULT_QUEUE.to_owned(),
            queue_type: QueueType::default(),
            workers: std::thread::available_parallelism().map_or(1, usize::from),
            prefetch: 1,
            reconnect_initial: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(30),
            consumer_timeout: None,
        }
    }
}

impl From<&ConnectionConfig> for ServerConfig {
    /// Server defaults, serving [`DEFAULT_QUEUE`] with these connection settings.
    fn from(connection: &ConnectionConfig) -> Self {
        ServerConfig::from(connection.clone())
    }
}

impl ServerConfig {
    /// Defaults, serving `queue` on the broker at `url` (or several, separated by commas).
    pub fn new(url: impl AsRef<str>, queue: impl Into<String>) -> Self {
        ServerConfig::from(ConnectionConfig::new(url)).queue(queue)
    }

    /// Where the broker is; default [`ConnectionConfig::default`].
    pub fn connection(mut self, connection: ConnectionConfig) -> Self {
        self.connection = connection;
        self
    }

    /// The request queue to serve; default [`DEFAULT_QUEUE`].
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = queue.into();
        self
    }

    /// How to declare the request queue if it does not exist; default [`QueueType::Quorum`].
    pub fn queue_type(mut self, queue_type: QueueType) -> Self {
        self.queue_type = queue_type;
        self
    }

    /// Worker threads, each with its own channel; default: the number of cores. At least 1.
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers;
        self
    }

    /// Unacknowledged requests per worker; default 1, the tutorials' fair dispatch. At least 1.
    pub fn prefetch(mut self, prefetch: u16) -> Self {
        self.prefetch = prefetch;
        self
    }

    /// The waits between reconnection attempts after the connection is lost: the first
    /// `initial` (default 100 ms), doubled after every failed attempt up to `max` (default
    /// 5 s). No wait while other endpoints are untried.
    pub fn reconnect_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.reconnect_initial = initial;
        self.reconnect_max = max;
        self
    }

    /// How long a stopping server may take to finish the requests in hand; default 30 s.
    /// Requests still in hand then are left unacknowledged, so the broker gives them to
    /// another server.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// How long a request may stay unacknowledged before the broker gives up on it (its
    /// delivery acknowledgement timeout), for handlers that run longer than the broker's
    /// `consumer_timeout` (30 minutes by default). Sent as the consumer argument
    /// `x-consumer-timeout`, which RabbitMQ 3.12 and later apply to our consumers; older
    /// brokers ignore it, and only their `consumer_timeout` setting (rabbitmq.conf) helps.
    /// Default: none, the broker's own. At least 1 ms.
    pub fn consumer_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.consumer_timeout = timeout;
        self
    }

    /// See [`ServerConfig::connection`].
    pub fn get_connection(&self) -> &ConnectionConfig {
        &self.connection
    }

    /// See [`ServerConfig::queue`].
    pub fn get_queue(&self) -> &str {
        &self.queue
    }

    /// See [`ServerConfig::queue_type`].
    pub fn get_queue_type(&self) -> QueueType {
        self.queue_type
    }

    /// See [`ServerConfig::workers`].
    pub fn get_workers(&self) -> usize {
        self.workers
    }

    /// See [`ServerConfig::prefetch`].
    pub fn get_prefetch(&self) -> u16 {
        self.prefetch
    }

    /// The first and the longest wait; see [`ServerConfig::reconnect_backoff`].
    pub fn get_reconnect_backoff(&self) -> (Duration, Duration) {
        (self.reconnect_initial, self.reconnect_max)
    }

    /// See [`ServerConfig::drain_timeout`].
    pub fn get_drain_timeout(&self) -> Duration {
        self.drain_timeout
    }

    /// See [`ServerConfig::consumer_timeout`].
    pub fn get_consumer_timeout(&self) -> Option<Duration> {
        self.consumer_timeout
    }

    /// Checks these settings together, as a server does before it starts: the connection's
    /// ([`ConnectionConfig::validate`]), at least one worker, a prefetch of at least 1, a
    /// queue name, a consumer timeout of at least 1 ms if set, and a backoff that does not
    /// shrink.
    pub fn validate(&self) -> Result<()> {
        if self.workers == 0 {
            return Err(Error::Config("workers must be at least 1".into()));
        }
        if self.prefetch == 0 {
            return Err(Error::Config(
                "prefetch must be at least 1 (0 would mean unlimited)".into(),
            ));
        }
        if self.queue.is_empty() {
            return Err(Error::Config("the request queue needs a name".into()));
        }
        if self
            .consumer_timeout
            .is_some_and(|timeout| timeout.is_zero())
        {
            return Err(Error::Config(
                "consumer_timeout must be at least 1 ms (leave it unset for the broker's)".into(),
            ));
        }
        if self.reconnect_initial > self.reconnect_max {
            return Err(Error::Config(
                "the first reconnect wait must not exceed the longest".into(),
            ));
        }
        self.connection.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_debug_output() {
        for (url, shown) in [
            (
                "amqp://guest:guest@127.0.0.1:5672/%2f",
                "amqp://guest:***@127.0.0.1:5672/%2f",
            ),
            (
                "amqp://u:p%40ss@h/v?heartbeat=5",
                "amqp://u:***@h/v?heartbeat=5",
            ),
            ("amqp://user@h/", "amqp://user@h/"),
            ("amqp://h:5672/?x=a:b@c", "amqp://h:5672/?x=a:b@c"),
            ("not a url", "not a url"),
        ] {
            assert_eq!(redacted(url), shown);
        }
        let config = ClientConfig::new("amqp://app:s3cret@broker/%2f");
        assert!(!format!("{config:?}").contains("s3cret"));
    }

    #[test]
    fn parsing_checks_the_url_at_once() {
        assert!("amqp://broker:5673/%2f".parse::<ConnectionConfig>().is_ok());
        let error = "http://broker".parse::<ConnectionConfig>().unwrap_err();
        assert!(error.is_config(), "{error}");
    }
}
