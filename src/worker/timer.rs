//! Read/write timeouts without a timer future per operation.
//!
//! `monoio::time::timeout` builds a `Sleep` (about 640 bytes, 128-byte aligned) for every read
//! and write, and the futures that hold it are moved with it: some 3,000 instructions of
//! `memcpy` per keep-alive request. Here a worker keeps one table of deadlines instead, nginx
//! style: an operation under [`timeout`] costs a few words in its future; only when the
//! operation has to wait does it take a slot (from a free list: no allocation once the table
//! has grown to the worker's concurrency) and put it into a min-heap ordered by deadline. One
//! task per worker ([`drive`]) sleeps on a single monoio timer until the earliest deadline, marks
//! the slots whose deadline passed and wakes their tasks; the operation then returns
//! [`Elapsed`] and its caller drops the I/O future (an in-flight io_uring operation is
//! cancelled, as before).
//!
//! The driver's timer is re-armed lazily: an operation that completes leaves the driver asleep;
//! a wake-up whose earliest deadline is gone sleeps again until the next one. The driver is
//! woken early only when a new deadline is earlier than the one it sleeps until — rare, since
//! deadlines are "now + a configured timeout".
//!
//! A wait reads no clock. Its slot is listed as fresh, keyed by a lower bound of its deadline
//! (the driver's last reading plus the timeout), and the driver, which reads the clock every
//! [`TICK`] while waits keep coming, gives each fresh slot its deadline from that reading: the
//! timeout counts from a moment no earlier than the wait's start, so it never fires early, and
//! at most a tick late. Under io_uring every read and write waits at least once, so this saves
//! four clock reads per proxied keep-alive request for about 250 driver wake-ups a second.
//! [`timeout_from`] takes a deadline from an instant the caller has.
//!
//! Slots are re-armed lazily too, as a keep-alive connection waits again and again: a slot
//! whose operation completed stays in the heap, parked, and the next operation to wait takes
//! it. Its new deadline (later, as deadlines are "now + a timeout") is only written down; the
//! heap keeps the old, earlier key until the driver meets it and moves it down to the new one.
//! So a wait and its completion cost no heap operation in steady state; a parked slot nobody
//! takes is freed when the driver meets it.
//!
//! Everything is thread-local: a worker is one thread, so there is no lock and nothing is
//! shared.

use std::cell::RefCell;
use std::future::{Future, poll_fn};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// A timeout passed before its operation completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

/// `fut`, abandoned with [`Elapsed`] if it has not completed `after` from its first wait.
///
/// An operation that completes on its first poll costs neither a clock read nor a slot. One
/// that waits reads no clock either: its deadline is `after` from the driver's next reading,
/// at most a [`TICK`] later (so it never fires early, and at most a tick late).
pub fn timeout<F: Future>(after: Duration, fut: F) -> Timeout<F> {
    Timeout {
        fut,
        after,
        from: FirstWait,
        entry: Entry { key: UNSET },
    }
}

/// `fut`, abandoned with [`Elapsed`] if it has not completed by `from + after`: for a caller that
/// has read the clock already, so the deadline costs no second read.
pub fn timeout_from<F: Future, B: Base>(from: B, after: Duration, fut: F) -> Timeout<F, B> {
    Timeout {
        fut,
        after,
        from,
        entry: Entry { key: UNSET },
    }
}

/// Where a deadline counts from: a known instant, or (`None`) the first wait.
pub trait Base: Copy {
    fn known(self) -> Option<Instant>;
}

/// From the first wait, as [`timeout`] (no room taken in the future).
#[derive(Debug, Clone, Copy)]
pub struct FirstWait;

impl Base for FirstWait {
    fn known(self) -> Option<Instant> {
        None
    }
}

impl Base for Instant {
    fn known(self) -> Option<Instant> {
        Some(self)
    }
}

/// An instant when there is one, else the first wait.
impl Base for Option<Instant> {
    fn known(self) -> Option<Instant> {
        self
    }
}

