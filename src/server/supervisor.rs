//! The server's supervisor thread: connects, starts the workers and watches them; after a
//! lost connection it reconnects, with capped exponential backoff while reconnecting fails.

use super::shared::Shared;
use super::stats::Counters;
use super::worker::{ChannelRequest, SessionEnd, Worker};
use crate::config::ServerConfig;
use crate::deadline;
use crate::driver::amqp::{self, Link};
use crate::driver::keeper::Keeper;
use crate::driver::queue;
use crate::driver::watchdog::Cutter;
use crate::driver::{Connection, ConnectionBlockedNotification, ConsumerMessage, ConsumerOptions};
use crate::error::{Error, Result};
use crate::handler::Handler;
use crate::protocol::{self, CANCEL_EXCHANGE};
use crossbeam_channel::{Receiver, Sender};
use std::cell::Cell;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A connection's running workers, as the supervisor watches them.
/// How often the cancels' keeper looks up while no cancel comes: it has nothing else to do.
const CANCELS_IDLE: Duration = Duration::from_secs(1);

struct Workers {
    /// How each worker ended.
    exits: Receiver<SessionEnd>,
    /// Workers asking for a new channel.
    channel_requests: Receiver<ChannelRequest>,
    /// The broker's notices that it blocks (or no longer blocks) the connection.
    blocked: Receiver<ConnectionBlockedNotification>,
    /// Consumes the cancels of callers who gave up, for as long as the connection lives.
    cancels: Keeper,
}

pub(super) struct Supervisor {
    pub config: ServerConfig,
    pub handler: Arc<dyn Handler>,
    pub stop: Receiver<()>,
    pub counters: Arc<Counters>,
    /// The endpoint to try first when (re)connecting: the one after a node that was lost.
    pub next_endpoint: Cell<usize>,
    pub shared: Arc<Shared>,
    /// Connections made so far: the workers' copies of requests count as duplicates only on
    /// the connection that took the original.
    pub generation: Cell<u64>,
}

impl Supervisor {
    pub fn run(self, ready: Sender<Result<()>>) -> Result<()> {
        let mut ready = Some(ready);
        let mut backoff = self.config.reconnect_initial;
        // A connection that dies while the server sets up its consumers is lost like a
        // serving one (to the next node at once), but only once in a row: a broker that kills
        // every connection at setup gets the backoff.
        let mut lost_in_setup = false;
        loop {
            match self.serve_one_connection(&mut ready) {
                Ok(SessionEnd::Stopped) => return Ok(()),
                Err(Error::ConnectionLost(reason)) if ready.is_none() && !lost_in_setup => {
                    lost_in_setup = true;
                    log::warn!("connection lost while consuming again ({reason}); reconnecting");
                    continue;
                }
                Ok(SessionEnd::Lost(reason)) => {
                    lost_in_setup = false;
                    if self.stop.try_recv().is_err_and(|e| e.is_disconnected()) {
                        log::warn!("connection lost ({reason}) while stopping");
                        return Ok(());
                    }
                    // It was serving: reconnect at once (to the next node first, if there are
                    // several), and start the backoff over.
                    backoff = self.config.reconnect_initial;
                    log::warn!("connection lost ({reason}); reconnecting");
                    continue;
                }
                Err(error) => match ready.take() {
                    Some(ready) => {
                        let _ = ready.send(Err(error));
                        return Ok(());
                    }
                    None => log::warn!("reconnecting failed ({error}); next try in {backoff:?}"),
                },
            }
            if self
                .stop
                .recv_timeout(backoff)
                .is_err_and(|e| e.is_disconnected())
            {
                return Ok(());
            }
            backoff = next_backoff(backoff, self.config.reconnect_max);
        }
    }

