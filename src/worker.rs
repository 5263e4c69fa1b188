//! One worker of a server: its own channel and prefetch, a request answered and then acked.

use crate::deadline;
use crate::error::{Error, HandlerError, Result};
use crate::handler::{refusal, Handler, Request};
use crate::protocol::{self, CONTENT_TYPE, ERROR_TYPE};
use crate::server::SessionEnd;
use crate::stats::{count, Counters};
use crate::watchdog::{Alarm, Cutter};
use amiquip::{AmqpProperties, Channel, ConsumerMessage, ConsumerOptions, Delivery, Publish};
use crossbeam_channel::{Receiver, Sender};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// `reply_to` prefix of RabbitMQ's direct reply-to pseudo-queues.
const DIRECT_REPLY_TO_PREFIX: &str = "amq.rabbitmq.reply-to.";

pub(crate) struct Worker {
    pub queue: String,
    pub prefetch: u16,
    pub handler: Arc<dyn Handler>,
    pub stop: Receiver<()>,
    pub counters: Arc<Counters>,
    pub cutter: Arc<Cutter>,
    pub close_timeout: Duration,
}

impl Worker {
    pub fn run(self, channel: Channel, consuming: Sender<Result<()>>) -> SessionEnd {
        let consumer = match channel
            .qos(0, self.prefetch, false)
            .and_then(|()| channel.basic_consume(self.queue.as_str(), ConsumerOptions::default()))
        {
            Ok(consumer) => consumer,
            Err(error) => {
                let reason = error.to_string();
                let _ = consuming.send(Err(Error::broker(
                    format!("consuming {}", self.queue),
                    error,
                )));
                return SessionEnd::Lost(reason);
            }
        };
        let _ = consuming.send(Ok(()));
        drop(consuming);
        loop {
            crossbeam_channel::select! {
                recv(consumer.receiver()) -> message => match message {
                    Ok(ConsumerMessage::Delivery(delivery)) => {
                        if let Err(error) = self.serve(&channel, delivery) {
                            return SessionEnd::Lost(error.to_string());
                        }
                    }
                    Ok(ConsumerMessage::ServerClosedConnection(error))
                    | Ok(ConsumerMessage::ServerClosedChannel(error)) => {
                        return SessionEnd::Lost(error.to_string())
                    }
                    Ok(ConsumerMessage::ServerCancelled) => {
                        return SessionEnd::Lost(format!("the broker cancelled our consumer (queue {} deleted?)", self.queue))
                    }
                    Ok(_) | Err(_) => return SessionEnd::Lost("the connection was closed".into()),
                },
                recv(self.stop) -> _ => break,
            }
        }
        // Stop: cancel, then serve whatever the broker sent before the cancel took effect, and
        // leave only on the cancellation's own message, so nothing in hand goes unanswered.
        let alarm = Alarm::arm(deadline::from_now(self.close_timeout), &self.cutter);
        let cancelled = consumer.cancel();
        drop(alarm);
        if let Err(error) = cancelled {
            return SessionEnd::Lost(error.to_string());
        }
        for message in consumer.receiver().iter() {
            match message {
                ConsumerMessage::Delivery(delivery) => {
                    if let Err(error) = self.serve(&channel, delivery) {
                        return SessionEnd::Lost(error.to_string());
                    }
                }
                ConsumerMessage::ClientCancelled => break,
                ConsumerMessage::ServerClosedConnection(error)
                | ConsumerMessage::ServerClosedChannel(error) => {
                    return SessionEnd::Lost(error.to_string())
                }
                _ => break,
            }
        }
        drop(consumer);
        let _ = channel.close();
        SessionEnd::Stopped
    }

    /// [`answer`](Self::answer), with the request counted in hand meanwhile.
    fn serve(&self, channel: &Channel, delivery: Delivery) -> Result<(), amiquip::Error> {
        self.counters.in_hand.fetch_add(1, Ordering::Relaxed);
        let served = self.answer(channel, delivery);
        self.counters.in_hand.fetch_sub(1, Ordering::Relaxed);
        served
    }

    /// Answers one request and acks it; an error here means the channel is gone.
    fn answer(&self, channel: &Channel, delivery: Delivery) -> Result<(), amiquip::Error> {
        let counters = &self.counters;
        let properties = &delivery.properties;
        let Some(reply_to) = properties
            .reply_to()
            .clone()
            .filter(|queue| !queue.is_empty())
        else {
            log::warn!(
                "request {} has no reply_to: nobody to answer, dropping it",
                protocol::quote(&delivery.body)
            );
            count(&counters.unanswerable);
            return delivery.ack(channel);
        };
        if protocol::is_expired(properties, SystemTime::now()) {
            log::debug!(
                "request {} expired before we took it: skipped",
                protocol::quote(&delivery.body)
            );
            count(&counters.expired);
            return delivery.ack(channel);
        }
        let request = Request::new(&delivery.body, properties, delivery.redelivered);
        let outcome = match refusal(properties) {
            Some(refused) => Err(refused),
            None => {
                let started = Instant::now();
                let outcome = catch_unwind(AssertUnwindSafe(|| self.handler.handle(&request)))
                    .unwrap_or_else(|panic| Err(HandlerError::new(panic_message(&*panic))));
                counters.observe(started.elapsed());
                outcome
            }
        };
        let mut reply_properties = AmqpProperties::default();
        if let Some(id) = properties.correlation_id() {
            reply_properties = reply_properties.with_correlation_id(id.clone());
        }
        if let Some(mode) = properties.delivery_mode() {
            reply_properties = reply_properties.with_delivery_mode(*mode);
        }
        let body = match outcome {
            Ok(body) => {
                log::debug!(
                    "{} -> {} bytes",
                    protocol::quote(&delivery.body),
                    body.len()
                );
                count(&counters.answered);
                reply_properties =
                    reply_properties.with_content_type(self.handler.content_type().to_owned());
                body
            }
            Err(error) => {
                log::debug!("{} -> error: {error}", protocol::quote(&delivery.body));
                count(&counters.error_replies);
                reply_properties = reply_properties
                    .with_content_type(CONTENT_TYPE.to_owned())
                    .with_type_(ERROR_TYPE.to_owned());
                error.message().as_bytes().to_vec()
            }
        };
        let reply = Publish::with_properties(&body, reply_to.as_str(), reply_properties);
        if reply_to.starts_with(DIRECT_REPLY_TO_PREFIX) {
            // A malformed direct reply-to address makes RabbitMQ close the whole connection
            // (541 INTERNAL_ERROR) on publish. Ack first, so such a request cannot come back
            // and take the server down again; a direct reply-to caller is bound to its live
            // channel anyway, so a redelivered answer could not reach a restarted caller.
            delivery.ack(channel)?;
            channel.basic_publish("", reply)
        } else {
            channel.basic_publish("", reply)?;
            delivery.ack(channel)
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let detail = panic
        .downcast_ref::<&str>()
        .map(|text| text.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".to_owned());
    format!("internal error: the handler panicked ({detail})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panic_messages_are_readable() {
        let panic = catch_unwind(|| panic!("boom {}", 7)).unwrap_err();
        assert_eq!(
            panic_message(&*panic),
            "internal error: the handler panicked (boom 7)"
        );
    }
}
