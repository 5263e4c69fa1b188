//! Calls that carry their context: per-call options on the wire (exchange, routing key,
//! priority, headers, trace context), replies with properties, and a deadline and trace that
//! pass through a chain of two services.

use amiquip::AmqpValue;
use fib_rpc::{
    handler, protocol, HandlerError, HeaderValue, QueueType, Request, Response, RpcClient,
    RpcServer, TraceContext,
};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use support::{raw_consumer_via_amq_direct, text_header, TestQueue};

const TIMEOUT: Duration = Duration::from_secs(5);

#[test]
fn per_call_options_reach_the_wire_as_asked() {
    let routing_key = format!("test-options-{}", uuid::Uuid::new_v4());
    let consumer = raw_consumer_via_amq_direct(&routing_key, b"42");
    let client = support::client();
    let trace = TraceContext::new_root().with_state("fib=1");
    let reply = client
        .request(&routing_key, b"21")
        .exchange("amq.direct")
        .priority(7)
        .header("tenant", "acme")
        .header("attempt", 2)
        .trace(trace.clone())
        .timeout(TIMEOUT)
        .call()
        .unwrap();
    assert_eq!(reply.body(), b"42");
    let seen = consumer.join().unwrap();
    assert_eq!(seen.exchange, "amq.direct");
    assert_eq!(seen.routing_key, routing_key);
    let properties = &seen.properties;
    assert_eq!(properties.priority(), &Some(7));
    assert_eq!(text_header(properties, "tenant"), Some("acme"));
    let headers = properties.headers().as_ref().unwrap();
    assert_eq!(headers.get("attempt"), Some(&AmqpValue::LongLongInt(2)));
    assert_eq!(
        text_header(properties, protocol::TRACEPARENT_HEADER),
        Some(trace.traceparent().as_str())
    );
    assert_eq!(
        text_header(properties, protocol::TRACESTATE_HEADER),
        Some("fib=1")
    );
    client.close().unwrap();
}

#[test]
fn a_plain_call_sends_nothing_it_was_not_asked_for() {
    let routing_key = format!("test-plain-{}", uuid::Uuid::new_v4());
    let consumer = raw_consumer_via_amq_direct(&routing_key, b"1");
    let client = support::client();
    client
        .request(&routing_key, b"1")
        .exchange("amq.direct")
        .call()
        .unwrap();
    let seen = consumer.join().unwrap();
    let properties = &seen.properties;
    assert_eq!(properties.priority(), &None);
    let names: Vec<&String> = properties.headers().as_ref().unwrap().keys().collect();
    assert_eq!(
        names,
        [protocol::DEADLINE_HEADER],
        "only the deadline header"
    );
    client.close().unwrap();
}

#[test]
fn an_unroutable_request_through_an_exchange_is_no_server_at_once() {
    let client = support::client();
    let started = Instant::now();
    let error = client
        .request(&format!("test-nobody-{}", uuid::Uuid::new_v4()), b"1")
        .exchange("amq.direct")
        .timeout(TIMEOUT)
        .call()
        .unwrap_err();
    assert!(error.is_no_server(), "{error}");
    assert!(error.to_string().contains("amq.direct"), "{error}");
    assert!(started.elapsed() < TIMEOUT / 2, "{:?}", started.elapsed());
    client.close().unwrap();
}

#[test]
fn reserved_headers_are_refused_before_anything_is_sent() {
    let queue = TestQueue::new("reserved");
    let server = support::start_fib_server(&queue.name, 1);
    let client = support::client();
    for name in ["x-deadline-ms", "x-match", "traceparent", "TraceState"] {
        let error = client
            .request(&queue.name, b"5")
            .header(name, "1")
            .call()
            .unwrap_err();
        assert!(error.is_config(), "{name}: {error}");
        assert!(error.to_string().contains(name), "{error}");
    }
    assert_eq!(server.stats().total(), 0, "no request reached the server");
    assert_eq!(
        client.request(&queue.name, b"5").call().unwrap().body(),
        b"5"
    );
    client.close().unwrap();
    server.shutdown().unwrap();
}

