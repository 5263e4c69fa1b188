//! What travels besides a body: application headers, and a [`Response`] that carries them with
//! its content type, both ways (a handler's answer, and the reply a caller receives).

use crate::driver::{AmqpProperties, AmqpValue, FieldTable};
use crate::error::{Error, Result};
use crate::protocol;

/// A header's value, as far as fib-rpc reads and writes it.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum HeaderValue<'a> {
    /// A (long) string.
    Text(&'a str),
    /// Any integer type, and timestamps.
    Int(i64),
    /// A boolean.
    Bool(bool),
    /// A byte array.
    Bytes(&'a [u8]),
    /// A float, decimal, table, array or void: present, but not read here.
    Other,
}

impl<'a> From<&'a str> for HeaderValue<'a> {
    fn from(text: &'a str) -> Self {
        HeaderValue::Text(text)
    }
}

impl<'a> From<&'a String> for HeaderValue<'a> {
    fn from(text: &'a String) -> Self {
        HeaderValue::Text(text)
    }
}

impl From<i64> for HeaderValue<'_> {
    fn from(n: i64) -> Self {
        HeaderValue::Int(n)
    }
}

impl From<i32> for HeaderValue<'_> {
    fn from(n: i32) -> Self {
        HeaderValue::Int(n.into())
    }
}

impl From<u32> for HeaderValue<'_> {
    fn from(n: u32) -> Self {
        HeaderValue::Int(n.into())
    }
}

impl From<bool> for HeaderValue<'_> {
    fn from(flag: bool) -> Self {
        HeaderValue::Bool(flag)
    }
}

impl<'a> From<&'a [u8]> for HeaderValue<'a> {
    fn from(bytes: &'a [u8]) -> Self {
        HeaderValue::Bytes(bytes)
    }
}

/// Reads a header value of the wire.
pub(crate) fn read_value(value: &AmqpValue) -> Option<HeaderValue<'_>> {
    Some(match value {
        AmqpValue::LongString(text) => HeaderValue::Text(text),
        AmqpValue::Boolean(flag) => HeaderValue::Bool(*flag),
        AmqpValue::ShortShortInt(n) => HeaderValue::Int((*n).into()),
        AmqpValue::ShortShortUInt(n) => HeaderValue::Int((*n).into()),
        AmqpValue::ShortInt(n) => HeaderValue::Int((*n).into()),
        AmqpValue::ShortUInt(n) => HeaderValue::Int((*n).into()),
        AmqpValue::LongInt(n) => HeaderValue::Int((*n).into()),
        AmqpValue::LongUInt(n) => HeaderValue::Int((*n).into()),
        AmqpValue::LongLongInt(n) => HeaderValue::Int(*n),
        AmqpValue::Timestamp(n) => HeaderValue::Int(i64::try_from(*n).ok()?),
        AmqpValue::ByteArray(bytes) => HeaderValue::Bytes(bytes),
        _ => HeaderValue::Other,
    })
}

/// A header value as the wire carries it; `None` for [`HeaderValue::Other`], which has nothing
/// to write.
fn write_value(value: HeaderValue<'_>) -> Option<AmqpValue> {
    Some(match value {
        HeaderValue::Text(text) => AmqpValue::LongString(text.to_owned()),
        HeaderValue::Int(n) => AmqpValue::LongLongInt(n),
        HeaderValue::Bool(flag) => AmqpValue::Boolean(flag),
        HeaderValue::Bytes(bytes) => AmqpValue::ByteArray(bytes.to_vec()),
        HeaderValue::Other => return None,
    })
}

/// Application headers, checked as they are set: a name fib-rpc or RabbitMQ reserves
/// ([`protocol::is_reserved_header`]) is refused, so an application header can never change
/// what the protocol means.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Headers {
    table: FieldTable,
    /// The first name refused, reported when the message is sent.
    refused: Option<String>,
}

impl Headers {
    pub fn insert(&mut self, name: &str, value: HeaderValue<'_>) {
        if protocol::is_reserved_header(name) {
            self.refused.get_or_insert_with(|| name.to_owned());
            return;
        }
        match write_value(value) {
            Some(value) => {
                self.table.insert(name.to_owned(), value);
            }
            None => {
                self.refused.get_or_insert_with(|| name.to_owned());
            }
        }
    }

    /// The table to send, or why the headers cannot be sent.
    pub fn checked(self) -> Result<FieldTable> {
        match self.refused {
            Some(name) => Err(Error::Config(format!(
                "header {name:?} is reserved (fib-rpc's own, W3C trace context, or RabbitMQ's \
                 x-), or has no value to send: set the option that means it instead"
            ))),
            None => Ok(self.table),
        }
    }
}

/// A reply: its body, content type and application headers.
///
/// A handler returns one when its answer needs more than a body (a plain `Vec<u8>` still
/// works: it becomes a `Response` of the handler's content type). A caller receives one from
/// [`Call::call`](crate::Call::call).
///
/// ```
/// use fib_rpc::Response;
///
/// let response = Response::new(b"{\"n\":5}".to_vec())
///     .content_type("application/json")
///     .header("cache", "hit");
/// assert_eq!(response.get_content_type(), Some("application/json"));
/// assert_eq!(response.get_header("cache"), Some("hit".into()));
/// ```
///
/// Headers whose names fib-rpc or RabbitMQ reserve (`x-…`, `traceparent`, `tracestate`) are
/// left out of a reply, with a warning in the server's log.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Response {
    body: Vec<u8>,
    content_type: Option<String>,
    headers: Headers,
}

