//! `fib-bench`: latency and throughput of fib-rpc, side by side with the raw AMQP limit.
//!
//! Every run measures two things of the same shape on the same broker: a raw amiquip
//! publish → consume → reply ping-pong with no RPC layer (the limit), and fib-rpc itself;
//! with `--wire-baseline`, a third: the same ping-pong carrying fib-rpc's message properties.

mod processes;
mod raw;

use anyhow::{bail, Context};
use clap::{CommandFactory, Parser, ValueEnum};
use fib_rpc::services::{fibonacci, fibonacci_handler, DEFAULT_MAX_N};
use fib_rpc::{
    ClientConfig, ConnectionConfig, QueueAdmin, QueueType, ReplyMode, RpcClient, RpcServer,
    ServerConfig,
};
use fib_rpc_cli::{cpu, exit};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use processes::{measure_in_processes, ServerCpu, Side};
use raw::Wire;
use std::collections::VecDeque;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Measure fib-rpc calls against the raw AMQP round trip on the same broker.
#[derive(Parser, Debug, Clone)]
#[command(name = "fib-bench", version)]
struct Args {
    /// Benchmark a server already running on this queue (no server is started for fib-rpc).
    #[arg(long)]
    queue: Option<String>,
    /// Worker threads of the servers this tool starts.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Prefetch per worker of the servers this tool starts.
    #[arg(long, default_value_t = 1)]
    prefetch: u16,
    /// Type of the request queues this tool declares.
    #[arg(long, value_enum, default_value_t = Kind::Classic)]
    queue_type: Kind,
    /// The n of every request.
    #[arg(long, default_value_t = 10)]
    n: u64,
    /// Send requests of this many bytes to servers that echo them back, instead of n to
    /// Fibonacci servers (not with --queue or --spawn-server, whose servers compute fib(n)).
    #[arg(long, value_name = "BYTES", conflicts_with_all = ["spawn_server", "server_pid"])]
    body_bytes: Option<usize>,
    /// Run the clients in this many processes of their own, each with --threads threads and
    /// a connection of its own, instead of in this process; their CPU is then the clients'
    /// alone, and this process's (where the servers run) the servers'.
    #[arg(long, value_name = "P", value_parser = clap::value_parser!(u32).range(1..=1024))]
    processes: Option<u32>,
    /// Internal: be one of the client processes of --processes.
    #[arg(long, hide = true, value_enum, requires = "queue")]
    client_process: Option<Side>,
    /// Client threads, all sharing one fib-rpc client (one connection).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Calls each thread keeps in flight.
    #[arg(long, default_value_t = 1)]
    in_flight: usize,
    /// Total calls per measurement, per process with --processes (ignored with --duration).
    #[arg(long, default_value_t = 5000)]
    calls: u64,
    /// Measure for this many seconds instead of a fixed count.
    #[arg(long, value_parser = measuring_seconds)]
    duration: Option<f64>,
    /// Calls before measuring, to warm connections and caches up.
    #[arg(long, default_value_t = 500)]
    warmup: u64,
    /// How fib-rpc receives replies.
    #[arg(long, value_enum, default_value_t = Mode::Queue)]
    reply_mode: Mode,
    /// Alternate raw and fib-rpc measurements this many times and report each side's median
    /// round (by calls/s): on a small shared machine one round can be off by 20%.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// Skip the raw limit.
    #[arg(long)]
    no_raw: bool,
    /// Also measure, in each round, the raw limit with the message properties fib-rpc's calls
    /// carry (content type, expiration, deadline header, mandatory): what fib-rpc stands at
    /// against it is its code's cost, and what it stands at against the plain limit beyond
    /// that is the cost of its messages' contents.
    #[arg(long, conflicts_with = "no_raw")]
    wire_baseline: bool,
    /// Run fib-rpc's server as a fib-server process of its own (the one beside this binary)
    /// instead of in this process, so that this process's CPU per call is the client's alone
    /// and the server's is measured apart.
    #[arg(long, conflicts_with_all = ["queue", "server_pid"])]
    spawn_server: bool,
    /// With --queue: the pid of the server serving it, whose CPU per call is then reported.
    #[arg(long, requires = "queue", value_name = "PID")]
    server_pid: Option<u32>,
    /// One JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Broker URL; for a cluster, one per node (repeat the flag, or separate them by commas),
    /// tried in the order given.
    #[arg(long, env = "AMQP_URL", default_value = fib_rpc::DEFAULT_URL, hide_env_values = true, value_delimiter = ',', value_name = "URL")]
    amqp_url: Vec<String>,
    #[command(flatten)]
    docs: fib_rpc_cli::docs::DocsArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Kind {
    Classic,
    Quorum,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Mode {
    /// An exclusive callback queue (the default of the library).
    Queue,
    /// RabbitMQ's direct reply-to.
    Direct,
}

/// The timeout of every fib-rpc call measured, and the expiration of the raw limit's requests
/// with fib-rpc's message properties.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// One measurement: how many calls, how long, their latencies, and the CPU they cost.
struct Report {
    calls: u64,
    elapsed: Duration,
    latency: Histogram<u64>,
    /// The clients' CPU over the measured calls: this process's (the servers' too when they run
    /// in here), or the client processes' together.
    client_cpu: Option<Duration>,
    /// The server process's, when it runs apart and its pid is known.
    server_cpu: Option<Duration>,
}

impl Report {
    fn rate(&self) -> f64 {
        self.calls as f64 / self.elapsed.as_secs_f64()
    }

    fn micros(&self, quantile: f64) -> u64 {
        self.latency.value_at_quantile(quantile)
    }

    /// p50, p90, p99, p99.9 and max, in microseconds.
    fn latencies(&self) -> [u64; 5] {
        [
            self.micros(0.5),
            self.micros(0.9),
            self.micros(0.99),
            self.micros(0.999),
            self.latency.max(),
        ]
    }

    /// CPU microseconds per call of the clients and of the server process, if known.
    fn cpu_per_call(&self) -> (Option<f64>, Option<f64>) {
        let per_call = |cpu: Option<Duration>| cpu.and_then(|cpu| cpu::per_call(cpu, self.calls));
        (per_call(self.client_cpu), per_call(self.server_cpu))
    }

    fn json(&self) -> String {
        let [p50, p90, p99, p999, max] = self.latencies();
        let number = |value: Option<f64>| value.map_or("null".to_owned(), |v| format!("{v:.1}"));
        let (process, server) = self.cpu_per_call();
        format!(
            r#"{{"calls":{},"seconds":{:.3},"calls_per_second":{:.1},"p50_us":{p50},"p90_us":{p90},"p99_us":{p99},"p999_us":{p999},"max_us":{max},"client_cpu_us_per_call":{},"server_cpu_us_per_call":{}}}"#,
            self.calls,
            self.elapsed.as_secs_f64(),
            self.rate(),
            number(process),
            number(server),
        )
    }

    fn row(&self, label: &str) -> String {
        let [p50, p90, p99, p999, max] = self.latencies();
        format!(
            "{label:<10} {:>8} {:>10.1} {p50:>8} {p90:>8} {p99:>8} {p999:>9} {max:>8}",
            self.calls,
            self.rate(),
        )
    }
}

/// How an option's value is spelled on the command line, for the processes this tool starts.
fn value_name(value: impl ValueEnum) -> String {
    value
        .to_possible_value()
        .expect("no value is skipped")
        .get_name()
        .to_owned()
}

/// What every call sends, and the reply it must get.
struct Workload {
    body: Vec<u8>,
    expected: Vec<u8>,
}

impl Workload {
    fn of(args: &Args) -> Workload {
        match args.body_bytes {
            Some(bytes) => {
                let body: Vec<u8> = (0..bytes).map(|i| b'a' + (i % 26) as u8).collect();
                Workload {
                    expected: body.clone(),
                    body,
                }
            }
            None => Workload {
                body: args.n.to_string().into_bytes(),
                expected: fibonacci(args.n).to_string().into_bytes(),
            },
        }
    }
}

/// When a measurement ends: after a number of calls, or at an instant.
#[derive(Clone, Copy)]
enum Budget {
    Calls(u64),
    Until(Instant),
}

/// Shared by the threads of one measurement.
struct Progress {
    started: AtomicU64,
    budget: Budget,
    bar: ProgressBar,
}

impl Progress {
    fn new(budget: Budget, show: bool) -> Progress {
        let bar = if show {
            let bar = match budget {
                Budget::Calls(calls) => ProgressBar::new(calls),
                Budget::Until(_) => ProgressBar::new_spinner(),
            };
            bar.set_style(
                ProgressStyle::with_template("{spinner} {elapsed} {pos} calls {per_sec} {bar:30}")
                    .expect("a valid template"),
            );
            bar
        } else {
            ProgressBar::hidden()
        };
        Progress {
            started: AtomicU64::new(0),
            budget,
            bar,
        }
    }

    /// Claims the right to send one more call.
    fn claim(&self) -> bool {
        match self.budget {
            Budget::Calls(calls) => self.started.fetch_add(1, Ordering::Relaxed) < calls,
            Budget::Until(end) => Instant::now() < end,
        }
    }

    fn finished_one(&self) {
        self.bar.inc(1);
    }
}

/// A measuring time that a clock can count to: positive, finite, under a day.
fn measuring_seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(seconds) if seconds > 0.0 && seconds <= 86_400.0 => Ok(seconds),
        _ => Err(format!(
            "{text:?} is not a number of seconds from 0 to 86400"
        )),
    }
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

fn budget(args: &Args, measuring: bool) -> Budget {
    match (measuring, args.duration) {
        (false, _) => Budget::Calls(args.warmup),
        (true, Some(seconds)) => Budget::Until(Instant::now() + Duration::from_secs_f64(seconds)),
        (true, None) => Budget::Calls(args.calls),
    }
}

fn shows_progress(args: &Args, measuring: bool) -> bool {
    measuring
        && args.client_process.is_none()
        && args
            .duration
            .map_or(args.calls >= 50_000, |seconds| seconds >= 3.0)
}

/// Runs `threads` copies of `body`, each given the shared progress; merges their histograms.
/// The CPU used meanwhile is this process's and, if `server` names one, that process's.
fn measure<F>(args: &Args, measuring: bool, server: Option<u32>, body: F) -> anyhow::Result<Report>
where
    F: Fn(&Progress) -> anyhow::Result<Histogram<u64>> + Sync,
{
    let progress = Progress::new(budget(args, measuring), shows_progress(args, measuring));
    let cpu_before = (cpu::used(None), server.and_then(|pid| cpu::used(Some(pid))));
    let started = Instant::now();
    let histograms = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..args.threads)
            .map(|_| scope.spawn(|| body(&progress)))
            .collect();
        threads
            .into_iter()
            .map(|thread| thread.join().expect("a benchmark thread panicked"))
            .collect::<anyhow::Result<Vec<_>>>()
    })?;
    let elapsed = started.elapsed();
    let cpu_after = (cpu::used(None), server.and_then(|pid| cpu::used(Some(pid))));
    let spent = |before: Option<Duration>, after: Option<Duration>| Some(after? - before?);
    progress.bar.finish_and_clear();
    let mut latency = new_histogram();
    for histogram in &histograms {
        latency.add(histogram)?;
    }
    Ok(Report {
        calls: latency.len(),
        elapsed,
        latency,
        client_cpu: spent(cpu_before.0, cpu_after.0),
        server_cpu: spent(cpu_before.1, cpu_after.1),
    })
}

