//! Memory that must not grow: stray replies reflected into an idle client, and a program that
//! connects and closes again and again. Each is measured in a process of its own (this test
//! binary, run again as `measured_process`), so no other test's allocations blur the figure.

use amiquip::AmqpProperties;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;
use support::{RawPeer, TestQueue};

/// Tells the re-run test binary which part to play.
const ROLE: &str = "FIB_RPC_MEMORY_ROLE";

/// The measured process: it only runs when the tests below start it.
#[test]
#[ignore = "started by the other tests of this file as a separate process"]
fn measured_process() {
    let role = std::env::var(ROLE).expect("run by the memory tests");
    let mut commands = std::io::stdin().lock().lines();
    let report = |text: String| {
        println!("{text}");
        std::io::stdout().flush().unwrap();
    };
    match role.as_str() {
        "idle-client" => {
            let name = std::env::var("FIB_RPC_CONNECTION_NAME").expect("the test names it");
            let connection = support::client_config()
                .get_connection()
                .clone()
                .connection_name(name);
            let config = fib_rpc::ClientConfig::from(connection);
            let client = fib_rpc::RpcClient::connect(config).unwrap();
            report("ready".into());
            while let Some(Ok(_)) = commands.next() {
                report(rss_kb().to_string());
            }
            drop(client);
        }
        "reconnects" => {
            let queue = std::env::var("FIB_RPC_QUEUE").unwrap();
            let cycle = || {
                let client = support::client();
                assert_eq!(
                    client
                        .call_with_timeout(&queue, b"5", Duration::from_secs(10))
                        .unwrap(),
                    b"5"
                );
                client.close().unwrap();
            };
            (0..100).for_each(|_| cycle());
            report(rss_kb().to_string());
            (0..600).for_each(|_| cycle());
            report(rss_kb().to_string());
        }
        other => panic!("unknown role {other}"),
    }
}

fn rss_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kb| kb.parse().ok())
        .expect("VmRSS in /proc/self/status")
}

struct Measured {
    child: Child,
    input: ChildStdin,
    output: std::io::Lines<BufReader<ChildStdout>>,
}

impl Measured {
    fn start(role: &str, env: &[(&str, &str)]) -> Measured {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "chaos_memory::measured_process",
                "--nocapture",
                "-q",
            ])
            .env(ROLE, role)
            .envs(env.iter().copied())
            .env("AMQP_URL", support::amqp_url())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run the measured process");
        let input = child.stdin.take().unwrap();
        let output = BufReader::new(child.stdout.take().unwrap()).lines();
        Measured {
            child,
            input,
            output,
        }
    }

    /// The next line the process reports (skipping the test harness's own lines).
    fn next_report(&mut self) -> String {
        for line in self.output.by_ref() {
            let line = line.unwrap();
            if line == "ready" || line.parse::<u64>().is_ok() {
                return line;
            }
        }
        panic!("the measured process ended: {:?}", self.child.wait());
    }

    fn rss_kb(&mut self) -> u64 {
        writeln!(self.input, "rss").unwrap();
        self.next_report().parse().unwrap()
    }
}

impl Drop for Measured {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn stray_replies_into_an_idle_client_do_not_pile_up() {
    let requests = TestQueue::new("strays");
    let server = support::start_fib_server(&requests.name, 2);
    let name = format!("idle client {}", uuid::Uuid::new_v4());
    let mut idle = Measured::start("idle-client", &[("FIB_RPC_CONNECTION_NAME", &name)]);
    assert_eq!(idle.next_report(), "ready");
    let callback_queue = support::callback_queue_of(&name);
    let before = idle.rss_kb();
    // A third party sends requests whose replies (fib(20000), 4180 digits each) go to the idle
    // client's callback queue: 5000 of them are 21 MB.
    let peer = RawPeer::connect();
    let strays = 5000;
    for i in 0..strays {
        let properties = AmqpProperties::default()
            .with_reply_to(callback_queue.clone())
            .with_correlation_id(format!("stray-{i}"));
        peer.publish(&requests.name, b"20000", properties);
    }
    support::wait_until("every stray is answered", Duration::from_secs(300), || {
        server.stats().answered == strays
    });
    support::wait_until(
        "the idle client has received them all",
        Duration::from_secs(60),
        || support::queue_messages(&callback_queue) == Some(0),
    );
    let after = idle.rss_kb();
    eprintln!("idle client RSS: {before} kB before, {after} kB after {strays} strays");
    assert!(
        after < before + 8 * 1024,
        "the idle client kept its strays: {before} kB -> {after} kB"
    );
}

#[test]
fn connecting_and_closing_again_and_again_does_not_grow_a_process() {
    let queue = TestQueue::new("reconnects");
    let (_server, _gate) = support::start_gated_echo_server(&queue.name, 2);
    let mut cycles = Measured::start("reconnects", &[("FIB_RPC_QUEUE", &queue.name)]);
    let warmed_up: u64 = cycles.next_report().parse().unwrap();
    let after: u64 = cycles.next_report().parse().unwrap();
    eprintln!("RSS after 100 connections {warmed_up} kB, after 600 more {after} kB");
    assert!(
        after < warmed_up + 2 * 1024,
        "600 connections grew the process from {warmed_up} kB to {after} kB"
    );
}
