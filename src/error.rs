//! The library's one error type.

use std::time::Duration;

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in a call, a server or a connection.
///
/// Match on the helpers ([`is_timeout`](Error::is_timeout) and friends) rather than on variants
/// where you can: new variants may appear in minor releases.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The AMQP URL or another setting is unusable; nothing was sent.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// No connection to the broker could be opened (refused, unreachable, bad credentials, timed out).
    #[error("cannot connect to the broker at {address}: {reason}")]
    Connect {
        /// Host and port, never the credentials.
        address: String,
        /// What failed, as precisely as the driver told us.
        reason: String,
    },

    /// An open connection to the broker was lost while it was needed (broker restart, connection
    /// closed by the broker, network cut, missed heartbeats).
    #[error("connection to the broker lost: {0}")]
    ConnectionLost(String),

    /// No reply arrived before the deadline.
    #[error("no reply from queue {queue:?} within {timeout:?}")]
    Timeout {
        /// The request queue the call was sent to.
        queue: String,
        /// The timeout the call was given.
        timeout: Duration,
    },

    /// Nothing serves the request queue: the broker could not route the request (no such queue).
    #[error("no server for queue {queue:?}: {reason}")]
    NoServer {
        /// The request queue the call was sent to.
        queue: String,
        /// What the broker said.
        reason: String,
    },

    /// The queue does not exist.
    #[error("no queue named {0:?}")]
    QueueNotFound(String),

    /// The server answered with an error reply (`type = error`): bad input, refused work, or a
    /// failing handler. The message is the server's.
    #[error("remote error: {0}")]
    Remote(String),

    /// The reply could not be understood (for example a non-decimal body from a foreign server).
    #[error("malformed reply: {0}")]
    Protocol(String),

    /// The broker refused an operation (for example a queue declaration it rejected).
    #[error("broker refused {operation}: {reason}")]
    Broker {
        /// What we asked for.
        operation: String,
        /// What the broker or driver said.
        reason: String,
    },
}

impl Error {
    /// True if the call gave up waiting for a reply.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Timeout { .. })
    }

    /// True if no server serves the request queue.
    pub fn is_no_server(&self) -> bool {
        matches!(self, Error::NoServer { .. })
    }

    /// True if a queue asked about does not exist.
    pub fn is_queue_not_found(&self) -> bool {
        matches!(self, Error::QueueNotFound(_))
    }

    /// True if the server answered with an error reply.
    pub fn is_remote(&self) -> bool {
        matches!(self, Error::Remote(_))
    }

    /// True if the broker could not be reached or the connection to it broke.
    pub fn is_connection(&self) -> bool {
        matches!(self, Error::Connect { .. } | Error::ConnectionLost(_))
    }

    /// The server's message for an error reply.
    pub fn remote_message(&self) -> Option<&str> {
        match self {
            Error::Remote(message) => Some(message),
            _ => None,
        }
    }

    pub(crate) fn broker(operation: impl Into<String>, source: amiquip::Error) -> Error {
        Error::Broker {
            operation: operation.into(),
            reason: source.to_string(),
        }
    }
}

/// The error a handler returns for a request it cannot serve; it becomes the body of the error
/// reply, so write it for the caller ("n must be at most 100000, got 250000").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerError(String);

impl HandlerError {
    /// An error reply with this message.
    pub fn new(message: impl Into<String>) -> Self {
        HandlerError(message.into())
    }

    /// The message sent back to the caller.
    pub fn message(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for HandlerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for HandlerError {}

impl From<String> for HandlerError {
    fn from(message: String) -> Self {
        HandlerError(message)
    }
}

impl From<&str> for HandlerError {
    fn from(message: &str) -> Self {
        HandlerError(message.to_owned())
    }
}
