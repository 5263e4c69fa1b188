//! Faults injected for real against the real broker and the real `fib-server` binary.
//!
//! Every test has its own queue and touches only its own connections, so the suite can run in
//! parallel and beside a production server on `rpc_queue`.

use amiquip::{AmqpProperties, AmqpValue, FieldTable};
use fib_rpc::services::fibonacci;
use fib_rpc::{Error, FibonacciRpcClient};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::processes::ServerProcess;
use support::{RawPeer, TestQueue};

/// What a load run saw: correct answers, and every error.
#[derive(Default, Debug)]
struct LoadOutcome {
    correct: usize,
    errors: Vec<Error>,
}

/// Calls from `threads` threads on one shared client until stopped; `done` counts the calls
/// that returned.
struct Load {
    done: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<LoadOutcome>>,
}

impl Load {
    fn start(client: &Arc<FibonacciRpcClient>, threads: u64) -> Load {
        let done = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..threads)
            .map(|t| {
                let (client, done, stop) =
                    (Arc::clone(client), Arc::clone(&done), Arc::clone(&stop));
                std::thread::spawn(move || {
                    let mut outcome = LoadOutcome::default();
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) {
                        // Large enough n that a request spends real time in a worker's hands.
                        let n = 20_000 + (t * 7919 + i) % 5000;
                        match client.call(n) {
                            Ok(value) => {
                                assert_eq!(value, fibonacci(n), "wrong answer for fib({n})");
                                outcome.correct += 1;
                            }
                            Err(error) => outcome.errors.push(error),
                        }
                        done.fetch_add(1, Ordering::Relaxed);
                        i += 1;
                    }
                    outcome
                })
            })
            .collect();
        Load {
            done,
            stop,
            threads,
        }
    }

    fn done(&self) -> usize {
        self.done.load(Ordering::Relaxed)
    }

    /// Waits until `more` further calls have returned.
    fn wait_for(&self, more: usize) {
        let target = self.done() + more;
        support::wait_until(
            &format!("{target} calls have returned"),
            Duration::from_secs(60),
            || self.done() >= target,
        );
    }

    fn finish(self) -> LoadOutcome {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = LoadOutcome::default();
        for thread in self.threads {
            let outcome = thread.join().expect("a load thread panicked");
            total.correct += outcome.correct;
            total.errors.extend(outcome.errors);
        }
        total
    }
}

/// The final counts a `fib-server` logs when it stops: (answered, error replies, expired).
fn final_counts(server: &ServerProcess) -> (u64, u64, u64) {
    let log = server.log.lock().unwrap();
    let line = log
        .iter()
        .find(|line| line.contains("stopped fib: "))
        .unwrap_or_else(|| panic!("no final counts in the log: {log:?}"));
    let numbers: Vec<u64> = line
        .split("stopped fib: ")
        .nth(1)
        .unwrap()
        .split(|c: char| !c.is_ascii_digit())
        .filter(|part| !part.is_empty())
        .map(|part| part.parse().unwrap())
        .collect();
    (numbers[0], numbers[1], numbers[2])
}

/// A request the fib server spends seconds on (fib(4000000) has 835,951 digits), so that it is
/// certainly still in hand when a test acts; the server needs `--max-n 100000000`.
const SLOW_N: u64 = 4_000_000;

/// How a `fib-server` logs that it answered the slow request (its debug line).
fn answered_slow_line() -> String {
    format!("\"{SLOW_N}\" -> ")
}

/// fib(n) mod 10^18, by fast doubling: a cheap check of a huge reply's last digits.
fn fib_mod_1e18(n: u64) -> u128 {
    const M: u128 = 1_000_000_000_000_000_000;
    let (mut a, mut b) = (0u128, 1u128);
    for bit in (0..u64::BITS - n.leading_zeros()).rev() {
        let doubled = a * ((2 * b + M - a) % M) % M;
        let doubled_next = (a * a % M + b * b % M) % M;
        (a, b) = match (n >> bit) & 1 {
            1 => (doubled_next, (doubled + doubled_next) % M),
            _ => (doubled, doubled_next),
        };
    }
    a
}

