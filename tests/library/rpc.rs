//! Calls against a real broker and an in-process server.

use amiquip::AmqpProperties;
use fib_rpc::services::fibonacci;
use fib_rpc::{protocol, HandlerError, RpcServer};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{RawPeer, TestQueue};

const TIMEOUT: Duration = Duration::from_secs(5);

#[test]
fn round_trip() {
    let queue = TestQueue::new("roundtrip");
    let server = support::start_fib_server(&queue.name, 2);
    let client = support::fib_client(&queue.name, TIMEOUT);
    assert_eq!(client.call(10).unwrap().to_string(), "55");
    assert_eq!(client.call(0).unwrap().to_string(), "0");
    assert_eq!(client.call(1000).unwrap(), fibonacci(1000));
    assert_eq!(client.rpc().pending_calls(), 0);
    client.close().unwrap();
    server.shutdown().unwrap();
}

#[test]
fn a_thousand_sequential_calls() {
    let queue = TestQueue::new("sequential");
    let server = support::start_fib_server(&queue.name, 2);
    let client = support::fib_client(&queue.name, TIMEOUT);
    for i in 0..1000u64 {
        let n = i % 200;
        assert_eq!(client.call(n).unwrap(), fibonacci(n), "fib({n})");
    }
    assert_eq!(server.stats().total(), 1000);
    client.close().unwrap();
    server.shutdown().unwrap();
}