fn record(histogram: &mut Histogram<u64>, sent: Instant) {
    let micros = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
    histogram.saturating_record(micros.max(1));
}

/// fib-rpc: each thread keeps `in_flight` calls going on the shared client, and checks every
/// reply.
fn rpc_thread(
    client: &RpcClient,
    queue: &str,
    workload: &Workload,
    args: &Args,
    progress: &Progress,
) -> anyhow::Result<Histogram<u64>> {
    let mut histogram = new_histogram();
    let mut window = VecDeque::with_capacity(args.in_flight);
    loop {
        while window.len() < args.in_flight && progress.claim() {
            let pending = client.send_with_timeout(queue, &workload.body, CALL_TIMEOUT)?;
            window.push_back((Instant::now(), pending));
        }
        let Some((sent, pending)) = window.pop_front() else {
            return Ok(histogram);
        };
        let reply = pending.wait()?;
        if reply != workload.expected {
            bail!("a wrong reply of {} bytes", reply.len());
        }
        record(&mut histogram, sent);
        progress.finished_one();
    }
}

/// The fib-rpc client of this run's shape.
fn rpc_client(args: &Args, connection: &ConnectionConfig) -> anyhow::Result<RpcClient> {
    let config = ClientConfig::from(connection).reply_mode(match args.reply_mode {
        Mode::Queue => ReplyMode::CallbackQueue,
        Mode::Direct => ReplyMode::DirectReplyTo,
    });
    Ok(RpcClient::connect(config)?)
}