/// Checks a reply to the slow request without computing fib(3000000) here: its number of
/// digits and its last 18.
fn assert_slow_answer(reply: &[u8]) {
    // fib(n) has floor(n log10(phi) - log10(sqrt 5)) + 1 digits.
    let phi = (1.0 + 5f64.sqrt()) / 2.0;
    let digits = (SLOW_N as f64 * phi.log10() - 5f64.sqrt().log10()).floor() as usize + 1;
    assert_eq!(reply.len(), digits, "fib({SLOW_N}) has {digits} digits");
    let last: u128 = std::str::from_utf8(&reply[reply.len() - 18..])
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        last,
        fib_mod_1e18(SLOW_N),
        "the last 18 digits of fib({SLOW_N})"
    );
}

/// How the servers of the kill tests run: with metrics, where the victim tells that it holds
/// the slow request.
const KILLED_SERVER_ARGS: &[&str] = &[
    "--workers",
    "2",
    "--max-n",
    "100000000",
    "--metrics-addr",
    "127.0.0.1:0",
];

/// Starts `victim`, gives it the slow request and sees it hold it (the only consumer, its
/// metrics count the request in hand), then starts `survivor` and a load from
/// `threads` threads; kills the victim with SIGKILL once `calls` calls returned, and lets as
/// many more return. Every call must be answered correctly, and the slow request by the
/// survivor: the broker gave it the request the victim died holding. Returns the calls
/// answered, how many had returned at the kill, and the survivor.
fn kill_mid_load(
    client: &Arc<FibonacciRpcClient>,
    start: impl Fn() -> ServerProcess,
    queue: &str,
    threads: u64,
    calls: usize,
) -> (usize, usize, ServerProcess) {
    let victim = start();
    let slow = client
        .rpc()
        .send_with_timeout(
            queue,
            SLOW_N.to_string().as_bytes(),
            Duration::from_secs(120),
        )
        .unwrap();
    // The server's own gauge, not the broker's listing: a quorum queue's counts there are
    // statistics emitted every few seconds, which can miss the whole computation.
    let victims_metrics = victim.metrics_address();
    support::wait_until(
        "the victim holds the slow request",
        Duration::from_secs(20),
        || support::processes::requests_in_hand(&victims_metrics, queue) == 1.0,
    );
    let survivor = start();
    let load = Load::start(client, threads);
    load.wait_for(calls);
    victim.signal("KILL");
    let at_kill = load.done();
    load.wait_for(2 * calls);
    let outcome = load.finish();
    assert!(
        outcome.errors.is_empty(),
        "calls failed: {:?}",
        outcome.errors
    );
    assert_slow_answer(&slow.wait().expect("the slow request is answered"));
    // Its log line may reach us a moment after its reply.
    support::wait_until(
        "the survivor logs that it answered the request the victim held",
        Duration::from_secs(10),
        || survivor.log_lines_with(&answered_slow_line()) == 1,
    );
    assert_eq!(
        victim.log_lines_with(&answered_slow_line()),
        0,
        "the victim died before answering it"
    );
    (outcome.correct, at_kill, survivor)
}

#[test]
fn chaos_1_kill_9_one_of_two_servers_mid_load_loses_nothing() {
    let queue = TestQueue::new("chaos-kill");
    let start = || ServerProcess::start(&queue.name, KILLED_SERVER_ARGS);
    let client = Arc::new(support::fib_client(&queue.name, Duration::from_secs(20)));
    let (correct, at_kill, _survivor) = kill_mid_load(&client, start, &queue.name, 8, 200);
    eprintln!(
        "kill -9: {correct} calls, every one answered correctly; the kill came after {at_kill}, \
         and the survivor answered the request the victim held"
    );
    assert_eq!(client.rpc().pending_calls(), 0);
    assert_eq!(
        queue.counts(),
        (0, 2),
        "the survivor's 2 workers, nothing left over"
    );
}

