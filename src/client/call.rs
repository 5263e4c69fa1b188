//! One call and its options: [`Call`], made by [`RpcClient::request`].

use super::{OnProgress, Outgoing, PendingReply, RpcClient};
use crate::context::{self, TraceContext};
use crate::driver::AmqpValue;
use crate::error::{Error, Result, Stage};
use crate::message::{HeaderValue, Headers, Progress, Response};
use crate::protocol::{CONTENT_TYPE, PROGRESS_HEADER, TRACEPARENT_HEADER, TRACESTATE_HEADER};
use crate::retry::RetryPolicy;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A call being prepared: its target and body, and the options a call may carry (timeout or
/// deadline, exchange, priority, headers, trace context, retries). Made by
/// [`RpcClient::request`]; nothing is sent until [`call`](Self::call) or [`send`](Self::send).
///
/// ```no_run
/// use fib_rpc::RpcClient;
/// use std::time::Duration;
///
/// # fn main() -> fib_rpc::Result<()> {
/// let client = RpcClient::connect(fib_rpc::DEFAULT_URL)?;
/// let reply = client
///     .request("rpc_queue", b"30")
///     .timeout(Duration::from_secs(2))
///     .priority(5)
///     .header("tenant", "acme")
///     .call()?;
/// assert_eq!(reply.body(), b"832040");
/// # Ok(())
/// # }
/// ```
///
/// Options left unset send nothing new: such a request is the tutorial's, plus fib-rpc's
/// `expiration` and deadline header, as every call's.
///
/// A call made while its thread serves a request (inside a handler) is bounded by that
/// request's deadline and carries a child of its trace context, unless it is
/// [`detached`](Self::detached).
#[must_use = "a call does nothing until call() or send()"]
pub struct Call<'a> {
    client: &'a RpcClient,
    target: &'a str,
    body: &'a [u8],
    exchange: String,
    content_type: String,
    timeout: Option<Duration>,
    deadline: Option<Instant>,
    priority: Option<u8>,
    headers: Headers,
    trace: Option<TraceContext>,
    detached: bool,
    retry: Option<RetryPolicy>,
    on_progress: Option<OnProgress>,
    idle_timeout: Option<Duration>,
}

impl std::fmt::Debug for Call<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Call")
            .field("target", &self.target)
            .field("exchange", &self.exchange)
            .field("timeout", &self.timeout)
            .field("priority", &self.priority)
            .field("trace", &self.trace)
            .field("detached", &self.detached)
            .field("progress", &self.on_progress.is_some())
            .field("idle_timeout", &self.idle_timeout)
            .finish_non_exhaustive()
    }
}

impl<'a> Call<'a> {
    pub(super) fn new(client: &'a RpcClient, target: &'a str, body: &'a [u8]) -> Call<'a> {
        Call {
            client,
            target,
            body,
            exchange: String::new(),
            content_type: CONTENT_TYPE.to_owned(),
            timeout: None,
            deadline: None,
            priority: None,
            headers: Headers::default(),
            trace: None,
            detached: false,
            retry: None,
            on_progress: None,
            idle_timeout: None,
        }
    }

    /// How long the call may take, sending and retries included; default the client's
    /// [`call_timeout`](crate::ClientConfig::call_timeout).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self.deadline = None;
        self
    }

    /// When the call gives up, on this host's monotonic clock: an absolute deadline instead of
    /// a timeout.
    pub fn deadline(mut self, deadline: Instant) -> Self {
        self.deadline = Some(deadline);
        self.timeout = None;
        self
    }

    /// Publishes to this exchange, with the call's target as routing key, instead of to the
    /// default exchange and the queue of that name (Spring AMQP's
    /// `sendAndReceive(exchange, routingKey, …)`).
    ///
    /// The request is still `mandatory`: if the exchange routes it to no queue it comes back at
    /// once as [`Error::NoServer`]. Which queue it reaches is the exchange's business, so the
    /// client's check for a consuming server
    /// ([`require_consumer`](crate::ClientConfig::require_consumer)) is skipped: a queue that
    /// no server consumes leaves the call to its timeout.
    pub fn exchange(mut self, exchange: impl Into<String>) -> Self {
        self.exchange = exchange.into();
        self
    }

