//! Asynchronous result pipelines: requests whose results outlive the sender.

use fib_rpc::services::fibonacci;
use fib_rpc::ResultConsumer;
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::processes::ServerProcess;
use support::TestQueue;

/// A `fib-results --json` process whose output lines are collected as they come.
struct ResultsProcess {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl ResultsProcess {
    fn start(queue: &str) -> ResultsProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_fib-results"))
            .args([queue, "--json"])
            .env("AMQP_URL", support::amqp_url())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn fib-results");
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        ResultsProcess { child, lines }
    }

    fn count(&self) -> usize {
        self.lines.lock().unwrap().len()
    }

    /// SIGTERM, then the exit code.
    fn stop(&mut self) -> Option<i32> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        self.child.wait().unwrap().code()
    }
}

impl Drop for ResultsProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of `"key":"..."` in one of fib-results' JSON lines (values hold no quotes here).
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(&format!("\"{key}\":\""))? + key.len() + 4;
    let end = start + line[start..].find('"')?;
    Some(&line[start..end])
}

#[test]
fn results_outlive_the_sender_and_reach_exactly_one_of_two_callback_workers() {
    let requests = TestQueue::new("pipeline-requests");
    let results = TestQueue::new("pipeline-results");
    let _server = ServerProcess::start(&requests.name, &["--workers", "2"]);

    let numbers: Vec<u64> = (0..100).map(|i| i * 3).collect();
    let inputs: Vec<String> = numbers.iter().map(u64::to_string).collect();
    let output = Command::new(env!("CARGO_BIN_EXE_fib-client"))
        .args([
            "--queue",
            &requests.name,
            "--reply-to",
            &results.name,
            "--no-wait",
        ])
        .args(&inputs)
        .env("AMQP_URL", support::amqp_url())
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let ids: Vec<String> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(ids.len(), 100, "one correlation id per request");
    let n_of: HashMap<&str, u64> = ids
        .iter()
        .map(String::as_str)
        .zip(numbers.iter().copied())
        .collect();

    // The sender has exited; the results wait in the durable queue.
    support::wait_until("100 results are queued", Duration::from_secs(20), || {
        results.counts() == (100, 0)
    });

    let mut workers = [
        ResultsProcess::start(&results.name),
        ResultsProcess::start(&results.name),
    ];
    support::wait_until("100 results are printed", Duration::from_secs(20), || {
        workers.iter().map(ResultsProcess::count).sum::<usize>() >= 100
    });
    // Nothing is left to deliver: every result is printed, and a duplicate would show below.
    support::wait_until("the result queue is empty", Duration::from_secs(20), || {
        results.counts().0 == 0
    });
    for worker in &mut workers {
        assert_eq!(worker.stop(), Some(0), "a clean stop on SIGTERM");
    }
    let mut seen = HashSet::new();
    for worker in &workers {
        for line in worker.lines.lock().unwrap().iter() {
            let id = field(line, "correlation_id").unwrap_or_else(|| panic!("no id in {line}"));
            assert!(seen.insert(id.to_owned()), "{id} delivered twice");
            let n = n_of
                .get(id)
                .unwrap_or_else(|| panic!("a stranger's result {line}"));
            assert_eq!(
                field(line, "value"),
                Some(fibonacci(*n).to_string().as_str()),
                "{line}"
            );
        }
    }
    assert_eq!(seen.len(), 100, "every result exactly once");
    assert_eq!(results.counts(), (0, 0), "nothing left in the result queue");
    eprintln!(
        "pipeline: worker 1 printed {}, worker 2 printed {}",
        workers[0].count(),
        workers[1].count()
    );
}

#[test]
fn submit_and_consume_in_the_library_with_error_results_and_redelivery_of_untaken_ones() {
    let requests = TestQueue::new("submit-requests");
    let results = TestQueue::new("submit-results");
    let server = support::start_fib_server(&requests.name, 2);
    let client = support::client();
    let mut expected = HashMap::new();
    for n in 0..20u64 {
        let id = client
            .submit(&requests.name, n.to_string().as_bytes(), &results.name)
            .unwrap();
        expected.insert(id, Ok(fibonacci(n).to_string().into_bytes()));
    }
    let refused = client.submit(&requests.name, b"x", &results.name).unwrap();
    expected.insert(refused.clone(), Err(()));
    let missing = TestQueue::new("submit-missing");
    let error = client
        .submit(&missing.name, b"1", &results.name)
        .unwrap_err();
    assert!(error.is_no_server(), "{error}");
    client.close().unwrap();

    let config = support::client_config().get_connection().clone();
    let mut consumer = ResultConsumer::connect(&config, &results.name).unwrap();
    let first = consumer
        .next_timeout(Duration::from_secs(10))
        .unwrap()
        .expect("a result");
    // Dropped without close: the result was not confirmed taken, so it comes again.
    drop(consumer);
    let mut consumer = ResultConsumer::connect(&config, &results.name).unwrap();
    let mut received = HashMap::new();
    while received.len() < expected.len() {
        let result = consumer
            .next_timeout(Duration::from_secs(10))
            .unwrap()
            .expect("all results in time");
        let id = result.correlation_id.clone().unwrap();
        let outcome = result
            .outcome
            .map_err(|error| assert!(error.is_remote(), "{error}"));
        assert!(received.insert(id, outcome).is_none(), "a result twice");
    }
    consumer.close().unwrap();
    assert!(received.contains_key(first.correlation_id.as_ref().unwrap()));
    assert_eq!(received, expected);
    assert_eq!(results.counts(), (0, 0));
    server.shutdown().unwrap();
}

#[test]
fn fib_results_count_prints_text_lines_and_exits_by_itself() {
    let requests = TestQueue::new("count-requests");
    let results = TestQueue::new("count-results");
    let server = support::start_fib_server(&requests.name, 1);
    let client = support::client();
    let mut expected = Vec::new();
    for (n, body) in [(10u64, "10"), (20, "20")] {
        let id = client
            .submit(&requests.name, body.as_bytes(), &results.name)
            .unwrap();
        expected.push(format!("{id}  {}", fibonacci(n)));
    }
    let refused = client
        .submit(&requests.name, b"oops", &results.name)
        .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_fib-results"))
        .args([&results.name, "--count", "3"])
        .env("AMQP_URL", support::amqp_url())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
    let stdout = String::from_utf8(output.stdout).unwrap();
    let lines: HashSet<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    for line in &expected {
        assert!(
            lines.contains(line.as_str()),
            "{line} missing from {stdout}"
        );
    }
    assert!(
        lines
            .iter()
            .any(|line| line.starts_with(&format!("{refused}  error: invalid request"))),
        "{stdout}"
    );
    assert_eq!(results.counts(), (0, 0), "all three acked");
    server.shutdown().unwrap();
}
