//! When a request's caller stops waiting, in this host's time, whatever the two wall clocks say.
//!
//! A fib-rpc request carries its caller's deadline on the caller's wall clock
//! ([`DEADLINE_HEADER`](crate::protocol::DEADLINE_HEADER)) and its timeout as the broker's
//! relative `expiration`. The broker never delivers a request past its expiration, so at
//! delivery its caller still waits; what can expire here is only the time a request then sat in
//! this server's prefetch buffer, which the worker measures on its monotonic clock. A deadline
//! that, by this host's clock, passed before the request could have reached us, or lies further
//! ahead than the whole timeout, shows that the clocks disagree: the request is served, and the
//! disagreement is reported (once) rather than taken for an expiry.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

/// Clock differences below this are not told apart from the time a request takes to travel.
pub(crate) const TOLERANCE: Duration = Duration::from_secs(1);

/// What the worker knows about a request it has just taken.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Taken {
    /// The caller's deadline on the caller's clock, if the request says.
    pub deadline: Option<SystemTime>,
    /// The request's `expiration`: the caller's whole timeout, as the broker applies it.
    pub timeout: Option<Duration>,
    /// This host's wall clock as the worker took the request.
    pub now: SystemTime,
    /// The longest the request can have waited in this server's prefetch buffer.
    pub buffered_for: Duration,
}

/// What to do with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Serve it; its caller waits until `deadline` on this host's clock, if it said.
    Serve { deadline: Option<SystemTime> },
    /// Its caller has stopped waiting: ack it without computing it.
    Expired,
}

/// A clock difference a request revealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Skew {
    /// This host's clock is ahead of the caller's by at least this much.
    Ahead(Duration),
    /// This host's clock is behind the caller's by at least this much.
    Behind(Duration),
}

/// What a server learned about the clocks of its callers, shared by its workers.
#[derive(Debug, Default)]
pub(crate) struct Clocks {
    /// How far this host's clock is known to be ahead of some caller's, in milliseconds.
    ahead_millis: AtomicU64,
    warned_ahead: AtomicBool,
    warned_behind: AtomicBool,
}

impl Clocks {
    /// Judges a request, learning from it, and logs a clock difference the first time one
    /// shows in each direction.
    pub fn judge(&self, taken: Taken) -> Verdict {
        let known_ahead = Duration::from_millis(self.ahead_millis.load(Ordering::Relaxed));
        let (verdict, skew) = judge(taken, known_ahead);
        match skew {
            Some(Skew::Ahead(by)) => {
                let millis = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
                self.ahead_millis.fetch_max(millis, Ordering::Relaxed);
                if !self.warned_ahead.swap(true, Ordering::Relaxed) {
                    log::warn!(
                        "this host's clock is at least {:.1} s ahead of a caller's: its requests \
                         would look expired; they are served, their deadlines taken from the \
                         broker's expiration (synchronise the clocks, with NTP say)",
                        by.as_secs_f64()
                    );
                }
            }
            Some(Skew::Behind(by)) if !self.warned_behind.swap(true, Ordering::Relaxed) => {
                log::warn!(
                    "this host's clock is at least {:.1} s behind a caller's: its deadlines are \
                     taken from the broker's expiration instead (synchronise the clocks, with \
                     NTP say)",
                    by.as_secs_f64()
                );
            }
            Some(Skew::Behind(_)) | None => {}
        }
        verdict
    }
}

