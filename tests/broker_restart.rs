//! The broker restarts under a running server and client.
//!
//! The broker restarted is private node 1 of scripts/nodes.sh (started here if scripts/test.sh
//! has not), never the shared broker that the rest of the suite uses at the same time.

mod support;

use fib_rpc::RpcClient;
use std::time::{Duration, Instant};
use support::nodes::{private_nodes, PrivateNode};

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
    let nodes = private_nodes(1);
    let node = &nodes[0];
    // The node is deleted by scripts/nodes.sh stop, and the queue with it.
    let queue = format!("test-broker-restart-{}", uuid::Uuid::new_v4());
    let (server, gate) = support::start_gated_echo_server_at(&node.url(), &queue, 2);
    let client = RpcClient::connect(&node.url()).expect("connect a client");
    let timeout = Duration::from_secs(5);
    assert_eq!(client.call(&queue, b"before", timeout).unwrap(), b"before");

    let in_flight = client
        .send(&queue, b"slow", Duration::from_secs(60))
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
        match client.call(&queue, b"after", timeout) {
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
