//! The raw AMQP test client (`support::wire`) against the real broker: bytes that amiquip
//! cannot express go out and come back byte-for-byte.

use std::time::Duration;
use support::wire::*;

const DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);

/// Deletes its queue when the test ends, also when it panics. The deletion runs on a fresh
/// connection in its own thread, so a failure there can never turn a panic into an abort.
struct QueueGuard {
    name: String,
}

impl QueueGuard {
    fn new(amqp: &mut RawAmqp) -> QueueGuard {
        let name = format!("test-wire-{}", uuid::Uuid::new_v4());
        amqp.declare_queue(&name);
        QueueGuard { name }
    }
}

impl Drop for QueueGuard {
    fn drop(&mut self) {
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            RawAmqp::connect(&support::broker_address()).delete_queue(&name)
        })
        .join();
    }
}

#[test]
fn non_utf8_properties_and_string_headers_round_trip_byte_for_byte() {
    let mut amqp = RawAmqp::connect(&support::broker_address());
    let queue = QueueGuard::new(&mut amqp);
    let properties = RawProperties {
        content_type: Some(b"te\xffxt".to_vec()),
        headers: Some(string_table(&[("origin", "wire-test"), ("kind", "raw")])),
        correlation_id: Some(b"\xff\xfe-id".to_vec()),
        reply_to: Some(b"r".to_vec()),
        ..RawProperties::default()
    };

    amqp.publish(&queue.name, &properties, b"42");
    amqp.sync();
    let (received, body) = amqp
        .get_within(&queue.name, DELIVERY_TIMEOUT)
        .expect("the published message was not delivered");

    assert_eq!(received, properties);
    assert_eq!(body, b"42");
    assert_eq!(
        amqp.get(&queue.name),
        None,
        "exactly one message was published"
    );
}

#[test]
fn headers_nested_5000_deep_are_accepted_and_delivered_unchanged() {
    let headers = nested_headers(5000);
    assert_eq!(headers.len(), 11 + 7 * 4999);
    assert_eq!(&headers[4..7], b"\x01xF", "the outermost key is \"x\"");

    let mut amqp = RawAmqp::connect(&support::broker_address());
    let queue = QueueGuard::new(&mut amqp);
    let properties = RawProperties {
        headers: Some(headers),
        correlation_id: Some(b"deep".to_vec()),
        ..RawProperties::default()
    };

    amqp.publish(&queue.name, &properties, b"deep body");
    amqp.sync();
    let (received, body) = amqp
        .get_within(&queue.name, DELIVERY_TIMEOUT)
        .expect("the broker did not deliver the deeply nested message");

    assert_eq!(received, properties);
    assert_eq!(body, b"deep body");
}

#[test]
fn an_empty_body_round_trips() {
    let mut amqp = RawAmqp::connect(&support::broker_address());
    let queue = QueueGuard::new(&mut amqp);
    let properties = RawProperties {
        correlation_id: Some(b"empty".to_vec()),
        type_: Some(b"nothing".to_vec()),
        expiration: Some(b"60000".to_vec()),
        ..RawProperties::default()
    };

    amqp.publish(&queue.name, &properties, b"");
    amqp.sync();
    let (received, body) = amqp
        .get_within(&queue.name, DELIVERY_TIMEOUT)
        .expect("the empty message was not delivered");

    assert_eq!(received, properties);
    assert!(body.is_empty());
}

#[test]
fn nested_headers_has_the_documented_shape() {
    // depth 1: {"v": I 1}
    assert_eq!(nested_headers(1), b"\0\0\0\x07\x01vI\0\0\0\x01".to_vec());
    // depth 3: {"x": {"n": {"v": I 1}}}
    let mut expected = Vec::new();
    expected.extend_from_slice(b"\0\0\0\x15\x01xF");
    expected.extend_from_slice(b"\0\0\0\x0e\x01nF");
    expected.extend_from_slice(b"\0\0\0\x07\x01vI\0\0\0\x01");
    assert_eq!(nested_headers(3), expected);
    assert_eq!(
        string_table(&[("k", "ab")]),
        b"\0\0\0\x09\x01kS\0\0\0\x02ab".to_vec()
    );
}
