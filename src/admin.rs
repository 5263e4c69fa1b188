//! Queue administration: declaring durable queues, status and purge, without `rabbitmqctl`.

use crate::config::ConnectionConfig;
use crate::deadline;
use crate::driver::amqp::{self, Link};
use crate::driver::queue::{open_channel, NOT_FOUND};
use crate::driver::watchdog::{Alarm, Cutter};
use crate::error::{Error, Result};
use amiquip::Connection;
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
    /// Connects to the broker.
    pub fn connect(config: &ConnectionConfig) -> Result<QueueAdmin> {
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
        let alarm = Alarm::arm(deadline::from_now(self.timeout), &self.cutter);
        let status = self.ask_status(queue);
        self.unanswered(alarm, status)
    }

    /// Deletes every ready message of `queue`; returns how many there were.
    pub fn purge(&mut self, queue: &str) -> Result<u32> {
        let alarm = Alarm::arm(deadline::from_now(self.timeout), &self.cutter);
        let purged = self.ask_purge(queue);
        self.unanswered(alarm, purged)
    }

    /// Closes the connection.
    pub fn close(self) -> Result<()> {
        let alarm = Alarm::arm(deadline::from_now(self.timeout), &self.cutter);
        let closed = self
            .connection
            .close()
            .map_err(|e| Error::broker("closing the connection", e));
        drop(alarm);
        closed
    }

    /// The broker's answer, or a connection error if it gave none before the alarm.
    fn unanswered<T>(&self, alarm: Alarm, answer: Result<T>) -> Result<T> {
        if alarm.fired() {
            return Err(Error::ConnectionLost(format!(
                "the broker did not answer within {:?}",
                self.timeout
            )));
        }
        answer
    }

    fn ask_status(&mut self, queue: &str) -> Result<QueueStatus> {
        // A passive declaration of a missing queue closes its channel: one channel per question.
        let channel = open_channel(&mut self.connection)?;
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

    fn ask_purge(&mut self, queue: &str) -> Result<u32> {
        self.ask_status(queue)?;
        let channel = open_channel(&mut self.connection)?;
        let purged = channel
            .queue_purge(queue)
            .map_err(|error| not_found_or(queue, error, "purging"))?;
        let _ = channel.close();
        Ok(purged)
    }
}

fn not_found_or(queue: &str, error: amiquip::Error, operation: &str) -> Error {
    match error {
        amiquip::Error::ServerClosedChannel { code, .. } if code == NOT_FOUND => {
            Error::QueueNotFound(queue.to_owned())
        }
        other => Error::broker(format!("{operation} queue {queue:?}"), other),
    }
}
