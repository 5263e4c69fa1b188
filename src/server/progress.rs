//! A request's progress messages to its caller, paced: the first [`BURST`] go out at once,
//! then at most one per [`INTERVAL`] (20 a second); reports in between are dropped, so a
//! handler that reports in a tight loop cannot flood the broker.

use crate::driver::{Channel, Publish};
use crate::protocol;
use std::cell::Cell;
use std::time::{Duration, Instant};

/// Progress messages a request sends without pacing.
const BURST: usize = 10;

/// After the burst, the least time between two progress messages of a request.
const INTERVAL: Duration = Duration::from_millis(50);

/// How many bytes of a progress message are sent.
const MESSAGE_LIMIT: usize = 1024;

/// Which of a request's reports go out.
#[derive(Debug, Default)]
struct Pacing {
    sent: Cell<usize>,
    last: Cell<Option<Instant>>,
}

impl Pacing {
    /// True if a report made at `now` goes out (and is counted as sent).
    fn admits(&self, now: Instant) -> bool {
        let paced = self.sent.get() >= BURST
            && self
                .last
                .get()
                .is_some_and(|last| now.duration_since(last) < INTERVAL);
        if paced {
            return false;
        }
        self.sent.set(self.sent.get() + 1);
        self.last.set(Some(now));
        true
    }
}

/// Sends one request's progress messages on its worker's channel.
pub(super) struct Reporter<'a> {
    channel: &'a Channel,
    reply_to: &'a str,
    correlation_id: &'a str,
    pacing: Pacing,
}

impl<'a> Reporter<'a> {
    pub fn new(channel: &'a Channel, reply_to: &'a str, correlation_id: &'a str) -> Reporter<'a> {
        Reporter {
            channel,
            reply_to,
            correlation_id,
            pacing: Pacing::default(),
        }
    }

    /// Sends a report, unless the pacing drops it; a report that cannot be sent is only
    /// logged: the reply is what counts.
    pub fn report(&self, fraction: Option<f64>, message: &str) {
        if !self.pacing.admits(Instant::now()) {
            return;
        }
        let message = protocol::truncate_utf8(message, MESSAGE_LIMIT);
        let properties = protocol::progress_properties(self.correlation_id, fraction);
        let sent = self.channel.basic_publish(
            "",
            Publish::with_properties(message.as_bytes(), self.reply_to, properties),
        );
        if let Err(error) = sent {
            log::debug!("a progress message could not be sent: {error}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_ten_go_at_once_then_at_most_twenty_a_second() {
        let pacing = Pacing::default();
        let start = Instant::now();
        let at = |millis: u64| start + Duration::from_millis(millis);
        assert!((0..BURST).all(|_| pacing.admits(start)), "the burst");
        assert!(!pacing.admits(start), "the eleventh at once");
        assert!(!pacing.admits(at(49)));
        assert!(pacing.admits(at(50)));
        assert!(!pacing.admits(at(99)), "a dropped report does not count");
        assert!(pacing.admits(at(100)));
        let admitted = (0..1000).filter(|&i| pacing.admits(at(1000 + i))).count();
        assert_eq!(admitted, 20, "one second of reports every millisecond");
    }
}