pin_project_lite::pin_project! {
    /// The future of [`timeout`]: the operation is polled where it was placed. (An `async fn`
    /// would copy it twice, into its state and then into a pinned local, on every read and
    /// write.)
    pub struct Timeout<F, B = FirstWait> {
        #[pin]
        fut: F,
        after: Duration,
        from: B,
        entry: Entry,
    }
}

impl<F: Future, B: Base> Future for Timeout<F, B> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.fut.poll(cx) {
            Poll::Ready(v) => Poll::Ready(Ok(v)),
            Poll::Pending => this.entry.poll_elapsed(*this.from, *this.after, cx).map(Err),
        }
    }
}

/// No slot taken yet.
const UNSET: u32 = u32::MAX;
/// The deadline is too far to represent: never fires, no slot.
const NEVER: u32 = u32::MAX - 1;
/// Longer timeouts never fire (and stay clear of the monoio timer's millisecond range).
const FOREVER: Duration = Duration::from_secs(1 << 32);
/// How often the driver reads the clock while operations wait without a deadline yet: the most
/// a [`timeout`] fires late by (besides the worker's own latency).
pub const TICK: Duration = Duration::from_millis(4);
/// Waits listed per tick at most (16 KiB per worker, reserved at the first wait); more within a
/// tick read the clock. 50,000 proxied requests a second list about 800.
const FRESH_CAP: usize = 4096;
/// A slot's heap position when it is not in the heap (free, or fired).
const OUT: u32 = u32::MAX;

/// One operation's claim on the worker's deadline table. Dropping it gives the slot back.
struct Entry {
    key: u32,
}

impl Entry {
    fn poll_elapsed(&mut self, from: impl Base, after: Duration, cx: &mut Context<'_>) -> Poll<Elapsed> {
        match self.key {
            NEVER => Poll::Pending,
            UNSET => {
                if after.is_zero() {
                    return Poll::Ready(Elapsed);
                }
                if after > FOREVER {
                    self.key = NEVER;
                    return Poll::Pending;
                }
                self.key = match from.known() {
                    Some(base) => match base.checked_add(after) {
                        Some(at) => TIMERS.with_borrow_mut(|t| t.insert(at, cx.waker())),
                        None => NEVER,
                    },
                    None => TIMERS.with_borrow_mut(|t| t.insert_unbased(after, cx.waker())),
                };
                Poll::Pending
            }
            key => TIMERS.with_borrow_mut(|t| {
                let slot = &mut t.slots[key as usize];
                if slot.state == State::Fired {
                    return Poll::Ready(Elapsed);
                }
                match &slot.waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => slot.waker = Some(cx.waker().clone()),
                }
                Poll::Pending
            }),
        }
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        if self.key < NEVER {
            // The waker is dropped after the table is released. At thread exit the table may be
            // gone already: dropping its wakers can free the last tasks, whose entries land here.
            let waker = TIMERS
                .try_with(|t| t.try_borrow_mut().ok().and_then(|mut t| t.remove(self.key)))
                .ok()
                .flatten();
            drop(waker);
        }
    }
}

struct Slot {
    /// When the operation times out (a lower bound while `unbased`).
    deadline: Instant,
    /// The operation's timeout, for a deadline the driver takes from its next clock reading.
    after: Duration,
    /// Armed without a clock reading: in `fresh`, waiting for the driver's next one.
    unbased: bool,
    /// The slot's key in the heap: its deadline, or an earlier one (a parked slot re-armed
    /// later, not yet moved down).
    at: Instant,
    waker: Option<Waker>,
    /// Index in the heap, or `OUT`.
    pos: u32,
    state: State,
    /// Next free slot while this one is free.
    next_free: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// On the free list, out of the heap.
    Free,
    /// An operation waits on it; in the heap.
    Armed,
    /// Its deadline passed; out of the heap until its operation drops it.
    Fired,
    /// Its operation completed; still in the heap, ready for the next wait to take.
    Parked,
}

