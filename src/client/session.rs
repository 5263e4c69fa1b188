//! One connection's worth of client state, replaced wholesale after a connection loss.

use super::lanes::{Lanes, ReplyLane, MAX_LANES};
use super::pending::Pending;
use super::presence::Presence;
use super::publishers::Publishers;
use super::router;
use super::submit::Submitter;
use crate::config::{ClientConfig, QueueType, ReplyMode};
use crate::deadline;
use crate::driver::amqp::{self, Link};
use crate::driver::keeper::{Keeper, OwnedPublish, Tick};
use crate::driver::queue;
use crate::driver::watchdog::{Bounded, Cutter};
use crate::driver::{
    AmqpProperties, Channel, Connection, ConnectionBlockedNotification, ConsumerMessage,
    ConsumerOptions, DriverError, Publish, Return,
};
use crate::error::{Error, Result};
use crate::protocol::{self, CANCEL_EXCHANGE, DIRECT_REPLY_TO, NOT_FOUND};
use crate::util::lock;
use crossbeam_channel::{Receiver, TryRecvError};
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

/// How long a closed request channel is asked why: its answer is already there, or never comes.
const CHANNEL_REASON_WAIT: Duration = Duration::from_millis(200);

/// How often replies are read while no caller waits for one, so strays never pile up.
const IDLE_DRAIN_INTERVAL: Duration = Duration::from_millis(50);

/// What a client's connection is called, in the broker's list and in the log, unless its
/// configuration names it.
pub(super) const CLIENT_NAME: &str = "fib-rpc client";

pub(crate) struct Session {
    /// Closed before the reply keeper lets its consumer go, so that never cancels on a live
    /// connection.
    connection: Mutex<Option<Connection>>,
    cutter: Arc<Cutter>,
    heartbeat: Duration,
    close_timeout: Duration,
    /// Requests go out on these, one channel per lane.
    publishers: Publishers,
    keeper: Keeper,
    /// For passive declarations, which close their channel when the queue is missing; opened
    /// on first use so that a failed check never disturbs publishing.
    inspector: Mutex<Option<Channel>>,
    /// What the broker last said of the request queues.
    presence: Presence,
    /// For [`RpcClient::submit`](crate::RpcClient::submit): a channel in confirm mode.
    submitter: Mutex<Option<Submitter>>,
    /// Result queues declared on this connection.
    result_queues: Mutex<HashSet<String>>,
    /// The callback queues, one per calling thread up to a limit (one for direct reply-to).
    pub lanes: Arc<Lanes>,
    /// Which configured endpoint this connection went to.
    pub endpoint: usize,
    pub pending: Pending,
    /// Mandatory requests the broker could not route, of the first lane's channel (or with
    /// direct reply-to, the keeper's).
    returns: Receiver<Return>,
    /// Why the connection is gone, once it is.
    lost: Mutex<Option<String>>,
    /// The broker's notices that it blocks (or no longer blocks) publishing on this connection.
    pub blocking: Receiver<ConnectionBlockedNotification>,
    /// Why the broker blocks publishing on this connection, while it does.
    blocked: Mutex<Option<String>>,
    /// The largest request body the broker takes, shared with the client: a refusal lowers it.
    limit: Arc<AtomicUsize>,
}

impl Session {
    /// Connects (trying endpoint `first` first) and subscribes to replies, all before
    /// `deadline` (and within the connect timeout).
    pub fn open(
        config: &ClientConfig,
        deadline: Instant,
        first: usize,
        limit: Arc<AtomicUsize>,
    ) -> Result<Arc<Session>> {
        let Link {
            mut connection,
            cutter,
            heartbeat,
            endpoint,
            address,
        } = amqp::open(&config.connection, CLIENT_NAME, Some(deadline), first)?;
        let give_up = deadline.min(deadline::from_now(config.connection.connect_timeout));
        let this: Arc<OnceLock<Weak<Session>>> = Arc::new(OnceLock::new());
        let Bounded { outcome, cut } = cutter.bounded(give_up, || {
            let blocking = connection
                .listen_for_connection_blocked()
                .map_err(|error| Error::broker("listening for connection.blocked", error));
            blocking.map(|blocking| {
                (
                    blocking,
                    subscribe(&mut connection, config.reply_mode, &this),
                )
            })
        });
        // A failed listen is told as it is; only a failed subscription is blamed on the deadline.
        let (blocking, setup) = outcome?;
        let (reply_queue, publisher, keeper, returns) = match setup {
            Ok(parts) => parts,
            Err(_) if cut => {
                return Err(Error::connect(
                    "the broker",
                    "no answer while subscribing to replies",
                    None,
                ))
            }
            Err(error) => return Err(error),
        };
        log::debug!("client ready on {address}, replies to {reply_queue}");
        let session = Arc::new(Session {
            connection: Mutex::new(Some(connection)),
            cutter,
            heartbeat,
            close_timeout: config.connection.close_timeout,
            lanes: Arc::new(Lanes::new(
                ReplyLane {
                    queue: reply_queue,
                    replies: keeper.deliveries().clone(),
                },
                match publisher {
                    Some(_) => MAX_LANES,
                    None => 1,
                },
            )),
            publishers: Publishers::new(publisher),
            keeper,
            inspector: Mutex::new(None),
            presence: Presence::default(),
            submitter: Mutex::new(None),
            result_queues: Mutex::new(HashSet::new()),
            endpoint,
            pending: Pending::default(),
            returns,
            lost: Mutex::new(None),
            blocking,
            blocked: Mutex::new(None),
            limit,
        });
        let _ = this.set(Arc::downgrade(&session));
        Ok(session)
    }