/// The verdict on a request, given that this host's clock is known to be at least
/// `known_ahead` ahead of some caller's, and the clock difference the request itself shows.
pub(crate) fn judge(taken: Taken, known_ahead: Duration) -> (Verdict, Option<Skew>) {
    let Some(deadline) = taken.deadline else {
        return (Verdict::Serve { deadline: None }, None);
    };
    let Some(timeout) = taken.timeout else {
        // No relative bound to check the clocks against (not a fib-rpc client's request):
        // the deadline is all there is.
        return match deadline < taken.now {
            true => (Verdict::Expired, None),
            false => (
                Verdict::Serve {
                    deadline: Some(deadline),
                },
                None,
            ),
        };
    };
    let latest = taken.now + timeout;
    match deadline.duration_since(taken.now) {
        Ok(remaining) if remaining > timeout + TOLERANCE => {
            let behind = deadline.duration_since(latest).unwrap_or_default();
            (
                Verdict::Serve {
                    deadline: Some(latest),
                },
                Some(Skew::Behind(behind)),
            )
        }
        Ok(_) => (
            Verdict::Serve {
                deadline: Some((deadline + known_ahead).min(latest)),
            },
            None,
        ),
        Err(past) => {
            let overdue = past.duration();
            if overdue > taken.buffered_for + TOLERANCE {
                // It expired before it could have reached us, yet the broker delivered it: the
                // clocks disagree, and the caller still waits.
                let ahead = overdue - taken.buffered_for;
                return (
                    Verdict::Serve {
                        deadline: Some(latest),
                    },
                    Some(Skew::Ahead(ahead)),
                );
            }
            if !known_ahead.is_zero() && taken.buffered_for < timeout {
                // It may have expired in our buffer, or be a caller whose clock is behind ours
                // by what we know: only a wait in our buffer of its whole timeout is certain.
                return (
                    Verdict::Serve {
                        deadline: Some(latest - taken.buffered_for),
                    },
                    None,
                );
            }
            (Verdict::Expired, None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn at(seconds: f64) -> SystemTime {
        let base = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        match seconds < 0.0 {
            true => base - Duration::from_secs_f64(-seconds),
            false => base + Duration::from_secs_f64(seconds),
        }
    }

    /// A request sent at `sent` on the caller's clock with `timeout` seconds, taken at `now` on
    /// ours after `buffered` seconds in the prefetch buffer.
    fn taken(sent: f64, timeout: f64, now: f64, buffered: f64) -> Taken {
        Taken {
            deadline: Some(at(sent + timeout)),
            timeout: Some(Duration::from_secs_f64(timeout)),
            now: at(now),
            buffered_for: Duration::from_secs_f64(buffered),
        }
    }

    #[test]
    fn agreeing_clocks_keep_the_callers_deadline() {
        let (verdict, skew) = judge(taken(0.0, 5.0, 0.2, 0.0), Duration::ZERO);
        assert_eq!(
            verdict,
            Verdict::Serve {
                deadline: Some(at(5.0))
            }
        );
        assert_eq!(skew, None);
    }

    #[test]
    fn a_request_that_expired_in_the_prefetch_buffer_is_skipped() {
        // Delivered with 1 s left, then 3 s behind a slow request in our buffer.
        let (verdict, skew) = judge(taken(0.0, 5.0, 7.0, 3.0), Duration::ZERO);
        assert_eq!((verdict, skew), (Verdict::Expired, None));
    }

    #[test]
    fn a_clock_ahead_of_the_callers_never_skips_a_waiting_caller() {
        // A lead shorter than the timeout looks like time in the broker's queue: not seen, and
        // harmless, since the request is not due yet on either clock.
        let (verdict, skew) = judge(taken(0.0, 5.0, 2.0, 0.0), Duration::ZERO);
        assert_eq!(
            (verdict, skew),
            (
                Verdict::Serve {
                    deadline: Some(at(5.0))
                },
                None
            )
        );
        for ahead in [20.0, 60.0, 3600.0] {
            // Taken at once (prefetch 1): its 5 s have barely begun on the caller's clock.
            let (verdict, skew) = judge(taken(0.0, 5.0, ahead + 0.01, 0.0), Duration::ZERO);
            assert_eq!(
                verdict,
                Verdict::Serve {
                    deadline: Some(at(ahead + 5.01))
                },
                "{ahead}"
            );
            let Some(Skew::Ahead(by)) = skew else {
                panic!("no skew seen at {ahead}")
            };
            assert!(
                by > Duration::from_secs_f64(ahead - 5.0 - 0.1),
                "{ahead}: {by:?}"
            );
        }
    }

    #[test]
    fn a_known_lead_spares_buffered_requests_not_yet_certainly_expired() {
        // 9.5 s in our buffer of a 30 s call whose deadline passed 10 s ago on our clock.
        let buffered = taken(0.0, 30.0, 40.0, 9.5);
        assert_eq!(judge(buffered, Duration::ZERO).0, Verdict::Expired);
        let known = Duration::from_secs(20);
        assert_eq!(
            judge(buffered, known).0,
            Verdict::Serve {
                deadline: Some(at(60.5))
            }
        );
        // A wait in our buffer of the whole timeout is an expiry on any clock.
        assert_eq!(
            judge(taken(0.0, 5.0, 26.0, 21.0), known).0,
            Verdict::Expired
        );
        // A request not due yet gets its deadline moved by the known lead, within its timeout.
        assert_eq!(
            judge(taken(0.0, 30.0, 20.5, 0.0), known).0,
            Verdict::Serve {
                deadline: Some(at(50.0))
            }
        );
    }

    #[test]
    fn a_clock_behind_the_callers_bounds_the_deadline_by_the_timeout() {
        let (verdict, skew) = judge(taken(0.0, 5.0, -20.0, 0.0), Duration::ZERO);
        assert_eq!(
            verdict,
            Verdict::Serve {
                deadline: Some(at(-15.0))
            }
        );
        assert_eq!(skew, Some(Skew::Behind(Duration::from_secs(20))));
    }

    #[test]
    fn without_an_expiration_the_deadline_is_all_there_is() {
        let mut foreign = taken(0.0, 5.0, 6.0, 0.0);
        foreign.timeout = None;
        assert_eq!(judge(foreign, Duration::ZERO).0, Verdict::Expired);
        let mut tutorial = foreign;
        tutorial.deadline = None;
        assert_eq!(
            judge(tutorial, Duration::ZERO).0,
            Verdict::Serve { deadline: None }
        );
    }

    #[test]
    fn the_first_skew_of_each_direction_is_learned() {
        let clocks = Clocks::default();
        assert!(matches!(
            clocks.judge(taken(0.0, 5.0, 20.0, 0.0)),
            Verdict::Serve { .. }
        ));
        assert!(clocks.ahead_millis.load(Ordering::Relaxed) >= 14_900);
        assert!(clocks.warned_ahead.load(Ordering::Relaxed));
        assert!(!clocks.warned_behind.load(Ordering::Relaxed));
    }
}
