//! A broken network, for real: a loopback proxy between fib-rpc and the broker freezes one or
//! both directions while the sockets stay open, as a silent cut does. Every call, send and
//! close keeps its timeout; every loss says what happened.

use fib_rpc::{ClientConfig, Error, RpcClient};
use std::time::Duration;
use support::processes::ServerProcess;
use support::proxy::Proxy;
use support::{within, TestQueue};

fn proxy() -> Proxy {
    Proxy::start(&support::broker_address())
}

fn client_through(proxy: &Proxy, query: &str) -> RpcClient {
    let url = proxy.url(&support::amqp_url()) + query;
    let mut config = ClientConfig::new(url);
    let connection = config
        .get_connection()
        .clone()
        .close_timeout(Duration::from_secs(1));
    config = config.connection(connection);
    RpcClient::connect(config).expect("connect through the proxy")
}

#[test]
fn in_a_silent_cut_a_call_keeps_its_timeout_check_reconnect_and_all() {
    let checked = TestQueue::new("cut-checked");
    let unchecked = TestQueue::new("cut-unchecked");
    let _first = support::start_fib_server(&checked.name, 1);
    let _second = support::start_fib_server(&unchecked.name, 1);
    let proxy = proxy();
    let client = client_through(&proxy, "");
    let timeout = Duration::from_secs(1);
    assert_eq!(
        client
            .call_with_timeout(&checked.name, b"10", timeout)
            .unwrap(),
        b"55"
    );

    proxy.freeze();
    // The no-server check of a queue not seen yet asks the broker, which never answers.
    let error = within(timeout, "call needing the no-server check", || {
        client
            .call_with_timeout(&unchecked.name, b"10", timeout)
            .unwrap_err()
    });
    assert!(error.is_timeout(), "{error}");
    // The connection was dropped; reconnecting through the frozen network cannot finish.
    let error = within(timeout, "call needing a reconnect", || {
        client
            .call_with_timeout(&checked.name, b"10", timeout)
            .unwrap_err()
    });
    assert!(error.is_timeout(), "{error}");

    proxy.resume();
    assert_eq!(
        client
            .call_with_timeout(&checked.name, b"11", Duration::from_secs(10))
            .unwrap(),
        b"89",
        "served again once the network is back"
    );
}

#[test]
fn a_send_never_blocks_past_its_timeout_when_the_broker_stops_reading() {
    let queue = TestQueue::new("cut-send");
    let _server = support::start_fib_server(&queue.name, 1);
    let proxy = proxy();
    let client = client_through(&proxy, "");
    assert_eq!(
        client
            .call_with_timeout(&queue.name, b"3", Duration::from_secs(5))
            .unwrap(),
        b"2"
    );
    proxy.freeze_to_upstream();
    // Requests pile up in the socket's and the driver's buffers until the driver stops taking
    // more (past 16 MB); that send must still return by its deadline.
    let body = vec![b'7'; 1024 * 1024];
    let timeout = Duration::from_secs(2);
    let mut sent = 0;
    let error = loop {
        assert!(sent < 200, "200 MB were buffered without a failure");
        match within(timeout, "send into a frozen network", || {
            client.send_with_timeout(&queue.name, &body, timeout)
        }) {
            Ok(pending) => {
                sent += 1;
                drop(pending);
            }
            Err(error) => break error,
        }
    };
    eprintln!("{sent} requests of 1 MB buffered before a send timed out");
    assert!(error.is_timeout(), "{error}");
    proxy.resume();
}

#[test]
fn close_during_a_silent_cut_takes_the_close_timeout() {
    let proxy = proxy();
    let client = client_through(&proxy, "");
    proxy.freeze();
    let closed = within(Duration::from_secs(1), "close in a cut", || client.close());
    assert!(closed.is_err(), "the broker never confirmed the close");
}

#[test]
fn a_silent_cut_is_reported_as_missed_heartbeats() {
    let queue = TestQueue::new("cut-heartbeat");
    let (_server, gate) = support::start_gated_echo_server(&queue.name, 1);
    let proxy = proxy();
    let client = client_through(&proxy, "?heartbeat=1");
    let pending = client
        .send_with_timeout(&queue.name, b"slow", Duration::from_secs(60))
        .unwrap();
    gate.started.recv_timeout(Duration::from_secs(10)).unwrap();
    proxy.freeze();
    let error = within(Duration::from_secs(4), "noticing the cut", || {
        pending.wait().unwrap_err()
    });
    gate.release();
    assert!(matches!(error, Error::ConnectionLost(_)), "{error}");
    let text = error.to_string();
    assert!(text.contains("missed heartbeats"), "{text}");
    assert!(text.contains("1s"), "the interval is named: {text}");
}

#[test]
fn heartbeat_zero_is_refused_with_a_reason() {
    let url = format!("{}?heartbeat=0", support::amqp_url());
    let error = RpcClient::connect(&url).expect_err("refused");
    assert!(matches!(error, Error::Config(_)), "{error}");
    assert!(error.to_string().contains("heartbeat"), "{error}");
}

#[test]
fn fib_server_stops_within_its_close_timeout_during_a_cut() {
    let queue = TestQueue::new("cut-sigterm");
    let proxy = proxy();
    let url = proxy.url(&support::amqp_url());
    let mut server = ServerProcess::start_with_url(
        &url,
        &queue.name,
        &["--workers", "2", "--close-timeout", "1"],
    );
    proxy.freeze();
    server.signal("TERM");
    let code = within(
        Duration::from_secs(1),
        "fib-server stopping in a cut",
        || server.wait_exit(Duration::from_secs(30)),
    );
    assert_eq!(code, Some(0));
}

#[test]
fn a_reconnect_in_progress_does_not_hold_other_calls_past_their_timeouts() {
    let queue = TestQueue::new("cut-reconnect-wait");
    let _server = support::start_fib_server(&queue.name, 1);
    let proxy = proxy();
    let client = std::sync::Arc::new(client_through(&proxy, ""));
    assert_eq!(
        client
            .call_with_timeout(&queue.name, b"6", Duration::from_secs(5))
            .unwrap(),
        b"8"
    );
    proxy.freeze();
    // A call whose no-server check cannot be answered costs the connection.
    let other = TestQueue::new("cut-reconnect-other");
    let _other_server = support::start_fib_server(&other.name, 1);
    assert!(client
        .call_with_timeout(&other.name, b"1", Duration::from_secs(1))
        .unwrap_err()
        .is_timeout());
    // One caller reconnects into the frozen network, for as long as its 5 s allow...
    let reconnecting = {
        let (client, queue) = (std::sync::Arc::clone(&client), queue.name.clone());
        std::thread::spawn(move || client.call_with_timeout(&queue, b"2", Duration::from_secs(5)))
    };
    support::wait_until(
        "the reconnect is under way",
        Duration::from_secs(10),
        || proxy.connections() >= 2,
    );
    // ...while another, with 300 ms, gives up on time instead of waiting behind it.
    let error = within(
        Duration::from_millis(300),
        "a call behind a reconnect",
        || {
            client
                .call_with_timeout(&queue.name, b"3", Duration::from_millis(300))
                .unwrap_err()
        },
    );
    assert!(error.is_timeout(), "{error}");
    proxy.resume();
    let _ = reconnecting.join().unwrap();
}
