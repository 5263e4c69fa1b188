//! The broker restarts under a running server and client.
//!
//! This stops and starts the broker's application, which every connection on the machine
//! notices, so it is a serial step: it is the only test in this binary, and `cargo test` runs
//! test binaries one at a time.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};
use support::TestQueue;

fn rabbitmqctl(action: &str) {
    let status = Command::new("rabbitmqctl")
        .args(["-q", action])
        .status()
        .expect("rabbitmqctl must be installed for the broker restart test");
    assert!(status.success(), "rabbitmqctl {action} failed");
}

/// Starts the broker's application again even if the test fails half-way, so that the rest of
/// the suite finds a broker.
struct StoppedBroker;

impl StoppedBroker {
    fn stop() -> StoppedBroker {
        rabbitmqctl("stop_app");
        StoppedBroker
    }

    fn start(self) {
        std::mem::forget(self);
        rabbitmqctl("start_app");
    }
}

impl Drop for StoppedBroker {
    fn drop(&mut self) {
        rabbitmqctl("start_app");
    }
}

#[test]
fn after_a_broker_restart_the_server_resumes_and_the_client_reconnects() {
    let queue = TestQueue::new("broker-restart");
    let (server, gate) = support::start_gated_echo_server(&queue.name, 2);
    let client = support::client();
    let timeout = Duration::from_secs(5);
    assert_eq!(
        client.call(&queue.name, b"before", timeout).unwrap(),
        b"before"
    );

    let in_flight = client
        .send(&queue.name, b"slow", Duration::from_secs(60))
        .unwrap();
    gate.started.recv_timeout(timeout).unwrap();
    let stopped_at = Instant::now();
    let broker = StoppedBroker::stop();
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
    broker.start();
    let started_at = Instant::now();

    // The server reconnects by itself; until it consumes again, calls fail fast and clearly.
    let mut failures = Vec::new();
    let answer = loop {
        assert!(
            started_at.elapsed() < Duration::from_secs(60),
            "not served again within a minute: {failures:?}"
        );
        match client.call(&queue.name, b"after", timeout) {
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
        "broker restart: in-flight call failed at once ({error}); served again {:?} after start_app, {} calls failed meanwhile",
        started_at.elapsed(),
        failures.len()
    );
    server.shutdown().unwrap();
}
