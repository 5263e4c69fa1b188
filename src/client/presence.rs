//! Whether a request queue exists and has a consumer: the broker's last answers, and how long
//! each is trusted.

use crate::error::{Error, Result};
use crate::util::lock;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a queue seen with consumers is trusted to still have them.
const CONSUMER_CHECK_TTL: Duration = Duration::from_secs(1);

/// How long a queue that had a consumer when last asked is given for one to come back before a
/// call reports [`Error::NoServer`]: a server failing over to another node, or reconnecting
/// after its connection was closed, consumes again within tens of milliseconds.
const SERVER_RETURN_GRACE: Duration = Duration::from_millis(500);

/// How often the consumer count is asked for within [`SERVER_RETURN_GRACE`].
const SERVER_RETURN_POLL: Duration = Duration::from_millis(25);

/// How often a client that may wait for a server asks whether the request queue exists yet.
const QUEUE_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// The broker's answers about request queues on one connection.
#[derive(Default)]
pub(super) struct Presence {
    /// Queues seen with consumers, until when that answer is trusted.
    served_until: Mutex<HashMap<String, Instant>>,
    /// Queues seen to exist, until when that answer is trusted.
    declared_until: Mutex<HashMap<String, Instant>>,
}

impl Presence {
    /// Fails with [`Error::NoServer`] if `queue` is missing or has no consumer; asks the
    /// broker (`consumers`, bounded by `deadline`) only when the last answer is too old, and if
    /// the last answer found a consumer, keeps asking for [`SERVER_RETURN_GRACE`] before giving
    /// up.
    pub fn ensure_consumer(
        &self,
        queue: &str,
        deadline: Instant,
        mut consumers: impl FnMut() -> Result<u32>,
    ) -> Result<()> {
        let now = Instant::now();
        if lock(&self.served_until)
            .get(queue)
            .is_some_and(|until| *until > now)
        {
            return Ok(());
        }
        let was_served = lock(&self.served_until).contains_key(queue);
        let grace_until = deadline.min(now + SERVER_RETURN_GRACE);
        loop {
            let consumers = consumers()?;
            let asked_at = Instant::now();
            if consumers > 0 {
                lock(&self.served_until).insert(queue.to_owned(), asked_at + CONSUMER_CHECK_TTL);
                return Ok(());
            }
            if !was_served || asked_at >= grace_until {
                lock(&self.served_until).remove(queue);
                return Err(Error::NoServer {
                    queue: queue.to_owned(),
                    reason: "the queue exists but no server is consuming it".to_owned(),
                });
            }
            std::thread::sleep(SERVER_RETURN_POLL.min(grace_until - asked_at));
        }
    }

