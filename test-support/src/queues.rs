//! Queues of a test's own, deleted when the test is done.

use crate::broker::{amqp_url, raw_connection};
use amiquip::{AmqpValue, Connection, FieldTable, QueueDeclareOptions, QueueDeleteOptions};
use fib_rpc::QueueType;

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
