//! Operating fib-server: real HTTP requests against its metrics and health endpoints while it
//! serves, loses its broker, drains, and takes bad HTTP.

use amiquip::{AmqpProperties, AmqpValue, FieldTable};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use support::processes::{get, requests_in_hand, sample, server_with_metrics};
use support::proxy::Proxy;
use support::{RawPeer, TestQueue};

/// The first line of a response, read byte by byte up to its end.
fn status_line(stream: &mut TcpStream) -> String {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => line.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&line).into_owned()
}

#[test]
fn counters_move_by_exactly_the_calls_made_by_outcome() {
    let queue = TestQueue::new("ops-counts");
    let (_server, address) = server_with_metrics(
        &support::amqp_url(),
        &queue.name,
        &["--max-n", "50", "--workers", "2"],
    );
    let client = support::client();
    for n in [5, 6, 7] {
        client
            .call_with_timeout(
                &queue.name,
                n.to_string().as_bytes(),
                Duration::from_secs(5),
            )
            .unwrap();
    }
    for n in [51, 52] {
        assert!(client
            .call_with_timeout(
                &queue.name,
                n.to_string().as_bytes(),
                Duration::from_secs(5)
            )
            .unwrap_err()
            .is_remote());
    }
    let peer = RawPeer::connect();
    let mut headers = FieldTable::new();
    headers.insert(
        fib_rpc::protocol::DEADLINE_HEADER.into(),
        AmqpValue::LongLongInt(1),
    );
    peer.publish(
        &queue.name,
        b"8",
        peer.request_properties("late").with_headers(headers),
    );
    peer.publish(&queue.name, b"9", AmqpProperties::default());
    let series = |outcome: &str| {
        format!(
            "fib_rpc_requests_total{{queue=\"{}\",outcome=\"{outcome}\"}}",
            queue.name
        )
    };
    support::wait_until("every request is counted", Duration::from_secs(10), || {
        let (_, metrics) = get(&address, "/metrics");
        sample(&metrics, &series("expired")) + sample(&metrics, &series("unanswerable")) == 2.0
    });
    let (status, metrics) = get(&address, "/metrics");
    assert_eq!(status, 200);
    assert_eq!(sample(&metrics, &series("answered")), 3.0);
    assert_eq!(sample(&metrics, &series("error_reply")), 2.0);
    assert_eq!(sample(&metrics, &series("expired")), 1.0);
    assert_eq!(sample(&metrics, &series("unanswerable")), 1.0);
    let histogram = format!(
        "fib_rpc_handler_duration_seconds_count{{queue=\"{}\"}}",
        queue.name
    );
    assert_eq!(
        sample(&metrics, &histogram),
        5.0,
        "the handler saw five requests"
    );
    let in_bucket = format!(
        "fib_rpc_handler_duration_seconds_bucket{{le=\"+Inf\",queue=\"{}\"}}",
        queue.name
    );
    assert_eq!(sample(&metrics, &in_bucket), 5.0);
    assert_eq!(
        sample(
            &metrics,
            &format!("fib_rpc_consuming{{queue=\"{}\"}}", queue.name)
        ),
        1.0
    );
    assert!(
        metrics.contains("fib_rpc_build_info{version=\""),
        "{metrics}"
    );
    assert_eq!(get(&address, "/healthz").0, 200);
    assert_eq!(get(&address, "/readyz").0, 200);
    eprintln!("/metrics sample:\n{metrics}");
}

