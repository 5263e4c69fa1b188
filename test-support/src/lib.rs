//! Shared test support: the real broker, unique queue names that clean up after themselves,
//! in-process and out-of-process servers, and a raw AMQP peer for sending arbitrary requests.
//! A crate of its own (never published) that the library's and the tools' test binaries share.
pub mod logs;
pub mod nodes;
pub mod processes;
pub mod proxy;
pub mod wire;

use amiquip::{
    AmqpProperties, AmqpValue, Channel, Connection, FieldTable, Publish, QueueDeclareOptions,
    QueueDeleteOptions,
};
use fib_rpc::services::fibonacci_handler;
use fib_rpc::{
    ClientConfig, FibonacciRpcClient, HandlerError, QueueType, RpcClient, RpcServer, ServerConfig,
    ServerHandle,
};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The broker the suite runs against: `AMQP_URL`, or the local default.
pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| fib_rpc::DEFAULT_URL.to_owned())
}

/// `host:port` of the test broker, for a proxy to forward to.
pub fn broker_address() -> String {
    let url = url::Url::parse(&amqp_url()).expect("AMQP_URL is a URL");
    format!(
        "{}:{}",
        url.host_str().unwrap_or("127.0.0.1"),
        url.port().unwrap_or(5672)
    )
}

/// The server-named callback queue of the client connection labelled `connection_name`, as the
/// broker lists it.
pub fn callback_queue_of(connection_name: &str) -> String {
    let connections = rabbitmqctl(None, &["list_connections", "pid", "client_properties"]);
    let pid = connections
        .lines()
        .find(|line| line.contains(connection_name))
        .and_then(|line| line.split_whitespace().next())
        .unwrap_or_else(|| panic!("no connection named {connection_name}"))
        .to_owned();
    let queues = rabbitmqctl(None, &["list_queues", "name", "owner_pid"]);
    queues
        .lines()
        .find(|line| line.ends_with(&pid) && line.starts_with("amq.gen-"))
        .and_then(|line| line.split_whitespace().next())
        .unwrap_or_else(|| panic!("no callback queue owned by {pid}: {queues}"))
        .to_owned()
}

/// Messages ready in `queue` as `rabbitmqctl` lists them (which works for another connection's
/// exclusive queue too); `None` if there is no such queue.
pub fn queue_messages(queue: &str) -> Option<u32> {
    listed(
        &rabbitmqctl(None, &["list_queues", "name", "messages"]),
        queue,
    )?
    .parse()
    .ok()
}

/// `rabbitmqctl -q ARGS` on the shared broker, or with `-n NODE` on a private node; its output.
/// Only listings and closes of the tests' own connections go to the shared broker.
pub fn rabbitmqctl(node: Option<&str>, args: &[&str]) -> String {
    let mut command = Command::new("rabbitmqctl");
    command.arg("-q");
    if let Some(node) = node {
        command.args(["-n", node]);
    }
    let output = command
        .args(args)
        .output()
        .expect("rabbitmqctl must be installed for this test");
    assert!(
        output.status.success(),
        "rabbitmqctl {node:?} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// (messages ready, messages delivered and not yet acked) of `queue`, as the shared broker
/// (`node` None) or a private node lists them; `None` if it lists no such queue.
pub fn ready_and_unacked(node: Option<&str>, queue: &str) -> Option<(u32, u32)> {
    let listing = rabbitmqctl(
        node,
        &[
            "list_queues",
            "name",
            "messages_ready",
            "messages_unacknowledged",
        ],
    );
    listing.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields[..] {
            [name, ready, unacked] if name == queue => {
                Some((ready.parse().ok()?, unacked.parse().ok()?))
            }
            _ => None,
        }
    })
}

/// The second field of the listing line whose first field is `name`.
pub fn listed<'a>(listing: &'a str, name: &str) -> Option<&'a str> {
    listing.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        (fields.next() == Some(name)).then(|| fields.next())?
    })
}

/// Closes, from the broker's side (the shared one, or private `node`), every connection whose
/// client properties contain `needle` (our connections carry their name in the `information`
/// property). Returns how many.
pub fn close_connections_on(node: Option<&str>, needle: &str) -> usize {
    let listing = rabbitmqctl(node, &["list_connections", "pid", "client_properties"]);
    let pids: Vec<&str> = listing
        .lines()
        .filter(|line| line.contains(needle))
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    for pid in &pids {
        rabbitmqctl(
            node,
            &["close_connection", pid, "fault injected by a fib-rpc test"],
        );
    }
    pids.len()
}

