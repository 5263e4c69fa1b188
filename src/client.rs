//! The blocking client: one connection, one exclusive callback queue, many calls.

use crate::admin::{self, NOT_FOUND};
use crate::amqp;
use crate::config::{ClientConfig, ConnectionConfig, QueueType, ReplyMode, DEFAULT_QUEUE};
use crate::error::{Error, Result};
use crate::pending::{Outcome, Pending};
use crate::protocol::{self, CONTENT_TYPE};
use amiquip::{
    AmqpProperties, Channel, Confirm, Connection, ConsumerMessage, ConsumerOptions, Delivery,
    Publish, QueueDeclareOptions, Return,
};
use crossbeam_channel::{Receiver, TryRecvError};
use num_bigint::BigUint;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};
use uuid::Uuid;

/// AMQP reply code of a mandatory message the broker could not route to any queue.
const NO_ROUTE: u16 = 312;

/// AMQP `delivery_mode` of a message the broker writes to disk.
const PERSISTENT: u8 = 2;

/// The pseudo-queue of RabbitMQ's direct reply-to.
const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// How long a queue seen with consumers is trusted to still have them.
const CONSUMER_CHECK_TTL: Duration = Duration::from_secs(1);

/// A blocking RPC client for any request queue that speaks the tutorial-6 protocol.
///
/// One connection and one exclusive, server-named callback queue (or direct reply-to) serve
/// every call. Waiting callers read the replies and route each to its caller by
/// `correlation_id`; replies nobody waits for (late replies of timed-out calls, duplicates after
/// a redelivery, strangers) are logged at debug and dropped. The client is `Send + Sync`: share
/// it between threads behind an `Arc`.
///
/// If the connection is lost, calls in flight fail with [`Error::ConnectionLost`] and the next
/// call reconnects with a new callback queue.
pub struct RpcClient {
    config: ClientConfig,
    session: Mutex<Option<Arc<Session>>>,
}

impl RpcClient {
    /// Connects to the broker at `url` with default settings.
    pub fn connect(url: &str) -> Result<RpcClient> {
        RpcClient::with_config(ClientConfig {
            connection: ConnectionConfig::new(url),
            ..ClientConfig::default()
        })
    }

    /// Connects with these settings. Fails at once if the broker cannot be reached.
    pub fn with_config(config: ClientConfig) -> Result<RpcClient> {
        let session = Session::open(&config)?;
        Ok(RpcClient {
            config,
            session: Mutex::new(Some(Arc::new(session))),
        })
    }

    /// The settings this client was made with.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// Sends `body` to `queue` and blocks until its reply arrives or `timeout` passes.
    ///
    /// Returns the reply body, or [`Error::Remote`] for an error reply, [`Error::Timeout`],
    /// [`Error::NoServer`] if no queue of that name exists, or [`Error::ConnectionLost`].
    pub fn call(&self, queue: &str, body: &[u8], timeout: Duration) -> Result<Vec<u8>> {
        self.send(queue, body, timeout)?.wait()
    }