    /// Waits until `queue` exists (a server declares it), asking the broker (`consumers`, which
    /// fails with [`Error::NoServer`] for a missing queue) every [`QUEUE_POLL_INTERVAL`]; fails
    /// with [`Error::NoServer`] if it is not there in time. A queue that is there at the first
    /// ask is used as it is, idle or not: requests wait in it for a server. A queue that appears
    /// while waited for is used once it has a consumer: a quorum queue is listed (and routes
    /// requests) before its Raft members run, and a request published in between is lost
    /// without a word; a consumer is registered through those members. Nothing is given up by
    /// waiting, since a request nobody takes expires with its call. The client never declares
    /// a request queue itself: its settings are the server's to choose.
    pub fn await_queue(
        &self,
        queue: &str,
        deadline: Instant,
        mut consumers: impl FnMut() -> Result<u32>,
    ) -> Result<()> {
        let mut waited = false;
        loop {
            let now = Instant::now();
            if lock(&self.declared_until)
                .get(queue)
                .is_some_and(|until| *until > now)
            {
                return Ok(());
            }
            let reason = match consumers() {
                Ok(consumers) if consumers > 0 || !waited => {
                    lock(&self.declared_until).insert(queue.to_owned(), now + CONSUMER_CHECK_TTL);
                    return Ok(());
                }
                Ok(_) => "the queue was declared but no server consumed it in time",
                Err(error) if error.is_no_server() => {
                    if !waited {
                        log::info!("waiting for a server to declare queue {queue}");
                        waited = true;
                    }
                    "no server declared the queue in time"
                }
                Err(error) => return Err(error),
            };
            if Instant::now() + QUEUE_POLL_INTERVAL >= deadline {
                return Err(Error::NoServer {
                    queue: queue.to_owned(),
                    reason: reason.to_owned(),
                });
            }
            std::thread::sleep(QUEUE_POLL_INTERVAL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn later() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    fn missing() -> Result<u32> {
        Err(Error::NoServer {
            queue: "q".into(),
            reason: "no queue".into(),
        })
    }

    #[test]
    fn a_consumer_seen_is_trusted_for_a_while() {
        let presence = Presence::default();
        let asked = Cell::new(0);
        let count = || {
            asked.set(asked.get() + 1);
            Ok(1)
        };
        presence.ensure_consumer("q", later(), count).unwrap();
        presence.ensure_consumer("q", later(), count).unwrap();
        assert_eq!(asked.get(), 1);
    }

    #[test]
    fn a_queue_never_served_fails_at_once() {
        let presence = Presence::default();
        let asked = Cell::new(0);
        let error = presence
            .ensure_consumer("q", later(), || {
                asked.set(asked.get() + 1);
                Ok(0)
            })
            .unwrap_err();
        assert!(error.is_no_server(), "{error}");
        assert_eq!(asked.get(), 1);
    }

    #[test]
    fn a_server_that_was_there_is_given_time_to_return() {
        let presence = Presence::default();
        presence.ensure_consumer("q", later(), || Ok(1)).unwrap();
        lock(&presence.served_until).insert("q".into(), Instant::now());
        let answers = Cell::new(0);
        presence
            .ensure_consumer("q", later(), || {
                answers.set(answers.get() + 1);
                Ok(u32::from(answers.get() >= 3))
            })
            .unwrap();
        assert_eq!(answers.get(), 3);
    }

    #[test]
    fn a_queue_that_never_appears_is_waited_for_until_the_deadline() {
        let presence = Presence::default();
        let deadline = Instant::now() + Duration::from_millis(250);
        let error = presence.await_queue("q", deadline, missing).unwrap_err();
        assert!(error.is_no_server(), "{error}");
        assert!(error.to_string().contains("no server declared"), "{error}");
        assert!(Instant::now() < deadline + QUEUE_POLL_INTERVAL);
    }

    #[test]
    fn a_queue_that_exists_is_remembered_idle_or_not() {
        let presence = Presence::default();
        let asked = Cell::new(0);
        let count = || {
            asked.set(asked.get() + 1);
            Ok(0)
        };
        presence.await_queue("q", later(), count).unwrap();
        presence.await_queue("q", later(), count).unwrap();
        assert_eq!(asked.get(), 1);
    }

    #[test]
    fn a_queue_that_appears_while_waited_for_is_used_once_it_has_a_consumer() {
        let presence = Presence::default();
        let answers = Cell::new(0);
        presence
            .await_queue("q", later(), || {
                answers.set(answers.get() + 1);
                match answers.get() {
                    1 => missing(),
                    2 | 3 => Ok(0),
                    _ => Ok(1),
                }
            })
            .unwrap();
        assert_eq!(answers.get(), 4);
    }

    #[test]
    fn a_queue_that_appears_but_is_never_consumed_fails_at_the_deadline() {
        let presence = Presence::default();
        let deadline = Instant::now() + Duration::from_millis(350);
        let answers = Cell::new(0);
        let error = presence
            .await_queue("q", deadline, || {
                answers.set(answers.get() + 1);
                if answers.get() == 1 {
                    missing()
                } else {
                    Ok(0)
                }
            })
            .unwrap_err();
        assert!(error.to_string().contains("no server consumed"), "{error}");
        assert!(answers.get() >= 2);
    }
}