    fn serve_one_connection(&self, ready: &mut Option<Sender<Result<()>>>) -> Result<SessionEnd> {
        let name = format!("fib-rpc server on {}", self.config.queue);
        let Link {
            mut connection,
            cutter,
            heartbeat,
            endpoint,
            address,
        } = amqp::open(
            &self.config.connection,
            &name,
            None,
            self.next_endpoint.get(),
        )?;
        // Whatever ends this connection, the next attempt starts with the endpoint after it.
        self.next_endpoint.set(endpoint + 1);
        let what = format!(
            "declaring queue {} and starting its workers",
            self.config.queue
        );
        let setup = cutter.setup_within(
            self.config.connection.connect_timeout,
            &address,
            &what,
            || self.start_workers(&mut connection, &cutter),
        );
        let Workers {
            exits,
            channel_requests,
            mut blocked,
            cancels: _cancels,
        } = match setup {
            Ok(workers) => workers,
            Err(error) if error.is_connection_gone() => {
                let closed = cutter.close_within(self.config.connection.close_timeout, connection);
                let reason = match closed.outcome {
                    Err(why) if !closed.cut => amqp::loss_reason(&why, heartbeat),
                    _ => error.to_string(),
                };
                return Err(Error::ConnectionLost(reason));
            }
            Err(error) => return Err(error),
        };
        let again = ready.is_none();
        self.counters.connected(again);
        if let Some(ready) = ready.take() {
            let _ = ready.send(Ok(()));
        } else {
            log::info!(
                "reconnected to {address}: consuming {} again",
                self.config.queue
            );
        }
        let first = self.watch(
            &mut connection,
            &cutter,
            &exits,
            &channel_requests,
            &mut blocked,
        );
        // From here on no worker gets a new channel: one that asks ends.
        drop(channel_requests);
        self.counters.set_blocked(None);
        // Whichever it is, not every worker consumes any more.
        self.counters.consuming.store(false, Ordering::Relaxed);
        Ok(match first {
            Some(SessionEnd::Lost(reason)) => {
                self.abandon(connection, &cutter, heartbeat, &exits, reason)
            }
            Some(SessionEnd::Stopped) => self.wind_down(connection, &cutter, &exits, 1),
            None => self.wind_down(connection, &cutter, &exits, 0),
        })
    }

    /// Serves the workers until the first of them ends, or a stop: that decides whether the
    /// connection was lost or the server stops. Meanwhile, a worker whose channel the broker
    /// closed gets a new one, and the broker's blocking of the connection is reported.
    fn watch(
        &self,
        connection: &mut Connection,
        cutter: &Arc<Cutter>,
        exits: &Receiver<SessionEnd>,
        channel_requests: &Receiver<ChannelRequest>,
        blocked: &mut Receiver<ConnectionBlockedNotification>,
    ) -> Option<SessionEnd> {
        let mut requests = channel_requests.clone();
        loop {
            crossbeam_channel::select! {
                recv(exits) -> end => break end.ok(),
                recv(self.stop) -> _ => break None,
                recv(requests) -> request => match request {
                    Ok(request) => {
                        let channel = cutter.bounded(
                            deadline::from_now(self.config.connection.connect_timeout),
                            || queue::open_channel(connection),
                        );
                        let _ = request.send(channel.outcome);
                    }
                    // Every worker has ended; their exits tell how.
                    Err(_) => requests = crossbeam_channel::never(),
                },
                recv(blocked) -> note => match note {
                    Ok(note) => self.report_blocking(note),
                    // The connection's I/O thread ended; the workers' exits tell why.
                    Err(_) => *blocked = crossbeam_channel::never(),
                },
            }
        }
    }

