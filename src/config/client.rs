//! Client settings.

use super::ConnectionConfig;
use crate::error::{Error, Result};
use crate::retry::RetryPolicy;
use std::time::Duration;

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
    pub(crate) retry: Option<RetryPolicy>,
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
            retry: None,
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
    /// declare a missing queue and consume from it, and leaves requests in an idle one.
    pub fn require_consumer(mut self, require: bool) -> Self {
        self.require_consumer = require;
        self
    }

    /// Where replies come back; default [`ReplyMode::CallbackQueue`].
    pub fn reply_mode(mut self, mode: ReplyMode) -> Self {
        self.reply_mode = mode;
        self
    }

    /// Makes failed calls again as `policy` says, unless a call sets its own
    /// ([`Call::retry`](crate::Call::retry)); default: never (a call is made once, and retrying
    /// is the caller's choice, since it makes calls at-least-once).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
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

    /// See [`ClientConfig::retry`].
    pub fn get_retry(&self) -> Option<&RetryPolicy> {
        self.retry.as_ref()
    }

    /// Checks these settings together, as a client does before it connects: the connection's
    /// ([`ConnectionConfig::validate`]), a call timeout above zero, and the retry policy's
    /// ([`RetryPolicy::validate`]).
    pub fn validate(&self) -> Result<()> {
        if self.call_timeout.is_zero() {
            return Err(Error::Config("call_timeout must be above zero".into()));
        }
        if let Some(retry) = &self.retry {
            retry.validate()?;
        }
        self.connection.validate()
    }
}
