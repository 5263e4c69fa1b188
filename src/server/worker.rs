//! One worker of a server: its own channel and prefetch, a request answered and then acked.
//!
//! When the broker closes the worker's channel (a delivery held past its consumer timeout, a
//! reply over its size limit), the worker alone opens a new channel on the same connection,
//! publishes there the reply the old channel could not carry, and consumes again; the other
//! workers and the connection go on. The broker requeues what the old channel held, and the
//! copy is acked without being computed again (see [`recent`](crate::server::recent)). A reply
//! that the connection's loss kept from going out waits for the next connection
//! ([`outbox`](crate::server::outbox)).

use super::reply::Reply;
use crate::context::{self, Serving};
use crate::deadline;
use crate::driver::watchdog::Cutter;
use crate::driver::{
    AmqpValue, Channel, Consumer, ConsumerMessage, ConsumerOptions, Delivery, DriverError,
    FieldTable, Publish,
};
use crate::error::{Error, HandlerError, Result};
use crate::handler::{refusal, CancelToken, Handler, Live, ProgressSink, Request};
use crate::protocol::{self, CONSUMER_TIMEOUT_ARGUMENT, DIRECT_REPLY_TO_PREFIX};
use crate::server::cancels::Cancels;
use crate::server::expiry::{Clocks, Taken, Verdict};
use crate::server::outbox::Outbox;
use crate::server::recent::{Key, Recent};
use crate::server::stats::{count, Counters};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::cell::Cell;
use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// What every worker of a server shares, across reconnections.
#[derive(Debug)]
pub(crate) struct Shared {
    pub recent: Recent,
    /// The largest reply the broker takes: the configured limit, lowered by a refusal.
    pub limit: AtomicUsize,
    pub clocks: Clocks,
    pub cancels: Cancels,
    /// Replies whose connection was lost before they went out.
    pub outbox: Outbox,
}

/// How often a worker waiting for a request looks whether the server stops.
const STOP_LOOK_ROUND: Duration = Duration::from_millis(50);

/// After its first [`PROGRESS_BURST`] progress messages, a request sends at most one per this
/// interval; reports in between are dropped, so a handler that reports in a tight loop cannot
/// flood the broker.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(50);

/// Progress messages a request sends without pacing.
const PROGRESS_BURST: usize = 10;

/// How many bytes of a progress message are sent.
const PROGRESS_MESSAGE_LIMIT: usize = 1024;

/// Ends a request's exposure to cancels when its worker is done with it, however.
struct Computing<'a>(&'a Cancels, String);

impl Drop for Computing<'_> {
    fn drop(&mut self) {
        self.0.end(&self.1);
    }
}

/// How one connection's life ended.
pub(crate) enum SessionEnd {
    Stopped,
    Lost(String),
}

/// Asks the supervisor for a new channel on the worker's connection.
pub(crate) type ChannelRequest = Sender<Result<Channel>>;

pub(crate) struct Worker {
    pub index: usize,
    pub queue: String,
    pub prefetch: u16,
    pub consumer_timeout: Option<Duration>,
    pub handler: Arc<dyn Handler>,
    pub stop: Receiver<()>,
    pub counters: Arc<Counters>,
    pub cutter: Arc<Cutter>,
    pub close_timeout: Duration,
    pub shared: Arc<Shared>,
    /// Which connection of the server this is: a copy counts as a duplicate only on it.
    pub generation: u64,
    pub channels: Sender<ChannelRequest>,
}

/// How one channel's service ended.
enum ChannelEnd {
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
struct Lane<'a> {
    channel: &'a Channel,
    consumer: Consumer<'a>,
    /// Deliveries read while checking the channel before a publish.
    backlog: VecDeque<ConsumerMessage>,
    /// When the consumer's buffer was last seen empty.
    last_empty: Instant,
    /// The last reply published, until a later delivery shows the broker took it.
    held: Option<Box<Reply>>,
}

