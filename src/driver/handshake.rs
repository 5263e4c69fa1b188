//! The connection handshake as the guard sees it: a capability announced that amiquip leaves
//! out, and the broker's own words when it refuses the connection.
//!
//! A client that does not announce `authentication_failure_close` gets no reason for refused
//! credentials: RabbitMQ waits a few seconds, then drops the socket. amiquip builds its client
//! properties itself and announces only `consumer_cancel_notify` and `connection.blocked`, so
//! the guard adds the capability to the `connection.start-ok` it writes. The broker then answers
//! refused credentials with `connection.close` (403 `ACCESS_REFUSED`) at once; amiquip does not
//! expect that frame there and fails with a parse error, so the guard keeps the broker's code and
//! text for the error we report.

use crate::driver::frames::{self, read_u32};
use crate::util::lock;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;

/// Frame type of a method frame.
pub(crate) const METHOD_FRAME: u8 = 1;

/// Largest connection method frame read whole; RabbitMQ's are a few hundred bytes.
pub(crate) const MAX_CONNECTION_FRAME: usize = 64 * 1024;

const CONNECTION_CLASS: u16 = 10;
const START_OK: u16 = 11;
const CLOSE: u16 = 50;

/// The capability that makes RabbitMQ say why it refuses credentials.
const AUTHENTICATION_FAILURE_CLOSE: &[u8] = b"authentication_failure_close";

/// What the guard saw of a connection's start, for the error if it fails.
#[derive(Debug, Default)]
pub(crate) struct Witness {
    first_byte: AtomicU8,
    refusal: Mutex<Option<(u16, String)>>,
}

impl Witness {
    /// Notes the first byte the broker sent (a TLS record's, on a plain connection, say).
    pub fn saw_byte(&self, byte: u8) {
        let _ = self
            .first_byte
            .compare_exchange(0, byte, Ordering::Relaxed, Ordering::Relaxed);
    }

    pub fn first_byte(&self) -> u8 {
        self.first_byte.load(Ordering::Relaxed)
    }

    /// Notes an inbound method frame of channel 0: a `connection.close` is the broker's refusal.
    pub fn saw_connection_method(&self, payload: &[u8]) {
        if let Some(close) = connection_close(payload) {
            *self.lock() = Some(close);
        }
    }

    /// The broker's reply code and text, if it closed the connection.
    pub fn refusal(&self) -> Option<(u16, String)> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(u16, String)>> {
        lock(&self.refusal)
    }
}

/// True if this frame header (type, channel) starts a method frame of channel 0, the
/// connection's own.
pub(crate) fn is_connection_frame(header: &[u8]) -> bool {
    header.len() >= 3 && header[0] == METHOD_FRAME && header[1..3] == [0, 0]
}

fn method(payload: &[u8]) -> Option<(u16, u16)> {
    let class = u16::from_be_bytes(payload.get(0..2)?.try_into().ok()?);
    let method = u16::from_be_bytes(payload.get(2..4)?.try_into().ok()?);
    Some((class, method))
}

/// The reply code and text of a `connection.close` payload.
fn connection_close(payload: &[u8]) -> Option<(u16, String)> {
    if method(payload)? != (CONNECTION_CLASS, CLOSE) {
        return None;
    }
    let code = u16::from_be_bytes(payload.get(4..6)?.try_into().ok()?);
    let length = usize::from(*payload.get(6)?);
    let text = payload.get(7..7 + length)?;
    Some((code, String::from_utf8_lossy(text).into_owned()))
}

/// A `connection.start-ok` payload with `authentication_failure_close` added to the client's
/// capabilities; `None` for any other payload, or one not laid out as amiquip writes it.
pub(crate) fn announce_capability(payload: &[u8]) -> Option<Vec<u8>> {
    if method(payload)? != (CONNECTION_CLASS, START_OK) {
        return None;
    }
    let properties_length = read_u32(payload, 4)?;
    let properties_end = 8usize.checked_add(properties_length)?;
    let mut position = 8;
    while position < properties_end {
        let key_length = usize::from(*payload.get(position)?);
        let key = payload.get(position + 1..position + 1 + key_length)?;
        position += 1 + key_length;
        let tag = *payload.get(position)?;
        position += 1;
        let value_length = field_length(tag, payload, position)?;
        if key == b"capabilities" && tag == b'F' {
            return Some(with_capability(payload, position, properties_length));
        }
        position = position.checked_add(value_length)?;
    }
    None
}

