//! Failover on a real 3-node RabbitMQ cluster of our own (scripts/nodes.sh), with a quorum
//! request queue replicated on every node: nodes are stopped under load, one, two, and one
//! after another, and every call gets its right answer or a typed error within its timeout.
//!
//! These tests stop nodes, so they run one at a time (a lock), and only on the private nodes.

mod support;

use fib_rpc::services::{fibonacci, fibonacci_handler, DEFAULT_MAX_N};
use fib_rpc::{ClientConfig, Error, QueueType, RpcClient, RpcServer, ServerConfig, ServerHandle};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use support::nodes::{private_nodes, PrivateNode};

/// One cluster test at a time: each stops nodes the others would need.
fn exclusive() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The three nodes, every one of them running its application.
fn cluster() -> Vec<PrivateNode> {
    let nodes = private_nodes(3);
    for node in &nodes {
        node.start_app();
    }
    nodes
}

/// The nodes' URLs, starting at node `first` and going round.
fn urls(nodes: &[PrivateNode], first: usize) -> String {
    (0..nodes.len())
        .map(|offset| nodes[(first + offset) % nodes.len()].url())
        .collect::<Vec<_>>()
        .join(",")
}

/// Starts the node's application again when dropped, whatever the test did meanwhile.
struct Stopped<'a>(&'a PrivateNode);

impl<'a> Stopped<'a> {
    fn node(node: &'a PrivateNode) -> Stopped<'a> {
        node.stop_app();
        Stopped(node)
    }
}

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        let node = self.0;
        if let Err(error) = node.try_start_app() {
            eprintln!("could not start {} again: {error}", node.name);
        }
    }
}

fn fib_server(urls: &str, queue: &str, workers: usize) -> ServerHandle {
    let mut config = ServerConfig::new(urls, queue);
    config.workers = workers;
    config.queue_type = QueueType::Quorum;
    RpcServer::new(config, fibonacci_handler(DEFAULT_MAX_N))
        .start()
        .expect("start a server on the cluster")
}

fn client(urls: &str, require_consumer: bool) -> RpcClient {
    let mut config = ClientConfig::new(urls);
    config.require_consumer = require_consumer;
    RpcClient::with_config(config).expect("connect a client to the cluster")
}

/// How one call of a load ended, and when.
struct Outcome {
    ended: Instant,
    took: Duration,
    error: Option<Error>,
}

/// Calls from several threads until stopped, recording every outcome; a wrong answer fails
/// the test at once.
struct Load {
    stop: Arc<AtomicBool>,
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

const CALL_TIMEOUT: Duration = Duration::from_secs(2);

impl Load {
    fn start(clients: &[Arc<RpcClient>], threads_per_client: usize, queue: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let mut threads = Vec::new();
        for (c, client) in clients.iter().enumerate() {
            for t in 0..threads_per_client {
                let (client, stop, outcomes) =
                    (Arc::clone(client), Arc::clone(&stop), Arc::clone(&outcomes));
                let queue = queue.to_owned();
                threads.push(std::thread::spawn(move || {
                    let mut n = (c * 31 + t * 7) as u64;
                    while !stop.load(Ordering::Relaxed) {
                        n = (n + 1) % 500;
                        let started = Instant::now();
                        let result = client.call(&queue, n.to_string().as_bytes(), CALL_TIMEOUT);
                        let took = started.elapsed();
                        let error = match result {
                            Ok(body) => {
                                assert_eq!(body, fibonacci(n).to_string().into_bytes(), "fib({n})");
                                None
                            }
                            Err(error) => Some(error),
                        };
                        outcomes.lock().unwrap().push(Outcome {
                            ended: Instant::now(),
                            took,
                            error,
                        });
                    }
                }));
            }
        }
        Load {
            stop,
            outcomes,
            threads,
        }
    }

    fn answered_since(&self, since: Instant) -> usize {
        let outcomes = self.outcomes.lock().unwrap();
        outcomes
            .iter()
            .filter(|o| o.error.is_none() && o.ended > since)
            .count()
    }

