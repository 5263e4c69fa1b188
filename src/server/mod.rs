//! The server: a pool of worker threads serving one request queue with a handler.

mod expiry;
mod recent;
pub(crate) mod stats;
mod worker;

use crate::config::ServerConfig;
use crate::deadline;
use crate::driver::amqp::{self, Link};
use crate::driver::queue;
use crate::driver::watchdog::Cutter;
use crate::error::{Error, Result};
use crate::handler::Handler;
use amiquip::{Connection, ConnectionBlockedNotification};
use crossbeam_channel::{Receiver, Sender};
use expiry::Clocks;
use recent::Recent;
use stats::{Counters, ServerStats};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use worker::{ChannelRequest, SessionEnd, Shared, Worker};

/// Serves one request queue with a handler on a pool of worker threads.
///
/// Each worker has its own channel with `prefetch` unacknowledged requests, and acks a request
/// only after its reply is published, so a server that dies mid-request leaves the request to
/// be redelivered to another. A handler that returns an error or panics produces an error reply;
/// no input stops a worker. If the connection is lost, the server reconnects with capped
/// exponential backoff and resumes consuming.
pub struct RpcServer {
    config: ServerConfig,
    handler: Arc<dyn Handler>,
}

impl std::fmt::Debug for RpcServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcServer")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl RpcServer {
    /// A server for `config.queue` that answers with `handler`: a closure over the request
    /// body, or any [`Handler`].
    pub fn new(config: ServerConfig, handler: impl Handler) -> RpcServer {
        RpcServer {
            config,
            handler: Arc::new(handler),
        }
    }

    /// Connects, declares the request queue and starts the workers; returns once every worker
    /// is consuming. Fails if the first connection cannot be made.
    pub fn start(self) -> Result<ServerHandle> {
        self.config.validate()?;
        let (stop_sender, stop) = crossbeam_channel::bounded::<()>(0);
        let (ready_sender, ready) = crossbeam_channel::bounded(1);
        let counters = Arc::new(Counters::default());
        let shared = Arc::new(Shared {
            recent: Recent::default(),
            limit: self.config.connection.max_message_size.into(),
            clocks: Clocks::default(),
        });
        let supervisor = Supervisor {
            config: self.config,
            handler: self.handler,
            stop,
            counters: Arc::clone(&counters),
            next_endpoint: Cell::new(0),
            shared,
            generation: Cell::new(0),
        };
        let running = Arc::new(AtomicBool::new(true));
        let still_running = Arc::clone(&running);
        let thread = std::thread::Builder::new()
            .name("fib-rpc-server".into())
            .spawn(move || {
                let ended = supervisor.run(ready_sender);
                still_running.store(false, Ordering::Relaxed);
                ended
            })
            .map_err(|e| Error::Internal(format!("cannot start the server thread: {e}")))?;
        match ready.recv() {
            Ok(Ok(())) => Ok(ServerHandle {
                running,
                stopper: ShutdownTrigger(Arc::new(Mutex::new(Some(stop_sender)))),
                thread: Some(thread),
                counters,
            }),
            Ok(Err(error)) => {
                let _ = thread.join();
                Err(error)
            }
            Err(_) => Err(thread
                .join()
                .map_err(|_| Error::Internal("the server thread panicked".into()))
                .and_then(|result| result)
                .err()
                .unwrap_or_else(|| Error::Internal("the server stopped while starting".into()))),
        }
    }
}

/// A running server. Dropping the handle stops the server as [`shutdown`](Self::shutdown)
/// does, ignoring errors.
pub struct ServerHandle {
    stopper: ShutdownTrigger,
    thread: Option<JoinHandle<Result<()>>>,
    counters: Arc<Counters>,
    running: Arc<AtomicBool>,
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl ServerHandle {
    /// A view of this server's figures and liveness for another thread (a metrics or health
    /// endpoint, say), usable after the handle itself is waited on.
    pub fn monitor(&self) -> ServerMonitor {
        ServerMonitor {
            counters: Arc::clone(&self.counters),
            running: Arc::clone(&self.running),
        }
    }

    /// A trigger that can stop this server from another thread (a signal handler, say).
    pub fn shutdown_trigger(&self) -> ShutdownTrigger {
        self.stopper.clone()
    }

    /// What the server did with the requests it received so far.
    pub fn stats(&self) -> ServerStats {
        self.counters.snapshot()
    }

    /// Stops taking requests, finishes and acks those in hand, closes the connection; returns
    /// the final counts.
    pub fn shutdown(self) -> Result<ServerStats> {
        self.stopper.trigger();
        self.wait()
    }

    /// Blocks until the server has been stopped through a [`ShutdownTrigger`]; returns the
    /// final counts.
    pub fn wait(mut self) -> Result<ServerStats> {
        if let Some(thread) = self.thread.take() {
            thread
                .join()
                .map_err(|_| Error::Internal("the server thread panicked".into()))??;
        }
        Ok(self.counters.snapshot())
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.stopper.trigger();
            let _ = thread.join();
        }
    }
}