    /// Sends every body to `queue` before waiting for any reply, then collects the replies in
    /// the order of `bodies`. Each call's `timeout` runs from its own send.
    pub fn call_many<B: AsRef<[u8]>>(
        &self,
        queue: &str,
        bodies: &[B],
        timeout: Duration,
    ) -> Vec<Result<Vec<u8>>> {
        let sent: Vec<_> = bodies
            .iter()
            .map(|body| self.send(queue, body.as_ref(), timeout))
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
    /// with [`Error::NoServer`] as [`call`](Self::call) does.
    pub fn submit(&self, queue: &str, body: &[u8], results: &str) -> Result<String> {
        let session = self.session()?;
        session.ensure_results_queue(results)?;
        if self.config.require_consumer {
            session.ensure_consumer(queue)?;
        } else {
            session.consumer_count(queue)?;
        }
        let correlation_id = Uuid::new_v4().to_string();
        let properties = AmqpProperties::default()
            .with_reply_to(results.to_owned())
            .with_correlation_id(correlation_id.clone())
            .with_content_type(CONTENT_TYPE.to_owned())
            .with_delivery_mode(PERSISTENT);
        session.publish_confirmed(
            Publish {
                mandatory: true,
                ..Publish::with_properties(body, queue, properties)
            },
            self.config.connection.connect_timeout,
        )?;
        log::trace!("submitted {correlation_id} -> {queue}, results to {results}");
        Ok(correlation_id)
    }

    /// Sends `body` to `queue` without waiting; the reply is collected with
    /// [`PendingReply::wait`], which gives up `timeout` after this send.
    pub fn send(&self, queue: &str, body: &[u8], timeout: Duration) -> Result<PendingReply> {
        let deadline = Instant::now() + timeout;
        let session = self.session()?;
        if self.config.require_consumer {
            session.ensure_consumer(queue)?;
        }
        let correlation_id = Uuid::new_v4().to_string();
        let reply = session.pending.register(correlation_id.clone());
        let pending = PendingReply {
            session: Arc::clone(&session),
            correlation_id,
            reply,
            queue: queue.to_owned(),
            timeout,
            deadline,
        };
        session.dispatch_ready();
        if let Some(reason) = session.lost_reason() {
            return Err(Error::ConnectionLost(reason));
        }
        let properties = AmqpProperties::default()
            .with_reply_to(session.reply_queue.clone())
            .with_correlation_id(pending.correlation_id.clone())
            .with_content_type(CONTENT_TYPE.to_owned())
            .with_expiration(expiration_millis(timeout))
            .with_headers(protocol::deadline_headers(SystemTime::now(), timeout));
        let publish = Publish {
            mandatory: true,
            ..Publish::with_properties(body, queue, properties)
        };
        log::trace!("call {} -> {queue}", pending.correlation_id);
        session
            .publisher()
            .basic_publish("", publish)
            .map_err(|error| session.connection_error(error))?;
        Ok(pending)
    }

    /// Calls sent whose reply has not arrived, timed out or been dropped yet.
    pub fn pending_calls(&self) -> usize {
        lock(&self.session)
            .as_ref()
            .map_or(0, |session| session.pending.len())
    }

    /// Closes the connection; calls still waiting fail with [`Error::ConnectionLost`].
    pub fn close(self) -> Result<()> {
        match self.take_session() {
            Some(session) => session.close(),
            None => Ok(()),
        }
    }

    fn take_session(&self) -> Option<Arc<Session>> {
        lock(&self.session).take()
    }

    /// The live session, reconnecting first if the last one died.
    fn session(&self) -> Result<Arc<Session>> {
        let mut current = lock(&self.session);
        if let Some(session) = current.as_ref() {
            match session.lost_reason() {
                None => return Ok(Arc::clone(session)),
                Some(reason) => log::info!("reconnecting after connection loss ({reason})"),
            }
        }
        if let Some(dead) = current.take() {
            let _ = dead.close();
        }
        let session = Arc::new(Session::open(&self.config)?);
        *current = Some(Arc::clone(&session));
        Ok(session)
    }
}

impl Drop for RpcClient {
    fn drop(&mut self) {
        if let Some(session) = self.take_session() {
            let _ = session.close();
        }
    }
}

/// A request sent by [`RpcClient::send`] whose reply has not been collected yet.
///
/// Dropping it without waiting forgets the call; its reply, if one comes, is discarded.
pub struct PendingReply {
    session: Arc<Session>,
    correlation_id: String,
    reply: Receiver<Outcome>,
    queue: String,
    timeout: Duration,
    deadline: Instant,
}

impl PendingReply {
    /// The request's `correlation_id`.
    pub fn correlation_id(&self) -> &str {
        &self.correlation_id
    }