    /// Waits until `count` calls that ended after `since` were answered.
    fn wait_answered(&self, since: Instant, count: usize, within: Duration) {
        support::wait_until(&format!("{count} calls answered"), within, || {
            self.answered_since(since) >= count
        });
    }

    fn finish(self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            thread.join().expect("a load thread panicked");
        }
        Arc::try_unwrap(self.outcomes)
            .ok()
            .expect("every thread joined")
            .into_inner()
            .unwrap()
    }
}

/// From the first failed call to the first answered call after it, among calls that ended
/// between `since` and `until`; zero if none failed.
fn failover_window(outcomes: &[Outcome], since: Instant, until: Instant) -> Duration {
    let mut after: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.ended > since && o.ended <= until)
        .collect();
    after.sort_by_key(|o| o.ended);
    let Some(first_failure) = after.iter().find(|o| o.error.is_some()) else {
        return Duration::ZERO;
    };
    let failed_at = first_failure.ended - first_failure.took;
    let served_again = after
        .iter()
        .filter(|o| o.error.is_none() && o.ended > first_failure.ended)
        .map(|o| o.ended)
        .min()
        .expect("served again after the failures");
    served_again - failed_at
}

/// Every error is typed and came within its timeout (plus slack for a busy machine).
fn check_errors(outcomes: &[Outcome]) -> usize {
    let mut failed = 0;
    for outcome in outcomes {
        if let Some(error) = &outcome.error {
            failed += 1;
            assert!(
                error.is_timeout() || error.is_no_server() || error.is_connection(),
                "unclear error: {error}"
            );
            assert!(
                outcome.took < CALL_TIMEOUT + Duration::from_secs(2),
                "a call took {:?}: {error}",
                outcome.took
            );
        }
    }
    failed
}

#[test]
fn stopping_the_servers_node_under_load_fails_over_to_the_next() {
    let _one_at_a_time = exclusive();
    let nodes = cluster();
    let queue = format!("test-cluster-failover-{}", uuid::Uuid::new_v4());
    let server = fib_server(&urls(&nodes, 0), &queue, 2);
    let clients = [
        Arc::new(client(&urls(&nodes, 1), true)),
        Arc::new(client(&urls(&nodes, 2), true)),
    ];
    let load = Load::start(&clients, 4, &queue);
    let started = Instant::now();
    load.wait_answered(started, 200, Duration::from_secs(60));
    let stopped_at = Instant::now();
    let stopped = Stopped::node(&nodes[0]);
    load.wait_answered(Instant::now(), 200, Duration::from_secs(60));
    drop(stopped);
    let outcomes = load.finish();
    let failed = check_errors(&outcomes);
    let window = failover_window(&outcomes, stopped_at, Instant::now());
    eprintln!(
        "server's node stopped: {} calls, {failed} failed with typed errors, failover window {window:?}",
        outcomes.len()
    );
    assert!(window < Duration::from_secs(3), "failover took {window:?}");
    support::wait_until("nothing left in the queue", Duration::from_secs(30), || {
        nodes[1].messages(&queue) == Some(0)
    });
    server.shutdown().unwrap();
}

