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
/// [`Default`], then set what differs:
///
/// ```
/// use std::time::Duration;
///
/// let mut config: fib_rpc::ConnectionConfig = "amqp://app:secret@broker:5672/%2f".parse()?;
/// config.connect_timeout = Duration::from_secs(2);
/// assert!(!format!("{config:?}").contains("secret"));
/// # Ok::<(), fib_rpc::Error>(())
/// ```
///
/// Where the URL's query sets `heartbeat` (seconds) or `connection_timeout` (milliseconds), the
/// URL wins over the fields of the same meaning.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionConfig {
    /// The brokers, as `amqp://user:password@host:port/vhost` URLs; default one,
    /// [`DEFAULT_URL`]. With several (the nodes of a cluster), a connection goes to the first
    /// that answers, in the order given; after losing one, the next connection tries the one
    /// after it first. Give clients the nodes in different orders to spread them. Printed by
    /// `Debug` with passwords replaced by `***`.
    pub urls: Vec<String>,
    /// AMQP heartbeat interval; default 10 s, so a silent network cut ends an idle connection
    /// within about 20 s (amiquip's own default of 60 s would take two minutes). At least 1 s:
    /// zero, which would turn heartbeats off, is refused. Calls never rely on it: each keeps its
    /// own timeout whatever the network does.
    pub heartbeat: Duration,
    /// Bound on the TCP connect and the AMQP handshake together; default 5 s.
    pub connect_timeout: Duration,
    /// Bound on closing a connection (the broker's close handshake, a consumer's cancel); past
    /// it the socket is shut down, as during a network cut, where the broker never answers.
    /// Default 5 s.
    pub close_timeout: Duration,
    /// How `amqps://` endpoints are secured; the URL's query parameters win over it.
    pub tls: TlsOptions,
    /// The largest message body the broker takes, in bytes; default 16 MiB, RabbitMQ 4's
    /// `max_message_size` (3.x defaulted to 128 MiB). A request (or, in a server, a reply)
    /// larger than this fails at once with [`Error::TooLarge`] (an error reply for a server's
    /// reply) instead of making the broker close the channel. A broker whose limit is lower
    /// still refuses with its own reason, and the lower limit is used from then on.
    pub max_message_size: usize,
    /// Shown by the broker as the connection's `information` client property (`rabbitmqctl
    /// list_connections client_properties`, the management UI); default: none, and the
    /// connection is labelled `fib-rpc client` or `fib-rpc server on <queue>`.
    pub connection_name: Option<String>,
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
    /// Defaults, with this URL, or these URLs separated by commas (checked when connecting;
    /// [`str::parse`] checks them at once).
    pub fn new(urls: impl AsRef<str>) -> Self {
        ConnectionConfig::with_urls(urls.as_ref().split(','))
    }

    /// Defaults, with these broker URLs (the nodes of a cluster), tried in this order.
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
/// By default the broker's certificate is verified against the system's CAs and the host name
/// of the URL, and no client certificate is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsOptions {
    /// A PEM file of CAs trusted besides the system's (`cacertfile`).
    pub ca_file: Option<PathBuf>,
    /// A PEM client certificate chain, for brokers that require one (`certfile`); with `key_file`.
    pub cert_file: Option<PathBuf>,
    /// The PEM private key of `cert_file` (`keyfile`). Only its path is ever shown.
    pub key_file: Option<PathBuf>,
    /// The name the broker's certificate must hold, and is asked for by SNI, if not the URL's
    /// host (`server_name_indication`).
    pub server_name: Option<String>,
    /// Verify the broker's certificate (default). False (`verify=verify_none`) accepts any, and
    /// says so in the log: only for tests.
    pub verify_peer: bool,
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

/// Client settings: [`ClientConfig::new`] or [`Default`], then set what differs.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientConfig {
    /// Where the broker is.
    pub connection: ConnectionConfig,
    /// Timeout of [`FibonacciRpcClient::call`](crate::FibonacciRpcClient::call); default 5 s.
    pub call_timeout: Duration,
    /// If true (default), a call to a queue that is missing or has no consumer fails at once
    /// with [`Error::NoServer`] instead of waiting out its timeout. The consumer count is asked
    /// of the broker on a separate channel and a positive answer is trusted for one second, so
    /// the check costs nothing on the hot path. Set false to queue work for a server that will
    /// start within the call's timeout: a call then waits (within its timeout) for a server to
    /// declare a missing queue, and leaves requests in an idle one.
    pub require_consumer: bool,
    /// Where replies come back; default [`ReplyMode::CallbackQueue`].
    pub reply_mode: ReplyMode,
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
        ClientConfig {
            connection: ConnectionConfig::default(),
            call_timeout: Duration::from_secs(5),
            require_consumer: true,
            reply_mode: ReplyMode::default(),
        }
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

/// Server settings: [`ServerConfig::new`] or [`Default`], then set what differs.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Where the broker is.
    pub connection: ConnectionConfig,
    /// The request queue to serve; default [`DEFAULT_QUEUE`].
    pub queue: String,
    /// How to declare the request queue if it does not exist; default [`QueueType::Quorum`].
    pub queue_type: QueueType,
    /// Worker threads, each with its own channel; default: the number of cores.
    pub workers: usize,
    /// Unacknowledged requests per worker; default 1, the tutorials' fair dispatch.
    pub prefetch: u16,
    /// First wait before reconnecting after the connection is lost; default 100 ms, doubled after
    /// every failed attempt up to [`reconnect_max`](Self::reconnect_max).
    pub reconnect_initial: Duration,
    /// Longest wait between reconnection attempts; default 5 s.
    pub reconnect_max: Duration,
    /// How long a stopping server may take to finish the requests in hand; default 30 s.
    /// Requests still in hand then are left unacknowledged, so the broker gives them to
    /// another server.
    pub drain_timeout: Duration,
    /// How long a request may stay unacknowledged before the broker gives up on it (its
    /// delivery acknowledgement timeout), for handlers that run longer than the broker's
    /// `consumer_timeout` (30 minutes by default). Sent as the consumer argument
    /// `x-consumer-timeout`, which RabbitMQ 3.12 and later apply to our consumers; older
    /// brokers ignore it, and only their `consumer_timeout` setting (rabbitmq.conf) helps.
    /// Default: none, the broker's own.
    pub consumer_timeout: Option<Duration>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            connection: ConnectionConfig::default(),
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

impl ClientConfig {
    /// Defaults, with the broker at `url` (or several, separated by commas).
    pub fn new(url: impl AsRef<str>) -> Self {
        ClientConfig {
            connection: ConnectionConfig::new(url),
            ..ClientConfig::default()
        }
    }
}

impl ServerConfig {
    /// Defaults, serving `queue` on the broker at `url` (or several, separated by commas).
    pub fn new(url: impl AsRef<str>, queue: impl Into<String>) -> Self {
        ServerConfig {
            connection: ConnectionConfig::new(url),
            queue: queue.into(),
            ..ServerConfig::default()
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
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
        if self.connection.max_message_size == 0 {
            return Err(Error::Config("max_message_size must be at least 1".into()));
        }
        if self
            .consumer_timeout
            .is_some_and(|timeout| timeout.is_zero())
        {
            return Err(Error::Config(
                "consumer_timeout must be at least 1 ms (leave it unset for the broker's)".into(),
            ));
        }
        Ok(())
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