/// A worker's deadlines: slots (reused through a free list) and a min-heap of the slots
/// waiting, by deadline.
struct Timers {
    slots: Vec<Slot>,
    free: u32,
    heap: Vec<u32>,
    /// Slots parked in the heap, most recent last (some may have been freed since: skipped).
    parked: Vec<u32>,
    /// Slots armed without a clock reading since the driver's last (stale ones skipped).
    fresh: Vec<u32>,
    /// The driver's last clock reading.
    last: Option<Instant>,
    /// When the driver's timer fires; `None`: it waits for no deadline.
    armed: Option<Instant>,
    /// The driver task, while it sleeps; `None`: no driver runs on this thread yet.
    driver: Option<Waker>,
    /// Whether a driver task runs on this thread.
    running: bool,
    /// Set when the driver must look at the heap again before sleeping.
    poked: bool,
}

thread_local! {
    static TIMERS: RefCell<Timers> = const {
        RefCell::new(Timers {
            slots: Vec::new(),
            free: UNSET,
            heap: Vec::new(),
            parked: Vec::new(),
            fresh: Vec::new(),
            last: None,
            armed: None,
            driver: None,
            running: false,
            poked: false,
        })
    };
}

impl Timers {
    fn insert(&mut self, deadline: Instant, waker: &Waker) -> u32 {
        let (key, at) = self.arm(deadline, waker);
        // Woken when it sleeps past this deadline (or on no deadline at all).
        self.wake_driver(|t| t.armed.is_none_or(|armed| at < armed));
        key
    }

    /// Arms a slot for `after` from the driver's next clock reading, reading no clock: keyed in
    /// the heap by a lower bound of that deadline and listed in `fresh`, and the driver woken if
    /// it would not read the clock within a [`TICK`].
    fn insert_unbased(&mut self, after: Duration, waker: &Waker) -> u32 {
        if self.fresh.len() == self.fresh.capacity() {
            if self.fresh.capacity() > 0 {
                // More waits within a tick than `fresh` holds: this one reads the clock rather
                // than grow the list (an allocation on the request path).
                return self.insert(Instant::now() + after, waker);
            }
            self.fresh.reserve_exact(FRESH_CAP);
        }
        // Before the driver's first reading (once per thread), the clock itself.
        let (key, _) = self.arm(self.last.unwrap_or_else(Instant::now) + after, waker);
        let s = &mut self.slots[key as usize];
        s.after = after;
        s.unbased = true;
        self.fresh.push(key);
        self.wake_driver(|t| {
            t.armed
                .is_none_or(|armed| t.last.is_none_or(|last| armed > last + TICK))
        });
        key
    }

    /// A slot armed for `waker` until `deadline`: the most recently parked one (up the heap if
    /// `deadline` is earlier than its key) or a free or new one. Returns its key and heap key,
    /// which is never later than `deadline`.
    fn arm(&mut self, deadline: Instant, waker: &Waker) -> (u32, Instant) {
        let Some(key) = self.take_parked() else {
            return (self.insert_new(deadline, waker), deadline);
        };
        let s = &mut self.slots[key as usize];
        s.state = State::Armed;
        s.waker = Some(waker.clone());
        s.deadline = deadline;
        s.unbased = false;
        if deadline < s.at {
            s.at = deadline;
            let pos = s.pos as usize;
            self.sift_up(pos);
        }
        (key, self.slots[key as usize].at)
    }

    /// Starts this thread's driver, or wakes it if `early` says it sleeps too long for what was
    /// just armed.
    fn wake_driver(&mut self, early: impl FnOnce(&Self) -> bool) {
        if !self.running {
            self.running = true;
            monoio::spawn(drive());
        } else if early(self) {
            self.poked = true;
            if let Some(d) = self.driver.take() {
                d.wake();
            }
        }
    }