#[test]
fn chaos_2_server_connection_closed_by_the_broker_recovers() {
    let queue = TestQueue::new("chaos-server-conn");
    let server = ServerProcess::start(&queue.name, &["--workers", "2"]);
    // Twice as long as the server may take to consume again: a call that times out was lost.
    let client = Arc::new(support::fib_client(&queue.name, Duration::from_secs(20)));
    let load = Load::start(&client, 4);
    load.wait_for(100);
    let closed_at = Instant::now();
    let closed = support::close_broker_connections(&format!("fib-rpc server on {}", queue.name));
    assert_eq!(closed, 1, "the server's one connection");
    support::wait_until("the server consumes again", Duration::from_secs(10), || {
        server.log_lines_with("reconnected to") == 1 && queue.counts().1 == 2
    });
    let recovered_in = closed_at.elapsed();
    load.wait_for(200);
    let outcome = load.finish();
    // A call that met the outage may find no server (its request was never sent); every
    // request sent was answered, those the server had in hand after it came back.
    for error in &outcome.errors {
        assert!(error.is_no_server(), "a request was lost: {error}");
    }
    assert_eq!(client.rpc().pending_calls(), 0);
    assert_eq!(queue.counts(), (0, 2), "nothing left over");
    eprintln!(
        "server reconnected {recovered_in:?} after the close was requested; {} of {} calls failed meanwhile",
        outcome.errors.len(),
        outcome.correct + outcome.errors.len()
    );
    for n in 0..20 {
        assert_eq!(client.call(n).unwrap(), fibonacci(n), "after recovery");
    }
}

#[test]
fn chaos_3_client_connection_closed_by_the_broker_fails_the_call_in_flight_then_reconnects() {
    let queue = TestQueue::new("chaos-client-conn");
    let (server, gate) = support::start_gated_echo_server(&queue.name, 2);
    let name = format!("chaos client {}", uuid::Uuid::new_v4());
    let client = support::named_client(support::amqp_url(), &name);
    let in_flight = client
        .send_with_timeout(&queue.name, b"slow", Duration::from_secs(30))
        .unwrap();
    gate.started.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(support::close_broker_connections(&name), 1);
    // Timed from the close's end, not its start: rabbitmqctl starts an Erlang VM for each of
    // the listing and the close, seconds on a busy machine, which the client has no part in.
    let closed_at = Instant::now();
    // The handler still holds the request, so no reply can race the close.
    let error = in_flight.wait().unwrap_err();
    let failed_after = closed_at.elapsed();
    gate.release();
    assert!(error.is_connection(), "{error}");
    assert!(
        error.to_string().contains("fault injected") || error.to_string().contains("320"),
        "the real cause is kept: {error}"
    );
    assert!(
        failed_after < Duration::from_secs(5),
        "took {failed_after:?}"
    );
    eprintln!("in-flight call failed {failed_after:?} after the close: {error}");
    assert_eq!(
        client
            .call_with_timeout(&queue.name, b"again", Duration::from_secs(5))
            .unwrap(),
        b"again",
        "the next call reconnects"
    );
    server.shutdown().unwrap();
}

#[test]
fn chaos_4_sigterm_one_of_two_servers_mid_load_answers_everything() {
    let queue = TestQueue::new("chaos-sigterm");
    let mut leaving = ServerProcess::start(&queue.name, &["--workers", "2"]);
    let _staying = ServerProcess::start(&queue.name, &["--workers", "2"]);
    let client = Arc::new(support::fib_client(&queue.name, Duration::from_secs(20)));
    let load = Load::start(&client, 8);
    load.wait_for(200);
    leaving.signal("TERM");
    assert_eq!(leaving.wait_exit(Duration::from_secs(15)), Some(0));
    load.wait_for(200);
    let outcome = load.finish();
    assert!(
        outcome.errors.is_empty(),
        "calls failed: {:?}",
        outcome.errors
    );
    let (answered, _, _) = final_counts(&leaving);
    assert!(answered > 0, "the leaving server never took part");
    eprintln!(
        "SIGTERM: the leaving server answered {answered} of {} calls, none failed",
        outcome.correct
    );
}

