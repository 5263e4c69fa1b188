//! Reply lanes: the callback queues of one connection, one per live calling thread up to
//! [`MAX_LANES`], then shared.
//!
//! Every waiting caller reads replies itself and hands on those that are not its own. With one
//! callback queue for all threads, a reply is usually read by a thread other than its caller's,
//! which then wakes the caller: two thread wake-ups per reply instead of one, the largest cost
//! of a client that many threads share (3.2 futex calls per call against a raw client's 0.8).
//! A thread with a queue of its own reads its own replies. The first thread to call uses the
//! queue declared with the connection, so a client called from one thread has one queue, as
//! before; the others are declared by the reply keeper as new threads call, and a thread uses
//! the first queue until its own is there: no call waits for a declaration. A thread that ends
//! gives its lane back for the next new thread, so that a pool that replaces its threads keeps
//! one lane per thread instead of sharing them all.

use crate::driver::ConsumerMessage;
use crossbeam_channel::Receiver;
use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};

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
    /// Live threads that have each lane as theirs.
    users: [AtomicUsize; MAX_LANES],
    /// Lanes whose declaration was asked for.
    requested: [AtomicBool; MAX_LANES],
    /// Lanes asked for and not declared (yet, or ever: the declaration failed); their threads
    /// take replies on the first lane meanwhile.
    undeclared: AtomicUsize,
    /// Callers reading each lane alone (see [`watch`](Lanes::watch)).
    watchers: [AtomicUsize; MAX_LANES],
    /// How many lanes there may be: one where the reply queue is not ours to multiply (direct
    /// reply-to).
    limit: usize,
}

/// How many connections a thread remembers its lane on: a thread that calls on a few clients
/// in turn keeps its lane on each, and connections it no longer uses fall out.
const REMEMBERED: usize = 8;

/// A thread's lane on one connection; dropped (the thread ended, or forgot the connection), it
/// gives the lane back.
struct Membership {
    connection: u64,
    lane: usize,
    lanes: Weak<Lanes>,
}

impl Drop for Membership {
    fn drop(&mut self) {
        if let Some(lanes) = self.lanes.upgrade() {
            lanes.users[self.lane].fetch_sub(1, Ordering::SeqCst);
        }
    }
}

thread_local! {
    /// The connections this thread called on lately, and its lane on each, newest last.
    static LANES: RefCell<Vec<Membership>> = const { RefCell::new(Vec::new()) };
}

impl Lanes {
    pub fn new(first: ReplyLane, limit: usize) -> Lanes {
        static CONNECTIONS: AtomicU64 = AtomicU64::new(1);
        let lanes: [OnceLock<ReplyLane>; MAX_LANES] = Default::default();
        let _ = lanes[0].set(first);
        Lanes {
            id: CONNECTIONS.fetch_add(1, Ordering::Relaxed),
            lanes,
            users: Default::default(),
            requested: Default::default(),
            undeclared: AtomicUsize::new(0),
            watchers: Default::default(),
            limit: limit.clamp(1, MAX_LANES),
        }
    }

    /// The calling thread's lane; a thread new to this connection gets the lane with the
    /// fewest live threads (the first such), which `declare` is asked to declare if no thread
    /// had it before.
    pub fn of_this_thread(self: &Arc<Self>, declare: impl FnOnce(usize)) -> usize {
        if let Some(lane) = self.remembered() {
            return lane;
        }
        let lane = (0..self.limit)
            .min_by_key(|&index| self.users[index].load(Ordering::SeqCst))
            .unwrap_or(0);
        self.users[lane].fetch_add(1, Ordering::SeqCst);
        if self.lanes[lane].get().is_none() && !self.requested[lane].swap(true, Ordering::SeqCst) {
            self.undeclared.fetch_add(1, Ordering::SeqCst);
            declare(lane);
        }
        let membership = Membership {
            connection: self.id,
            lane,
            lanes: Arc::downgrade(self),
        };
        // Dropped outside the borrow: giving a lane back may drop the last of a connection.
        let forgotten = LANES.with_borrow_mut(|lanes| {
            let forgotten = (lanes.len() == REMEMBERED).then(|| lanes.remove(0));
            lanes.push(membership);
            forgotten
        });
        drop(forgotten);
        lane
    }

    /// The calling thread's lane on this connection, if it has one.
    fn remembered(&self) -> Option<usize> {
        LANES.with_borrow(|lanes| {
            lanes
                .iter()
                .find(|membership| membership.connection == self.id)
                .map(|membership| membership.lane)
        })
    }