impl Worker {
    pub fn run(self, first: Channel, consuming: Sender<Result<()>>) -> SessionEnd {
        let mut consuming = Some(consuming);
        let mut channel = first;
        loop {
            let consumer = match self.consume(&channel) {
                Ok(consumer) => consumer,
                Err(error) => {
                    let reason = error.to_string();
                    if let Some(consuming) = consuming.take() {
                        let _ = consuming.send(Err(error));
                    }
                    return SessionEnd::Lost(reason);
                }
            };
            if let Some(consuming) = consuming.take() {
                let _ = consuming.send(Ok(()));
            }
            let mut lane = Lane {
                channel: &channel,
                consumer,
                backlog: VecDeque::new(),
                last_empty: Instant::now(),
                held: None,
            };
            let ended = self.serve_lane(&mut lane);
            let held = lane.held.take();
            drop(lane);
            let (reason, unsent) = match ended {
                ChannelEnd::Stopped => {
                    self.settled(held);
                    self.close(channel);
                    return SessionEnd::Stopped;
                }
                ChannelEnd::Lost(reason) => {
                    self.settled(held);
                    return SessionEnd::Lost(reason);
                }
                ChannelEnd::Closed { reason, unsent } => (reason, unsent.or(held)),
            };
            count(&self.counters.channel_losses);
            self.explain(&reason);
            // A channel whose consumer the broker cancelled is still open.
            self.close(channel);
            channel = match self.new_channel() {
                Ok(channel) => channel,
                Err(error) => {
                    if let Some(reply) = unsent {
                        self.shared.outbox.keep(reply);
                    }
                    return SessionEnd::Lost(format!("{reason}; then: {error}"));
                }
            };
            if let Some(reply) = unsent {
                if let Err((reply, error)) = self.resend(&channel, reply, &reason) {
                    self.publish_failed(reply);
                    return SessionEnd::Lost(error.to_string());
                }
            }
        }
    }

    /// Closes `channel`, cutting the connection if the broker has not confirmed the close
    /// within the close timeout: during a network cut it never would.
    fn close(&self, channel: Channel) {
        let _ = self
            .cutter
            .bounded(deadline::from_now(self.close_timeout), || channel.close());
    }