    /// Blocks until the reply arrives or the call's timeout (counted from the send) passes.
    ///
    /// While it waits, the caller itself reads the connection's replies and hands each to the
    /// caller it belongs to: a reply reaches a lone caller with no thread in between.
    pub fn wait(self) -> Result<Vec<u8>> {
        let session = &self.session;
        loop {
            let remaining = self.deadline.saturating_duration_since(Instant::now());
            crossbeam_channel::select! {
                recv(self.reply) -> outcome => {
                    return outcome.unwrap_or_else(|_| Err(session.lost_error("the call was dropped")))
                }
                recv(session.replies) -> message => match message {
                    Ok(message) => session.dispatch(message),
                    Err(_) => session.connection_gone(),
                },
                recv(session.returns) -> returned => match returned {
                    Ok(returned) => session.route_return(returned),
                    Err(_) => session.connection_gone(),
                },
                default(remaining) => {
                    // A reply may have been routed to us in the last instant.
                    return match self.reply.try_recv() {
                        Ok(outcome) => outcome,
                        Err(_) => Err(Error::Timeout {
                            queue: self.queue.clone(),
                            timeout: self.timeout,
                        }),
                    };
                }
            }
        }
    }
}

impl Drop for PendingReply {
    fn drop(&mut self) {
        self.session.pending.forget(&self.correlation_id);
    }
}

/// The request's `expiration` property: the broker drops a request nobody took within the
/// caller's timeout, so no server computes an answer for a caller who has gone.
fn expiration_millis(timeout: Duration) -> String {
    timeout
        .as_millis()
        .clamp(1, u128::from(u32::MAX))
        .to_string()
}

/// One connection's worth of client state; replaced wholesale after a connection loss.
struct Session {
    connection: Mutex<Option<Connection>>,
    /// Requests go out on the channel that consumes the replies (direct reply-to demands it).
    publisher: Mutex<Channel>,
    /// For passive declarations, which close their channel when the queue is missing; opened
    /// on first use so that a failed check never disturbs publishing.
    inspector: Mutex<Option<Channel>>,
    /// Queues seen with consumers, until when that answer is trusted.
    served_until: Mutex<HashMap<String, Instant>>,
    /// For [`RpcClient::submit`]: a channel in confirm mode, opened on first use.
    submitter: Mutex<Option<Submitter>>,
    /// Result queues declared on this connection.
    result_queues: Mutex<HashSet<String>>,
    reply_queue: String,
    pending: Pending,
    /// Replies and the consumer's fate, read by whichever caller is waiting.
    replies: Receiver<ConsumerMessage>,
    /// Mandatory requests the broker could not route.
    returns: Receiver<Return>,
    /// Why the connection is gone, once it is.
    lost: Mutex<Option<String>>,
}

impl Session {
    fn open(config: &ClientConfig) -> Result<Session> {
        let mut connection = amqp::open(&config.connection, "fib-rpc client")?;
        let channel = admin::open_channel(&mut connection)?;
        let returns = channel
            .listen_for_returns()
            .map_err(|e| Error::broker("listening for returned messages", e))?;
        let (reply_queue, consumer) = match config.reply_mode {
            ReplyMode::CallbackQueue => {
                let options = QueueDeclareOptions {
                    exclusive: true,
                    ..QueueDeclareOptions::default()
                };
                let name = channel
                    .queue_declare("", options)
                    .map_err(|e| Error::broker("declaring the callback queue", e))?
                    .name()
                    .to_owned();
                (name.clone(), channel.basic_consume(name, no_ack()))
            }
            ReplyMode::DirectReplyTo => (
                DIRECT_REPLY_TO.to_owned(),
                channel.basic_consume(DIRECT_REPLY_TO, no_ack()),
            ),
        };
        let consumer = consumer.map_err(|e| Error::broker("consuming replies", e))?;
        let replies = consumer.receiver().clone();
        // amiquip's Consumer borrows its channel, but callers must publish on this very channel
        // (direct reply-to demands it) from any thread. Forgetting the handle keeps the
        // subscription alive, without a borrow, for as long as the channel: it ends when the
        // connection closes, and never with a cancel whose confirmation could reach a dropped
        // receiver and take the connection down. What stays allocated is the consumer tag and
        // one reference to the delivery queue, once per connection.
        std::mem::forget(consumer);
        log::debug!("client ready, replies to {reply_queue}");
        Ok(Session {
            connection: Mutex::new(Some(connection)),
            publisher: Mutex::new(channel),
            inspector: Mutex::new(None),
            served_until: Mutex::new(HashMap::new()),
            submitter: Mutex::new(None),
            result_queues: Mutex::new(HashSet::new()),
            reply_queue,
            pending: Pending::default(),
            replies,
            returns,
            lost: Mutex::new(None),
        })
    }

