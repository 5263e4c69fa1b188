//! Replies computed on a connection that was lost before they could go out.
//!
//! A worker whose channel the broker closed (its consumer timeout, say) sends its reply on a
//! new channel; by then the copy the broker requeued may have been acked unanswered by another
//! worker, so that reply is the only thing left of the request. If the connection dies first,
//! the reply waits here, and the next connection publishes it before its workers consume, and
//! remembers it in [`Recent`]: a copy the broker requeued is acked there, not computed again.

use super::recent::Recent;
use super::reply::Reply;
use super::stats::Counters;
use crate::driver::{Channel, DriverError};
use crate::util::lock;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Instant, SystemTime};

/// Replies kept at most; the oldest go first.
const KEPT_MAX: usize = 1024;

#[derive(Default)]
pub(crate) struct Outbox {
    replies: Mutex<VecDeque<Box<Reply>>>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("replies", &lock(&self.replies).len())
            .finish()
    }
}

impl Outbox {
    /// Keeps `reply` for the next connection, unless it was carried over once already: what it
    /// is addressed to may be what ended both connections.
    pub fn keep(&self, mut reply: Box<Reply>) {
        if std::mem::replace(&mut reply.carried, true) {
            log::warn!(
                "the reply to request {} could not go out on two connections in a row: dropped",
                reply.request_id()
            );
            return;
        }
        log::warn!(
            "the connection was lost before the reply to request {} went out: it goes out on \
             the next connection",
            reply.request_id()
        );
        let mut replies = lock(&self.replies);
        if replies.len() == KEPT_MAX {
            replies.pop_front();
        }
        replies.push_back(reply);
    }

    /// Publishes on `channel`, of connection `generation`, every kept reply whose caller may
    /// still wait; a failure leaves the rest kept.
    pub fn deliver(
        &self,
        channel: &Channel,
        recent: &Recent,
        generation: u64,
        counters: &Counters,
    ) -> Result<(), DriverError> {
        let mut due = self.take_due(SystemTime::now());
        while let Some(mut reply) = due.pop_front() {
            if let Some(key) = &reply.key {
                recent.retain(key, generation, Instant::now());
            }
            if let Err(error) = reply.publish(channel) {
                due.push_front(reply);
                let mut replies = lock(&self.replies);
                due.append(&mut replies);
                *replies = due;
                return Err(error);
            }
            reply.count_sent(counters);
            log::info!(
                "the reply to request {}, computed before the connection was lost, went out on \
                 the new connection",
                reply.request_id()
            );
        }
        Ok(())
    }

    /// Takes the kept replies whose callers may still wait at `now`, oldest first; those past
    /// their caller's deadline are dropped.
    fn take_due(&self, now: SystemTime) -> VecDeque<Box<Reply>> {
        let mut replies = std::mem::take(&mut *lock(&self.replies));
        replies.retain(|reply| {
            let late = reply.deadline.is_some_and(|due| due < now);
            if late {
                log::info!(
                    "the reply to request {} kept from a lost connection is past its caller's \
                     deadline: dropped",
                    reply.request_id()
                );
            }
            !late
        });
        replies
    }

    pub fn is_empty(&self) -> bool {
        lock(&self.replies).is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::reply::sample;

    fn kept(outbox: &Outbox) -> Vec<String> {
        lock(&outbox.replies)
            .iter()
            .map(|reply| reply.request_id())
            .collect()
    }

    #[test]
    fn a_kept_reply_past_its_callers_deadline_is_dropped() {
        let outbox = Outbox::default();
        let now = SystemTime::now();
        for (id, deadline) in [
            ("late", Some(now - std::time::Duration::from_millis(1))),
            ("due", Some(now + std::time::Duration::from_secs(5))),
            ("unbounded", None),
        ] {
            let mut reply = Box::new(sample(id));
            reply.deadline = deadline;
            outbox.keep(reply);
        }
        let due: Vec<_> = outbox
            .take_due(now)
            .iter()
            .map(|r| r.request_id())
            .collect();
        assert_eq!(due, ["\"due\"", "\"unbounded\""]);
        assert!(outbox.is_empty(), "taken");
    }

    #[test]
    fn a_reply_is_carried_over_once_and_the_oldest_go_first() {
        let outbox = Outbox::default();
        let mut twice = Box::new(sample("twice"));
        twice.carried = true;
        outbox.keep(twice);
        assert!(outbox.is_empty(), "a reply carried once already is dropped");
        for i in 0..=KEPT_MAX {
            outbox.keep(Box::new(sample(&i.to_string())));
        }
        let ids = kept(&outbox);
        assert_eq!(ids.len(), KEPT_MAX);
        assert_eq!(ids.first().map(String::as_str), Some("\"1\""));
        assert!(lock(&outbox.replies).iter().all(|reply| reply.carried));
    }
}
