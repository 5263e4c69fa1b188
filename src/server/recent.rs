//! The requests a server is computing, or has just answered, so that a redelivered copy of one
//! (the broker closed the worker's channel, and requeued what it held) is not computed again.
//!
//! Only a copy delivered on the same connection counts as a duplicate: after a connection
//! loss the reply may never have left, so the request is computed again, as at-least-once
//! delivery demands; unless its reply was kept for the new connection
//! ([`outbox`](crate::server::outbox)), which remembers it here once it went out.

use crate::util::lock;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long an answer whose channel then died is remembered: its copy comes back at once if a
/// worker is free, else as soon as one is.
const RETAIN: Duration = Duration::from_secs(600);

/// Answers remembered that way at most; the oldest go first.
const RETAIN_MAX: usize = 4096;

/// A request as its caller names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    reply_to: String,
    correlation_id: String,
}

impl Key {
    pub fn new(reply_to: &str, correlation_id: &str) -> Key {
        Key {
            reply_to: reply_to.to_owned(),
            correlation_id: correlation_id.to_owned(),
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Recent {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Each request's connection generation.
    known: HashMap<Key, u64>,
    /// Answers kept after their channel died, oldest first.
    retained: VecDeque<(Instant, Key, u64)>,
}

impl Recent {
    /// A worker of connection `generation` begins (or has answered) this request.
    pub fn hold(&self, key: &Key, generation: u64) {
        self.lock().known.insert(key.clone(), generation);
    }

    /// True if this request is being computed, or was just answered, on connection `generation`.
    pub fn holds(&self, key: &Key, generation: u64) -> bool {
        self.lock().known.get(key) == Some(&generation)
    }

    /// The request's answer is known to have reached the broker, or its copy to be computed
    /// again: nothing to remember.
    pub fn forget(&self, key: &Key) {
        self.lock().known.remove(key);
    }

    /// The request's channel died after its answer was sent (or the answer went out on another
    /// channel): remember it for a while, so that its redelivered copy is acked unanswered.
    pub fn retain(&self, key: &Key, generation: u64, now: Instant) {
        let mut inner = self.lock();
        inner.known.insert(key.clone(), generation);
        inner.retained.push_back((now, key.clone(), generation));
        while let Some((since, _, _)) = inner.retained.front() {
            if now.duration_since(*since) <= RETAIN && inner.retained.len() <= RETAIN_MAX {
                break;
            }
            let (_, old, generation) = inner.retained.pop_front().expect("front exists");
            if inner.known.get(&old) == Some(&generation) {
                inner.known.remove(&old);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Plain inserts and removals: a panic cannot leave it half-written.
        lock(&self.inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_counts_only_on_the_same_connection() {
        let recent = Recent::default();
        let key = Key::new("amq.gen-1", "c-1");
        assert!(!recent.holds(&key, 1));
        recent.hold(&key, 1);
        assert!(recent.holds(&key, 1));
        assert!(
            !recent.holds(&key, 2),
            "after a reconnection it is computed again"
        );
        recent.forget(&key);
        assert!(!recent.holds(&key, 1));
    }

    #[test]
    fn retained_answers_expire_by_age_and_by_count() {
        let recent = Recent::default();
        let start = Instant::now();
        let old = Key::new("q", "old");
        recent.retain(&old, 1, start);
        let young = Key::new("q", "young");
        recent.retain(&young, 1, start + RETAIN + Duration::from_secs(1));
        assert!(!recent.holds(&old, 1));
        assert!(recent.holds(&young, 1));
        for i in 0..RETAIN_MAX {
            recent.retain(&Key::new("q", &i.to_string()), 1, start + RETAIN);
        }
        assert!(!recent.holds(&young, 1));
        assert_eq!(recent.lock().retained.len(), RETAIN_MAX);
    }

    #[test]
    fn an_expired_retention_leaves_a_newer_hold_alone() {
        let recent = Recent::default();
        let start = Instant::now();
        let key = Key::new("q", "c");
        recent.retain(&key, 1, start);
        recent.hold(&key, 2);
        recent.retain(&Key::new("q", "later"), 2, start + RETAIN * 2);
        assert!(recent.holds(&key, 2));
    }
}
