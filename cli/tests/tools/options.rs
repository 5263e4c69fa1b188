//! fib-client's per-call options (exchange, routing key, priority, headers, retries) and
//! fib-server's priority queues, as a script uses them.

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use support::processes::{run_fib_client, tool, ServerProcess};
use support::{raw_consumer_via_amq_direct, text_header, TestQueue};

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn exchange_routing_key_priority_and_headers_reach_the_wire() {
    let routing_key = format!("test-cli-options-{}", uuid::Uuid::new_v4());
    let consumer = raw_consumer_via_amq_direct(&routing_key, b"55");
    let output = run_fib_client(&[
        "--exchange",
        "amq.direct",
        "--routing-key",
        &routing_key,
        "--priority",
        "3",
        "--header",
        "tenant=acme",
        "--header",
        "team=fib=rpc",
        "10",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "55\n");
    let seen = consumer.join().unwrap();
    assert_eq!(
        (seen.exchange.as_str(), seen.routing_key.as_str()),
        ("amq.direct", routing_key.as_str())
    );
    assert_eq!(seen.properties.priority(), &Some(3));
    assert_eq!(text_header(&seen.properties, "tenant"), Some("acme"));
    assert_eq!(text_header(&seen.properties, "team"), Some("fib=rpc"));
}

#[test]
fn an_exchange_that_routes_nowhere_exits_69_at_once() {
    let started = Instant::now();
    let output = run_fib_client(&[
        "--exchange",
        "amq.direct",
        "--routing-key",
        &format!("test-nobody-{}", uuid::Uuid::new_v4()),
        "--timeout",
        "10",
        "5",
    ]);
    assert_eq!(output.status.code(), Some(69), "{}", stderr(&output));
    assert!(stderr(&output).contains("routes"), "{}", stderr(&output));
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn a_reserved_or_malformed_header_is_refused_before_anything_is_sent() {
    // No server: a request that went out would wait in the queue.
    let queue = TestQueue::new("cli-reserved");
    queue.declare_quorum();
    let reserved = ["--header", "x-deadline-ms=1"];
    let malformed = ["--header", "novalue"];
    for (header, code) in [(reserved, 78), (malformed, 2)] {
        let mut args = vec!["--queue", &queue.name, "--wait-for-server"];
        args.extend(header);
        args.push("5");
        let output = run_fib_client(&args);
        assert_eq!(output.status.code(), Some(code), "{}", stderr(&output));
    }
    let output = run_fib_client(&["--queue", &queue.name, "--header", "x-match=all", "5"]);
    assert!(stderr(&output).contains("reserved"), "{}", stderr(&output));
    assert_eq!(queue.counts(), (0, 0), "nothing was sent");
}

#[test]
fn fib_server_declares_a_priority_queue_on_a_classic_queue_only() {
    let queue = TestQueue::new("cli-priority");
    let _server = ServerProcess::start(
        &queue.name,
        &["--queue-type", "classic", "--max-priority", "9"],
    );
    let listing = support::rabbitmqctl(None, &["list_queues", "name", "arguments"]);
    let line = support::listed(&listing, &queue.name).expect("the queue is listed");
    assert!(line.contains("x-max-priority"), "{line}");
    let output = run_fib_client(&["--queue", &queue.name, "--priority", "5", "10"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "55\n");
    let refused = Command::new(tool("fib-server"))
        .args(["--queue", &queue.name, "--max-priority", "9"])
        .env("AMQP_URL", support::amqp_url())
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(78), "{}", stderr(&refused));
    assert!(stderr(&refused).contains("classic"), "{}", stderr(&refused));
}

#[test]
fn with_retry_a_call_waits_out_a_missing_server_and_without_it_exits_69() {
    let queue = TestQueue::new("cli-retry");
    let output = run_fib_client(&["--queue", &queue.name, "--timeout", "30", "10"]);
    assert_eq!(output.status.code(), Some(69), "{}", stderr(&output));
    let mut client = Command::new(tool("fib-client"))
        .args(["--queue", &queue.name, "--timeout", "60", "--retry", "10"])
        .env("AMQP_URL", support::amqp_url())
        .env("RUST_LOG", "warn,fib_rpc=debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Once the first attempt has failed for want of a server, one starts.
    let stderr = client.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let failed = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|line| line.contains("attempt 1 failed"))
        .expect("the client logs its failed first attempt");
    assert!(failed.contains("no server for queue"), "{failed}");
    let _server = ServerProcess::start(&queue.name, &[]);
    std::thread::spawn(move || lines.for_each(drop));
    let output = client.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "55\n");
}
