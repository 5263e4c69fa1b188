//! A bare AMQP peer, for requests no well-behaved client sends.

use crate::broker::{close_raw, raw_connection};
use amiquip::{
    AmqpProperties, AmqpValue, Channel, Connection, ConsumerMessage, ConsumerOptions, FieldTable,
    Publish, Queue, QueueDeclareOptions,
};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A bare AMQP peer with an exclusive reply queue, for requests no well-behaved client sends.
pub struct RawPeer {
    connection: Option<Connection>,
    channel: Channel,
    pub reply_queue: String,
}

/// A server-named queue of this connection's alone.
fn declare_exclusive(channel: &Channel) -> Queue<'_> {
    let options = QueueDeclareOptions {
        exclusive: true,
        ..QueueDeclareOptions::default()
    };
    channel.queue_declare("", options).unwrap()
}

impl RawPeer {
    pub fn connect() -> RawPeer {
        let mut connection = raw_connection();
        let channel = connection.open_channel(None).unwrap();
        let reply_queue = declare_exclusive(&channel).name().to_owned();
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

/// How long a raw consumer waits for its one request.
const CONSUMER_WAIT: Duration = Duration::from_secs(10);

/// What a raw consumer saw of one request.
pub struct Seen {
    pub exchange: String,
    pub routing_key: String,
    pub properties: AmqpProperties,
}

/// A bare AMQP consumer of an exclusive queue bound to `amq.direct` under `routing_key`, which
/// answers one request with `reply` and reports what it saw on the wire. `ready` is signalled
/// once it consumes.
pub fn raw_consumer_via_amq_direct(routing_key: &str, reply: &'static [u8]) -> JoinHandle<Seen> {
    let routing_key = routing_key.to_owned();
    let (ready_sender, ready) = crossbeam_channel::bounded(1);
    let thread = std::thread::spawn(move || {
        let mut connection = raw_connection();
        let channel = connection.open_channel(None).unwrap();
        let queue = declare_exclusive(&channel);
        channel
            .queue_bind(queue.name(), "amq.direct", routing_key, FieldTable::new())
            .unwrap();
        let consumer = queue.consume(ConsumerOptions::default()).unwrap();
        ready_sender.send(()).unwrap();
        let seen = match consumer.receiver().recv_timeout(CONSUMER_WAIT) {
            Ok(ConsumerMessage::Delivery(delivery)) => {
                let properties = &delivery.properties;
                let answer = AmqpProperties::default()
                    .with_correlation_id(properties.correlation_id().clone().unwrap());
                channel
                    .basic_publish(
                        "",
                        Publish::with_properties(
                            reply,
                            properties.reply_to().clone().unwrap(),
                            answer,
                        ),
                    )
                    .unwrap();
                consumer.ack(delivery.clone()).unwrap();
                Seen {
                    exchange: delivery.exchange.clone(),
                    routing_key: delivery.routing_key.clone(),
                    properties: delivery.properties.clone(),
                }
            }
            other => panic!("no request reached the raw consumer: {other:?}"),
        };
        close_raw(connection, consumer);
        seen
    });
    ready
        .recv_timeout(CONSUMER_WAIT)
        .expect("the raw consumer consumes");
    thread
}

/// A text header of a message, if it has one.
pub fn text_header<'a>(properties: &'a AmqpProperties, name: &str) -> Option<&'a str> {
    match properties.headers().as_ref()?.get(name)? {
        AmqpValue::LongString(text) => Some(text),
        _ => None,
    }
}
