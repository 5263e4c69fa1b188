//! `fib-server`: serves the bundled services (Fibonacci, Addition) on RabbitMQ queues.

use anyhow::Context;
use clap::{CommandFactory, Parser};
use fib_rpc::services::{addition_handler, fibonacci_handler, DEFAULT_MAX_DIGITS, DEFAULT_MAX_N};
use fib_rpc::{ConnectionConfig, QueueType, RpcServer, ServerConfig, ServerHandle};
use fib_rpc_cli::docs::DocsArgs;
use fib_rpc_cli::{exit, operations};
use signal_hook::consts::{SIGINT, SIGTERM};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Serve fib(n) (and other bundled services) over RabbitMQ, tutorial-6 protocol, until Ctrl-C
/// or SIGTERM. Every setting can also come from the environment (FIB_RPC_*, AMQP_URL).
///
/// Exit codes: 0 stopped cleanly, 69 broker unavailable, 75 the drain timed out (requests went
/// back to the queue), 77 the broker refused the credentials or permissions, 78 bad
/// configuration (zero workers, an unknown service, a bad URL), 130 a second signal.
#[derive(Parser, Debug)]
#[command(name = "fib-server", version)]
struct Args {
    /// A service to host, each on its own queue with its own workers: `fib` (on --queue), `add`
    /// (on add_queue), or NAME=QUEUE. Repeatable, or comma-separated. Default: fib.
    #[arg(
        long = "service",
        value_name = "NAME[=QUEUE]",
        env = "FIB_RPC_SERVICE",
        value_delimiter = ','
    )]
    services: Vec<String>,
    /// Request queue of the fib service.
    #[arg(long, default_value = fib_rpc::DEFAULT_QUEUE, env = "FIB_RPC_QUEUE")]
    queue: String,
    /// Worker threads per service, each with its own channel [default: number of cores].
    #[arg(long, env = "FIB_RPC_WORKERS")]
    workers: Option<usize>,
    /// Unacknowledged requests per worker (1 = fair dispatch).
    #[arg(long, default_value_t = 1, env = "FIB_RPC_PREFETCH")]
    prefetch: u16,
    /// Largest n the fib service computes; larger requests get an error reply.
    #[arg(long, default_value_t = DEFAULT_MAX_N, env = "FIB_RPC_MAX_N")]
    max_n: u64,
    /// Most digits of an operand the add service accepts.
    #[arg(long, default_value_t = DEFAULT_MAX_DIGITS, env = "FIB_RPC_MAX_DIGITS")]
    max_digits: usize,
    /// How to declare queues that do not exist: quorum or classic.
    #[arg(long, default_value = "quorum", env = "FIB_RPC_QUEUE_TYPE")]
    queue_type: QueueType,
    /// Declare queues with x-max-priority N, so that requests of higher priority (up to N) are
    /// served first; needs --queue-type classic.
    #[arg(long, env = "FIB_RPC_MAX_PRIORITY", value_name = "N")]
    max_priority: Option<u8>,
    /// Seconds a stop may spend finishing the requests in hand; those still in hand then go
    /// back to the queue for another server.
    #[arg(long, env = "FIB_RPC_DRAIN_TIMEOUT", value_name = "SECONDS", default_value_t = 30.0, value_parser = fib_rpc_cli::seconds)]
    drain_timeout: f64,
    /// Seconds the broker has to confirm a cancel or the connection's close (it never does
    /// during a network cut); the connection is dropped then.
    #[arg(long, env = "FIB_RPC_CLOSE_TIMEOUT", value_name = "SECONDS", default_value_t = 5.0, value_parser = fib_rpc_cli::seconds)]
    close_timeout: f64,
    /// Largest reply body the broker takes, in bytes (its max_message_size); a larger reply
    /// becomes an error reply that says so.
    #[arg(long, env = "FIB_RPC_MAX_MESSAGE_SIZE", value_name = "BYTES", default_value_t = fib_rpc::DEFAULT_MAX_MESSAGE_SIZE)]
    max_message_size: usize,
    /// Seconds a request may stay unacknowledged before the broker requeues it, for handlers
    /// longer than the broker's consumer_timeout (sent as x-consumer-timeout, which RabbitMQ
    /// 3.12 and later apply). Default: the broker's.
    #[arg(long, env = "FIB_RPC_CONSUMER_TIMEOUT", value_name = "SECONDS", value_parser = fib_rpc_cli::seconds)]
    consumer_timeout: Option<f64>,
    /// Serve Prometheus metrics (/metrics), liveness (/healthz) and readiness (/readyz) over
    /// HTTP on this address, e.g. 127.0.0.1:9464. Off by default.
    #[arg(long, env = "FIB_RPC_METRICS_ADDR", value_name = "ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Broker URL; for a cluster, one per node (repeat the flag, or separate them by commas),
    /// tried in the order given.
    #[arg(long, env = "AMQP_URL", default_value = fib_rpc::DEFAULT_URL, hide_env_values = true, value_delimiter = ',', value_name = "URL")]
    amqp_url: Vec<String>,
    #[command(flatten)]
    docs: DocsArgs,
}