#[test]
fn a_reply_carries_the_content_type_and_headers_its_handler_gave_it() {
    let queue = TestQueue::new("reply-properties");
    let config = support::server_config(&queue.name, 1);
    let server = RpcServer::new(config, |body: &[u8]| {
        Ok::<_, HandlerError>(
            Response::new(body.to_ascii_uppercase())
                .content_type("application/x-shout")
                .header("cache", "miss")
                .header("length", i64::try_from(body.len()).unwrap())
                .header("x-forged", "dropped"),
        )
    })
    .start()
    .unwrap();
    let client = support::client();
    let reply = client.request(&queue.name, b"abc").call().unwrap();
    assert_eq!(reply.body(), b"ABC");
    assert_eq!(reply.get_content_type(), Some("application/x-shout"));
    assert_eq!(reply.get_header("cache"), Some(HeaderValue::Text("miss")));
    assert_eq!(reply.get_header("length"), Some(HeaderValue::Int(3)));
    assert_eq!(reply.get_header("x-forged"), None, "reserved: not sent");
    // The plain API sees the body, as before.
    assert_eq!(client.call(&queue.name, b"de").unwrap(), b"DE");
    // A tutorial peer sees the same reply properties.
    let peer = support::RawPeer::connect();
    peer.publish(&queue.name, b"xy", peer.request_properties("tutorial-1"));
    let (properties, body) = peer.next_reply(TIMEOUT).expect("a reply");
    assert_eq!(body, b"XY");
    assert_eq!(
        properties.content_type().as_deref(),
        Some("application/x-shout")
    );
    assert_eq!(text_header(&properties, "cache"), Some("miss"));
    client.close().unwrap();
    server.shutdown().unwrap();
}

/// What service B saw of a request.
#[derive(Debug, Clone)]
struct Observed {
    deadline: Option<SystemTime>,
    trace: Option<TraceContext>,
}

#[test]
fn deadline_and_trace_pass_through_a_chain_of_two_services() {
    let (a_queue, b_queue) = (TestQueue::new("chain-a"), TestQueue::new("chain-b"));
    let seen_by_b = Arc::new(Mutex::new(Vec::<Observed>::new()));
    let seen_by_a = Arc::new(Mutex::new(Vec::<Observed>::new()));
    let record = Arc::clone(&seen_by_b);
    let b = RpcServer::new(
        support::server_config(&b_queue.name, 1),
        handler::with_request(move |request: &Request<'_>| {
            record.lock().unwrap().push(Observed {
                deadline: request.deadline(),
                trace: request.trace(),
            });
            Ok::<_, HandlerError>(request.body().to_vec())
        }),
    )
    .start()
    .unwrap();
    // A's own client has a long default timeout: only propagation keeps B's deadline short.
    let a_client = Arc::new(
        RpcClient::connect(support::client_config().call_timeout(Duration::from_secs(60))).unwrap(),
    );
    let (record, onward) = (Arc::clone(&seen_by_a), b_queue.name.clone());
    let a = RpcServer::new(
        support::server_config(&a_queue.name, 1),
        handler::with_request(move |request: &Request<'_>| {
            record.lock().unwrap().push(Observed {
                deadline: request.deadline(),
                trace: request.trace(),
            });
            let call = a_client.request(&onward, request.body());
            let call = match request.body() {
                b"detached" => call.detached(),
                _ => call,
            };
            call.call()
                .map_err(|error| HandlerError::new(error.to_string()))
        }),
    )
    .start()
    .unwrap();
    let client = support::client();
    let trace = TraceContext::new_root();
    let sent_at = SystemTime::now();
    let reply = client
        .request(&a_queue.name, b"chained")
        .timeout(Duration::from_secs(3))
        .trace(trace.clone())
        .call()
        .unwrap();
    assert_eq!(reply.body(), b"chained");
    let client_deadline = sent_at + Duration::from_secs(3);
    let (at_a, at_b) = (
        seen_by_a.lock().unwrap()[0].clone(),
        seen_by_b.lock().unwrap()[0].clone(),
    );
    // A sees the client's context as sent; B a child of it, and no more time than the client
    // gave A (the 60 s of A's client would show here without propagation).
    assert_eq!(at_a.trace.as_ref(), Some(&trace));
    let b_trace = at_b.trace.expect("B received a trace context");
    assert_eq!(b_trace.trace_id(), trace.trace_id());
    assert_ne!(b_trace.span_id(), trace.span_id());
    let slack = Duration::from_millis(100);
    let b_deadline = at_b.deadline.expect("B received a deadline");
    assert!(
        b_deadline <= client_deadline + slack,
        "B's deadline is {:?} past the client's",
        b_deadline
            .duration_since(client_deadline)
            .unwrap_or_default()
    );
    assert!(b_deadline <= at_a.deadline.unwrap() + slack);
    // Detached, A's call to B has its own timeout and no trace.
    client
        .request(&a_queue.name, b"detached")
        .trace(trace)
        .call()
        .unwrap();
    let detached = seen_by_b.lock().unwrap()[1].clone();
    assert!(detached.trace.is_none(), "{detached:?}");
    let own = detached.deadline.unwrap();
    assert!(
        own > SystemTime::now() + Duration::from_secs(30),
        "a detached call has A's client's 60 s: {own:?}"
    );
    client.close().unwrap();
    a.shutdown().unwrap();
    b.shutdown().unwrap();
}

