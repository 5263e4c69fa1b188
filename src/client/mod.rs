//! The blocking client: one connection, a callback queue per calling thread, many calls.

mod call;
mod ids;
mod lanes;
mod pending;
mod pending_reply;
mod presence;
mod publishers;
pub(crate) mod results;
mod router;
mod session;
mod submit;

use crate::config::ClientConfig;
use crate::deadline;
use crate::driver::{FieldTable, Publish};
use crate::error::{Error, Result, Stage};
use crate::message::Response;
use crate::protocol::{self, CONTENT_TYPE};
use crate::util::lock;
pub use call::Call;
use ids::CorrelationIds;
use pending_reply::OnProgress;
pub use pending_reply::PendingReply;
use session::Session;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};
use uuid::Uuid;

/// AMQP `delivery_mode` of a message the broker writes to disk.
const PERSISTENT: u8 = 2;

/// A blocking RPC client for any request queue that speaks the tutorial-6 protocol.
///
/// One connection and exclusive, server-named callback queues (one per calling thread, up to
/// eight; or direct reply-to) serve every call. Waiting callers read the replies and route each
/// to its caller by
/// `correlation_id`; replies nobody waits for (late replies of timed-out calls, duplicates after
/// a redelivery, strangers) are logged at debug and dropped. The client is `Send + Sync`: share
/// it between threads behind an `Arc`.
///
/// If the connection is lost, calls in flight fail with [`Error::ConnectionLost`] and the next
/// call reconnects with new callback queues.
pub struct RpcClient {
    config: ClientConfig,
    session: Mutex<Slot>,
    /// Signalled when a reconnection ends, for callers that waited on it.
    reconnected: Condvar,
    /// The largest request body the broker takes: the configured limit, lowered by a refusal.
    limit: Arc<AtomicUsize>,
    ids: CorrelationIds,
}

/// The live session, and whether some caller is making a new one.
struct Slot {
    session: Option<Arc<Session>>,
    connecting: bool,
}

impl std::fmt::Debug for RpcClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcClient")
            .field("config", &self.config)
            .field("pending_calls", &self.pending_calls())
            .finish_non_exhaustive()
    }
}

impl RpcClient {
    /// Connects with these settings: a URL (or several, separated by commas), a
    /// [`ConnectionConfig`](crate::ConnectionConfig) or a [`ClientConfig`]. They are checked
    /// first ([`ClientConfig::validate`]); fails at once if the broker cannot be reached.
    ///
    /// ```no_run
    /// let client = fib_rpc::RpcClient::connect("amqp://guest:guest@127.0.0.1:5672/%2f")?;
    /// # Ok::<(), fib_rpc::Error>(())
    /// ```
    pub fn connect(config: impl Into<ClientConfig>) -> Result<RpcClient> {
        let config = config.into();
        config.validate()?;
        let limit = Arc::new(AtomicUsize::new(config.connection.max_message_size));
        let session = Session::open(
            &config,
            deadline::from_now(config.connection.connect_timeout),
            0,
            Arc::clone(&limit),
        )?;
        Ok(RpcClient {
            config,
            session: Mutex::new(Slot {
                session: Some(session),
                connecting: false,
            }),
            reconnected: Condvar::new(),
            limit,
            ids: CorrelationIds::new(),
        })
    }

    /// The settings this client was made with.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// Sends `body` to `queue` and blocks until its reply arrives or the client's
    /// [`call_timeout`](ClientConfig::call_timeout) passes.
    ///
    /// Returns the reply body, or [`Error::Remote`] for an error reply, [`Error::Timeout`],
    /// [`Error::NoServer`] if no queue of that name exists, or [`Error::ConnectionLost`].
    /// Everything the call does, reconnecting and checking for a server included, ends within
    /// the timeout, whatever the network does.
    pub fn call(&self, queue: &str, body: &[u8]) -> Result<Vec<u8>> {
        self.call_with_timeout(queue, body, self.config.call_timeout)
    }

