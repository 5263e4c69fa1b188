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

use crate::error::{Error, HandlerError, Result};
pub use crate::frames::REJECTED_HEADER;
use amiquip::{AmqpProperties, AmqpValue, FieldTable};
use num_bigint::BigUint;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Value of the AMQP `type` property on error replies.
pub const ERROR_TYPE: &str = "error";

/// `content_type` of every request and reply we publish.
pub const CONTENT_TYPE: &str = "text/plain";

/// Request header holding the caller's deadline, in milliseconds since the Unix epoch.
pub const DEADLINE_HEADER: &str = "x-deadline-ms";

/// How many bytes of an offending body an error message quotes.
const QUOTE_LIMIT: usize = 40;

/// Parses a request body as a non-negative decimal integer no larger than `max`.
///
/// Only ASCII digits are accepted (leading zeros included): no sign, no whitespace, no exponent,
/// no hex, so that every client gets the same answer for the same bytes.
pub fn parse_bounded_u64(body: &[u8], max: u64) -> Result<u64, HandlerError> {
    if body.is_empty() {
        return Err(HandlerError::new(
            "empty request: expected a non-negative decimal integer",
        ));
    }
    if !body.iter().all(u8::is_ascii_digit) {
        return Err(HandlerError::new(format!(
            "invalid request {}: expected a non-negative decimal integer (ASCII digits only)",
            quote(body)
        )));
    }
    let too_large = || {
        HandlerError::new(format!(
            "n = {} is too large: the maximum is {max}",
            quote(body)
        ))
    };
    // The body is all ASCII digits, so it is valid UTF-8; only overflow can fail the parse.
    let n: u64 = std::str::from_utf8(body)
        .ok()
        .and_then(|digits| digits.parse().ok())
        .ok_or_else(too_large)?;
    if n > max {
        return Err(too_large());
    }
    Ok(n)
}

/// Parses a success reply body as a non-negative decimal integer of any size.
pub fn parse_biguint(body: &[u8]) -> Result<BigUint> {
    if body.is_empty() || !body.iter().all(u8::is_ascii_digit) {
        return Err(Error::Protocol(format!(
            "expected a decimal integer, got {}",
            quote(body)
        )));
    }
    BigUint::parse_bytes(body, 10)
        .ok_or_else(|| Error::Protocol(format!("unparsable integer {}", quote(body))))
}

/// True if a reply's properties mark it as an error reply.
pub fn is_error_reply(properties: &AmqpProperties) -> bool {
    properties.type_().as_deref() == Some(ERROR_TYPE)
}

/// Turns a reply into the caller's result: the body, or the server's error message.
pub fn decode_reply(properties: &AmqpProperties, body: Vec<u8>) -> Result<Vec<u8>> {
    if is_error_reply(properties) {
        Err(Error::Remote(String::from_utf8_lossy(&body).into_owned()))
    } else {
        Ok(body)
    }
}

/// Request headers announcing that the caller stops waiting `timeout` after `now`.
pub fn deadline_headers(now: SystemTime, timeout: Duration) -> FieldTable {
    let deadline = crate::deadline::wall_clock_after(now, timeout);
    let millis = deadline.duration_since(UNIX_EPOCH).map_or(0, |since| {
        i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
    });
    let mut headers = FieldTable::new();
    headers.insert(DEADLINE_HEADER.to_owned(), AmqpValue::LongLongInt(millis));
    headers
}

/// True if the request announces a deadline that has passed at `now`. Requests without a
/// (readable) deadline never expire here.
pub fn is_expired(properties: &AmqpProperties, now: SystemTime) -> bool {
    let Some(value) = properties
        .headers()
        .as_ref()
        .and_then(|headers| headers.get(DEADLINE_HEADER))
    else {
        return false;
    };
    let deadline_millis = match value {
        AmqpValue::LongLongInt(millis) => u64::try_from(*millis).ok(),
        AmqpValue::LongInt(millis) => u64::try_from(*millis).ok(),
        AmqpValue::LongUInt(millis) => Some(u64::from(*millis)),
        _ => None,
    };
    match deadline_millis {
        Some(millis) => UNIX_EPOCH + Duration::from_millis(millis) < now,
        None => false,
    }
}

/// Why fib-rpc replaced a message's headers on arrival (nested too deep, or unparsable
/// properties), if it did: such a request is answered with an error reply.
pub fn rejection(properties: &AmqpProperties) -> Option<String> {
    match properties.headers().as_ref()?.get(REJECTED_HEADER)? {
        AmqpValue::LongString(reason) => Some(reason.clone()),
        _ => None,
    }
}