fn run_rpc(args: &Args, connection: &ConnectionConfig) -> anyhow::Result<Report> {
    let own_queue = format!("fib-bench-rpc-{}", uuid::Uuid::new_v4());
    let queue = args.queue.clone().unwrap_or_else(|| own_queue.clone());
    let mut spawned = match args.spawn_server {
        true => Some(ServerChild::spawn(args, &queue)?),
        false => None,
    };
    let server_pid = spawned.as_ref().map(ServerChild::pid).or(args.server_pid);
    let server = match (&args.queue, &spawned) {
        (None, None) => {
            let config = server_config(args, connection, &queue);
            let server = match args.body_bytes {
                Some(_) => RpcServer::new(config, |body: &[u8]| {
                    Ok::<_, fib_rpc::HandlerError>(body.to_vec())
                }),
                None => RpcServer::new(config, fibonacci_handler(DEFAULT_MAX_N)),
            };
            Some(server.start()?)
        }
        _ => None,
    };
    let report = match args.processes {
        Some(_) => {
            let cpu = match (&server, server_pid) {
                (Some(_), _) => ServerCpu::Here,
                (None, Some(pid)) => ServerCpu::Process(pid),
                (None, None) => ServerCpu::Unknown,
            };
            measure_in_processes(args, Side::Rpc, &queue, cpu)
        }
        None => rpc_client(args, connection).and_then(|client| {
            let workload = Workload::of(args);
            let run = |measuring| {
                measure(args, measuring, server_pid, |progress| {
                    rpc_thread(&client, &queue, &workload, args, progress)
                })
            };
            // Warm-up and measurement; a failure of either still cleans up below.
            let report = run(false).and_then(|_| run(true));
            client.close()?;
            report
        }),
    };
    if let Some(child) = spawned.as_mut() {
        child.stop();
    }
    if let Some(server) = server {
        server.shutdown()?;
    }
    // The queue is ours unless --queue named it.
    if args.queue.is_none() {
        raw::delete_queue(connection, &own_queue)?;
    }
    report
}

