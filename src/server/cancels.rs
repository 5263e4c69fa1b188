//! Cancels from callers who gave up: the request being computed learns of it through its
//! token, and one not taken yet is remembered, so that it is skipped when a worker takes it.
//!
//! A request is named by its `correlation_id` alone: with direct reply-to the broker rewrites
//! `reply_to`, so the caller does not know the one the server sees.

use crate::handler::CancelToken;
use crate::util::lock;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a cancel of a request nobody took yet is kept: longer than callers wait.
const KEEP_EARLY: Duration = Duration::from_secs(600);

/// Early cancels kept at most; the oldest go first.
const KEEP_EARLY_MAX: usize = 4096;

#[derive(Debug, Default)]
pub(crate) struct Cancels {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    computing: HashMap<String, CancelToken>,
    early: HashMap<String, Instant>,
    early_order: VecDeque<(Instant, String)>,
}

impl Cancels {
    /// The caller of this request gave up.
    pub fn cancel(&self, key: String, now: Instant) {
        let mut inner = lock(&self.inner);
        if let Some(token) = inner.computing.get(&key) {
            token.cancel();
            return;
        }
        inner.early.insert(key.clone(), now);
        inner.early_order.push_back((now, key));
        while let Some((since, _)) = inner.early_order.front() {
            let fresh = now.duration_since(*since) <= KEEP_EARLY;
            if fresh && inner.early_order.len() <= KEEP_EARLY_MAX {
                break;
            }
            let (since, old) = inner.early_order.pop_front().expect("front exists");
            if inner.early.get(&old) == Some(&since) {
                inner.early.remove(&old);
            }
        }
    }

    /// A worker takes this request: its token, or `None` if its caller cancelled it already.
    pub fn begin(&self, key: &str) -> Option<CancelToken> {
        let mut inner = lock(&self.inner);
        // Early cancels are rare: an empty map is not worth hashing every request's id for.
        if !inner.early.is_empty() && inner.early.remove(key).is_some() {
            return None;
        }
        let token = CancelToken::default();
        inner.computing.insert(key.to_owned(), token.clone());
        Some(token)
    }

    /// The worker is done with this request.
    pub fn end(&self, key: &str) {
        lock(&self.inner).computing.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancel_reaches_the_request_being_computed() {
        let cancels = Cancels::default();
        let key = String::from("c-1");
        let token = cancels.begin(&key).unwrap();
        assert!(!token.is_cancelled());
        cancels.cancel(String::from("other"), Instant::now());
        assert!(!token.is_cancelled());
        cancels.cancel(key.clone(), Instant::now());
        assert!(token.is_cancelled());
        cancels.end(&key);
        assert!(
            cancels.begin(&key).is_some(),
            "a cancel while computing is not kept for later"
        );
    }

    #[test]
    fn a_request_cancelled_before_it_was_taken_is_skipped_once() {
        let cancels = Cancels::default();
        let key = String::from("c-1");
        cancels.cancel(key.clone(), Instant::now());
        assert!(cancels.begin(&key).is_none());
        assert!(cancels.begin(&key).is_some());
    }

    #[test]
    fn early_cancels_expire_by_age_and_by_count() {
        let cancels = Cancels::default();
        let start = Instant::now();
        let old = String::from("old");
        cancels.cancel(old.clone(), start);
        cancels.cancel(
            String::from("young"),
            start + KEEP_EARLY + Duration::from_secs(1),
        );
        assert!(cancels.begin(&old).is_some(), "expired");
        for i in 0..KEEP_EARLY_MAX {
            cancels.cancel(i.to_string(), start + KEEP_EARLY);
        }
        assert!(cancels.begin("young").is_some(), "pushed out");
        assert!(lock(&cancels.inner).early.len() <= KEEP_EARLY_MAX);
    }
}