    /// A worker lost the connection: closes what is left of it and lets the other workers go.
    fn abandon(
        &self,
        connection: Connection,
        cutter: &Arc<Cutter>,
        heartbeat: Duration,
        exits: &Receiver<SessionEnd>,
        reason: String,
    ) -> SessionEnd {
        // Closing the connection ends the other workers too; their unacked requests go back
        // to the queue. Its close result is the driver's own account of what happened.
        let closed = cutter.close_within(self.config.connection.close_timeout, connection);
        let reason = match closed.outcome {
            Err(error) if !closed.cut => amqp::loss_reason(&error, heartbeat),
            _ => reason,
        };
        // The other workers end with the connection, but one busy in a handler ends only
        // when the handler returns: wait no longer than a drain, and not past a stop.
        let waited_out = deadline::from_now(self.config.drain_timeout);
        loop {
            crossbeam_channel::select! {
                recv(exits) -> end => if end.is_err() { break },
                recv(self.stop) -> _ => break,
                default(waited_out.saturating_duration_since(Instant::now())) => {
                    log::warn!("a handler still runs on the lost connection; reconnecting without it");
                    break;
                }
            }
        }
        SessionEnd::Lost(reason)
    }

    /// Stopping, with `ended` workers already gone: the others finish what they hold, within
    /// the drain timeout; whatever is still in hand then goes back to the queue when the
    /// connection is cut.
    fn wind_down(
        &self,
        connection: Connection,
        cutter: &Arc<Cutter>,
        exits: &Receiver<SessionEnd>,
        mut ended: usize,
    ) -> SessionEnd {
        let drained_by = deadline::from_now(self.config.drain_timeout);
        let mut lost = None;
        while ended < self.config.workers {
            match exits.recv_deadline(drained_by) {
                Ok(SessionEnd::Lost(reason)) => {
                    lost.get_or_insert(reason);
                    ended += 1;
                }
                Ok(SessionEnd::Stopped) => ended += 1,
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    let left = self.counters.in_hand.load(Ordering::Relaxed);
                    self.counters.left_in_hand.store(left, Ordering::Relaxed);
                    log::warn!(
                        "{} requests still in hand after the drain timeout ({:?}); leaving \
                         them to another server",
                        self.config.workers - ended,
                        self.config.drain_timeout
                    );
                    cutter.cut();
                    break;
                }
            }
        }
        let closed = cutter.close_within(self.config.connection.close_timeout, connection);
        if closed.cut {
            log::warn!(
                "the broker did not confirm the close within {:?}",
                self.config.connection.close_timeout
            );
        }
        match (lost, closed.outcome) {
            (None, Ok(())) => {}
            (Some(reason), _) => log::warn!("a worker lost its channel while stopping: {reason}"),
            (None, Err(error)) => log::warn!("closing the connection: {error}"),
        }
        SessionEnd::Stopped
    }

    /// Declares the request queue and starts the workers on `connection`; returns once every
    /// worker consumes.
    fn start_workers(&self, connection: &mut Connection, cutter: &Arc<Cutter>) -> Result<Workers> {
        queue::declare_durable(
            connection,
            &self.config.queue,
            self.config.queue_type,
            self.config.max_priority,
        )?;
        let blocked = connection
            .listen_for_connection_blocked()
            .map_err(|error| Error::broker("listening for connection.blocked", error))?;
        let cancels = self.consume_cancels(connection)?;
        self.generation.set(self.generation.get() + 1);
        let (exit_sender, exits) = crossbeam_channel::unbounded();
        let (consuming_sender, consuming) = crossbeam_channel::unbounded();
        let (channel_sender, channel_requests) = crossbeam_channel::unbounded::<ChannelRequest>();
        for index in 0..self.config.workers {
            let channel = queue::open_channel(connection)?;
            if index == 0 && !self.shared.outbox.is_empty() {
                // Before any worker consumes, so a requeued copy of one is known here.
                self.shared
                    .outbox
                    .deliver(
                        &channel,
                        &self.shared.recent,
                        self.generation.get(),
                        &self.counters,
                    )
                    .map_err(|error| {
                        Error::broker(
                            "publishing the replies kept from the lost connection",
                            error,
                        )
                    })?;
            }
            let worker = Worker {
                index,
                queue: self.config.queue.clone(),
                prefetch: self.config.prefetch,
                consumer_timeout: self.config.consumer_timeout,
                handler: Arc::clone(&self.handler),
                stop: self.stop.clone(),
                counters: Arc::clone(&self.counters),
                cutter: Arc::clone(cutter),
                close_timeout: self.config.connection.close_timeout,
                shared: Arc::clone(&self.shared),
                generation: self.generation.get(),
                channels: channel_sender.clone(),
            };
            let (exit_sender, consuming_sender) = (exit_sender.clone(), consuming_sender.clone());
            std::thread::Builder::new()
                .name(format!("fib-rpc-worker-{index}"))
                .spawn(move || {
                    let end = worker.run(channel, consuming_sender);
                    let _ = exit_sender.send(end);
                })
                .map_err(|e| Error::Internal(format!("cannot start a worker thread: {e}")))?;
        }
        drop((exit_sender, consuming_sender, channel_sender));
        for _ in 0..self.config.workers {
            match consuming.recv() {
                Ok(Ok(())) => {}
                Ok(Err(error)) => return Err(error),
                Err(_) => break,
            }
        }
        Ok(Workers {
            exits,
            channel_requests,
            blocked,
            cancels,
        })
    }

    /// Binds a control queue of this connection's to the cancels of the request queue, and
    /// hands each cancel to the workers: every server of the queue hears every cancel, so the
    /// one computing the request stops, and one that takes it later skips it.
    fn consume_cancels(&self, connection: &mut Connection) -> Result<Keeper> {
        let channel = queue::open_channel(connection)?;
        let routing_key = protocol::cancel_routing_key(&self.config.queue);
        let control = queue::declare_bound_exclusive(&channel, CANCEL_EXCHANGE, &routing_key)?;
        let keeper = Keeper::start(
            channel,
            control,
            ConsumerOptions {
                no_ack: true,
                ..ConsumerOptions::default()
            },
            CANCELS_IDLE,
            Box::new(|| true),
            Box::new(|_| {}),
        )?;
        let deliveries = keeper.deliveries().clone();
        let (shared, counters) = (Arc::clone(&self.shared), Arc::clone(&self.counters));
        std::thread::Builder::new()
            .name("fib-rpc-cancels".into())
            .spawn(move || {
                // Ends with the connection, when the keeper lets its consumer go.
                for message in deliveries {
                    let ConsumerMessage::Delivery(delivery) = message else {
                        break;
                    };
                    if let Some(id) = protocol::cancelled_request(&delivery.properties) {
                        log::debug!("the caller of request {id} gave up");
                        shared.cancels.cancel(id.to_owned(), Instant::now());
                        counters.cancels_received.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
            .map_err(|e| Error::Internal(format!("cannot start the cancels thread: {e}")))?;
        Ok(keeper)
    }

    fn report_blocking(&self, note: ConnectionBlockedNotification) {
        match note {
            ConnectionBlockedNotification::Blocked(reason) => {
                log::warn!(
                    "the broker blocks publishing on this connection ({reason}): replies wait \
                     until its resource alarm clears"
                );
                self.counters.set_blocked(Some(reason));
            }
            ConnectionBlockedNotification::Unblocked => {
                log::info!("the broker no longer blocks publishing: serving again");
                self.counters.set_blocked(None);
            }
        }
    }
}

/// The wait before the next reconnection attempt: double the last, at most `max`.
fn next_backoff(last: Duration, max: Duration) -> Duration {
    (last * 2).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let max = Duration::from_secs(1);
        let steps = std::iter::successors(Some(Duration::from_millis(100)), |last| {
            Some(next_backoff(*last, max))
        });
        let millis: Vec<_> = steps.take(6).map(|step| step.as_millis()).collect();
        assert_eq!(millis, [100, 200, 400, 800, 1000, 1000]);
    }
}