    /// Gives the slots in `fresh` still armed their deadline, `after` from `now` (never earlier
    /// than their key, a lower bound from an earlier reading). Whether there were any.
    fn base_fresh(&mut self, now: Instant) -> bool {
        let mut fresh = std::mem::take(&mut self.fresh);
        let any = !fresh.is_empty();
        for &key in &fresh {
            let s = &mut self.slots[key as usize];
            if s.state != State::Armed || !s.unbased {
                continue;
            }
            s.unbased = false;
            s.deadline = now + s.after;
        }
        fresh.clear();
        self.fresh = fresh;
        any
    }

    /// The most recently parked slot still parked, if any.
    fn take_parked(&mut self) -> Option<u32> {
        while let Some(key) = self.parked.pop() {
            if self.slots[key as usize].state == State::Parked {
                return Some(key);
            }
        }
        None
    }

    /// A slot from the free list (or a new one), armed and put into the heap.
    fn insert_new(&mut self, deadline: Instant, waker: &Waker) -> u32 {
        let slot = Slot {
            deadline,
            after: Duration::ZERO,
            unbased: false,
            at: deadline,
            waker: Some(waker.clone()),
            pos: self.heap.len() as u32,
            state: State::Armed,
            next_free: UNSET,
        };
        let key = match self.free {
            UNSET => {
                self.slots.push(slot);
                // Room to park every slot: parking never allocates.
                self.parked.reserve(self.slots.len().saturating_sub(self.parked.len()));
                (self.slots.len() - 1) as u32
            }
            key => {
                let s = &mut self.slots[key as usize];
                self.free = s.next_free;
                *s = slot;
                key
            }
        };
        self.heap.push(key);
        self.sift_up(self.heap.len() - 1);
        key
    }

    /// Gives the slot of a dropped operation back: parked in the heap if it is there (for the
    /// next wait to take), else freed. Returns its waker, to be dropped by the caller outside
    /// the table.
    fn remove(&mut self, key: u32) -> Option<Waker> {
        let pos = self.slots[key as usize].pos;
        if pos == OUT {
            return self.free_slot(key);
        }
        if self.parked.len() == self.parked.capacity() {
            // Marks of slots freed since (or parked twice): dropped rather than grow the list.
            let slots = &self.slots;
            self.parked.retain(|&k| slots[k as usize].state == State::Parked);
        }
        if self.parked.len() < self.parked.capacity() {
            let s = &mut self.slots[key as usize];
            s.state = State::Parked;
            self.parked.push(key);
            return s.waker.take();
        }
        // Still full (a slot parked twice): out of the heap and freed, as without parking.
        self.heap_remove(pos as usize);
        self.slots[key as usize].pos = OUT;
        self.free_slot(key)
    }

    /// Puts a slot out of the heap on the free list; returns its waker.
    fn free_slot(&mut self, key: u32) -> Option<Waker> {
        let free = self.free;
        let s = &mut self.slots[key as usize];
        s.state = State::Free;
        s.next_free = free;
        self.free = key;
        s.waker.take()
    }

    /// Marks the slots whose deadline is not after `now` as fired and wakes their tasks.
    /// Returns the earliest deadline left.
    /// Frees the parked slots met on the way, and moves re-armed ones to their new deadline.
    fn fire(&mut self, now: Instant) -> Option<Instant> {
        while let Some(&key) = self.heap.first() {
            let s = &mut self.slots[key as usize];
            if s.at > now {
                return Some(s.at);
            }
            if s.state == State::Armed && s.deadline > now {
                s.at = s.deadline;
                self.sift_down(0);
                continue;
            }
            self.heap_remove(0);
            let s = &mut self.slots[key as usize];
            s.pos = OUT;
            if s.state == State::Parked {
                // Nobody took it: its stale entry in `parked` is skipped.
                drop(self.free_slot(key));
                continue;
            }
            s.state = State::Fired;
            if let Some(w) = s.waker.take() {
                w.wake();
            }
        }
        None
    }

