//! Many calls in flight on one client: every answer reaches its own caller, nothing leaks.

use fib_rpc::services::fibonacci;
use fib_rpc::{ClientConfig, FibonacciRpcClient, ReplyMode, RpcClient};
use std::sync::{Arc, Barrier};
use std::time::Duration;
use support::TestQueue;

const TIMEOUT: Duration = Duration::from_secs(30);

fn client_with(reply_mode: ReplyMode, require_consumer: bool) -> RpcClient {
    let mut config = support::client_config();
    config = config.reply_mode(reply_mode);
    config = config.require_consumer(require_consumer);
    RpcClient::connect(config).expect("connect a client")
}

fn hammer(client: FibonacciRpcClient, threads: u64, calls: u64) {
    let client = Arc::new(client);
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let client = Arc::clone(&client);
            std::thread::spawn(move || {
                for i in 0..calls {
                    let n = (t * 31 + i * 7) % 400;
                    assert_eq!(
                        client.call(n).unwrap(),
                        fibonacci(n),
                        "fib({n}) on thread {t}"
                    );
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }
    assert_eq!(client.rpc().pending_calls(), 0);
}

#[test]
fn sixteen_threads_share_one_client() {
    let queue = TestQueue::new("sixteen");
    let server = support::start_fib_server(&queue.name, 2);
    let client = FibonacciRpcClient::new(client_with(ReplyMode::CallbackQueue, true))
        .with_queue(&queue.name)
        .with_timeout(TIMEOUT);
    hammer(client, 16, 500);
    assert_eq!(server.shutdown().unwrap().answered, 8000);
}

/// A thread reads its own replies when it has a callback queue of its own: a client gets one
/// per calling thread, up to eight, and one only while one thread calls.
#[test]
fn each_calling_thread_gets_a_callback_queue_and_a_request_channel_of_its_own_up_to_eight() {
    let queue = TestQueue::new("lanes");
    let server = support::start_fib_server(&queue.name, 2);
    let name = format!("lanes-{}", uuid::Uuid::new_v4());
    let connection = support::client_config()
        .get_connection()
        .clone()
        .connection_name(name.as_str());
    let client =
        FibonacciRpcClient::new(RpcClient::connect(ClientConfig::from(connection)).unwrap())
            .with_queue(&queue.name)
            .with_timeout(TIMEOUT);
    for n in 0..20 {
        assert_eq!(client.call(n).unwrap(), fibonacci(n));
    }
    assert_eq!(support::callback_queues_of(&name).len(), 1);
    let channels_of_one_thread = support::channels_of(&name);
    // All twelve are alive at once (a thread that ends gives its queue to the next new one);
    // the other threads' queues are declared while they call, without holding a call up, and
    // they go on calling once all eight are there.
    let (all_calling, declared) = (Barrier::new(12), Barrier::new(12));
    std::thread::scope(|scope| {
        for t in 0..12 {
            let (client, name) = (&client, &name);
            let (all_calling, declared) = (&all_calling, &declared);
            scope.spawn(move || {
                assert_eq!(client.call(t).unwrap(), fibonacci(t));
                all_calling.wait();
                if t == 0 {
                    support::wait_until("eight callback queues", TIMEOUT, || {
                        support::callback_queues_of(name).len() >= 8
                    });
                }
                declared.wait();
                for i in 0..50 {
                    let n = (t * 31 + i * 7) % 400;
                    assert_eq!(client.call(n).unwrap(), fibonacci(n), "fib({n}) on {t}");
                }
            });
        }
    });
    assert_eq!(support::callback_queues_of(&name).len(), 8);
    // And a request channel each, so that they never wait for one another's publishes.
    assert_eq!(support::channels_of(&name), channels_of_one_thread + 7);
    assert_eq!(client.rpc().pending_calls(), 0);
    client.close().unwrap();
    assert_eq!(server.shutdown().unwrap().answered, 20 + 12 * 51);
}

#[test]
fn sixteen_threads_share_one_direct_reply_to_client() {
    let queue = TestQueue::new("sixteen-direct");
    let server = support::start_fib_server(&queue.name, 2);
    let client = FibonacciRpcClient::new(client_with(ReplyMode::DirectReplyTo, true))
        .with_queue(&queue.name)
        .with_timeout(TIMEOUT);
    hammer(client, 16, 200);
    assert_eq!(server.shutdown().unwrap().answered, 3200);
}

#[test]
fn a_thousand_pipelined_calls_with_timeouts_mixed_in() {
    let served = TestQueue::new("pipelined");
    let idle = TestQueue::new("pipelined-idle");
    idle.declare_quorum();
    let server = support::start_fib_server(&served.name, 2);
    let client = client_with(ReplyMode::CallbackQueue, false);
    let mut handles = Vec::new();
    for i in 0..1000u64 {
        let n = i % 300;
        let handle = if i % 10 == 0 {
            client
                .send_with_timeout(
                    &idle.name,
                    n.to_string().as_bytes(),
                    Duration::from_millis(500),
                )
                .unwrap()
        } else {
            client
                .send_with_timeout(&served.name, n.to_string().as_bytes(), TIMEOUT)
                .unwrap()
        };
        handles.push((i, n, handle));
    }
    // Collect in reverse order: replies wait in their handles, whatever the order.
    for (i, n, handle) in handles.into_iter().rev() {
        match handle.wait() {
            Ok(body) if i % 10 != 0 => assert_eq!(body, fibonacci(n).to_string().into_bytes()),
            Err(error) if i % 10 == 0 => assert!(error.is_timeout(), "{error}"),
            other => panic!("call {i}: unexpected {other:?}"),
        }
    }
    assert_eq!(client.pending_calls(), 0, "a pending entry was left behind");
    server.shutdown().unwrap();
}

#[test]
fn dropped_handles_leave_nothing_behind_and_their_replies_are_discarded() {
    let queue = TestQueue::new("dropped");
    let server = support::start_fib_server(&queue.name, 1);
    let client = support::client();
    for n in 0..50u64 {
        drop(
            client
                .send_with_timeout(&queue.name, n.to_string().as_bytes(), TIMEOUT)
                .unwrap(),
        );
    }
    assert_eq!(client.pending_calls(), 0);
    assert_eq!(
        client
            .call_with_timeout(&queue.name, b"30", TIMEOUT)
            .unwrap(),
        b"832040"
    );
    server.shutdown().unwrap();
}

#[test]
fn call_many_returns_results_in_order_errors_in_place() {
    let queue = TestQueue::new("call-many");
    let server = support::start_fib_server(&queue.name, 2);
    let client = support::client();
    let bodies = ["10", "x", "20", "-3", "0"];
    let results = client.call_many_with_timeout(&queue.name, &bodies, TIMEOUT);
    assert_eq!(results[0].as_deref().unwrap(), b"55");
    assert!(results[1].as_ref().unwrap_err().is_remote());
    assert_eq!(results[2].as_deref().unwrap(), b"6765");
    assert!(results[3].as_ref().unwrap_err().is_remote());
    assert_eq!(results[4].as_deref().unwrap(), b"0");
    server.shutdown().unwrap();
}

#[test]
fn direct_reply_to_works_with_our_server_and_survives_missing_queues() {
    let queue = TestQueue::new("direct");
    let server = support::start_fib_server(&queue.name, 1);
    let client = FibonacciRpcClient::new(client_with(ReplyMode::DirectReplyTo, true))
        .with_queue(&queue.name)
        .with_timeout(TIMEOUT);
    assert_eq!(client.call(90).unwrap(), fibonacci(90));
    let missing = TestQueue::new("direct-missing");
    let error = client
        .rpc()
        .call_with_timeout(&missing.name, b"1", TIMEOUT)
        .unwrap_err();
    assert!(error.is_no_server(), "{error}");
    assert_eq!(client.call(91).unwrap(), fibonacci(91));
    server.shutdown().unwrap();
}
