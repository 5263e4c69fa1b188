//! `fib-client`: calls the bundled services, sends to result pipelines, inspects queues; exit
//! codes a script can branch on.

use clap::{CommandFactory, Parser, ValueEnum};
use fib_rpc::services::{parse_bigint, parse_biguint};
use fib_rpc::{
    ClientConfig, ConnectionConfig, Error, PendingReply, QueueAdmin, Response, RetryPolicy,
    RpcClient,
};
use fib_rpc_cli::docs::DocsArgs;
use fib_rpc_cli::progress::{Reporter, Shown};
use fib_rpc_cli::{exit, json_line};
use serde_json::json;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use std::collections::HashSet;
use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// Ask a fib-rpc server: print one answer per input, one per line, in order.
///
/// Inputs come from the command line, or from stdin one per line (`-`, or no INPUT with stdin
/// not a terminal), answered as they are read: `seq 1 100000 | fib-client -` runs in bounded
/// memory.
///
/// Exit codes: 0 ok, 1 a request was refused (error reply), 2 usage, 65 a reply the protocol
/// does not allow (or a request over the broker's size limit), 69 broker unavailable, no server
/// or no such queue, 74 stdout failed, 75 timeout (or the broker blocks publishing), 77 the
/// broker refused the credentials or permissions, 78 bad configuration (URL), 130 interrupted
/// (Ctrl-C; the calls in flight are cancelled). With --keep-going, the worst seen.
#[derive(Parser, Debug)]
#[command(name = "fib-client", version)]
struct Args {
    /// The inputs: n for fib, x,y for add; `-` reads them from stdin, one per line.
    #[arg(value_name = "INPUT")]
    inputs: Vec<String>,
    /// The service to call; it picks the default queue (fib: rpc_queue, add: add_queue).
    #[arg(long, value_enum, default_value_t = Service::Fib, env = "FIB_RPC_SERVICE")]
    service: Service,
    /// Request queue (repeatable with --status and --purge).
    #[arg(long = "queue", env = "FIB_RPC_QUEUE", value_delimiter = ',')]
    queues: Vec<String>,
    /// Seconds to wait for each reply.
    #[arg(long, default_value_t = 5.0, value_parser = fib_rpc_cli::seconds, env = "FIB_RPC_TIMEOUT")]
    timeout: f64,
    /// Wait (within the timeout) for a server to start: requests to an idle queue wait in it,
    /// and a queue that does not exist yet is waited for, then its server's consumer. Without
    /// this flag both fail at once with exit code 69.
    #[arg(long)]
    wait_for_server: bool,
    /// One JSON object per input: {"input":..., "value":...} or {"input":..., "error":...}.
    #[arg(long)]
    json: bool,
    /// A refused input prints its error and the others are still answered; the exit code is
    /// the worst seen.
    #[arg(long)]
    keep_going: bool,
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
    /// Publish to this exchange instead of the default one; the routing key is --routing-key,
    /// or else the queue's name. An exchange that routes a request nowhere exits 69 at once;
    /// whether a server consumes is not checked.
    #[arg(long, env = "FIB_RPC_EXCHANGE", conflicts_with = "reply_to")]
    exchange: Option<String>,
    /// The routing key with --exchange (default: the queue's name).
    #[arg(long, requires = "exchange")]
    routing_key: Option<String>,
    /// The requests' AMQP priority (0-255; served first by a queue declared with
    /// x-max-priority, see fib-server --max-priority).
    #[arg(long, value_name = "N", conflicts_with = "reply_to")]
    priority: Option<u8>,
    /// A request header, name=value (repeatable); names starting x- and the W3C trace headers
    /// are reserved (exit 78).
    #[arg(long = "header", value_name = "NAME=VALUE", value_parser = fib_rpc_cli::header, conflicts_with = "reply_to")]
    headers: Vec<(String, String)>,
    /// Make a call again when its connection is lost, the broker is out of reach or no server
    /// consumes, within --timeout; calls are then made one at a time. A request may be
    /// computed twice (at-least-once).
    #[arg(long, conflicts_with = "reply_to")]
    retry: bool,
    /// With --json: print the progress of long calls as JSON lines,
    /// {"input":...,"progress":0.4,"message":...}, before each call's own line. (On a
    /// terminal, a progress bar on stderr shows it anyway.)
    #[arg(long, requires = "json")]
    progress: bool,
    /// Broker URL; for a cluster, one per node (repeat the flag, or separate them by commas),
    /// tried in the order given.
    #[arg(long, env = "AMQP_URL", default_value = fib_rpc::DEFAULT_URL, hide_env_values = true, value_delimiter = ',', value_name = "URL")]
    amqp_url: Vec<String>,
    #[command(flatten)]
    docs: DocsArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Service {
    /// Fibonacci: INPUT is n, a non-negative integer.
    Fib,
    /// Addition: INPUT is x,y, two integers.
    Add,
}

/// Requests sent ahead of the answer being printed: enough to hide the round trip, few enough
/// that a stream of any length runs in bounded memory.
const WINDOW: usize = 64;

/// Warnings only, and none of amiquip's: a missing queue it warns about is already our error.
const QUIET_LOGS: &str = "warn,amiquip=error";

fn usage_error(message: String) -> ! {
    Args::command()
        .error(clap::error::ErrorKind::ValueValidation, message)
        .exit()
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(QUIET_LOGS)).init();
    let args = Args::parse();
    if let Some(code) = args.docs.handle(Args::command()) {
        return code;
    }
    let connection = match args.amqp_url.join(",").parse::<ConnectionConfig>() {
        Ok(connection) => connection,
        Err(error) => {
            eprintln!("fib-client: {error}");
            return ExitCode::from(exit::CONFIG);
        }
    };
    let outcome = if args.status {
        status(&args, &connection)
    } else if args.purge {
        purge(&args, &connection)
    } else {
        call(&args, connection)
    };
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            eprintln!("fib-client: {error}");
            ExitCode::from(exit::code(&error))
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

/// The inputs, from the command line or stdin, one at a time.
fn inputs(args: &Args) -> Box<dyn Iterator<Item = String>> {
    let from_stdin = match args.inputs.as_slice() {
        [dash] if dash == "-" => true,
        [] => {
            if std::io::stdin().is_terminal() {
                usage_error("no INPUT: give numbers, or - to read them from stdin".to_owned())
            }
            true
        }
        _ => false,
    };
    if from_stdin {
        let lines = std::io::stdin().lock().lines().map_while(Result::ok);
        return Box::new(lines.filter(|line| !line.trim().is_empty()));
    }
    if args.service == Service::Fib {
        // Checked before anything is sent, so that a typo is a usage error, not a round trip.
        for input in &args.inputs {
            if input.parse::<u64>().is_err() {
                usage_error(format!(
                    "invalid n {input:?}: expected a non-negative integer"
                ));
            }
        }
    }
    Box::new(args.inputs.clone().into_iter())
}

fn call(args: &Args, connection: ConnectionConfig) -> Result<u8, Error> {
    let queue = match args.queues.as_slice() {
        [] => default_queue(args.service).to_owned(),
        [queue] => queue.clone(),
        _ => usage_error("calls go to one --queue".to_owned()),
    };
    let mut config = ClientConfig::from(connection)
        .call_timeout(Duration::from_secs_f64(args.timeout))
        .require_consumer(!args.wait_for_server);
    if args.retry {
        config = config.retry(RetryPolicy::new().attempts(u32::MAX));
    }
    let client = Arc::new(RpcClient::connect(config)?);
    let code = match &args.reply_to {
        Some(results) => submit(&client, &queue, results, inputs(args))?,
        None => {
            let in_flight = InFlight::default();
            // With --exchange the request queue is not known, and neither is where cancels go.
            if args.exchange.is_none() {
                cancel_on_interrupt(Arc::downgrade(&client), &queue, in_flight.clone())?;
            }
            answer(args, &client, &queue, inputs(args), &in_flight)
        }
    };
    // The calls' outcome is the exit code; a close that fails after them changes none of it.
    if let Ok(client) = Arc::try_unwrap(client) {
        if let Err(error) = client.close() {
            log::warn!("closing the connection: {error}");
        }
    }
    Ok(code)
}

/// The correlation ids of the calls sent and not yet answered.
type InFlight = Arc<Mutex<HashSet<String>>>;

/// On Ctrl-C (or SIGTERM), cancels every call in flight, so that the servers stop computing
/// for nobody, and exits 130.
fn cancel_on_interrupt(
    client: Weak<RpcClient>,
    queue: &str,
    in_flight: InFlight,
) -> Result<(), Error> {
    let mut signals = Signals::new([SIGINT, SIGTERM])
        .map_err(|error| Error::Internal(format!("cannot watch for Ctrl-C: {error}")))?;
    let queue = queue.to_owned();
    std::thread::Builder::new()
        .name("fib-client-interrupt".into())
        .spawn(move || {
            if signals.forever().next().is_some() {
                let ids: Vec<String> = lock(&in_flight).drain().collect();
                if let Some(client) = client.upgrade() {
                    for id in &ids {
                        client.cancel(&queue, id);
                    }
                }
                eprintln!("fib-client: interrupted; {} calls cancelled", ids.len());
                std::process::exit(exit::INTERRUPTED.into());
            }
        })
        .map_err(|error| Error::Internal(format!("cannot watch for Ctrl-C: {error}")))?;
    Ok(())
}

fn lock(in_flight: &InFlight) -> std::sync::MutexGuard<'_, HashSet<String>> {
    in_flight
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn submit(
    client: &RpcClient,
    queue: &str,
    results: &str,
    inputs: impl Iterator<Item = String>,
) -> Result<u8, Error> {
    let mut stdout = std::io::stdout().lock();
    for input in inputs {
        let correlation_id = client.submit(queue, input.trim().as_bytes(), results)?;
        if writeln!(stdout, "{correlation_id}")
            .and_then(|()| stdout.flush())
            .is_err()
        {
            return Ok(exit::IO);
        }
    }
    Ok(exit::OK)
}

/// Sends each input and prints its answer, in order, as answers arrive; a printer thread waits
/// while this one reads and sends, at most [`WINDOW`] ahead.
fn answer(
    args: &Args,
    client: &RpcClient,
    queue: &str,
    inputs: impl Iterator<Item = String>,
    in_flight: &InFlight,
) -> u8 {
    let shown = Shown::choose(std::io::stderr().is_terminal(), args.json, args.progress);
    let timeout = client.config().get_call_timeout();
    let (sender, sent) = crossbeam_channel::bounded::<(String, Sent, Option<Reporter>)>(WINDOW);
    let printer = Printer {
        json: args.json,
        keep_going: args.keep_going,
        service: args.service,
        in_flight,
    };
    let target = args.routing_key.as_deref().unwrap_or(queue);
    std::thread::scope(|scope| {
        let printing = scope.spawn(|| printer.print_all(sent));
        for input in inputs {
            let request = input.trim().to_owned();
            let mut call = client.request(target, request.as_bytes()).timeout(timeout);
            if let Some(exchange) = &args.exchange {
                call = call.exchange(exchange);
            }
            if let Some(priority) = args.priority {
                call = call.priority(priority);
            }
            for (name, value) in &args.headers {
                call = call.header(name, value);
            }
            let reporter = match Reporter::start(shown, &request) {
                Some((reporter, show)) => {
                    call = call.on_progress(show);
                    Some(reporter)
                }
                None => None,
            };
            // A retried call is made whole before the next, since only a call can be retried.
            let sent = match args.retry {
                true => Sent::Answered(call.call().map(Response::into_body)),
                false => {
                    let pending = call.send();
                    if let Ok(pending) = &pending {
                        lock(in_flight).insert(pending.correlation_id().to_owned());
                    }
                    Sent::Pending(pending)
                }
            };
            if sender.send((request, sent, reporter)).is_err() {
                break;
            }
        }
        drop(sender);
        printing.join().unwrap_or(exit::IO)
    })
}

/// A request on its way to the printer: sent, or (retried) answered already.
enum Sent {
    Pending(Result<PendingReply, Error>),
    Answered(Result<Vec<u8>, Error>),
}

struct Printer<'a> {
    json: bool,
    keep_going: bool,
    service: Service,
    in_flight: &'a InFlight,
}