#[test]
fn chaos_5_no_server_fails_fast_for_a_missing_queue_and_an_idle_one() {
    let queue = TestQueue::new("chaos-no-server");
    let client = support::fib_client(&queue.name, Duration::from_secs(10));
    let started = Instant::now();
    let missing = client.call(5).unwrap_err();
    let missing_after = started.elapsed();
    queue.declare_quorum();
    let started = Instant::now();
    let idle = client.call(5).unwrap_err();
    let idle_after = started.elapsed();
    assert!(missing.is_no_server(), "{missing}");
    assert!(idle.is_no_server(), "{idle}");
    assert!(missing_after < Duration::from_secs(1), "{missing_after:?}");
    assert!(idle_after < Duration::from_secs(1), "{idle_after:?}");
    eprintln!(
        "no server: missing queue {missing_after:?}, idle queue {idle_after:?} (timeout 10 s)"
    );
}

#[test]
fn chaos_6_stale_requests_are_never_computed() {
    let queue = TestQueue::new("chaos-stale");
    queue.declare_quorum();
    let client = Arc::new(support::patient_client());
    // Long enough to see them all queued before they expire.
    let timeout = Duration::from_secs(2);
    let sent_at = Instant::now();
    let stale: Vec<_> = (0..20)
        .map(|n| {
            let body = n.to_string();
            client
                .send_with_timeout(&queue.name, body.as_bytes(), timeout)
                .unwrap()
        })
        .collect();
    support::wait_until("the 20 requests are queued", timeout, || {
        queue.counts() == (20, 0)
    });
    assert!(sent_at.elapsed() < timeout, "seen only after they expired");
    for pending in stale {
        assert!(pending.wait().unwrap_err().is_timeout());
    }
    // No server took them: the broker dropped them when they expired.
    support::wait_until(
        "the broker drops the expired requests",
        Duration::from_secs(10),
        || queue.counts() == (0, 0),
    );
    // A request that reaches a server after its caller's deadline (here: no broker expiration,
    // a deadline header already in the past) is skipped, not computed.
    let peer = RawPeer::connect();
    let mut headers = FieldTable::new();
    let past = std::time::SystemTime::now() - Duration::from_secs(1);
    let past_ms = past
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    headers.insert(
        fib_rpc::protocol::DEADLINE_HEADER.into(),
        AmqpValue::LongLongInt(past_ms as i64),
    );
    peer.publish(
        &queue.name,
        b"30",
        peer.request_properties("late").with_headers(headers),
    );
    support::wait_until(
        "the late request is queued",
        Duration::from_secs(10),
        || queue.counts() == (1, 0),
    );
    let mut server = ServerProcess::start(&queue.name, &["--workers", "1"]);
    support::wait_until("the late request is taken", Duration::from_secs(10), || {
        queue.counts().0 == 0
    });
    assert_eq!(
        client
            .call_with_timeout(&queue.name, b"12", Duration::from_secs(5))
            .unwrap(),
        b"144"
    );
    server.signal("TERM");
    assert_eq!(server.wait_exit(Duration::from_secs(10)), Some(0));
    let (answered, error_replies, expired) = final_counts(&server);
    assert_eq!(
        (answered, error_replies, expired),
        (1, 0, 1),
        "only the fresh call computed; 20 expired at the broker, 1 skipped by the server"
    );
    assert!(peer.next_reply(Duration::from_millis(200)).is_none());
}

/// Random header values of every type amiquip and RabbitMQ both understand.
fn random_value(rng: &mut support::Rng, depth: u32) -> AmqpValue {
    match rng.below(if depth > 1 { 10 } else { 12 }) {
        0 => AmqpValue::Boolean(rng.chance(50)),
        1 => AmqpValue::ShortShortInt(rng.next_u64() as i8),
        2 => AmqpValue::LongInt(rng.next_u64() as i32),
        3 => AmqpValue::LongUInt(rng.next_u64() as u32),
        4 => AmqpValue::LongLongInt(rng.next_u64() as i64),
        5 => AmqpValue::Float(f32::from_bits(rng.next_u64() as u32)),
        6 => AmqpValue::Double(f64::from_bits(rng.next_u64())),
        7 => AmqpValue::LongString({
            let len = rng.below(40) as usize;
            String::from_utf8_lossy(&rng.bytes(len)).into_owned()
        }),
        8 => AmqpValue::Timestamp(rng.next_u64()),
        9 => {
            let len = rng.below(40) as usize;
            AmqpValue::ByteArray(rng.bytes(len))
        }
        10 => AmqpValue::FieldArray(
            (0..rng.below(4))
                .map(|_| random_value(rng, depth + 1))
                .collect(),
        ),
        _ => AmqpValue::FieldTable(random_table(rng, depth + 1)),
    }
}

