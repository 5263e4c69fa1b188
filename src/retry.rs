//! When a failed call is made again: [`RetryPolicy`].

use crate::error::{Error, ErrorKind, Result};
use std::time::{Duration, Instant};

/// Which failed calls a client makes again, how often and how soon; off unless set
/// ([`ClientConfig::retry`](crate::ClientConfig::retry) for every call of a client,
/// [`Call::retry`](crate::Call::retry) for one).
///
/// A call is made again after the loss of its connection (its node stopped, say), when the
/// broker was out of reach, or when no server consumed its queue; with
/// [`retry_timeouts`](Self::retry_timeouts), also when one attempt went unanswered, which only
/// an idempotent service should allow. Every attempt reuses the call's `correlation_id`, so a
/// late reply to an earlier attempt and the reply to the last one are one answer, never two;
/// no attempt starts, and no backoff lasts, past the call's own deadline. Retrying makes a call
/// at-least-once: a request whose reply was lost with its connection may be computed twice.
///
/// ```
/// use fib_rpc::RetryPolicy;
/// use std::time::Duration;
///
/// let policy = RetryPolicy::new()
///     .attempts(5)
///     .backoff(Duration::from_millis(50), Duration::from_secs(1));
/// assert_eq!(policy.get_attempts(), 5);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    attempts: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
    attempt_timeout: Option<Duration>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy::new()
    }
}

impl RetryPolicy {
    /// Up to 10 attempts, 50 ms apart at first, doubling to at most 1 s; timeouts not retried.
    pub fn new() -> RetryPolicy {
        RetryPolicy {
            attempts: 10,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
            attempt_timeout: None,
        }
    }

    /// How many attempts a call makes at most, the first included (default 10; at least 1).
    pub fn attempts(mut self, attempts: u32) -> RetryPolicy {
        self.attempts = attempts;
        self
    }

    /// The wait before the first retry, doubling for each retry after it up to `max` (default
    /// 50 ms and 1 s).
    pub fn backoff(mut self, initial: Duration, max: Duration) -> RetryPolicy {
        self.initial_backoff = initial;
        self.max_backoff = max;
        self
    }

    /// Gives each attempt at most `attempt_timeout` of the call's time, and makes an attempt
    /// that went unanswered in it again: for idempotent services only, since the unanswered
    /// request may be computed as well (default: off).
    pub fn retry_timeouts(mut self, attempt_timeout: Duration) -> RetryPolicy {
        self.attempt_timeout = Some(attempt_timeout);
        self
    }

    /// See [`attempts`](Self::attempts).
    pub fn get_attempts(&self) -> u32 {
        self.attempts
    }

    /// See [`backoff`](Self::backoff): the first wait and the longest.
    pub fn get_backoff(&self) -> (Duration, Duration) {
        (self.initial_backoff, self.max_backoff)
    }

    /// See [`retry_timeouts`](Self::retry_timeouts).
    pub fn get_attempt_timeout(&self) -> Option<Duration> {
        self.attempt_timeout
    }

    /// Checks the policy; part of [`ClientConfig::validate`](crate::ClientConfig::validate).
    pub fn validate(&self) -> Result<()> {
        if self.attempts == 0 {
            return Err(Error::Config(
                "a retry policy needs at least one attempt".to_owned(),
            ));
        }
        if self.initial_backoff > self.max_backoff {
            return Err(Error::Config(format!(
                "the retry backoff starts at {:?}, longer than its longest, {:?}",
                self.initial_backoff, self.max_backoff
            )));
        }
        if self
            .attempt_timeout
            .is_some_and(|timeout| timeout.is_zero())
        {
            return Err(Error::Config(
                "a retry policy's attempt timeout must be above zero".to_owned(),
            ));
        }
        Ok(())
    }

    /// When to make attempt number `made + 1` after `error`, if at all: `None` if the error is
    /// not retried, the attempts are used up, or the backoff would end at or past `deadline`.
    pub(crate) fn next_attempt(
        &self,
        error: &Error,
        made: u32,
        now: Instant,
        deadline: Instant,
    ) -> Option<Instant> {
        let retried = match error.kind() {
            ErrorKind::ConnectionLost | ErrorKind::Unreachable | ErrorKind::NoServer => true,
            ErrorKind::Timeout => self.attempt_timeout.is_some(),
            _ => false,
        };
        if !retried || made >= self.attempts {
            return None;
        }
        let doublings = made.saturating_sub(1).min(30);
        let backoff = self
            .initial_backoff
            .saturating_mul(1 << doublings)
            .min(self.max_backoff);
        let at = crate::deadline::after(now, backoff);
        (at < deadline).then_some(at)
    }
}

