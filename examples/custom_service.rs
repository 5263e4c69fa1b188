//! A new service is a handler and a queue name.
//!
//! Serves "reverse the words" on `reverse_queue`, calls it, and stops:
//! `cargo run --example custom_service` (a broker at AMQP_URL or 127.0.0.1:5672).

use fib_rpc::{ClientConfig, HandlerError, RpcClient, RpcServer, ServerConfig};
use std::time::Duration;

fn reverse_words(body: &[u8]) -> Result<Vec<u8>, HandlerError> {
    let text = std::str::from_utf8(body).map_err(|_| HandlerError::new("expected UTF-8 text"))?;
    if text.trim().is_empty() {
        return Err(HandlerError::new("nothing to reverse"));
    }
    let reversed: Vec<&str> = text.split_whitespace().rev().collect();
    Ok(reversed.join(" ").into_bytes())
}

fn main() -> anyhow::Result<()> {
    env_logger::init();
    let url = std::env::var("AMQP_URL").unwrap_or_else(|_| fib_rpc::DEFAULT_URL.to_owned());
    let mut config = ServerConfig::new(url.as_str(), "reverse_queue");
    config = config.workers(2);
    let server = RpcServer::new(config, reverse_words).start()?;

    let client = RpcClient::connect(ClientConfig::new(url))?;
    let timeout = Duration::from_secs(5);
    let reply = client.call_with_timeout("reverse_queue", b"hello brave new world", timeout)?;
    println!("{}", String::from_utf8_lossy(&reply));
    match client.call_with_timeout("reverse_queue", b"   ", timeout) {
        Err(error) if error.is_remote() => println!("refused, as it should be: {error}"),
        other => anyhow::bail!("expected an error reply, got {other:?}"),
    }
    client.close()?;
    let stats = server.shutdown()?;
    println!("served {} requests", stats.total());
    Ok(())
}
