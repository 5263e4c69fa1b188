//! The wire protocol: RabbitMQ tutorial 6, plus an error reply.
//!
//! * Request: published to the default exchange with the request queue as routing key,
//!   `reply_to` naming the caller's callback queue and a `correlation_id`; body = n as ASCII decimal.
//! * Success reply: published to `reply_to` with the same `correlation_id`; body = the result as
//!   ASCII decimal, exactly what the tutorial servers send.
//! * Error reply: the same, with the AMQP `type` property set to [`ERROR_TYPE`] and a
//!   human-readable UTF-8 message as body. Tutorial clients that ignore `type` see a non-numeric body.
//! * Our requests also carry `expiration` (the call's timeout in milliseconds, so the broker drops
//!   a request nobody took in time) and a [`DEADLINE_HEADER`] (when the caller stops waiting, in
//!   milliseconds since the Unix epoch, so a server skips a request that waited in its prefetch
//!   buffer too long). Both are optional: tutorial requests have neither and are always served.
//! * A request whose headers the AMQP driver could not safely parse (nested deeper than 64
//!   levels, or malformed properties) arrives with its headers replaced by [`REJECTED_HEADER`]
//!   and is answered with an error reply; a `correlation_id` that is not UTF-8 is echoed in the
//!   reply byte for byte.

use crate::driver::{AmqpProperties, AmqpValue, FieldTable};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Value of the AMQP `type` property on error replies.
pub const ERROR_TYPE: &str = "error";

/// `content_type` of every request and reply we publish, but JSON ones.
pub const CONTENT_TYPE: &str = "text/plain";

/// `content_type` of JSON requests and replies (feature `json`).
pub const JSON_CONTENT_TYPE: &str = "application/json";

/// Request header holding the caller's deadline, in milliseconds since the Unix epoch.
pub const DEADLINE_HEADER: &str = "x-deadline-ms";

/// Request header (`true`) of a caller that wants progress messages before the reply. Only
/// such a caller gets them: a tutorial client takes the first message with its
/// `correlation_id` as the answer.
pub const PROGRESS_HEADER: &str = "x-fib-rpc-progress";

/// AMQP `type` of a progress message: sent to `reply_to` with the request's `correlation_id`
/// before the reply; its body is a short UTF-8 message (may be empty).
pub const PROGRESS_TYPE: &str = "progress";

/// Header of a progress message: how much of the work is done, a double from 0 to 1.
pub const FRACTION_HEADER: &str = "x-fib-rpc-fraction";

/// AMQP `type` of a cancel: published by a caller that gave up, to [`CANCEL_EXCHANGE`] with
/// routing key [`cancel_routing_key`] of the request queue, naming the request by its
/// `reply_to` and `correlation_id`; empty body.
pub const CANCEL_TYPE: &str = "cancel";

/// The exchange cancels go through: RabbitMQ's predeclared direct exchange, which every server
/// of a queue binds its own exclusive control queue to, under the same routing key.
pub const CANCEL_EXCHANGE: &str = "amq.direct";

/// The routing key of the cancels of requests to `queue`.
pub fn cancel_routing_key(queue: &str) -> String {
    format!("fib-rpc.cancel.{queue}")
}

/// W3C Trace Context's header naming the caller's trace and span, sent only when a call has a
/// trace context (<https://www.w3.org/TR/trace-context/>).
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// W3C Trace Context's vendor-specific companion of [`TRACEPARENT_HEADER`].
pub const TRACESTATE_HEADER: &str = "tracestate";

/// True for a header name an application may not set: RabbitMQ's and fib-rpc's own (`x-…`)
/// and W3C Trace Context's, which fib-rpc writes from the call's options.
pub fn is_reserved_header(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.starts_with("x-") || lower == TRACEPARENT_HEADER || lower == TRACESTATE_HEADER
}

// The frame guard stamps it on arrival, below this module; it is named here too so that this
// module lists every name of the wire.
pub use crate::driver::frames::REJECTED_HEADER;

/// The pseudo-queue of RabbitMQ's direct reply-to, which a client consumes.
pub(crate) const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// `reply_to` prefix of the direct reply-to pseudo-queues that requests name.
pub(crate) const DIRECT_REPLY_TO_PREFIX: &str = "amq.rabbitmq.reply-to.";