    /// Runs `work` with the connection, for the rare operations that open channels.
    fn with_connection<T>(&self, work: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
        match lock(&self.connection).as_mut() {
            Some(connection) => work(connection),
            None => Err(Error::ConnectionLost("the client is closed".to_owned())),
        }
    }

    fn ensure_results_queue(&self, queue: &str) -> Result<()> {
        let mut declared = lock(&self.result_queues);
        if declared.contains(queue) {
            return Ok(());
        }
        self.with_connection(|connection| {
            admin::declare_durable(connection, queue, QueueType::Classic)
        })?;
        declared.insert(queue.to_owned());
        Ok(())
    }

    /// Publishes on the confirm-mode channel and waits for the broker's verdict.
    fn publish_confirmed(&self, publish: Publish, timeout: Duration) -> Result<()> {
        let mut submitter = lock(&self.submitter);
        if submitter.is_none() {
            *submitter = Some(self.with_connection(Submitter::open)?);
        }
        let outcome = submitter
            .as_mut()
            .expect("opened above")
            .publish(publish, timeout);
        if outcome.as_ref().is_err_and(Error::is_connection) {
            *submitter = None;
        }
        outcome.map_err(|error| match error {
            Error::ConnectionLost(reason) => self.lost_error(&reason),
            other => other,
        })
    }

    /// Fails with [`Error::NoServer`] if `queue` is missing or has no consumer.
    fn ensure_consumer(&self, queue: &str) -> Result<()> {
        let now = Instant::now();
        if lock(&self.served_until)
            .get(queue)
            .is_some_and(|until| *until > now)
        {
            return Ok(());
        }
        let consumers = self.consumer_count(queue)?;
        if consumers == 0 {
            return Err(Error::NoServer {
                queue: queue.to_owned(),
                reason: "the queue exists but no server is consuming it".to_owned(),
            });
        }
        lock(&self.served_until).insert(queue.to_owned(), now + CONSUMER_CHECK_TTL);
        Ok(())
    }

    fn consumer_count(&self, queue: &str) -> Result<u32> {
        let mut inspector = lock(&self.inspector);
        if inspector.is_none() {
            let channel = self.with_connection(|connection| {
                connection
                    .open_channel(None)
                    .map_err(|error| self.connection_error(error))
            })?;
            *inspector = Some(channel);
        }
        let channel = inspector.as_ref().expect("opened above");
        match channel.queue_declare_passive(queue) {
            Ok(declared) => Ok(declared.declared_consumer_count().unwrap_or(0)),
            Err(amiquip::Error::ServerClosedChannel { code, message, .. }) => {
                // The broker closed the channel; the next check opens a fresh one.
                *inspector = None;
                Err(if code == NOT_FOUND {
                    Error::NoServer {
                        queue: queue.to_owned(),
                        reason: format!("no queue named {queue:?} exists"),
                    }
                } else {
                    Error::Broker {
                        operation: format!("checking queue {queue:?}"),
                        reason: format!("{code} {message}"),
                    }
                })
            }
            Err(error) => {
                *inspector = None;
                Err(self.connection_error(error))
            }
        }
    }

    fn publisher(&self) -> MutexGuard<'_, Channel> {
        lock(&self.publisher)
    }

    fn lost_reason(&self) -> Option<String> {
        lock(&self.lost).clone()
    }

    /// amiquip reports every failure after the first as a bare `EventLoopDropped`; prefer the
    /// reason recorded when the connection went down.
    fn connection_error(&self, error: amiquip::Error) -> Error {
        self.lost_error(&error.to_string())
    }