    /// Lane `index` once it is declared, or else the first: the lane a call's replies come to.
    pub fn ready(&self, index: usize) -> usize {
        match self.lanes[index].get() {
            Some(_) => index,
            None => 0,
        }
    }

    /// Sets lane `index`, declared.
    pub fn declared(&self, index: usize, lane: ReplyLane) {
        if self.lanes[index].set(lane).is_ok() {
            self.undeclared.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Whether lane `index` is the calling thread's and no other live thread's: then every
    /// reply read on it is this thread's (a call waited on by a thread other than its sender's
    /// is not). The first lane is not while threads whose own lane is undeclared use it.
    pub fn is_own(&self, index: usize) -> bool {
        self.users[index].load(Ordering::SeqCst) == 1
            && (index > 0 || self.undeclared.load(Ordering::SeqCst) == 0)
            && self.remembered() == Some(index)
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

    /// Lane `index` as [`get`](Self::get) finds it, unless a caller waits on it alone.
    pub fn unwatched_lane(&self, index: usize) -> Option<&ReplyLane> {
        let index = self.ready(index);
        (self.watchers[index].load(Ordering::SeqCst) == 0).then(|| self.get(index))
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
    use crossbeam_channel::Sender;
    use std::thread::JoinHandle;

    fn lane(queue: &str) -> ReplyLane {
        ReplyLane {
            queue: queue.to_owned(),
            replies: crossbeam_channel::never(),
        }
    }

    /// A thread that has taken its lane, declaring it as `declared` when asked to, and keeps
    /// it until it leaves.
    struct Caller {
        lane: usize,
        asked: bool,
        leave: Sender<()>,
        thread: JoinHandle<()>,
    }

    impl Caller {
        fn arrive(lanes: &Arc<Lanes>, declared: Option<&str>) -> Caller {
            let (lanes, declared) = (Arc::clone(lanes), declared.map(str::to_owned));
            let (taken, lane_taken) = crossbeam_channel::bounded(1);
            let (leave, told_to_leave) = crossbeam_channel::bounded::<()>(0);
            let thread = std::thread::spawn(move || {
                let mut asked = false;
                let index = lanes.of_this_thread(|index| {
                    asked = true;
                    if let Some(queue) = &declared {
                        lanes.declared(index, lane(queue));
                    }
                });
                // A thread keeps its lane without asking again.
                assert_eq!(lanes.of_this_thread(|_| panic!("asked twice")), index);
                taken.send((index, asked)).unwrap();
                let _ = told_to_leave.recv();
            });
            let (lane, asked) = lane_taken.recv().expect("the caller took a lane");
            Caller {
                lane,
                asked,
                leave,
                thread,
            }
        }

        fn taken(&self) -> (usize, bool) {
            (self.lane, self.asked)
        }

        fn leave(self) {
            drop(self.leave);
            self.thread.join().unwrap();
        }
    }

    #[test]
    fn the_first_thread_takes_the_first_lane_and_each_next_live_one_a_new_lane() {
        let lanes = Arc::new(Lanes::new(lane("first"), MAX_LANES));
        let mut callers = vec![Caller::arrive(&lanes, None)];
        assert_eq!(callers[0].taken(), (0, false));
        for expected in 1..MAX_LANES {
            let queue = format!("lane-{expected}");
            callers.push(Caller::arrive(&lanes, Some(&queue)));
            assert_eq!(callers[expected].taken(), (expected, true));
            assert_eq!(lanes.ready(expected), expected);
            assert_eq!(lanes.get(expected).queue, queue);
        }
        // Then they are shared, and nothing more is declared.
        callers.push(Caller::arrive(&lanes, Some("x")));
        callers.push(Caller::arrive(&lanes, Some("x")));
        assert_eq!(callers[MAX_LANES].taken(), (0, false));
        assert_eq!(callers[MAX_LANES + 1].taken(), (1, false));
        assert_eq!(lanes.all().count(), MAX_LANES);
        callers.into_iter().for_each(Caller::leave);
    }

    #[test]
    fn a_thread_that_ends_gives_its_lane_to_the_next_new_one() {
        let lanes = Arc::new(Lanes::new(lane("first"), MAX_LANES));
        let first = Caller::arrive(&lanes, None);
        let second = Caller::arrive(&lanes, Some("second"));
        assert_eq!(second.taken(), (1, true));
        second.leave();
        let third = Caller::arrive(&lanes, Some("never"));
        assert_eq!(third.taken(), (1, false), "the declared lane, free again");
        first.leave();
        let fourth = Caller::arrive(&lanes, Some("never"));
        assert_eq!(fourth.taken(), (0, false));
        assert_eq!(lanes.all().count(), 2);
        third.leave();
        fourth.leave();
    }

    #[test]
    fn until_its_lane_is_declared_a_thread_uses_the_first() {
        let lanes = Arc::new(Lanes::new(lane("first"), MAX_LANES));
        let first = Caller::arrive(&lanes, None);
        let second = Caller::arrive(&lanes, None);
        assert_eq!(second.taken(), (1, true));
        assert_eq!(lanes.ready(1), 0);
        assert_eq!(lanes.get(1).queue, "first");
        assert_eq!(lanes.all().count(), 1);
        lanes.declared(1, lane("late"));
        assert_eq!(lanes.ready(1), 1);
        first.leave();
        second.leave();
    }

    #[test]
    fn a_thread_calling_on_several_connections_keeps_its_lane_on_each() {
        let first = Arc::new(Lanes::new(lane("a0"), MAX_LANES));
        let second = Arc::new(Lanes::new(lane("b0"), MAX_LANES));
        let other = Caller::arrive(&first, None);
        let declare =
            |lanes: &Arc<Lanes>| lanes.of_this_thread(|index| lanes.declared(index, lane("new")));
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
        assert_eq!(first.all().count(), 2);
        assert_eq!(second.all().count(), 1);
        other.leave();
    }

    #[test]
    fn a_lane_is_its_threads_own_while_no_other_live_thread_takes_replies_on_it() {
        let lanes = Arc::new(Lanes::new(lane("first"), MAX_LANES));
        assert_eq!(lanes.of_this_thread(|_| panic!("declared already")), 0);
        assert!(lanes.is_own(0));
        // A thread whose lane is not declared yet takes its replies on the first.
        let waiting = Caller::arrive(&lanes, None);
        assert!(!lanes.is_own(0), "another thread's replies may come to it");
        lanes.declared(waiting.lane, lane("second"));
        assert!(lanes.is_own(0));
        let mut others: Vec<Caller> = (2..MAX_LANES)
            .map(|index| Caller::arrive(&lanes, Some(&format!("lane-{index}"))))
            .collect();
        assert!(lanes.is_own(0));
        // Every lane has a thread: the next new one shares the first.
        others.push(Caller::arrive(&lanes, Some("never")));
        assert!(!lanes.is_own(0));
        others.pop().unwrap().leave();
        assert!(lanes.is_own(0), "the thread it shared with ended");
        assert!(!lanes.is_own(1), "not this thread's");
        waiting.leave();
        others.into_iter().for_each(Caller::leave);
    }

    #[test]
    fn a_watched_lane_is_left_to_its_watcher() {
        let lanes = Arc::new(Lanes::new(lane("first"), MAX_LANES));
        let first = Caller::arrive(&lanes, None);
        let second = Caller::arrive(&lanes, Some("second"));
        let queues = |lanes: &Lanes| -> Vec<String> {
            lanes.unwatched().map(|lane| lane.queue.clone()).collect()
        };
        let queue_of = |index| lanes.unwatched_lane(index).map(|lane| lane.queue.clone());
        let watch = lanes.watch(1);
        assert_eq!(queues(&lanes), ["first"]);
        assert_eq!(queue_of(1), None);
        assert_eq!(queue_of(0).as_deref(), Some("first"));
        drop(watch);
        assert_eq!(queues(&lanes), ["first", "second"]);
        assert_eq!(queue_of(1).as_deref(), Some("second"));
        let first_watched = lanes.watch(0);
        assert_eq!(queue_of(5), None, "an undeclared lane is the first one");
        drop(first_watched);
        assert_eq!(queue_of(5).as_deref(), Some("first"));
        first.leave();
        second.leave();
    }

    #[test]
    fn with_one_lane_every_thread_shares_it() {
        let lanes = Arc::new(Lanes::new(lane("amq.rabbitmq.reply-to"), 1));
        let callers: Vec<Caller> = (0..3)
            .map(|_| Caller::arrive(&lanes, Some("never")))
            .collect();
        for caller in &callers {
            assert_eq!(caller.taken(), (0, false));
        }
        callers.into_iter().for_each(Caller::leave);
    }
}
