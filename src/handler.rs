//! What a server does with a request: the [`Handler`] trait and the [`Request`] it sees.

use crate::context::TraceContext;
use crate::driver::AmqpProperties;
use crate::error::HandlerError;
use crate::message::{read_value, HeaderValue, Response};
use crate::protocol::{self, CONTENT_TYPE, TRACEPARENT_HEADER, TRACESTATE_HEADER};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

/// A request as a handler sees it: the body, and what the caller said about it; and, while the
/// handler runs, whether the caller has given up ([`is_cancelled`](Self::is_cancelled)) and a
/// way to tell it how far the work is ([`progress`](Self::progress)).
#[derive(Debug)]
pub struct Request<'a> {
    body: &'a [u8],
    properties: &'a AmqpProperties,
    redelivered: bool,
    deadline: Option<SystemTime>,
    live: Live<'a>,
}

/// Whether the caller of the request a handler computes has given up; set by the server's
/// control consumer, read by the handler.
#[derive(Debug, Clone, Default)]
pub(crate) struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Reports a request's progress to its caller: a fraction (checked) and a message.
pub(crate) type ProgressSink<'a> = &'a dyn Fn(Option<f64>, &str);

/// What the server lets a handler do while it runs.
#[derive(Default)]
pub(crate) struct Live<'a> {
    pub cancel: Option<CancelToken>,
    /// Set only if the caller asked for progress.
    pub progress: Option<ProgressSink<'a>>,
}

impl std::fmt::Debug for Live<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("cancel", &self.cancel)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

impl<'a> Request<'a> {
    /// A request whose deadline is the one its header states (the server judges it first).
    #[cfg(test)]
    pub(crate) fn new(body: &'a [u8], properties: &'a AmqpProperties, redelivered: bool) -> Self {
        Request {
            body,
            properties,
            redelivered,
            deadline: protocol::header_deadline(properties),
            live: Live::default(),
        }
    }

    /// A request whose caller's deadline, on this host's clock, is `deadline`.
    pub(crate) fn due(
        body: &'a [u8],
        properties: &'a AmqpProperties,
        redelivered: bool,
        deadline: Option<SystemTime>,
        live: Live<'a>,
    ) -> Self {
        Request {
            body,
            properties,
            redelivered,
            deadline,
            live,
        }
    }

    /// True once the caller has given up (its timeout passed, it cancelled, or it dropped the
    /// call): a long handler checks now and then and stops early; its answer would reach
    /// nobody, and none is sent.
    pub fn is_cancelled(&self) -> bool {
        self.live
            .cancel
            .as_ref()
            .is_some_and(CancelToken::is_cancelled)
    }

    /// True if the caller asked for progress messages ([`progress`](Self::progress) sends
    /// nothing otherwise).
    pub fn wants_progress(&self) -> bool {
        self.live.progress.is_some()
    }

    /// Tells the caller how far the work is: `fraction` from 0 to 1 (left out if outside or
    /// `None`) and a short message. Sent only to a caller that asked for progress
    /// ([`Call::on_progress`](crate::Call::on_progress)), never to a tutorial client, which
    /// would take it for the answer. The first ten go at once, then at most 20 a second
    /// (reports in between are dropped).
    pub fn progress(&self, fraction: Option<f64>, message: &str) {
        if let Some(report) = self.live.progress {
            report(fraction.filter(|f| (0.0..=1.0).contains(f)), message);
        }
    }

    /// The request body.
    pub fn body(&self) -> &'a [u8] {
        self.body
    }

    /// The caller's `correlation_id`, if it sent one.
    pub fn correlation_id(&self) -> Option<&'a str> {
        self.properties.correlation_id().as_deref()
    }

    /// The request's `content_type`, if it has one.
    pub fn content_type(&self) -> Option<&'a str> {
        self.properties.content_type().as_deref()
    }

    /// When the caller stops waiting, on this host's clock, if it said so (fib-rpc clients
    /// do). Where this host's clock and the caller's disagree, it is taken from the request's
    /// relative `expiration` instead.
    pub fn deadline(&self) -> Option<SystemTime> {
        self.deadline
    }

    /// True if the broker delivered this request before, to this or another server that did
    /// not acknowledge it (it may have been computed already).
    pub fn redelivered(&self) -> bool {
        self.redelivered
    }

    /// The caller's W3C trace context (`traceparent`, `tracestate` headers), if it sent a
    /// valid one. A call the handler makes carries a child of it.
    pub fn trace(&self) -> Option<TraceContext> {
        let text = |name| match self.header(name)? {
            HeaderValue::Text(text) => Some(text),
            _ => None,
        };
        TraceContext::parse(text(TRACEPARENT_HEADER)?, text(TRACESTATE_HEADER))
    }

    /// The value of header `name`, if the request has it.
    pub fn header(&self, name: &str) -> Option<HeaderValue<'a>> {
        read_value(self.properties.headers().as_ref()?.get(name)?)
    }
}

