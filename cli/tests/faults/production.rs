//! fib-rpc against a broker configured as production brokers are: the private node of
//! `scripts/nodes.sh limits` (a consumer timeout of 3 s, a max_message_size of 1 MiB, a user
//! without configure permission), memory alarms raised on it, and a server whose clock
//! disagrees with its callers' (faketime). The shared broker is never reconfigured.

use amiquip::{Connection, QueueDeleteOptions};
use fib_rpc::{ErrorKind, HandlerError, RpcClient, RpcServer, ServerConfig, ServerHandle};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use support::nodes::{limits_node, PrivateNode};
use support::processes::{faketime_env, ServerProcess};
use support::{wait_until, TestQueue};

/// A memory alarm blocks every publisher of the node: the alarm test runs alone (write), the
/// others side by side (read).
static NODE_CONDITIONS: RwLock<()> = RwLock::new(());

fn shared_node() -> std::sync::RwLockReadGuard<'static, ()> {
    NODE_CONDITIONS
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A queue of this test's own on the limits node, deleted when dropped.
struct NodeQueue {
    name: String,
    url: String,
}

impl NodeQueue {
    fn new(node: &PrivateNode, prefix: &str) -> NodeQueue {
        NodeQueue {
            name: format!("test-{prefix}-{}", uuid::Uuid::new_v4()),
            url: node.url(),
        }
    }
}

impl Drop for NodeQueue {
    fn drop(&mut self) {
        if let Ok(mut connection) = Connection::insecure_open(&self.url) {
            if let Ok(channel) = connection.open_channel(None) {
                let _ = channel.queue_delete(self.name.as_str(), QueueDeleteOptions::default());
            }
            let _ = connection.close();
        }
    }
}

fn server_on(node: &PrivateNode, queue: &str, workers: usize) -> ServerConfig {
    let mut config = ServerConfig::new(node.url(), queue);
    config = config.workers(workers);
    config
}

/// Waits until `queue` holds nothing, ready or unacknowledged.
fn wait_drained(node: &PrivateNode, queue: &str) {
    wait_until(
        &format!("{queue} is empty"),
        Duration::from_secs(20),
        || support::ready_and_unacked(Some(&node.name), queue) == Some((0, 0)),
    );
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A server whose handler counts how often it ran for body `big`, and answers it with
/// `reply_size` bytes (an echo for anything else).
fn counting_server(config: ServerConfig, reply_size: usize) -> (ServerHandle, Arc<AtomicUsize>) {
    let runs = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&runs);
    let server = RpcServer::new(config, move |body: &[u8]| {
        if body == b"big" {
            counted.fetch_add(1, Ordering::SeqCst);
            return Ok::<_, HandlerError>(vec![b'7'; reply_size]);
        }
        Ok(body.to_vec())
    })
    .start()
    .expect("start the server on the limits node");
    (server, runs)
}

#[test]
fn a_reply_the_broker_refuses_for_its_size_is_an_error_reply_computed_once() {
    let _node = shared_node();
    let node = limits_node();
    let queue = NodeQueue::new(&node, "size-reply");
    let (server, runs) = counting_server(server_on(&node, &queue.name, 2), 2 * 1024 * 1024);
    let client = RpcClient::connect(node.url()).unwrap();
    let started = Instant::now();
    let error = client
        .call_with_timeout(&queue.name, b"big", Duration::from_secs(10))
        .unwrap_err();
    eprintln!("error reply after {:?}: {error}", started.elapsed());
    let message = error.remote_message().unwrap_or_else(|| panic!("{error}"));
    assert!(message.contains("2097152 bytes"), "{message}");
    assert!(message.contains("1048576"), "{message}");
    assert!(message.contains("max_message_size"), "{message}");
    // The broker requeued the request when it closed the channel; its copy is acked, not
    // computed again.
    wait_until(
        "the requeued copy is acked",
        Duration::from_secs(20),
        || server.stats().duplicates == 1,
    );
    wait_drained(&node, &queue.name);
    assert_eq!(runs.load(Ordering::SeqCst), 1, "computed once");
    let stats = server.stats();
    assert_eq!(
        (stats.channel_losses, stats.reconnects),
        (1, 0),
        "{stats:?}"
    );
    // The broker's limit is known now: the next such reply is refused before it is sent.
    let again = client
        .call_with_timeout(&queue.name, b"big", Duration::from_secs(10))
        .unwrap_err();
    assert!(again.is_remote(), "{again}");
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    assert_eq!(server.stats().channel_losses, 1, "no second refusal");
    assert_eq!(
        client
            .call_with_timeout(&queue.name, b"small", Duration::from_secs(5))
            .unwrap(),
        b"small"
    );
    client.close().unwrap();
    server.shutdown().unwrap();
}