/// Default queue of the add service, as in the callback-queue case study.
const ADD_QUEUE: &str = "add_queue";

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = Args::parse();
    if let Some(code) = args.docs.handle(Args::command()) {
        return code;
    }
    match run(args) {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            eprintln!("fib-server: {error:#}");
            // What is not the library's error is the operating system's (signal handlers).
            let code = error
                .downcast_ref::<fib_rpc::Error>()
                .map_or(71, exit::code);
            ExitCode::from(code)
        }
    }
}

fn config_error(message: String) -> anyhow::Error {
    fib_rpc::Error::Config(message).into()
}

/// (service name, queue) from `--service` values.
fn services(args: &Args) -> anyhow::Result<Vec<(String, String)>> {
    if args.services.is_empty() {
        return Ok(vec![("fib".to_owned(), args.queue.clone())]);
    }
    let mut services: Vec<(String, String)> = Vec::new();
    for spec in &args.services {
        let (name, queue) = match spec.split_once('=') {
            Some((name, queue)) => (name, queue.to_owned()),
            None if spec == "fib" => (spec.as_str(), args.queue.clone()),
            None if spec == "add" => (spec.as_str(), ADD_QUEUE.to_owned()),
            None => (spec.as_str(), String::new()),
        };
        if !matches!(name, "fib" | "add") {
            return Err(config_error(format!(
                "unknown service {name:?}: the bundled services are fib and add"
            )));
        }
        if queue.is_empty() {
            return Err(config_error(format!(
                "--service {spec}: the queue name is empty"
            )));
        }
        if services.iter().any(|(_, taken)| *taken == queue) {
            return Err(config_error(format!(
                "two services on queue {queue}: give each its own queue"
            )));
        }
        services.push((name.to_owned(), queue));
    }
    Ok(services)
}

fn start(args: &Args, name: &str, queue: &str) -> anyhow::Result<ServerHandle> {
    let connection = ConnectionConfig::with_urls(&args.amqp_url)
        .close_timeout(Duration::from_secs_f64(args.close_timeout))
        .max_message_size(args.max_message_size);
    let mut config = ServerConfig::from(connection)
        .queue(queue)
        .consumer_timeout(args.consumer_timeout.map(Duration::from_secs_f64))
        .drain_timeout(Duration::from_secs_f64(args.drain_timeout))
        .queue_type(args.queue_type)
        .prefetch(args.prefetch);
    if let Some(workers) = args.workers {
        config = config.workers(workers);
    }
    if let Some(max) = args.max_priority {
        config = config.max_priority(max);
    }
    let (workers, prefetch) = (config.get_workers(), config.get_prefetch());
    let server = match name {
        "fib" => RpcServer::new(config, fibonacci_handler(args.max_n)).start()?,
        _ => RpcServer::new(config, addition_handler(args.max_digits)).start()?,
    };
    let plural = if workers == 1 { "" } else { "s" };
    log::info!("serving {name} on queue {queue}: {workers} worker{plural}, prefetch {prefetch}");
    Ok(server)
}

/// Runs until stopped; the exit code: 0, or [`exit::TIMEOUT`] if a drain ran out of time and
/// left requests to another server.
fn run(args: Args) -> anyhow::Result<u8> {
    let services = services(&args)?;
    let mut servers = Vec::new();
    for (name, queue) in &services {
        servers.push((name, start(&args, name, queue)?));
    }
    let draining = Arc::new(AtomicBool::new(false));
    if let Some(addr) = args.metrics_addr {
        let watched = services
            .iter()
            .zip(&servers)
            .map(|((_, queue), (_, server))| (queue.clone(), server.monitor()))
            .collect();
        operations::serve(addr, watched, Arc::clone(&draining))
            .with_context(|| format!("serving metrics on {addr}"))?;
    }
    log::info!("all services consuming (max n {})", args.max_n);

    let triggers: Vec<_> = servers
        .iter()
        .map(|(_, server)| server.shutdown_trigger())
        .collect();
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .context("installing signal handlers")?;
    std::thread::spawn(move || {
        let mut received = signals.forever();
        if received.next().is_some() {
            // Not ready first, so that an orchestrator stops routing here, then the drain.
            draining.store(true, Ordering::Relaxed);
            log::info!("stopping: finishing requests in hand (signal again to exit at once)");
            triggers.iter().for_each(|trigger| trigger.trigger());
        }
        if received.next().is_some() {
            log::warn!("second signal: exiting at once");
            std::process::exit(130);
        }
    });
    let mut code = exit::OK;
    for (name, server) in servers {
        let stats = server.wait()?;
        log::info!(
            "stopped {name}: {} answered, {} error replies, {} expired skipped, {} cancelled by \
             their callers, {} without reply_to",
            stats.answered,
            stats.error_replies,
            stats.expired,
            stats.cancelled,
            stats.unanswerable
        );
        if stats.left_in_hand > 0 {
            log::warn!(
                "{name}: the drain timed out; {} requests went back to the queue",
                stats.left_in_hand
            );
            code = exit::TIMEOUT;
        }
    }
    Ok(code)
}
