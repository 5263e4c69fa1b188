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

    /// Something inside fib-rpc failed that no setting or input explains: a thread could not
    /// be started, or one panicked.
    #[error("internal error: {0}")]
    Internal(String),

    /// No connection to the broker could be opened (refused, unreachable, bad credentials, timed out).
    #[error("cannot connect to the broker at {address}: {reason}")]
    Connect {
        /// Host and port, never the credentials.
        address: String,
        /// What failed, as precisely as the driver told us.
        reason: String,
        /// The broker's AMQP reply code, where it gave one (403 for refused credentials).
        code: Option<u16>,
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

    /// The broker blocks publishing on this connection (a memory or disk alarm): the call was
    /// not sent, or its reply could not come, before its timeout.
    #[error(
        "timed out after {timeout:?}: the broker blocks publishing ({reason}) (queue {queue:?})"
    )]
    Blocked {
        /// The request queue the call was sent to.
        queue: String,
        /// The timeout the call was given.
        timeout: Duration,
        /// The broker's reason, as it sent it (`low on memory`, `low on disk`).
        reason: String,
    },

    /// A message is larger than the broker takes (its `max_message_size`); nothing was sent.
    #[error("{what} is {size} bytes, over the broker's limit of {limit} bytes (max_message_size)")]
    TooLarge {
        /// Which message: "the request", say.
        what: String,
        /// Its size in bytes.
        size: usize,
        /// The limit it exceeds.
        limit: usize,
    },

    /// The broker refused an operation (for example a queue declaration it rejected).
    #[error("broker refused {operation}: {reason}")]
    Broker {
        /// What we asked for.
        operation: String,
        /// What the broker or driver said.
        reason: String,
        /// The broker's AMQP reply code, where it gave one (403 access refused, 404 not found,
        /// 406 precondition failed).
        code: Option<u16>,
        /// The driver's error, if there was one.
        #[source]
        source: Option<Source>,
    },
}

/// What kind of failure an [`Error`] is, for code that branches on it (an exit code, a retry);
/// [`Error::kind`] gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A setting or the URL is unusable.
    Config,
    /// The broker could not be reached.
    Unreachable,
    /// The broker refused the credentials, or the user's permissions (AMQP 403).
    AccessRefused,
    /// An open connection was lost.
    ConnectionLost,
    /// The call's time ran out.
    Timeout,
    /// The broker blocks publishing (a resource alarm) and the call's time ran out.
    Blocked,
    /// Nothing serves the request queue.
    NoServer,
    /// A queue asked about does not exist.
    QueueNotFound,
    /// The server answered with an error reply.
    Remote,
    /// A reply did not follow the protocol.
    Protocol,
    /// A message is over the broker's size limit.
    TooLarge,
    /// The broker refused an operation for another reason.
    Broker,
    /// A failure inside fib-rpc (a thread that could not start, a panic).
    Internal,
}

/// AMQP reply code ACCESS_REFUSED.
pub(crate) const ACCESS_REFUSED: u16 = 403;

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
    /// Progress or the reply, for longer than the call's idle timeout.
    Progress,
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stage::Connect => "a connection to the broker",
            Stage::ServerCheck => "the no-server check",
            Stage::Publish => "the broker to take the request",
            Stage::Confirm => "the broker's confirm of the request",
            Stage::Reply => "the reply",
            Stage::Progress => "progress or the reply",
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

    /// True if the broker refused the credentials or the user's permissions (AMQP reply code
    /// 403), as opposed to being unreachable.
    pub fn is_access_refused(&self) -> bool {
        self.kind() == ErrorKind::AccessRefused
    }

    /// True if the broker blocks publishing (a resource alarm) and the call gave up.
    pub fn is_blocked(&self) -> bool {
        matches!(self, Error::Blocked { .. })
    }

    /// True if a message was over the broker's size limit.
    pub fn is_too_large(&self) -> bool {
        matches!(self, Error::TooLarge { .. })
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Config(_) => ErrorKind::Config,
            Error::Internal(_) => ErrorKind::Internal,
            Error::Connect {
                code: Some(ACCESS_REFUSED),
                ..
            }
            | Error::Broker {
                code: Some(ACCESS_REFUSED),
                ..
            } => ErrorKind::AccessRefused,
            Error::Connect { .. } => ErrorKind::Unreachable,
            Error::ConnectionLost(_) => ErrorKind::ConnectionLost,
            Error::Timeout { .. } => ErrorKind::Timeout,
            Error::Blocked { .. } => ErrorKind::Blocked,
            Error::NoServer { .. } => ErrorKind::NoServer,
            Error::QueueNotFound(_) => ErrorKind::QueueNotFound,
            Error::Remote(_) => ErrorKind::Remote,
            Error::Protocol(_) => ErrorKind::Protocol,
            Error::TooLarge { .. } => ErrorKind::TooLarge,
            Error::Broker { .. } => ErrorKind::Broker,
        }
    }

    /// True if the same call may succeed when made again later, unchanged: the broker or a
    /// server was out of reach, busy or blocked for a while. Retrying is the caller's choice:
    /// a request that timed out may have been computed already.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind(),
            ErrorKind::Unreachable
                | ErrorKind::ConnectionLost
                | ErrorKind::Timeout
                | ErrorKind::Blocked
                | ErrorKind::NoServer
        )
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

    /// The broker refused `operation` with reply `code` and `text`.
    pub(crate) fn refused(operation: impl Into<String>, code: u16, text: &str) -> Error {
        Error::Broker {
            operation: operation.into(),
            reason: format!("{code} {text}"),
            code: Some(code),
            source: None,
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
            code: None,
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

    #[test]
    fn kinds_come_from_reply_codes_not_from_message_text() {
        let refused = Error::refused("declaring queue q", 403, "no configure permission");
        assert_eq!(refused.kind(), ErrorKind::AccessRefused);
        assert!(refused.is_access_refused() && !refused.is_retryable());
        let worded_like_it = Error::connect("h:1", "ACCESS_REFUSED credentials", None);
        assert_eq!(worded_like_it.kind(), ErrorKind::Unreachable);
        assert!(worded_like_it.is_retryable());
        assert_eq!(
            Error::refused("publishing", 406, "PRECONDITION_FAILED").kind(),
            ErrorKind::Broker
        );
        let blocked = Error::Blocked {
            queue: "q".into(),
            timeout: Duration::from_secs(1),
            reason: "low on memory".into(),
        };
        assert!(blocked.is_blocked() && blocked.is_retryable() && !blocked.is_timeout());
        assert!(blocked.to_string().contains("low on memory"));
        let large = Error::TooLarge {
            what: "the request".into(),
            size: 2_097_152,
            limit: 1_048_576,
        };
        assert_eq!(large.kind(), ErrorKind::TooLarge);
        assert!(!large.is_retryable());
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
