//! A JSON service: typed requests and replies, decode errors answered as error replies.
//!
//! Serves a price quote on `quote_queue`, calls it, and stops:
//! `cargo run --example json_service --features json` (a broker at AMQP_URL or 127.0.0.1:5672).

use fib_rpc::json::json_handler;
use fib_rpc::{ClientConfig, HandlerError, RpcClient, RpcServer, ServerConfig};
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Serialize, Deserialize)]
struct QuoteRequest {
    item: String,
    quantity: u32,
}

#[derive(Serialize, Deserialize, Debug)]
struct Quote {
    item: String,
    total_cents: u64,
}

fn quote(request: QuoteRequest) -> Result<Quote, HandlerError> {
    let unit_cents = match request.item.as_str() {
        "apple" => 40,
        "pear" => 55,
        other => return Err(HandlerError::new(format!("no price for {other:?}"))),
    };
    Ok(Quote {
        item: request.item,
        total_cents: unit_cents * u64::from(request.quantity),
    })
}

fn main() -> anyhow::Result<()> {
    env_logger::init();
    let url = std::env::var("AMQP_URL").unwrap_or_else(|_| fib_rpc::DEFAULT_URL.to_owned());
    let server = RpcServer::new(
        ServerConfig::new(url.as_str(), "quote_queue"),
        json_handler(quote),
    )
    .start()?;
    let client = RpcClient::connect(ClientConfig::new(url))?;
    let timeout = Duration::from_secs(5);
    let request = QuoteRequest {
        item: "pear".into(),
        quantity: 3,
    };
    let reply: Quote = client.call_json_with_timeout("quote_queue", &request, timeout)?;
    println!("{reply:?}");
    let refused = client.call_json_with_timeout::<_, Quote>(
        "quote_queue",
        &serde_json::json!({"item": 7}),
        timeout,
    );
    match refused {
        Err(error) if error.is_remote() => println!("refused: {error}"),
        other => anyhow::bail!("expected an error reply, got {other:?}"),
    }
    client.close()?;
    server.shutdown()?;
    Ok(())
}
