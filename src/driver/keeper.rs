//! A consuming channel kept by a thread of its own.
//!
//! amiquip's `Consumer` borrows its `Channel`, and a `Channel` cannot be shared between threads,
//! yet a client's reply consumer must live as long as its connection, next to callers on any
//! thread. So a keeper thread owns the channel and its consumer; others read the deliveries
//! from a cloned receiver and send it what must happen on that very channel (publishing for
//! direct reply-to, acking, consuming one more queue). When the keeper's handle is dropped,
//! after its connection has closed, the thread drops the consumers and the channel, and all
//! they hold is freed.

use super::queue;
use crate::error::{Error, Result};
use amiquip::{AmqpProperties, Channel, ConsumerMessage, ConsumerOptions, Delivery, Publish};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

/// A message to publish on the keeper's channel.
pub(crate) struct OwnedPublish {
    /// `""`: the default exchange, which routes to the queue named by the routing key.
    pub exchange: String,
    pub routing_key: String,
    pub body: Vec<u8>,
    pub properties: AmqpProperties,
    pub mandatory: bool,
}

impl OwnedPublish {
    /// A copy of `publish`, to `exchange`, for another thread to send.
    pub fn from_publish(exchange: &str, publish: Publish<'_>) -> OwnedPublish {
        OwnedPublish {
            exchange: exchange.to_owned(),
            routing_key: publish.routing_key.to_owned(),
            body: publish.body.to_vec(),
            properties: publish.properties,
            mandatory: publish.mandatory,
        }
    }

    /// The message as amiquip publishes it, borrowing the body.
    pub fn as_publish(&self) -> Publish<'_> {
        Publish {
            mandatory: self.mandatory,
            ..Publish::with_properties(
                &self.body,
                self.routing_key.as_str(),
                self.properties.clone(),
            )
        }
    }
}

/// A queue the keeper consumes, and its deliveries.
pub(crate) type Subscribed = (String, Receiver<ConsumerMessage>);

enum Command {
    Publish(OwnedPublish),
    Ack(Delivery, Sender<Result<()>>),
    /// Declare an exclusive, server-named queue and consume it as the first, then hand the
    /// outcome on.
    ConsumeExclusive(Box<dyn FnOnce(Result<Subscribed>) + Send>),
}

/// Work the keeper does every `interval` while nothing else is asked of it; it stops the
/// keeper by returning false.
pub(crate) type Tick = Box<dyn FnMut() -> bool + Send>;

/// Handle on a keeper thread: its deliveries, and a way to act on its channel.
pub(crate) struct Keeper {
    commands: Sender<Command>,
    deliveries: Receiver<ConsumerMessage>,
}

impl Keeper {
    /// Starts consuming `queue` on `channel` from a new thread; returns once the broker has
    /// confirmed the subscription. `tick` runs every `interval` while the keeper is idle.
    pub fn start(
        channel: Channel,
        queue: String,
        options: ConsumerOptions,
        interval: Duration,
        mut tick: Tick,
        on_publish_error: Box<dyn Fn(String) + Send>,
    ) -> Result<Keeper> {
        let (commands, orders) = crossbeam_channel::unbounded::<Command>();
        let (ready_sender, ready) = crossbeam_channel::bounded(1);
        std::thread::Builder::new()
            .name("fib-rpc-consumer".into())
            .spawn(move || {
                let consumer = match channel.basic_consume(queue.as_str(), options.clone()) {
                    Ok(consumer) => consumer,
                    Err(error) => {
                        let _ = ready_sender
                            .send(Err(Error::broker(format!("consuming {queue}"), error)));
                        return;
                    }
                };
                let _ = ready_sender.send(Ok(consumer.receiver().clone()));
                let mut consumers = vec![consumer];
                let mut next_tick = Instant::now() + interval;
                loop {
                    // Busy or not, the tick keeps its schedule.
                    if Instant::now() >= next_tick {
                        next_tick = Instant::now() + interval;
                        if !tick() {
                            break;
                        }
                    }
                    match orders.recv_deadline(next_tick) {
                        Ok(Command::Publish(publish)) => {
                            if let Err(error) =
                                channel.basic_publish(&publish.exchange, publish.as_publish())
                            {
                                on_publish_error(error.to_string());
                            }
                        }
                        Ok(Command::Ack(delivery, done)) => {
                            let _ = done.send(
                                delivery
                                    .ack(&channel)
                                    .map_err(|e| Error::ConnectionLost(format!("acking: {e}"))),
                            );
                        }
                        Ok(Command::ConsumeExclusive(then)) => {
                            let subscribed = queue::declare_callback(&channel).and_then(|name| {
                                let consumer = channel
                                    .basic_consume(name.as_str(), options.clone())
                                    .map_err(|e| Error::broker("consuming a callback queue", e))?;
                                let receiver = consumer.receiver().clone();
                                consumers.push(consumer);
                                Ok((name, receiver))
                            });
                            then(subscribed);
                        }
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
                // By now the connection is closed (or about to be), so the consumers' cancels
                // and the channel's close fail at once instead of waiting on the broker.
                drop(consumers);
                drop(channel);
            })
            .map_err(|e| Error::Internal(format!("cannot start a consumer thread: {e}")))?;
        let deliveries = ready
            .recv()
            .unwrap_or_else(|_| Err(Error::ConnectionLost("the consumer thread ended".into())))?;
        Ok(Keeper {
            commands,
            deliveries,
        })
    }

    /// Deliveries and the consumer's fate, as amiquip reports them.
    pub fn deliveries(&self) -> &Receiver<ConsumerMessage> {
        &self.deliveries
    }

    /// Publishes on the keeper's channel without waiting; failures go to `on_publish_error`.
    pub fn publish(&self, publish: OwnedPublish) -> Result<()> {
        self.commands
            .send(Command::Publish(publish))
            .map_err(|_| Error::ConnectionLost("the consumer thread ended".into()))
    }

    /// Has the keeper declare an exclusive, server-named queue on its channel and consume it
    /// as the first queue is, without waiting: `then` gets its name and deliveries, on the
    /// keeper's thread.
    pub fn consume_exclusive(
        &self,
        then: Box<dyn FnOnce(Result<Subscribed>) + Send>,
    ) -> Result<()> {
        self.commands
            .send(Command::ConsumeExclusive(then))
            .map_err(|_| Error::ConnectionLost("the consumer thread ended".into()))
    }

    /// Acks `delivery` on the keeper's channel, the one it came on.
    pub fn ack(&self, delivery: Delivery) -> Result<()> {
        let (done, outcome) = crossbeam_channel::bounded(1);
        self.commands
            .send(Command::Ack(delivery, done))
            .map_err(|_| Error::ConnectionLost("the consumer thread ended".into()))?;
        outcome
            .recv()
            .unwrap_or_else(|_| Err(Error::ConnectionLost("the consumer thread ended".into())))
    }
}
