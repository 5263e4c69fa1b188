//! `fib-server`: serves the Fibonacci service on a RabbitMQ queue.

use anyhow::Context;
use clap::Parser;
use fib_rpc::{
    fibonacci_handler, ConnectionConfig, QueueType, RpcServer, ServerConfig, DEFAULT_MAX_N,
};
use signal_hook::consts::{SIGINT, SIGTERM};
use std::process::ExitCode;

/// Serve fib(n) over RabbitMQ (tutorial-6 protocol) until Ctrl-C or SIGTERM.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Request queue to serve.
    #[arg(long, default_value = fib_rpc::DEFAULT_QUEUE)]
    queue: String,
    /// Worker threads, each with its own channel [default: number of cores].
    #[arg(long)]
    workers: Option<usize>,
    /// Unacknowledged requests per worker (1 = fair dispatch).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    prefetch: u16,
    /// Largest n served; larger requests get an error reply.
    #[arg(long, default_value_t = DEFAULT_MAX_N)]
    max_n: u64,
    /// How to declare the queue if it does not exist: quorum or classic.
    #[arg(long, default_value = "quorum")]
    queue_type: QueueType,
    /// Broker URL.
    #[arg(long, env = "AMQP_URL", default_value = fib_rpc::DEFAULT_URL, hide_env_values = true)]
    amqp_url: String,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("fib-server: {error:#}");
            let broker_down = error
                .downcast_ref::<fib_rpc::Error>()
                .is_some_and(fib_rpc::Error::is_connection);
            ExitCode::from(if broker_down { 69 } else { 1 })
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let defaults = ServerConfig::default();
    let config = ServerConfig {
        connection: ConnectionConfig::new(args.amqp_url),
        queue: args.queue,
        queue_type: args.queue_type,
        workers: args.workers.unwrap_or(defaults.workers),
        prefetch: args.prefetch,
        ..defaults
    };
    let (queue, workers, prefetch) = (config.queue.clone(), config.workers, config.prefetch);
    let server = RpcServer::new(config, fibonacci_handler(args.max_n)).start()?;
    log::info!(
        "serving fib on queue {queue}: {workers} workers, prefetch {prefetch}, max n {}",
        args.max_n
    );

    let trigger = server.shutdown_trigger();
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .context("installing signal handlers")?;
    std::thread::spawn(move || {
        let mut received = signals.forever();
        if received.next().is_some() {
            log::info!("stopping: finishing requests in hand (signal again to exit at once)");
            trigger.trigger();
        }
        if received.next().is_some() {
            log::warn!("second signal: exiting at once");
            std::process::exit(130);
        }
    });
    let stats = server.wait()?;
    log::info!(
        "stopped: {} answered, {} error replies, {} expired skipped, {} without reply_to",
        stats.answered,
        stats.error_replies,
        stats.expired,
        stats.unanswerable
    );
    Ok(())
}
