//! What a server did and is doing, for its owner to read or export (`fib-server` serves them
//! as Prometheus metrics).

use crate::util::lock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Upper bounds, in seconds, of the handler duration histogram: sub-millisecond to seconds.
const DURATION_BOUNDS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// What a server did with the requests it received since it started, and how it is now.
#[derive(Debug, Clone, PartialEq, Default)]
#[non_exhaustive]
pub struct ServerStats {
    /// Requests answered with a success reply.
    pub answered: u64,
    /// Requests answered with an error reply (bad input, handler error or panic).
    pub error_replies: u64,
    /// Requests skipped because the caller's deadline had passed.
    pub expired: u64,
    /// Requests dropped because they had no `reply_to`.
    pub unanswerable: u64,
    /// Requests whose caller gave up (cancelled it, timed out, dropped the call) before they
    /// were answered: skipped if still queued, not answered if computing.
    pub cancelled: u64,
    /// Requests taken off the queue and not yet acked.
    pub in_hand: u64,
    /// Connections made again after one was lost.
    pub reconnects: u64,
    /// True while every worker consumes the request queue.
    pub consuming: bool,
    /// Time since the last connection was made (and the workers consumed); `None` before.
    pub since_connected: Option<Duration>,
    /// How long the handler took, for every request it saw.
    pub handler_durations: Durations,
    /// Requests still in hand when a stop's drain timeout ran out: they went back to the queue
    /// for another server. Zero if the drain completed.
    pub left_in_hand: u64,
    /// Redelivered copies of requests this server was computing or had just answered (the
    /// broker requeued them when it closed a worker's channel): acked, not computed again.
    pub duplicates: u64,
    /// Worker channels the broker closed (a request held past its consumer timeout, a reply
    /// over its size limit), each replaced by a new channel on the same connection.
    pub channel_losses: u64,
    /// Cancels heard from callers who gave up, whether or not this server had their request.
    pub cancels_received: u64,
    /// While the broker blocks this server's connection (a memory or disk alarm), its reason.
    pub blocked: Option<String>,
}

impl ServerStats {
    /// Every request taken off the queue and acked.
    pub fn total(&self) -> u64 {
        self.answered
            + self.error_replies
            + self.expired
            + self.unanswerable
            + self.duplicates
            + self.cancelled
    }
}

/// A histogram of durations.
#[derive(Debug, Clone, PartialEq, Default)]
#[non_exhaustive]
pub struct Durations {
    /// `(upper bound in seconds, how many fell above the previous bound and at most this one)`;
    /// the last bound is infinite.
    pub buckets: Vec<(f64, u64)>,
    /// Every duration, added up, in seconds.
    pub sum_seconds: f64,
    /// How many durations.
    pub count: u64,
}

/// The live figures behind [`ServerStats`], updated by the workers and the supervisor.
pub(crate) struct Counters {
    pub answered: AtomicU64,
    pub error_replies: AtomicU64,
    pub expired: AtomicU64,
    pub unanswerable: AtomicU64,
    pub cancelled: AtomicU64,
    pub in_hand: AtomicU64,
    pub reconnects: AtomicU64,
    pub consuming: AtomicBool,
    pub left_in_hand: AtomicU64,
    pub duplicates: AtomicU64,
    pub channel_losses: AtomicU64,
    pub cancels_received: AtomicU64,
    blocked: Mutex<Option<String>>,
    connected_at: Mutex<Option<Instant>>,
    durations: [AtomicU64; DURATION_BOUNDS.len() + 1],
    duration_nanos: AtomicU64,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            answered: AtomicU64::new(0),
            error_replies: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            unanswerable: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            in_hand: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            consuming: AtomicBool::new(false),
            left_in_hand: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            channel_losses: AtomicU64::new(0),
            cancels_received: AtomicU64::new(0),
            blocked: Mutex::new(None),
            connected_at: Mutex::new(None),
            durations: std::array::from_fn(|_| AtomicU64::new(0)),
            duration_nanos: AtomicU64::new(0),
        }
    }
}

impl Counters {
    pub fn snapshot(&self) -> ServerStats {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let bounds = DURATION_BOUNDS.iter().copied().chain([f64::INFINITY]);
        let buckets: Vec<(f64, u64)> = bounds.zip(self.durations.iter().map(load)).collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        ServerStats {
            answered: load(&self.answered),
            error_replies: load(&self.error_replies),
            expired: load(&self.expired),
            unanswerable: load(&self.unanswerable),
            cancelled: load(&self.cancelled),
            in_hand: load(&self.in_hand),
            reconnects: load(&self.reconnects),
            consuming: self.consuming.load(Ordering::Relaxed),
            since_connected: self.connected_at().map(|at| at.elapsed()),
            handler_durations: Durations {
                buckets,
                sum_seconds: Duration::from_nanos(load(&self.duration_nanos)).as_secs_f64(),
                count,
            },
            left_in_hand: load(&self.left_in_hand),
            duplicates: load(&self.duplicates),
            channel_losses: load(&self.channel_losses),
            cancels_received: load(&self.cancels_received),
            blocked: lock(&self.blocked).clone(),
        }
    }

    /// The broker blocks the connection for `reason`, or (`None`) no longer does.
    pub fn set_blocked(&self, reason: Option<String>) {
        *lock(&self.blocked) = reason;
    }

    /// The workers consume on a fresh connection.
    pub fn connected(&self, again: bool) {
        *self.connected_at_lock() = Some(Instant::now());
        self.consuming.store(true, Ordering::Relaxed);
        if again {
            count(&self.reconnects);
        }
    }

    pub fn observe(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        let bucket = DURATION_BOUNDS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(DURATION_BOUNDS.len());
        count(&self.durations[bucket]);
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.duration_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    fn connected_at(&self) -> Option<Instant> {
        *self.connected_at_lock()
    }

    fn connected_at_lock(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        lock(&self.connected_at)
    }
}

pub(crate) fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_land_in_their_buckets() {
        let counters = Counters::default();
        counters.observe(Duration::from_micros(50));
        counters.observe(Duration::from_millis(3));
        counters.observe(Duration::from_secs(60));
        let durations = counters.snapshot().handler_durations;
        assert_eq!(durations.count, 3);
        assert_eq!(durations.buckets[0], (0.0001, 1));
        assert_eq!(durations.buckets[5], (0.005, 1));
        assert_eq!(*durations.buckets.last().unwrap(), (f64::INFINITY, 1));
        assert!((durations.sum_seconds - 60.00305).abs() < 1e-9);
    }

    #[test]
    fn connections_and_reconnections_are_counted() {
        let counters = Counters::default();
        assert_eq!(counters.snapshot().since_connected, None);
        counters.connected(false);
        counters.connected(true);
        let stats = counters.snapshot();
        assert!(stats.consuming);
        assert_eq!(stats.reconnects, 1);
        assert!(stats.since_connected.is_some());
    }
}