#[test]
fn requests_queued_before_the_leader_node_stops_are_answered_after_the_election() {
    let _one_at_a_time = exclusive();
    let nodes = cluster();
    let queue = format!("test-cluster-leader-{}", uuid::Uuid::new_v4());
    support::declare_at(&nodes[0].url(), &queue, QueueType::Quorum, true);
    let leader = nodes[0]
        .queue_leader(&queue)
        .expect("the queue has a leader");
    let leader_index = nodes.iter().position(|node| node.name == leader).unwrap();
    let other = (leader_index + 1) % 3;
    let sender = client(&nodes[other].url(), false);
    let pending: Vec<_> = (0..20u64)
        .map(|n| {
            let body = n.to_string();
            (
                n,
                sender
                    .send(&queue, body.as_bytes(), Duration::from_secs(60))
                    .unwrap(),
            )
        })
        .collect();
    support::wait_until("20 requests queued", Duration::from_secs(20), || {
        nodes[other].messages(&queue) == Some(20)
    });
    let stopped = Stopped::node(&nodes[leader_index]);
    let server_node = (leader_index + 2) % 3;
    let server = fib_server(&nodes[server_node].url(), &queue, 1);
    for (n, reply) in pending {
        assert_eq!(
            reply.wait().expect("answered after the election"),
            fibonacci(n).to_string().into_bytes()
        );
    }
    eprintln!("leader {leader} stopped with 20 requests queued: all 20 answered");
    server.shutdown().unwrap();
    drop(stopped);
}

#[test]
fn without_a_majority_calls_fail_in_time_and_service_resumes_by_itself() {
    let _one_at_a_time = exclusive();
    let nodes = cluster();
    let queue = format!("test-cluster-majority-{}", uuid::Uuid::new_v4());
    let survivor = &nodes[2];
    let server = fib_server(&survivor.url(), &queue, 1);
    let client = client(&survivor.url(), true);
    assert!(client.call(&queue, b"10", CALL_TIMEOUT).is_ok());
    let first = Stopped::node(&nodes[0]);
    let second = Stopped::node(&nodes[1]);
    let mut outcomes = Vec::new();
    for n in 0..3u64 {
        let started = Instant::now();
        let result = client.call(&queue, n.to_string().as_bytes(), CALL_TIMEOUT);
        outcomes.push(Outcome {
            ended: Instant::now(),
            took: started.elapsed(),
            error: result.err(),
        });
    }
    let failed = check_errors(&outcomes);
    eprintln!(
        "majority lost: {failed} of 3 calls failed with typed errors, each within its timeout"
    );
    drop((first, second));
    let back = Instant::now();
    support::wait_until("served again", Duration::from_secs(60), || {
        client.call(&queue, b"12", CALL_TIMEOUT).is_ok()
    });
    eprintln!(
        "majority back: served again {:?} after the nodes started",
        back.elapsed()
    );
    server.shutdown().unwrap();
}

#[test]
fn a_rolling_restart_under_load_keeps_the_service_up() {
    let _one_at_a_time = exclusive();
    let nodes = cluster();
    let queue = format!("test-cluster-rolling-{}", uuid::Uuid::new_v4());
    let server = fib_server(&urls(&nodes, 0), &queue, 2);
    let clients = [
        Arc::new(client(&urls(&nodes, 1), true)),
        Arc::new(client(&urls(&nodes, 2), true)),
    ];
    let load = Load::start(&clients, 2, &queue);
    load.wait_answered(Instant::now(), 100, Duration::from_secs(60));
    let mut windows = Vec::new();
    for node in &nodes {
        let stopped_at = Instant::now();
        let stopped = Stopped::node(node);
        load.wait_answered(Instant::now(), 100, Duration::from_secs(60));
        drop(stopped);
        support::wait_until("the node is back", Duration::from_secs(60), || {
            node.messages(&queue).is_some()
        });
        load.wait_answered(Instant::now(), 100, Duration::from_secs(60));
        windows.push((node.name.clone(), stopped_at));
    }
    let outcomes = load.finish();
    let failed = check_errors(&outcomes);
    let ends: Vec<Instant> = windows
        .iter()
        .skip(1)
        .map(|(_, since)| *since)
        .chain([Instant::now()])
        .collect();
    let measured: Vec<String> = windows
        .iter()
        .zip(ends)
        .map(|((name, since), until)| {
            format!("{name}: {:?}", failover_window(&outcomes, *since, until))
        })
        .collect();
    eprintln!(
        "rolling restart: {} calls, {failed} failed with typed errors; windows {measured:?}",
        outcomes.len()
    );
    server.shutdown().unwrap();
}
