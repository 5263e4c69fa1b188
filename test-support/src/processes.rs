//! The real binaries, run as processes against the test broker.

use crate::amqp_url;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The path of one of the tools' binaries, built by cargo beside the running test binary
/// (which sits in `target/<profile>/deps/`): cargo builds a package's binaries before its
/// integration tests, and this crate is no package of theirs, so it has no `CARGO_BIN_EXE_*`.
pub fn tool(name: &str) -> PathBuf {
    let test_binary = std::env::current_exe().expect("the test binary's path");
    let path = test_binary
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test binary is in target/<profile>/deps/")
        .join(name);
    assert!(
        path.exists(),
        "{} is not built: run the tools' tests with cargo test",
        path.display()
    );
    path
}

/// Runs the real `fib-client` binary against the test broker.
pub fn run_fib_client(args: &[&str]) -> Output {
    Command::new(tool("fib-client"))
        .args(args)
        .env("AMQP_URL", amqp_url())
        .output()
        .expect("run fib-client")
}

/// A `fib-server` process on its own queue; SIGTERMed (and reaped) when dropped.
pub struct ServerProcess {
    pub child: Child,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl ServerProcess {
    /// Starts the real binary and waits until it logs that it is serving.
    pub fn start(queue: &str, extra_args: &[&str]) -> ServerProcess {
        ServerProcess::start_with_url(&amqp_url(), queue, extra_args)
    }

    /// Starts the real binary against the broker at `url` (a proxy's, say).
    pub fn start_with_url(url: &str, queue: &str, extra_args: &[&str]) -> ServerProcess {
        let mut args = vec!["--queue", queue];
        args.extend_from_slice(extra_args);
        ServerProcess::start_configured(&args, &[("AMQP_URL", url)])
    }

    /// Starts the real binary with exactly these arguments and environment (which may name
    /// the broker and the queue), against the test broker unless `env` says otherwise.
    pub fn start_configured(args: &[&str], env: &[(&str, &str)]) -> ServerProcess {
        let mut child = Command::new(tool("fib-server"))
            .args(args)
            .env("AMQP_URL", amqp_url())
            .envs(env.iter().copied())
            .env("RUST_LOG", "warn,fib_rpc=debug,fib_server=debug")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn fib-server");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (ready_sender, ready) = crossbeam_channel::bounded(1);
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("all services consuming") {
                    let _ = ready_sender.try_send(());
                }
                lines.lock().unwrap().push(line);
            }
        });
        let mut process = ServerProcess { child, log };
        if ready.recv_timeout(Duration::from_secs(20)).is_err() {
            let _ = process.child.kill();
            panic!(
                "fib-server did not start: {:?}",
                process.log.lock().unwrap()
            );
        }
        process
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends a signal (e.g. "TERM", "KILL") to the process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits for the process to exit and returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            if Instant::now() >= deadline {
                panic!("fib-server did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Where a server started with `--metrics-addr` serves its metrics, as it logged.
    pub fn metrics_address(&self) -> String {
        let line = self
            .log
            .lock()
            .unwrap()
            .iter()
            .find(|line| line.contains("metrics and health on http://"))
            .cloned()
            .expect("fib-server says where its metrics are");
        line.split("http://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .unwrap()
            .to_owned()
    }

    /// Log lines that contain `needle`.
    pub fn log_lines_with(&self, needle: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|line| line.contains(needle))
            .count()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts fib-server with metrics on a port of its choosing; returns it with that address.
pub fn server_with_metrics(url: &str, queue: &str, extra: &[&str]) -> (ServerProcess, String) {
    let mut args = vec!["--queue", queue, "--metrics-addr", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let server = ServerProcess::start_configured(&args, &[("AMQP_URL", url)]);
    let address = server.metrics_address();
    (server, address)
}

/// A GET over a fresh connection: (status, body).
pub fn get(address: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(address).expect("connect to the metrics port");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, body)| body.to_owned());
    (status, body)
}

/// The value of the sample that starts with `series` (name and labels, as written).
pub fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in:\n{metrics}"))
}

/// The server's `fib_rpc_requests_in_hand` for `queue`, read from its metrics at `address`.
pub fn requests_in_hand(address: &str, queue: &str) -> f64 {
    let series = format!("fib_rpc_requests_in_hand{{queue=\"{queue}\"}}");
    sample(&get(address, "/metrics").1, &series)
}

/// The environment that runs a process with its wall clock `offset` off (libfaketime's syntax,
/// e.g. `+20s`) and its monotonic clock left alone. The library is preloaded directly rather
/// than through the `faketime` wrapper: the wrapper names a POSIX semaphore after its own pid
/// and leaves it behind when killed, so a later wrapper given the same pid refuses to start.
pub fn faketime_env(offset: &str) -> Vec<(&'static str, String)> {
    let multiarch = format!("/usr/lib/{}-linux-gnu", std::env::consts::ARCH);
    let library = [multiarch.as_str(), "/usr/lib", "/usr/local/lib"]
        .iter()
        .map(|root| PathBuf::from(root).join("faketime/libfaketime.so.1"))
        .find(|candidate| candidate.exists())
        .expect("libfaketime.so.1 is not installed: run scripts/deps.sh");
    vec![
        ("LD_PRELOAD", library.display().to_string()),
        ("FAKETIME", offset.to_owned()),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1".to_owned()),
    ]
}