/// What a running server did and is doing, readable from any thread; see
/// [`ServerHandle::monitor`].
#[derive(Clone)]
pub struct ServerMonitor {
    counters: Arc<Counters>,
    running: Arc<AtomicBool>,
}

impl ServerMonitor {
    /// The server's figures now.
    pub fn stats(&self) -> ServerStats {
        self.counters.snapshot()
    }

    /// True while the server's supervisor runs its loop (false once it stopped, or died).
    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::Relaxed)
    }
}

impl std::fmt::Debug for ServerMonitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerMonitor")
            .field("running", &self.is_running())
            .finish_non_exhaustive()
    }
}

/// Stops a server; cheap to clone, harmless to trigger twice.
#[derive(Clone, Debug)]
pub struct ShutdownTrigger(Arc<Mutex<Option<Sender<()>>>>);

impl ShutdownTrigger {
    /// Asks the server to stop: every worker sees the stop channel disconnect.
    pub fn trigger(&self) {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
    }
}

/// A connection's running workers, as the supervisor watches them.
struct Workers {
    /// How each worker ended.
    exits: Receiver<SessionEnd>,
    /// Workers asking for a new channel.
    channel_requests: Receiver<ChannelRequest>,
    /// The broker's notices that it blocks (or no longer blocks) the connection.
    blocked: Receiver<ConnectionBlockedNotification>,
}

struct Supervisor {
    config: ServerConfig,
    handler: Arc<dyn Handler>,
    stop: Receiver<()>,
    counters: Arc<Counters>,
    /// The endpoint to try first when (re)connecting: the one after a node that was lost.
    next_endpoint: Cell<usize>,
    shared: Arc<Shared>,
    /// Connections made so far: the workers' copies of requests count as duplicates only on
    /// the connection that took the original.
    generation: Cell<u64>,
}

impl Supervisor {
    fn run(self, ready: Sender<Result<()>>) -> Result<()> {
        let mut ready = Some(ready);
        let mut backoff = self.config.reconnect_initial;
        loop {
            match self.serve_one_connection(&mut ready) {
                Ok(SessionEnd::Stopped) => return Ok(()),
                Ok(SessionEnd::Lost(reason)) => {
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
        let Workers {
            exits,
            channel_requests,
            mut blocked,
        } = cutter
            .bounded(
                deadline::from_now(self.config.connection.connect_timeout),
                || self.start_workers(&mut connection, &cutter),
            )
            .outcome?;
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
        // The first worker to end decides: a stop, or a loss that ends the whole connection.
        // Meanwhile, a worker whose channel the broker closed gets a new one, and the broker's
        // blocking of the connection is reported.
        let mut ended = 0;
        let mut requests = channel_requests.clone();
        let first = loop {
            crossbeam_channel::select! {
                recv(exits) -> end => break end.ok(),
                recv(self.stop) -> _ => break None,
                recv(requests) -> request => match request {
                    Ok(request) => {
                        let channel = cutter.bounded(
                            deadline::from_now(self.config.connection.connect_timeout),
                            || queue::open_channel(&mut connection),
                        );
                        let _ = request.send(channel.outcome);
                    }
                    // Every worker has ended; their exits tell how.
                    Err(_) => requests = crossbeam_channel::never(),
                },
                recv(blocked) -> note => match note {
                    Ok(note) => self.report_blocking(note),
                    // The connection's I/O thread ended; the workers' exits tell why.
                    Err(_) => blocked = crossbeam_channel::never(),
                },
            }
        };
        // From here on no worker gets a new channel: one that asks ends.
        drop((channel_requests, requests));
        self.counters.set_blocked(None);
        // Whichever it is, not every worker consumes any more.
        self.counters.consuming.store(false, Ordering::Relaxed);
        match first {
            Some(SessionEnd::Stopped) => ended = 1,
            Some(SessionEnd::Lost(_)) | None => {}
        }
        if let Some(SessionEnd::Lost(reason)) = first {
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
            return Ok(SessionEnd::Lost(reason));
        }
        // Stopping: the workers finish what they hold, within the drain timeout; whatever is
        // still in hand then goes back to the queue when the connection is cut.
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
        Ok(SessionEnd::Stopped)
    }
}

impl Supervisor {
    /// Declares the request queue and starts the workers on `connection`; returns once every
    /// worker consumes.
    fn start_workers(&self, connection: &mut Connection, cutter: &Arc<Cutter>) -> Result<Workers> {
        queue::declare_durable(connection, &self.config.queue, self.config.queue_type)?;
        let blocked = connection
            .listen_for_connection_blocked()
            .map_err(|error| Error::broker("listening for connection.blocked", error))?;
        self.generation.set(self.generation.get() + 1);
        let (exit_sender, exits) = crossbeam_channel::unbounded();
        let (consuming_sender, consuming) = crossbeam_channel::unbounded();
        let (channel_sender, channel_requests) = crossbeam_channel::unbounded::<ChannelRequest>();
        for index in 0..self.config.workers {
            let channel = queue::open_channel(connection)?;
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
        })
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
