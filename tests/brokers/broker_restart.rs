//! The broker restarts under a running server and client.
//!
//! The broker restarted is private node 1 of scripts/nodes.sh (started here if scripts/test.sh
//! has not), never the shared broker that the rest of the suite uses at the same time. The
//! tests stop it, so they run one at a time (a lock).

use fib_rpc::RpcClient;
use std::time::{Duration, Instant};
use support::logs::{capture_logs, logged};
use support::nodes::{private_nodes, PrivateNode};

/// (when, text) of the records logged since `since` by threads named `thread`, oldest first.
fn logged_by(thread: &str, since: Instant) -> Vec<(Instant, String)> {
    logged(since, Instant::now() + Duration::from_secs(1), |record| {
        record.thread == thread
    })
}

/// Starts the private node's application again even if the test fails half-way, so that the
/// node is left as it was found.
struct StoppedNode<'a>(&'a PrivateNode);

impl<'a> StoppedNode<'a> {
    fn stop(node: &'a PrivateNode) -> StoppedNode<'a> {
        node.stop_app();
        StoppedNode(node)
    }

    fn start(self) {
        let node = self.0;
        std::mem::forget(self);
        node.start_app();
    }
}

impl Drop for StoppedNode<'_> {
    fn drop(&mut self) {
        // No panic here: this runs while a failed assertion unwinds.
        let node = self.0;
        if let Err(error) = node.try_start_app() {
            eprintln!("could not start {} again: {error}", node.name);
        }
    }
}