    /// [`call`](Self::call) with this timeout instead of the client's.
    pub fn call_with_timeout(
        &self,
        queue: &str,
        body: &[u8],
        timeout: Duration,
    ) -> Result<Vec<u8>> {
        self.request(queue, body)
            .timeout(timeout)
            .call()
            .map(Response::into_body)
    }

    /// A call to `target` (a queue, or a routing key with [`Call::exchange`]) with options:
    /// timeout or deadline, exchange, priority, headers, trace context, retries.
    pub fn request<'a>(&'a self, target: &'a str, body: &'a [u8]) -> Call<'a> {
        Call::new(self, target, body)
    }

    /// Sends every body to `queue` before waiting for any reply, then collects the replies in
    /// the order of `bodies`. Each call's timeout (the client's) runs from its own send.
    pub fn call_many<B: AsRef<[u8]>>(&self, queue: &str, bodies: &[B]) -> Vec<Result<Vec<u8>>> {
        self.call_many_with_timeout(queue, bodies, self.config.call_timeout)
    }

    /// [`call_many`](Self::call_many) with this timeout for each call instead of the client's.
    pub fn call_many_with_timeout<B: AsRef<[u8]>>(
        &self,
        queue: &str,
        bodies: &[B],
        timeout: Duration,
    ) -> Vec<Result<Vec<u8>>> {
        let sent: Vec<_> = bodies
            .iter()
            .map(|body| self.send_with_timeout(queue, body.as_ref(), timeout))
            .collect();
        sent.into_iter()
            .map(|pending| pending.and_then(PendingReply::wait))
            .collect()
    }

    /// Sends `body` to `queue` with `reply_to` set to the durable queue `results` (declared if
    /// missing) and returns the request's `correlation_id` once the broker has it: the reply is
    /// read later, by this or any other process, with a [`ResultConsumer`](crate::ResultConsumer).
    ///
    /// Request and reply are persistent and the publish is confirmed by the broker, so the
    /// result survives this process's exit (and, on durable queues, a broker restart). Fails
    /// with [`Error::NoServer`] as [`call`](Self::call) does, and with [`Error::Timeout`] if the
    /// broker has not confirmed the request within the client's `call_timeout`.
    pub fn submit(&self, queue: &str, body: &[u8], results: &str) -> Result<String> {
        let timeout = self.config.call_timeout;
        let call = Budget::new(queue, timeout);
        let deadline = call.deadline;
        let session = self
            .session(deadline)
            .map_err(call.timed_out(Stage::Connect))?;
        let correlation_id = Uuid::new_v4().to_string();
        session
            .bounded(deadline, "a submitted request", || {
                session.ensure_results_queue(results)?;
                if self.config.require_consumer {
                    session.ensure_consumer(queue, deadline)?;
                } else {
                    session.consumer_count(queue)?;
                }
                let properties =
                    protocol::request_properties(results, &correlation_id, CONTENT_TYPE)
                        .with_delivery_mode(PERSISTENT);
                let publish = Publish {
                    mandatory: true,
                    ..Publish::with_properties(body, queue, properties)
                };
                session.publish_confirmed(publish, deadline, timeout)
            })
            .map_err(call.timed_out(Stage::Confirm))?;
        log::trace!("submitted {correlation_id} -> {queue}, results to {results}");
        Ok(correlation_id)
    }

    /// Sends `body` to `queue` without waiting; the reply is collected with
    /// [`PendingReply::wait`], which gives up the client's
    /// [`call_timeout`](ClientConfig::call_timeout) after this send. The send itself
    /// (reconnecting, checking for a server, publishing) never takes longer than that.
    pub fn send(&self, queue: &str, body: &[u8]) -> Result<PendingReply> {
        self.send_with_timeout(queue, body, self.config.call_timeout)
    }

    /// [`send`](Self::send) with this timeout instead of the client's.
    pub fn send_with_timeout(
        &self,
        queue: &str,
        body: &[u8],
        timeout: Duration,
    ) -> Result<PendingReply> {
        self.request(queue, body).timeout(timeout).send()
    }

    /// Sends one attempt of a call, under `correlation_id`, giving up at `deadline`, when its
    /// `timeout` (what errors and the request's expiration state) has passed.
    fn send_request(
        &self,
        outgoing: &Outgoing<'_>,
        correlation_id: String,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<PendingReply> {
        let queue = outgoing.routing_key;
        let call = Budget {
            queue,
            timeout,
            deadline,
        };
        let session = self
            .session(deadline)
            .map_err(call.timed_out(Stage::Connect))?;
        let limit = session.limit();
        let body = outgoing.body;
        if body.len() > limit {
            return Err(Error::TooLarge {
                what: "the request".to_owned(),
                size: body.len(),
                limit,
            });
        }
        // A blocked connection is not read by the broker: asking it anything would only wait.
        if let Some(reason) = session.await_unblocked(deadline) {
            return Err(call.blocked(reason));
        }
        // Through a named exchange the queue is not ours to know; the return of an unroutable
        // request still tells that nothing would take it.
        let queue_known = outgoing.exchange.is_empty();
        if queue_known && self.config.require_consumer {
            session
                .ensure_consumer(queue, deadline)
                .map_err(call.timed_out(Stage::ServerCheck))?;
        } else if queue_known {
            session
                .await_queue(queue, deadline)
                .map_err(call.timed_out(Stage::ServerCheck))?;
        }
        let lane = session.reply_lane();
        let reply = session.pending.register(correlation_id.clone(), deadline);
        let progress = outgoing.on_progress.as_ref().map(|on_progress| {
            let receiver = session.pending.register_progress(&correlation_id);
            (receiver, Arc::clone(on_progress))
        });
        let mut pending = PendingReply {
            session: Arc::clone(&session),
            correlation_id,
            reply,
            lane,
            queue: queue.to_owned(),
            timeout: call.timeout,
            deadline,
            size: body.len(),
            cancellable: queue_known,
            progress,
            idle_timeout: outgoing.idle_timeout,
            // Until the request is out, there is nothing to cancel.
            settled: true,
            resolved: false,
        };
        session.dispatch_lane(pending.lane);
        if let Some(reason) = session.lost_reason() {
            return Err(Error::ConnectionLost(reason));
        }
        // What is left of the call when its request goes out is what the server may count
        // on, and what a call its handler makes inherits: not the whole timeout, part of
        // which connecting and the server check may have used.
        let left = deadline
            .saturating_duration_since(Instant::now())
            .min(call.timeout);
        let properties = protocol::with_options(
            protocol::call_properties(
                &session.lanes.get(pending.lane).queue,
                &pending.correlation_id,
                &outgoing.content_type,
                SystemTime::now(),
                left,
            ),
            outgoing.priority,
            &outgoing.headers,
        );
        log::trace!("call {} -> {queue}", pending.correlation_id);
        let publish = Publish {
            mandatory: true,
            ..Publish::with_properties(body, queue, properties)
        };
        session
            .bounded(deadline, "publishing the request", || {
                session.publish(pending.lane, &outgoing.exchange, publish)
            })
            .map_err(call.timed_out(Stage::Publish))?;
        pending.settled = false;
        Ok(pending)
    }

    /// Tells the servers of `queue` that nobody waits for request `correlation_id` any more,
    /// as [`PendingReply::cancel`] does, for a request whose `PendingReply` is out of reach (a
    /// signal handler's thread, say). Returns once the broker has the cancel, so the process
    /// may exit at once (within the connection's `close_timeout`). Sent on the connection
    /// there is, if it is alive: a cancel that needs a reconnection would come too late to
    /// matter.
    pub fn cancel(&self, queue: &str, correlation_id: &str) {
        let session = lock(&self.session).session.clone();
        if let Some(session) = session {
            session.cancel_now(
                &protocol::cancel_routing_key(queue),
                correlation_id,
                deadline::from_now(self.config.connection.close_timeout),
            );
        }
    }

    /// Calls sent whose reply has not arrived, timed out or been dropped yet.
    pub fn pending_calls(&self) -> usize {
        lock(&self.session)
            .session
            .as_ref()
            .map_or(0, |session| session.pending.len())
    }

    /// Closes the connection, within the connection's `close_timeout`; calls still waiting
    /// fail with [`Error::ConnectionLost`].
    pub fn close(self) -> Result<()> {
        match self.take_session() {
            Some(session) => session.close(),
            None => Ok(()),
        }
    }

    fn take_session(&self) -> Option<Arc<Session>> {
        lock(&self.session).session.take()
    }

    /// The live session, reconnecting first (before `deadline`) if the last one died: to the
    /// endpoint after the lost one first, if there are several.
    ///
    /// One caller reconnects; the others wait for it, each no longer than its own deadline,
    /// and none holds a lock while the network is slow.
    fn session(&self, deadline: Instant) -> Result<Arc<Session>> {
        let mut slot = lock(&self.session);
        loop {
            if let Some(session) = slot.session.as_ref() {
                if session.lost_reason().is_none() {
                    return Ok(Arc::clone(session));
                }
            }
            if !slot.connecting {
                break;
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(Error::ConnectionLost(
                    "another call is still reconnecting".to_owned(),
                ));
            }
            slot = self
                .reconnected
                .wait_timeout(slot, remaining)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
        let dead = slot.session.take();
        slot.connecting = true;
        drop(slot);
        let mut first = 0;
        if let Some(dead) = dead {
            let reason = dead.lost_reason().unwrap_or_default();
            // Named as the connection is, so that one of several clients in a process can be
            // told from the others.
            let name = self.config.connection.name_or(session::CLIENT_NAME);
            log::info!("{name}: reconnecting after connection loss ({reason})");
            first = dead.endpoint + 1;
            let _ = dead.close();
        }
        let opened = Session::open(&self.config, deadline, first, Arc::clone(&self.limit));
        let mut slot = lock(&self.session);
        slot.connecting = false;
        if let Ok(session) = &opened {
            slot.session = Some(Arc::clone(session));
        }
        drop(slot);
        self.reconnected.notify_all();
        opened
    }
}

/// A request as it goes out, its options resolved.
struct Outgoing<'a> {
    /// `""` for the default exchange.
    exchange: String,
    routing_key: &'a str,
    body: &'a [u8],
    content_type: String,
    priority: Option<u8>,
    /// Application and trace headers; the deadline header is added to them.
    headers: FieldTable,
    /// Where progress messages go, if the call asked for them (and its header says so).
    on_progress: Option<OnProgress>,
    idle_timeout: Option<Duration>,
}

