//! Queue administration: status and purge, without `rabbitmqctl`.

use crate::config::ConnectionConfig;
use crate::deadline;
use crate::driver::amqp::{self, Link};
use crate::driver::queue::open_channel;
use crate::driver::watchdog::{Bounded, Cutter};
use crate::driver::{Connection, DriverError};
use crate::error::{Error, Result};
use crate::protocol::NOT_FOUND;
use std::sync::Arc;
use std::time::Duration;

/// A queue as the broker reports it: `rabbitmqctl list_queues name messages consumers`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueStatus {
    /// The queue's name.
    pub name: String,
    /// Messages ready for delivery (not counting those delivered and not yet acked).
    pub messages: u32,
    /// Consumers attached.
    pub consumers: u32,
}

/// A connection for inspecting and managing queues. Each question to the broker takes at most
/// the connection's connect timeout.
pub struct QueueAdmin {
    connection: Connection,
    cutter: Arc<Cutter>,
    timeout: Duration,
}

impl std::fmt::Debug for QueueAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueAdmin")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl QueueAdmin {
    /// Connects to the broker with these settings (a URL, or a [`ConnectionConfig`]), checked
    /// first ([`ConnectionConfig::validate`]).
    pub fn connect(config: impl Into<ConnectionConfig>) -> Result<QueueAdmin> {
        let config = &config.into();
        config.validate()?;
        let Link {
            connection, cutter, ..
        } = amqp::open(config, "fib-rpc admin", None, 0)?;
        Ok(QueueAdmin {
            connection,
            cutter,
            timeout: config.connect_timeout,
        })
    }

    /// Messages ready and consumers attached; [`Error::QueueNotFound`] if there is no such queue.
    pub fn status(&mut self, queue: &str) -> Result<QueueStatus> {
        let status = self.cutter.bounded(deadline::from_now(self.timeout), || {
            ask_status(&mut self.connection, queue)
        });
        self.unanswered(status)
    }

    /// Deletes every ready message of `queue`; returns how many there were.
    pub fn purge(&mut self, queue: &str) -> Result<u32> {
        let purged = self.cutter.bounded(deadline::from_now(self.timeout), || {
            ask_purge(&mut self.connection, queue)
        });
        self.unanswered(purged)
    }

    /// Closes the connection.
    pub fn close(self) -> Result<()> {
        self.cutter
            .close_within(self.timeout, self.connection)
            .outcome
            .map_err(|e| Error::broker("closing the connection", e))
    }

    /// The broker's answer, or a connection error if it gave none in time.
    fn unanswered<T>(&self, answer: Bounded<Result<T>>) -> Result<T> {
        if answer.cut {
            return Err(Error::ConnectionLost(format!(
                "the broker did not answer within {:?}",
                self.timeout
            )));
        }
        answer.outcome
    }
}

fn ask_status(connection: &mut Connection, queue: &str) -> Result<QueueStatus> {
    // A passive declaration of a missing queue closes its channel: one channel per question.
    let channel = open_channel(connection)?;
    let status = channel
        .queue_declare_passive(queue)
        .map(|declared| QueueStatus {
            name: queue.to_owned(),
            messages: declared.declared_message_count().unwrap_or(0),
            consumers: declared.declared_consumer_count().unwrap_or(0),
        })
        .map_err(|error| not_found_or(queue, error, "inspecting"))?;
    let _ = channel.close();
    Ok(status)
}

fn ask_purge(connection: &mut Connection, queue: &str) -> Result<u32> {
    ask_status(connection, queue)?;
    let channel = open_channel(connection)?;
    let purged = channel
        .queue_purge(queue)
        .map_err(|error| not_found_or(queue, error, "purging"))?;
    let _ = channel.close();
    Ok(purged)
}

fn not_found_or(queue: &str, error: DriverError, operation: &str) -> Error {
    match error {
        DriverError::ServerClosedChannel { code, .. } if code == NOT_FOUND => {
            Error::QueueNotFound(queue.to_owned())
        }
        other => Error::broker(format!("{operation} queue {queue:?}"), other),
    }
}