#[test]
fn several_threads_share_one_client() {
    let queue = TestQueue::new("threads");
    let server = support::start_fib_server(&queue.name, 2);
    let client = Arc::new(support::fib_client(&queue.name, TIMEOUT));
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let client = Arc::clone(&client);
            std::thread::spawn(move || {
                for i in 0..100u64 {
                    let n = t * 100 + i;
                    assert_eq!(client.call(n).unwrap(), fibonacci(n), "fib({n})");
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    assert_eq!(server.stats().total(), 400);
    assert_eq!(client.rpc().pending_calls(), 0);
    server.shutdown().unwrap();
}

#[test]
fn several_clients_in_parallel() {
    let queue = TestQueue::new("clients");
    let server = support::start_fib_server(&queue.name, 2);
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let name = queue.name.clone();
            std::thread::spawn(move || {
                let client = support::fib_client(&name, TIMEOUT);
                for n in (t * 50)..(t * 50 + 50) {
                    assert_eq!(client.call(n).unwrap(), fibonacci(n));
                }
                client.close().unwrap();
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    server.shutdown().unwrap();
}

#[test]
fn two_servers_share_one_queue_and_both_get_work() {
    let queue = TestQueue::new("two-servers");
    let first = support::start_fib_server(&queue.name, 1);
    let second = support::start_fib_server(&queue.name, 1);
    let client = Arc::new(support::fib_client(&queue.name, TIMEOUT));
    // Concurrent callers keep both consumers busy; prefetch 1 spreads requests between them.
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let client = Arc::clone(&client);
            std::thread::spawn(move || {
                for n in 0..50 {
                    assert_eq!(client.call(n).unwrap(), fibonacci(n));
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let (a, b) = (first.stats().total(), second.stats().total());
    assert_eq!(a + b, 200);
    assert!(a > 0 && b > 0, "work was not shared: {a} and {b}");
    first.shutdown().unwrap();
    second.shutdown().unwrap();
}

/// A call with a 10 s timeout fails with a no-server error in well under that.
fn assert_fails_fast_with_no_server(client: &fib_rpc::RpcClient, queue: &str) {
    let started = Instant::now();
    let error = client
        .call_with_timeout(queue, b"5", Duration::from_secs(10))
        .unwrap_err();
    assert!(error.is_no_server(), "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn missing_queue_fails_fast_with_no_server() {
    let queue = TestQueue::new("missing");
    let client = support::client();
    assert_fails_fast_with_no_server(&client, &queue.name);
    assert_eq!(client.pending_calls(), 0);
    assert!(
        !queue.exists(),
        "the client must never declare the request queue"
    );
}

#[test]
fn a_queue_without_consumers_fails_fast_with_no_server() {
    let queue = TestQueue::new("no-consumer");
    queue.declare_quorum();
    let client = support::client();
    assert_fails_fast_with_no_server(&client, &queue.name);
    assert_eq!(queue.counts().0, 0, "the request must not have been queued");
    // As soon as a server consumes the queue, the same client is served.
    let server = support::start_fib_server(&queue.name, 1);
    assert_eq!(
        client
            .call_with_timeout(&queue.name, b"5", TIMEOUT)
            .unwrap(),
        b"5"
    );
    server.shutdown().unwrap();
}

/// How long a client trusts a no-server check that found a consumer (the library's one
/// second).
const CONSUMER_TRUST: Duration = Duration::from_secs(1);

/// How long a client waits for a consumer to come back to a queue that had one when last
/// asked (the library's half second).
const SERVER_RETURN_GRACE: Duration = Duration::from_millis(500);

#[test]
fn a_queue_seen_with_a_consumer_is_trusted_for_one_second_then_given_half_a_second_to_return() {
    let queue = TestQueue::new("trust");
    queue.declare_classic(false);
    // A consumer of our own, which takes (and acks by taking) whatever reaches it.
    let mut consumer_connection = support::raw_connection();
    let channel = consumer_connection.open_channel(None).unwrap();
    let consumer = channel
        .basic_consume(
            queue.name.as_str(),
            amiquip::ConsumerOptions {
                no_ack: true,
                ..amiquip::ConsumerOptions::default()
            },
        )
        .unwrap();
    assert_eq!(queue.counts(), (0, 1));
    let client = support::client();
    // This send asks the broker, finds the consumer, and trusts that until a second after.
    let checked_from = Instant::now();
    drop(
        client
            .send_with_timeout(&queue.name, b"1", TIMEOUT)
            .unwrap(),
    );
    let checked_by = Instant::now();
    assert!(
        matches!(
            consumer.receiver().recv_timeout(TIMEOUT),
            Ok(amiquip::ConsumerMessage::Delivery(_))
        ),
        "the first request reached the consumer"
    );
    consumer.cancel().unwrap();
    assert_eq!(queue.counts(), (0, 0), "no consumer any more");
    // Within the second the client does not ask again: its requests go out, and are queued.
    let sent_at = Instant::now();
    for _ in 0..10 {
        drop(
            client
                .send_with_timeout(&queue.name, b"2", TIMEOUT)
                .unwrap(),
        );
    }
    let sent_by = Instant::now();
    assert!(
        sent_by < checked_from + CONSUMER_TRUST,
        "too slow to send within the trusted second: {:?}",
        sent_by - checked_from
    );
    support::wait_until("10 requests queued", TIMEOUT, || queue.counts() == (10, 0));
    // Once the second is over, the client asks again, and reports that no server is there.
    // The last answer had found a consumer, so that call gives one half a second to return.
    let mut published_after_trust = Vec::new();
    let (no_server_at, waited) = loop {
        let attempt = Instant::now();
        match client.send_with_timeout(&queue.name, b"3", TIMEOUT) {
            Err(error) => {
                assert!(error.is_no_server(), "{error}");
                break (Instant::now(), attempt.elapsed());
            }
            Ok(pending) => {
                drop(pending);
                published_after_trust.push(attempt - checked_by);
            }
        }
        assert!(
            attempt < checked_by + 2 * CONSUMER_TRUST,
            "still trusted {:?} after the check",
            attempt - checked_from
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        no_server_at >= checked_from + CONSUMER_TRUST,
        "asked again {:?} after the check, within the trusted second",
        no_server_at - checked_from
    );
    assert!(
        waited >= SERVER_RETURN_GRACE,
        "no server reported after {waited:?}, without waiting for the server to return"
    );
    assert!(
        no_server_at
            < checked_by + CONSUMER_TRUST + SERVER_RETURN_GRACE + Duration::from_millis(500),
        "no server reported only {:?} after the check",
        no_server_at - checked_by
    );
    // Every send that published started before the trust ran out.
    for after in &published_after_trust {
        assert!(
            *after < CONSUMER_TRUST,
            "published {after:?} after the check"
        );
    }
    // Now the last answer found none, so the next call reports it at once.
    let asked_at = Instant::now();
    assert!(client
        .send_with_timeout(&queue.name, b"4", TIMEOUT)
        .unwrap_err()
        .is_no_server());
    assert!(
        asked_at.elapsed() < SERVER_RETURN_GRACE,
        "no server reported only after {:?} the second time",
        asked_at.elapsed()
    );
    eprintln!(
        "consumer trust: sends {:?}..{:?} after the check published; no server reported {:?} after it",
        sent_at - checked_from,
        sent_by - checked_from,
        no_server_at - checked_from
    );
    drop(consumer);
    drop(channel);
    consumer_connection.close().unwrap();
}

#[test]
fn without_a_server_a_patient_call_times_out_on_time_and_the_request_expires() {
    let queue = TestQueue::new("patient");
    queue.declare_quorum();
    let client = support::patient_client();
    // Long enough to see the request in the queue before it expires.
    let timeout = Duration::from_secs(3);
    let started = Instant::now();
    let pending = client
        .send_with_timeout(&queue.name, b"5", timeout)
        .unwrap();
    support::wait_until("the request is queued", timeout, || {
        queue.counts() == (1, 0)
    });
    let queued_after = started.elapsed();
    assert!(queued_after < timeout, "seen only after {queued_after:?}");
    let error = pending.wait().unwrap_err();
    let waited = started.elapsed();
    assert!(error.is_timeout(), "{error}");
    assert!(waited >= timeout, "gave up early: {waited:?}");
    assert!(
        waited < timeout + Duration::from_millis(500),
        "gave up late: {waited:?}"
    );
    assert_eq!(
        client.pending_calls(),
        0,
        "a timed-out call left its entry behind"
    );
    // The request carried expiration = timeout, so the broker drops it instead of keeping it
    // for a server that would answer a caller who has gone; no consumer took it meanwhile.
    support::wait_until(
        "the stale request is dropped",
        Duration::from_secs(5),
        || queue.counts() == (0, 0),
    );
    let dropped_after = started.elapsed();
    assert!(
        dropped_after >= timeout,
        "dropped before it expired: {dropped_after:?}"
    );
    eprintln!(
        "expiration: queued after {queued_after:?}, call timed out after {waited:?}, \
         dropped by the broker by {dropped_after:?}"
    );
}

#[test]
fn a_patient_call_is_answered_by_a_server_that_starts_later() {
    let queue = TestQueue::new("late-server");
    queue.declare_quorum();
    let client = support::patient_client();
    let pending = client
        .send_with_timeout(&queue.name, b"20", TIMEOUT)
        .unwrap();
    support::wait_until("the request is queued", TIMEOUT, || {
        queue.counts() == (1, 0)
    });
    let server = support::start_fib_server(&queue.name, 1);
    assert_eq!(pending.wait().unwrap(), b"6765");
    server.shutdown().unwrap();
}

#[test]
fn bad_input_gets_an_error_reply_and_the_server_keeps_serving() {
    let queue = TestQueue::new("bad-input");
    let server = support::start_fib_server(&queue.name, 2);
    let client = support::client();
    let bodies: &[&[u8]] = &[
        b"",
        b" ",
        b"+5",
        b"-1",
        b"1e3",
        b"0x10",
        b"1.5",
        b"\xff\xfe",
        b"100001",
        b"1000000000000000000000000000000",
    ];
    for body in bodies {
        let error = client
            .call_with_timeout(&queue.name, body, TIMEOUT)
            .unwrap_err();
        let message = error
            .remote_message()
            .unwrap_or_else(|| panic!("{body:?}: {error}"));
        assert!(!message.is_empty());
    }
    assert_eq!(
        client
            .call_with_timeout(&queue.name, b"10", TIMEOUT)
            .unwrap(),
        b"55"
    );
    assert_eq!(server.stats().total(), bodies.len() as u64 + 1);
    server.shutdown().unwrap();
}

#[test]
fn error_replies_are_marked_with_the_type_property_and_keep_the_correlation_id() {
    let queue = TestQueue::new("error-reply");
    let server = support::start_fib_server(&queue.name, 1);
    let peer = RawPeer::connect();
    peer.publish(&queue.name, b"nope", peer.request_properties("id-1"));
    let (properties, body) = peer.next_reply(TIMEOUT).expect("an error reply");
    assert_eq!(properties.type_().as_deref(), Some(protocol::ERROR_TYPE));
    assert_eq!(properties.correlation_id().as_deref(), Some("id-1"));
    assert!(String::from_utf8(body).unwrap().contains("nope"));
    peer.publish(&queue.name, b"12", peer.request_properties("id-2"));
    let (properties, body) = peer.next_reply(TIMEOUT).expect("a reply");
    assert_eq!(
        properties.type_(),
        &None,
        "success replies carry no type, as in the tutorials"
    );
    assert_eq!(properties.correlation_id().as_deref(), Some("id-2"));
    assert_eq!(body, b"144");
    server.shutdown().unwrap();
}

#[test]
fn a_request_without_reply_to_is_dropped_and_the_server_goes_on() {
    let queue = TestQueue::new("no-reply-to");
    let server = support::start_fib_server(&queue.name, 1);
    let peer = RawPeer::connect();
    peer.publish(
        &queue.name,
        b"7",
        AmqpProperties::default().with_correlation_id("x".into()),
    );
    let client = support::fib_client(&queue.name, TIMEOUT);
    assert_eq!(client.call(7).unwrap().to_string(), "13");
    // The two requests came over two connections, so in either order.
    support::wait_until("the reply_to-less request is consumed", TIMEOUT, || {
        server.stats().total() == 2
    });
    assert_eq!(server.stats().unanswerable, 1);
    assert_eq!(
        queue.counts().0,
        0,
        "nothing may pile up in the request queue"
    );
    server.shutdown().unwrap();
}

#[test]
fn a_panicking_handler_gets_an_error_reply_and_the_worker_survives() {
    let queue = TestQueue::new("panic");
    let server = RpcServer::new(support::server_config(&queue.name, 1), |body: &[u8]| {
        if body == b"boom" {
            panic!("handler exploded");
        }
        Ok::<_, HandlerError>(body.to_vec())
    })
    .start()
    .unwrap();
    let client = support::client();
    for _ in 0..3 {
        let error = client
            .call_with_timeout(&queue.name, b"boom", TIMEOUT)
            .unwrap_err();
        assert!(
            error.remote_message().unwrap().contains("handler exploded"),
            "{error}"
        );
        // The one worker is still there.
        assert_eq!(
            client
                .call_with_timeout(&queue.name, b"echo", TIMEOUT)
                .unwrap(),
            b"echo"
        );
    }
    assert_eq!(
        queue.counts(),
        (0, 1),
        "the poison request must be acked, not redelivered"
    );
    server.shutdown().unwrap();
}

#[test]
fn stray_and_duplicate_replies_never_answer_the_wrong_call() {
    // A misbehaving server: before each real answer it sends a reply with a stranger's id, one
    // without any id, and afterwards the same answer again (as after a redelivery).
    let queue = TestQueue::new("stray");
    queue.declare_classic(false);
    let serving = queue.name.clone();
    let (stop_sender, stop) = crossbeam_channel::bounded::<()>(0);
    let (ready_sender, ready) = crossbeam_channel::bounded(1);
    let server = std::thread::spawn(move || {
        let mut connection = support::raw_connection();
        let channel = connection.open_channel(None).unwrap();
        let consumer = channel
            .basic_consume(serving.as_str(), Default::default())
            .unwrap();
        ready_sender.send(()).unwrap();
        loop {
            crossbeam_channel::select! {
                recv(consumer.receiver()) -> message => {
                    let amiquip::ConsumerMessage::Delivery(delivery) = message.unwrap() else { break };
                    let reply_to = delivery.properties.reply_to().clone().unwrap();
                    let id = delivery.properties.correlation_id().clone().unwrap();
                    let n: u64 = std::str::from_utf8(&delivery.body).unwrap().parse().unwrap();
                    let answer = fibonacci(n).to_string();
                    let send = |body: &[u8], properties: AmqpProperties| {
                        channel.basic_publish("", amiquip::Publish::with_properties(body, reply_to.as_str(), properties)).unwrap();
                    };
                    send(b"666", AmqpProperties::default().with_correlation_id("stranger".into()));
                    send(b"667", AmqpProperties::default());
                    send(answer.as_bytes(), AmqpProperties::default().with_correlation_id(id.clone()));
                    send(answer.as_bytes(), AmqpProperties::default().with_correlation_id(id));
                    consumer.ack(delivery).unwrap();
                }
                recv(stop) -> _ => break,
            }
        }
        support::close_raw(connection, consumer);
    });
    ready
        .recv_timeout(TIMEOUT)
        .expect("the stray server started");
    let client = support::fib_client(&queue.name, TIMEOUT);
    for n in [10u64, 11, 12, 13, 14] {
        assert_eq!(client.call(n).unwrap(), fibonacci(n));
    }
    assert_eq!(client.rpc().pending_calls(), 0);
    drop(stop_sender);
    server.join().unwrap();
}

#[test]
fn a_stopping_server_finishes_the_request_in_hand() {
    let queue = TestQueue::new("graceful");
    let (server, gate) = support::start_gated_echo_server(&queue.name, 1);
    let client = support::client();
    let pending = client
        .send_with_timeout(&queue.name, b"slow", TIMEOUT)
        .unwrap();
    gate.started
        .recv_timeout(TIMEOUT)
        .expect("the handler started");
    // The stop is asked for while the handler still holds the request.
    server.shutdown_trigger().trigger();
    gate.release();
    server.wait().unwrap();
    assert_eq!(pending.wait().unwrap(), b"slow");
    assert_eq!(queue.counts(), (0, 0));
}

#[test]
fn dropping_the_server_handle_stops_the_server() {
    let queue = TestQueue::new("dropped-handle");
    let server = support::start_fib_server(&queue.name, 2);
    support::wait_until("both workers consume", TIMEOUT, || queue.counts() == (0, 2));
    drop(server);
    support::wait_until("no worker consumes", TIMEOUT, || queue.counts() == (0, 0));
}

#[test]
fn with_several_broker_urls_the_first_that_answers_serves() {
    let queue = TestQueue::new("endpoints");
    let _server = support::start_fib_server(&queue.name, 1);
    // Nothing listens on port 1: the client moves on to the test broker.
    let urls = format!("amqp://guest:guest@127.0.0.1:1/%2f,{}", support::amqp_url());
    let client = fib_rpc::RpcClient::connect(&urls).unwrap();
    assert_eq!(
        client
            .call_with_timeout(&queue.name, b"9", TIMEOUT)
            .unwrap(),
        b"34"
    );
}
