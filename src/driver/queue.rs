//! Channels and queue declarations every part of the crate needs.

use crate::config::QueueType;
use crate::error::{Error, Result};
use amiquip::{AmqpValue, Channel, Connection, FieldTable, QueueDeclareOptions, Return};
use crossbeam_channel::Receiver;

/// Queue argument naming the queue type.
const QUEUE_TYPE_ARGUMENT: &str = "x-queue-type";

/// Classic-queue argument: the highest message priority the queue orders by.
const MAX_PRIORITY_ARGUMENT: &str = "x-max-priority";

/// AMQP reply code for a request that conflicts with the broker's state, here a declaration
/// with other arguments than the queue's.
const PRECONDITION_FAILED: u16 = 406;

pub(crate) fn open_channel(connection: &mut Connection) -> Result<Channel> {
    connection
        .open_channel(None)
        .map_err(|e| Error::broker("opening a channel", e))
}

/// The mandatory messages published on `channel` that the broker returns unroutable.
pub(crate) fn listen_for_returns(channel: &Channel) -> Result<Receiver<Return>> {
    channel
        .listen_for_returns()
        .map_err(|e| Error::broker("listening for returned messages", e))
}

/// A channel to publish on, and the messages the broker returns on it.
pub(crate) fn open_publishing(connection: &mut Connection) -> Result<(Channel, Receiver<Return>)> {
    let channel = open_channel(connection)?;
    let returns = listen_for_returns(&channel)?;
    Ok((channel, returns))
}

/// Declares a durable queue of this type (and maximum priority, if given); if it exists with
/// other arguments (a tutorial server declared it differently, say), uses it as it is.
pub(crate) fn declare_durable(
    connection: &mut Connection,
    queue: &str,
    queue_type: QueueType,
    max_priority: Option<u8>,
) -> Result<()> {
    let mut arguments = FieldTable::new();
    if let Some(max) = max_priority {
        arguments.insert(
            MAX_PRIORITY_ARGUMENT.to_owned(),
            AmqpValue::LongInt(max.into()),
        );
    }
    if queue_type == QueueType::Quorum {
        arguments.insert(
            QUEUE_TYPE_ARGUMENT.to_owned(),
            AmqpValue::LongString("quorum".to_owned()),
        );
    }
    let options = QueueDeclareOptions {
        durable: true,
        arguments,
        ..QueueDeclareOptions::default()
    };
    let channel = open_channel(connection)?;
    match channel.queue_declare(queue, options) {
        Ok(_) => {
            let _ = channel.close();
            Ok(())
        }
        Err(amiquip::Error::ServerClosedChannel { code, message, .. })
            if code == PRECONDITION_FAILED =>
        {
            log::warn!(
                "queue {queue} exists with other settings than ours ({message}); using it as it is"
            );
            let channel = open_channel(connection)?;
            channel
                .queue_declare_passive(queue)
                .map_err(|e| Error::broker(format!("using queue {queue}"), e))?;
            let _ = channel.close();
            Ok(())
        }
        Err(error) => Err(Error::broker(format!("declaring queue {queue}"), error)),
    }
}

/// Declares an exclusive, server-named callback queue; it goes with the connection.
pub(crate) fn declare_callback(channel: &Channel) -> Result<String> {
    let options = QueueDeclareOptions {
        exclusive: true,
        ..QueueDeclareOptions::default()
    };
    let queue = channel
        .queue_declare("", options)
        .map_err(|e| Error::broker("declaring a callback queue", e))?;
    Ok(queue.name().to_owned())
}

/// Declares an exclusive, server-named queue bound to `exchange` under `routing_key`, for
/// messages to this connection alone; it goes with the connection.
pub(crate) fn declare_bound_exclusive(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
) -> Result<String> {
    let options = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..QueueDeclareOptions::default()
    };
    let queue = channel
        .queue_declare("", options)
        .map_err(|e| Error::broker("declaring a control queue", e))?;
    let name = queue.name().to_owned();
    channel
        .queue_bind(name.as_str(), exchange, routing_key, FieldTable::new())
        .map_err(|e| Error::broker(format!("binding the control queue to {exchange}"), e))?;
    Ok(name)
}
