//! `fib-client`: asks a fib-server for Fibonacci numbers; exit codes a script can branch on.

use clap::Parser;
use fib_rpc::{ClientConfig, ConnectionConfig, Error, FibonacciRpcClient, RpcClient};
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

/// Print fib(N) for each N, one per line, in order. All requests are sent at once.
///
/// Exit codes: 0 ok, 1 remote error (the server refused a request), 2 usage,
/// 69 broker unavailable or no server, 75 timeout.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// The numbers to ask for.
    #[arg(required = true, value_name = "N")]
    numbers: Vec<u64>,
    /// Request queue.
    #[arg(long, default_value = fib_rpc::DEFAULT_QUEUE)]
    queue: String,
    /// Seconds to wait for each reply.
    #[arg(long, default_value_t = 5.0, value_parser = parse_timeout)]
    timeout: f64,
    /// Queue the request even if no server consumes the queue yet (a server that starts within
    /// the timeout answers it); without this flag that fails at once with exit code 69.
    #[arg(long)]
    wait_for_server: bool,
    /// Broker URL.
    #[arg(long, env = "AMQP_URL", default_value = fib_rpc::DEFAULT_URL, hide_env_values = true)]
    amqp_url: String,
}

const EXIT_REMOTE: u8 = 1;
const EXIT_UNAVAILABLE: u8 = 69;
const EXIT_TIMEOUT: u8 = 75;

fn parse_timeout(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(seconds) if seconds > 0.0 && seconds.is_finite() && seconds < 1e9 => Ok(seconds),
        _ => Err(format!("{text:?} is not a positive number of seconds")),
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("fib-client: {error}");
            ExitCode::from(exit_code(&error))
        }
    }
}

fn run(args: &Args) -> Result<(), Error> {
    let config = ClientConfig {
        connection: ConnectionConfig::new(args.amqp_url.as_str()),
        call_timeout: Duration::from_secs_f64(args.timeout),
        require_consumer: !args.wait_for_server,
        ..ClientConfig::default()
    };
    let client = FibonacciRpcClient::new(RpcClient::with_config(config)?).with_queue(&args.queue);
    // All requests go out before the first reply is awaited: N numbers cost about one round
    // trip, not N.
    let results = client.call_many(&args.numbers);
    let mut stdout = std::io::stdout().lock();
    for result in results {
        // A closed stdout (`| head -1`) is not the server's fault; stop quietly.
        if writeln!(stdout, "{}", result?).is_err() {
            break;
        }
    }
    let _ = stdout.flush();
    client.close()
}

fn exit_code(error: &Error) -> u8 {
    if error.is_timeout() {
        EXIT_TIMEOUT
    } else if error.is_connection() || error.is_no_server() {
        EXIT_UNAVAILABLE
    } else {
        EXIT_REMOTE
    }
}