    fn lost_error(&self, fallback: &str) -> Error {
        Error::ConnectionLost(self.lost_reason().unwrap_or_else(|| fallback.to_owned()))
    }

    /// Routes whatever has arrived, without blocking; notices a lost connection.
    fn dispatch_ready(&self) {
        loop {
            match self.replies.try_recv() {
                Ok(message) => self.dispatch(message),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    self.connection_gone();
                    break;
                }
            }
        }
        while let Ok(returned) = self.returns.try_recv() {
            self.route_return(returned);
        }
    }

    fn dispatch(&self, message: ConsumerMessage) {
        match message {
            ConsumerMessage::Delivery(delivery) => self.route_reply(delivery),
            ConsumerMessage::ServerClosedConnection(error)
            | ConsumerMessage::ServerClosedChannel(error) => self.mark_lost(error.to_string()),
            ConsumerMessage::ServerCancelled => self.mark_lost(
                "the broker cancelled the reply consumer (callback queue deleted?)".to_owned(),
            ),
            _ => self.mark_lost("the client closed the connection".to_owned()),
        }
    }

    /// The driver dropped our receivers: the connection is gone, maybe without a last message.
    fn connection_gone(&self) {
        while let Ok(message) = self.replies.try_recv() {
            self.dispatch(message);
        }
        self.mark_lost("the connection to the broker closed".to_owned());
    }

    /// Records the first reason the connection went down and fails every waiting call with it.
    fn mark_lost(&self, reason: String) {
        let reason = {
            let mut lost = lock(&self.lost);
            if lost.is_none() {
                log::debug!("client connection lost: {reason}");
            }
            lost.get_or_insert(reason).clone()
        };
        self.pending.fail_all(&reason);
    }

    fn close(&self) -> Result<()> {
        let closed = match lock(&self.connection).take() {
            Some(connection) => connection.close(),
            None => Ok(()),
        };
        self.connection_gone();
        match closed {
            Ok(()) => Ok(()),
            Err(error) => Err(Error::broker("closing the connection", error)),
        }
    }

    fn route_reply(&self, delivery: Delivery) {
        let Some(id) = delivery.properties.correlation_id().clone() else {
            log::debug!("discarding a reply without correlation_id");
            return;
        };
        let outcome = protocol::decode_reply(&delivery.properties, delivery.body);
        if !self.pending.resolve(&id, outcome) {
            log::debug!("discarding a reply nobody waits for (late, duplicate or foreign): {id}");
        }
    }

    fn route_return(&self, returned: Return) {
        let Some(id) = returned.properties.correlation_id().clone() else {
            return;
        };
        let error = if returned.reply_code == NO_ROUTE {
            Error::NoServer {
                queue: returned.routing_key.clone(),
                reason: format!("no queue named {:?} exists", returned.routing_key),
            }
        } else {
            Error::Broker {
                operation: format!("routing a request to {:?}", returned.routing_key),
                reason: format!("{} {}", returned.reply_code, returned.reply_text),
            }
        };
        self.pending.resolve(&id, Err(error));
    }
}

/// A channel in publisher-confirm mode: a publish counts once the broker has taken it.
struct Submitter {
    channel: Channel,
    confirms: Receiver<Confirm>,
    returns: Receiver<Return>,
    published: u64,
}

impl Submitter {
    fn open(connection: &mut Connection) -> Result<Submitter> {
        let channel = admin::open_channel(connection)?;
        let confirms = channel
            .listen_for_publisher_confirms()
            .map_err(|e| Error::broker("listening for confirms", e))?;
        let returns = channel
            .listen_for_returns()
            .map_err(|e| Error::broker("listening for returned messages", e))?;
        channel
            .enable_publisher_confirms()
            .map_err(|e| Error::broker("enabling publisher confirms", e))?;
        Ok(Submitter {
            channel,
            confirms,
            returns,
            published: 0,
        })
    }

