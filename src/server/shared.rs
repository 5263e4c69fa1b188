//! What every worker of a server shares, across reconnections.

use super::cancels::Cancels;
use super::expiry::Clocks;
use super::outbox::Outbox;
use super::recent::Recent;
use std::sync::atomic::AtomicUsize;

#[derive(Debug)]
pub(crate) struct Shared {
    pub recent: Recent,
    /// The largest reply the broker takes: the configured limit, lowered by a refusal.
    pub limit: AtomicUsize,
    pub clocks: Clocks,
    pub cancels: Cancels,
    /// Replies whose connection was lost before they went out.
    pub outbox: Outbox,
}
