//! Deadlines for driver calls that have none of their own.
//!
//! amiquip's calls (declare, publish when its buffers are full, close) block until the broker
//! answers, however long a silent network cut lasts. Such a call runs through
//! [`Cutter::bounded`], which arms an [`Alarm`]; if the call is still running at the deadline, one process-wide watchdog thread shuts the
//! connection's socket down, which fails every blocked call on that connection at once. Arming
//! and disarming take a lock and a map update; the thread is woken only when a new deadline is
//! earlier than the one it sleeps towards.

use crate::deadline;
use crate::error::{Error, Result};
use crate::util::lock;
use amiquip::Connection;
use std::collections::BTreeMap;
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// A handle on a connection's socket that can end the connection from any thread.
#[derive(Debug)]
pub(crate) struct Cutter(TcpStream);

impl Cutter {
    pub fn new(socket: TcpStream) -> Cutter {
        Cutter(socket)
    }

    /// Shuts the socket down: the driver's I/O thread sees it closed and ends the connection.
    pub fn cut(&self) {
        let _ = self.0.shutdown(Shutdown::Both);
    }

    /// Runs `operation`, cutting the connection if it is still running at `deadline`.
    pub fn bounded<T>(
        self: &Arc<Self>,
        deadline: Instant,
        operation: impl FnOnce() -> T,
    ) -> Bounded<T> {
        let alarm = Alarm::arm(deadline, self);
        let outcome = operation();
        Bounded {
            outcome,
            cut: alarm.fired(),
        }
    }

    /// Runs a new connection's setup (declaring, consuming), cutting the connection if the
    /// setup outlives `timeout`. A setup cut short fails as an unreachable broker at `address`
    /// that left `what` unanswered, not with the closed socket the cut leaves behind.
    pub fn setup_within<T>(
        self: &Arc<Self>,
        timeout: Duration,
        address: &str,
        what: &str,
        setup: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        let Bounded { outcome, cut } = self.bounded(deadline::from_now(timeout), setup);
        match outcome {
            Err(_) if cut => Err(Error::connect(
                address,
                format!("no answer within {timeout:?} while {what}"),
                None,
            )),
            other => other,
        }
    }

    /// Closes `connection`, cutting it if the broker has not confirmed the close within
    /// `timeout`: during a network cut it never would.
    pub fn close_within(
        self: &Arc<Self>,
        timeout: Duration,
        connection: Connection,
    ) -> Bounded<Result<(), amiquip::Error>> {
        self.bounded(deadline::from_now(timeout), || connection.close())
    }
}

/// What a call run by [`Cutter::bounded`] returned, and whether its deadline came first.
pub(crate) struct Bounded<T> {
    pub outcome: T,
    /// The deadline passed while the call ran and the connection was cut: the outcome is the
    /// cut's, not the broker's answer.
    pub cut: bool,
}

/// Armed until dropped; past its deadline it cuts the connection.
#[must_use = "an alarm is disarmed when dropped"]
struct Alarm {
    key: (Instant, u64),
    fired: Arc<AtomicBool>,
}

impl Alarm {
    /// Cuts `cutter`'s connection at `deadline` unless dropped before.
    fn arm(deadline: Instant, cutter: &Arc<Cutter>) -> Alarm {
        let watchdog = watchdog();
        let fired = Arc::new(AtomicBool::new(false));
        let mut state = watchdog.lock();
        let key = (deadline, state.next_id);
        state.next_id += 1;
        state.alarms.insert(
            key,
            Entry {
                cutter: Arc::clone(cutter),
                fired: Arc::clone(&fired),
            },
        );
        if state.sleeping_until.is_none_or(|until| deadline < until) {
            watchdog.wake.notify_one();
        }
        Alarm { key, fired }
    }

    /// True once the deadline passed and the connection was cut.
    fn fired(&self) -> bool {
        self.fired.load(Ordering::Acquire)
    }
}

impl Drop for Alarm {
    fn drop(&mut self) {
        watchdog().lock().alarms.remove(&self.key);
    }
}

struct Entry {
    cutter: Arc<Cutter>,
    fired: Arc<AtomicBool>,
}

#[derive(Default)]
struct State {
    alarms: BTreeMap<(Instant, u64), Entry>,
    next_id: u64,
    /// The deadline the thread sleeps towards; `None` while it waits for any alarm.
    sleeping_until: Option<Instant>,
}

struct Watchdog {
    state: Mutex<State>,
    wake: Condvar,
}

impl Watchdog {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update is a single map operation: a panic cannot leave the state half-done.
        lock(&self.state)
    }

    fn run(&self) {
        let mut state = self.lock();
        loop {
            let now = Instant::now();
            while let Some(entry) = state.alarms.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                let entry = entry.remove();
                entry.fired.store(true, Ordering::Release);
                entry.cutter.cut();
            }
            let next = state.alarms.first_key_value().map(|(key, _)| key.0);
            state.sleeping_until = next;
            state = match next {
                Some(deadline) => {
                    self.wake
                        .wait_timeout(state, deadline.saturating_duration_since(now))
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .0
                }
                None => self
                    .wake
                    .wait(state)
                    .unwrap_or_else(|poisoned| poisoned.into_inner()),
            };
        }
    }
}

fn watchdog() -> &'static Watchdog {
    static WATCHDOG: OnceLock<Watchdog> = OnceLock::new();
    static STARTED: OnceLock<()> = OnceLock::new();
    let watchdog = WATCHDOG.get_or_init(|| Watchdog {
        state: Mutex::new(State::default()),
        wake: Condvar::new(),
    });
    STARTED.get_or_init(|| {
        std::thread::Builder::new()
            .name("fib-rpc-watchdog".into())
            .spawn(move || watchdog.run())
            .expect("cannot start the fib-rpc watchdog thread");
    });
    watchdog
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpListener;
    use std::time::Duration;

    fn socket_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (client, server)
    }

    #[test]
    fn an_alarm_past_its_deadline_cuts_the_socket() {
        let (mut client, _server) = socket_pair();
        let cutter = Arc::new(Cutter::new(client.try_clone().unwrap()));
        let alarm = Alarm::arm(Instant::now() + Duration::from_millis(50), &cutter);
        // The read blocks until the watchdog shuts the socket down.
        let read = client.read(&mut [0; 1]).unwrap();
        assert_eq!(read, 0);
        assert!(alarm.fired());
    }

    #[test]
    fn a_dropped_alarm_never_fires() {
        let (mut kept, mut kept_peer) = socket_pair();
        let kept_cutter = Arc::new(Cutter::new(kept.try_clone().unwrap()));
        drop(Alarm::arm(
            Instant::now() + Duration::from_millis(20),
            &kept_cutter,
        ));
        // A later alarm on another socket fires; by then the dropped one's deadline has passed.
        let (mut cut, _cut_peer) = socket_pair();
        let cutter = Arc::new(Cutter::new(cut.try_clone().unwrap()));
        let _later = Alarm::arm(Instant::now() + Duration::from_millis(60), &cutter);
        assert_eq!(cut.read(&mut [0; 1]).unwrap(), 0);
        std::io::Write::write_all(&mut kept_peer, b"x").unwrap();
        assert_eq!(
            kept.read(&mut [0; 1]).unwrap(),
            1,
            "the socket is still open"
        );
    }
}