    fn publish(&mut self, publish: Publish, timeout: Duration) -> Result<()> {
        let queue = publish.routing_key.clone();
        self.channel
            .basic_publish("", publish)
            .map_err(|e| Error::ConnectionLost(e.to_string()))?;
        self.published += 1;
        let deadline = Instant::now() + timeout;
        loop {
            let confirm = self
                .confirms
                .recv_deadline(deadline)
                .map_err(|_| Error::ConnectionLost("no publisher confirm in time".to_owned()))?;
            let (payload, acked) = match confirm {
                Confirm::Ack(payload) => (payload, true),
                Confirm::Nack(payload) => (payload, false),
            };
            let covers_ours = payload.delivery_tag == self.published
                || (payload.multiple && payload.delivery_tag >= self.published);
            if !covers_ours {
                continue;
            }
            // The broker sends a mandatory message's return before its confirm.
            if let Ok(returned) = self.returns.try_recv() {
                return Err(Error::NoServer {
                    queue,
                    reason: format!("{} {}", returned.reply_code, returned.reply_text),
                });
            }
            return if acked {
                Ok(())
            } else {
                Err(Error::Broker {
                    operation: format!("publishing to {queue:?}"),
                    reason: "the broker refused the message (nack)".to_owned(),
                })
            };
        }
    }
}

/// A client for the Fibonacci service: `call(n)` returns fib(n), exact.
pub struct FibonacciRpcClient {
    rpc: RpcClient,
    queue: String,
    timeout: Duration,
}

impl FibonacciRpcClient {
    /// Connects to the broker at `url`; calls go to [`DEFAULT_QUEUE`] with a 5 s timeout.
    pub fn connect(url: &str) -> Result<FibonacciRpcClient> {
        Ok(FibonacciRpcClient::new(RpcClient::connect(url)?))
    }

    /// Wraps a connected client; its `call_timeout` becomes the timeout of every call.
    pub fn new(rpc: RpcClient) -> FibonacciRpcClient {
        let timeout = rpc.config().call_timeout;
        FibonacciRpcClient {
            rpc,
            queue: DEFAULT_QUEUE.to_owned(),
            timeout,
        }
    }

    /// Sends requests to `queue` instead of [`DEFAULT_QUEUE`].
    pub fn with_queue(mut self, queue: impl Into<String>) -> FibonacciRpcClient {
        self.queue = queue.into();
        self
    }

    /// Waits at most `timeout` for each reply.
    pub fn with_timeout(mut self, timeout: Duration) -> FibonacciRpcClient {
        self.timeout = timeout;
        self
    }

    /// fib(n), computed by a remote server.
    pub fn call(&self, n: u64) -> Result<BigUint> {
        let body = self
            .rpc
            .call(&self.queue, n.to_string().as_bytes(), self.timeout)?;
        protocol::parse_biguint(&body)
    }

    /// fib(n) for every n, all requests sent before any reply is awaited; results in order.
    pub fn call_many(&self, numbers: &[u64]) -> Vec<Result<BigUint>> {
        let bodies: Vec<String> = numbers.iter().map(u64::to_string).collect();
        self.rpc
            .call_many(&self.queue, &bodies, self.timeout)
            .into_iter()
            .map(|reply| reply.and_then(|body| protocol::parse_biguint(&body)))
            .collect()
    }

    /// The generic client underneath.
    pub fn rpc(&self) -> &RpcClient {
        &self.rpc
    }

    /// Closes the connection.
    pub fn close(self) -> Result<()> {
        self.rpc.close()
    }
}

fn no_ack() -> ConsumerOptions {
    ConsumerOptions {
        no_ack: true,
        ..ConsumerOptions::default()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiration_is_the_timeout_in_whole_milliseconds_and_never_zero() {
        assert_eq!(expiration_millis(Duration::from_secs(5)), "5000");
        assert_eq!(expiration_millis(Duration::from_micros(1)), "1");
        assert_eq!(expiration_millis(Duration::ZERO), "1");
        assert_eq!(
            expiration_millis(Duration::from_secs(u64::MAX)),
            u32::MAX.to_string()
        );
    }

    #[test]
    fn clients_can_be_shared_between_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<RpcClient>();
        shareable::<FibonacciRpcClient>();
    }
}
