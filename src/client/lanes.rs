//! Reply lanes: the callback queues of one connection, one per calling thread up to
//! [`MAX_LANES`], then shared.
//!
//! Every waiting caller reads replies itself and hands on those that are not its own. With one
//! callback queue for all threads, a reply is usually read by a thread other than its caller's,
//! which then wakes the caller: two thread wake-ups per reply instead of one, the largest cost
//! of a client that many threads share (3.2 futex calls per call against a raw client's 0.8).
//! A thread with a queue of its own reads its own replies. The first thread to call uses the
//! queue declared with the connection, so a client called from one thread has one queue, as
//! before; the others are declared by the reply keeper as new threads call, and a thread uses
//! the first queue until its own is there: no call waits for a declaration.

use crate::driver::ConsumerMessage;
use crossbeam_channel::Receiver;
use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;

/// The most callback queues a connection declares.
pub(crate) const MAX_LANES: usize = 8;

/// One callback queue and its replies.
pub(crate) struct ReplyLane {
    pub queue: String,
    pub replies: Receiver<ConsumerMessage>,
}

/// The lanes of one connection.
pub(crate) struct Lanes {
    /// This connection's number, for the threads' memory of their lane.
    id: u64,
    lanes: [OnceLock<ReplyLane>; MAX_LANES],
    /// Lanes more than one thread has taken replies on (for good: a lane is never unshared).
    shared: [AtomicBool; MAX_LANES],
    /// Callers reading each lane alone (see [`watch`](Lanes::watch)).
    watchers: [AtomicUsize; MAX_LANES],
    /// Threads given a lane so far.
    assigned: AtomicUsize,
    /// How many lanes there may be: one where the reply queue is not ours to multiply (direct
    /// reply-to).
    limit: usize,
}

/// How many connections a thread remembers its lane on: a thread that calls on a few clients
/// in turn keeps its lane on each, and connections it no longer uses fall out.
const REMEMBERED: usize = 8;

thread_local! {
    /// The connections this thread called on lately, and its lane on each, newest last.
    static LANES: RefCell<Vec<(u64, usize)>> = const { RefCell::new(Vec::new()) };
}

impl Lanes {
    pub fn new(first: ReplyLane, limit: usize) -> Lanes {
        static CONNECTIONS: AtomicU64 = AtomicU64::new(1);
        let lanes: [OnceLock<ReplyLane>; MAX_LANES] = Default::default();
        let _ = lanes[0].set(first);
        Lanes {
            id: CONNECTIONS.fetch_add(1, Ordering::Relaxed),
            lanes,
            shared: Default::default(),
            watchers: Default::default(),
            assigned: AtomicUsize::new(0),
            limit: limit.clamp(1, MAX_LANES),
        }
    }

    /// The calling thread's lane; a thread new to this connection gets the next one, which
    /// `declare` is asked to declare.
    pub fn of_this_thread(&self, declare: impl FnOnce(usize)) -> usize {
        if let Some(lane) = self.remembered() {
            return lane;
        }
        let next = self.assigned.fetch_add(1, Ordering::Relaxed);
        let lane = next % self.limit;
        if next >= self.limit {
            self.shared[lane].store(true, Ordering::Relaxed);
        } else if next > 0 {
            declare(lane);
        }
        LANES.with_borrow_mut(|lanes| {
            if lanes.len() == REMEMBERED {
                lanes.remove(0);
            }
            lanes.push((self.id, lane));
        });
        lane
    }

    /// The calling thread's lane on this connection, if it has one.
    fn remembered(&self) -> Option<usize> {
        LANES.with_borrow(|lanes| {
            lanes
                .iter()
                .find(|(connection, _)| *connection == self.id)
                .map(|&(_, lane)| lane)
        })
    }

    /// Lane `index` once it is declared, or else the first, shared from then on: the lane a
    /// call's replies come to.
    pub fn ready(&self, index: usize) -> usize {
        match self.lanes[index].get() {
            Some(_) => index,
            None => {
                self.shared[0].store(true, Ordering::Relaxed);
                0
            }
        }
    }

    /// Whether lane `index` is the calling thread's and no other's: then every reply read on it
    /// is this thread's (a call waited on by a thread other than its sender's is not).
    pub fn is_own(&self, index: usize) -> bool {
        !self.shared[index].load(Ordering::Relaxed) && self.remembered() == Some(index)
    }

    /// Marks lane `index` as read by a caller waiting on it alone, until the guard drops: the
    /// others who read every lane leave it to that caller, who would not hear of a reply they
    /// took until its next look round.
    pub fn watch(&self, index: usize) -> Watch<'_> {
        self.watchers[index].fetch_add(1, Ordering::SeqCst);
        Watch {
            watchers: &self.watchers[index],
        }
    }

    /// Sets lane `index`, declared.
    pub fn declared(&self, index: usize, lane: ReplyLane) {
        let _ = self.lanes[index].set(lane);
    }

    /// Lane `index`, or the first while that one is not declared (yet, or at all).
    pub fn get(&self, index: usize) -> &ReplyLane {
        self.lanes[index]
            .get()
            .or_else(|| self.lanes[0].get())
            .expect("the first lane is set at the start")
    }

    pub fn all(&self) -> impl Iterator<Item = &ReplyLane> {
        self.lanes.iter().filter_map(OnceLock::get)
    }

    /// The lanes no caller waits on alone.
    pub fn unwatched(&self) -> impl Iterator<Item = &ReplyLane> {
        self.lanes
            .iter()
            .zip(&self.watchers)
            .filter(|(_, watchers)| watchers.load(Ordering::SeqCst) == 0)
            .filter_map(|(lane, _)| lane.get())
    }
}

