//! A call on its way: [`PendingReply`], waited on for its reply (and its progress), or
//! cancelled.

use super::pending::Outcome;
use super::router;
use super::session::Session;
use crate::error::{Error, Result, Stage};
use crate::message::{Progress, Response};
use crate::protocol;
use crate::util::lock;
use crossbeam_channel::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a cancel may take to hand to the broker before the connection is given up on.
const CANCEL_WAIT: Duration = Duration::from_millis(500);

/// How often a caller waiting on its lane alone looks for what may come another way.
const LOOK_ROUND: Duration = Duration::from_millis(20);

/// What a caller does with each progress message of its call; shared by the attempts of a
/// retried call.
pub(crate) type OnProgress = Arc<Mutex<dyn FnMut(&Progress) + Send>>;

/// A request sent by [`RpcClient::send`](crate::RpcClient::send) (or
/// [`Call::send`](crate::Call::send)) whose reply has not been collected yet.
///
/// A call given up on lets the servers know, so that the one computing it can stop and one
/// that has not taken it yet skips it: [`cancel`](Self::cancel), its timeout, and dropping it
/// unanswered all send a cancel (see the README's "Long calls"; a server of another
/// language never sees it).
pub struct PendingReply {
    pub(super) session: Arc<Session>,
    pub(super) correlation_id: String,
    pub(super) reply: Receiver<Outcome>,
    /// The callback queue its reply comes to (see `lanes`).
    pub(super) lane: usize,
    pub(super) queue: String,
    pub(super) timeout: Duration,
    pub(super) deadline: Instant,
    /// The request body's size, to tell whether the broker refused this request for its size.
    pub(super) size: usize,
    /// Whether the request queue, to whose servers cancels go, is known: not for a request
    /// sent through a named exchange.
    pub(super) cancellable: bool,
    pub(super) progress: Option<(Receiver<Progress>, OnProgress)>,
    /// With progress: the call fails when neither progress nor the reply came for this long.
    pub(super) idle_timeout: Option<Duration>,
    /// Answered, failed, or given up on with a cancel sent: nothing more to tell the servers.
    pub(super) settled: bool,
    /// The outcome came through the pending map, which forgot the call as it handed it over.
    pub(super) resolved: bool,
}

impl std::fmt::Debug for PendingReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingReply")
            .field("correlation_id", &self.correlation_id)
            .field("queue", &self.queue)
            .field("timeout", &self.timeout)
            .field("progress", &self.progress.is_some())
            .field("idle_timeout", &self.idle_timeout)
            .finish_non_exhaustive()
    }
}

impl PendingReply {
    /// The request's `correlation_id`.
    pub fn correlation_id(&self) -> &str {
        &self.correlation_id
    }

    /// Blocks until the reply arrives or the call's timeout (counted from the send) passes;
    /// a call that timed out is cancelled.
    ///
    /// While it waits, the caller itself reads the connection's replies and hands each to the
    /// caller it belongs to: a reply reaches a lone caller with no thread in between. Progress
    /// messages, if the call asked for them, go to its callback on this thread, in order.
    pub fn wait(self) -> Result<Vec<u8>> {
        self.wait_response().map(Response::into_body)
    }

    /// [`wait`](Self::wait), for the reply with its content type and headers.
    pub fn wait_response(self) -> Result<Response> {
        self.wait_for(true)
    }

    /// Gives up on the call: the servers are told, so that the one computing it can stop
    /// ([`Request::is_cancelled`](crate::Request::is_cancelled)) and one that has not taken
    /// it skips it. Its reply, if one still comes, is discarded.
    pub fn cancel(mut self) {
        self.send_cancel();
    }

    /// Waits; a timeout cancels the request only if `cancel_on_timeout` (a retry that reuses
    /// its `correlation_id` must not find it cancelled).
    pub(super) fn wait_for(mut self, cancel_on_timeout: bool) -> Result<Response> {
        let outcome = self.receive();
        let gave_up = outcome
            .as_ref()
            .is_err_and(|error| error.is_timeout() || error.is_blocked());
        if gave_up && cancel_on_timeout {
            self.send_cancel();
        }
        self.settled = true;
        outcome.map_err(|error| self.explained(error))
    }

    fn receive(&mut self) -> Outcome {
        let alone = self.progress.is_none()
            && self.idle_timeout.is_none()
            && self.session.lanes.is_own(self.lane);
        match alone {
            true => self.receive_alone(),
            false => self.receive_watching_all(),
        }
    }