    /// The request's AMQP `priority` (0 lowest). A classic queue declared with
    /// `x-max-priority` ([`ServerConfig::max_priority`](crate::ServerConfig::max_priority))
    /// serves higher priorities first; a quorum queue knows two levels only (0–4 normal, 5 and
    /// above high); other queues ignore it.
    pub fn priority(mut self, priority: u8) -> Self {
        self.priority = Some(priority);
        self
    }

    /// Adds an application header, which handlers read with
    /// [`Request::header`](crate::Request::header). Names fib-rpc or RabbitMQ reserve (`x-…`,
    /// `traceparent`, `tracestate`) make the call fail with [`Error::Config`] before anything
    /// is sent.
    pub fn header<'v>(mut self, name: &str, value: impl Into<HeaderValue<'v>>) -> Self {
        self.headers.insert(name, value.into());
        self
    }

    /// The request's `content_type`; default `text/plain`.
    pub fn content_type(mut self, content_type: impl Into<String>) -> Self {
        self.content_type = content_type.into();
        self
    }

    /// Sends this W3C trace context (`traceparent`, `tracestate`) as the caller's: the server
    /// logs its trace id, and its handler reads it ([`Request::trace`](crate::Request::trace)).
    pub fn trace(mut self, trace: TraceContext) -> Self {
        self.trace = Some(trace);
        self
    }

    /// Ignores the request this thread is serving: the call is bounded by its own timeout only,
    /// and carries no trace context but one set with [`trace`](Self::trace).
    pub fn detached(mut self) -> Self {
        self.detached = true;
        self
    }

    /// Asks the server for progress messages while it works, and hands each to `on_progress`,
    /// in order, on the thread that waits for the reply. A server that does not report
    /// progress (or is not fib-rpc) just answers.
    pub fn on_progress(mut self, on_progress: impl FnMut(&Progress) + Send + 'static) -> Self {
        self.on_progress = Some(Arc::new(Mutex::new(on_progress)));
        self
    }

    /// With [`on_progress`](Self::on_progress): the call fails with [`Error::Timeout`] (stage
    /// progress) when neither progress nor the reply has come for `idle`, still within its
    /// whole timeout. A long job that reports now and then can then have a generous timeout
    /// and still fail fast when it goes silent.
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.idle_timeout = Some(idle);
        self
    }

    /// Makes the call again as `policy` says when an attempt fails, instead of the client's
    /// [`retry`](crate::ClientConfig::retry) policy.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }

    /// Sends the request and blocks until its reply arrives or the call's time is up, making it
    /// again as the retry policy says; returns the reply with its content type and headers.
    ///
    /// Fails as [`RpcClient::call`] does; with retries, with the last attempt's error.
    pub fn call(self) -> Result<Response> {
        let prepared = self.prepare()?;
        prepared.traced(|| prepared.attempts())
    }

    /// Sends the request without waiting; the reply is collected with [`PendingReply::wait`]
    /// (or [`wait_response`](PendingReply::wait_response)). One attempt: retries belong to
    /// [`call`](Self::call).
    pub fn send(self) -> Result<PendingReply> {
        let prepared = self.prepare()?;
        prepared.traced(|| prepared.send_until(prepared.deadline, prepared.timeout))
    }

    /// The options resolved: the deadline (the thread's request's, if sooner), the headers to
    /// send, the retry policy.
    fn prepare(self) -> Result<Prepared<'a>> {
        let now = Instant::now();
        let client = self.client;
        let (own_deadline, own_timeout) = match self.deadline {
            Some(deadline) => (deadline, None),
            None => {
                let timeout = self.timeout.unwrap_or(client.config.call_timeout);
                (crate::deadline::after(now, timeout), Some(timeout))
            }
        };
        let mut deadline = own_deadline;
        let mut trace = self.trace;
        if !self.detached {
            if let Some(serving) = context::serving() {
                if let Some(inherited) = serving.deadline {
                    deadline = deadline.min(inherited);
                }
                if trace.is_none() {
                    trace = serving.trace.as_ref().map(TraceContext::child);
                }
            }
        }
        // The timeout a caller set is the one its errors and its request's expiration state.
        let timeout = match own_timeout {
            Some(timeout) if deadline == own_deadline => timeout,
            _ => deadline.saturating_duration_since(now),
        };
        if timeout.is_zero() {
            return Err(Error::Timeout {
                queue: self.target.to_owned(),
                timeout,
                stage: Stage::Connect,
            });
        }
        let mut headers = self.headers.checked()?;
        if self.on_progress.is_some() {
            headers.insert(PROGRESS_HEADER.to_owned(), AmqpValue::Boolean(true));
        }
        if let Some(trace) = &trace {
            headers.insert(
                TRACEPARENT_HEADER.to_owned(),
                AmqpValue::LongString(trace.traceparent()),
            );
            if let Some(state) = trace.tracestate() {
                headers.insert(
                    TRACESTATE_HEADER.to_owned(),
                    AmqpValue::LongString(state.to_owned()),
                );
            }
        }
        let correlation_id = client.ids.next();
        Ok(Prepared {
            #[cfg(feature = "tracing")]
            span: crate::spans::call(&self.exchange, self.target, &correlation_id, trace.as_ref()),
            client,
            outgoing: Outgoing {
                exchange: self.exchange,
                routing_key: self.target,
                body: self.body,
                content_type: self.content_type,
                priority: self.priority,
                headers,
                on_progress: self.on_progress,
                idle_timeout: self.idle_timeout,
            },
            correlation_id,
            deadline,
            timeout,
            retry: self.retry.or_else(|| client.config.retry.clone()),
        })
    }
}

