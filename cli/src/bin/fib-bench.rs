//! `fib-bench`: latency and throughput of fib-rpc, side by side with the raw AMQP limit.
//!
//! Every run measures two things of the same shape on the same broker: a raw amiquip
//! publish → consume → reply ping-pong with no RPC layer (the limit), and fib-rpc itself.

use amiquip::{
    AmqpProperties, AmqpValue, Auth, Channel, Connection, ConnectionOptions, ConnectionTuning,
    ConsumerMessage, ConsumerOptions, FieldTable, Publish, QueueDeclareOptions, QueueDeleteOptions,
};
use anyhow::{bail, Context};
use clap::{CommandFactory, Parser, ValueEnum};
use fib_rpc::services::{fibonacci, fibonacci_handler, DEFAULT_MAX_N};
use fib_rpc::{
    ClientConfig, ConnectionConfig, FibonacciRpcClient, QueueAdmin, QueueType, ReplyMode,
    RpcClient, RpcServer, ServerConfig,
};
use fib_rpc_cli::{cpu, exit};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use percent_encoding::percent_decode_str;
use std::collections::{HashMap, VecDeque};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
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
    /// Client threads, all sharing one fib-rpc client (one connection).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Calls each thread keeps in flight.
    #[arg(long, default_value_t = 1)]
    in_flight: usize,
    /// Total calls per measurement (ignored with --duration).
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

/// One measurement: how many calls, how long, their latencies, and the CPU they cost.
struct Report {
    calls: u64,
    elapsed: Duration,
    latency: Histogram<u64>,
    /// This process's CPU over the measured calls (the server's too when it runs in here).
    process_cpu: Option<Duration>,
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

    /// CPU microseconds per call of this process and of the server process, if known.
    fn cpu_per_call(&self) -> (Option<f64>, Option<f64>) {
        let per_call = |cpu: Option<Duration>| cpu.and_then(|cpu| cpu::per_call(cpu, self.calls));
        (per_call(self.process_cpu), per_call(self.server_cpu))
    }

    fn json(&self) -> String {
        let [p50, p90, p99, p999, max] = self.latencies();
        let number = |value: Option<f64>| value.map_or("null".to_owned(), |v| format!("{v:.1}"));
        let (process, server) = self.cpu_per_call();
        format!(
            r#"{{"calls":{},"seconds":{:.3},"calls_per_second":{:.1},"p50_us":{p50},"p90_us":{p90},"p99_us":{p99},"p999_us":{p999},"max_us":{max},"process_cpu_us_per_call":{},"server_cpu_us_per_call":{}}}"#,
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
        process_cpu: spent(cpu_before.0, cpu_after.0),
        server_cpu: spent(cpu_before.1, cpu_after.1),
    })
}

fn record(histogram: &mut Histogram<u64>, sent: Instant) {
    let micros = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
    histogram.saturating_record(micros.max(1));
}

/// fib-rpc: each thread keeps `in_flight` calls going on the shared client.
fn rpc_thread(
    client: &FibonacciRpcClient,
    queue: &str,
    args: &Args,
    progress: &Progress,
) -> anyhow::Result<Histogram<u64>> {
    let body = args.n.to_string();
    let expected = fibonacci(args.n).to_string().into_bytes();
    let timeout = Duration::from_secs(30);
    let mut histogram = new_histogram();
    let mut window = VecDeque::with_capacity(args.in_flight);
    loop {
        while window.len() < args.in_flight && progress.claim() {
            let pending = client
                .rpc()
                .send_with_timeout(queue, body.as_bytes(), timeout)?;
            window.push_back((Instant::now(), pending));
        }
        let Some((sent, pending)) = window.pop_front() else {
            return Ok(histogram);
        };
        let reply = pending.wait()?;
        if reply != expected {
            bail!("wrong answer: {}", String::from_utf8_lossy(&reply));
        }
        record(&mut histogram, sent);
        progress.finished_one();
    }
}

/// The raw limit, client side: a channel of its own with an exclusive reply queue.
struct RawCaller {
    channel: Channel,
    reply_queue: String,
    replies: crossbeam_channel::Receiver<ConsumerMessage>,
}