    /// The lane the calling thread's next call is to get its reply on: its own, or the first
    /// while its own is being declared.
    pub fn reply_lane(&self) -> usize {
        let own = self.lanes.of_this_thread(|index| {
            let lanes = Arc::clone(&self.lanes);
            let asked = self
                .keeper
                .consume_exclusive(Box::new(move |declared| match declared {
                    Ok((queue, replies)) => lanes.declared(index, ReplyLane { queue, replies }),
                    Err(error) => log::debug!("a thread shares the first callback queue: {error}"),
                }));
            if let Err(error) = asked {
                log::debug!("a thread shares the first callback queue: {error}");
            }
        });
        self.lanes.ready(own)
    }

    /// Runs `operation`, cutting the connection if it is still running at `deadline`: the
    /// driver's calls wait for the broker however long a silent network cut lasts. A cut
    /// marks the session lost.
    pub fn bounded<T>(
        &self,
        deadline: Instant,
        what: &str,
        operation: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        let Bounded { outcome, cut } = self.cutter.bounded(deadline, operation);
        if cut {
            self.mark_lost(format!(
                "the broker did not answer {what} in time (a network cut or a stalled broker); \
                 the connection was dropped"
            ));
            return Err(self.lost_error(what));
        }
        outcome
    }

    /// Publishes a message to `exchange` on the channel that must carry it: lane `lane`'s
    /// request channel, borrowing the message, or (direct reply-to) the keeper's, which takes a
    /// copy.
    pub fn publish(&self, lane: usize, exchange: &str, publish: Publish<'_>) -> Result<()> {
        let channel = self
            .publishers
            .channel(lane, || self.with_connection(queue::open_publishing));
        match channel {
            Some(channel) => lock(channel)
                .basic_publish(exchange, publish)
                .map_err(|error| {
                    // The channel is gone (the broker closed it, say): so is this session, or
                    // every later call would fail on it too.
                    self.mark_lost(format!("the request channel closed: {error}"));
                    self.connection_error(error)
                }),
            None => self
                .keeper
                .publish(OwnedPublish::from_publish(exchange, publish)),
        }
    }

    /// The returned requests of lane `lane`'s channel.
    pub fn returns_of(&self, lane: usize) -> &Receiver<Return> {
        self.publishers.returns(lane).unwrap_or(&self.returns)
    }

    /// Publishes the cancel of request `correlation_id` under `routing_key`, without waiting
    /// for the broker: a call that gave up returns at once, whatever the network does.
    pub fn cancel(&self, routing_key: &str, correlation_id: &str, deadline: Instant) {
        self.send_cancel(correlation_id, deadline, |properties| {
            let publish = Publish::with_properties(&[], routing_key, properties);
            self.publish(0, CANCEL_EXCHANGE, publish)
        });
    }

    /// [`cancel`](Self::cancel), returning only once the broker has the cancel, for a caller
    /// about to exit: the broker handles a channel's methods in order, so once it confirms a
    /// `basic.qos` sent after the cancel on the same channel, it has read the cancel too.
    pub fn cancel_now(&self, routing_key: &str, correlation_id: &str, deadline: Instant) {
        self.send_cancel(correlation_id, deadline, |properties| {
            let mut inspector = self.inspector()?;
            let channel = inspector.as_ref().expect("opened above");
            let publish = Publish::with_properties(&[], routing_key, properties);
            let outcome = channel
                .basic_publish(CANCEL_EXCHANGE, publish)
                .and_then(|()| channel.qos(0, 0, false));
            outcome.map_err(|error| {
                *inspector = None;
                self.connection_error(error)
            })
        });
    }

