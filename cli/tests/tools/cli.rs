//! The command-line tools as a script sees them: output and exit codes.

use std::process::{Command, Output, Stdio};
use std::time::Duration;
use support::processes::ServerProcess;
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
    let output =
        support::processes::run_fib_client(&["--queue", &queue.name, "10", "0", "94", "1"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(stdout(&output), "55\n0\n19740274219868223167\n1\n");
}

#[test]
fn a_refused_request_exits_1_with_the_servers_message() {
    let queue = TestQueue::new("cli-remote");
    let _server = ServerProcess::start(&queue.name, &["--max-n", "50"]);
    let output = support::processes::run_fib_client(&["--queue", &queue.name, "51"]);
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert_eq!(message.lines().count(), 1, "one clear line: {message}");
    assert!(message.contains("maximum is 50"), "{message}");
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["-1"][..],
        &["ten"],
        &["--timeout", "0", "5"],
        &["--no-such-flag", "5"],
    ] {
        let output = support::processes::run_fib_client(args);
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
    let output = support::processes::run_fib_client(&[
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
    let output = support::processes::run_fib_client(&["--queue", &queue.name, "5"]);
    assert_eq!(output.status.code(), Some(69), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("no queue named"),
        "{}",
        stderr(&output)
    );

    queue.declare_quorum();
    let output = support::processes::run_fib_client(&["--queue", &queue.name, "5"]);
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
        stdout(&support::processes::run_fib_client(&[
            "--queue",
            &queue.name,
            "3"
        ])),
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
    let output = support::processes::run_fib_client(&args);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let lines: Vec<String> = stdout(&output).lines().map(str::to_owned).collect();
    let expected: Vec<String> = (1..=500u64)
        .map(|n| fib_rpc::services::fibonacci(n).to_string())
        .collect();
    assert_eq!(lines, expected);
}

/// Reads a child's output lines on a thread of their own, so a test waits for a line with a
/// timeout instead of hanging on a read.
fn lines_of(reader: impl std::io::Read + Send + 'static) -> crossbeam_channel::Receiver<String> {
    let (sender, lines) = crossbeam_channel::unbounded();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(reader)).map_while(Result::ok) {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    lines
}

fn next_line(lines: &crossbeam_channel::Receiver<String>) -> String {
    lines
        .recv_timeout(Duration::from_secs(20))
        .expect("a line within 20 s")
}

#[test]
fn stdin_inputs_are_answered_while_they_are_read() {
    use std::io::Write;
    let queue = TestQueue::new("cli-stdin");
    let _server = ServerProcess::start(&queue.name, &["--workers", "2"]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_fib-client"))
        .args(["--queue", &queue.name, "-"])
        .env("AMQP_URL", support::amqp_url())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let answers = lines_of(child.stdout.take().unwrap());
    writeln!(input, "5\n6").unwrap();
    input.flush().unwrap();
    // Answered while stdin is still open: the input is streamed, not collected first.
    assert_eq!(next_line(&answers), "5");
    assert_eq!(next_line(&answers), "8");
    writeln!(input, "7").unwrap();
    drop(input);
    assert_eq!(next_line(&answers), "13");
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

#[test]
fn an_empty_stdin_is_an_empty_batch() {
    let output = support::processes::run_fib_client(&["-"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(stdout(&output), "");
}

#[test]
fn keep_going_answers_the_rest_and_exits_with_the_worst_code() {
    let queue = TestQueue::new("cli-keep-going");
    let _server = ServerProcess::start(&queue.name, &["--max-n", "50"]);
    let stopped = support::processes::run_fib_client(&["--queue", &queue.name, "5", "51", "6"]);
    assert_eq!(stopped.status.code(), Some(1));
    assert_eq!(stdout(&stopped), "5\n", "stops at the refusal");

    let going = support::processes::run_fib_client(&[
        "--queue",
        &queue.name,
        "--keep-going",
        "5",
        "51",
        "6",
    ]);
    assert_eq!(going.status.code(), Some(1));
    assert_eq!(stdout(&going), "5\n8\n");
    let message = stderr(&going);
    assert_eq!(message.lines().count(), 1, "{message}");
    assert!(
        message.contains("51") && message.contains("maximum is 50"),
        "{message}"
    );
}

#[test]
fn json_output_has_one_object_per_input() {
    let queue = TestQueue::new("cli-json");
    let _server = ServerProcess::start(&queue.name, &["--max-n", "50"]);
    let output = support::processes::run_fib_client(&[
        "--queue",
        &queue.name,
        "--json",
        "--keep-going",
        "10",
        "51",
    ]);
    assert_eq!(output.status.code(), Some(1));
    let lines: Vec<serde_json::Value> = stdout(&output)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines[0], serde_json::json!({"input": "10", "value": "55"}));
    assert_eq!(lines[1]["input"], "51");
    assert!(lines[1]["error"]
        .as_str()
        .unwrap()
        .contains("maximum is 50"));
    assert_eq!(lines.len(), 2);
}

#[test]
fn a_bad_configuration_exits_78() {
    for (binary, args) in [
        (
            env!("CARGO_BIN_EXE_fib-client"),
            &["--amqp-url", "http://broker", "5"][..],
        ),
        (
            env!("CARGO_BIN_EXE_fib-client"),
            &["--amqp-url", "amqp://broker/?heartbeat=0", "5"],
        ),
        (env!("CARGO_BIN_EXE_fib-server"), &["--workers", "0"]),
        (env!("CARGO_BIN_EXE_fib-server"), &["--service", "nope"]),
        (env!("CARGO_BIN_EXE_fib-server"), &["--prefetch", "0"]),
        (
            env!("CARGO_BIN_EXE_fib-results"),
            &["--amqp-url", "ftp://broker", "q"],
        ),
    ] {
        let output = Command::new(binary)
            .args(args)
            .env("AMQP_URL", support::amqp_url())
            .output()
            .unwrap();
        assert_eq!(
            output.status.code(),
            Some(78),
            "{args:?}: {}",
            stderr(&output)
        );
        assert_eq!(stderr(&output).lines().count(), 1, "{}", stderr(&output));
    }
}

#[test]
fn a_reply_the_protocol_does_not_allow_exits_65() {
    let queue = TestQueue::new("cli-foreign");
    let _foreign = fib_rpc::RpcServer::new(support::server_config(&queue.name, 1), |_: &[u8]| {
        Ok::<_, fib_rpc::HandlerError>(b"not a number".to_vec())
    })
    .start()
    .unwrap();
    let output = support::processes::run_fib_client(&["--queue", &queue.name, "5"]);
    assert_eq!(output.status.code(), Some(65), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("malformed reply"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn wrong_credentials_are_told_apart_from_an_unreachable_broker() {
    let wrong = format!(
        "amqp://guest:not-the-password@{}/%2f",
        support::broker_address()
    );
    let refused = Command::new(env!("CARGO_BIN_EXE_fib-client"))
        .args(["--amqp-url", &wrong, "5"])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(77), "EX_NOPERM");
    assert!(
        stderr(&refused).contains("refused the credentials"),
        "{}",
        stderr(&refused)
    );
    assert!(!stderr(&refused).contains("not-the-password"));
    let unreachable = Command::new(env!("CARGO_BIN_EXE_fib-client"))
        .args(["--amqp-url", "amqp://guest:guest@127.0.0.1:1/%2f", "5"])
        .output()
        .unwrap();
    assert_eq!(unreachable.status.code(), Some(69));
    assert!(
        stderr(&unreachable).contains("refused"),
        "{}",
        stderr(&unreachable)
    );
    assert!(!stderr(&unreachable).contains("credentials"));
}

#[test]
fn wait_for_server_waits_for_a_queue_that_no_server_has_declared_yet() {
    let queue = TestQueue::new("cli-wait");
    let mut child = Command::new(env!("CARGO_BIN_EXE_fib-client"))
        .args([
            "--queue",
            &queue.name,
            "--wait-for-server",
            "--timeout",
            "30",
            "12",
        ])
        .env("AMQP_URL", support::amqp_url())
        .env("RUST_LOG", "error,fib_rpc=info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = lines_of(child.stderr.take().unwrap());
    let answers = lines_of(child.stdout.take().unwrap());
    assert!(next_line(&log).contains("waiting for a server to declare queue"));
    assert!(
        !queue.exists(),
        "the client never declares the request queue"
    );
    let _server = ServerProcess::start(&queue.name, &["--workers", "1"]);
    assert_eq!(next_line(&answers), "144");
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

#[test]
fn usage_and_version_name_the_binary_that_runs() {
    for (binary, name) in [
        (env!("CARGO_BIN_EXE_fib-client"), "fib-client"),
        (env!("CARGO_BIN_EXE_fib-server"), "fib-server"),
        (env!("CARGO_BIN_EXE_fib-results"), "fib-results"),
        (env!("CARGO_BIN_EXE_fib-bench"), "fib-bench"),
    ] {
        let usage = Command::new(binary).arg("--no-such-flag").output().unwrap();
        assert_eq!(usage.status.code(), Some(2));
        assert!(
            stderr(&usage).contains(&format!("Usage: {name}")),
            "{}",
            stderr(&usage)
        );
        let version = Command::new(binary).arg("--version").output().unwrap();
        assert_eq!(
            stdout(&version),
            format!("{name} {}\n", env!("CARGO_PKG_VERSION"))
        );
    }
}

#[test]
fn status_of_a_missing_queue_says_so_once() {
    let queue = TestQueue::new("cli-status-missing");
    let output = support::processes::run_fib_client(&["--status", "--queue", &queue.name]);
    assert_eq!(output.status.code(), Some(69));
    assert_eq!(
        stderr(&output).matches("no queue named").count(),
        1,
        "{}",
        stderr(&output)
    );
}

#[test]
fn every_server_setting_can_come_from_the_environment() {
    let queue = TestQueue::new("cli-env");
    let server = ServerProcess::start_configured(
        &[],
        &[
            ("FIB_RPC_QUEUE", queue.name.as_str()),
            ("FIB_RPC_WORKERS", "1"),
            ("FIB_RPC_PREFETCH", "3"),
            ("FIB_RPC_MAX_N", "20"),
            ("FIB_RPC_QUEUE_TYPE", "classic"),
        ],
    );
    assert_eq!(server.log_lines_with(": 1 worker, prefetch 3"), 1);
    assert_eq!(queue.counts(), (0, 1));
    let refused = support::processes::run_fib_client(&["--queue", &queue.name, "21"]);
    assert!(
        stderr(&refused).contains("maximum is 20"),
        "{}",
        stderr(&refused)
    );
    let help = Command::new(env!("CARGO_BIN_EXE_fib-server"))
        .arg("--help")
        .output()
        .unwrap();
    for variable in [
        "FIB_RPC_SERVICE",
        "FIB_RPC_QUEUE",
        "FIB_RPC_WORKERS",
        "FIB_RPC_PREFETCH",
        "FIB_RPC_MAX_N",
        "FIB_RPC_MAX_DIGITS",
        "FIB_RPC_QUEUE_TYPE",
        "FIB_RPC_DRAIN_TIMEOUT",
        "FIB_RPC_CLOSE_TIMEOUT",
        "FIB_RPC_MAX_MESSAGE_SIZE",
        "FIB_RPC_CONSUMER_TIMEOUT",
        "AMQP_URL",
    ] {
        assert!(stdout(&help).contains(variable), "--help lists {variable}");
    }
}

#[test]
fn completions_and_man_pages_come_from_the_tools_themselves() {
    for name in ["fib-client", "fib-server", "fib-results"] {
        let binary = match name {
            "fib-client" => env!("CARGO_BIN_EXE_fib-client"),
            "fib-server" => env!("CARGO_BIN_EXE_fib-server"),
            _ => env!("CARGO_BIN_EXE_fib-results"),
        };
        let bash = Command::new(binary)
            .args(["--completions", "bash"])
            .output()
            .unwrap();
        assert_eq!(bash.status.code(), Some(0));
        assert!(stdout(&bash).contains(&format!("complete -F _{}", name.replace('-', "__"))));
        let man = Command::new(binary).arg("--man").output().unwrap();
        assert!(
            stdout(&man).contains(&format!(".TH {name} 1")),
            "{}",
            stdout(&man)
        );
    }
}

#[test]
fn status_works_against_any_node_of_the_cluster() {
    let nodes = support::nodes::private_nodes(3);
    let queue = format!("test-cli-cluster-status-{}", uuid::Uuid::new_v4());
    support::declare_at(&nodes[0].url(), &queue, fib_rpc::QueueType::Quorum, true);
    for node in &nodes {
        let output = Command::new(env!("CARGO_BIN_EXE_fib-client"))
            .args(["--status", "--queue", &queue, "--amqp-url", &node.url()])
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
        assert_eq!(
            stdout(&output),
            format!("name\tmessages\tconsumers\n{queue}\t0\t0\n")
        );
    }
    let all = nodes
        .iter()
        .map(|node| node.url())
        .collect::<Vec<_>>()
        .join(",");
    let output = Command::new(env!("CARGO_BIN_EXE_fib-client"))
        .args(["--status", "--queue", &queue, "--amqp-url", &all])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
}