/// The payload with the capability entry put first in the capabilities table that starts
/// (with its length) at `table`, and both table lengths grown to match.
fn with_capability(payload: &[u8], table: usize, properties_length: usize) -> Vec<u8> {
    let mut entry = vec![AUTHENTICATION_FAILURE_CLOSE.len() as u8];
    entry.extend_from_slice(AUTHENTICATION_FAILURE_CLOSE);
    entry.extend_from_slice(b"t\x01");
    let capabilities_length = read_u32(payload, table).unwrap_or(0);
    let mut rewritten = Vec::with_capacity(payload.len() + entry.len());
    rewritten.extend_from_slice(&payload[..4]);
    rewritten.extend_from_slice(&((properties_length + entry.len()) as u32).to_be_bytes());
    rewritten.extend_from_slice(&payload[8..table]);
    rewritten.extend_from_slice(&((capabilities_length + entry.len()) as u32).to_be_bytes());
    rewritten.extend_from_slice(&entry);
    rewritten.extend_from_slice(&payload[table + 4..]);
    rewritten
}

/// Length of a field value of type `tag` starting at `at`, its length prefix included.
fn field_length(tag: u8, bytes: &[u8], at: usize) -> Option<usize> {
    match tag {
        b'S' | b'x' | b'A' | b'F' => 4usize.checked_add(read_u32(bytes, at)?),
        _ => frames::fixed_width(tag),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn long_string(key: &str, value: &str) -> Vec<u8> {
        let mut bytes = vec![key.len() as u8];
        bytes.extend_from_slice(key.as_bytes());
        bytes.push(b'S');
        bytes.extend_from_slice(&(value.len() as u32).to_be_bytes());
        bytes.extend_from_slice(value.as_bytes());
        bytes
    }

    fn table(entries: &[u8]) -> Vec<u8> {
        let mut bytes = (entries.len() as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(entries);
        bytes
    }

    /// A start-ok as amiquip writes it: product, version, capabilities, then the mechanism,
    /// response and locale.
    fn start_ok() -> Vec<u8> {
        let mut capabilities = vec![22];
        capabilities.extend_from_slice(b"consumer_cancel_notify");
        capabilities.extend_from_slice(b"t\x01");
        let mut properties = long_string("product", "amiquip");
        properties.extend(long_string("version", "0.4.2"));
        properties.push(12);
        properties.extend_from_slice(b"capabilities");
        properties.push(b'F');
        properties.extend(table(&capabilities));
        properties.extend(long_string("information", "fib-rpc client"));
        let mut payload = vec![0, 10, 0, 11];
        payload.extend(table(&properties));
        payload.extend_from_slice(b"\x05PLAIN");
        payload.extend(table(b"\x00guest\x00guest"));
        payload.extend_from_slice(b"\x05en_US");
        payload
    }

    #[test]
    fn the_capability_is_added_and_every_length_follows() {
        let original = start_ok();
        let rewritten = announce_capability(&original).expect("a start-ok");
        let added = 1 + AUTHENTICATION_FAILURE_CLOSE.len() + 2;
        assert_eq!(rewritten.len(), original.len() + added);
        assert_eq!(
            read_u32(&rewritten, 4),
            Some(read_u32(&original, 4).unwrap() + added)
        );
        let text = String::from_utf8_lossy(&rewritten);
        assert!(text.contains("authentication_failure_close"));
        assert!(text.contains("consumer_cancel_notify"));
        // What follows the properties is untouched.
        assert!(rewritten.ends_with(&original[8 + read_u32(&original, 4).unwrap()..]));
        // And the capabilities table still parses to its end.
        let table = rewritten
            .windows(12)
            .position(|window| window == b"capabilities")
            .unwrap()
            + 13;
        let length = read_u32(&rewritten, table).unwrap();
        let contents = &rewritten[table + 4..table + 4 + length];
        assert!(contents.ends_with(b"consumer_cancel_notifyt\x01"));
    }

    #[test]
    fn other_methods_and_odd_payloads_are_left_alone() {
        assert_eq!(announce_capability(&[0, 10, 0, 31, 0, 0]), None);
        assert_eq!(announce_capability(&[0, 10, 0, 11, 0, 0, 0, 50]), None);
        assert_eq!(announce_capability(&[]), None);
    }

    #[test]
    fn a_connection_close_gives_the_brokers_words() {
        let text = b"ACCESS_REFUSED - Login was refused";
        let mut payload = vec![0, 10, 0, 50, 1, 147, text.len() as u8];
        payload.extend_from_slice(text);
        payload.extend_from_slice(&[0, 0, 0, 0]);
        let witness = Witness::default();
        witness.saw_connection_method(&[0, 10, 0, 30, 0, 0]);
        assert_eq!(witness.refusal(), None);
        witness.saw_connection_method(&payload);
        assert_eq!(
            witness.refusal(),
            Some((403, "ACCESS_REFUSED - Login was refused".to_owned()))
        );
        assert!(is_connection_frame(&[1, 0, 0, 0, 0, 0, 9]));
        assert!(!is_connection_frame(&[1, 0, 1, 0, 0, 0, 9]));
    }
}