/// When attempt number `made` of a call (whose `timeout` ends at `deadline`), starting `now`,
/// gives up, and its timeout: the call's for a first attempt, so that its errors and its
/// request's expiration say what the caller asked for; what is left of it for a later one; at
/// most the policy's attempt timeout.
pub(crate) fn attempt_budget(
    policy: Option<&RetryPolicy>,
    made: u32,
    now: Instant,
    deadline: Instant,
    timeout: Duration,
) -> (Instant, Duration) {
    let left = match made {
        1 => timeout,
        _ => deadline.saturating_duration_since(now),
    };
    match policy.and_then(RetryPolicy::get_attempt_timeout) {
        Some(limit) if limit < left => (crate::deadline::after(now, limit), limit),
        _ if made == 1 => (deadline, timeout),
        _ => (deadline, left),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lost() -> Error {
        Error::ConnectionLost("the node stopped".into())
    }

    fn timed_out() -> Error {
        Error::Timeout {
            queue: "q".into(),
            timeout: Duration::from_secs(1),
            stage: crate::Stage::Reply,
        }
    }

    #[test]
    fn lost_connections_and_missing_servers_are_retried_with_a_doubling_backoff() {
        let policy = RetryPolicy::new()
            .attempts(4)
            .backoff(Duration::from_millis(100), Duration::from_millis(250));
        let now = Instant::now();
        let deadline = now + Duration::from_secs(60);
        let waits: Vec<_> = (1..=4)
            .map(|made| {
                policy
                    .next_attempt(&lost(), made, now, deadline)
                    .map(|at| at - now)
            })
            .collect();
        let ms = Duration::from_millis;
        assert_eq!(waits, [Some(ms(100)), Some(ms(200)), Some(ms(250)), None]);
        let no_server = Error::NoServer {
            queue: "q".into(),
            reason: "none".into(),
        };
        assert!(policy.next_attempt(&no_server, 1, now, deadline).is_some());
        let unreachable = Error::connect("127.0.0.1:5672", "connection refused", None);
        assert!(policy
            .next_attempt(&unreachable, 1, now, deadline)
            .is_some());
        let refused = Error::Connect {
            address: "127.0.0.1:5672".into(),
            reason: "ACCESS_REFUSED".into(),
            code: Some(403),
            source: None,
        };
        assert_eq!(policy.next_attempt(&refused, 1, now, deadline), None);
    }

    #[test]
    fn answers_and_refusals_are_final_and_timeouts_only_when_asked() {
        let now = Instant::now();
        let deadline = now + Duration::from_secs(60);
        let policy = RetryPolicy::new();
        for error in [
            Error::Remote("bad input".into()),
            Error::Config("bad header".into()),
            timed_out(),
        ] {
            assert_eq!(
                policy.next_attempt(&error, 1, now, deadline),
                None,
                "{error}"
            );
        }
        let idempotent = policy.retry_timeouts(Duration::from_millis(500));
        assert!(idempotent
            .next_attempt(&timed_out(), 1, now, deadline)
            .is_some());
    }

    #[test]
    fn each_attempt_gets_what_is_left_of_the_call_at_most_its_own_timeout() {
        let start = Instant::now();
        let (timeout, deadline) = (Duration::from_secs(2), start + Duration::from_secs(2));
        let later = start + Duration::from_millis(1500);
        let plain = RetryPolicy::new();
        assert_eq!(
            attempt_budget(Some(&plain), 1, start, deadline, timeout),
            (deadline, timeout)
        );
        assert_eq!(
            attempt_budget(Some(&plain), 2, later, deadline, timeout),
            (deadline, Duration::from_millis(500))
        );
        let idempotent = plain.retry_timeouts(Duration::from_millis(800));
        let ms = Duration::from_millis;
        assert_eq!(
            attempt_budget(Some(&idempotent), 1, start, deadline, timeout),
            (start + ms(800), ms(800))
        );
        assert_eq!(
            attempt_budget(Some(&idempotent), 3, later, deadline, timeout),
            (deadline, ms(500))
        );
        assert_eq!(
            attempt_budget(None, 1, start, deadline, timeout),
            (deadline, timeout)
        );
    }

    #[test]
    fn no_retry_starts_past_the_calls_deadline() {
        let policy = RetryPolicy::new().backoff(Duration::from_secs(1), Duration::from_secs(1));
        let now = Instant::now();
        assert_eq!(
            policy.next_attempt(&lost(), 1, now, now + Duration::from_millis(999)),
            None
        );
        assert!(policy
            .next_attempt(&lost(), 1, now, now + Duration::from_millis(1001))
            .is_some());
    }

    #[test]
    fn nonsense_is_refused() {
        assert!(RetryPolicy::new().attempts(0).validate().is_err());
        let backwards = RetryPolicy::new().backoff(Duration::from_secs(2), Duration::from_secs(1));
        assert!(backwards.validate().is_err());
        assert!(RetryPolicy::new()
            .retry_timeouts(Duration::ZERO)
            .validate()
            .is_err());
        assert!(RetryPolicy::new().validate().is_ok());
    }
}
