//! Long calls as a script makes them: fib-client's progress lines, and its timeout and Ctrl-C
//! cancelling the work of a fib-server computing a large fib(n).

use std::process::{Command, Stdio};
use std::time::Duration;
use support::processes::{
    requests_in_hand, run_fib_client, sample, server_with_metrics, tool, ServerProcess,
};
use support::TestQueue;

/// fib(5000000) takes a debug-built fib-server seconds: 3 s computing, 7 s writing its digits.
const LARGE_N: &str = "5000000";

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn progress_comes_as_json_lines_before_the_answer() {
    let queue = TestQueue::new("cli-progress");
    let _server = ServerProcess::start(&queue.name, &["--max-n", "2000000"]);
    let output = run_fib_client(&[
        "--queue",
        &queue.name,
        "--timeout",
        "60",
        "--json",
        "--progress",
        "1000000",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let (answer, progress) = lines.split_last().expect("some lines");
    assert!(answer["value"].as_str().unwrap().starts_with("1953282128"));
    assert!(!progress.is_empty(), "no progress line: {lines:?}");
    let fractions: Vec<f64> = progress
        .iter()
        .map(|line| {
            assert_eq!(line["input"], "1000000");
            line["progress"].as_f64().unwrap()
        })
        .collect();
    assert!(
        fractions.windows(2).all(|pair| pair[0] < pair[1]),
        "{fractions:?}"
    );
    assert!(
        progress.last().unwrap()["message"]
            .as_str()
            .unwrap()
            .contains("writing the digits"),
        "{lines:?}"
    );
    // Without --progress, the same call prints its answer alone.
    let plain = run_fib_client(&["--queue", &queue.name, "--timeout", "60", "--json", "20"]);
    assert_eq!(
        String::from_utf8_lossy(&plain.stdout),
        "{\"input\":\"20\",\"value\":\"6765\"}\n"
    );
}

#[test]
fn a_timeout_cancels_the_servers_work_and_frees_it_for_the_next_call() {
    let queue = TestQueue::new("cli-cancel-timeout");
    let (server, metrics) = server_with_metrics(
        &support::amqp_url(),
        &queue.name,
        &["--max-n", "10000000", "--workers", "1"],
    );
    let output = run_fib_client(&["--queue", &queue.name, "--timeout", "1", LARGE_N]);
    assert_eq!(output.status.code(), Some(75), "{}", stderr(&output));
    support::wait_until(
        "the server stops the cancelled job",
        Duration::from_secs(30),
        || server.log_lines_with("cancelled by its caller while we computed it") == 1,
    );
    let metrics_text = support::processes::get(&metrics, "/metrics").1;
    let series = format!(
        "fib_rpc_requests_total{{queue=\"{}\",outcome=\"cancelled\"}}",
        queue.name
    );
    assert_eq!(sample(&metrics_text, &series), 1.0);
    let next = run_fib_client(&["--queue", &queue.name, "--timeout", "5", "10"]);
    assert_eq!(
        String::from_utf8_lossy(&next.stdout),
        "55\n",
        "{}",
        stderr(&next)
    );
}

#[test]
fn ctrl_c_cancels_the_calls_in_flight_and_exits_130() {
    let queue = TestQueue::new("cli-cancel-interrupt");
    let (server, metrics) = server_with_metrics(
        &support::amqp_url(),
        &queue.name,
        &["--max-n", "10000000", "--workers", "1"],
    );
    let client = Command::new(tool("fib-client"))
        .args(["--queue", &queue.name, "--timeout", "60", LARGE_N])
        .env("AMQP_URL", support::amqp_url())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    support::wait_until(
        "the server holds the request",
        Duration::from_secs(10),
        || requests_in_hand(&metrics, &queue.name) == 1.0,
    );
    let interrupted = Command::new("kill")
        .args(["-INT", &client.id().to_string()])
        .status()
        .unwrap();
    assert!(interrupted.success());
    let output = client.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(130), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("1 calls cancelled"),
        "{}",
        stderr(&output)
    );
    support::wait_until(
        "the server stops the cancelled job",
        Duration::from_secs(30),
        || server.log_lines_with("cancelled by its caller while we computed it") == 1,
    );
}