/// fib-rpc's server as a process of its own, so that its CPU is measured apart.
struct ServerChild(std::process::Child);

impl ServerChild {
    /// Starts the fib-server beside this binary on `queue`, as this run's in-process server
    /// would be set up, and waits until it serves.
    fn spawn(args: &Args, queue: &str) -> anyhow::Result<ServerChild> {
        let binary = std::env::current_exe()?.with_file_name("fib-server");
        let mut child = std::process::Command::new(&binary)
            .args([
                "--queue",
                queue,
                "--queue-type",
                &value_name(args.queue_type),
            ])
            .args(["--workers", &args.workers.to_string()])
            .args(["--prefetch", &args.prefetch.to_string()])
            .env("AMQP_URL", args.amqp_url.join(","))
            .env("RUST_LOG", "info")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let stderr = child.stderr.take().expect("piped");
        let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
        let ready = lines
            .by_ref()
            .map_while(Result::ok)
            .any(|line| line.contains("all services consuming"));
        // Its later lines are read and dropped, so that a full pipe never stops it.
        std::thread::spawn(move || lines.for_each(drop));
        let mut server = ServerChild(child);
        if !ready {
            server.stop();
            bail!("{} ended before it served", binary.display());
        }
        Ok(server)
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    fn stop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for ServerChild {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Settings of the server this tool starts.
fn server_config(args: &Args, connection: &ConnectionConfig, queue: &str) -> ServerConfig {
    ServerConfig::from(connection)
        .queue(queue)
        .queue_type(match args.queue_type {
            Kind::Classic => QueueType::Classic,
            Kind::Quorum => QueueType::Quorum,
        })
        .workers(args.workers)
        .prefetch(args.prefetch)
}

/// The report with the median calls/s.
fn median(mut reports: Vec<Report>) -> Option<Report> {
    reports.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
    let middle = reports.len() / 2;
    reports.into_iter().nth(middle)
}

/// This process's peak resident set, in kB, from /proc (Linux).
fn peak_rss_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // One line, the whole chain; the library's error, wherever it is in the chain,
            // picks the exit code as for every tool (EX_SOFTWARE for what is not the library's).
            eprintln!("fib-bench: {error:#}");
            let code = error
                .chain()
                .find_map(|cause| cause.downcast_ref::<fib_rpc::Error>())
                .map_or(exit::SOFTWARE, exit::code);
            ExitCode::from(code)
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    if args.docs.emit(Args::command())? {
        return Ok(());
    }
    if args.threads == 0 || args.in_flight == 0 || args.workers == 0 || args.prefetch == 0 {
        return Err(fib_rpc::Error::Config(
            "--threads, --in-flight, --workers and --prefetch must be at least 1".to_owned(),
        )
        .into());
    }
    if args.body_bytes.is_some() && args.queue.is_some() && args.client_process.is_none() {
        return Err(fib_rpc::Error::Config(
            "--body-bytes needs servers that echo, which this tool starts: not with --queue"
                .to_owned(),
        )
        .into());
    }
    let connection = ConnectionConfig::with_urls(&args.amqp_url);
    if let Some(side) = args.client_process {
        return processes::run_client_process(&args, side, &connection);
    }
    // The broker is reached through fib-rpc first, so that refused credentials, a missing vhost
    // or an unreachable broker get fib-rpc's one-line reason and exit code, not the raw
    // baseline's driver error.
    QueueAdmin::connect(&connection)?.close()?;
    let mut raws = Vec::new();
    let mut wires = Vec::new();
    let mut rpcs = Vec::new();
    for _ in 0..args.rounds {
        // The raw sides' client processes measure against the raw server of this process.
        let args = &args;
        let in_processes =
            |side| move |queue: &str| measure_in_processes(args, side, queue, ServerCpu::Here);
        if !args.no_raw {
            let raw = raw::run_raw(args, &connection, Wire::Plain, in_processes(Side::Raw));
            raws.push(raw.context("measuring the raw limit")?);
        }
        if args.wire_baseline {
            let wire = raw::run_raw(args, &connection, Wire::FibRpc, in_processes(Side::RawWire));
            wires.push(wire.context("measuring the raw limit with fib-rpc's properties")?);
        }
        rpcs.push(run_rpc(args, &connection).context("measuring fib-rpc")?);
    }
    let raw = median(raws);
    let wire = median(wires);
    let rpc = median(rpcs).expect("at least one round");
    let request = match args.body_bytes {
        Some(bytes) => format!("{bytes}-byte echo"),
        None => format!("n={}", args.n),
    };
    let clients = match args.processes {
        Some(processes) => format!("{processes} client processes x "),
        None => String::new(),
    };
    let shape = format!(
        "{:?} queue, {} workers x prefetch {}, {clients}{} threads x {} in flight, {request}, replies via {:?}",
        args.queue_type,
        args.workers,
        args.prefetch,
        args.threads,
        args.in_flight,
        args.reply_mode
    )
    .to_lowercase();
    let rss = peak_rss_kb().unwrap_or(0);
    if args.json {
        let json = |report: Option<&Report>| report.map_or("null".to_owned(), Report::json);
        let fraction = |of: Option<&Report>, to: &Report| {
            of.map_or("null".to_owned(), |of| {
                format!("{:.3}", to.rate() / of.rate())
            })
        };
        println!(
            r#"{{"shape":"{shape}","raw":{},"raw_wire":{},"rpc":{},"fraction_of_raw":{},"fraction_of_raw_wire":{},"peak_rss_kb":{rss}}}"#,
            json(raw.as_ref()),
            json(wire.as_ref()),
            rpc.json(),
            fraction(raw.as_ref(), &rpc),
            fraction(wire.as_ref(), &rpc),
        );
        return Ok(());
    }
    println!("fib-bench: {shape}");
    println!(
        "{:<10} {:>8} {:>10} {:>8} {:>8} {:>8} {:>9} {:>8}",
        "", "calls", "calls/s", "p50 us", "p90 us", "p99 us", "p99.9 us", "max us"
    );
    if let Some(raw) = &raw {
        println!("{}", raw.row("raw limit"));
    }
    if let Some(wire) = &wire {
        println!("{}", wire.row("raw, wire"));
    }
    println!("{}", rpc.row("fib-rpc"));
    if let Some(raw) = &raw {
        println!(
            "fib-rpc reaches {:.2} of the raw calls/s, at {:.2}x its p50 latency",
            rpc.rate() / raw.rate(),
            rpc.micros(0.5) as f64 / raw.micros(0.5) as f64
        );
    }
    if let (Some(raw), Some(wire)) = (&raw, &wire) {
        println!(
            "with fib-rpc's message properties the raw limit is {:.2} of the plain one; fib-rpc reaches {:.2} of it",
            wire.rate() / raw.rate(),
            rpc.rate() / wire.rate()
        );
    }
    let sides = [
        ("raw limit", raw.as_ref()),
        ("raw, wire", wire.as_ref()),
        ("fib-rpc", Some(&rpc)),
    ];
    for (label, report) in sides {
        let Some((process, server)) = report.map(Report::cpu_per_call) else {
            continue;
        };
        let shown = |value: Option<f64>| value.map_or("?".to_owned(), |v| format!("{v:.1} us"));
        println!(
            "{label} CPU per call: clients {}, server process {}",
            shown(process),
            shown(server)
        );
    }
    println!("peak RSS of this process: {rss} kB");
    Ok(())
}