fn random_table(rng: &mut support::Rng, depth: u32) -> FieldTable {
    let mut table = FieldTable::new();
    for i in 0..rng.below(5) {
        table.insert(format!("x-fuzz-{i}"), random_value(rng, depth));
    }
    table
}

fn random_body(rng: &mut support::Rng) -> Vec<u8> {
    match rng.below(8) {
        0 => Vec::new(),
        1 => rng.below(200_000).to_string().into_bytes(),
        2 => format!("{}", rng.below(1000)).into_bytes(),
        3 => format!("-{}", rng.below(1000)).into_bytes(),
        4 => format!(" {} ", rng.below(1000)).into_bytes(),
        5 => (0..rng.below(60))
            .map(|_| b'0' + (rng.below(10) as u8))
            .collect(),
        _ => {
            let len = rng.below(64) as usize;
            rng.bytes(len)
        }
    }
}

/// The correlation id of the fuzz run's 10 MB request.
const HUGE_ID: &str = "fuzz-500-huge";

#[test]
fn chaos_7_fuzzed_requests_never_crash_a_worker_and_every_answerable_one_is_answered() {
    let queue = TestQueue::new("chaos-fuzz");
    let mut server = ServerProcess::start(&queue.name, &["--workers", "2"]);
    let peer = RawPeer::connect();
    let elsewhere = format!("test-nowhere-{}", uuid::Uuid::new_v4());
    let mut rng = support::Rng::new(0x5eed_f1b0);
    let mut expected = HashSet::new();
    let mut answerable_without_id = 0usize;
    for i in 0..1000u32 {
        let mut body = random_body(&mut rng);
        if i == 500 {
            body = vec![b'7'; 10 * 1024 * 1024];
        }
        let mut properties = AmqpProperties::default();
        let answerable = match rng.below(10) {
            0 => false,
            1 => {
                properties = properties.with_reply_to(String::new());
                false
            }
            2 => {
                properties = properties.with_reply_to(elsewhere.clone());
                false
            }
            _ => {
                properties = properties.with_reply_to(peer.reply_queue.clone());
                true
            }
        };
        let id = format!("fuzz-{i}");
        let with_id = rng.chance(85);
        if with_id {
            properties = properties.with_correlation_id(id.clone());
            if answerable {
                expected.insert(id.clone());
            }
        } else if answerable {
            answerable_without_id += 1;
        }
        if rng.chance(40) {
            properties = properties.with_headers(random_table(&mut rng, 0));
        }
        if rng.chance(30) {
            properties =
                properties.with_content_type(String::from_utf8_lossy(&rng.bytes(8)).into_owned());
        }
        if rng.chance(20) {
            properties = properties
                .with_type_(["error", "", "request", "x"][rng.below(4) as usize].to_owned());
        }
        if rng.chance(20) {
            properties = properties.with_delivery_mode(1 + rng.below(2) as u8);
        }
        if rng.chance(20) {
            properties = properties.with_priority(rng.below(10) as u8);
        }
        if rng.chance(20) {
            properties = properties.with_message_id(format!("m{}", rng.next_u64()));
        }
        if rng.chance(20) {
            properties = properties.with_timestamp(rng.next_u64() >> 32);
        }
        if rng.chance(10) {
            properties = properties.with_app_id("fuzzer".to_owned());
        }
        if i == 500 {
            // The 10 MB body goes out as a plain request (the random properties still drawn,
            // so the rest of the run stays the same), for its reply to be checked.
            if answerable && !with_id {
                answerable_without_id -= 1;
            }
            expected.remove(&id);
            properties = peer.request_properties(HUGE_ID);
            expected.insert(HUGE_ID.to_owned());
        }
        peer.publish(&queue.name, &body, properties);
    }
    let mut answered = HashSet::new();
    let mut without_id = 0usize;
    let deadline = Instant::now() + Duration::from_secs(60);
    while answered.len() < expected.len() || without_id < answerable_without_id {
        assert!(
            Instant::now() < deadline,
            "only {} of {} answerable requests answered",
            answered.len() + without_id,
            expected.len() + answerable_without_id
        );
        let Some((properties, body)) = peer.next_reply(Duration::from_secs(1)) else {
            continue;
        };
        if properties.correlation_id().as_deref() == Some(HUGE_ID) {
            assert_eq!(
                properties.type_().as_deref(),
                Some(fib_rpc::protocol::ERROR_TYPE),
                "the 10 MB body gets an error reply"
            );
            let message = String::from_utf8_lossy(&body);
            assert!(
                message.contains("is too large") && message.contains("10485760 bytes"),
                "{message}"
            );
        }
        match properties.correlation_id() {
            Some(id) => assert!(answered.insert(id.clone()), "{id} answered twice"),
            None => without_id += 1,
        }
    }
    assert_eq!(answered, expected);
    assert!(
        peer.next_reply(Duration::from_millis(300)).is_none(),
        "an extra reply"
    );
    assert_eq!(
        queue.counts(),
        (0, 2),
        "nothing piled up; both workers still consuming"
    );
    let client = support::fib_client(&queue.name, Duration::from_secs(5));
    assert_eq!(client.call(40).unwrap(), fibonacci(40));
    server.signal("TERM");
    assert_eq!(server.wait_exit(Duration::from_secs(10)), Some(0));
    assert_eq!(server.log_lines_with("panicked"), 0);
    assert_eq!(server.log_lines_with("connection lost"), 0);
    let (answered, error_replies, _) = final_counts(&server);
    eprintln!(
        "fuzz: 1000 requests, {} answerable: {answered} success and {error_replies} error replies in all",
        expected.len() + answerable_without_id
    );
}

