//! The defaults the README's Configuration table states, read back through the public getters,
//! so that the table and the code cannot drift apart.

use fib_rpc::services::{DEFAULT_MAX_DIGITS, DEFAULT_MAX_N};
use fib_rpc::{
    ClientConfig, ConnectionConfig, QueueType, ReplyMode, RetryPolicy, ServerConfig,
    DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_QUEUE, DEFAULT_URL,
};
use std::time::Duration;

#[test]
fn the_connection_defaults_are_the_readmes() {
    assert_eq!(DEFAULT_URL, "amqp://guest:guest@127.0.0.1:5672/%2f");
    let connection = ConnectionConfig::new(DEFAULT_URL);
    assert_eq!(connection.get_heartbeat(), Duration::from_secs(10));
    assert_eq!(connection.get_connect_timeout(), Duration::from_secs(5));
    assert_eq!(connection.get_close_timeout(), Duration::from_secs(5));
    assert_eq!(DEFAULT_MAX_MESSAGE_SIZE, 16 * 1024 * 1024);
    assert_eq!(connection.get_max_message_size(), DEFAULT_MAX_MESSAGE_SIZE);
    assert_eq!(connection.get_connection_name(), None);
    let tls = connection.get_tls();
    assert!(tls.get_verify_peer() && tls.get_ca_file().is_none() && tls.get_cert_file().is_none());
}

#[test]
fn the_client_defaults_are_the_readmes() {
    let client = ClientConfig::new(DEFAULT_URL);
    assert_eq!(client.get_call_timeout(), Duration::from_secs(5));
    assert!(client.get_require_consumer(), "fail fast when no server");
    assert_eq!(client.get_reply_mode(), ReplyMode::CallbackQueue);
    assert!(client.get_retry().is_none(), "retries are off");
}

#[test]
fn the_server_defaults_are_the_readmes() {
    let server = ServerConfig::new(DEFAULT_URL, DEFAULT_QUEUE);
    assert_eq!(DEFAULT_QUEUE, "rpc_queue");
    assert_eq!(server.get_queue(), "rpc_queue");
    assert_eq!(server.get_queue_type(), QueueType::Quorum);
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    assert_eq!(server.get_workers(), cores, "one worker per core");
    assert_eq!(server.get_prefetch(), 1);
    assert_eq!(server.get_drain_timeout(), Duration::from_secs(30));
    assert_eq!(
        server.get_reconnect_backoff(),
        (Duration::from_millis(100), Duration::from_secs(5))
    );
    assert_eq!(server.get_consumer_timeout(), None, "the broker's own");
    assert_eq!(server.get_max_priority(), None);
    assert_eq!((DEFAULT_MAX_N, DEFAULT_MAX_DIGITS), (100_000, 100_000));
}

#[test]
fn the_retry_defaults_are_the_readmes() {
    for policy in [RetryPolicy::new(), RetryPolicy::default()] {
        assert_eq!(policy.get_attempts(), 10);
        assert_eq!(
            policy.get_backoff(),
            (Duration::from_millis(50), Duration::from_secs(1)),
            "50 ms doubling to 1 s"
        );
        assert_eq!(policy.get_attempt_timeout(), None, "timeouts not retried");
    }
}
