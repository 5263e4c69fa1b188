//! Server settings.

use super::{ConnectionConfig, DEFAULT_QUEUE};
use crate::error::{Error, Result};
use std::time::Duration;

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
    pub(crate) max_priority: Option<u8>,
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
            max_priority: None,
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

    /// Declares the request queue with `x-max-priority` = `max`, so that requests of higher
    /// [`priority`](crate::Call::priority), up to `max`, are served first; default none.
    /// Needs a classic queue ([`QueueType::Classic`]): quorum queues take no such argument
    /// (RabbitMQ 4's know two levels, 0–4 and 5 and above, without one), and a queue that
    /// exists already keeps the arguments it was declared with.
    pub fn max_priority(mut self, max: u8) -> Self {
        self.max_priority = Some(max);
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

    /// See [`ServerConfig::max_priority`].
    pub fn get_max_priority(&self) -> Option<u8> {
        self.max_priority
    }

    /// Checks these settings together, as a server does before it starts: the connection's
    /// ([`ConnectionConfig::validate`]), at least one worker, a prefetch of at least 1, a
    /// queue name, a consumer timeout of at least 1 ms if set, a backoff that does not
    /// shrink, and a maximum priority only on a classic queue.
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
        if self.max_priority.is_some() && self.queue_type != QueueType::Classic {
            return Err(Error::Config(
                "max_priority needs a classic queue (queue_type Classic): quorum queues take no \
                 x-max-priority"
                    .into(),
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
