//! Several services in one server process, queue status and purge from the CLI, and the
//! workflow sandbox's demo: four servers, eight concurrent CLI invocations, one queue.

use fib_rpc::services::fibonacci;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use support::processes::ServerProcess;
use support::{RawPeer, TestQueue};

const TIMEOUT: Duration = Duration::from_secs(10);

#[test]
fn fibonacci_and_addition_in_one_server_process() {
    let fib_queue = TestQueue::new("services-fib");
    let add_queue = TestQueue::new("services-add");
    let fib_service = format!("fib={}", fib_queue.name);
    let add_service = format!("add={}", add_queue.name);
    let _server = ServerProcess::start(
        &fib_queue.name,
        &[
            "--workers",
            "2",
            "--service",
            &fib_service,
            "--service",
            &add_service,
        ],
    );
    let client = Arc::new(support::client());
    let threads: Vec<_> = (0..4i64)
        .map(|t| {
            let (client, fib, add) = (
                Arc::clone(&client),
                fib_queue.name.clone(),
                add_queue.name.clone(),
            );
            std::thread::spawn(move || {
                for i in 0..50i64 {
                    let n = (t * 50 + i) as u64;
                    let body = client
                        .call_with_timeout(&fib, n.to_string().as_bytes(), TIMEOUT)
                        .unwrap();
                    assert_eq!(body, fibonacci(n).to_string().into_bytes());
                    let (x, y) = (t * 1_000_000_007 - i, i * i - 500);
                    let sum = client
                        .call_with_timeout(&add, format!("{x},{y}").as_bytes(), TIMEOUT)
                        .unwrap();
                    assert_eq!(sum, (x + y).to_string().into_bytes(), "{x}+{y}");
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let big = client
        .call_with_timeout(
            &add_queue.name,
            b"123456789012345678901234567890,987654321098765432109876543210",
            TIMEOUT,
        )
        .unwrap();
    assert_eq!(big, b"1111111110111111111011111111100");
    let error = client
        .call_with_timeout(&add_queue.name, b"3,x", TIMEOUT)
        .unwrap_err();
    assert!(error.remote_message().unwrap().contains("x,y"), "{error}");
    assert_eq!(
        client
            .call_with_timeout(&fib_queue.name, b"20", TIMEOUT)
            .unwrap(),
        b"6765"
    );

    // Negative operands start with a dash: `--` ends the options, as usual.
    let output = support::processes::run_fib_client(&[
        "--service",
        "add",
        "--queue",
        &add_queue.name,
        "--",
        "3,5",
        "-2,1",
    ]);
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(String::from_utf8(output.stdout).unwrap(), "8\n-1\n");
}

#[test]
fn status_shows_messages_and_consumers_and_purge_needs_yes() {
    let idle = TestQueue::new("status-idle");
    idle.declare_classic(true);
    let peer = RawPeer::connect();
    for n in ["1", "2", "3"] {
        peer.publish(&idle.name, n.as_bytes(), peer.request_properties(n));
    }
    let served = TestQueue::new("status-served");
    let _server = ServerProcess::start(&served.name, &["--workers", "2"]);
    support::wait_until("the counts settle", TIMEOUT, || {
        idle.counts() == (3, 0) && served.counts() == (0, 2)
    });

    let output = support::processes::run_fib_client(&[
        "--status",
        "--queue",
        &idle.name,
        "--queue",
        &served.name,
    ]);
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(
        String::from_utf8(output.stdout).unwrap(),
        format!(
            "name\tmessages\tconsumers\n{}\t3\t0\n{}\t0\t2\n",
            idle.name, served.name
        )
    );

    let missing = TestQueue::new("status-missing");
    let output = support::processes::run_fib_client(&[
        "--status",
        "--queue",
        &missing.name,
        "--queue",
        &idle.name,
    ]);
    assert_eq!(output.status.code(), Some(69));
    assert!(String::from_utf8(output.stdout)
        .unwrap()
        .contains(&format!("{}\t3\t0", idle.name)));

    let refused = support::processes::run_fib_client(&["--purge", "--queue", &idle.name]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--yes"));
    assert_eq!(idle.counts(), (3, 0), "nothing purged without --yes");
    let purged = support::processes::run_fib_client(&["--purge", "--yes", "--queue", &idle.name]);
    assert_eq!(purged.status.code(), Some(0));
    assert_eq!(
        String::from_utf8(purged.stdout).unwrap(),
        format!("purged 3 messages from {}\n", idle.name)
    );
    assert_eq!(idle.counts(), (0, 0));
}

#[test]
fn four_servers_and_eight_concurrent_cli_invocations_share_one_queue() {
    let queue = TestQueue::new("sandbox");
    let servers: Vec<_> = (0..4)
        .map(|_| ServerProcess::start(&queue.name, &["--workers", "1"]))
        .collect();
    let invocations: Vec<_> = (0..8u64)
        .map(|i| {
            let numbers: Vec<String> = (0..5).map(|k| (28 + i + k * 100).to_string()).collect();
            let child = Command::new(env!("CARGO_BIN_EXE_fib-client"))
                .args(["--queue", &queue.name])
                .args(&numbers)
                .env("AMQP_URL", support::amqp_url())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            (numbers, child)
        })
        .collect();
    for (numbers, child) in invocations {
        let output = child.wait_with_output().unwrap();
        assert_eq!(output.status.code(), Some(0));
        let expected: String = numbers
            .iter()
            .map(|n| format!("{}\n", fibonacci(n.parse().unwrap())))
            .collect();
        assert_eq!(String::from_utf8(output.stdout).unwrap(), expected);
    }
    // Each server logs one debug line per request it answered.
    let served: Vec<usize> = servers
        .iter()
        .map(|server| server.log_lines_with(" bytes"))
        .collect();
    assert_eq!(served.iter().sum::<usize>(), 40, "{served:?}");
    assert!(
        served.iter().all(|&count| count > 0),
        "a server got no work: {served:?}"
    );
    eprintln!("sandbox demo: requests per server {served:?}");
}