    /// Sends the cancel of `correlation_id` by `send`, within `deadline`, unless the connection
    /// is gone or blocked (a publish the broker does not read could only wait, and the request
    /// is likely still in this client's buffers); a cancel is a courtesy, so failing to send
    /// one is only logged.
    fn send_cancel(
        &self,
        correlation_id: &str,
        deadline: Instant,
        send: impl FnOnce(AmqpProperties) -> Result<()>,
    ) {
        self.note_blocking();
        if self.lost_reason().is_some() || self.blocked().is_some() {
            return;
        }
        let properties = protocol::cancel_properties(correlation_id);
        if let Err(error) = self.bounded(deadline, "a cancel", || send(properties)) {
            log::debug!("the cancel of {correlation_id} was not sent: {error}");
        }
    }

    /// Runs `work` with the connection, for the rare operations that open channels.
    fn with_connection<T>(&self, work: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
        match lock(&self.connection).as_mut() {
            Some(connection) => work(connection),
            None => Err(Error::ConnectionLost("the client is closed".to_owned())),
        }
    }

    pub fn ensure_results_queue(&self, queue: &str) -> Result<()> {
        let mut declared = lock(&self.result_queues);
        if declared.contains(queue) {
            return Ok(());
        }
        self.with_connection(|connection| {
            queue::declare_durable(connection, queue, QueueType::Classic, None)
        })?;
        declared.insert(queue.to_owned());
        Ok(())
    }

    /// Publishes on the confirm-mode channel and waits for the broker's verdict until
    /// `deadline`; no verdict by then is a [`Error::Timeout`] of `timeout`.
    pub fn publish_confirmed(
        &self,
        publish: Publish,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<()> {
        let mut submitter = lock(&self.submitter);
        if submitter.is_none() {
            *submitter = Some(self.with_connection(Submitter::open)?);
        }
        let outcome = submitter
            .as_mut()
            .expect("opened above")
            .publish(publish, deadline, timeout);
        if outcome.as_ref().is_err_and(Error::is_connection) {
            *submitter = None;
        }
        outcome.map_err(|error| match error {
            Error::ConnectionLost(reason) => self.lost_error(&reason),
            other => other,
        })
    }

    /// Fails with [`Error::NoServer`] if `queue` is missing or has no consumer (see
    /// [`Presence::ensure_consumer`]).
    pub fn ensure_consumer(&self, queue: &str, deadline: Instant) -> Result<()> {
        self.presence.ensure_consumer(queue, deadline, || {
            self.bounded(deadline, "the no-server check", || {
                self.consumer_count(queue)
            })
        })
    }

    /// Waits until `queue` exists, and if it had to wait, until it has a consumer (see
    /// [`Presence::await_queue`]).
    pub fn await_queue(&self, queue: &str, deadline: Instant) -> Result<()> {
        self.presence.await_queue(queue, deadline, || {
            self.bounded(deadline, "the check for the request queue", || {
                self.consumer_count(queue)
            })
        })
    }

    /// The inspector channel, opened first if need be.
    fn inspector(&self) -> Result<std::sync::MutexGuard<'_, Option<Channel>>> {
        let mut inspector = lock(&self.inspector);
        if inspector.is_none() {
            let channel = self.with_connection(|connection| {
                connection
                    .open_channel(None)
                    .map_err(|error| self.connection_error(error))
            })?;
            *inspector = Some(channel);
        }
        Ok(inspector)
    }

    pub fn consumer_count(&self, queue: &str) -> Result<u32> {
        let mut inspector = self.inspector()?;
        let channel = inspector.as_ref().expect("opened above");
        match channel.queue_declare_passive(queue) {
            Ok(declared) => Ok(declared.declared_consumer_count().unwrap_or(0)),
            Err(DriverError::ServerClosedChannel { code, message, .. }) => {
                // The broker closed the channel; the next check opens a fresh one.
                *inspector = None;
                Err(if code == NOT_FOUND {
                    Error::NoServer {
                        queue: queue.to_owned(),
                        reason: format!("no queue named {queue:?} exists"),
                    }
                } else {
                    Error::refused(format!("checking queue {queue:?}"), code, &message)
                })
            }
            Err(error) => {
                *inspector = None;
                Err(self.connection_error(error))
            }
        }
    }

    pub fn lost_reason(&self) -> Option<String> {
        lock(&self.lost).clone()
    }

