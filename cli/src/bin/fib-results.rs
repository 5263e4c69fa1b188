//! `fib-results`: a callback worker; prints the results that arrive on a result queue.

use clap::{CommandFactory, Parser};
use fib_rpc::{ConnectionConfig, ResultConsumer, ResultMessage};
use fib_rpc_cli::docs::DocsArgs;
use fib_rpc_cli::exit;
use serde_json::json;
use signal_hook::consts::{SIGINT, SIGTERM};
use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Print one line per result arriving on RESULTS (sent there by `fib-client --reply-to RESULTS
/// --no-wait`): `correlation_id  value`, or `correlation_id  error: message`. Runs until
/// Ctrl-C/SIGTERM or --count results. Several may read one queue: each result goes to one.
///
/// A result is acknowledged only after its line was written and flushed: when stdout closes
/// (`fib-results R | head -1`) or fails, the result in hand stays in the queue.
///
/// Exit codes: 0 ok (also when the reader of stdout went away), 69 broker unavailable, 74 stdout
/// failed, 77 the broker refused the credentials or permissions, 78 bad configuration (URL).
#[derive(Parser, Debug)]
#[command(name = "fib-results", version)]
struct Args {
    /// The durable result queue (declared if missing).
    #[arg(value_name = "RESULTS", required_unless_present_any = ["completions", "man"])]
    queue: Option<String>,
    /// One JSON object per line: {"correlation_id":..., "value":...} or {..., "error":...}.
    #[arg(long)]
    json: bool,
    /// Exit after this many results.
    #[arg(long, value_name = "K")]
    count: Option<u64>,
    /// Broker URL; for a cluster, one per node (repeat the flag, or separate them by commas),
    /// tried in the order given.
    #[arg(long, env = "AMQP_URL", default_value = fib_rpc::DEFAULT_URL, hide_env_values = true, value_delimiter = ',', value_name = "URL")]
    amqp_url: Vec<String>,
    #[command(flatten)]
    docs: DocsArgs,
}

/// Warnings only, and none of amiquip's: a missing queue it warns about is already our error.
const QUIET_LOGS: &str = "warn,amiquip=error";

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(QUIET_LOGS)).init();
    let args = Args::parse();
    if let Some(code) = args.docs.handle(Args::command()) {
        return code;
    }
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Broker(error)) => {
            eprintln!("fib-results: {error}");
            ExitCode::from(exit::code(&error))
        }
        Err(Failure::Output(error)) if error.kind() == std::io::ErrorKind::BrokenPipe => {
            ExitCode::SUCCESS
        }
        Err(Failure::Output(error)) => {
            eprintln!("fib-results: writing to stdout: {error}");
            ExitCode::from(exit::IO)
        }
    }
}

enum Failure {
    Broker(fib_rpc::Error),
    Output(std::io::Error),
}

impl From<fib_rpc::Error> for Failure {
    fn from(error: fib_rpc::Error) -> Self {
        Failure::Broker(error)
    }
}

fn run(args: &Args) -> Result<(), Failure> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [SIGINT, SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .map_err(|e| fib_rpc::Error::Config(format!("installing signal handlers: {e}")))?;
    }
    let queue = args.queue.as_deref().unwrap_or_default();
    let mut consumer =
        ResultConsumer::connect(&args.amqp_url.join(",").parse::<ConnectionConfig>()?, queue)?;
    let mut stdout = std::io::stdout().lock();
    let mut printed = 0;
    while !stop.load(Ordering::Relaxed) && args.count.is_none_or(|count| printed < count) {
        // Short waits, so a signal is noticed promptly; the result in hand is acked only when
        // the next is asked for, or at close, after it has been printed.
        let Some(result) = consumer.next_timeout(Duration::from_millis(200))? else {
            continue;
        };
        let line = if args.json {
            json_line(&result)
        } else {
            text_line(&result)
        };
        if let Err(error) = writeln!(stdout, "{line}").and_then(|()| stdout.flush()) {
            // Dropped without close: the result that was not written is not acked.
            drop(consumer);
            return Err(Failure::Output(error));
        }
        printed += 1;
    }
    Ok(consumer.close()?)
}

fn text_line(result: &ResultMessage) -> String {
    let id = result.correlation_id.as_deref().unwrap_or("-");
    match &result.outcome {
        Ok(body) => format!("{id}  {}", String::from_utf8_lossy(body)),
        Err(error) => format!(
            "{id}  error: {}",
            error.remote_message().unwrap_or("unknown")
        ),
    }
}

fn json_line(result: &ResultMessage) -> String {
    let id = json!(result.correlation_id);
    match &result.outcome {
        Ok(body) => fib_rpc_cli::json_line(&[
            ("correlation_id", id),
            ("value", json!(String::from_utf8_lossy(body))),
        ]),
        Err(error) => fib_rpc_cli::json_line(&[
            ("correlation_id", id),
            ("error", json!(error.remote_message().unwrap_or("unknown"))),
        ]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_lines_name_the_correlation_id() {
        let ok = ResultMessage {
            correlation_id: Some("id-1".into()),
            outcome: Ok(b"55".to_vec()),
        };
        let failed = ResultMessage {
            correlation_id: None,
            outcome: Err(fib_rpc::Error::Remote("bad \"x\"".into())),
        };
        assert_eq!(text_line(&ok), "id-1  55");
        assert_eq!(json_line(&ok), r#"{"correlation_id":"id-1","value":"55"}"#);
        assert_eq!(text_line(&failed), "-  error: bad \"x\"");
        assert_eq!(
            json_line(&failed),
            r#"{"correlation_id":null,"error":"bad \"x\""}"#
        );
    }
}
