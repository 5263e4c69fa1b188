//! Hostile messages and hostile arguments: whatever arrives, no fib-rpc process crashes,
//! every request is answered or dropped exactly once, and nothing is lost or answered twice.

use fib_rpc::services::fibonacci;
use fib_rpc::{FibonacciRpcClient, ResultConsumer};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::processes::ServerProcess;
use support::wire::{nested_headers, RawAmqp, RawProperties};
use support::TestQueue;

/// Deep enough to overflow amiquip's I/O thread (it survived 3000 before the guard).
const HOSTILE_DEPTH: usize = 5000;

#[test]
fn a_deeply_nested_request_gets_an_error_reply_and_the_server_keeps_serving() {
    let queue = TestQueue::new("hostile-nested");
    let replies = TestQueue::new("hostile-nested-replies");
    replies.declare_classic(false);
    let mut server = ServerProcess::start(&queue.name, &["--workers", "2"]);
    let mut wire = RawAmqp::connect(&support::broker_address());
    let properties = RawProperties {
        headers: Some(nested_headers(HOSTILE_DEPTH)),
        correlation_id: Some(b"deep".to_vec()),
        reply_to: Some(replies.name.clone().into_bytes()),
        ..RawProperties::default()
    };
    wire.publish(&queue.name, &properties, b"10");
    let (reply, body) = wire
        .get_within(&replies.name, Duration::from_secs(20))
        .expect("an error reply");
    assert_eq!(reply.correlation_id.as_deref(), Some(&b"deep"[..]));
    assert_eq!(reply.type_.as_deref(), Some(&b"error"[..]));
    let message = String::from_utf8_lossy(&body);
    assert!(message.contains("nested too deep"), "{message}");
    assert_eq!(
        queue.counts(),
        (0, 2),
        "acked; both workers still consuming"
    );
    let client = support::fib_client(&queue.name, Duration::from_secs(10));
    assert_eq!(client.call(30).unwrap(), fibonacci(30));
    assert!(wire.get(&replies.name).is_none(), "answered exactly once");
    server.signal("TERM");
    assert_eq!(server.wait_exit(Duration::from_secs(20)), Some(0));
    assert_eq!(server.log_lines_with("connection lost"), 0);
}

#[test]
fn a_deeply_nested_reply_in_a_callback_queue_leaves_the_client_working() {
    let queue = TestQueue::new("hostile-callback");
    let _server = support::start_fib_server(&queue.name, 1);
    let name = format!("hostile client {}", uuid::Uuid::new_v4());
    let client = support::named_client(support::amqp_url(), &name);
    let callback_queue = support::callback_queue_of(&name);
    let mut wire = RawAmqp::connect(&support::broker_address());
    let properties = RawProperties {
        headers: Some(nested_headers(HOSTILE_DEPTH)),
        correlation_id: Some(b"stranger".to_vec()),
        ..RawProperties::default()
    };
    wire.publish(&callback_queue, &properties, b"poison");
    wire.sync();
    support::wait_until(
        "the poison reached the client",
        Duration::from_secs(30),
        || support::queue_messages(&callback_queue) == Some(0),
    );
    assert_eq!(
        client
            .call_with_timeout(&queue.name, b"20", Duration::from_secs(10))
            .unwrap(),
        b"6765"
    );
    assert_eq!(client.pending_calls(), 0);
}

#[test]
fn a_deeply_nested_result_is_read_like_any_other() {
    let results = TestQueue::new("hostile-results");
    results.declare_classic(true);
    let mut wire = RawAmqp::connect(&support::broker_address());
    let nested = RawProperties {
        headers: Some(nested_headers(HOSTILE_DEPTH)),
        correlation_id: Some(b"deep".to_vec()),
        ..RawProperties::default()
    };
    wire.publish(&results.name, &nested, b"1");
    let plain = RawProperties {
        correlation_id: Some(b"plain".to_vec()),
        ..RawProperties::default()
    };
    wire.publish(&results.name, &plain, b"2");
    wire.sync();
    let mut consumer = ResultConsumer::connect(
        support::client_config().get_connection().clone(),
        &results.name,
    )
    .unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let result = consumer
            .next_timeout(Duration::from_secs(10))
            .unwrap()
            .expect("a result");
        seen.push((result.correlation_id.unwrap(), result.outcome.unwrap()));
    }
    consumer.close().unwrap();
    assert_eq!(
        seen,
        [
            ("deep".to_owned(), b"1".to_vec()),
            ("plain".to_owned(), b"2".to_vec())
        ]
    );
    assert_eq!(results.counts(), (0, 0), "both acked");
}