#[test]
fn readiness_follows_the_broker_connection() {
    let queue = TestQueue::new("ops-ready");
    // Closed from the broker's side: the server reconnects and counts it.
    let (_server, address) = server_with_metrics(&support::amqp_url(), &queue.name, &[]);
    assert_eq!(
        support::close_broker_connections(&format!("fib-rpc server on {}", queue.name)),
        1
    );
    let reconnects = format!("fib_rpc_reconnects_total{{queue=\"{}\"}}", queue.name);
    support::wait_until("reconnected", Duration::from_secs(20), || {
        sample(&get(&address, "/metrics").1, &reconnects) == 1.0
    });
    assert_eq!(get(&address, "/readyz").0, 200);

    // Cut off: not ready for as long as the broker cannot be reached, ready again after.
    let cut = TestQueue::new("ops-cut");
    let proxy = Proxy::start(&support::broker_address());
    let url = proxy.url(&support::amqp_url()) + "?heartbeat=1";
    let (_cut_server, cut_address) = server_with_metrics(&url, &cut.name, &[]);
    assert_eq!(get(&cut_address, "/readyz").0, 200);
    proxy.freeze();
    support::wait_until("not ready", Duration::from_secs(20), || {
        get(&cut_address, "/readyz").0 == 503
    });
    assert_eq!(get(&cut_address, "/healthz").0, 200, "alive all the same");
    proxy.resume();
    support::wait_until("ready again", Duration::from_secs(30), || {
        get(&cut_address, "/readyz").0 == 200
    });
}

#[test]
fn a_drain_is_not_ready_and_its_timeout_sets_the_exit_code() {
    let queue = TestQueue::new("ops-drain");
    let (mut server, address) = server_with_metrics(
        &support::amqp_url(),
        &queue.name,
        &[
            "--workers",
            "1",
            "--max-n",
            "100000000",
            "--drain-timeout",
            "1",
        ],
    );
    let client = support::client();
    // fib(3000000) takes seconds: certainly still in hand when the stop comes.
    let slow = client
        .send_with_timeout(&queue.name, b"3000000", Duration::from_secs(60))
        .unwrap();
    support::wait_until("the request is in hand", Duration::from_secs(10), || {
        requests_in_hand(&address, &queue.name) == 1.0
    });
    // The drain timeout (1 s), then a close on a healthy connection.
    let code = support::within(Duration::from_secs(1), "a stop with a 1 s drain", || {
        server.signal("TERM");
        support::wait_until("not ready while draining", Duration::from_secs(10), || {
            get(&address, "/readyz").0 == 503
        });
        server.wait_exit(Duration::from_secs(30))
    });
    assert_eq!(code, Some(75), "the drain timed out");
    support::wait_until(
        "the request is back in the queue",
        Duration::from_secs(10),
        || queue.counts() == (1, 0),
    );
    drop(slow);
}

