//! Deadlines from caller-given timeouts, which may be anything up to `Duration::MAX`.

use std::time::{Duration, Instant, SystemTime};

/// Longer than any caller waits, short enough that clock arithmetic cannot overflow.
const NEVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// When a wait of `timeout` that starts at `start` ends; a timeout too large to add ends
/// a century later.
pub(crate) fn after(start: Instant, timeout: Duration) -> Instant {
    start + timeout.min(NEVER)
}

/// When a wait of `timeout` that starts now ends.
pub(crate) fn from_now(timeout: Duration) -> Instant {
    after(Instant::now(), timeout)
}

/// The wall-clock time `timeout` after `now`, for deadlines that cross process boundaries.
pub(crate) fn wall_clock_after(now: SystemTime, timeout: Duration) -> SystemTime {
    now + timeout.min(NEVER)
}

/// When, on this host's monotonic clock, its wall clock reaches `due` (now, if it has).
pub(crate) fn instant_of(due: SystemTime) -> Instant {
    let (now, wall) = (Instant::now(), SystemTime::now());
    after(now, due.duration_since(wall).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_timeouts_are_added_as_they_are() {
        let start = Instant::now();
        assert_eq!(
            after(start, Duration::from_millis(1500)) - start,
            Duration::from_millis(1500)
        );
    }

    #[test]
    fn a_wall_clock_deadline_becomes_the_same_wait_on_the_monotonic_clock() {
        let before = Instant::now();
        let due = instant_of(SystemTime::now() + Duration::from_secs(3));
        let waits = due - before;
        assert!(waits < Duration::from_millis(3100), "{waits:?}");
        assert!(waits > Duration::from_millis(2900), "{waits:?}");
        assert!(instant_of(SystemTime::UNIX_EPOCH) <= Instant::now());
    }

    #[test]
    fn huge_timeouts_do_not_overflow() {
        let start = Instant::now();
        assert_eq!(after(start, Duration::MAX) - start, NEVER);
        let now = SystemTime::now();
        assert_eq!(
            wall_clock_after(now, Duration::MAX)
                .duration_since(now)
                .unwrap(),
            NEVER
        );
    }
}