    /// The driver reports every failure after the first as a bare `EventLoopDropped`; prefer the
    /// reason recorded when the connection went down.
    pub fn connection_error(&self, error: DriverError) -> Error {
        self.lost_error(&error.to_string())
    }

    pub fn lost_error(&self, fallback: &str) -> Error {
        Error::ConnectionLost(self.lost_reason().unwrap_or_else(|| fallback.to_owned()))
    }

    /// Takes in the broker's blocking notices that have arrived.
    pub fn note_blocking(&self) {
        while let Ok(note) = self.blocking.try_recv() {
            self.apply_blocking(note);
        }
    }

    pub fn apply_blocking(&self, note: ConnectionBlockedNotification) {
        let mut blocked = lock(&self.blocked);
        match note {
            ConnectionBlockedNotification::Blocked(reason) => {
                log::debug!("the broker blocks publishing: {reason}");
                *blocked = Some(reason);
            }
            ConnectionBlockedNotification::Unblocked => {
                log::debug!("the broker no longer blocks publishing");
                *blocked = None;
            }
        }
    }

    /// Why the broker blocks publishing on this connection, if it does.
    pub fn blocked(&self) -> Option<String> {
        lock(&self.blocked).clone()
    }

    /// Waits until the broker no longer blocks publishing, or until `deadline`; the reason it
    /// still blocks, if it does then.
    pub fn await_unblocked(&self, deadline: Instant) -> Option<String> {
        loop {
            self.note_blocking();
            let reason = self.blocked()?;
            // Short waits: another caller may take the notice that ends the block.
            let wait = deadline
                .saturating_duration_since(Instant::now())
                .min(IDLE_DRAIN_INTERVAL);
            if wait.is_zero() {
                return Some(reason);
            }
            if let Ok(note) = self.blocking.recv_timeout(wait) {
                self.apply_blocking(note);
            }
        }
    }

    /// The largest request body the broker takes, as far as this client knows.
    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    /// The request channel is gone: the broker closed it (a request over its size limit, say),
    /// or the whole connection went. The channel itself tells which, and why: a channel the
    /// broker closed answers any call at once with the broker's reason, while one whose
    /// connection went may not answer at all, so it is asked only briefly.
    pub fn publisher_gone(&self, lane: usize) {
        // A connection the broker closed says so to the reply consumers too.
        self.dispatch_waiting();
        if self.lost_reason().is_some() {
            return;
        }
        let closed = self.publishers.opened(lane).and_then(|channel| {
            let asked = self
                .cutter
                .bounded(deadline::from_now(CHANNEL_REASON_WAIT), || {
                    lock(channel).qos(0, 0, false)
                })
                .outcome;
            match asked {
                Err(DriverError::ServerClosedChannel { code, message, .. }) => Some(format!(
                    "the broker closed the request channel: {code} {message}"
                )),
                _ => None,
            }
        });
        match closed {
            Some(reason) => self.mark_lost(reason),
            None => self.connection_gone(),
        }
    }

    /// Routes whatever has arrived, without blocking, except on the lanes a caller reads
    /// alone; notices a lost connection.
    pub fn dispatch_ready(&self) {
        self.note_blocking();
        for lane in self.lanes.unwatched() {
            if !self.dispatch_replies(lane) {
                return;
            }
        }
        let others = self.publishers.others();
        for (lane, returns) in std::iter::once((0, &self.returns)).chain(others) {
            if !self.dispatch_returns(lane, returns) {
                return;
            }
        }
    }

    /// [`dispatch_ready`](Self::dispatch_ready) for the callers of lane `index` alone, as one
    /// of them is about to publish: two looks where every lane in use made sixteen. The other
    /// lanes have callers of their own who read them, and the keeper's tick reads them all.
    pub fn dispatch_lane(&self, index: usize) {
        self.note_blocking();
        if let Some(lane) = self.lanes.unwatched_lane(index) {
            if !self.dispatch_replies(lane) {
                return;
            }
        }
        self.dispatch_returns(index, self.returns_of(index));
    }

