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