#[test]
fn chaos_8_a_malformed_direct_reply_to_address_cannot_keep_the_server_down() {
    let queue = TestQueue::new("chaos-reply-to");
    let server = ServerProcess::start(&queue.name, &["--workers", "1"]);
    let peer = RawPeer::connect();
    for suffix in ["AAAA.x", "g2sAAWE=.k", "!!!.x"] {
        let properties = AmqpProperties::default()
            .with_reply_to(format!("amq.rabbitmq.reply-to.{suffix}"))
            .with_correlation_id(suffix.to_owned());
        peer.publish(&queue.name, b"5", properties);
    }
    // Each one costs the server its connection once, and only once: it was acked first.
    support::wait_until("three connection losses", Duration::from_secs(20), || {
        server.log_lines_with("connection lost") == 3
    });
    support::wait_until("the server consumes again", Duration::from_secs(20), || {
        server.log_lines_with("reconnected to") == 3 && queue.counts() == (0, 1)
    });
    let client = support::fib_client(&queue.name, Duration::from_secs(10));
    assert_eq!(client.call(25).unwrap(), fibonacci(25));
    // The poisons were acked before the replies that cost the connection: none is queued again.
    assert_eq!(queue.counts(), (0, 1));
    assert_eq!(
        server.log_lines_with("connection lost"),
        3,
        "a poison request came back"
    );
}

