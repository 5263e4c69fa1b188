//! A bare AMQP peer, for requests no well-behaved client sends.

use crate::broker::raw_connection;
use amiquip::{AmqpProperties, Channel, Connection, Publish, QueueDeclareOptions};
use std::time::{Duration, Instant};

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