#[test]
fn bad_http_does_not_disturb_serving() {
    let queue = TestQueue::new("ops-bad-http");
    let (_server, address) = server_with_metrics(&support::amqp_url(), &queue.name, &[]);
    for method in ["POST", "DELETE", "PUT"] {
        let mut stream = TcpStream::connect(&address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        write!(
            stream,
            "{method} /metrics HTTP/1.0\r\nContent-Length: 0\r\n\r\n"
        )
        .unwrap();
        // The status line only: tiny_http may keep the connection open after answering.
        let response = status_line(&mut stream);
        assert!(
            response.starts_with("HTTP/1.0 405") || response.starts_with("HTTP/1.1 405"),
            "{method}: {response}"
        );
    }
    for _ in 0..5 {
        let mut stream = TcpStream::connect(&address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let huge = "x".repeat(256 * 1024);
        let _ = write!(stream, "GET /metrics HTTP/1.0\r\nX-Huge: {huge}\r\n\r\n");
        let _ = stream.read_to_end(&mut Vec::new());
    }
    let _ = TcpStream::connect(&address).and_then(|mut s| s.write_all(b"\x00\x01garbage\r\n\r\n"));
    // Half-sent requests held open (slowloris), bounded in count, while RPC goes on.
    let held: Vec<TcpStream> = (0..30)
        .map(|_| {
            let mut stream = TcpStream::connect(&address).unwrap();
            stream
                .write_all(b"GET /metrics HTTP/1.1\r\nX-Slow: ")
                .unwrap();
            stream
        })
        .collect();
    let client = support::fib_client(&queue.name, Duration::from_secs(5));
    for n in 0..50u64 {
        assert_eq!(client.call(n).unwrap(), fib_rpc::services::fibonacci(n));
    }
    // tiny_http's pool can leave a new connection queued behind held ones: once they go,
    // the endpoints answer again.
    drop(held);
    support::wait_until(
        "the endpoints answer again",
        Duration::from_secs(30),
        || get(&address, "/readyz").0 == 200,
    );
}

#[test]
fn ctrl_c_drains_the_request_in_hand_and_exits_0_as_sigterm_does() {
    let queue = TestQueue::new("ops-sigint");
    let (mut server, address) = server_with_metrics(
        &support::amqp_url(),
        &queue.name,
        &["--workers", "1", "--max-n", "100000000"],
    );
    let client = support::client();
    // fib(2000000) takes seconds: still in hand when the signal comes, and after it.
    let slow = client
        .send_with_timeout(&queue.name, b"2000000", Duration::from_secs(120))
        .unwrap();
    support::wait_until("the request is in hand", Duration::from_secs(10), || {
        requests_in_hand(&address, &queue.name) == 1.0
    });
    server.signal("INT");
    support::wait_until("draining", Duration::from_secs(10), || {
        get(&address, "/readyz").0 == 503
    });
    assert_eq!(
        requests_in_hand(&address, &queue.name),
        1.0,
        "the request is still in hand while the server drains"
    );
    // /readyz turns 503 before the drain begins and logs it; the log is read by a thread.
    support::wait_until("the drain is logged", Duration::from_secs(10), || {
        server.log_lines_with("finishing requests in hand") == 1
    });
    assert_eq!(server.wait_exit(Duration::from_secs(60)), Some(0));
    assert_eq!(server.log_lines_with("finishing requests in hand"), 1);
    assert_eq!(
        slow.wait().expect("answered before the server exited"),
        fib_rpc::services::fibonacci(2_000_000)
            .to_string()
            .into_bytes()
    );
    assert_eq!(queue.counts(), (0, 0), "answered and acked, nothing left");
}

#[test]
fn a_request_in_hand_when_the_connection_is_lost_goes_back_to_the_queue_and_is_answered() {
    let queue = TestQueue::new("ops-lost-in-hand");
    let (server, address) = server_with_metrics(
        &support::amqp_url(),
        &queue.name,
        &["--workers", "1", "--max-n", "100000000"],
    );
    let client = support::client();
    // fib(3000000) takes seconds: still in hand when the connection goes.
    let slow = client
        .send_with_timeout(&queue.name, b"3000000", Duration::from_secs(120))
        .unwrap();
    support::wait_until("the request is in hand", Duration::from_secs(10), || {
        requests_in_hand(&address, &queue.name) == 1.0
    });
    assert_eq!(
        support::close_broker_connections(&format!("fib-rpc server on {}", queue.name)),
        1
    );
    // Still being computed: the connection that could have acked it is gone.
    assert_eq!(
        requests_in_hand(&address, &queue.name),
        1.0,
        "the request was in hand, unanswered, when the connection went"
    );
    // The broker has it again, ready for whoever consumes next (this server, once its
    // handler is done and it has reconnected).
    support::wait_until(
        "the request is back in the queue",
        Duration::from_secs(10),
        || queue.counts() == (1, 0),
    );
    let reconnects = format!("fib_rpc_reconnects_total{{queue=\"{}\"}}", queue.name);
    support::wait_until("reconnected", Duration::from_secs(60), || {
        sample(&get(&address, "/metrics").1, &reconnects) == 1.0
    });
    let reply = slow.wait().expect("answered after the reconnect");
    assert_eq!(
        reply,
        fib_rpc::services::fibonacci(3_000_000)
            .to_string()
            .into_bytes()
    );
    assert_eq!(server.log_lines_with("connection lost"), 1);
    assert_eq!(queue.counts(), (0, 1), "acked at last; the server consumes");
}
