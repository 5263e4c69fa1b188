//! Clients in processes of their own (`--processes P`): P copies of this binary, each with its
//! own connection and `--threads` threads, measure one side against the server this process
//! runs. They warm up, say so, and measure together once all are ready; their latencies are
//! merged and their CPU summed, so that the clients' CPU per call is theirs alone and the
//! servers' (this process, or a server process) is measured apart.

use crate::raw::{RawClient, Wire};
use crate::{measure, new_histogram, value_name, Args, Report, Workload};
use anyhow::{bail, Context};
use clap::ValueEnum;
use fib_rpc::ConnectionConfig;
use fib_rpc_cli::cpu;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

/// Which side a client process measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Side {
    Raw,
    /// The raw limit with fib-rpc's message properties.
    RawWire,
    Rpc,
}

/// What a client process tells its parent once ready.
const READY: &str = "ready";

/// Where the server whose CPU is measured beside the clients' runs.
#[derive(Debug, Clone, Copy)]
pub enum ServerCpu {
    /// In this process.
    Here,
    /// In the process with this pid.
    Process(u32),
    /// Somewhere this tool cannot see.
    Unknown,
}

/// Runs `--processes` client processes of `side` against `queue`.
pub fn measure_in_processes(
    args: &Args,
    side: Side,
    queue: &str,
    server: ServerCpu,
) -> anyhow::Result<Report> {
    let server_cpu = || match server {
        ServerCpu::Here => cpu::used(None),
        ServerCpu::Process(pid) => cpu::used(Some(pid)),
        ServerCpu::Unknown => None,
    };
    let count = args.processes.unwrap_or(1);
    let mut children = (0..count)
        .map(|_| ClientProcess::spawn(args, side, queue))
        .collect::<anyhow::Result<Vec<_>>>()?;
    for child in &mut children {
        let line = child
            .line()
            .context("a client process ended before it was ready")?;
        if line != READY {
            bail!("a client process said {line:?} instead of {READY:?}");
        }
    }
    let cpu_before = server_cpu();
    for child in &mut children {
        writeln!(child.stdin, "go").context("starting a client process")?;
    }
    let mut report = Report {
        calls: 0,
        elapsed: Duration::ZERO,
        latency: new_histogram(),
        client_cpu: Some(Duration::ZERO),
        server_cpu: None,
    };
    for child in &mut children {
        let line = child
            .line()
            .context("a client process ended before it reported")?;
        let result: serde_json::Value = serde_json::from_str(&line)
            .with_context(|| format!("a client process said {line:?}"))?;
        let field = |key: &str| {
            result[key]
                .as_f64()
                .with_context(|| format!("no {key} in {line}"))
        };
        // The window is the slowest process's: they start together, on "go".
        report.elapsed = report
            .elapsed
            .max(Duration::from_secs_f64(field("seconds")?));
        let cpu = Duration::from_secs_f64(field("cpu_seconds")?);
        report.client_cpu = report.client_cpu.map(|sum| sum + cpu);
        for pair in result["latency"].as_array().context("no latency")? {
            let (Some(micros), Some(count)) = (pair[0].as_u64(), pair[1].as_u64()) else {
                bail!("a latency entry {pair} is not a pair of counts");
            };
            report.latency.record_n(micros, count)?;
        }
    }
    let cpu_after = server_cpu();
    report.server_cpu = cpu_after
        .zip(cpu_before)
        .map(|(after, before)| after - before);
    report.calls = report.latency.len();
    for mut child in children {
        let status = child.process.wait()?;
        if !status.success() {
            bail!("a client process failed: {status}");
        }
    }
    Ok(report)
}

/// A client process and its pipes.
struct ClientProcess {
    process: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl ClientProcess {
    fn spawn(args: &Args, side: Side, queue: &str) -> anyhow::Result<ClientProcess> {
        let mut command = Command::new(std::env::current_exe()?);
        command
            .args(["--client-process", &value_name(side), "--queue", queue])
            .args(["--threads", &args.threads.to_string()])
            .args(["--in-flight", &args.in_flight.to_string()])
            .args(["--n", &args.n.to_string()])
            .args(["--warmup", &args.warmup.to_string()])
            .args(["--calls", &args.calls.to_string()])
            .args(["--reply-mode", &value_name(args.reply_mode)]);
        if let Some(seconds) = args.duration {
            command.args(["--duration", &seconds.to_string()]);
        }
        if let Some(bytes) = args.body_bytes {
            command.args(["--body-bytes", &bytes.to_string()]);
        }
        let mut process = command
            .env("AMQP_URL", args.amqp_url.join(","))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting a client process")?;
        let stdin = process.stdin.take().expect("piped");
        let stdout = BufReader::new(process.stdout.take().expect("piped"));
        Ok(ClientProcess {
            process,
            stdin,
            stdout,
        })
    }

    /// The next line the process printed, `None` at its end.
    fn line(&mut self) -> Option<String> {
        let mut line = String::new();
        match self.stdout.read_line(&mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(line.trim_end().to_owned()),
        }
    }
}

impl Drop for ClientProcess {
    fn drop(&mut self) {
        if self.process.try_wait().ok().flatten().is_none() {
            let _ = self.process.kill();
            let _ = self.process.wait();
        }
    }
}

/// A client process's life (`--client-process`): connect, warm up, say ready, measure on
/// "go", print the result as one JSON line.
pub fn run_client_process(
    args: &Args,
    side: Side,
    connection: &ConnectionConfig,
) -> anyhow::Result<()> {
    let queue = args
        .queue
        .as_deref()
        .context("a client process needs --queue")?;
    let workload = Workload::of(args);
    let go = || -> anyhow::Result<()> {
        println!("{READY}");
        std::io::stdout().flush()?;
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        Ok(())
    };
    let raw = |wire| -> anyhow::Result<Report> {
        let client = RawClient::connect(args, connection, wire)?;
        client.measure(args, queue, &workload, false)?;
        go()?;
        let report = client.measure(args, queue, &workload, true);
        client.close()?;
        report
    };
    let report = match side {
        Side::Raw => raw(Wire::Plain)?,
        Side::RawWire => raw(Wire::FibRpc)?,
        Side::Rpc => {
            let client = crate::rpc_client(args, connection)?;
            let run = |measuring| {
                measure(args, measuring, None, |progress| {
                    crate::rpc_thread(&client, queue, &workload, args, progress)
                })
            };
            run(false)?;
            go()?;
            let report = run(true);
            client.close()?;
            report?
        }
    };
    let latency: Vec<[u64; 2]> = report
        .latency
        .iter_recorded()
        .map(|value| [value.value_iterated_to(), value.count_at_value()])
        .collect();
    let cpu_seconds = report.client_cpu.map_or(0.0, |cpu| cpu.as_secs_f64());
    println!(
        "{}",
        serde_json::json!({
            "seconds": report.elapsed.as_secs_f64(),
            "cpu_seconds": cpu_seconds,
            "latency": latency,
        })
    );
    Ok(())
}
