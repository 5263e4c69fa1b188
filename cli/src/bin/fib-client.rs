//! `fib-client`: calls the bundled services, sends to result pipelines, inspects queues; exit
//! codes a script can branch on.

use clap::{CommandFactory, Parser, ValueEnum};
use fib_rpc::services::parse_biguint;
use fib_rpc::{ClientConfig, ConnectionConfig, Error, QueueAdmin, RpcClient};
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

/// Ask a fib-rpc server: print one answer per input, one per line, in order. All requests are
/// sent at once.
///
/// Exit codes: 0 ok, 1 remote error (the server refused a request), 2 usage,
/// 69 broker unavailable, no server or no such queue, 75 timeout.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// The inputs: n for fib, x,y for add.
    #[arg(value_name = "INPUT", required_unless_present_any = ["status", "purge"])]
    inputs: Vec<String>,
    /// The service to call; it picks the default queue (fib: rpc_queue, add: add_queue).
    #[arg(long, value_enum, default_value_t = Service::Fib)]
    service: Service,
    /// Request queue (repeatable with --status and --purge).
    #[arg(long = "queue")]
    queues: Vec<String>,
    /// Seconds to wait for each reply.
    #[arg(long, default_value_t = 5.0, value_parser = parse_timeout)]
    timeout: f64,
    /// Queue the requests even if no server consumes the queue yet (a server that starts within
    /// the timeout answers them); without this flag that fails at once with exit code 69.
    #[arg(long)]
    wait_for_server: bool,
    /// Send replies to this durable result queue (see fib-results) instead of waiting.
    #[arg(long, value_name = "RESULTS", requires = "no_wait")]
    reply_to: Option<String>,
    /// Print one correlation id per request and exit at once; needs --reply-to.
    #[arg(long, requires = "reply_to")]
    no_wait: bool,
    /// Print messages ready and consumers of each queue, as `rabbitmqctl list_queues name
    /// messages consumers` does.
    #[arg(long, conflicts_with_all = ["inputs", "purge"])]
    status: bool,
    /// Delete every ready message of each queue; refused without --yes.
    #[arg(long, conflicts_with = "inputs")]
    purge: bool,
    /// Confirm --purge.
    #[arg(long)]
    yes: bool,
    /// Broker URL.
    #[arg(long, env = "AMQP_URL", default_value = fib_rpc::DEFAULT_URL, hide_env_values = true)]
    amqp_url: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Service {
    /// Fibonacci: INPUT is n, a non-negative integer.
    Fib,
    /// Addition: INPUT is x,y, two integers.
    Add,
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

fn usage_error(message: String) -> ! {
    Args::command()
        .error(clap::error::ErrorKind::ValueValidation, message)
        .exit()
}

/// Warnings only, and none of amiquip's: a missing queue it warns about is already our error.
const QUIET_LOGS: &str = "warn,amiquip=error";

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(QUIET_LOGS)).init();
    let args = Args::parse();
    let connection = ConnectionConfig::new(args.amqp_url.as_str());
    let outcome = if args.status {
        status(&args, &connection)
    } else if args.purge {
        purge(&args, &connection)
    } else {
        call(&args, connection)
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("fib-client: {error}");
            ExitCode::from(exit_code(&error))
        }
    }
}

fn default_queue(service: Service) -> &'static str {
    match service {
        Service::Fib => fib_rpc::DEFAULT_QUEUE,
        Service::Add => "add_queue",
    }
}

fn queues(args: &Args) -> Vec<String> {
    match args.queues.is_empty() {
        true => vec![default_queue(args.service).to_owned()],
        false => args.queues.clone(),
    }
}

fn call(args: &Args, connection: ConnectionConfig) -> Result<(), Error> {
    let queue = match args.queues.as_slice() {
        [] => default_queue(args.service).to_owned(),
        [queue] => queue.clone(),
        _ => usage_error("calls go to one --queue".to_owned()),
    };
    let bodies: Vec<String> = match args.service {
        // Parsed here so that a typo is a usage error, not a round trip to the server.
        Service::Fib => args
            .inputs
            .iter()
            .map(|input| match input.parse::<u64>() {
                Ok(n) => n.to_string(),
                Err(_) => usage_error(format!(
                    "invalid n {input:?}: expected a non-negative integer"
                )),
            })
            .collect(),
        Service::Add => args.inputs.clone(),
    };
    let mut config = ClientConfig::default();
    config.connection = connection;
    config.call_timeout = Duration::from_secs_f64(args.timeout);
    config.require_consumer = !args.wait_for_server;
    let client = RpcClient::with_config(config)?;
    let mut stdout = std::io::stdout().lock();
    if let Some(results) = &args.reply_to {
        for body in &bodies {
            let correlation_id = client.submit(&queue, body.as_bytes(), results)?;
            let _ = writeln!(stdout, "{correlation_id}");
        }
        let _ = stdout.flush();
        return client.close();
    }
    // All requests go out before the first reply is awaited: N inputs cost about one round
    // trip, not N.
    let timeout = client.config().call_timeout;
    for reply in client.call_many(&queue, &bodies, timeout) {
        let reply = reply?;
        if args.service == Service::Fib {
            parse_biguint(&reply)?;
        }
        // A closed stdout (`| head -1`) is not the server's fault; stop quietly.
        if writeln!(stdout, "{}", String::from_utf8_lossy(&reply)).is_err() {
            break;
        }
    }
    let _ = stdout.flush();
    client.close()
}

fn status(args: &Args, connection: &ConnectionConfig) -> Result<(), Error> {
    let mut admin = QueueAdmin::connect(connection)?;
    let mut missing = None;
    println!("name\tmessages\tconsumers");
    for queue in queues(args) {
        match admin.status(&queue) {
            Ok(status) => println!("{}\t{}\t{}", status.name, status.messages, status.consumers),
            Err(error) if error.is_queue_not_found() => {
                eprintln!("fib-client: {error}");
                missing = Some(error);
            }
            Err(error) => return Err(error),
        }
    }
    admin.close()?;
    missing.map_or(Ok(()), Err)
}

fn purge(args: &Args, connection: &ConnectionConfig) -> Result<(), Error> {
    if !args.yes {
        usage_error(format!(
            "--purge deletes every ready message of {}: add --yes to confirm",
            queues(args).join(", ")
        ));
    }
    let mut admin = QueueAdmin::connect(connection)?;
    for queue in queues(args) {
        let purged = admin.purge(&queue)?;
        println!("purged {purged} messages from {queue}");
    }
    admin.close()
}

fn exit_code(error: &Error) -> u8 {
    if error.is_timeout() {
        EXIT_TIMEOUT
    } else if error.is_connection() || error.is_no_server() || error.is_queue_not_found() {
        EXIT_UNAVAILABLE
    } else {
        EXIT_REMOTE
    }
}