    fn consume<'a>(&self, channel: &'a Channel) -> Result<Consumer<'a>> {
        let mut arguments = FieldTable::new();
        if let Some(timeout) = self.consumer_timeout {
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
            .qos(0, self.prefetch, false)
            .and_then(|()| channel.basic_consume(self.queue.as_str(), options))
            .map_err(|error| Error::broker(format!("consuming {}", self.queue), error))
    }

    /// Serves one channel until a stop, or until the broker or the network ends it.
    fn serve_lane(&self, lane: &mut Lane<'_>) -> ChannelEnd {
        loop {
            let message = match lane.backlog.pop_front() {
                Some(message) => Some((message, lane.buffered_for())),
                None => {
                    if lane.consumer.receiver().is_empty() {
                        lane.last_empty = Instant::now();
                    }
                    self.next_delivery(lane.consumer.receiver())
                        .map(|message| (message, lane.buffered_for()))
                }
            };
            let Some((message, buffered_for)) = message else {
                return self.drain(lane);
            };
            if let Some(end) = self.take(lane, message, buffered_for) {
                return end;
            }
        }
    }

    /// The consumer's next message, or `None` on a stop. The worker waits on the consumer
    /// alone and looks for a stop every [`STOP_LOOK_ROUND`]: waiting on both at once costs a
    /// lock on each as the worker wakes, and the driver's I/O thread, which has just woken it,
    /// still holds the consumer's (5.0 futex calls per request against 2.1 alone).
    fn next_delivery(&self, deliveries: &Receiver<ConsumerMessage>) -> Option<ConsumerMessage> {
        // Looked for before every wait too, or a worker that always finds a request waiting
        // would never stop.
        while matches!(self.stop.try_recv(), Err(TryRecvError::Empty)) {
            match deliveries.recv_timeout(STOP_LOOK_ROUND) {
                Ok(message) => return Some(message),
                Err(RecvTimeoutError::Disconnected) => {
                    return Some(ConsumerMessage::ClientClosedConnection)
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
        None
    }

    /// Handles one message of the consumer; `Some` if it ends the channel's service.
    fn take(
        &self,
        lane: &mut Lane<'_>,
        message: ConsumerMessage,
        buffered_for: Duration,
    ) -> Option<ChannelEnd> {
        match message {
            ConsumerMessage::Delivery(delivery) => {
                // The broker delivered after taking the last ack: it took that reply too.
                self.settled(lane.held.take());
                self.counters.in_hand.fetch_add(1, Ordering::Relaxed);
                let served = self.answer(lane, delivery, buffered_for);
                self.counters.in_hand.fetch_sub(1, Ordering::Relaxed);
                served.err()
            }
            ConsumerMessage::ServerClosedChannel(error) => Some(ChannelEnd::Closed {
                reason: error.to_string(),
                unsent: None,
            }),
            ConsumerMessage::ServerCancelled => Some(ChannelEnd::Closed {
                reason: format!(
                    "the broker cancelled our consumer of {} (its consumer timeout, or the \
                     queue was deleted)",
                    self.queue
                ),
                unsent: None,
            }),
            ConsumerMessage::ServerClosedConnection(error) => {
                Some(ChannelEnd::Lost(error.to_string()))
            }
            _ => Some(ChannelEnd::Lost("the connection was closed".into())),
        }
    }

    /// Stop: cancel, then serve whatever the broker sent before the cancel took effect, and
    /// leave only on the cancellation's own message, so nothing in hand goes unanswered.
    fn drain(&self, lane: &mut Lane<'_>) -> ChannelEnd {
        for message in std::mem::take(&mut lane.backlog) {
            if let Some(end) = self.take(lane, message, Duration::ZERO) {
                return end;
            }
        }
        let cancelled = self
            .cutter
            .bounded(deadline::from_now(self.close_timeout), || {
                lane.consumer.cancel()
            })
            .outcome;
        if let Err(error) = cancelled {
            return ChannelEnd::Lost(error.to_string());
        }
        while let Ok(message) = lane.consumer.receiver().recv() {
            match message {
                ConsumerMessage::ClientCancelled => break,
                ConsumerMessage::Delivery(_) => {
                    if let Some(end) = self.take(lane, message, Duration::ZERO) {
                        return end;
                    }
                }
                ConsumerMessage::ServerClosedConnection(error)
                | ConsumerMessage::ServerClosedChannel(error) => {
                    return ChannelEnd::Lost(error.to_string())
                }
                _ => break,
            }
        }
        ChannelEnd::Stopped
    }

    /// Answers one request and acks it.
    fn answer(
        &self,
        lane: &mut Lane<'_>,
        delivery: Delivery,
        buffered_for: Duration,
    ) -> Result<(), ChannelEnd> {
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
            return lane.ack(delivery);
        };
        let key = properties
            .correlation_id()
            .as_deref()
            .map(|id| Key::new(&reply_to, id));
        if let Some(key) = key.as_ref().filter(|_| delivery.redelivered) {
            if self.shared.recent.holds(key, self.generation) {
                log::info!(
                    "request {} came back (the broker requeued it when it closed a channel) \
                     while this server computes or has answered it: acked, not computed again",
                    protocol::quote(&delivery.body)
                );
                count(&counters.duplicates);
                return lane.ack(delivery);
            }
        }
        let verdict = self.shared.clocks.judge(Taken {
            deadline: protocol::header_deadline(properties),
            timeout: protocol::expiration(properties),
            now: SystemTime::now(),
            buffered_for,
        });
        let Verdict::Serve { deadline } = verdict else {
            log::debug!(
                "request {} expired before we took it: skipped",
                protocol::quote(&delivery.body)
            );
            count(&counters.expired);
            return lane.ack(delivery);
        };
        let correlation_id = properties.correlation_id().as_deref();
        let cancel = match correlation_id.map(|id| self.shared.cancels.begin(id)) {
            Some(None) => {
                log::info!(
                    "request {} was cancelled by its caller before we took it: skipped",
                    protocol::quote(&delivery.body)
                );
                count(&counters.cancelled);
                return lane.ack(delivery);
            }
            Some(token) => token,
            None => None,
        };
        // Cancels of this request reach it only while it is computed.
        let _computing = correlation_id.map(|id| Computing(&self.shared.cancels, id.to_owned()));
        if let Some(key) = &key {
            self.shared.recent.hold(key, self.generation);
        }
        let progress_channel = lane.channel;
        let (sent_progress, last_progress) = (Cell::new(0_usize), Cell::new(Instant::now()));
        let report = |fraction: Option<f64>, message: &str| {
            let now = Instant::now();
            let paced = sent_progress.get() >= PROGRESS_BURST
                && now.duration_since(last_progress.get()) < PROGRESS_INTERVAL;
            if paced {
                return;
            }
            sent_progress.set(sent_progress.get() + 1);
            last_progress.set(now);
            let message = protocol::truncate_utf8(message, PROGRESS_MESSAGE_LIMIT);
            let properties =
                protocol::progress_properties(correlation_id.unwrap_or_default(), fraction);
            let sent = progress_channel.basic_publish(
                "",
                Publish::with_properties(message.as_bytes(), reply_to.as_str(), properties),
            );
            if let Err(error) = sent {
                log::debug!("a progress message could not be sent: {error}");
            }
        };
        let live = Live {
            cancel: cancel.clone(),
            progress: (correlation_id.is_some() && protocol::wants_progress(properties))
                .then_some(&report as ProgressSink<'_>),
        };
        let request = Request::due(
            &delivery.body,
            properties,
            delivery.redelivered,
            deadline,
            live,
        );
        let trace = request.trace();
        if let Some(trace) = &trace {
            log::debug!(
                "request {} in trace {}, parent span {}",
                protocol::quote(&delivery.body),
                trace.trace_id(),
                trace.span_id()
            );
        }
        #[cfg(feature = "tracing")]
        let span =
            crate::spans::serve(&self.queue, request.correlation_id(), trace.as_ref()).entered();
        let outcome = match refusal(properties) {
            Some(refused) => Err(refused),
            None => {
                let started = Instant::now();
                // Calls the handler makes inherit the caller's deadline and trace.
                let _serving = context::serve(Serving {
                    deadline: deadline.map(deadline::instant_of),
                    trace,
                });
                let outcome = catch_unwind(AssertUnwindSafe(|| self.handler.handle(&request)))
                    .unwrap_or_else(|panic| Err(HandlerError::new(panic_message(&*panic))));
                counters.observe(started.elapsed());
                outcome
            }
        };
        #[cfg(feature = "tracing")]
        crate::spans::served(&span, &outcome);
        drop(request);
        if cancel.as_ref().is_some_and(CancelToken::is_cancelled) {
            log::info!(
                "request {} was cancelled by its caller while we computed it: not answered",
                protocol::quote(&delivery.body)
            );
            if let Some(key) = &key {
                self.shared.recent.forget(key);
            }
            count(&counters.cancelled);
            return lane.ack(delivery);
        }
        let reply = Box::new(Reply::new(
            &delivery,
            reply_to,
            key,
            outcome,
            self.shared.limit.load(Ordering::Relaxed),
            self.handler.content_type(),
            deadline,
        ));
        // The broker may have closed the channel while the handler ran (its consumer timeout):
        // then the reply goes out on a new one, and the request's copy is not computed again.
        if let Some(reason) = lane.closed_meanwhile() {
            return Err(ChannelEnd::Closed {
                reason,
                unsent: Some(reply),
            });
        }
        let sent = if reply.to.starts_with(DIRECT_REPLY_TO_PREFIX) {
            // A malformed direct reply-to address makes RabbitMQ close the whole connection
            // (541 INTERNAL_ERROR) on publish. Ack first, so such a request cannot come back
            // and take the server down again; a direct reply-to caller is bound to its live
            // channel anyway, so a redelivered answer could not reach a restarted caller.
            delivery
                .ack(lane.channel)
                .and_then(|()| reply.publish(lane.channel))
        } else {
            reply
                .publish(lane.channel)
                .and_then(|()| delivery.ack(lane.channel))
        };
        match sent {
            Ok(()) => {
                let mut reply = reply;
                reply.count_sent(&self.counters);
                lane.held = Some(reply);
                Ok(())
            }
            Err(DriverError::ServerClosedChannel { code, message, .. }) => {
                Err(ChannelEnd::Closed {
                    reason: format!("{code} {message}"),
                    unsent: Some(reply),
                })
            }
            Err(error) => {
                self.publish_failed(reply);
                Err(ChannelEnd::Lost(error.to_string()))
            }
        }
    }

    /// The connection failed as `reply` was published: it goes out on the next connection,
    /// unless it is for direct reply-to, whose malformed address is one way to make RabbitMQ
    /// close a connection on publish.
    fn publish_failed(&self, reply: Box<Reply>) {
        match reply.to.starts_with(DIRECT_REPLY_TO_PREFIX) {
            true => self.settled(Some(reply)),
            false => self.shared.outbox.keep(reply),
        }
    }

    /// After the broker closed the channel: publish on the new one what the old one may not
    /// have carried (as an error reply if its size was the reason), and remember it, so that
    /// the request's requeued copy is acked unanswered.
    fn resend(
        &self,
        channel: &Channel,
        mut reply: Box<Reply>,
        reason: &str,
    ) -> Result<(), (Box<Reply>, Error)> {
        if let Some(limit) = protocol::refused_size_limit(reason) {
            self.shared.limit.fetch_min(limit, Ordering::Relaxed);
            if reply.body.len() > limit {
                log::warn!(
                    "the broker refused a reply of {} bytes ({reason}): the caller gets an error \
                     reply instead",
                    reply.body.len()
                );
                reply.refused_for_size(limit, reason);
            }
        }
        if let Some(key) = &reply.key {
            self.shared
                .recent
                .retain(key, self.generation, Instant::now());
        }
        if let Err(error) = reply.publish(channel) {
            let error = Error::broker("publishing a reply on a new channel", error);
            return Err((reply, error));
        }
        reply.count_sent(&self.counters);
        Ok(())
    }

    /// Asks the supervisor for a new channel on this connection.
    fn new_channel(&self) -> Result<Channel> {
        let (sender, answer) = crossbeam_channel::bounded(1);
        let lost = || Error::ConnectionLost("the server is stopping or reconnecting".into());
        self.channels.send(sender).map_err(|_| lost())?;
        answer.recv().map_err(|_| lost())?
    }

    /// The reply has reached the broker, or its request will be computed again: nothing to
    /// remember of it.
    fn settled(&self, reply: Option<Box<Reply>>) {
        if let Some(key) = reply.and_then(|reply| reply.key) {
            self.shared.recent.forget(&key);
        }
    }

    /// Says what the broker did to this worker's channel, and what to do about it.
    fn explain(&self, reason: &str) {
        let worker = self.index;
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
            log::warn!(
                "worker {worker}: the broker closed its channel ({reason}); opening another"
            );
        }
    }
}

impl Lane<'_> {
    fn ack(&self, delivery: Delivery) -> Result<(), ChannelEnd> {
        delivery.ack(self.channel).map_err(|error| match error {
            DriverError::ServerClosedChannel { code, message, .. } => ChannelEnd::Closed {
                reason: format!("{code} {message}"),
                unsent: None,
            },
            other => ChannelEnd::Lost(other.to_string()),
        })
    }

    /// The longest a message just taken can have waited in the consumer's buffer.
    fn buffered_for(&self) -> Duration {
        self.last_empty.elapsed()
    }

    /// Why the channel is gone, if the broker closed it (or cancelled the consumer) since the
    /// last look; deliveries read meanwhile wait in the backlog.
    fn closed_meanwhile(&mut self) -> Option<String> {
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