    /// Dispatches the replies already on `lane`; false if the connection is gone.
    fn dispatch_replies(&self, lane: &ReplyLane) -> bool {
        loop {
            match lane.replies.try_recv() {
                Ok(message) => self.dispatch(message),
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Disconnected) => {
                    self.connection_gone();
                    return false;
                }
            }
        }
    }

    /// Hands the requests already returned to lane `lane`'s request channel to their callers;
    /// false if that channel is gone.
    fn dispatch_returns(&self, lane: usize, returns: &Receiver<Return>) -> bool {
        loop {
            match returns.try_recv() {
                Ok(returned) => router::returned(&self.pending, &returned),
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Disconnected) => {
                    self.publisher_gone(lane);
                    return false;
                }
            }
        }
    }

    /// Dispatches the replies (and consumers' fates) already there, on every lane.
    fn dispatch_waiting(&self) {
        for lane in self.lanes.all() {
            while let Ok(message) = lane.replies.try_recv() {
                self.dispatch(message);
            }
        }
    }

    pub fn dispatch(&self, message: ConsumerMessage) {
        match router::delivery(message) {
            Ok(delivery) => router::reply(&self.pending, &delivery.properties, delivery.body),
            Err(reason) => self.mark_lost(reason),
        }
    }

    /// The driver dropped our receivers: its I/O thread has ended, maybe without a last
    /// message. Its own account of why is the connection's close result.
    pub fn connection_gone(&self) {
        self.dispatch_waiting();
        let mut connection = lock(&self.connection);
        let reason = match connection.take() {
            Some(dead) => match self.close_bounded(dead) {
                Err(error) => amqp::loss_reason(&error, self.heartbeat),
                Ok(()) => "the connection to the broker closed".to_owned(),
            },
            None => "the connection to the broker closed".to_owned(),
        };
        self.mark_lost(reason);
    }

    /// Records the first reason the connection went down and fails every waiting call with it.
    pub fn mark_lost(&self, reason: String) {
        if let Some(limit) = protocol::refused_size_limit(&reason) {
            self.limit.fetch_min(limit, Ordering::Relaxed);
        }
        let reason = {
            let mut lost = lock(&self.lost);
            if lost.is_none() {
                log::debug!("client connection lost: {reason}");
            }
            lost.get_or_insert(reason).clone()
        };
        self.pending.fail_all(&reason);
    }

    /// Closes the connection within the close timeout; at once if the broker blocks it, since
    /// a blocked connection is not read until the block ends.
    pub fn close(&self) -> Result<()> {
        let taken = lock(&self.connection).take();
        self.note_blocking();
        let closed = match (taken, self.blocked()) {
            (Some(connection), Some(reason)) => {
                log::debug!("dropping the connection the broker blocks ({reason})");
                self.cutter.cut();
                drop(connection.close());
                Ok(())
            }
            (Some(connection), None) => self.close_bounded(connection),
            (None, _) => Ok(()),
        };
        self.mark_lost("the client closed the connection".to_owned());
        closed.map_err(|error| Error::broker("closing the connection", error))
    }

    fn close_bounded(&self, connection: Connection) -> Result<(), DriverError> {
        let closed = self.cutter.close_within(self.close_timeout, connection);
        if closed.cut {
            log::warn!(
                "the broker did not confirm the close within {:?}; the connection was dropped",
                self.close_timeout
            );
        }
        closed.outcome
    }
}

type Subscription = (String, Option<Channel>, Keeper, Receiver<Return>);

/// Opens the reply channel (kept by its own thread) and, with a callback queue, the channel
/// requests go out on.
fn subscribe(
    connection: &mut Connection,
    reply_mode: ReplyMode,
    this: &Arc<OnceLock<Weak<Session>>>,
) -> Result<Subscription> {
    let reply_channel = queue::open_channel(connection)?;
    let (reply_queue, publisher) = match reply_mode {
        ReplyMode::CallbackQueue => (
            queue::declare_callback(&reply_channel)?,
            Some(queue::open_channel(connection)?),
        ),
        ReplyMode::DirectReplyTo => (DIRECT_REPLY_TO.to_owned(), None),
    };
    let returns = queue::listen_for_returns(publisher.as_ref().unwrap_or(&reply_channel))?;
    let ticking = Arc::clone(this);
    let tick: Tick = Box::new(move || match ticking.get().map(Weak::upgrade) {
        Some(Some(session)) => {
            session.dispatch_ready();
            true
        }
        Some(None) => false,
        None => true,
    });
    let failing = Arc::clone(this);
    let on_publish_error = Box::new(move |reason: String| {
        if let Some(session) = failing.get().and_then(Weak::upgrade) {
            session.mark_lost(reason);
        }
    });
    let keeper = Keeper::start(
        reply_channel,
        reply_queue.clone(),
        ConsumerOptions {
            no_ack: true,
            ..ConsumerOptions::default()
        },
        IDLE_DRAIN_INTERVAL,
        tick,
        on_publish_error,
    )?;
    Ok((reply_queue, publisher, keeper, returns))
}