/// Consumer argument overriding the broker's consumer timeout, in milliseconds.
pub(crate) const CONSUMER_TIMEOUT_ARGUMENT: &str = "x-consumer-timeout";

/// AMQP reply code of a mandatory message the broker could not route to any queue.
pub(crate) const NO_ROUTE: u16 = 312;

/// AMQP reply code for a queue that does not exist.
pub(crate) const NOT_FOUND: u16 = 404;

/// How many bytes of an offending body an error message quotes.
const QUOTE_LIMIT: usize = 40;

/// True if a reply's properties mark it as an error reply.
pub(crate) fn is_error_reply(properties: &AmqpProperties) -> bool {
    properties.type_().as_deref() == Some(ERROR_TYPE)
}

/// The properties of a request: where its reply goes, under which id, in which format.
pub(crate) fn request_properties(
    reply_to: &str,
    correlation_id: &str,
    content_type: &str,
) -> AmqpProperties {
    AmqpProperties::default()
        .with_reply_to(reply_to.to_owned())
        .with_correlation_id(correlation_id.to_owned())
        .with_content_type(content_type.to_owned())
}

/// The properties of a call's request, sent at `now`: those of every request, and it expires
/// with the call, whose deadline it announces.
pub(crate) fn call_properties(
    reply_to: &str,
    correlation_id: &str,
    content_type: &str,
    now: SystemTime,
    timeout: Duration,
) -> AmqpProperties {
    request_properties(reply_to, correlation_id, content_type)
        .with_expiration(expiration_millis(timeout))
        .with_headers(deadline_headers(now, timeout))
}

/// A call's properties with its options: a `priority`, and application or trace `headers`
/// beside the deadline header. Options left unset change nothing.
pub(crate) fn with_options(
    properties: AmqpProperties,
    priority: Option<u8>,
    headers: &FieldTable,
) -> AmqpProperties {
    let properties = match priority {
        Some(priority) => properties.with_priority(priority),
        None => properties,
    };
    if headers.is_empty() {
        return properties;
    }
    let mut merged = properties.headers().clone().unwrap_or_default();
    merged.extend(
        headers
            .iter()
            .map(|(name, value)| (name.clone(), value.clone())),
    );
    properties.with_headers(merged)
}

/// The request's `expiration` property: the broker drops a request nobody took within the
/// caller's timeout, so no server computes an answer for a caller who has gone.
fn expiration_millis(timeout: Duration) -> String {
    timeout
        .as_millis()
        .clamp(1, u128::from(u32::MAX))
        .to_string()
}

/// Request headers announcing that the caller stops waiting `timeout` after `now`.
pub(crate) fn deadline_headers(now: SystemTime, timeout: Duration) -> FieldTable {
    let deadline = crate::deadline::wall_clock_after(now, timeout);
    let millis = deadline.duration_since(UNIX_EPOCH).map_or(0, |since| {
        i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
    });
    let mut headers = FieldTable::new();
    headers.insert(DEADLINE_HEADER.to_owned(), AmqpValue::LongLongInt(millis));
    headers
}

/// The caller's deadline, on the caller's clock, if the request carries a readable one: any
/// integer type of AMQP, in milliseconds since the Unix epoch.
pub(crate) fn header_deadline(properties: &AmqpProperties) -> Option<SystemTime> {
    let millis = match properties.headers().as_ref()?.get(DEADLINE_HEADER)? {
        AmqpValue::LongLongInt(millis) => u64::try_from(*millis).ok()?,
        AmqpValue::LongInt(millis) => u64::try_from(*millis).ok()?,
        AmqpValue::LongUInt(millis) => u64::from(*millis),
        AmqpValue::Timestamp(millis) => *millis,
        _ => return None,
    };
    UNIX_EPOCH.checked_add(Duration::from_millis(millis))
}

/// The request's `expiration` (the caller's timeout, as the broker applies it), if it has a
/// readable one.
pub(crate) fn expiration(properties: &AmqpProperties) -> Option<Duration> {
    let millis = properties.expiration().as_deref()?.parse::<u64>().ok()?;
    Some(Duration::from_millis(millis))
}

