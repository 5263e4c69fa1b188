//! The raw limit: plain amiquip publish → consume → reply, with no RPC layer, in the same shape
//! as the fib-rpc measurement beside it (queue type, workers, prefetch, threads, calls in
//! flight, reply mode and body), with the tutorial's message properties or with fib-rpc's.

use crate::{measure, record, Args, Kind, Mode, Progress, Report, Workload, CALL_TIMEOUT};
use amiquip::{
    AmqpProperties, AmqpValue, Auth, Channel, Connection, ConnectionOptions, ConnectionTuning,
    ConsumerMessage, ConsumerOptions, FieldTable, Publish, QueueDeclareOptions, QueueDeleteOptions,
};
use anyhow::{bail, Context};
use fib_rpc::protocol::{CONTENT_TYPE, DEADLINE_HEADER};
use fib_rpc::services::fibonacci;
use fib_rpc::ConnectionConfig;
use hdrhistogram::Histogram;
use percent_encoding::percent_decode_str;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// RabbitMQ's pseudo-queue for direct reply-to.
const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// The message properties the raw limit's requests and replies carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// `reply_to` and `correlation_id` only, as RabbitMQ's tutorial 6 sends them.
    Plain,
    /// Those of fib-rpc's calls: the request also carries its content type, an expiration and
    /// the deadline header and is published mandatory; the reply carries its content type.
    /// Against `Plain` it tells what the messages' contents cost the broker and the driver,
    /// apart from what fib-rpc's own code costs.
    FibRpc,
}

impl Wire {
    /// A request's properties, and whether it is published mandatory.
    fn request(self, reply_to: &str, correlation_id: String) -> (AmqpProperties, bool) {
        let plain = AmqpProperties::default()
            .with_reply_to(reply_to.to_owned())
            .with_correlation_id(correlation_id);
        match self {
            Wire::Plain => (plain, false),
            Wire::FibRpc => {
                let deadline = SystemTime::now() + CALL_TIMEOUT;
                let millis = deadline.duration_since(UNIX_EPOCH).map_or(0, |since| {
                    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
                });
                let mut headers = FieldTable::new();
                headers.insert(DEADLINE_HEADER.to_owned(), AmqpValue::LongLongInt(millis));
                let properties = plain
                    .with_content_type(CONTENT_TYPE.to_owned())
                    .with_expiration(CALL_TIMEOUT.as_millis().to_string())
                    .with_headers(headers);
                (properties, true)
            }
        }
    }

    /// A reply's properties.
    fn reply(self, correlation_id: Option<&String>) -> AmqpProperties {
        let mut properties = AmqpProperties::default();
        if let Some(id) = correlation_id {
            properties = properties.with_correlation_id(id.clone());
        }
        match self {
            Wire::Plain => properties,
            Wire::FibRpc => properties.with_content_type(CONTENT_TYPE.to_owned()),
        }
    }
}

/// The raw limit's server: one channel per worker on a connection of its own.
pub struct RawServer {
    connection: Connection,
    setup: Channel,
    queue: String,
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
}