/// A raw amiquip connection to the test broker. Panics with instructions if there is none:
/// a test that needs the broker never skips silently.
pub fn raw_connection() -> Connection {
    Connection::insecure_open(&amqp_url()).unwrap_or_else(|error| {
        panic!(
            "cannot reach the RabbitMQ broker at {} ({error}); run scripts/broker.sh, \
             or scripts/test.sh which starts it",
            redact(&amqp_url())
        )
    })
}

fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}***{}", &url[..scheme_end + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// A queue name of this test's own, deleted (with anything in it) when dropped.
pub struct TestQueue {
    pub name: String,
}

impl TestQueue {
    pub fn new(prefix: &str) -> TestQueue {
        TestQueue {
            name: format!("test-{prefix}-{}", uuid::Uuid::new_v4()),
        }
    }

    /// Declares it the way the official tutorials do today: durable, quorum.
    pub fn declare_quorum(&self) {
        declare(&self.name, QueueType::Quorum, true);
    }

    /// Declares it as a plain classic queue.
    pub fn declare_classic(&self, durable: bool) {
        declare(&self.name, QueueType::Classic, durable);
    }

    /// (messages ready, consumers) as the broker reports them.
    pub fn counts(&self) -> (u32, u32) {
        let mut connection = raw_connection();
        let channel = connection.open_channel(None).unwrap();
        let queue = channel.queue_declare_passive(self.name.as_str()).unwrap();
        let counts = (
            queue.declared_message_count().unwrap(),
            queue.declared_consumer_count().unwrap(),
        );
        drop(queue);
        drop(channel);
        connection.close().unwrap();
        counts
    }

    pub fn exists(&self) -> bool {
        let mut connection = raw_connection();
        let channel = connection.open_channel(None).unwrap();
        let exists = channel.queue_declare_passive(self.name.as_str()).is_ok();
        drop(channel);
        let _ = connection.close();
        exists
    }
}

impl Drop for TestQueue {
    fn drop(&mut self) {
        if let Ok(mut connection) = Connection::insecure_open(&amqp_url()) {
            if let Ok(channel) = connection.open_channel(None) {
                let _ = channel.queue_delete(self.name.as_str(), QueueDeleteOptions::default());
            }
            let _ = connection.close();
        }
    }
}

fn declare(name: &str, queue_type: QueueType, durable: bool) {
    declare_at(&amqp_url(), name, queue_type, durable);
}

/// Declares queue `name` on the broker at `url` (a private node's, say).
pub fn declare_at(url: &str, name: &str, queue_type: QueueType, durable: bool) {
    let mut connection = Connection::insecure_open(url).expect("connect to declare a queue");
    let channel = connection.open_channel(None).unwrap();
    let mut arguments = FieldTable::new();
    if queue_type == QueueType::Quorum {
        arguments.insert(
            "x-queue-type".into(),
            AmqpValue::LongString("quorum".into()),
        );
    }
    channel
        .queue_declare(
            name,
            QueueDeclareOptions {
                durable,
                arguments,
                ..QueueDeclareOptions::default()
            },
        )
        .unwrap();
    drop(channel);
    connection.close().unwrap();
}

pub fn server_config(queue: &str, workers: usize) -> ServerConfig {
    server_config_at(&amqp_url(), queue, workers)
}

/// Server settings for the broker at `url` (a private node's, say).
pub fn server_config_at(url: &str, queue: &str, workers: usize) -> ServerConfig {
    let mut config = ServerConfig::new(url, queue);
    config = config.workers(workers);
    config
}

/// An in-process Fibonacci server on `queue`, consuming when this returns.
pub fn start_fib_server(queue: &str, workers: usize) -> ServerHandle {
    RpcServer::new(
        server_config(queue, workers),
        fibonacci_handler(fib_rpc::services::DEFAULT_MAX_N),
    )
    .start()
    .expect("start the server")
}

/// Holds an echo server's `slow` requests in its handler until the test lets them go.
pub struct Gate {
    /// Receives one message each time a `slow` request reaches the handler.
    pub started: crossbeam_channel::Receiver<()>,
    release: Mutex<Option<crossbeam_channel::Sender<()>>>,
}

