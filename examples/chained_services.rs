//! A service that calls another: the deadline and the trace pass on by themselves.
//!
//! Serves `front_queue` (service A), which asks `fib_queue` (service B, the bundled Fibonacci
//! handler) and answers with a header saying how much time B was left; calls A with a 2 s
//! timeout, a trace context, a header and retries; prints the reply and its properties:
//! `cargo run --example chained_services` (a broker at AMQP_URL or 127.0.0.1:5672).

use fib_rpc::services::fibonacci_handler;
use fib_rpc::{
    handler, ClientConfig, HandlerError, Request, Response, RetryPolicy, RpcClient, RpcServer,
    ServerConfig, TraceContext,
};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

fn main() -> anyhow::Result<()> {
    env_logger::init();
    let url = std::env::var("AMQP_URL").unwrap_or_else(|_| fib_rpc::DEFAULT_URL.to_owned());
    let b = RpcServer::new(
        ServerConfig::new(url.as_str(), "fib_queue").workers(1),
        fibonacci_handler(1000),
    )
    .start()?;

    // A's own client would give B 30 s; inside A's handler, B gets what A's caller has left.
    let onward = Arc::new(RpcClient::connect(
        ClientConfig::new(url.as_str()).call_timeout(Duration::from_secs(30)),
    )?);
    let a = RpcServer::new(
        ServerConfig::new(url.as_str(), "front_queue").workers(1),
        handler::with_request(move |request: &Request<'_>| {
            let left = request
                .deadline()
                .and_then(|due| due.duration_since(SystemTime::now()).ok())
                .unwrap_or_default();
            let trace = request.trace().map(|trace| trace.trace_id());
            log::info!("A serves trace {trace:?} with {left:?} left");
            let fib = onward
                .request("fib_queue", request.body())
                .call()
                .map_err(|error| HandlerError::new(format!("B failed: {error}")))?;
            let millis = i64::try_from(left.as_millis()).unwrap_or(i64::MAX);
            Ok::<_, HandlerError>(
                Response::new(fib.into_body())
                    .content_type("text/plain")
                    .header("time-left-ms", millis),
            )
        }),
    )
    .start()?;

    let client = RpcClient::connect(ClientConfig::new(url).retry(RetryPolicy::new()))?;
    let trace = TraceContext::new_root();
    let reply = client
        .request("front_queue", b"90")
        .timeout(Duration::from_secs(2))
        .header("tenant", "example")
        .trace(trace.clone())
        .call()?;
    println!(
        "fib(90) = {} (trace {}, A had {:?} ms left)",
        String::from_utf8_lossy(reply.body()),
        trace.trace_id(),
        reply.get_header("time-left-ms"),
    );
    client.close()?;
    a.shutdown()?;
    b.shutdown()?;
    Ok(())
}