#[test]
fn a_configured_size_limit_refuses_replies_before_the_broker_sees_them() {
    let _node = shared_node();
    let node = limits_node();
    let queue = NodeQueue::new(&node, "size-limit");
    let mut config = server_on(&node, &queue.name, 1);
    let connection = config
        .get_connection()
        .clone()
        .max_message_size(1024 * 1024);
    config = config.connection(connection);
    let (server, runs) = counting_server(config, 1024 * 1024 + 1);
    let client = RpcClient::connect(node.url()).unwrap();
    let error = client
        .call_with_timeout(&queue.name, b"big", Duration::from_secs(10))
        .unwrap_err();
    assert!(
        error
            .remote_message()
            .is_some_and(|message| message.contains("1048577 bytes")),
        "{error}"
    );
    wait_drained(&node, &queue.name);
    let stats = server.stats();
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(
        (stats.channel_losses, stats.duplicates),
        (0, 0),
        "{stats:?}"
    );
    client.close().unwrap();
    server.shutdown().unwrap();
}

#[test]
fn a_request_the_broker_refuses_for_its_size_fails_with_its_limit() {
    let _node = shared_node();
    let node = limits_node();
    let queue = NodeQueue::new(&node, "size-request");
    let (server, _) = counting_server(server_on(&node, &queue.name, 1), 1);
    let client = RpcClient::connect(node.url()).unwrap();
    let big = vec![b'1'; 2 * 1024 * 1024];
    let error = client
        .call_with_timeout(&queue.name, &big, Duration::from_secs(10))
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::TooLarge, "{error}");
    assert!(error.to_string().contains("1048576"), "{error}");
    // Known now: refused at once, and the connection serves the next call.
    let again = client
        .call_with_timeout(&queue.name, &big, Duration::from_secs(10))
        .unwrap_err();
    assert!(again.is_too_large(), "{again}");
    assert_eq!(
        client
            .call_with_timeout(&queue.name, b"small", Duration::from_secs(5))
            .unwrap(),
        b"small"
    );
    wait_drained(&node, &queue.name);
    assert_eq!(server.stats().answered, 1, "only the small request arrived");
    client.close().unwrap();
    server.shutdown().unwrap();
}

#[test]
fn a_handler_longer_than_the_consumer_timeout_is_answered_once_and_costs_no_other_worker() {
    let _node = shared_node();
    let node = limits_node();
    let queue = NodeQueue::new(&node, "consumer-timeout");
    let (server, gate, client, slow) = slow_request_in_hand(&node, &node.url(), &queue.name);
    let client = Arc::new(client);
    let stop = Arc::new(AtomicBool::new(false));
    let fast = {
        let (client, queue, stop) = (Arc::clone(&client), queue.name.clone(), Arc::clone(&stop));
        std::thread::spawn(move || {
            let (mut answered, mut failed) = (0, Vec::new());
            while !stop.load(Ordering::SeqCst) && answered < 100_000 {
                match client.call_with_timeout(&queue, b"fast", Duration::from_secs(5)) {
                    Ok(reply) if reply == b"fast" => answered += 1,
                    other => failed.push(format!("{other:?}")),
                }
            }
            (answered, failed)
        })
    };
    // The broker's consumer timeout closes the slow worker's channel and requeues the request;
    // the other worker sees it come back and acks it unanswered.
    wait_until(
        "the broker requeued the slow request and its copy was acked",
        Duration::from_secs(90),
        || server.stats().duplicates == 1,
    );
    gate.release();
    assert_eq!(slow.wait().unwrap(), b"slow");
    stop.store(true, Ordering::SeqCst);
    let (answered, failed) = fast.join().unwrap();
    eprintln!(
        "slow call answered; {answered} fast calls answered meanwhile, {} failed",
        failed.len()
    );
    assert!(failed.is_empty(), "fast calls failed: {failed:?}");
    assert!(answered > 0);
    wait_drained(&node, &queue.name);
    assert_eq!(gate.started.try_iter().count(), 0, "computed once");
    let stats = server.stats();
    assert_eq!(
        (stats.channel_losses, stats.reconnects),
        (1, 0),
        "{stats:?}"
    );
    assert!(stats.consuming);
    client
        .call_with_timeout(&queue.name, b"after", Duration::from_secs(5))
        .unwrap();
    server.shutdown().unwrap();
}