impl Gate {
    /// Lets every held request, and every later one, through.
    pub fn release(&self) {
        self.release.lock().unwrap().take();
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.release();
    }
}

/// An in-process echo server on `queue` whose handler holds a request whose body is `slow`
/// until the gate is released (answering others at once), so a test decides when it finishes.
pub fn start_gated_echo_server(queue: &str, workers: usize) -> (ServerHandle, Gate) {
    start_gated_echo_server_at(&amqp_url(), queue, workers)
}

/// [`start_gated_echo_server`] on the broker at `url`.
pub fn start_gated_echo_server_at(url: &str, queue: &str, workers: usize) -> (ServerHandle, Gate) {
    let (started_sender, started) = crossbeam_channel::unbounded();
    let (release, released) = crossbeam_channel::bounded::<()>(0);
    let server = RpcServer::new(
        server_config_at(url, queue, workers),
        move |body: &[u8]| {
            if body == b"slow" {
                let _ = started_sender.send(());
                // Returns when the gate's sender is dropped.
                let _ = released.recv();
            }
            Ok::<_, HandlerError>(body.to_vec())
        },
    )
    .start()
    .expect("start the echo server");
    let gate = Gate {
        started,
        release: Mutex::new(Some(release)),
    };
    (server, gate)
}

pub fn client() -> RpcClient {
    RpcClient::connect(amqp_url()).expect("connect a client")
}

/// Client settings for the test broker.
pub fn client_config() -> ClientConfig {
    ClientConfig::new(amqp_url())
}

/// A client that queues requests even when no server consumes the queue yet.
pub fn patient_client() -> RpcClient {
    let mut config = client_config();
    config = config.require_consumer(false);
    RpcClient::connect(config).expect("connect a client")
}

pub fn fib_client(queue: &str, timeout: Duration) -> FibonacciRpcClient {
    let mut config = client_config();
    config = config.call_timeout(timeout);
    FibonacciRpcClient::new(RpcClient::connect(config).expect("connect a client")).with_queue(queue)
}

/// A bare AMQP peer with an exclusive reply queue, for requests no well-behaved client sends.
pub struct RawPeer {
    connection: Option<Connection>,
    channel: Channel,
    pub reply_queue: String,
}

impl RawPeer {
    pub fn connect() -> RawPeer {
        let mut connection = raw_connection();
        let channel = connection.open_channel(None).unwrap();
        let reply_queue = channel
            .queue_declare(
                "",
                QueueDeclareOptions {
                    exclusive: true,
                    ..QueueDeclareOptions::default()
                },
            )
            .unwrap()
            .name()
            .to_owned();
        RawPeer {
            connection: Some(connection),
            channel,
            reply_queue,
        }
    }

    /// Publishes `body` to `queue` with exactly these properties.
    pub fn publish(&self, queue: &str, body: &[u8], properties: AmqpProperties) {
        self.channel
            .basic_publish("", Publish::with_properties(body, queue, properties))
            .unwrap();
    }

    /// Properties of a well-formed request answering to this peer.
    pub fn request_properties(&self, correlation_id: &str) -> AmqpProperties {
        AmqpProperties::default()
            .with_reply_to(self.reply_queue.clone())
            .with_correlation_id(correlation_id.to_owned())
    }

    /// The next message in the reply queue, if one arrives within `timeout`.
    pub fn next_reply(&self, timeout: Duration) -> Option<(AmqpProperties, Vec<u8>)> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(get) = self
                .channel
                .basic_get(self.reply_queue.as_str(), true)
                .unwrap()
            {
                return Some((get.delivery.properties, get.delivery.body));
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for RawPeer {
    fn drop(&mut self) {
        if let Some(connection) = self.connection.take() {
            let _ = connection.close();
        }
    }
}

/// Closes, from the broker's side, every connection whose client properties contain `needle`
/// (our connections carry their name in the `information` property). Returns how many.
pub fn close_broker_connections(needle: &str) -> usize {
    close_connections_on(None, needle)
}

/// Polls `condition` every 50 ms until it holds; panics with `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A small deterministic pseudo-random generator (xorshift64*), so a failing fuzz run can be
/// replayed from its seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..bound`.
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }
}