impl RawCaller {
    fn new(channel: Channel) -> anyhow::Result<RawCaller> {
        let options = QueueDeclareOptions {
            exclusive: true,
            ..QueueDeclareOptions::default()
        };
        let reply_queue = channel.queue_declare("", options)?.name().to_owned();
        let no_ack = ConsumerOptions {
            no_ack: true,
            ..ConsumerOptions::default()
        };
        let consumer = channel.basic_consume(reply_queue.as_str(), no_ack)?;
        let replies = consumer.receiver().clone();
        // The subscription must outlive warm-up and measurement; dropping the handle would
        // cancel it (and a cancel racing its confirmation can kill an amiquip connection).
        std::mem::forget(consumer);
        Ok(RawCaller {
            channel,
            reply_queue,
            replies,
        })
    }
}

/// The raw limit, client side: `in_flight` requests going, replies matched by correlation id.
fn raw_thread(
    caller: &RawCaller,
    queue: &str,
    args: &Args,
    progress: &Progress,
) -> anyhow::Result<Histogram<u64>> {
    let RawCaller {
        channel,
        reply_queue,
        replies,
    } = caller;
    let body = args.n.to_string();
    let mut histogram = new_histogram();
    let mut in_flight: HashMap<u64, Instant> = HashMap::with_capacity(args.in_flight);
    let mut next_id = 0u64;
    loop {
        while in_flight.len() < args.in_flight && progress.claim() {
            let properties = AmqpProperties::default()
                .with_reply_to(reply_queue.clone())
                .with_correlation_id(next_id.to_string());
            channel.basic_publish(
                "",
                Publish::with_properties(body.as_bytes(), queue, properties),
            )?;
            in_flight.insert(next_id, Instant::now());
            next_id += 1;
        }
        if in_flight.is_empty() {
            return Ok(histogram);
        }
        match replies.recv_timeout(Duration::from_secs(30))? {
            ConsumerMessage::Delivery(delivery) => {
                let id: u64 = delivery
                    .properties
                    .correlation_id()
                    .as_deref()
                    .and_then(|id| id.parse().ok())
                    .context("a raw reply without our correlation id")?;
                let sent = in_flight.remove(&id).context("an unknown raw reply")?;
                record(&mut histogram, sent);
                progress.finished_one();
            }
            other => bail!("raw reply queue closed: {other:?}"),
        }
    }
}

/// The raw limit, server side: one channel per worker, prefetch, reply then ack.
fn raw_worker(channel: Channel, queue: String, prefetch: u16, stop: Arc<AtomicBool>) {
    let consume = channel
        .qos(0, prefetch, false)
        .and_then(|()| channel.basic_consume(queue, ConsumerOptions::default()));
    let Ok(consumer) = consume else { return };
    while !stop.load(Ordering::Relaxed) {
        let Ok(ConsumerMessage::Delivery(delivery)) =
            consumer.receiver().recv_timeout(Duration::from_millis(100))
        else {
            continue;
        };
        let n = std::str::from_utf8(&delivery.body)
            .ok()
            .and_then(|text| text.parse().ok())
            .unwrap_or(0);
        let answer = fibonacci(n).to_string();
        let mut properties = AmqpProperties::default();
        if let Some(id) = delivery.properties.correlation_id() {
            properties = properties.with_correlation_id(id.clone());
        }
        let Some(reply_to) = delivery.properties.reply_to().clone() else {
            continue;
        };
        let published = channel.basic_publish(
            "",
            Publish::with_properties(answer.as_bytes(), reply_to, properties),
        );
        if published.and_then(|()| consumer.ack(delivery)).is_err() {
            return;
        }
    }
    // Cancel, then wait for the cancellation's own message before the consumer is dropped:
    // dropping it earlier lets the driver send to a dropped receiver, which kills the connection.
    if consumer.cancel().is_ok() {
        for message in consumer.receiver().iter() {
            if !matches!(message, ConsumerMessage::Delivery(_)) {
                break;
            }
        }
    }
}

