//! One worker of a server: its own channel and prefetch, a request answered and then acked.
//!
//! A request is admitted or acked unanswered ([`admission`](crate::server::admission)),
//! computed by the handler, and answered: its reply published and the request acked, in the
//! order that loses neither.
//!
//! When the broker closes the worker's channel (a delivery held past its consumer timeout, a
//! reply over its size limit), the worker alone opens a new channel on the same connection,
//! publishes there the reply the old channel could not carry, and consumes again; the other
//! workers and the connection go on. The broker requeues what the old channel held, and the
//! copy is acked without being computed again (see [`recent`](crate::server::recent)). A reply
//! that the connection's loss kept from going out waits for the next connection
//! ([`outbox`](crate::server::outbox)).

use super::admission::{self, Admitted};
use super::lane::{self, ChannelEnd, Lane};
use super::reply::Reply;
use super::shared::Shared;
use crate::context::{self, Serving};
use crate::deadline;
use crate::driver::watchdog::Cutter;
use crate::driver::{Channel, ConsumerMessage, Delivery, DriverError};
use crate::error::{Error, HandlerError, Result};
use crate::handler::{self, refusal, CancelToken, Handler, Live, ProgressSink, Request};
use crate::message::Response;
use crate::protocol::{self, DIRECT_REPLY_TO_PREFIX};
use crate::server::cancels::Cancels;
use crate::server::progress::Reporter;
use crate::server::stats::{count, Counters};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often a worker waiting for a request looks whether the server stops.
const STOP_LOOK_ROUND: Duration = Duration::from_millis(50);

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

impl Worker {
    pub fn run(self, first: Channel, consuming: Sender<Result<()>>) -> SessionEnd {
        let mut consuming = Some(consuming);
        let mut channel = first;
        loop {
            let consumer =
                match lane::consume(&channel, &self.queue, self.prefetch, self.consumer_timeout) {
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
            lane::explain(self.index, &reason);
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
        let Some(admitted) = admission::admit(
            &self.shared,
            &self.counters,
            self.generation,
            &delivery,
            buffered_for,
        ) else {
            return lane.ack(delivery);
        };
        let correlation_id = delivery.properties.correlation_id().as_deref();
        // Cancels of this request reach it only while it is computed.
        let _computing = correlation_id.map(|id| Computing(&self.shared.cancels, id.to_owned()));
        if let Some(key) = &admitted.key {
            self.shared.recent.hold(key, self.generation);
        }
        let outcome = self.compute(lane.channel, &delivery, &admitted);
        if admitted
            .cancel
            .as_ref()
            .is_some_and(CancelToken::is_cancelled)
        {
            log::info!(
                "request {} was cancelled by its caller while we computed it: not answered",
                protocol::quote(&delivery.body)
            );
            if let Some(key) = &admitted.key {
                self.shared.recent.forget(key);
            }
            count(&self.counters.cancelled);
            return lane.ack(delivery);
        }
        let reply = Box::new(Reply::new(
            &delivery,
            admitted.reply_to,
            admitted.key,
            outcome,
            self.shared.limit.load(Ordering::Relaxed),
            self.handler.content_type(),
            admitted.deadline,
        ));
        self.respond(lane, delivery, reply)
    }

    /// Runs the handler (or refuses a request it must not see) with the request's deadline,
    /// trace and cancel token; its progress reports go out on `channel`. A panic is an error.
    fn compute(
        &self,
        channel: &Channel,
        delivery: &Delivery,
        admitted: &Admitted,
    ) -> Result<Response, HandlerError> {
        let properties = &delivery.properties;
        let correlation_id = properties.correlation_id().as_deref();
        let reporter = Reporter::new(
            channel,
            &admitted.reply_to,
            correlation_id.unwrap_or_default(),
        );
        let report = |fraction: Option<f64>, message: &str| reporter.report(fraction, message);
        let live = Live {
            cancel: admitted.cancel.clone(),
            progress: (correlation_id.is_some() && protocol::wants_progress(properties))
                .then_some(&report as ProgressSink<'_>),
        };
        let request = Request::due(
            &delivery.body,
            properties,
            delivery.redelivered,
            admitted.deadline,
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
                    deadline: admitted.deadline.map(deadline::instant_of),
                    trace,
                });
                let outcome = catch_unwind(AssertUnwindSafe(|| self.handler.handle(&request)))
                    .unwrap_or_else(|panic| {
                        Err(HandlerError::new(handler::panic_message(&*panic)))
                    });
                self.counters.observe(started.elapsed());
                outcome
            }
        };
        #[cfg(feature = "tracing")]
        crate::spans::served(&span, &outcome);
        outcome
    }

    /// Publishes the reply and acks its request, in the order that loses neither.
    fn respond(
        &self,
        lane: &mut Lane<'_>,
        delivery: Delivery,
        reply: Box<Reply>,
    ) -> Result<(), ChannelEnd> {
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
}
