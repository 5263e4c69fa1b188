//! Small helpers with no better home.

use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`, poisoned or not: every caller keeps its state whole across a panic (single
/// updates of plain values), so a poisoned lock is still usable.
pub(crate) fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