/// How much of an input an error message on stderr quotes.
const QUOTED_INPUT: usize = 60;

/// `input` as an error line shows it: whole if short, else its start and its length.
fn shortened(input: &str) -> String {
    match input.char_indices().nth(QUOTED_INPUT) {
        None => input.to_owned(),
        Some((end, _)) => format!("{}... ({} bytes)", &input[..end], input.len()),
    }
}

impl Printer<'_> {
    /// Prints every answer in order; returns the exit code (the worst seen with --keep-going).
    fn print_all(&self, sent: crossbeam_channel::Receiver<(String, Sent, Option<Reporter>)>) -> u8 {
        let mut stdout = std::io::stdout().lock();
        let mut code = exit::OK;
        for (input, sent, reporter) in sent {
            let reply = match sent {
                Sent::Pending(pending) => pending.and_then(|pending| {
                    let id = pending.correlation_id().to_owned();
                    let reply = pending.wait();
                    lock(self.in_flight).remove(&id);
                    reply
                }),
                Sent::Answered(reply) => reply,
            };
            if let Some(reporter) = reporter {
                reporter.finish();
            }
            let outcome = reply.and_then(|reply| {
                match self.service {
                    Service::Fib => parse_biguint(&reply).map(drop)?,
                    Service::Add => parse_bigint(&reply).map(drop)?,
                }
                Ok(String::from_utf8_lossy(&reply).into_owned())
            });
            let printed = match (&outcome, self.json) {
                (Ok(value), false) => writeln!(stdout, "{value}"),
                (Ok(value), true) => writeln!(
                    stdout,
                    "{}",
                    json_line(&[("input", json!(input)), ("value", json!(value))])
                ),
                (Err(error), true) => writeln!(
                    stdout,
                    "{}",
                    json_line(&[("input", json!(input)), ("error", json!(error.to_string()))])
                ),
                (Err(error), false) => {
                    eprintln!("fib-client: {}: {error}", shortened(&input));
                    Ok(())
                }
            }
            .and_then(|()| stdout.flush());
            if printed.is_err() {
                // A closed stdout (`| head -1`) is the reader's choice, not a failure of ours.
                return code;
            }
            if let Err(error) = outcome {
                code = exit::worst(code, exit::code(&error));
                if !self.keep_going {
                    return code;
                }
            }
        }
        code
    }
}

fn status(args: &Args, connection: &ConnectionConfig) -> Result<u8, Error> {
    let mut admin = QueueAdmin::connect(connection)?;
    let mut code = exit::OK;
    println!("name\tmessages\tconsumers");
    for queue in queues(args) {
        match admin.status(&queue) {
            Ok(status) => println!("{}\t{}\t{}", status.name, status.messages, status.consumers),
            Err(error) if error.is_queue_not_found() => {
                eprintln!("fib-client: {error}");
                code = exit::UNAVAILABLE;
            }
            Err(error) => return Err(error),
        }
    }
    admin.close()?;
    Ok(code)
}

fn purge(args: &Args, connection: &ConnectionConfig) -> Result<u8, Error> {
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
    admin.close()?;
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_inputs_are_quoted_short() {
        assert_eq!(shortened("12"), "12");
        let long = "7".repeat(1_200_000);
        let shown = shortened(&long);
        assert!(shown.len() < 90, "{shown}");
        assert!(shown.ends_with("(1200000 bytes)"), "{shown}");
        let wide = "é".repeat(100);
        assert!(shortened(&wide).starts_with(&"é".repeat(QUOTED_INPUT)));
    }
}
