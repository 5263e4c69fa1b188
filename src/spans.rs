//! `tracing` spans for calls and deliveries (feature `tracing`), named with OpenTelemetry's
//! messaging semantic conventions, so that `tracing-opentelemetry` exports their attributes and
//! kind without a mapping of the user's:
//! <https://opentelemetry.io/docs/specs/semconv/messaging/rabbitmq/>.
//!
//! The W3C ids are attributes only: the library does not set an OpenTelemetry parent, which
//! would tie it to one OpenTelemetry version.

use crate::context::TraceContext;
use crate::error::Result;
use tracing::field::Empty;
use tracing::Span;

/// The span of one call, all its attempts. A request to the default exchange is addressed to
/// its queue, which OpenTelemetry then names as the destination.
pub(crate) fn call(
    exchange: &str,
    routing_key: &str,
    correlation_id: &str,
    trace: Option<&TraceContext>,
) -> Span {
    let destination = if exchange.is_empty() {
        routing_key
    } else {
        exchange
    };
    tracing::info_span!(
        "rpc call",
        messaging.system = "rabbitmq",
        messaging.operation.name = "send",
        messaging.destination.name = destination,
        messaging.rabbitmq.destination.routing_key = routing_key,
        messaging.message.conversation_id = correlation_id,
        otel.kind = "client",
        trace_id = trace.map(TraceContext::trace_id),
        span_id = trace.map(TraceContext::span_id),
        "error.type" = Empty,
    )
}

/// Runs `work` in `span`, and records the kind of error it fails with.
pub(crate) fn within<T>(span: &Span, work: impl FnOnce() -> Result<T>) -> Result<T> {
    let outcome = span.in_scope(work);
    if let Err(error) = &outcome {
        span.record("error.type", format!("{:?}", error.kind()));
    }
    outcome
}

/// The span of one delivery served from `queue`, whose parent is the caller's span when the
/// request carried a trace context.
pub(crate) fn serve(
    queue: &str,
    correlation_id: Option<&str>,
    trace: Option<&TraceContext>,
) -> Span {
    tracing::info_span!(
        "rpc serve",
        messaging.system = "rabbitmq",
        messaging.operation.name = "process",
        messaging.destination.name = queue,
        messaging.message.conversation_id = correlation_id,
        otel.kind = "server",
        trace_id = trace.map(TraceContext::trace_id),
        parent_span_id = trace.map(TraceContext::span_id),
        "error.type" = Empty,
    )
}

/// Marks `span` as failed if its delivery is answered with an error reply.
pub(crate) fn served<T, E>(span: &Span, outcome: &std::result::Result<T, E>) {
    if outcome.is_err() {
        span.record("error.type", "handler_error");
    }
}
