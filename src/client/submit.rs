//! Publishing with publisher confirms, for requests whose results outlive the sender.

use crate::driver::queue;
use crate::driver::{Channel, Confirm, Connection, Publish, Return};
use crate::error::{Error, Result, Stage};
use crossbeam_channel::Receiver;
use std::time::{Duration, Instant};

/// A channel in publisher-confirm mode: a publish counts once the broker has taken it.
pub(super) struct Submitter {
    channel: Channel,
    confirms: Receiver<Confirm>,
    returns: Receiver<Return>,
    published: u64,
}

impl Submitter {
    pub fn open(connection: &mut Connection) -> Result<Submitter> {
        let (channel, returns) = queue::open_publishing(connection)?;
        let confirms = channel
            .listen_for_publisher_confirms()
            .map_err(|e| Error::broker("listening for confirms", e))?;
        channel
            .enable_publisher_confirms()
            .map_err(|e| Error::broker("enabling publisher confirms", e))?;
        Ok(Submitter {
            channel,
            confirms,
            returns,
            published: 0,
        })
    }

    pub fn publish(
        &mut self,
        publish: Publish,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<()> {
        let queue = publish.routing_key.clone();
        // A return for an earlier request whose confirm wait gave up must not be taken for
        // this one's.
        while self.returns.try_recv().is_ok() {}
        self.channel
            .basic_publish("", publish)
            .map_err(|e| Error::ConnectionLost(e.to_string()))?;
        self.published += 1;
        loop {
            let confirm = self
                .confirms
                .recv_deadline(deadline)
                .map_err(|_| Error::Timeout {
                    queue: queue.clone(),
                    timeout,
                    stage: Stage::Confirm,
                })?;
            let (payload, acked) = match confirm {
                Confirm::Ack(payload) => (payload, true),
                Confirm::Nack(payload) => (payload, false),
            };
            let covers_ours = payload.delivery_tag == self.published
                || (payload.multiple && payload.delivery_tag >= self.published);
            if !covers_ours {
                continue;
            }
            // The broker sends a mandatory message's return before its confirm.
            if let Ok(returned) = self.returns.try_recv() {
                return Err(Error::NoServer {
                    queue,
                    reason: format!("{} {}", returned.reply_code, returned.reply_text),
                });
            }
            return if acked {
                Ok(())
            } else {
                Err(Error::Broker {
                    operation: format!("publishing to {queue:?}"),
                    reason: "the broker refused the message (nack)".to_owned(),
                    code: None,
                    source: None,
                })
            };
        }
    }
}