    /// Waits on this thread's own lane alone, the common case: waiting on several channels at
    /// once costs a lock on each as the caller wakes, and the driver's I/O thread, which has
    /// just woken it, still holds the lane's (sequentially 5.1 futex calls per call against a
    /// raw client's 2.1; 2.2 alone). What may come another way is looked for at least every
    /// [`LOOK_ROUND`]: a returned request, a closed request channel, or a reply that another
    /// thread read as it began to share this lane.
    fn receive_alone(&mut self) -> Outcome {
        let session = Arc::clone(&self.session);
        let _watch = session.lanes.watch(self.lane);
        let replies = &session.lanes.get(self.lane).replies;
        let mut looked = Instant::now();
        loop {
            match self.reply.try_recv() {
                Ok(outcome) => {
                    self.resolved = true;
                    return outcome;
                }
                // A reply that came after the deadline was dropped, and the call with it.
                Err(TryRecvError::Disconnected) => return Err(self.timed_out(self.deadline)),
                Err(TryRecvError::Empty) => {}
            }
            let remaining = self.deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                session.note_blocking();
                return Err(self.timed_out(self.deadline));
            }
            match replies.recv_timeout(remaining.min(LOOK_ROUND)) {
                Ok(message) => session.dispatch(message),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => session.connection_gone(),
            }
            // Also while replies keep coming: they may all be other calls'.
            if looked.elapsed() >= LOOK_ROUND {
                session.dispatch_ready();
                looked = Instant::now();
            }
        }
    }

    fn receive_watching_all(&mut self) -> Outcome {
        let session = Arc::clone(&self.session);
        let never = crossbeam_channel::never();
        let mut last_heard = Instant::now();
        loop {
            let give_up = match self.idle_timeout {
                Some(idle) => self.deadline.min(crate::deadline::after(last_heard, idle)),
                None => self.deadline,
            };
            let remaining = give_up.saturating_duration_since(Instant::now());
            let progress = self
                .progress
                .as_ref()
                .map_or(&never, |(receiver, _)| receiver);
            crossbeam_channel::select! {
                // A reply that came after the deadline was dropped, and the call with it.
                recv(self.reply) -> outcome => {
                    self.report_progress();
                    self.resolved = outcome.is_ok();
                    return outcome.unwrap_or_else(|_| Err(self.timed_out(give_up)));
                }
                recv(progress) -> report => {
                    if let Ok(report) = report {
                        last_heard = Instant::now();
                        if let Some((_, on_progress)) = &self.progress {
                            (lock(on_progress))(&report);
                        }
                    }
                }
                recv(session.lanes.get(self.lane).replies) -> message => match message {
                    Ok(message) => session.dispatch(message),
                    Err(_) => session.connection_gone(),
                },
                recv(session.returns_of(self.lane)) -> returned => match returned {
                    Ok(returned) => router::returned(&session.pending, &returned),
                    Err(_) => session.publisher_gone(self.lane),
                },
                recv(session.blocking) -> note => match note {
                    Ok(note) => session.apply_blocking(note),
                    Err(_) => session.connection_gone(),
                },
                default(remaining) => {
                    // A reply may have been routed to us in the last instant.
                    self.report_progress();
                    let outcome = self.reply.try_recv();
                    self.resolved = outcome.is_ok();
                    return outcome.unwrap_or_else(|_| Err(self.timed_out(give_up)));
                }
            }
        }
    }

    /// Hands the callback the progress that came with the reply, so none is lost.
    fn report_progress(&mut self) {
        if let Some((receiver, on_progress)) = &self.progress {
            for report in receiver.try_iter() {
                (lock(on_progress))(&report);
            }
        }
    }

    fn timed_out(&self, gave_up: Instant) -> Error {
        let idle = gave_up < self.deadline;
        match self.session.blocked() {
            Some(reason) => Error::Blocked {
                queue: self.queue.clone(),
                timeout: self.timeout,
                reason,
            },
            None => Error::Timeout {
                queue: self.queue.clone(),
                timeout: match (idle, self.idle_timeout) {
                    (true, Some(idle_timeout)) => idle_timeout,
                    _ => self.timeout,
                },
                stage: match idle {
                    true => Stage::Progress,
                    false => Stage::Reply,
                },
            },
        }
    }

    /// A lost request channel whose broker named a size limit this request exceeds: the
    /// request was too large.
    fn explained(&self, error: Error) -> Error {
        let Error::ConnectionLost(reason) = &error else {
            return error;
        };
        match protocol::refused_size_limit(reason) {
            Some(limit) if self.size > limit => Error::TooLarge {
                what: "the request".to_owned(),
                size: self.size,
                limit,
            },
            _ => error,
        }
    }

    /// Tells the servers of the request queue that nobody waits for this request any more.
    fn send_cancel(&mut self) {
        self.settled = true;
        if self.cancellable {
            log::debug!("cancelling {} to {}", self.correlation_id, self.queue);
            self.session.cancel(
                &protocol::cancel_routing_key(&self.queue),
                &self.correlation_id,
                crate::deadline::from_now(CANCEL_WAIT),
            );
        }
    }
}

impl Drop for PendingReply {
    fn drop(&mut self) {
        if !self.resolved {
            self.session.pending.forget(&self.correlation_id);
        }
        if !self.settled {
            self.send_cancel();
        }
    }
}
