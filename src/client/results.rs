//! Asynchronous result pipelines: results that outlive the caller, read from a shared queue.
//!
//! [`RpcClient::submit`](crate::RpcClient::submit) publishes a request whose `reply_to` names a
//! durable result queue and returns at once; servers reply there as to anyone; any number of
//! [`ResultConsumer`]s read that queue, each result going to exactly one of them.

use crate::config::{ConnectionConfig, QueueType};
use crate::driver::amqp::{self, Link};
use crate::driver::keeper::Keeper;
use crate::driver::queue::{self, open_channel};
use crate::driver::watchdog::Cutter;
use crate::driver::{Connection, ConsumerMessage, ConsumerOptions, Delivery};
use crate::error::{Error, Result};
use crate::message::Response;
use crossbeam_channel::RecvTimeoutError;
use std::sync::Arc;
use std::time::Duration;

/// The keeper has nothing else to do while idle.
const KEEPER_IDLE: Duration = Duration::from_secs(3600);

/// One result from a result queue.
#[derive(Debug)]
pub struct ResultMessage {
    /// The `correlation_id` that [`submit`](crate::RpcClient::submit) returned for the request.
    pub correlation_id: Option<String>,
    /// The reply body, or [`Error::Remote`] for an error reply.
    pub outcome: Result<Vec<u8>>,
}

/// Reads results from a durable result queue, one at a time.
///
/// A result is acked once the caller has taken it: when it asks for the next one or closes the
/// consumer. A consumer that is dropped, or dies, before then leaves its result to another
/// consumer, so nothing is lost; [`close`](Self::close) after the last result has been handled,
/// or it is delivered again.
pub struct ResultConsumer {
    connection: Option<Connection>,
    cutter: Arc<Cutter>,
    close_timeout: Duration,
    /// Declared after the connection: dropped once it is closed.
    keeper: Keeper,
    taken: Option<Delivery>,
    failed: bool,
}

impl std::fmt::Debug for ResultConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResultConsumer")
            .field("holding_a_result", &self.taken.is_some())
            .finish_non_exhaustive()
    }
}

impl ResultConsumer {
    /// Connects with these settings (a URL, or a [`ConnectionConfig`], checked first) and
    /// starts reading `queue`, declaring it durable if it does not exist yet (so a consumer may
    /// start before any request is sent).
    pub fn connect(config: impl Into<ConnectionConfig>, queue: &str) -> Result<ResultConsumer> {
        let config = &config.into();
        config.validate()?;
        let Link {
            mut connection,
            cutter,
            address,
            ..
        } = amqp::open(config, "fib-rpc results", None, 0)?;
        let what = format!("declaring result queue {queue} and consuming it");
        let keeper = cutter.setup_within(config.connect_timeout, &address, &what, || {
            queue::declare_durable(&mut connection, queue, QueueType::Classic, None)?;
            let channel = open_channel(&mut connection)?;
            // One unacked result at a time: consumers sharing the queue split the results
            // fairly.
            channel
                .qos(0, 1, false)
                .map_err(|e| Error::broker("setting prefetch", e))?;
            Keeper::start(
                channel,
                queue.to_owned(),
                ConsumerOptions::default(),
                KEEPER_IDLE,
                Box::new(|| true),
                Box::new(|_| {}),
            )
        })?;
        Ok(ResultConsumer {
            connection: Some(connection),
            cutter,
            close_timeout: config.close_timeout,
            keeper,
            taken: None,
            failed: false,
        })
    }

    /// The next result, waiting at most `timeout`; `None` if none came. Acks the result taken
    /// before, if any.
    pub fn next_timeout(&mut self, timeout: Duration) -> Result<Option<ResultMessage>> {
        self.ack_taken()?;
        let message = match self.keeper.deliveries().recv_timeout(timeout) {
            Ok(message) => message,
            Err(RecvTimeoutError::Timeout) => return Ok(None),
            Err(RecvTimeoutError::Disconnected) => {
                return Err(Error::ConnectionLost("the connection closed".into()))
            }
        };
        match message {
            ConsumerMessage::Delivery(delivery) => {
                let result = ResultMessage {
                    correlation_id: delivery.properties.correlation_id().clone(),
                    outcome: super::router::decode(&delivery.properties, delivery.body.clone())
                        .map(Response::into_body),
                };
                self.taken = Some(delivery);
                Ok(Some(result))
            }
            ConsumerMessage::ServerClosedConnection(error)
            | ConsumerMessage::ServerClosedChannel(error) => {
                Err(Error::ConnectionLost(error.to_string()))
            }
            other => Err(Error::ConnectionLost(format!(
                "the result consumer ended: {other:?}"
            ))),
        }
    }

    /// Acks the last result taken and closes the connection, within the close timeout.
    pub fn close(mut self) -> Result<()> {
        self.ack_taken()?;
        match self.connection.take() {
            Some(connection) => self.close_bounded(connection),
            None => Ok(()),
        }
    }

    fn close_bounded(&self, connection: Connection) -> Result<()> {
        self.cutter
            .close_within(self.close_timeout, connection)
            .outcome
            .map_err(|e| Error::broker("closing the connection", e))
    }

    fn ack_taken(&mut self) -> Result<()> {
        match self.taken.take() {
            Some(delivery) => self.keeper.ack(delivery),
            None => Ok(()),
        }
    }
}

/// Blocks for each next result; ends after the first error.
impl Iterator for ResultConsumer {
    type Item = Result<ResultMessage>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        loop {
            match self.next_timeout(Duration::from_secs(3600)) {
                Ok(Some(result)) => return Some(Ok(result)),
                Ok(None) => continue,
                Err(error) => {
                    self.failed = true;
                    return Some(Err(error));
                }
            }
        }
    }
}

impl Drop for ResultConsumer {
    fn drop(&mut self) {
        // The last result stays unacked: it was not confirmed taken, so another consumer
        // gets it.
        if let Some(connection) = self.connection.take() {
            let _ = self.close_bounded(connection);
        }
    }
}
