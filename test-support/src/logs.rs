//! The library's own log records, captured in the test process: which node a program went to,
//! which backoff it waited, as the library says it.

use std::sync::{Mutex, Once};
use std::time::Instant;

/// One log record of this test process: when, on which thread, and what.
pub struct Logged {
    pub at: Instant,
    pub thread: String,
    pub text: String,
}

/// Keeps every record the library logs at info or above, for the tests to read.
struct CapturingLogger;

static LOGGED: Mutex<Vec<Logged>> = Mutex::new(Vec::new());

impl log::Log for CapturingLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::Level::Info
    }

    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            let logged = Logged {
                at: Instant::now(),
                thread: std::thread::current().name().unwrap_or("").to_owned(),
                text: record.args().to_string(),
            };
            LOGGED
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .push(logged);
        }
    }

    fn flush(&self) {}
}

/// Installs the capturing logger (once per process).
pub fn capture_logs() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        log::set_logger(&CapturingLogger).expect("no other logger in this test process");
        log::set_max_level(log::LevelFilter::Info);
    });
}

/// (when, text) of the records logged in `since..until` that `keep` accepts, oldest first.
pub fn logged(
    since: Instant,
    until: Instant,
    keep: impl Fn(&Logged) -> bool,
) -> Vec<(Instant, String)> {
    LOGGED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .iter()
        .filter(|record| record.at >= since && record.at < until && keep(record))
        .map(|record| (record.at, record.text.clone()))
        .collect()
}