#[test]
fn a_correlation_id_that_is_not_utf8_is_echoed_byte_for_byte() {
    let queue = TestQueue::new("hostile-utf8");
    let replies = TestQueue::new("hostile-utf8-replies");
    replies.declare_classic(false);
    let _server = ServerProcess::start(&queue.name, &["--workers", "1"]);
    let mut wire = RawAmqp::connect(&support::broker_address());
    let properties = RawProperties {
        content_type: Some(b"te\xffxt".to_vec()),
        correlation_id: Some(b"\xff\xfe-id".to_vec()),
        reply_to: Some(replies.name.clone().into_bytes()),
        ..RawProperties::default()
    };
    wire.publish(&queue.name, &properties, b"10");
    let (reply, body) = wire
        .get_within(&replies.name, Duration::from_secs(20))
        .expect("a reply");
    assert_eq!(reply.correlation_id.as_deref(), Some(&b"\xff\xfe-id"[..]));
    assert_eq!(body, b"55");
}

#[test]
fn a_reply_that_comes_after_the_deadline_is_discarded_however_late_wait_is_called() {
    let queue = TestQueue::new("late-reply");
    let (_server, gate) = support::start_gated_echo_server(&queue.name, 1);
    let client = support::client();
    let timeout = Duration::from_millis(300);
    let sent_at = Instant::now();
    let pending = client
        .send_with_timeout(&queue.name, b"slow", timeout)
        .unwrap();
    gate.started.recv_timeout(Duration::from_secs(10)).unwrap();
    support::wait_until("the deadline has passed", Duration::from_secs(10), || {
        sent_at.elapsed() > timeout
    });
    gate.release();
    // The late reply arrives and is dropped without anyone waiting: nothing is pending any more.
    support::wait_until("the late reply is dropped", Duration::from_secs(10), || {
        client.pending_calls() == 0
    });
    let error = pending.wait().unwrap_err();
    assert!(error.is_timeout(), "{error}");
}

#[test]
fn no_timeout_is_too_large() {
    let queue = TestQueue::new("huge-timeout");
    let _server = support::start_fib_server(&queue.name, 1);
    let client = support::client();
    assert_eq!(
        client
            .call_with_timeout(&queue.name, b"12", Duration::MAX)
            .unwrap(),
        b"144"
    );
    let fib = FibonacciRpcClient::new(support::client())
        .with_queue(queue.name.as_str())
        .with_timeout(Duration::MAX);
    assert_eq!(fib.call(13).unwrap(), fibonacci(13));
    assert_eq!(fib.call_many(&[1, 2]).len(), 2);
    let mut config = support::client_config();
    config = config.call_timeout(Duration::MAX);
    let connection = config
        .get_connection()
        .clone()
        .connect_timeout(Duration::MAX);
    config = config.connection(connection);
    let connection = config.get_connection().clone().close_timeout(Duration::MAX);
    config = config.connection(connection);
    let patient = fib_rpc::RpcClient::connect(config).unwrap();
    assert_eq!(
        patient
            .call_with_timeout(&queue.name, b"14", Duration::MAX)
            .unwrap(),
        b"377"
    );
    patient.close().unwrap();
}

#[test]
fn fib_results_leaves_a_result_it_could_not_write_in_the_queue() {
    let results = TestQueue::new("results-epipe");
    results.declare_classic(true);
    let mut wire = RawAmqp::connect(&support::broker_address());
    for id in ["a", "b", "c"] {
        let properties = RawProperties {
            correlation_id: Some(id.as_bytes().to_vec()),
            ..RawProperties::default()
        };
        wire.publish(&results.name, &properties, b"1");
    }
    wire.sync();
    let mut child = Command::new(env!("CARGO_BIN_EXE_fib-results"))
        .arg(&results.name)
        .env("AMQP_URL", support::amqp_url())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn fib-results");
    // Nobody will read: every write fails with EPIPE.
    drop(child.stdout.take());
    let status = child.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "a closed stdout is the reader's choice"
    );
    support::wait_until(
        "the result in hand is back",
        Duration::from_secs(10),
        || results.counts() == (3, 0),
    );
}
