//! Whether a request is computed at all: one with nobody to answer, a copy of one this server
//! computes or has answered, one expired before it was taken, or one its caller cancelled
//! before, is acked unanswered (said in the log and counted).

use super::expiry::{Taken, Verdict};
use super::recent::Key;
use super::shared::Shared;
use super::stats::{count, Counters};
use crate::driver::Delivery;
use crate::handler::CancelToken;
use crate::protocol;
use std::time::{Duration, SystemTime};

/// A request let through to the handler: where its reply goes, and what bounds it.
pub(super) struct Admitted {
    pub reply_to: String,
    pub key: Option<Key>,
    pub deadline: Option<SystemTime>,
    pub cancel: Option<CancelToken>,
}

/// Whether the handler runs for this request. `None` (said and counted here) if it is to be
/// acked unanswered: nobody to answer, a copy of one this server computes or has answered,
/// expired before it was taken, or cancelled by its caller before.
pub(super) fn admit(
    shared: &Shared,
    counters: &Counters,
    generation: u64,
    delivery: &Delivery,
    buffered_for: Duration,
) -> Option<Admitted> {
    let properties = &delivery.properties;
    let Some(reply_to) = properties
        .reply_to()
        .clone()
        .filter(|queue| !queue.is_empty())
    else {
        log::warn!(
            "request {} has no reply_to: nobody to answer, dropping it",
            protocol::quote(&delivery.body)
        );
        count(&counters.unanswerable);
        return None;
    };
    let key = properties
        .correlation_id()
        .as_deref()
        .map(|id| Key::new(&reply_to, id));
    if let Some(key) = key.as_ref().filter(|_| delivery.redelivered) {
        if shared.recent.holds(key, generation) {
            log::info!(
                "request {} came back (the broker requeued it when it closed a channel) \
                 while this server computes or has answered it: acked, not computed again",
                protocol::quote(&delivery.body)
            );
            count(&counters.duplicates);
            return None;
        }
    }
    let verdict = shared.clocks.judge(Taken {
        deadline: protocol::header_deadline(properties),
        timeout: protocol::expiration(properties),
        now: SystemTime::now(),
        buffered_for,
    });
    let Verdict::Serve { deadline } = verdict else {
        log::debug!(
            "request {} expired before we took it: skipped",
            protocol::quote(&delivery.body)
        );
        count(&counters.expired);
        return None;
    };
    let correlation_id = properties.correlation_id().as_deref();
    let cancel = match correlation_id.map(|id| shared.cancels.begin(id)) {
        Some(None) => {
            log::info!(
                "request {} was cancelled by its caller before we took it: skipped",
                protocol::quote(&delivery.body)
            );
            count(&counters.cancelled);
            return None;
        }
        Some(token) => token,
        None => None,
    };
    Some(Admitted {
        reply_to,
        key,
        deadline,
        cancel,
    })
}
