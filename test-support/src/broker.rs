//! The shared broker: where it is, what `rabbitmqctl` lists there, raw connections to it.

use amiquip::{Connection, Consumer};
use std::process::Command;

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
    let queues = callback_queues_of(connection_name);
    queues
        .first()
        .unwrap_or_else(|| panic!("no callback queue owned by {connection_name}"))
        .clone()
}

/// Every server-named queue the client connection labelled `connection_name` owns.
pub fn callback_queues_of(connection_name: &str) -> Vec<String> {
    let connections = rabbitmqctl(None, &["list_connections", "pid", "client_properties"]);
    let pid = connections
        .lines()
        .find(|line| line.contains(connection_name))
        .and_then(|line| line.split_whitespace().next())
        .unwrap_or_else(|| panic!("no connection named {connection_name}: {connections}"))
        .to_owned();
    rabbitmqctl(None, &["list_queues", "name", "owner_pid"])
        .lines()
        .filter(|line| line.ends_with(&pid) && line.starts_with("amq.gen-"))
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// How many channels the client connection labelled `connection_name` has open.
pub fn channels_of(connection_name: &str) -> u32 {
    let connections = rabbitmqctl(None, &["list_connections", "client_properties", "channels"]);
    connections
        .lines()
        .find(|line| line.contains(connection_name))
        .and_then(|line| line.split_whitespace().last())
        .and_then(|channels| channels.parse().ok())
        .unwrap_or_else(|| panic!("no connection named {connection_name}: {connections}"))
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

/// Closes a raw connection, then drops its consumer. The other order kills the connection:
/// dropping a consumer cancels it, and amiquip 0.4 hands the cancel-ok to the cancelling thread
/// before it tells the consumer's receiver, so a receiver dropped in between makes the I/O
/// thread fail (`EventLoopClientDropped`), which `close` then returns.
pub fn close_raw(connection: Connection, consumer: Consumer<'_>) {
    connection
        .close()
        .expect("the raw connection closes cleanly");
    drop(consumer);
}

fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}***{}", &url[..scheme_end + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// Closes, from the broker's side, every connection whose client properties contain `needle`
/// (our connections carry their name in the `information` property). Returns how many.
pub fn close_broker_connections(needle: &str) -> usize {
    close_connections_on(None, needle)
}