    fn deadline_at(&self, pos: usize) -> Instant {
        self.slots[self.heap[pos] as usize].at
    }

    fn set(&mut self, pos: usize, key: u32) {
        self.heap[pos] = key;
        self.slots[key as usize].pos = pos as u32;
    }

    fn heap_remove(&mut self, pos: usize) {
        let last = self.heap.pop().expect("a slot in the heap");
        if pos < self.heap.len() {
            self.set(pos, last);
            self.sift_down(pos);
            self.sift_up(pos);
        }
    }

    fn sift_up(&mut self, mut pos: usize) {
        let key = self.heap[pos];
        let d = self.slots[key as usize].at;
        while pos > 0 {
            let parent = (pos - 1) / 2;
            if self.deadline_at(parent) <= d {
                break;
            }
            let p = self.heap[parent];
            self.set(pos, p);
            pos = parent;
        }
        self.set(pos, key);
    }

    fn sift_down(&mut self, mut pos: usize) {
        let key = self.heap[pos];
        let d = self.slots[key as usize].at;
        let n = self.heap.len();
        loop {
            let l = 2 * pos + 1;
            if l >= n {
                break;
            }
            let r = l + 1;
            let c = if r < n && self.deadline_at(r) < self.deadline_at(l) {
                r
            } else {
                l
            };
            if self.deadline_at(c) >= d {
                break;
            }
            let k = self.heap[c];
            self.set(pos, k);
            pos = c;
        }
        self.set(pos, key);
    }
}

/// Marks the thread's driver gone when its task ends (its runtime is dropped).
struct Running;

impl Drop for Running {
    fn drop(&mut self) {
        let _ = TIMERS.try_with(|t| {
            if let Ok(mut t) = t.try_borrow_mut() {
                t.running = false;
                t.armed = None;
                t.driver = None;
            }
        });
    }
}