/// One call's queue and time budget.
struct Budget<'a> {
    queue: &'a str,
    timeout: Duration,
    deadline: Instant,
}

impl<'a> Budget<'a> {
    fn new(queue: &'a str, timeout: Duration) -> Budget<'a> {
        Budget {
            queue,
            timeout,
            deadline: deadline::after(Instant::now(), timeout),
        }
    }

    /// The call gave up because the broker blocks publishing.
    fn blocked(&self, reason: String) -> Error {
        Error::Blocked {
            queue: self.queue.to_owned(),
            timeout: self.timeout,
            reason,
        }
    }

    /// A connection failure that comes after the deadline is the call's timeout at `stage`,
    /// whatever broke: the watchdog cut the connection because the call's time ran out.
    fn timed_out(&self, stage: Stage) -> impl Fn(Error) -> Error + '_ {
        move |error| {
            let gave_up = error.is_connection() || error.is_no_server();
            if gave_up && Instant::now() >= self.deadline {
                log::debug!("call to {} timed out: {error}", self.queue);
                Error::Timeout {
                    queue: self.queue.to_owned(),
                    timeout: self.timeout,
                    stage,
                }
            } else {
                error
            }
        }
    }
}

impl Drop for RpcClient {
    fn drop(&mut self) {
        if let Some(session) = self.take_session() {
            let _ = session.close();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_can_be_shared_between_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<RpcClient>();
    }
}
