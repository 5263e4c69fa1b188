//! Clients of the test broker.

use crate::broker::amqp_url;
use fib_rpc::{ClientConfig, FibonacciRpcClient, RpcClient};
use std::time::Duration;

pub fn client() -> RpcClient {
    RpcClient::connect(amqp_url()).expect("connect a client")
}

/// Client settings for the test broker.
pub fn client_config() -> ClientConfig {
    ClientConfig::new(amqp_url())
}

/// A client that queues requests even when no server consumes the queue yet.
pub fn patient_client() -> RpcClient {
    let mut config = client_config();
    config = config.require_consumer(false);
    RpcClient::connect(config).expect("connect a client")
}

pub fn fib_client(queue: &str, timeout: Duration) -> FibonacciRpcClient {
    let mut config = client_config();
    config = config.call_timeout(timeout);
    FibonacciRpcClient::new(RpcClient::connect(config).expect("connect a client")).with_queue(queue)
}

/// A client of the broker at `url` whose connection the broker lists under `name`, so that a
/// test can find it (and close it from the broker's side).
pub fn named_client(url: impl AsRef<str>, name: &str) -> RpcClient {
    let connection = fib_rpc::ConnectionConfig::new(url).connection_name(name);
    RpcClient::connect(connection).expect("connect a client")
}