#[test]
fn the_consumer_timeout_setting_reaches_the_broker_as_a_consumer_argument() {
    let _node = shared_node();
    let node = limits_node();
    let queue = NodeQueue::new(&node, "consumer-argument");
    let mut config = server_on(&node, &queue.name, 1);
    config = config.consumer_timeout(Some(Duration::from_secs(3600)));
    let (server, _) = counting_server(config, 1);
    let listing = node.ctl(&["list_consumers", "queue_name", "arguments"]);
    let ours = listing
        .lines()
        .find(|line| line.starts_with(&queue.name))
        .unwrap_or_else(|| panic!("no consumer of {} in {listing}", queue.name));
    assert!(ours.contains("x-consumer-timeout"), "{ours}");
    assert!(ours.contains("3600000"), "{ours}");
    server.shutdown().unwrap();
}

#[test]
fn fib_servers_consumer_timeout_flag_reaches_the_broker_as_a_consumer_argument() {
    let _node = shared_node();
    let node = limits_node();
    let queue = NodeQueue::new(&node, "consumer-flag");
    let mut server = ServerProcess::start_with_url(
        &node.url(),
        &queue.name,
        &["--workers", "1", "--consumer-timeout", "1800"],
    );
    let listing = node.ctl(&["list_consumers", "queue_name", "arguments"]);
    let ours = listing
        .lines()
        .find(|line| line.starts_with(&queue.name))
        .unwrap_or_else(|| panic!("no consumer of {} in {listing}", queue.name));
    assert!(ours.contains("x-consumer-timeout"), "{ours}");
    assert!(ours.contains("1800000"), "{ours}");
    server.signal("TERM");
    assert_eq!(server.wait_exit(Duration::from_secs(30)), Some(0));
}

#[test]
fn refused_permissions_and_credentials_are_told_apart_and_exit_77() {
    let _node = shared_node();
    let node = limits_node();
    let queue = NodeQueue::new(&node, "no-configure");
    let limited = node.url_as("limited", "limited");
    let error = RpcServer::new(ServerConfig::new(&limited, &queue.name), |body: &[u8]| {
        Ok::<_, HandlerError>(body.to_vec())
    })
    .start()
    .unwrap_err();
    assert!(error.is_access_refused(), "{error}");
    assert!(!error.is_retryable());
    assert!(error.to_string().contains("ACCESS_REFUSED"), "{error}");
    let server = Command::new(env!("CARGO_BIN_EXE_fib-server"))
        .args(["--queue", &queue.name, "--amqp-url", &limited])
        .output()
        .unwrap();
    assert_eq!(server.status.code(), Some(77), "{}", stderr(&server));
    assert!(
        stderr(&server).contains("ACCESS_REFUSED"),
        "{}",
        stderr(&server)
    );
    let wrong = node.url_as("guest", "not-the-password");
    for tool in [
        env!("CARGO_BIN_EXE_fib-client"),
        env!("CARGO_BIN_EXE_fib-bench"),
    ] {
        let args: &[&str] = match tool.ends_with("fib-client") {
            true => &["--amqp-url", &wrong, "5"],
            false => &["--amqp-url", &wrong, "--calls", "1"],
        };
        let started = Instant::now();
        let output = Command::new(tool).args(args).output().unwrap();
        // Without authentication_failure_close, RabbitMQ would hang up silently after 3 s.
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "{tool}: {:?}",
            started.elapsed()
        );
        assert_eq!(
            output.status.code(),
            Some(77),
            "{tool}: {}",
            stderr(&output)
        );
        assert!(
            stderr(&output).contains("refused the credentials"),
            "{tool}: {}",
            stderr(&output)
        );
        assert_eq!(
            stderr(&output).lines().count(),
            1,
            "{tool}: {}",
            stderr(&output)
        );
    }
}

