//! Correlation bookkeeping: which caller waits for which `correlation_id`.

use crate::error::{Error, Result};
use crate::message::{Progress, Response};
use crate::util::lock;
use crossbeam_channel::{Receiver, Sender};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// What a waiting caller receives: the reply body, or why there will be none.
pub(crate) type Outcome = Result<Response>;

/// Calls in flight on one connection, keyed by correlation id.
///
/// Every entry is removed exactly once: by the reply that resolves it, by the caller that stops
/// waiting, or by [`fail_all`](Self::fail_all) when the connection dies. So the map never leaks,
/// and a second reply for the same id (a redelivered request answered twice) finds nothing.
///
/// A call's deadline is final: a reply read after it is discarded as late, even if the caller
/// has not yet collected its timeout, so the answer never depends on when the caller looks.
#[derive(Default)]
pub(crate) struct Pending {
    waiting: Mutex<HashMap<String, Waiter>>,
}

struct Waiter {
    reply: Sender<Outcome>,
    deadline: Instant,
    /// Where progress messages go, if the caller asked for them.
    progress: Option<Sender<Progress>>,
}

impl Pending {
    /// Starts waiting for `id` until `deadline`. Register before publishing, or a fast reply
    /// finds no one.
    pub fn register(&self, id: String, deadline: Instant) -> Receiver<Outcome> {
        let (reply, receiver) = crossbeam_channel::bounded(1);
        let waiter = Waiter {
            reply,
            deadline,
            progress: None,
        };
        self.lock().insert(id, waiter);
        receiver
    }

    /// Also takes the progress messages of `id`, registered already.
    pub fn register_progress(&self, id: &str) -> Receiver<Progress> {
        let (sender, receiver) = crossbeam_channel::unbounded();
        if let Some(waiter) = self.lock().get_mut(id) {
            waiter.progress = Some(sender);
        }
        receiver
    }

    /// Hands a progress message to the caller waiting for `id`, if it asked for progress;
    /// false if nobody takes it.
    pub fn progress(&self, id: &str, progress: Progress) -> bool {
        let waiting = self.lock();
        match waiting.get(id).and_then(|waiter| waiter.progress.as_ref()) {
            Some(sender) => sender.send(progress).is_ok(),
            None => false,
        }
    }

    /// Hands `outcome` to the caller waiting for `id`; false if no one is (late, duplicate or
    /// foreign reply), and then the outcome is dropped.
    pub fn resolve(&self, id: &str, outcome: Outcome) -> bool {
        self.resolve_at(id, outcome, Instant::now())
    }

    fn resolve_at(&self, id: &str, outcome: Outcome, now: Instant) -> bool {
        match self.lock().remove(id) {
            // The caller may have given up between our remove and this send; that is fine.
            Some(waiter) if now <= waiter.deadline => waiter.reply.send(outcome).is_ok(),
            Some(_) | None => false,
        }
    }

    /// Stops waiting for `id` (the caller timed out or went away).
    pub fn forget(&self, id: &str) {
        self.lock().remove(id);
    }

    /// Fails every waiting call with a connection-lost error.
    pub fn fail_all(&self, reason: &str) {
        let drained: Vec<_> = self.lock().drain().collect();
        for (_, waiter) in drained {
            let _ = waiter
                .reply
                .send(Err(Error::ConnectionLost(reason.to_owned())));
        }
    }

    /// Number of calls waiting.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Waiter>> {
        // A panic while holding this lock cannot leave the map inconsistent (single inserts and
        // removes), so a poisoned lock is still usable.
        lock(&self.waiting)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn later() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    #[test]
    fn a_reply_reaches_its_own_caller_only() {
        let pending = Pending::default();
        let first = pending.register("a".into(), later());
        let second = pending.register("b".into(), later());
        assert!(pending.resolve("b", Ok(Response::new("2"))));
        assert!(pending.resolve("a", Ok(Response::new("1"))));
        assert_eq!(first.recv().unwrap().unwrap().body(), b"1");
        assert_eq!(second.recv().unwrap().unwrap().body(), b"2");
        assert_eq!(pending.len(), 0);
    }

    #[test]
    fn unknown_and_duplicate_replies_are_refused() {
        let pending = Pending::default();
        let waiter = pending.register("a".into(), later());
        assert!(!pending.resolve("stranger", Ok(Response::new("9"))));
        assert!(pending.resolve("a", Ok(Response::new("1"))));
        assert!(!pending.resolve("a", Ok(Response::new("1 again"))));
        assert_eq!(waiter.recv().unwrap().unwrap().body(), b"1");
        assert!(waiter.try_recv().is_err(), "answered twice");
    }

    #[test]
    fn forgotten_calls_leave_nothing_behind_and_ignore_late_replies() {
        let pending = Pending::default();
        let waiter = pending.register("late".into(), later());
        pending.forget("late");
        assert_eq!(pending.len(), 0);
        assert!(!pending.resolve("late", Ok(Response::new("1"))));
        assert!(waiter.try_recv().is_err());
    }

    #[test]
    fn a_reply_for_a_caller_that_went_away_is_not_counted_as_delivered() {
        let pending = Pending::default();
        drop(pending.register("gone".into(), later()));
        assert!(!pending.resolve("gone", Ok(Response::new("1"))));
        assert_eq!(pending.len(), 0);
    }

    #[test]
    fn fail_all_fails_every_waiter_with_the_reason() {
        let pending = Pending::default();
        let waiters: Vec<_> = (0..3)
            .map(|i| pending.register(i.to_string(), later()))
            .collect();
        pending.fail_all("broker restarted");
        assert_eq!(pending.len(), 0);
        for waiter in waiters {
            let error = waiter.recv().unwrap().unwrap_err();
            assert!(error.is_connection());
            assert!(error.to_string().contains("broker restarted"));
        }
    }

    #[test]
    fn a_reply_read_after_the_deadline_is_late_and_dropped() {
        let pending = Pending::default();
        let deadline = Instant::now();
        let waiter = pending.register("slow".into(), deadline);
        let late = deadline + Duration::from_millis(1);
        assert!(!pending.resolve_at("slow", Ok(Response::new("1")), late));
        assert!(waiter.try_recv().is_err());
        assert_eq!(pending.len(), 0);
        let on_time = pending.register("quick".into(), deadline);
        assert!(pending.resolve_at("quick", Ok(Response::new("2")), deadline));
        assert_eq!(on_time.recv().unwrap().unwrap().body(), b"2");
    }
}