fn declare(channel: &Channel, queue: &str, kind: Kind) -> anyhow::Result<()> {
    let mut arguments = FieldTable::new();
    if let Kind::Quorum = kind {
        arguments.insert(
            "x-queue-type".into(),
            AmqpValue::LongString("quorum".into()),
        );
    }
    channel.queue_declare(
        queue,
        QueueDeclareOptions {
            durable: true,
            arguments,
            ..QueueDeclareOptions::default()
        },
    )?;
    Ok(())
}

fn run_raw(args: &Args, connection: &ConnectionConfig) -> anyhow::Result<Report> {
    let queue = format!("fib-bench-raw-{}", uuid::Uuid::new_v4());
    let mut server_connection = raw_connection(connection)?;
    let setup = server_connection.open_channel(None)?;
    declare(&setup, &queue, args.queue_type)?;
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..args.workers)
        .map(|_| {
            let channel = server_connection.open_channel(None)?;
            let (queue, stop) = (queue.clone(), Arc::clone(&stop));
            let prefetch = args.prefetch;
            Ok(std::thread::spawn(move || {
                raw_worker(channel, queue, prefetch, stop)
            }))
        })
        .collect::<anyhow::Result<_>>()?;
    let mut client_connection = raw_connection(connection)?;
    let callers = (0..args.threads)
        .map(|_| RawCaller::new(client_connection.open_channel(None)?).map(std::sync::Mutex::new))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let next_channel = AtomicU64::new(0);
    let run = |measuring| {
        next_channel.store(0, Ordering::Relaxed);
        measure(args, measuring, None, |progress| {
            let index = next_channel.fetch_add(1, Ordering::Relaxed) as usize;
            let caller = callers[index].lock().expect("one thread per caller");
            raw_thread(&caller, &queue, args, progress)
        })
    };
    // Warm-up and measurement; a failure of either still cleans up below.
    let report = run(false).and_then(|_| run(true));
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        let _ = worker.join();
    }
    setup.queue_delete(queue.as_str(), QueueDeleteOptions::default())?;
    client_connection.close()?;
    server_connection.close()?;
    report
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
        (None, None) => Some(
            RpcServer::new(
                server_config(args, connection, &queue),
                fibonacci_handler(DEFAULT_MAX_N),
            )
            .start()?,
        ),
        _ => None,
    };
    let config = ClientConfig::from(connection).reply_mode(match args.reply_mode {
        Mode::Queue => ReplyMode::CallbackQueue,
        Mode::Direct => ReplyMode::DirectReplyTo,
    });
    let client = FibonacciRpcClient::new(RpcClient::connect(config)?);
    let run = |measuring| {
        measure(args, measuring, server_pid, |progress| {
            rpc_thread(&client, &queue, args, progress)
        })
    };
    // Warm-up and measurement; a failure of either still cleans up below.
    let report = run(false).and_then(|_| run(true));
    client.close()?;
    if let Some(child) = spawned.as_mut() {
        child.stop();
    }
    if let Some(server) = server {
        server.shutdown()?;
    }
    // The queue is ours unless --queue named it.
    if args.queue.is_none() {
        let mut admin = raw_connection(connection)?;
        admin
            .open_channel(None)?
            .queue_delete(own_queue.as_str(), QueueDeleteOptions::default())?;
        admin.close()?;
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
        let queue_type = match args.queue_type {
            Kind::Classic => "classic",
            Kind::Quorum => "quorum",
        };
        let mut child = std::process::Command::new(&binary)
            .args(["--queue", queue, "--queue-type", queue_type])
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

/// A plain amiquip connection with `TCP_NODELAY`, as fib-rpc opens its own (amiquip leaves
/// Nagle's algorithm on, which would cap the baseline at a few dozen round trips a second);
/// over amiquip's own TLS for an `amqps://` URL (its `cacertfile` trusted besides the system's
/// CAs), so that the baseline crosses the same transport as fib-rpc.
fn raw_connection(connection: &ConnectionConfig) -> anyhow::Result<Connection> {
    let url = connection
        .get_urls()
        .next()
        .context("no broker URL given")?;
    let parsed = url::Url::parse(url).context("parsing the AMQP URL")?;
    let decode = |text: &str| percent_decode_str(text).decode_utf8_lossy().into_owned();
    let or_guest = |text: String| {
        if text.is_empty() {
            "guest".to_owned()
        } else {
            text
        }
    };
    let tls = parsed.scheme() == "amqps";
    let host = parsed.host_str().unwrap_or("localhost").to_owned();
    let port = parsed.port().unwrap_or(if tls { 5671 } else { 5672 });
    let stream = std::net::TcpStream::connect((host.as_str(), port))?;
    stream.set_nodelay(true)?;
    let vhost = match parsed.path().trim_start_matches('/') {
        "" => "/".to_owned(),
        segment => decode(segment),
    };
    let options = ConnectionOptions::default()
        .auth(Auth::Plain {
            username: or_guest(decode(parsed.username())),
            password: or_guest(decode(parsed.password().unwrap_or(""))),
        })
        .virtual_host(vhost)
        .information(Some("fib-bench raw".to_owned()));
    let stream = mio::net::TcpStream::from_stream(stream)?;
    if !tls {
        return Ok(Connection::insecure_open_stream(
            stream,
            options,
            ConnectionTuning::default(),
        )?);
    }
    let mut connector = native_tls::TlsConnector::builder();
    if let Some((_, ca_file)) = parsed.query_pairs().find(|(key, _)| key == "cacertfile") {
        let pem = std::fs::read(ca_file.as_ref()).context("reading cacertfile")?;
        connector.add_root_certificate(native_tls::Certificate::from_pem(&pem)?);
    }
    Ok(Connection::open_tls_stream(
        connector.build()?,
        &host,
        stream,
        options,
        ConnectionTuning::default(),
    )?)
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
    let connection = ConnectionConfig::with_urls(&args.amqp_url);
    // The broker is reached through fib-rpc first, so that refused credentials, a missing vhost
    // or an unreachable broker get fib-rpc's one-line reason and exit code, not the raw
    // baseline's driver error.
    QueueAdmin::connect(&connection)?.close()?;
    let mut raws = Vec::new();
    let mut rpcs = Vec::new();
    for _ in 0..args.rounds {
        if !args.no_raw {
            raws.push(run_raw(&args, &connection).context("measuring the raw limit")?);
        }
        rpcs.push(run_rpc(&args, &connection).context("measuring fib-rpc")?);
    }
    let raw = median(raws);
    let rpc = median(rpcs).expect("at least one round");
    let shape = format!(
        "{:?} queue, {} workers x prefetch {}, {} threads x {} in flight, n={}, replies via {:?}",
        args.queue_type,
        args.workers,
        args.prefetch,
        args.threads,
        args.in_flight,
        args.n,
        args.reply_mode
    )
    .to_lowercase();
    let rss = peak_rss_kb().unwrap_or(0);
    if args.json {
        let raw_json = raw.as_ref().map_or("null".to_owned(), Report::json);
        let fraction = raw.as_ref().map_or("null".to_owned(), |raw| {
            format!("{:.3}", rpc.rate() / raw.rate())
        });
        println!(
            r#"{{"shape":"{shape}","raw":{raw_json},"rpc":{},"fraction_of_raw":{fraction},"peak_rss_kb":{rss}}}"#,
            rpc.json()
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
    println!("{}", rpc.row("fib-rpc"));
    if let Some(raw) = &raw {
        println!(
            "fib-rpc reaches {:.2} of the raw calls/s, at {:.2}x its p50 latency",
            rpc.rate() / raw.rate(),
            rpc.micros(0.5) as f64 / raw.micros(0.5) as f64
        );
    }
    for (label, report) in [("raw limit", raw.as_ref()), ("fib-rpc", Some(&rpc))] {
        let Some((process, server)) = report.map(Report::cpu_per_call) else {
            continue;
        };
        let shown = |value: Option<f64>| value.map_or("?".to_owned(), |v| format!("{v:.1} us"));
        println!(
            "{label} CPU per call: this process {}, server process {}",
            shown(process),
            shown(server)
        );
    }
    println!("peak RSS of this process: {rss} kB");
    Ok(())
}