#[test]
fn fib_bench_says_in_one_line_why_it_cannot_start() {
    let _node = shared_node();
    let node = limits_node();
    let no_vhost = format!("amqp://guest:guest@127.0.0.1:{}/no-such-vhost", node.port);
    for (url, code) in [
        ("amqp://guest:guest@127.0.0.1:1/%2f", 69),
        (no_vhost.as_str(), 69),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_fib-bench"))
            .args(["--amqp-url", url, "--calls", "1"])
            .output()
            .unwrap();
        assert_eq!(
            output.status.code(),
            Some(code),
            "{url}: {}",
            stderr(&output)
        );
        assert_eq!(
            stderr(&output).lines().count(),
            1,
            "{url}: {}",
            stderr(&output)
        );
    }
}

/// Lowers the node's memory high watermark so that its memory alarm goes off; restores it when
/// dropped, also when the test fails.
struct MemoryAlarm<'a>(&'a PrivateNode);

impl<'a> MemoryAlarm<'a> {
    fn raise(node: &'a PrivateNode) -> MemoryAlarm<'a> {
        node.ctl(&["set_vm_memory_high_watermark", "0.00001"]);
        wait_until("the memory alarm is on", Duration::from_secs(20), || {
            node.ctl(&["eval", "rabbit_alarm:get_alarms()."])
                .contains("memory")
        });
        MemoryAlarm(node)
    }
}

impl Drop for MemoryAlarm<'_> {
    fn drop(&mut self) {
        self.0.ctl(&["set_vm_memory_high_watermark", "0.4"]);
    }
}

#[test]
fn a_memory_alarm_fails_calls_in_time_with_the_brokers_reason_and_piles_up_nothing() {
    let _alone = NODE_CONDITIONS
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let node = limits_node();
    let queue = NodeQueue::new(&node, "alarm");
    let (server, gate) = support::start_gated_echo_server_at(&node.url(), &queue.name, 2);
    let name = format!("alarm-client-{}", uuid::Uuid::new_v4());
    let client = support::named_client(node.url(), &name);
    assert_eq!(
        client
            .call_with_timeout(&queue.name, b"5", Duration::from_secs(5))
            .unwrap(),
        b"5"
    );
    let held = client
        .send_with_timeout(&queue.name, b"slow", Duration::from_secs(60))
        .unwrap();
    gate.started
        .recv_timeout(Duration::from_secs(10))
        .expect("the held request reaches the handler");
    let alarm = MemoryAlarm::raise(&node);
    for _ in 0..4 {
        let error = support::within(Duration::from_secs(1), "a blocked call", || {
            client
                .call_with_timeout(&queue.name, b"5", Duration::from_secs(1))
                .unwrap_err()
        });
        assert!(error.is_blocked(), "{error}");
        assert!(error.to_string().contains("low on memory"), "{error}");
    }
    let connections = node.ctl(&["list_connections", "client_properties"]);
    assert_eq!(
        connections.matches(name.as_str()).count(),
        1,
        "one connection: {connections}"
    );
    // The command line exits 75 within its timeout, whatever closing does.
    let output = support::within(Duration::from_secs(1), "fib-client under the alarm", || {
        Command::new(env!("CARGO_BIN_EXE_fib-client"))
            .args([
                "--amqp-url",
                &node.url(),
                "--queue",
                &queue.name,
                "--timeout",
                "1",
                "12",
            ])
            .output()
            .unwrap()
    });
    assert_eq!(output.status.code(), Some(75), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("blocks publishing"),
        "{}",
        stderr(&output)
    );
    // The held request's reply is the server's first publish under the alarm: its connection
    // is blocked, and the server says so; the reply waits, and is not lost.
    gate.release();
    wait_until(
        "the server reports the block",
        Duration::from_secs(20),
        || {
            server
                .stats()
                .blocked
                .is_some_and(|reason| reason.contains("low on memory"))
        },
    );
    drop(alarm);
    wait_until("the block clears", Duration::from_secs(20), || {
        server.stats().blocked.is_none()
    });
    assert_eq!(held.wait().unwrap(), b"slow");
    assert_eq!(
        client
            .call_with_timeout(&queue.name, b"8", Duration::from_secs(5))
            .unwrap(),
        b"8"
    );
    client.close().unwrap();
    server.shutdown().unwrap();
}