/// True if the request's caller asked for progress messages.
pub(crate) fn wants_progress(properties: &AmqpProperties) -> bool {
    let header = properties
        .headers()
        .as_ref()
        .and_then(|headers| headers.get(PROGRESS_HEADER));
    matches!(header, Some(AmqpValue::Boolean(true)))
}

/// The properties of a progress message for the request `correlation_id`.
pub(crate) fn progress_properties(correlation_id: &str, fraction: Option<f64>) -> AmqpProperties {
    let properties = AmqpProperties::default()
        .with_correlation_id(correlation_id.to_owned())
        .with_content_type(CONTENT_TYPE.to_owned())
        .with_type_(PROGRESS_TYPE.to_owned());
    match fraction {
        Some(fraction) => {
            let mut headers = FieldTable::new();
            headers.insert(FRACTION_HEADER.to_owned(), AmqpValue::Double(fraction));
            properties.with_headers(headers)
        }
        None => properties,
    }
}

/// True if a message to a caller is a progress message, not the reply.
pub(crate) fn is_progress(properties: &AmqpProperties) -> bool {
    properties.type_().as_deref() == Some(PROGRESS_TYPE)
}

/// The fraction done that a progress message reports, if it carries one.
pub(crate) fn progress_fraction(properties: &AmqpProperties) -> Option<f64> {
    match properties
        .headers()
        .as_ref()
        .and_then(|headers| headers.get(FRACTION_HEADER))
    {
        Some(AmqpValue::Double(fraction)) => Some(*fraction),
        Some(AmqpValue::Float(fraction)) => Some(f64::from(*fraction)),
        _ => None,
    }
}

/// The properties of the cancel of the request `correlation_id`.
pub(crate) fn cancel_properties(correlation_id: &str) -> AmqpProperties {
    AmqpProperties::default()
        .with_correlation_id(correlation_id.to_owned())
        .with_type_(CANCEL_TYPE.to_owned())
}

/// The request a cancel names, if the message is one.
pub(crate) fn cancelled_request(properties: &AmqpProperties) -> Option<&str> {
    if properties.type_().as_deref() != Some(CANCEL_TYPE) {
        return None;
    }
    properties.correlation_id().as_deref()
}

/// Why fib-rpc replaced a message's headers on arrival (nested too deep, or unparsable
/// properties), if it did: such a request is answered with an error reply.
pub(crate) fn rejection(properties: &AmqpProperties) -> Option<String> {
    match properties.headers().as_ref()?.get(REJECTED_HEADER)? {
        AmqpValue::LongString(reason) => Some(reason.clone()),
        _ => None,
    }
}

