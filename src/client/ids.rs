//! Correlation ids of calls.

use std::sync::atomic::{AtomicU64, Ordering};

/// A client's correlation ids: a random prefix drawn once, then a count.
///
/// The 122 random bits of the prefix keep one client's ids apart from every other client's
/// (servers remember requests by callback queue and correlation id), and the count keeps the
/// client's own apart. A random id drawn for each call would ask the kernel for randomness on
/// every call, a system call between one call's reply and the next call's publish.
pub(super) struct CorrelationIds {
    prefix: String,
    next: AtomicU64,
}

impl CorrelationIds {
    pub fn new() -> CorrelationIds {
        CorrelationIds {
            prefix: uuid::Uuid::new_v4().simple().to_string(),
            next: AtomicU64::new(0),
        }
    }

    /// The prefix, a dash and the count in decimal. Not by `format!`: that took about a
    /// thousand instructions per call (callgrind), three quarters of what preparing a call cost.
    pub fn next(&self) -> String {
        let count = self.next.fetch_add(1, Ordering::Relaxed);
        let mut buffer = itoa::Buffer::new();
        let digits = buffer.format(count);
        let mut id = String::with_capacity(self.prefix.len() + 1 + digits.len());
        id.push_str(&self.prefix);
        id.push('-');
        id.push_str(digits);
        id
    }
}

#[cfg(test)]
mod tests {
    use super::CorrelationIds;
    use std::collections::HashSet;

    #[test]
    fn ids_never_repeat_within_a_client_or_across_clients() {
        let (first, second) = (CorrelationIds::new(), CorrelationIds::new());
        let ids: HashSet<String> = (0..1000)
            .flat_map(|_| [first.next(), second.next()])
            .collect();
        assert_eq!(ids.len(), 2000);
        assert_ne!(first.prefix, second.prefix);
        assert!(first.next().starts_with(&first.prefix));
    }

    #[test]
    fn the_count_is_written_in_decimal_after_the_prefix() {
        let ids = CorrelationIds::new();
        assert_eq!(ids.next(), format!("{}-0", ids.prefix));
        ids.next
            .store(1_234_567_890, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(ids.next(), format!("{}-1234567890", ids.prefix));
        ids.next
            .store(u64::MAX, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(ids.next(), format!("{}-{}", ids.prefix, u64::MAX));
    }
}