impl Response {
    /// A response with this body, the handler's content type and no headers.
    pub fn new(body: impl Into<Vec<u8>>) -> Response {
        Response {
            body: body.into(),
            ..Response::default()
        }
    }

    /// Sets the `content_type` (default: the handler's, `text/plain` for most).
    pub fn content_type(mut self, content_type: impl Into<String>) -> Response {
        self.content_type = Some(content_type.into());
        self
    }

    /// Adds an application header.
    pub fn header<'v>(mut self, name: &str, value: impl Into<HeaderValue<'v>>) -> Response {
        self.headers.insert(name, value.into());
        self
    }

    /// The body.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The body, taken out.
    pub fn into_body(self) -> Vec<u8> {
        self.body
    }

    /// The `content_type`, if set.
    pub fn get_content_type(&self) -> Option<&str> {
        self.content_type.as_deref()
    }

    /// The value of header `name`, if the response has it.
    pub fn get_header(&self, name: &str) -> Option<HeaderValue<'_>> {
        read_value(self.headers.table.get(name)?)
    }

    /// The names of the response's headers, in order.
    pub fn header_names(&self) -> impl Iterator<Item = &str> {
        self.headers.table.keys().map(String::as_str)
    }

    /// A received reply: its body, content type and every header the server sent (reserved
    /// ones included, as they came).
    pub(crate) fn received(properties: &AmqpProperties, body: Vec<u8>) -> Response {
        Response {
            body,
            content_type: properties.content_type().clone(),
            headers: Headers {
                table: properties.headers().clone().unwrap_or_default(),
                refused: None,
            },
        }
    }

    /// The parts a server publishes: body, content type (or `default_type`) and headers; a
    /// reserved header's name comes back to be logged, and is not sent.
    pub(crate) fn into_parts(self, default_type: &str) -> Parts {
        Parts {
            body: self.body,
            content_type: self.content_type.unwrap_or_else(|| default_type.to_owned()),
            refused: self.headers.refused,
            headers: self.headers.table,
        }
    }
}

impl From<Vec<u8>> for Response {
    fn from(body: Vec<u8>) -> Response {
        Response::new(body)
    }
}

impl From<&[u8]> for Response {
    fn from(body: &[u8]) -> Response {
        Response::new(body)
    }
}

impl From<String> for Response {
    fn from(body: String) -> Response {
        Response::new(body)
    }
}

/// A progress message of a call that asked for them
/// ([`Call::on_progress`](crate::Call::on_progress)): how much of the work is done, if the
/// handler said, and a short message.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    fraction: Option<f64>,
    message: String,
}

impl Progress {
    /// A progress report; a fraction that is not a number from 0 to 1 is left out.
    pub fn new(fraction: Option<f64>, message: impl Into<String>) -> Progress {
        Progress {
            fraction: fraction.filter(|f| (0.0..=1.0).contains(f)),
            message: message.into(),
        }
    }

    /// How much of the work is done, from 0 to 1, if the handler said.
    pub fn fraction(&self) -> Option<f64> {
        self.fraction
    }

    /// The handler's message (may be empty).
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// A response taken apart for publishing.
#[derive(Debug)]
pub(crate) struct Parts {
    pub body: Vec<u8>,
    pub content_type: String,
    pub headers: FieldTable,
    pub refused: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fraction_outside_zero_to_one_is_left_out() {
        assert_eq!(
            Progress::new(Some(0.25), "a quarter").fraction(),
            Some(0.25)
        );
        for outside in [7.0, -0.5, f64::NAN] {
            assert_eq!(Progress::new(Some(outside), "").fraction(), None);
        }
    }

    #[test]
    fn application_headers_are_kept_and_reserved_ones_refused() {
        let mut headers = Headers::default();
        headers.insert("tenant", "acme".into());
        headers.insert("attempt", 2.into());
        assert_eq!(headers.clone().checked().unwrap().len(), 2);
        for reserved in ["x-deadline-ms", "X-Match", "traceparent", "tracestate"] {
            let mut refused = headers.clone();
            refused.insert(reserved, "1".into());
            let error = refused.checked().unwrap_err();
            assert!(error.is_config(), "{error}");
            assert!(error.to_string().contains(reserved), "{error}");
        }
    }

    #[test]
    fn a_response_reads_back_what_it_was_given() {
        let response = Response::new("7")
            .content_type("application/x-fib")
            .header("cache", "hit")
            .header("n", 5)
            .header("fresh", true);
        assert_eq!(response.body(), b"7");
        assert_eq!(response.get_header("n"), Some(HeaderValue::Int(5)));
        assert_eq!(response.get_header("fresh"), Some(HeaderValue::Bool(true)));
        assert_eq!(
            response.header_names().collect::<Vec<_>>(),
            ["cache", "fresh", "n"]
        );
        let parts = response.into_parts("text/plain");
        assert_eq!(parts.content_type, "application/x-fib");
        assert_eq!(parts.refused, None);
        let defaulted = Response::new("7")
            .header("x-cache", "hit")
            .into_parts("text/plain");
        assert_eq!(defaulted.content_type, "text/plain");
        assert_eq!(defaulted.refused.as_deref(), Some("x-cache"));
        assert!(defaulted.headers.is_empty());
    }
}