/// The limit a broker's refusal of an oversized message names: RabbitMQ closes the channel
/// with `PRECONDITION_FAILED - message size 2097152 is larger than configured max size 1048576`.
pub(crate) fn refused_size_limit(reply_text: &str) -> Option<usize> {
    let (_, limit) = reply_text.split_once("larger than configured max size ")?;
    let digits: String = limit.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// True if the broker closed a channel because a delivery stayed unacknowledged past its
/// consumer timeout: `PRECONDITION_FAILED - delivery acknowledgement on channel 2 timed out`.
pub(crate) fn is_consumer_timeout(reply_text: &str) -> bool {
    reply_text.contains("delivery acknowledgement") && reply_text.contains("timed out")
}

/// A short, printable rendering of untrusted bytes for error messages and logs.
pub(crate) fn quote(body: &[u8]) -> String {
    let shown = &body[..body.len().min(QUOTE_LIMIT)];
    let mut text = format!("{:?}", String::from_utf8_lossy(shown));
    if body.len() > QUOTE_LIMIT {
        text.push_str(&format!(" ({} bytes)", body.len()));
    }
    text
}

/// The longest start of `text` of at most `limit` bytes that ends on a character boundary.
pub(crate) fn truncate_utf8(text: &str, limit: usize) -> &str {
    let mut end = text.len().min(limit);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_and_cancels_read_back_as_they_were_written() {
        let progress = progress_properties("c-1", Some(0.25));
        assert!(is_progress(&progress));
        assert!(!is_error_reply(&progress));
        assert_eq!(progress_fraction(&progress), Some(0.25));
        assert_eq!(progress_fraction(&progress_properties("c-1", None)), None);
        assert_eq!(cancelled_request(&cancel_properties("c-9")), Some("c-9"));
        assert_eq!(cancelled_request(&progress), None);
        let mut asked = FieldTable::new();
        asked.insert(PROGRESS_HEADER.into(), AmqpValue::Boolean(true));
        assert!(wants_progress(
            &AmqpProperties::default().with_headers(asked)
        ));
        assert!(!wants_progress(&AmqpProperties::default()));
        assert_eq!(cancel_routing_key("rpc_queue"), "fib-rpc.cancel.rpc_queue");
    }

    #[test]
    fn truncation_keeps_whole_characters() {
        assert_eq!(truncate_utf8("héllo", 2), "h");
        assert_eq!(truncate_utf8("héllo", 3), "hé");
        assert_eq!(truncate_utf8("abc", 10), "abc");
    }

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
    fn a_calls_request_says_where_its_reply_goes_and_when_it_expires() {
        let properties = call_properties(
            "amq.gen-reply",
            "id-1",
            CONTENT_TYPE,
            UNIX_EPOCH + Duration::from_secs(1),
            Duration::from_millis(2500),
        );
        assert_eq!(properties.reply_to().as_deref(), Some("amq.gen-reply"));
        assert_eq!(properties.correlation_id().as_deref(), Some("id-1"));
        assert_eq!(properties.content_type().as_deref(), Some(CONTENT_TYPE));
        assert_eq!(properties.expiration().as_deref(), Some("2500"));
        assert_eq!(
            header_deadline(&properties),
            Some(UNIX_EPOCH + Duration::from_millis(3500))
        );
    }

    #[test]
    fn quotes_long_and_binary_bodies_briefly() {
        let long = vec![b'7'; 10_000_000];
        let text = quote(&long);
        assert!(text.len() < 80, "{text}");
        assert!(text.contains("10000000 bytes"));
        assert!(quote(b"\xff").contains('\u{fffd}'));
        // Found by the fuzz target service_requests: escapes make a quote longer than the 40
        // bytes it shows, but still bounded.
        let escaped = quote(&[0x1b; 1000]);
        assert!(escaped.len() < 40 * 10 + 40, "{escaped}");
    }

    #[test]
    fn broker_refusals_are_read_from_their_reply_text() {
        let size = "PRECONDITION_FAILED - message size 2097152 is larger than configured max \
                    size 1048576";
        assert_eq!(refused_size_limit(size), Some(1_048_576));
        assert_eq!(
            refused_size_limit("PRECONDITION_FAILED - unknown delivery tag 1"),
            None
        );
        let timeout = "PRECONDITION_FAILED - delivery acknowledgement on channel 2 timed out. \
                       Timeout value used: 5000 ms. This timeout value can be configured, see \
                       consumers doc guide to learn more";
        assert!(is_consumer_timeout(timeout));
        assert!(!is_consumer_timeout(size));
    }

    #[test]
    fn the_deadline_header_reads_back_as_it_was_written() {
        let sent = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let properties = AmqpProperties::default()
            .with_headers(deadline_headers(sent, Duration::from_millis(1500)))
            .with_expiration("1500".into());
        assert_eq!(
            header_deadline(&properties),
            Some(sent + Duration::from_millis(1500))
        );
        assert_eq!(expiration(&properties), Some(Duration::from_millis(1500)));
    }

    #[test]
    fn unreadable_deadlines_and_expirations_are_none() {
        assert_eq!(header_deadline(&AmqpProperties::default()), None);
        let mut headers = FieldTable::new();
        headers.insert(DEADLINE_HEADER.into(), AmqpValue::LongString("soon".into()));
        headers.insert("other".into(), AmqpValue::Boolean(true));
        let odd = AmqpProperties::default()
            .with_headers(headers)
            .with_expiration("later".into());
        assert_eq!(header_deadline(&odd), None);
        assert_eq!(expiration(&odd), None);
        let mut negative = FieldTable::new();
        negative.insert(DEADLINE_HEADER.into(), AmqpValue::LongLongInt(-5));
        let negative = AmqpProperties::default().with_headers(negative);
        assert_eq!(header_deadline(&negative), None);
    }
}
