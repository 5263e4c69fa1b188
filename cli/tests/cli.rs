//! The command-line tools as a script sees them: output and exit codes.

mod processes;
#[path = "../../tests/support/mod.rs"]
mod support;

use processes::ServerProcess;
use std::process::{Command, Output};
use std::time::Duration;
use support::TestQueue;

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

#[test]
fn prints_each_answer_on_its_own_line_in_order_and_exits_0() {
    let queue = TestQueue::new("cli-ok");
    let _server = ServerProcess::start(&queue.name, &["--workers", "2"]);
    let output = processes::run_fib_client(&["--queue", &queue.name, "10", "0", "94", "1"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(stdout(&output), "55\n0\n19740274219868223167\n1\n");
}

#[test]
fn a_refused_request_exits_1_with_the_servers_message() {
    let queue = TestQueue::new("cli-remote");
    let _server = ServerProcess::start(&queue.name, &["--max-n", "50"]);
    let output = processes::run_fib_client(&["--queue", &queue.name, "51"]);
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert_eq!(message.lines().count(), 1, "one clear line: {message}");
    assert!(message.contains("maximum is 50"), "{message}");
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &[][..],
        &["-1"],
        &["ten"],
        &["--timeout", "0", "5"],
        &["--no-such-flag", "5"],
    ] {
        let output = processes::run_fib_client(args);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            stderr(&output)
        );
    }
}

#[test]
fn no_reply_in_time_exits_75() {
    let queue = TestQueue::new("cli-timeout");
    queue.declare_quorum();
    let output = processes::run_fib_client(&[
        "--queue",
        &queue.name,
        "--wait-for-server",
        "--timeout",
        "0.5",
        "5",
    ]);
    assert_eq!(output.status.code(), Some(75), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("timed out after 500ms waiting for the reply"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn no_broker_or_no_queue_exits_69() {
    let output = Command::new(env!("CARGO_BIN_EXE_fib-client"))
        .args(["--amqp-url", "amqp://guest:guest@127.0.0.1:1/%2f", "5"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(69), "{}", stderr(&output));
    assert!(
        !stderr(&output).contains("guest:guest"),
        "credentials leaked"
    );

    let queue = TestQueue::new("cli-missing");
    let output = processes::run_fib_client(&["--queue", &queue.name, "5"]);
    assert_eq!(output.status.code(), Some(69), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("no queue named"),
        "{}",
        stderr(&output)
    );

    queue.declare_quorum();
    let output = processes::run_fib_client(&["--queue", &queue.name, "5"]);
    assert_eq!(output.status.code(), Some(69), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("no server is consuming"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn the_server_stops_cleanly_on_sigterm() {
    let queue = TestQueue::new("cli-sigterm");
    let mut server = ServerProcess::start(&queue.name, &[]);
    assert_eq!(
        stdout(&processes::run_fib_client(&["--queue", &queue.name, "3"])),
        "2\n"
    );
    server.signal("TERM");
    assert_eq!(server.wait_exit(Duration::from_secs(10)), Some(0));
    assert_eq!(queue.counts(), (0, 0));
}

#[test]
fn five_hundred_numbers_in_one_invocation() {
    let queue = TestQueue::new("cli-many");
    let _server = ServerProcess::start(&queue.name, &["--workers", "2"]);
    let numbers: Vec<String> = (1..=500).map(|n| n.to_string()).collect();
    let mut args = vec!["--queue", queue.name.as_str()];
    args.extend(numbers.iter().map(String::as_str));
    let output = processes::run_fib_client(&args);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let lines: Vec<String> = stdout(&output).lines().map(str::to_owned).collect();
    let expected: Vec<String> = (1..=500u64)
        .map(|n| fib_rpc::services::fibonacci(n).to_string())
        .collect();
    assert_eq!(lines, expected);
}