/// What a service does with a request: the reply (a body, or a [`Response`] with a content type
/// and headers), or a message for an error reply.
///
/// A closure over the body is a handler as it is; [`with_request`] makes one from a closure that
/// needs the whole [`Request`] (correlation id, headers, deadline, redelivery).
///
/// ```
/// use fib_rpc::{handler, HandlerError, Request};
///
/// let shout = |body: &[u8]| Ok::<_, HandlerError>(body.to_ascii_uppercase());
/// let careful = handler::with_request(|request: &Request| {
///     if request.redelivered() {
///         return Err(HandlerError::new("already tried once"));
///     }
///     Ok(request.body().to_vec())
/// });
/// # let _ = (fib_rpc::RpcServer::new(fib_rpc::ServerConfig::default(), shout),
/// #     fib_rpc::RpcServer::new(fib_rpc::ServerConfig::default(), careful));
/// ```
pub trait Handler: Send + Sync + 'static {
    /// Answers one request. An error, or a panic, becomes an error reply.
    fn handle(&self, request: &Request<'_>) -> Result<Response, HandlerError>;

    /// The `content_type` of this handler's success replies that do not set their own; default
    /// `text/plain`.
    fn content_type(&self) -> &str {
        CONTENT_TYPE
    }
}

impl<F, R> Handler for F
where
    F: Fn(&[u8]) -> Result<R, HandlerError> + Send + Sync + 'static,
    R: Into<Response>,
{
    fn handle(&self, request: &Request<'_>) -> Result<Response, HandlerError> {
        self(request.body()).map(Into::into)
    }
}

/// A handler that sees the whole [`Request`]; made by [`with_request`].
#[derive(Debug, Clone)]
pub struct RequestHandler<F>(F);

/// A handler from a closure that needs more than the body.
pub fn with_request<F, R>(handle: F) -> RequestHandler<F>
where
    F: Fn(&Request<'_>) -> Result<R, HandlerError> + Send + Sync + 'static,
    R: Into<Response>,
{
    RequestHandler(handle)
}

impl<F, R> Handler for RequestHandler<F>
where
    F: Fn(&Request<'_>) -> Result<R, HandlerError> + Send + Sync + 'static,
    R: Into<Response>,
{
    fn handle(&self, request: &Request<'_>) -> Result<Response, HandlerError> {
        (self.0)(request).map(Into::into)
    }
}

/// Why fib-rpc refused a request before any handler saw it, if it did.
pub(crate) fn refusal(properties: &AmqpProperties) -> Option<HandlerError> {
    protocol::rejection(properties)
        .map(|reason| HandlerError::new(format!("request refused: {reason}")))
}

/// The error message of a handler that panicked, with what it said.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
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
    use crate::driver::{AmqpValue, FieldTable};
    use crate::protocol::DEADLINE_HEADER;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn panic_messages_are_readable() {
        let panic = std::panic::catch_unwind(|| panic!("boom {}", 7)).unwrap_err();
        assert_eq!(
            panic_message(&*panic),
            "internal error: the handler panicked (boom 7)"
        );
    }

    #[test]
    fn a_request_reads_its_headers_and_deadline() {
        let mut headers = FieldTable::new();
        headers.insert(DEADLINE_HEADER.into(), AmqpValue::LongLongInt(1_500));
        headers.insert("who".into(), AmqpValue::LongString("me".into()));
        headers.insert("n".into(), AmqpValue::ShortInt(-3));
        let properties = AmqpProperties::default()
            .with_headers(headers)
            .with_correlation_id("c-1".into());
        let request = Request::new(b"5", &properties, true);
        assert_eq!(
            request.deadline(),
            Some(UNIX_EPOCH + Duration::from_millis(1500))
        );
        assert_eq!(request.header("who"), Some(HeaderValue::Text("me")));
        assert_eq!(request.header("n"), Some(HeaderValue::Int(-3)));
        assert_eq!(request.header("missing"), None);
        assert_eq!(request.correlation_id(), Some("c-1"));
        assert!(request.redelivered());
    }

    #[test]
    fn closures_over_the_body_and_over_the_request_are_both_handlers() {
        let properties = AmqpProperties::default().with_correlation_id("id-7".into());
        let request = Request::new(b"abc", &properties, false);
        let body_only = |body: &[u8]| Ok::<_, HandlerError>(body.to_ascii_uppercase());
        assert_eq!(body_only.handle(&request).unwrap().body(), b"ABC");
        let echo_id = with_request(|request: &Request<'_>| {
            Ok(request.correlation_id().unwrap_or("").as_bytes().to_vec())
        });
        assert_eq!(echo_id.handle(&request).unwrap().body(), b"id-7");
        assert_eq!(echo_id.content_type(), CONTENT_TYPE);
    }
}
