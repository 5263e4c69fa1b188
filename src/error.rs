//! The library's one error type.

use std::time::Duration;

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The underlying error a failure came from, kept for [`std::error::Error::source`].
type Source = Box<dyn std::error::Error + Send + Sync>;

/// Everything that can go wrong in a call, a server or a connection.
///
/// Match on the helpers ([`is_timeout`](Error::is_timeout) and friends) rather than on variants
/// where you can: new variants may appear in minor releases. Where a failure came from the
/// AMQP driver or the operating system, [`source`](std::error::Error::source) gives it.
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
        /// The driver's or the operating system's error, if there was one.
        #[source]
        source: Option<Source>,
    },

    /// An open connection to the broker was lost while it was needed (broker restart, connection
    /// closed by the broker, network cut, missed heartbeats).
    #[error("connection to the broker lost: {0}")]
    ConnectionLost(String),

    /// The call's timeout passed before it was done; `stage` says what it was waiting for.
    #[error("timed out after {timeout:?} waiting for {stage} (queue {queue:?})")]
    Timeout {
        /// The request queue the call was sent to.
        queue: String,
        /// The timeout the call was given.
        timeout: Duration,
        /// What the call was waiting for when its time ran out.
        stage: Stage,
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
        /// The driver's error, if there was one.
        #[source]
        source: Option<Source>,
    },
}

/// What a timed-out call was waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stage {
    /// Connecting (again) to the broker.
    Connect,
    /// The broker's answer to the no-server check (is anyone consuming the queue?).
    ServerCheck,
    /// Handing the request to the broker (its buffers were full).
    Publish,
    /// The broker's publisher confirm of a submitted request.
    Confirm,
    /// The server's reply.
    Reply,
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stage::Connect => "a connection to the broker",
            Stage::ServerCheck => "the no-server check",
            Stage::Publish => "the broker to take the request",
            Stage::Confirm => "the broker's confirm of the request",
            Stage::Reply => "the reply",
        })
    }
}

impl Error {
    /// True if the call gave up waiting (for a reply, or for the broker).
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

    /// True if a setting or the URL is unusable.
    pub fn is_config(&self) -> bool {
        matches!(self, Error::Config(_))
    }

    /// True if the broker refused the credentials (as opposed to being unreachable).
    pub fn is_access_refused(&self) -> bool {
        matches!(self, Error::Connect { reason, .. } if reason.contains("credentials") || reason.contains("ACCESS_REFUSED"))
    }

    /// True if a reply did not follow the protocol (a foreign server's, say).
    pub fn is_protocol(&self) -> bool {
        matches!(self, Error::Protocol(_))
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
            source: Some(Box::new(source)),
        }
    }

    pub(crate) fn connect(
        address: impl Into<String>,
        reason: impl Into<String>,
        source: Option<Source>,
    ) -> Error {
        Error::Connect {
            address: address.into(),
            reason: reason.into(),
            source,
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn driver_errors_are_kept_as_the_source() {
        let error = Error::broker("declaring queue q", amiquip::Error::EventLoopDropped);
        assert!(error.source().is_some());
        assert!(error.to_string().contains("declaring queue q"));
    }

    #[test]
    fn a_timeout_names_what_it_waited_for() {
        let error = Error::Timeout {
            queue: "q".into(),
            timeout: Duration::from_secs(1),
            stage: Stage::ServerCheck,
        };
        assert!(error.is_timeout());
        assert_eq!(
            error.to_string(),
            "timed out after 1s waiting for the no-server check (queue \"q\")"
        );
    }
}