/// A caller reading its lane alone; see [`Lanes::watch`].
pub(crate) struct Watch<'a> {
    watchers: &'a AtomicUsize,
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        self.watchers.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lane(queue: &str) -> ReplyLane {
        ReplyLane {
            queue: queue.to_owned(),
            replies: crossbeam_channel::never(),
        }
    }

    /// The lane a new thread gets, and whether it was asked to declare it (and did, as
    /// `declared` says).
    fn lane_of_new_thread(lanes: &Lanes, declared: Option<&str>) -> (usize, bool) {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let mut asked = false;
                    let index = lanes.of_this_thread(|index| {
                        asked = true;
                        if let Some(queue) = declared {
                            lanes.declared(index, lane(queue));
                        }
                    });
                    // A thread keeps its lane without asking again.
                    assert_eq!(lanes.of_this_thread(|_| panic!("asked twice")), index);
                    (index, asked)
                })
                .join()
                .unwrap()
        })
    }

    #[test]
    fn the_first_thread_takes_the_first_lane_and_each_next_one_a_new_lane() {
        let lanes = Lanes::new(lane("first"), MAX_LANES);
        assert_eq!(lane_of_new_thread(&lanes, None), (0, false));
        for expected in 1..MAX_LANES {
            let queue = format!("lane-{expected}");
            assert_eq!(lane_of_new_thread(&lanes, Some(&queue)), (expected, true));
            assert_eq!(lanes.ready(expected), expected);
            assert_eq!(lanes.get(expected).queue, queue);
        }
        // Then they are shared, and nothing more is declared.
        assert_eq!(lane_of_new_thread(&lanes, Some("x")), (0, false));
        assert_eq!(lane_of_new_thread(&lanes, Some("x")), (1, false));
        assert_eq!(lanes.all().count(), MAX_LANES);
    }

    #[test]
    fn until_its_lane_is_declared_a_thread_uses_the_first() {
        let lanes = Lanes::new(lane("first"), MAX_LANES);
        lane_of_new_thread(&lanes, None);
        let (index, asked) = lane_of_new_thread(&lanes, None);
        assert!(asked);
        assert_eq!(lanes.ready(index), 0);
        assert_eq!(lanes.get(index).queue, "first");
        assert_eq!(lanes.all().count(), 1);
        lanes.declared(index, lane("late"));
        assert_eq!(lanes.ready(index), index);
    }

    #[test]
    fn a_thread_calling_on_several_connections_keeps_its_lane_on_each() {
        let first = Lanes::new(lane("a0"), MAX_LANES);
        let second = Lanes::new(lane("b0"), MAX_LANES);
        lane_of_new_thread(&first, None);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let declare = |lanes: &Lanes| {
                    lanes.of_this_thread(|index| lanes.declared(index, lane("new")))
                };
                let on_first = declare(&first);
                let on_second = declare(&second);
                assert_eq!((on_first, on_second), (1, 0));
                for _ in 0..3 {
                    assert_eq!(first.of_this_thread(|_| panic!("declared again")), on_first);
                    assert_eq!(
                        second.of_this_thread(|_| panic!("declared again")),
                        on_second
                    );
                }
            });
        });
        assert_eq!(first.all().count(), 2);
        assert_eq!(second.all().count(), 1);
    }

    #[test]
    fn a_lane_is_its_threads_own_until_another_thread_takes_replies_on_it() {
        let lanes = Lanes::new(lane("first"), MAX_LANES);
        let first = lanes.of_this_thread(|_| panic!("the first lane is declared already"));
        assert_eq!(lanes.ready(first), 0);
        assert!(lanes.is_own(0));
        std::thread::scope(|scope| {
            scope.spawn(|| {
                // Not this thread's, nor is the second lane before this thread has one.
                assert!(!lanes.is_own(0));
                let second = lanes.of_this_thread(|_| ());
                assert!(!lanes.is_own(lanes.ready(second)), "borrowing the first");
                lanes.declared(second, lane("second"));
                assert!(lanes.is_own(lanes.ready(second)));
            });
        });
        assert!(!lanes.is_own(0), "borrowed once, shared for good");
    }

    #[test]
    fn a_watched_lane_is_left_to_its_watcher() {
        let lanes = Lanes::new(lane("first"), MAX_LANES);
        lanes.declared(1, lane("second"));
        let queues = |lanes: &Lanes| -> Vec<String> {
            lanes.unwatched().map(|lane| lane.queue.clone()).collect()
        };
        let watch = lanes.watch(1);
        assert_eq!(queues(&lanes), ["first"]);
        drop(watch);
        assert_eq!(queues(&lanes), ["first", "second"]);
    }

    #[test]
    fn with_one_lane_every_thread_shares_it() {
        let lanes = Lanes::new(lane("amq.rabbitmq.reply-to"), 1);
        for _ in 0..3 {
            assert_eq!(lane_of_new_thread(&lanes, Some("never")), (0, false));
        }
    }
}