/// Calls a fib-server whose clock is `offset` off its callers' (libfaketime, the monotonic
/// clock left alone); every call must be answered, and the skew reported once.
fn served_despite_skew(offset: &str, reported: &str) {
    let queue = TestQueue::new("skew");
    let skew = faketime_env(offset);
    let env: Vec<(&str, &str)> = skew
        .iter()
        .map(|(key, value)| (*key, value.as_str()))
        .collect();
    let server = ServerProcess::start_configured(&["--queue", &queue.name, "--workers", "1"], &env);
    let client = support::fib_client(&queue.name, Duration::from_secs(3));
    for n in [10, 11, 12] {
        let value = client
            .call(n)
            .unwrap_or_else(|error| panic!("fib({n}): {error}"));
        assert_eq!(value, fib_rpc::services::fibonacci(n));
    }
    assert_eq!(
        server.log_lines_with(reported),
        1,
        "{:?}",
        server.log.lock().unwrap()
    );
    assert_eq!(server.log_lines_with("expired before we took it"), 0);
}

#[test]
fn a_server_clock_ahead_of_its_callers_still_answers_them() {
    for offset in ["+20s", "+60s"] {
        served_despite_skew(offset, "s ahead of a caller's");
    }
}

#[test]
fn a_server_clock_behind_its_callers_still_answers_them() {
    for offset in ["-20s", "-60s"] {
        served_despite_skew(offset, "s behind a caller's");
    }
}

#[test]
fn long_inputs_are_quoted_short_in_error_lines() {
    let queue = TestQueue::new("long-input");
    let _server = ServerProcess::start("ignored", &["--service", &format!("add={}", queue.name)]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_fib-client"))
        .args(["--service", "add", "--queue", &queue.name, "-"])
        .env("AMQP_URL", support::amqp_url())
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        let operand = "1".repeat(1_200_000);
        writeln!(stdin, "{operand},1").unwrap();
    }
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let line = stderr(&output);
    assert!(
        line.len() < 400,
        "{} bytes: {}",
        line.len(),
        &line[..400.min(line.len())]
    );
    assert!(line.contains("1200002 bytes"), "{line}");
}

#[test]
fn an_empty_or_non_decimal_sum_is_a_malformed_reply() {
    for reply in [&b""[..], b"abc"] {
        let queue = TestQueue::new("foreign-add");
        let foreign = RpcServer::new(support::server_config(&queue.name, 1), move |_: &[u8]| {
            Ok::<_, HandlerError>(reply.to_vec())
        })
        .start()
        .unwrap();
        let output = support::processes::run_fib_client(&[
            "--service",
            "add",
            "--queue",
            &queue.name,
            "--json",
            "--",
            "abc",
        ]);
        assert_eq!(output.status.code(), Some(65), "{}", stderr(&output));
        foreign.shutdown().unwrap();
    }
}

/// A gated echo server of two workers reaching the limits node at `server_url` (the node, or a
/// proxy in front of it), a client on the node, and the client's `slow` request (120 s) held
/// by the handler.
fn slow_request_in_hand(
    node: &PrivateNode,
    server_url: &str,
    queue: &str,
) -> (
    ServerHandle,
    support::Gate,
    RpcClient,
    fib_rpc::PendingReply,
) {
    let (server, gate) = support::start_gated_echo_server_at(server_url, queue, 2);
    let client = RpcClient::connect(node.url()).unwrap();
    let slow = client
        .send_with_timeout(queue, b"slow", Duration::from_secs(120))
        .unwrap();
    gate.started
        .recv_timeout(Duration::from_secs(10))
        .expect("the slow request reaches the handler");
    (server, gate, client, slow)
}

