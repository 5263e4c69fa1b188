//! Waiting for an event, never for a fixed time.

use std::time::{Duration, Instant};

/// Polls `condition` every 50 ms until it holds; panics with `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// How far past a stated bound the tests let a timed operation end, the same everywhere: the
/// README's bounds are checked at the bound plus this. A busy 2-core machine needs it (an idle
/// one some 25 ms); a fault it hides would have to cost less than half a second.
pub const SLACK: Duration = Duration::from_millis(500);

/// Runs `work` and checks that it ended within `bound` plus [`SLACK`]; says how long it took.
pub fn within<T>(bound: Duration, what: &str, work: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let outcome = work();
    let took = started.elapsed();
    eprintln!("{what}: {took:?} (bound {bound:?})");
    assert!(
        took < bound + SLACK,
        "{what} took {took:?}, bound {bound:?} plus {SLACK:?}"
    );
    outcome
}