impl RawServer {
    /// Declares a request queue of its own and starts the workers on it.
    pub fn start(
        args: &Args,
        connection: &ConnectionConfig,
        wire: Wire,
    ) -> anyhow::Result<RawServer> {
        let queue = format!("fib-bench-raw-{}", uuid::Uuid::new_v4());
        let mut connection = raw_connection(connection)?;
        let setup = connection.open_channel(None)?;
        declare(&setup, &queue, args.queue_type)?;
        let stop = Arc::new(AtomicBool::new(false));
        let workers = (0..args.workers)
            .map(|_| {
                let channel = connection.open_channel(None)?;
                let (queue, stop) = (queue.clone(), Arc::clone(&stop));
                let (prefetch, echo) = (args.prefetch, args.body_bytes.is_some());
                Ok(std::thread::spawn(move || {
                    raw_worker(channel, queue, prefetch, echo, wire, stop)
                }))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(RawServer {
            connection,
            setup,
            queue,
            stop,
            workers,
        })
    }

    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// Stops the workers and deletes the queue.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
        self.setup
            .queue_delete(self.queue.as_str(), QueueDeleteOptions::default())?;
        self.connection.close()?;
        Ok(())
    }
}

/// The raw limit's client side: a connection with one channel per thread.
pub struct RawClient {
    connection: Connection,
    callers: Vec<Mutex<RawCaller>>,
    next_caller: AtomicU64,
    wire: Wire,
}

impl RawClient {
    pub fn connect(
        args: &Args,
        connection: &ConnectionConfig,
        wire: Wire,
    ) -> anyhow::Result<RawClient> {
        let mut connection = raw_connection(connection)?;
        let callers = (0..args.threads)
            .map(|_| {
                RawCaller::new(connection.open_channel(None)?, args.reply_mode).map(Mutex::new)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(RawClient {
            connection,
            callers,
            next_caller: AtomicU64::new(0),
            wire,
        })
    }

    /// One measurement (or warm-up) against `queue`; see [`measure`].
    pub fn measure(
        &self,
        args: &Args,
        queue: &str,
        workload: &Workload,
        measuring: bool,
    ) -> anyhow::Result<Report> {
        self.next_caller.store(0, Ordering::Relaxed);
        measure(args, measuring, None, |progress| {
            let index = self.next_caller.fetch_add(1, Ordering::Relaxed) as usize;
            let caller = self.callers[index].lock().expect("one thread per caller");
            raw_thread(&caller, self.wire, queue, args, workload, progress)
        })
    }

    pub fn close(self) -> anyhow::Result<()> {
        self.connection.close()?;
        Ok(())
    }
}

/// Warm-up, then measurement, of the raw limit with its clients in this process.
pub fn run_raw(
    args: &Args,
    connection: &ConnectionConfig,
    wire: Wire,
    in_processes: impl FnOnce(&str) -> anyhow::Result<Report>,
) -> anyhow::Result<Report> {
    let server = RawServer::start(args, connection, wire)?;
    let workload = Workload::of(args);
    // Measured, then cleaned up whatever the measurement's outcome.
    let report = match args.processes {
        Some(_) => in_processes(server.queue()),
        None => RawClient::connect(args, connection, wire).and_then(|client| {
            let report = client
                .measure(args, server.queue(), &workload, false)
                .and_then(|_| client.measure(args, server.queue(), &workload, true));
            client.close()?;
            report
        }),
    };
    server.stop()?;
    report
}

/// One client thread's channel, with its reply queue: an exclusive queue of its own, or
/// direct reply-to consumed (and published to) on this very channel.
struct RawCaller {
    channel: Channel,
    reply_to: String,
    replies: crossbeam_channel::Receiver<ConsumerMessage>,
}

impl RawCaller {
    fn new(channel: Channel, mode: Mode) -> anyhow::Result<RawCaller> {
        let reply_to = match mode {
            Mode::Queue => {
                let options = QueueDeclareOptions {
                    exclusive: true,
                    ..QueueDeclareOptions::default()
                };
                channel.queue_declare("", options)?.name().to_owned()
            }
            Mode::Direct => DIRECT_REPLY_TO.to_owned(),
        };
        let no_ack = ConsumerOptions {
            no_ack: true,
            ..ConsumerOptions::default()
        };
        let consumer = channel.basic_consume(reply_to.as_str(), no_ack)?;
        let replies = consumer.receiver().clone();
        // The subscription must outlive warm-up and measurement; dropping the handle would
        // cancel it (and a cancel racing its confirmation can kill an amiquip connection).
        std::mem::forget(consumer);
        Ok(RawCaller {
            channel,
            reply_to,
            replies,
        })
    }
}

/// `in_flight` requests going, replies matched by correlation id and checked.
fn raw_thread(
    caller: &RawCaller,
    wire: Wire,
    queue: &str,
    args: &Args,
    workload: &Workload,
    progress: &Progress,
) -> anyhow::Result<Histogram<u64>> {
    let mut histogram = crate::new_histogram();
    let mut in_flight: HashMap<u64, Instant> = HashMap::with_capacity(args.in_flight);
    let mut next_id = 0u64;
    loop {
        while in_flight.len() < args.in_flight && progress.claim() {
            let (properties, mandatory) = wire.request(&caller.reply_to, next_id.to_string());
            let mut publish = Publish::with_properties(&workload.body, queue, properties);
            publish.mandatory = mandatory;
            caller.channel.basic_publish("", publish)?;
            in_flight.insert(next_id, Instant::now());
            next_id += 1;
        }
        if in_flight.is_empty() {
            return Ok(histogram);
        }
        match caller.replies.recv_timeout(Duration::from_secs(30))? {
            ConsumerMessage::Delivery(delivery) => {
                let id: u64 = delivery
                    .properties
                    .correlation_id()
                    .as_deref()
                    .and_then(|id| id.parse().ok())
                    .context("a raw reply without our correlation id")?;
                let sent = in_flight.remove(&id).context("an unknown raw reply")?;
                if delivery.body != workload.expected {
                    bail!("a wrong raw reply of {} bytes", delivery.body.len());
                }
                record(&mut histogram, sent);
                progress.finished_one();
            }
            other => bail!("raw reply queue closed: {other:?}"),
        }
    }
}

/// One worker: a channel, prefetch, reply then ack; the reply is fib(n), or the body itself
/// when `echo`.
fn raw_worker(
    channel: Channel,
    queue: String,
    prefetch: u16,
    echo: bool,
    wire: Wire,
    stop: Arc<AtomicBool>,
) {
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
        let answer = match echo {
            true => delivery.body.clone(),
            false => {
                let n = std::str::from_utf8(&delivery.body)
                    .ok()
                    .and_then(|text| text.parse().ok())
                    .unwrap_or(0);
                fibonacci(n).to_string().into_bytes()
            }
        };
        let properties = wire.reply(delivery.properties.correlation_id().as_ref());
        let Some(reply_to) = delivery.properties.reply_to().clone() else {
            continue;
        };
        let published =
            channel.basic_publish("", Publish::with_properties(&answer, reply_to, properties));
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

/// Deletes a queue this tool declared, on a connection of its own.
pub fn delete_queue(connection: &ConnectionConfig, queue: &str) -> anyhow::Result<()> {
    let mut admin = raw_connection(connection)?;
    admin
        .open_channel(None)?
        .queue_delete(queue, QueueDeleteOptions::default())?;
    admin.close()?;
    Ok(())
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