#[test]
fn after_a_broker_restart_the_server_resumes_and_the_client_reconnects() {
    let _alone = support::nodes::disrupting();
    let nodes = private_nodes(1);
    let node = &nodes[0];
    // The node is deleted by scripts/nodes.sh stop, and the queue with it.
    let queue = format!("test-broker-restart-{}", uuid::Uuid::new_v4());
    let (server, gate) = support::start_gated_echo_server_at(&node.url(), &queue, 2);
    let client = RpcClient::connect(node.url()).expect("connect a client");
    let timeout = Duration::from_secs(5);
    assert_eq!(
        client
            .call_with_timeout(&queue, b"before", timeout)
            .unwrap(),
        b"before"
    );

    let in_flight = client
        .send_with_timeout(&queue, b"slow", Duration::from_secs(60))
        .unwrap();
    gate.started.recv_timeout(timeout).unwrap();
    let stopped_at = Instant::now();
    let stopped = StoppedNode::stop(node);
    let error = in_flight.wait().unwrap_err();
    gate.release();
    assert!(error.is_connection(), "{error}");
    assert!(
        error.to_string().contains("shutdown"),
        "the real cause is kept: {error}"
    );
    assert!(
        stopped_at.elapsed() < Duration::from_secs(10),
        "{:?}",
        stopped_at.elapsed()
    );
    stopped.start();
    let started_at = Instant::now();

    // The server reconnects by itself; until it consumes again, calls fail fast and clearly.
    let mut failures = Vec::new();
    let answer = loop {
        assert!(
            started_at.elapsed() < Duration::from_secs(60),
            "not served again within a minute: {failures:?}"
        );
        match client.call_with_timeout(&queue, b"after", timeout) {
            Ok(answer) => break answer,
            Err(error) => {
                assert!(
                    error.is_connection() || error.is_no_server(),
                    "unclear error: {error}"
                );
                failures.push(error.to_string());
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    assert_eq!(answer, b"after");
    eprintln!(
        "broker restart: in-flight call failed at once ({error}); served again {:?} after the node's application started, {} calls failed meanwhile",
        started_at.elapsed(),
        failures.len()
    );
    server.shutdown().unwrap();
}

/// The thread a server's supervisor runs on, which logs its losses and reconnections.
const SERVER_THREAD: &str = "fib-rpc-server";

/// The waits a server announced (`next try in …`) in `log`, with when each was announced.
fn backoffs(log: &[(Instant, String)]) -> Vec<(Instant, String)> {
    log.iter()
        .filter_map(|(at, text)| {
            let wait = text.split("next try in ").nth(1)?;
            Some((*at, wait.to_owned()))
        })
        .collect()
}

/// `text` as `Debug` prints a `Duration` ("100ms", "1.6s", "5s").
fn parse_wait(text: &str) -> Duration {
    match text.strip_suffix("ms") {
        Some(millis) => Duration::from_millis(millis.parse().unwrap()),
        None => Duration::from_secs_f64(text.strip_suffix('s').unwrap().parse().unwrap()),
    }
}

/// The backoff of a server whose broker is gone: 100 ms, doubling, at most 5 s.
const BACKOFF: [&str; 8] = [
    "100ms", "200ms", "400ms", "800ms", "1.6s", "3.2s", "5s", "5s",
];

#[test]
fn the_reconnect_backoff_doubles_to_five_seconds_and_starts_over_after_a_healthy_connection() {
    let _alone = support::nodes::disrupting();
    capture_logs();
    let nodes = private_nodes(1);
    let node = &nodes[0];
    let queue = format!("test-broker-backoff-{}", uuid::Uuid::new_v4());
    // The library's defaults: reconnect_initial 100 ms, reconnect_max 5 s.
    let config = support::server_config_at(&node.url(), &queue, 1);
    let server = fib_rpc::RpcServer::new(
        config,
        fib_rpc::services::fibonacci_handler(fib_rpc::services::DEFAULT_MAX_N),
    )
    .start()
    .expect("start a server on the private node");
    let client = RpcClient::connect(node.url()).expect("connect a client");
    let timeout = Duration::from_secs(10);
    assert_eq!(
        client.call_with_timeout(&queue, b"10", timeout).unwrap(),
        b"55"
    );

    // Down long enough for the wait to reach its cap, and stay there.
    let first_stop = Instant::now();
    let stopped = StoppedNode::stop(node);
    support::wait_until("eight failed attempts", Duration::from_secs(90), || {
        backoffs(&logged_by(SERVER_THREAD, first_stop)).len() >= BACKOFF.len()
    });
    stopped.start();
    support::wait_until("the server is back", Duration::from_secs(60), || {
        logged_by(SERVER_THREAD, first_stop)
            .iter()
            .any(|(_, text)| text.starts_with("reconnected to "))
    });
    let first = logged_by(SERVER_THREAD, first_stop);
    let waits = backoffs(&first);
    let announced: Vec<&str> = waits.iter().map(|(_, wait)| wait.as_str()).collect();
    assert_eq!(
        announced[..BACKOFF.len()],
        BACKOFF,
        "doubling from 100 ms, capped at 5 s: {first:?}"
    );
    assert!(
        announced[BACKOFF.len()..].iter().all(|wait| *wait == "5s"),
        "capped at 5 s: {announced:?}"
    );
    // Each attempt came after the wait announced before it (a refused connection fails at
    // once, so never much later either).
    for pair in waits.windows(2) {
        let (announced_at, wait) = (&pair[0].0, parse_wait(&pair[0].1));
        let gap = pair[1].0 - *announced_at;
        assert!(
            gap >= wait && gap < wait + Duration::from_secs(2),
            "announced {wait:?}, tried again after {gap:?}"
        );
    }
    assert_eq!(
        client.call_with_timeout(&queue, b"11", timeout).unwrap(),
        b"89",
        "served again"
    );

    // After a healthy connection, the next loss starts the backoff over.
    let second_stop = Instant::now();
    let stopped = StoppedNode::stop(node);
    support::wait_until("two failed attempts", Duration::from_secs(60), || {
        backoffs(&logged_by(SERVER_THREAD, second_stop)).len() >= 2
    });
    stopped.start();
    let second = backoffs(&logged_by(SERVER_THREAD, second_stop));
    let announced: Vec<&str> = second.iter().map(|(_, wait)| wait.as_str()).collect();
    assert_eq!(
        announced[..2],
        ["100ms", "200ms"],
        "the backoff started over: {second:?}"
    );
    eprintln!(
        "backoff while the node was down: {:?}; after the restart: {announced:?}",
        waits
            .iter()
            .map(|(_, wait)| wait.as_str())
            .collect::<Vec<_>>()
    );
    support::wait_until("the server is back again", Duration::from_secs(60), || {
        logged_by(SERVER_THREAD, second_stop)
            .iter()
            .any(|(_, text)| text.starts_with("reconnected to "))
    });
    assert_eq!(
        client.call_with_timeout(&queue, b"12", timeout).unwrap(),
        b"144"
    );
    server.shutdown().unwrap();
}