#[test]
fn chaos_9_a_second_signal_exits_at_once_and_the_request_in_hand_goes_back_to_the_queue() {
    let queue = TestQueue::new("chaos-second-signal");
    let (mut server, address) = support::processes::server_with_metrics(
        &support::amqp_url(),
        &queue.name,
        &["--workers", "1", "--max-n", "100000000"],
    );
    let client = support::client();
    // fib(3000000) takes seconds: the request is certainly still in hand when the signals come.
    let slow = client
        .send_with_timeout(&queue.name, b"3000000", Duration::from_secs(60))
        .unwrap();
    // The server's own count says it holds it (a queue count of 0 ready is also true before
    // the request arrives).
    support::wait_until("the request is in hand", Duration::from_secs(30), || {
        support::processes::requests_in_hand(&address, &queue.name) == 1.0
    });
    server.signal("TERM");
    support::wait_until("the server begins to stop", Duration::from_secs(10), || {
        server.log_lines_with("finishing requests in hand") == 1
    });
    let second_at = Instant::now();
    server.signal("TERM");
    assert_eq!(server.wait_exit(Duration::from_secs(10)), Some(130));
    let exited_after = second_at.elapsed();
    assert!(
        exited_after < Duration::from_secs(2),
        "took {exited_after:?}"
    );
    // Unacked, the request returns to the queue for the next server: nothing is lost.
    support::wait_until(
        "the request is back in the queue",
        Duration::from_secs(10),
        || queue.counts() == (1, 0),
    );
    let _next = ServerProcess::start(&queue.name, &["--workers", "1", "--max-n", "100000000"]);
    let value = slow.wait().expect("answered by the next server");
    assert_eq!(value, fibonacci(3_000_000).to_string().into_bytes());
    eprintln!("second signal: exit 130 after {exited_after:?}; the request was answered by the next server");
}

/// An amqps:// URL of private node 1's TLS listener (scripts/nodes.sh), its CA given.
fn private_tls_url() -> String {
    support::nodes::private_nodes(1);
    let ca =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/rabbit-nodes/tls/ca.pem");
    format!(
        "amqps://guest:guest@127.0.0.1:5691/%2f?cacertfile={}",
        ca.display()
    )
}

#[test]
fn chaos_10_kill_9_one_of_two_tls_servers_mid_load_loses_nothing() {
    let url = private_tls_url();
    let queue = format!("test-chaos-tls-kill-{}", uuid::Uuid::new_v4());
    let start = || ServerProcess::start_with_url(&url, &queue, KILLED_SERVER_ARGS);
    let mut config = fib_rpc::ClientConfig::new(url.as_str());
    config = config.call_timeout(Duration::from_secs(20));
    let client = Arc::new(
        FibonacciRpcClient::new(fib_rpc::RpcClient::connect(config).unwrap()).with_queue(&queue),
    );
    let (correct, _, _survivor) = kill_mid_load(&client, start, &queue, 4, 100);
    eprintln!("kill -9 over TLS: {correct} calls, every one answered correctly");
}

#[test]
fn a_tls_failure_exits_69_with_one_line_that_says_why() {
    let url = private_tls_url();
    let unknown_ca = url.split('?').next().unwrap().to_owned();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_fib-client"))
        .args(["--amqp-url", &unknown_ca, "5"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(69), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("unknown CA"), "{stderr}");
}

/// The connection dies while the request is computed: the broker requeues it, the reply that
/// could not go out is kept and goes out on the next connection first, and the copy that comes
/// back there is acked, not computed again.
#[test]
fn a_request_whose_connection_dies_while_it_is_computed_is_answered_once_from_the_kept_reply() {
    let queue = TestQueue::new("chaos-kept-reply");
    let (server, gate) = support::start_gated_echo_server(&queue.name, 1);
    let client = support::client();
    let slow = client
        .send_with_timeout(&queue.name, b"slow", Duration::from_secs(60))
        .unwrap();
    gate.started
        .recv_timeout(Duration::from_secs(10))
        .expect("the request reaches the handler");
    let name = format!("fib-rpc server on {}", queue.name);
    assert_eq!(support::close_broker_connections(&name), 1);
    support::wait_until(
        "the broker requeued the request",
        Duration::from_secs(20),
        || queue.counts() == (1, 0),
    );
    gate.release();
    assert_eq!(slow.wait().unwrap(), b"slow");
    support::wait_until("the copy is acked", Duration::from_secs(20), || {
        server.stats().duplicates == 1 && queue.counts() == (0, 1)
    });
    assert_eq!(gate.started.try_iter().count(), 0, "computed once");
    let stats = server.stats();
    assert_eq!((stats.answered, stats.reconnects), (1, 1), "{stats:?}");
    assert_eq!(
        client
            .call_with_timeout(&queue.name, b"after", Duration::from_secs(5))
            .unwrap(),
        b"after"
    );
    server.shutdown().unwrap();
}