/// A short, printable rendering of untrusted bytes for error messages and logs.
pub fn quote(body: &[u8]) -> String {
    let shown = &body[..body.len().min(QUOTE_LIMIT)];
    let mut text = format!("{:?}", String::from_utf8_lossy(shown));
    if body.len() > QUOTE_LIMIT {
        text.push_str(&format!(" ({} bytes)", body.len()));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: u64 = 100_000;

    #[test]
    fn accepts_plain_decimals() {
        assert_eq!(parse_bounded_u64(b"0", MAX), Ok(0));
        assert_eq!(parse_bounded_u64(b"30", MAX), Ok(30));
        assert_eq!(parse_bounded_u64(b"007", MAX), Ok(7));
        assert_eq!(parse_bounded_u64(b"100000", MAX), Ok(100_000));
    }

    #[test]
    fn rejects_every_malformed_form() {
        let malformed: &[&[u8]] = &[
            b"",
            b" ",
            b" 5",
            b"5 ",
            b"5\n",
            b"+5",
            b"-1",
            b"1e3",
            b"0x10",
            b"1.5",
            b"1_000",
            b"abc",
            b"\xff\xfe",
            b"\xd9\xa3", // ARABIC-INDIC DIGIT THREE: a digit, but not ASCII
        ];
        for body in malformed {
            let error = parse_bounded_u64(body, MAX).expect_err(&format!("{body:?} accepted"));
            assert!(!error.message().is_empty());
        }
    }

    #[test]
    fn rejects_values_above_the_maximum_with_the_maximum_in_the_message() {
        let error = parse_bounded_u64(b"100001", MAX).unwrap_err();
        assert!(error.message().contains("100000"), "{error}");
        let huge = parse_bounded_u64(b"1000000000000000000000000000000", MAX).unwrap_err();
        assert!(huge.message().contains("too large"), "{huge}");
        let over_u64 = parse_bounded_u64(b"18446744073709551616", u64::MAX).unwrap_err();
        assert!(over_u64.message().contains("too large"), "{over_u64}");
    }

    #[test]
    fn quotes_long_and_binary_bodies_briefly() {
        let long = vec![b'7'; 10_000_000];
        let text = quote(&long);
        assert!(text.len() < 80, "{text}");
        assert!(text.contains("10000000 bytes"));
        assert!(quote(b"\xff").contains('\u{fffd}'));
    }

    #[test]
    fn decodes_success_and_error_replies() {
        let plain = AmqpProperties::default();
        assert_eq!(decode_reply(&plain, b"55".to_vec()).unwrap(), b"55");
        let error = AmqpProperties::default().with_type_(ERROR_TYPE.to_string());
        let remote = decode_reply(&error, b"bad n".to_vec()).unwrap_err();
        assert_eq!(remote.remote_message(), Some("bad n"));
    }

    #[test]
    fn a_request_expires_once_its_deadline_has_passed() {
        let sent = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let properties = AmqpProperties::default()
            .with_headers(deadline_headers(sent, Duration::from_millis(1500)));
        assert!(!is_expired(&properties, sent));
        assert!(!is_expired(&properties, sent + Duration::from_millis(1500)));
        assert!(is_expired(&properties, sent + Duration::from_millis(1501)));
    }

    #[test]
    fn requests_without_a_readable_deadline_never_expire() {
        let far_future = UNIX_EPOCH + Duration::from_secs(u32::MAX.into());
        assert!(!is_expired(&AmqpProperties::default(), far_future));
        let mut headers = FieldTable::new();
        headers.insert(DEADLINE_HEADER.into(), AmqpValue::LongString("soon".into()));
        headers.insert("other".into(), AmqpValue::Boolean(true));
        let odd = AmqpProperties::default().with_headers(headers);
        assert!(!is_expired(&odd, far_future));
        let mut negative = FieldTable::new();
        negative.insert(DEADLINE_HEADER.into(), AmqpValue::LongLongInt(-5));
        assert!(!is_expired(
            &AmqpProperties::default().with_headers(negative),
            far_future
        ));
    }

    #[test]
    fn parses_big_reply_bodies_strictly() {
        assert_eq!(
            parse_biguint(b"354224848179261915075").unwrap().to_string(),
            "354224848179261915075"
        );
        assert!(parse_biguint(b"").is_err());
        assert!(parse_biguint(b"12 ").is_err());
        assert!(parse_biguint(b"oops").is_err());
    }
}