/// The worker's timer task, started by the first operation that waits: sleeps until the
/// earliest deadline (or until a new, earlier one comes) and fires what passed.
async fn drive() {
    let _running = Running;
    loop {
        let next = TIMERS.with_borrow_mut(|t| {
            t.poked = false;
            let now = Instant::now();
            t.last = Some(now);
            // Operations armed since the last reading: keep reading every tick while they come.
            let tick = t.base_fresh(now).then_some(now + TICK);
            let next = match (t.fire(now), tick) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            t.armed = next;
            next
        });
        let poked = poll_fn(|cx| {
            TIMERS.with_borrow_mut(|t| {
                if t.poked {
                    Poll::Ready(())
                } else {
                    t.driver = Some(cx.waker().clone());
                    Poll::Pending
                }
            })
        });
        match next {
            Some(at) => {
                monoio::select! {
                    _ = monoio::time::sleep_until(at.into()) => {}
                    _ = poked => {}
                }
            }
            None => poked.await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::pending;

    fn run<F: Future>(f: F) -> F::Output {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    /// Pending on its first poll, ready on the next.
    async fn yield_once() {
        let mut yielded = false;
        poll_fn(|cx| {
            if yielded {
                Poll::Ready(())
            } else {
                yielded = true;
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        })
        .await;
    }

    /// (slots, free, armed in the heap, parked in the heap)
    fn table() -> (usize, usize, usize, usize) {
        TIMERS.with_borrow(|t| {
            let mut free = 0;
            let mut k = t.free;
            while k != UNSET {
                assert_eq!(t.slots[k as usize].state, State::Free);
                free += 1;
                k = t.slots[k as usize].next_free;
            }
            let parked = t
                .heap
                .iter()
                .filter(|&&k| t.slots[k as usize].state == State::Parked)
                .count();
            (t.slots.len(), free, t.heap.len() - parked, parked)
        })
    }

    #[test]
    fn a_ready_operation_takes_no_slot() {
        run(async {
            assert_eq!(timeout(Duration::from_secs(1), async { 7 }).await, Ok(7));
        });
        assert_eq!(table(), (0, 0, 0, 0));
    }

    #[test]
    fn slots_are_reused_and_left_parked() {
        run(async {
            for _ in 0..100 {
                assert_eq!(timeout(Duration::from_secs(5), yield_once()).await, Ok(()));
            }
            assert_eq!(table(), (1, 0, 0, 1), "one slot, reused, parked in the heap");
        });
    }

    /// When a deadline fires relative to the clock is checked without a clock in
    /// `the_heap_keeps_deadlines_in_order_through_removals`; here the driver task does it.
    #[test]
    fn a_stalled_operation_times_out_and_frees_its_slot() {
        run(async {
            let t0 = Instant::now();
            let r = timeout(Duration::from_millis(50), pending::<()>()).await;
            assert_eq!(r, Err(Elapsed));
            // Its deadline came from the driver's reading after the wait began: never early.
            assert!(
                t0.elapsed() >= Duration::from_millis(50),
                "fired early: {:?}",
                t0.elapsed()
            );
            assert_eq!(table(), (1, 1, 0, 0));
        });
    }

    /// A deadline from a given instant: one already passed elapses at the first wait; the
    /// instant, not the first wait, is its base.
    #[test]
    fn a_deadline_from_an_instant_counts_from_it() {
        run(async {
            let long_ago = Instant::now()
                .checked_sub(Duration::from_secs(10))
                .unwrap_or_else(Instant::now);
            let r = timeout_from(long_ago, Duration::from_secs(5), pending::<()>()).await;
            assert_eq!(r, Err(Elapsed));
            let t0 = Instant::now();
            let r = timeout_from(t0, Duration::from_millis(30), pending::<()>()).await;
            assert_eq!(r, Err(Elapsed));
            assert!(
                t0.elapsed() >= Duration::from_millis(30),
                "fired early: {:?}",
                t0.elapsed()
            );
            assert_eq!(timeout_from(long_ago, Duration::from_secs(1), async { 3 }).await, Ok(3));
        });
    }

    #[test]
    fn an_endless_timeout_takes_no_slot() {
        run(async {
            assert_eq!(timeout(Duration::MAX, yield_once()).await, Ok(()));
        });
        assert_eq!(table(), (0, 0, 0, 0));
    }

    #[test]
    fn a_zero_timeout_elapses_once_the_operation_waits() {
        run(async {
            assert_eq!(timeout(Duration::ZERO, async { 1 }).await, Ok(1));
            assert_eq!(timeout(Duration::ZERO, pending::<()>()).await, Err(Elapsed));
        });
    }

    #[test]
    fn an_earlier_deadline_wakes_the_driver_sleeping_on_a_later_one() {
        run(async {
            // The driver sleeps until this one's deadline, a minute away.
            let long = monoio::spawn(timeout(Duration::from_secs(60), pending::<()>()));
            // Let the other tasks run until the driver sleeps on the long deadline (a task that
            // wakes itself is polled again before the others: wait on another task instead).
            let mut turns = 0;
            while TIMERS.with_borrow(|t| t.armed).is_none() {
                turns += 1;
                assert!(turns < 100, "the driver never armed its timer");
                monoio::spawn(async {}).await;
            }
            assert_eq!(table().2, 1, "the long wait is in the heap");
            monoio::select! {
                r = timeout(Duration::from_millis(20), pending::<()>()) => assert_eq!(r, Err(Elapsed)),
                _ = monoio::time::sleep(Duration::from_secs(10)) => panic!("the short timeout did not fire"),
            }
            drop(long);
        });
    }

    /// Several waits at once each get their `Elapsed` and give their slot back (their order
    /// against the clock: the heap test below).
    #[test]
    fn concurrent_deadlines_all_fire() {
        run(async {
            let at = |ms| timeout(Duration::from_millis(ms), pending::<()>());
            let (a, b, c) = monoio::join!(at(60), at(20), at(40));
            assert_eq!([a, b, c], [Err(Elapsed); 3]);
            assert_eq!(table().2, 0, "nothing left in the heap");
        });
    }

    #[test]
    fn the_heap_keeps_deadlines_in_order_through_removals() {
        TIMERS.with_borrow_mut(|t| t.running = true); // no driver task: fired by hand below
        let base = Instant::now();
        let waker = Waker::noop();
        // A fixed shuffle of 0..64 (37 is coprime to 64).
        let keys: Vec<(u64, u32)> = (0..64u64)
            .map(|i| {
                let ms = (i * 37) % 64;
                (
                    ms,
                    TIMERS.with_borrow_mut(|t| t.insert(base + Duration::from_millis(ms), waker)),
                )
            })
            .collect();
        // Remove every third, from the middle of the heap as much as from its ends.
        let mut left: Vec<u64> = Vec::new();
        for (i, &(ms, key)) in keys.iter().enumerate() {
            if i % 3 == 0 {
                TIMERS.with_borrow_mut(|t| t.remove(key));
            } else {
                left.push(ms);
            }
        }
        left.sort_unstable();
        let mut fired = Vec::new();
        for ms in 0..64u64 {
            let now = base + Duration::from_millis(ms);
            let next = TIMERS.with_borrow_mut(|t| t.fire(now));
            let count = keys
                .iter()
                .filter(|&&(_, k)| TIMERS.with_borrow(|t| t.slots[k as usize].state == State::Fired))
                .count();
            while fired.len() < count {
                fired.push(ms);
            }
            if let Some(n) = next {
                assert!(n > now);
            }
        }
        assert_eq!(fired, left, "each deadline fired at its time, none removed fired");
        let (_, free, armed, parked) = table();
        assert_eq!(
            (free, armed, parked),
            (keys.len() - left.len(), 0, 0),
            "the parked ones freed"
        );
    }

    /// A wait armed without a clock reading, by hand: keyed at the lower bound (the driver's last
    /// reading plus its timeout), its deadline from the next reading; a parked slot whose key is
    /// later than that lower bound moved up to it.
    #[test]
    fn a_wait_gets_its_deadline_from_the_drivers_next_reading() {
        let base = Instant::now();
        let at = |ms| base + Duration::from_millis(ms);
        TIMERS.with_borrow_mut(|t| {
            t.running = true; // no driver task: read and fired by hand below
            t.last = Some(base);
        });
        let waker = Waker::noop();
        let slot = |k: u32| TIMERS.with_borrow(|t| (t.slots[k as usize].state, t.slots[k as usize].deadline));
        let fire = |ms| TIMERS.with_borrow_mut(|t| t.fire(at(ms)));
        let remove = |k| drop(TIMERS.with_borrow_mut(|t| t.remove(k)));
        let reading = |ms| TIMERS.with_borrow_mut(|t| t.base_fresh(at(ms)));

        let a = TIMERS.with_borrow_mut(|t| t.insert_unbased(Duration::from_millis(10), waker));
        assert_eq!(slot(a), (State::Armed, at(10)), "keyed at the lower bound");
        assert!(reading(3), "a fresh slot");
        assert_eq!(slot(a), (State::Armed, at(13)), "10 ms from the reading");
        assert_eq!(fire(12), Some(at(13)), "moved down to its deadline, not fired");
        assert_eq!(fire(13), None);
        assert_eq!(slot(a).0, State::Fired);
        remove(a);
        assert!(!reading(14), "nothing fresh");

        let b = TIMERS.with_borrow_mut(|t| t.insert(at(100), waker));
        remove(b);
        let c = TIMERS.with_borrow_mut(|t| t.insert_unbased(Duration::from_millis(5), waker));
        assert_eq!(c, b, "the parked slot taken again");
        assert!(reading(20));
        assert_eq!(slot(c), (State::Armed, at(25)));
        assert_eq!(fire(25), None, "moved up to its lower bound, fired at 25");
        assert_eq!(slot(c).0, State::Fired);
        remove(c);
        assert_eq!(table(), (1, 1, 0, 0));
    }

    /// More waits within a tick than `fresh` holds: the one past it reads the clock, and the
    /// list does not grow (no allocation on the request path).
    #[test]
    fn a_full_fresh_list_reads_the_clock_instead_of_growing() {
        TIMERS.with_borrow_mut(|t| t.running = true); // no driver task
        let waker = Waker::noop();
        let after = Duration::from_secs(5);
        let keys: Vec<u32> = (0..FRESH_CAP)
            .map(|_| TIMERS.with_borrow_mut(|t| t.insert_unbased(after, waker)))
            .collect();
        let cap = TIMERS.with_borrow(|t| t.fresh.capacity());
        assert!(cap >= FRESH_CAP);
        let extra: Vec<u32> = (0..cap - FRESH_CAP + 1)
            .map(|_| TIMERS.with_borrow_mut(|t| t.insert_unbased(after, waker)))
            .collect();
        let before = Instant::now();
        TIMERS.with_borrow(|t| {
            assert_eq!(t.fresh.len(), cap, "full, not grown");
            assert_eq!(t.fresh.capacity(), cap);
            let last = &t.slots[*extra.last().unwrap() as usize];
            assert!(!last.unbased, "the wait past the list has its deadline");
            assert!(last.deadline <= before + after && last.deadline + Duration::from_secs(1) > before + after);
            assert!(t.slots[keys[0] as usize].unbased);
        });
    }

    /// Parked slots taken again, by hand: a later deadline only written down and honoured when
    /// the driver meets the old key; an earlier one moved up at once; one nobody took freed.
    #[test]
    fn parked_slots_are_re_armed_lazily_and_freed_when_met() {
        TIMERS.with_borrow_mut(|t| t.running = true); // no driver task: fired by hand below
        let base = Instant::now();
        let at = |ms| base + Duration::from_millis(ms);
        let waker = Waker::noop();
        let state = |k: u32| TIMERS.with_borrow(|t| t.slots[k as usize].state);
        let fire = |ms| TIMERS.with_borrow_mut(|t| t.fire(at(ms)));
        let insert = |ms| TIMERS.with_borrow_mut(|t| t.insert(at(ms), waker));
        let remove = |k| drop(TIMERS.with_borrow_mut(|t| t.remove(k)));

        // Later: the heap keeps 10 until the driver meets it.
        let a = insert(10);
        remove(a);
        assert_eq!(state(a), State::Parked);
        assert_eq!(insert(50), a, "the parked slot is taken again");
        assert_eq!(fire(20), Some(at(50)), "moved to its new deadline, not fired");
        assert_eq!(state(a), State::Armed);
        assert_eq!(fire(49), Some(at(50)));
        assert_eq!(fire(50), None);
        assert_eq!(state(a), State::Fired);
        remove(a);
        assert_eq!(table(), (1, 1, 0, 0));

        // Earlier: up the heap at once, ahead of a slot armed before it.
        let b = insert(30); // from the free list: `a`'s slot
        let c = insert(40);
        remove(c);
        assert_eq!(insert(5), c);
        assert_eq!(fire(5), Some(at(30)));
        assert_eq!((state(c), state(b)), (State::Fired, State::Armed));
        remove(c);

        // Parked and not taken: freed when met; its stale mark is skipped.
        remove(b);
        assert_eq!(fire(30), None);
        assert_eq!(state(b), State::Free);
        let d = insert(70);
        assert_eq!(state(d), State::Armed);
        assert_eq!(table(), (2, 1, 1, 0));
        remove(d);
        assert_eq!(fire(70), None);
        assert_eq!(table(), (2, 2, 0, 0));
    }
}