/// A call with its options resolved, ready to be sent, once or again.
struct Prepared<'a> {
    client: &'a RpcClient,
    outgoing: Outgoing<'a>,
    /// The same for every attempt: a late reply to one and the reply to the next are one
    /// answer.
    correlation_id: String,
    deadline: Instant,
    /// The whole call's timeout, as its caller stated it.
    timeout: Duration,
    retry: Option<RetryPolicy>,
    #[cfg(feature = "tracing")]
    span: tracing::Span,
}

impl Prepared<'_> {
    /// Runs `work` in the call's span when the feature `tracing` is on.
    fn traced<T>(&self, work: impl FnOnce() -> Result<T>) -> Result<T> {
        #[cfg(feature = "tracing")]
        let work = || crate::spans::within(&self.span, work);
        work()
    }

    /// Makes the call, and again as the retry policy says.
    fn attempts(&self) -> Result<Response> {
        let policy = self.retry.as_ref();
        // A retry reuses the correlation id: an attempt that may be retried after a timeout
        // must not be cancelled, or the servers would skip its retry.
        let retried_on_timeout =
            policy.is_some_and(|policy| policy.get_attempt_timeout().is_some());
        let mut made = 0;
        loop {
            made += 1;
            let (deadline, timeout) = self.attempt(made, Instant::now());
            let error = match self
                .send_until(deadline, timeout)
                .and_then(|pending| pending.wait_for(!retried_on_timeout))
            {
                Ok(response) => return Ok(response),
                Err(error) => error,
            };
            let now = Instant::now();
            let next =
                policy.and_then(|policy| policy.next_attempt(&error, made, now, self.deadline));
            let Some(at) = next else {
                if retried_on_timeout && error.is_timeout() {
                    self.cancel();
                }
                return Err(error);
            };
            log::debug!(
                "call {} to {:?}: attempt {made} failed ({error}); trying again in {:?}",
                self.correlation_id,
                self.outgoing.routing_key,
                at.saturating_duration_since(now)
            );
            std::thread::sleep(at.saturating_duration_since(now));
        }
    }

    fn attempt(&self, made: u32, now: Instant) -> (Instant, Duration) {
        crate::retry::attempt_budget(self.retry.as_ref(), made, now, self.deadline, self.timeout)
    }

    /// Cancels the request, as its last attempt's wait did not.
    fn cancel(&self) {
        if self.outgoing.exchange.is_empty() {
            self.client
                .cancel(self.outgoing.routing_key, &self.correlation_id);
        }
    }

    fn send_until(&self, deadline: Instant, timeout: Duration) -> Result<PendingReply> {
        self.client.send_request(
            &self.outgoing,
            self.correlation_id.clone(),
            deadline,
            timeout,
        )
    }
}