#[test]
fn a_call_inside_a_handler_whose_caller_gave_up_fails_at_once() {
    let (a_queue, b_queue) = (TestQueue::new("late-a"), TestQueue::new("late-b"));
    let b = support::start_fib_server(&b_queue.name, 1);
    let a_client = Arc::new(support::client());
    let onward = b_queue.name.clone();
    let (started_sender, started) = crossbeam_channel::bounded(1);
    let (release, released) = crossbeam_channel::bounded::<()>(0);
    let outcome = Arc::new(Mutex::new(None));
    let record = Arc::clone(&outcome);
    let a = RpcServer::new(
        support::server_config(&a_queue.name, 1),
        handler::with_request(move |request: &Request<'_>| {
            let _ = started_sender.send(());
            // Held until the caller has given up.
            let _ = released.recv();
            let result = a_client.call(&onward, request.body());
            *record.lock().unwrap() = Some(result.map_err(|error| error.kind()));
            Ok::<_, HandlerError>(b"done".to_vec())
        }),
    )
    .start()
    .unwrap();
    let client = support::client();
    // Long enough that A surely takes the request well before it expires, even on a busy
    // machine; A holds it until the caller has given up.
    let error = client
        .request(&a_queue.name, b"5")
        .timeout(Duration::from_secs(2))
        .call()
        .unwrap_err();
    assert!(error.is_timeout(), "{error}");
    started.recv_timeout(TIMEOUT).expect("A took the request");
    drop(release);
    support::wait_until("A's handler ends", TIMEOUT, || {
        outcome.lock().unwrap().is_some()
    });
    assert_eq!(
        *outcome.lock().unwrap(),
        Some(Err(fib_rpc::ErrorKind::Timeout)),
        "the onward call inherits the passed deadline"
    );
    assert_eq!(
        b.stats().total(),
        0,
        "B computed nothing for a caller who left"
    );
    client.close().unwrap();
    a.shutdown().unwrap();
    b.shutdown().unwrap();
}

#[test]
fn higher_priorities_are_served_first_from_a_priority_queue() {
    let queue = TestQueue::new("priority");
    let order = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&order);
    let (started_sender, started) = crossbeam_channel::bounded(1);
    let (release, released) = crossbeam_channel::bounded::<()>(0);
    let config = support::server_config(&queue.name, 1)
        .queue_type(QueueType::Classic)
        .max_priority(9);
    let server = RpcServer::new(config, move |body: &[u8]| {
        if body == b"hold" {
            let _ = started_sender.send(());
            let _ = released.recv();
        } else {
            record.lock().unwrap().push(body.to_vec());
        }
        Ok::<_, HandlerError>(body.to_vec())
    })
    .start()
    .unwrap();
    let client = support::client();
    let held = client.send(&queue.name, b"hold").unwrap();
    started.recv_timeout(TIMEOUT).expect("the worker is held");
    let low: Vec<_> = (0..3)
        .map(|i| {
            client
                .request(&queue.name, format!("low-{i}").as_bytes())
                .priority(1)
                .send()
                .unwrap()
        })
        .collect();
    let high = client
        .request(&queue.name, b"high")
        .priority(8)
        .send()
        .unwrap();
    support::wait_until("four requests wait in the queue", TIMEOUT, || {
        queue.counts().0 == 4
    });
    drop(release);
    assert_eq!(held.wait().unwrap(), b"hold");
    assert_eq!(high.wait().unwrap(), b"high");
    for reply in low {
        reply.wait().unwrap();
    }
    assert_eq!(
        order.lock().unwrap()[0],
        b"high",
        "{:?}",
        order.lock().unwrap()
    );
    client.close().unwrap();
    server.shutdown().unwrap();
}
