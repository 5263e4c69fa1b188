//! A worker's channel and its consumer, with what the worker knows of them, and how the
//! channel's service ends.

use super::reply::Reply;
use crate::driver::{
    AmqpValue, Channel, Consumer, ConsumerMessage, ConsumerOptions, Delivery, DriverError,
    FieldTable,
};
use crate::error::{Error, Result};
use crate::protocol::{self, CONSUMER_TIMEOUT_ARGUMENT};
use crossbeam_channel::TryRecvError;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How one channel's service ended.
pub(super) enum ChannelEnd {
    Stopped,
    /// The connection is gone.
    Lost(String),
    /// The broker closed this channel (or cancelled its consumer); `unsent` is a reply it may
    /// not have carried.
    Closed {
        reason: String,
        unsent: Option<Box<Reply>>,
    },
}

/// A channel and its consumer, with what the worker knows of them.
pub(super) struct Lane<'a> {
    pub channel: &'a Channel,
    pub consumer: Consumer<'a>,
    /// Deliveries read while checking the channel before a publish.
    pub backlog: VecDeque<ConsumerMessage>,
    /// When the consumer's buffer was last seen empty.
    pub last_empty: Instant,
    /// The last reply published, until a later delivery shows the broker took it.
    pub held: Option<Box<Reply>>,
}

/// Consumes `queue` on `channel` with `prefetch` unacknowledged requests, asking the broker
/// for `consumer_timeout` where it takes the consumer argument.
pub(super) fn consume<'a>(
    channel: &'a Channel,
    queue: &str,
    prefetch: u16,
    consumer_timeout: Option<Duration>,
) -> Result<Consumer<'a>> {
    let mut arguments = FieldTable::new();
    if let Some(timeout) = consumer_timeout {
        let millis = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
        arguments.insert(
            CONSUMER_TIMEOUT_ARGUMENT.to_owned(),
            AmqpValue::LongLongInt(millis),
        );
    }
    let options = ConsumerOptions {
        arguments,
        ..ConsumerOptions::default()
    };
    channel
        .qos(0, prefetch, false)
        .and_then(|()| channel.basic_consume(queue, options))
        .map_err(|error| Error::broker(format!("consuming {queue}"), error))
}

impl Lane<'_> {
    pub fn ack(&self, delivery: Delivery) -> std::result::Result<(), ChannelEnd> {
        delivery.ack(self.channel).map_err(|error| match error {
            DriverError::ServerClosedChannel { code, message, .. } => ChannelEnd::Closed {
                reason: format!("{code} {message}"),
                unsent: None,
            },
            other => ChannelEnd::Lost(other.to_string()),
        })
    }

    /// The longest a message just taken can have waited in the consumer's buffer.
    pub fn buffered_for(&self) -> Duration {
        self.last_empty.elapsed()
    }

    /// Why the channel is gone, if the broker closed it (or cancelled the consumer) since the
    /// last look; deliveries read meanwhile wait in the backlog.
    pub fn closed_meanwhile(&mut self) -> Option<String> {
        loop {
            match self.consumer.receiver().try_recv() {
                Ok(ConsumerMessage::Delivery(delivery)) => {
                    self.backlog.push_back(ConsumerMessage::Delivery(delivery))
                }
                Ok(ConsumerMessage::ServerClosedChannel(error)) => return Some(error.to_string()),
                Ok(ConsumerMessage::ServerCancelled) => {
                    return Some("the broker cancelled our consumer".to_owned())
                }
                Ok(other) => {
                    self.backlog.push_back(other);
                    return None;
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return None,
            }
        }
    }
}

/// Says what the broker did to this worker's channel, and what to do about it.
pub(super) fn explain(worker: usize, reason: &str) {
    if protocol::is_consumer_timeout(reason) {
        log::warn!(
            "worker {worker}: the broker closed its channel because a request stayed \
             unacknowledged past the broker's consumer timeout ({reason}): the handler ran \
             longer than that. The reply goes out on a new channel and the requeued copy is \
             not computed again. Raise RabbitMQ's consumer_timeout (rabbitmq.conf), or set \
             ServerConfig::consumer_timeout / fib-server --consumer-timeout on brokers that \
             take the x-consumer-timeout consumer argument (RabbitMQ 3.12 and later)"
        );
    } else if protocol::refused_size_limit(reason).is_some() {
        log::warn!("worker {worker}: the broker closed its channel: {reason}");
    } else {
        log::warn!("worker {worker}: the broker closed its channel ({reason}); opening another");
    }
}