/// How many times the broker closed a channel since `since`: amiquip logs the first close it
/// sees, the driver's guard every repeated one it keeps from amiquip.
fn broker_closes_since(since: Instant) -> usize {
    support::logs::logged(
        since,
        Instant::now() + Duration::from_secs(3600),
        |record| {
            record.text.starts_with("server closing channel")
                || (record.text.starts_with("the broker closed channel")
                    && record.text.contains(" again "))
        },
    )
    .len()
}

#[test]
fn a_consumer_timeout_the_broker_repeats_loses_no_answer_and_no_connection() {
    // Alone on the node: the broker's closes are counted in this process's log.
    let _alone = NODE_CONDITIONS
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    support::logs::capture_logs();
    let node = limits_node();
    let queue = NodeQueue::new(&node, "repeated-close");
    let proxy = support::proxy::Proxy::start(&format!("127.0.0.1:{}", node.port));
    let (server, gate, client, slow) =
        slow_request_in_hand(&node, &proxy.url(&node.url()), &queue.name);
    // Held close-oks leave the broker's channel closing across its next consumer-timeout
    // check, which closes the channel again: the second close meets a channel the driver has
    // already let go of.
    let since = Instant::now();
    proxy.freeze_to_upstream();
    wait_until(
        "the broker closed the slow worker's channel twice",
        Duration::from_secs(60),
        || broker_closes_since(since) >= 2,
    );
    proxy.resume();
    wait_until(
        "the requeued copy reached the other worker",
        Duration::from_secs(30),
        || server.stats().duplicates == 1,
    );
    gate.release();
    assert_eq!(slow.wait().unwrap(), b"slow");
    wait_drained(&node, &queue.name);
    assert_eq!(gate.started.try_iter().count(), 0, "computed once");
    let stats = server.stats();
    assert_eq!(
        (stats.answered, stats.channel_losses, stats.reconnects),
        (1, 1, 0),
        "{stats:?}"
    );
    assert_eq!(proxy.connections(), 1, "the server never reconnected");
    // The operator is told what the broker did, why, and how to raise the limit.
    let explained = support::logs::logged(since, Instant::now(), |record| {
        record.text.contains("consumer timeout")
    });
    let [(_, explanation)] = explained.as_slice() else {
        panic!("one explanation of the consumer timeout: {explained:?}");
    };
    for told in [
        "worker ",
        "delivery acknowledgement on channel",
        "the handler ran longer than that",
        "consumer_timeout (rabbitmq.conf)",
        "ServerConfig::consumer_timeout / fib-server --consumer-timeout",
    ] {
        assert!(explanation.contains(told), "{told:?} in {explanation}");
    }
    client
        .call_with_timeout(&queue.name, b"after", Duration::from_secs(5))
        .unwrap();
    server.shutdown().unwrap();
}

#[test]
fn a_reply_whose_connection_dies_before_it_goes_out_goes_out_on_the_next_connection() {
    let _node = shared_node();
    let node = limits_node();
    let queue = NodeQueue::new(&node, "kept-reply");
    let (server, gate, client, slow) = slow_request_in_hand(&node, &node.url(), &queue.name);
    // The consumer timeout closes the slow worker's channel; the other worker acks the copy
    // the broker requeued, so the reply still to come is all that is left of the request.
    wait_until(
        "the broker requeued the slow request and its copy was acked",
        Duration::from_secs(90),
        || server.stats().duplicates == 1,
    );
    assert_eq!(
        node.close_connections(&queue.name),
        1,
        "the server's connection"
    );
    gate.release();
    assert_eq!(slow.wait().unwrap(), b"slow");
    wait_drained(&node, &queue.name);
    assert_eq!(gate.started.try_iter().count(), 0, "computed once");
    let stats = server.stats();
    assert_eq!((stats.answered, stats.reconnects), (1, 1), "{stats:?}");
    client
        .call_with_timeout(&queue.name, b"after", Duration::from_secs(5))
        .unwrap();
    server.shutdown().unwrap();
}
