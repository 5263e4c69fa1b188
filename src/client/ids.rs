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

    pub fn next(&self) -> String {
        let count = self.next.fetch_add(1, Ordering::Relaxed);
        format!("{}-{count}", self.prefix)
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
}
