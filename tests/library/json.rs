//! Typed JSON calls against a JSON service (feature `json`), on the real broker.

use fib_rpc::json::json_handler;
use fib_rpc::{protocol, HandlerError, RpcServer};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use support::{RawPeer, TestQueue};

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Pair {
    x: i64,
    y: i64,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Sum {
    sum: i64,
}

fn start_adder(queue: &TestQueue) -> fib_rpc::ServerHandle {
    RpcServer::new(
        support::server_config(&queue.name, 1),
        json_handler(|pair: Pair| {
            Ok::<_, HandlerError>(Sum {
                sum: pair.x + pair.y,
            })
        }),
    )
    .start()
    .expect("start the JSON server")
}

#[test]
fn a_typed_call_gets_a_typed_answer() {
    let queue = TestQueue::new("json");
    let _server = start_adder(&queue);
    let client = support::client();
    let sum: Sum = client
        .call_json_with_timeout(&queue.name, &Pair { x: 2, y: 40 }, Duration::from_secs(5))
        .unwrap();
    assert_eq!(sum, Sum { sum: 42 });
}

#[test]
fn a_request_that_does_not_decode_gets_an_error_reply_saying_why() {
    let queue = TestQueue::new("json-bad");
    let _server = start_adder(&queue);
    let client = support::client();
    let error = client
        .call_json_with_timeout::<_, Sum>(
            &queue.name,
            &serde_json::json!({"x": "two"}),
            Duration::from_secs(5),
        )
        .unwrap_err();
    assert!(error.is_remote(), "{error}");
    assert!(
        error.to_string().contains("invalid JSON request"),
        "{error}"
    );
    let not_json = client
        .call_json_with_timeout::<_, Pair>(
            &queue.name,
            &Pair { x: 1, y: 1 },
            Duration::from_secs(5),
        )
        .unwrap_err();
    assert!(not_json.is_protocol(), "a Sum is not a Pair: {not_json}");
}

#[test]
fn json_requests_and_replies_say_so_on_the_wire() {
    let queue = TestQueue::new("json-wire");
    let _server = start_adder(&queue);
    let peer = RawPeer::connect();
    peer.publish(
        &queue.name,
        br#"{"x":1,"y":2}"#,
        peer.request_properties("wire")
            .with_content_type(protocol::JSON_CONTENT_TYPE.to_owned()),
    );
    let (properties, body) = peer.next_reply(Duration::from_secs(5)).expect("a reply");
    assert_eq!(body, br#"{"sum":3}"#);
    assert_eq!(
        properties.content_type().as_deref(),
        Some(protocol::JSON_CONTENT_TYPE)
    );
}
