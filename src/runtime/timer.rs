//! A hashed timer wheel holding every timer of the node's event loop.
//!
//! The mio loop sleeps until [`TimerWheel::next_deadline`] and then calls
//! [`TimerWheel::expire`] with the current time, so an idle node wakes only when a timer is due.
//! Time is milliseconds from an origin of the caller's choosing; the wheel never reads a clock,
//! so tests drive it with plain numbers.
//!
//! Layout. 512 one-millisecond slots cover the window of 512 ms after the last expiry. A timer
//! due inside the window is linked into the slot for its deadline; because the window is exactly
//! as wide as the wheel, each slot holds timers of one deadline only, in insertion order. Timers
//! due beyond the window, or already overdue when inserted, wait in an overflow min-heap ordered
//! by deadline and then insertion. Each time the window moves, overflow timers that now fall
//! inside it move into their slot, before any newer timer can join that slot, so a slot stays in
//! insertion order. An occupancy bitmap finds the next non-empty slot in a few word operations,
//! so neither [`TimerWheel::next_deadline`] nor a large jump in time walks the slots one by one.
//!
//! Timers live in a slab with a free list, so an insert reuses memory rather than allocating.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt;
use std::mem;

/// Number of one-millisecond slots, which is also the width of the window in ms.
const SLOT_COUNT: usize = 512;

/// Words in the occupancy bitmap, one bit per slot.
const BITMAP_WORDS: usize = SLOT_COUNT / 64;

/// Most timers pending at once. A node needs a handful per peer, so reaching this means timers
/// leak; it also keeps every slab index well inside a `u32`.
pub const MAX_TIMERS: usize = (1 << 20) - 1;

/// Cancelled timers left in the overflow heap before it is worth compacting.
const OVERFLOW_STALE_MIN: usize = 64;

/// "No entry" in slab links and the free list.
const NIL: u32 = u32::MAX;

/// Names one inserted timer, for [`TimerWheel::cancel`].
///
/// Holds the slab index in the low 32 bits and that entry's generation in the high 32 bits, so
/// an id whose timer has fired or been cancelled no longer matches once the entry is reused.
// Known gap: a generation wraps after 2^32 reuses of one entry, after which a very old id could
// cancel an unrelated timer; at thousands of timers a second that takes years.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimerId(u64);

impl TimerId {
    /// Packs an entry index and its current generation.
    fn new(index: u32, generation: u32) -> Self {
        TimerId((u64::from(generation) << 32) | u64::from(index))
    }

    /// The slab index this id points at.
    fn index(self) -> u32 {
        // Truncation keeps exactly the low half, where `new` put the index.
        self.0 as u32
    }

    /// The generation the entry had when this id was issued.
    fn generation(self) -> u32 {
        (self.0 >> 32) as u32
    }
}

/// One slab entry: a pending timer or a link in the free list.
struct Entry<T> {
    /// Bumped each time the entry is released, so stale [`TimerId`]s stop matching.
    generation: u32,
    state: State<T>,
}

enum State<T> {
    Free { next_free: u32 },
    Pending(Pending<T>),
}

struct Pending<T> {
    deadline_ms: u64,
    /// Insertion order, unique for the life of the wheel; breaks ties between equal deadlines and
    /// tells a live overflow key from one left behind by a cancelled timer.
    seq: u64,
    value: T,
    place: Place,
}

/// Where a pending timer is filed.
#[derive(Clone, Copy)]
enum Place {
    /// In the slot for its deadline, in a doubly linked list of slab indices.
    Wheel { prev: u32, next: u32 },
    /// In the overflow heap.
    Overflow,
}

/// An overflow heap key; field order gives the ordering: deadline, then insertion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct OverflowKey {
    deadline_ms: u64,
    seq: u64,
    index: u32,
}

/// All pending timers of one event loop, each carrying a value of type `T`.
pub struct TimerWheel<T> {
    /// Time of the last [`TimerWheel::expire`], or of creation. Never decreases.
    ///
    /// Invariant: a timer is in a wheel slot exactly when its deadline lies in the window
    /// `elapsed_ms + 1 ..= elapsed_ms + 512`; all others are in `overflow`.
    elapsed_ms: u64,
    entries: Vec<Entry<T>>,
    /// Head of the free list threaded through `entries`, or `NIL`.
    free_head: u32,
    /// Pending timers, wherever they are filed.
    len: usize,
    next_seq: u64,
    /// First and last entry of each slot's list, or `NIL` when the slot is empty.
    heads: [u32; SLOT_COUNT],
    tails: [u32; SLOT_COUNT],
    /// Bit `s` is set exactly when slot `s` is non-empty.
    occupied: [u64; BITMAP_WORDS],
    /// Overdue and far-future timers. Cancelling leaves the key behind (a heap cannot remove
    /// from the middle cheaply); such stale keys are skipped when popped.
    ///
    /// Invariant: the top key, if any, is live, so `next_deadline` can trust it.
    overflow: BinaryHeap<Reverse<OverflowKey>>,
    /// Stale keys in `overflow`, to know when compacting pays.
    overflow_stale: usize,
}

impl<T> TimerWheel<T> {
    /// An empty wheel whose clock reads `now_ms`.
    pub fn new(now_ms: u64) -> Self {
        TimerWheel {
            elapsed_ms: now_ms,
            entries: Vec::new(),
            free_head: NIL,
            len: 0,
            next_seq: 0,
            heads: [NIL; SLOT_COUNT],
            tails: [NIL; SLOT_COUNT],
            occupied: [0; BITMAP_WORDS],
            overflow: BinaryHeap::new(),
            overflow_stale: 0,
        }
    }

    /// Adds a timer that fires at `deadline_ms`. A deadline at or before the last `expire` time
    /// fires at the next `expire`.
    ///
    /// # Panics
    ///
    /// If [`MAX_TIMERS`] timers are already pending, which means the caller leaks timers.
    pub fn insert(&mut self, deadline_ms: u64, value: T) -> TimerId {
        assert!(
            self.len < MAX_TIMERS,
            "timer wheel full: {} timers pending, bound is {MAX_TIMERS}",
            self.len
        );
        let seq = self.next_seq;
        self.next_seq += 1;

        let in_window = self.in_window(deadline_ms);
        let place = if in_window {
            Place::Wheel {
                prev: NIL,
                next: NIL,
            }
        } else {
            Place::Overflow
        };
        let index = self.allocate(Pending {
            deadline_ms,
            seq,
            value,
            place,
        });
        if in_window {
            self.link(index, deadline_ms);
        } else {
            self.overflow.push(Reverse(OverflowKey {
                deadline_ms,
                seq,
                index,
            }));
        }
        self.len += 1;
        TimerId::new(index, self.entries[index as usize].generation)
    }

    /// Removes a timer before it fires and returns its value; `None` if it already fired or was
    /// cancelled.
    pub fn cancel(&mut self, id: TimerId) -> Option<T> {
        let index = id.index();
        let entry = self.entries.get(index as usize)?;
        if entry.generation != id.generation() {
            return None;
        }
        let State::Pending(pending) = &entry.state else {
            return None;
        };
        match pending.place {
            Place::Wheel { .. } => self.unlink(index),
            Place::Overflow => self.overflow_stale += 1,
        }
        let (_, value) = self.release(index);
        self.tidy_overflow();
        Some(value)
    }

    /// Number of pending timers.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no timer is pending.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The earliest pending deadline, exactly; it may already be past. `None` when empty.
    ///
    /// Costs one heap peek and a scan of the 8-word occupancy bitmap.
    pub fn next_deadline(&self) -> Option<u64> {
        let wheel = self
            .first_occupied_slot()
            .map(|slot| self.pending(self.heads[slot]).deadline_ms);
        let overflow = self.overflow.peek().map(|Reverse(key)| {
            debug_assert!(
                overflow_key_is_live(&self.entries, key),
                "stale overflow top"
            );
            key.deadline_ms
        });
        match (wheel, overflow) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Moves every timer due at or before `now_ms` into `out`, in deadline order, equal
    /// deadlines in insertion order. Work is proportional to the timers that fire (and to those
    /// that enter the window), not to the time that passed.
    ///
    /// # Panics
    ///
    /// If `now_ms` is before the previous `expire` time: the caller's clock must be monotonic.
    pub fn expire(&mut self, now_ms: u64, out: &mut Vec<(TimerId, T)>) {
        assert!(
            now_ms >= self.elapsed_ms,
            "time went backwards: expire({now_ms}) after expire({})",
            self.elapsed_ms
        );
        // The filing invariant splits pending timers into three deadline ranges, each after the
        // one before: overdue ones in overflow, the window in the wheel, the rest in overflow.
        // Draining them in that order therefore yields one sorted sequence.
        self.drain_overflow(self.elapsed_ms, out);
        self.drain_wheel(now_ms, out);
        self.drain_overflow(now_ms, out);

        self.elapsed_ms = now_ms;
        self.admit_overflow();
        self.tidy_overflow();
    }

    /// Whether `deadline_ms` falls in the window the wheel slots cover.
    fn in_window(&self, deadline_ms: u64) -> bool {
        deadline_ms > self.elapsed_ms && deadline_ms - self.elapsed_ms <= SLOT_COUNT as u64
    }

    /// Stores `pending` in a free slab entry, growing the slab only when none is free.
    fn allocate(&mut self, pending: Pending<T>) -> u32 {
        if self.free_head == NIL {
            let index = self.entries.len() as u32;
            self.entries.push(Entry {
                generation: 0,
                state: State::Pending(pending),
            });
            return index;
        }
        let index = self.free_head;
        let entry = &mut self.entries[index as usize];
        let State::Free { next_free } = entry.state else {
            panic!("free list entry {index} is not free");
        };
        entry.state = State::Pending(pending);
        self.free_head = next_free;
        index
    }

    /// Frees entry `index`, returning the id it had and its value.
    fn release(&mut self, index: u32) -> (TimerId, T) {
        let entry = &mut self.entries[index as usize];
        let next_free = self.free_head;
        let State::Pending(pending) = mem::replace(&mut entry.state, State::Free { next_free })
        else {
            panic!("timer entry {index} released twice");
        };
        let id = TimerId::new(index, entry.generation);
        entry.generation = entry.generation.wrapping_add(1);
        self.free_head = index;
        self.len -= 1;
        (id, pending.value)
    }

    /// The pending timer at `index`; a free entry here means the links are corrupt.
    fn pending(&self, index: u32) -> &Pending<T> {
        match &self.entries[index as usize].state {
            State::Pending(pending) => pending,
            State::Free { .. } => panic!("timer entry {index} is free but still linked"),
        }
    }

    /// Mutable form of [`Self::pending`].
    fn pending_mut(&mut self, index: u32) -> &mut Pending<T> {
        match &mut self.entries[index as usize].state {
            State::Pending(pending) => pending,
            State::Free { .. } => panic!("timer entry {index} is free but still linked"),
        }
    }

    /// The `(prev, next)` links of a timer filed in the wheel.
    fn links_mut(&mut self, index: u32) -> (&mut u32, &mut u32) {
        match &mut self.pending_mut(index).place {
            Place::Wheel { prev, next } => (prev, next),
            Place::Overflow => panic!("timer entry {index} is in overflow, not in a slot"),
        }
    }

    /// Appends entry `index` to the slot of `deadline_ms`, which must be in the window.
    fn link(&mut self, index: u32, deadline_ms: u64) {
        let slot = slot_of(deadline_ms);
        let tail = self.tails[slot];
        debug_assert!(
            tail == NIL || self.pending(tail).deadline_ms == deadline_ms,
            "slot {slot} mixes deadlines"
        );
        *self.links_mut(index).0 = tail;
        if tail == NIL {
            self.heads[slot] = index;
            self.occupied[slot / 64] |= 1 << (slot % 64);
        } else {
            *self.links_mut(tail).1 = index;
        }
        self.tails[slot] = index;
    }

    /// Takes entry `index` out of its slot's list.
    fn unlink(&mut self, index: u32) {
        let slot = slot_of(self.pending(index).deadline_ms);
        let (prev, next) = {
            let (prev, next) = self.links_mut(index);
            (*prev, *next)
        };
        if prev == NIL {
            self.heads[slot] = next;
        } else {
            *self.links_mut(prev).1 = next;
        }
        if next == NIL {
            self.tails[slot] = prev;
        } else {
            *self.links_mut(next).0 = prev;
        }
        if self.heads[slot] == NIL {
            self.occupied[slot / 64] &= !(1 << (slot % 64));
        }
    }

    /// The non-empty slot holding the earliest deadline of the window, if any.
    fn first_occupied_slot(&self) -> Option<usize> {
        // Wrapping is safe: 512 divides 2^64, so slot numbers stay consistent across the wrap.
        let start = slot_of(self.elapsed_ms.wrapping_add(1));
        let (word, bit) = (start / 64, start % 64);
        let at_or_after_start = self.occupied[word] & (u64::MAX << bit);
        if at_or_after_start != 0 {
            return Some(word * 64 + at_or_after_start.trailing_zeros() as usize);
        }
        for step in 1..BITMAP_WORDS {
            let w = (word + step) % BITMAP_WORDS;
            if self.occupied[w] != 0 {
                return Some(w * 64 + self.occupied[w].trailing_zeros() as usize);
            }
        }
        // Last, the bits of the start word before `start`: the window's end wraps round to them.
        let before_start = self.occupied[word] & !(u64::MAX << bit);
        (before_start != 0).then(|| word * 64 + before_start.trailing_zeros() as usize)
    }

    /// Fires wheel slots in window order while their deadline is at or before `now_ms`.
    fn drain_wheel(&mut self, now_ms: u64, out: &mut Vec<(TimerId, T)>) {
        while let Some(slot) = self.first_occupied_slot() {
            if self.pending(self.heads[slot]).deadline_ms > now_ms {
                break;
            }
            let mut index = self.heads[slot];
            self.heads[slot] = NIL;
            self.tails[slot] = NIL;
            self.occupied[slot / 64] &= !(1 << (slot % 64));
            while index != NIL {
                let next = *self.links_mut(index).1;
                out.push(self.release(index));
                index = next;
            }
        }
    }

    /// Fires overflow timers due at or before `limit_ms`, dropping stale keys on the way.
    fn drain_overflow(&mut self, limit_ms: u64, out: &mut Vec<(TimerId, T)>) {
        while let Some(&Reverse(key)) = self.overflow.peek() {
            if key.deadline_ms > limit_ms {
                break;
            }
            self.overflow.pop();
            if overflow_key_is_live(&self.entries, &key) {
                out.push(self.release(key.index));
            } else {
                self.overflow_stale -= 1;
            }
        }
    }

    /// Moves overflow timers that the window now covers into their slots.
    fn admit_overflow(&mut self) {
        let horizon_ms = self.elapsed_ms.saturating_add(SLOT_COUNT as u64);
        while let Some(&Reverse(key)) = self.overflow.peek() {
            if key.deadline_ms > horizon_ms {
                break;
            }
            self.overflow.pop();
            if !overflow_key_is_live(&self.entries, &key) {
                self.overflow_stale -= 1;
                continue;
            }
            debug_assert!(
                key.deadline_ms > self.elapsed_ms,
                "due timer left in overflow"
            );
            self.pending_mut(key.index).place = Place::Wheel {
                prev: NIL,
                next: NIL,
            };
            self.link(key.index, key.deadline_ms);
        }
    }

    /// Restores the live-top invariant and compacts the heap once stale keys outnumber live
    /// ones, so cancelling far-future timers in a loop cannot grow it without bound.
    fn tidy_overflow(&mut self) {
        while let Some(&Reverse(key)) = self.overflow.peek() {
            if overflow_key_is_live(&self.entries, &key) {
                break;
            }
            self.overflow.pop();
            self.overflow_stale -= 1;
        }
        if self.overflow_stale > OVERFLOW_STALE_MIN && self.overflow_stale * 2 > self.overflow.len()
        {
            let entries = &self.entries;
            self.overflow
                .retain(|Reverse(key)| overflow_key_is_live(entries, key));
            self.overflow_stale = 0;
        }
    }
}

impl<T> fmt::Debug for TimerWheel<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimerWheel")
            .field("elapsed_ms", &self.elapsed_ms)
            .field("len", &self.len)
            .field("next_deadline", &self.next_deadline())
            .finish_non_exhaustive()
    }
}

/// The slot that holds timers due at `deadline_ms`.
fn slot_of(deadline_ms: u64) -> usize {
    (deadline_ms % SLOT_COUNT as u64) as usize
}

/// Whether an overflow key still belongs to a pending timer. Sequence numbers are never reused,
/// so a match cannot be a newer timer that took over the same entry.
fn overflow_key_is_live<T>(entries: &[Entry<T>], key: &OverflowKey) -> bool {
    matches!(&entries[key.index as usize].state, State::Pending(p) if p.seq == key.seq)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    /// Runs `expire(now)` and returns the fired values.
    fn fire<T>(wheel: &mut TimerWheel<T>, now_ms: u64) -> Vec<T> {
        let mut out = Vec::new();
        wheel.expire(now_ms, &mut out);
        out.into_iter().map(|(_, value)| value).collect()
    }

    #[test]
    fn fires_in_deadline_order_with_ties_in_insertion_order() {
        let mut wheel = TimerWheel::new(1_000);
        for (deadline, name) in [
            (1_030, "c"),
            (1_010, "a"),
            (1_030, "d"),
            (1_020, "b"),
            (1_010, "a2"),
        ] {
            wheel.insert(deadline, name);
        }
        assert_eq!(wheel.len(), 5);
        assert_eq!(fire(&mut wheel, 1_009), Vec::<&str>::new());
        assert_eq!(fire(&mut wheel, 1_010), ["a", "a2"]);
        assert_eq!(fire(&mut wheel, 1_100), ["b", "c", "d"]);
        assert!(wheel.is_empty());
        assert_eq!(wheel.next_deadline(), None);
    }

    #[test]
    fn expire_returns_the_ids_insert_gave() {
        let mut wheel = TimerWheel::new(0);
        let first = wheel.insert(5, 'x');
        let second = wheel.insert(700, 'y');
        let mut out = Vec::new();
        wheel.expire(1_000, &mut out);
        assert_eq!(out, [(first, 'x'), (second, 'y')]);
    }

    #[test]
    fn cancel_returns_the_value_once() {
        let mut wheel = TimerWheel::new(0);
        let near = wheel.insert(10, "near");
        let far = wheel.insert(10_000, "far");
        let kept = wheel.insert(10, "kept");
        assert_eq!(wheel.cancel(near), Some("near"));
        assert_eq!(wheel.cancel(near), None);
        assert_eq!(wheel.cancel(far), Some("far"));
        assert_eq!(wheel.cancel(far), None);
        assert_eq!(wheel.len(), 1);
        assert_eq!(fire(&mut wheel, 20_000), ["kept"]);
        assert_eq!(
            wheel.cancel(kept),
            None,
            "a fired timer cannot be cancelled"
        );
    }

    #[test]
    fn stale_id_does_not_cancel_the_entry_reuser() {
        let mut wheel = TimerWheel::new(0);
        let old = wheel.insert(10, 1);
        assert_eq!(wheel.cancel(old), Some(1));
        let new = wheel.insert(10, 2);
        assert_eq!(new.index(), old.index(), "the slab entry should be reused");
        assert_eq!(wheel.cancel(old), None);
        assert_eq!(wheel.cancel(new), Some(2));
    }

    #[test]
    fn cancel_from_middle_head_and_tail_of_a_slot() {
        let mut wheel = TimerWheel::new(0);
        let ids: Vec<_> = (0..5).map(|n| wheel.insert(50, n)).collect();
        assert_eq!(wheel.cancel(ids[2]), Some(2));
        assert_eq!(wheel.cancel(ids[0]), Some(0));
        assert_eq!(wheel.cancel(ids[4]), Some(4));
        wheel.insert(50, 5);
        assert_eq!(fire(&mut wheel, 50), [1, 3, 5]);
    }

    #[test]
    fn far_future_deadlines_fire_on_time() {
        let mut wheel = TimerWheel::new(0);
        wheel.insert(100_000, "far");
        wheel.insert(513, "just outside");
        wheel.insert(512, "last in window");
        assert_eq!(wheel.next_deadline(), Some(512));
        assert_eq!(fire(&mut wheel, 512), ["last in window"]);
        assert_eq!(wheel.next_deadline(), Some(513));
        assert_eq!(fire(&mut wheel, 513), ["just outside"]);
        for now in (600..100_000).step_by(500) {
            assert_eq!(fire(&mut wheel, now), Vec::<&str>::new(), "at {now}");
            assert_eq!(wheel.next_deadline(), Some(100_000));
        }
        assert_eq!(fire(&mut wheel, 99_999), Vec::<&str>::new());
        assert_eq!(fire(&mut wheel, 100_000), ["far"]);
    }

    #[test]
    fn admitted_overflow_timer_keeps_its_place_among_ties() {
        let mut wheel = TimerWheel::new(0);
        wheel.insert(1_000, "inserted first, from overflow");
        fire(&mut wheel, 600);
        wheel.insert(1_000, "inserted second, straight into the wheel");
        assert_eq!(
            fire(&mut wheel, 1_000),
            [
                "inserted first, from overflow",
                "inserted second, straight into the wheel"
            ]
        );
    }

    #[test]
    fn big_time_jump_fires_everything_in_order() {
        let mut wheel = TimerWheel::new(0);
        let deadlines = [9_999, 3, 511, 600, 512, 10_000, 10_001, 1, 5_000, 3];
        for (n, deadline) in deadlines.into_iter().enumerate() {
            wheel.insert(deadline, (deadline, n));
        }
        let fired = fire(&mut wheel, 10_000);
        let mut expected: Vec<_> = deadlines
            .into_iter()
            .enumerate()
            .map(|(n, d)| (d, n))
            .filter(|&(d, _)| d <= 10_000)
            .collect();
        expected.sort();
        assert_eq!(fired, expected);
        assert_eq!(wheel.next_deadline(), Some(10_001));
    }

    #[test]
    fn jump_far_past_u32_range_is_cheap_and_correct() {
        let mut wheel = TimerWheel::new(0);
        wheel.insert(1 << 40, "late");
        wheel.insert(7, "early");
        // Walking every millisecond would take hours here; the test finishing shows it does not.
        assert_eq!(fire(&mut wheel, 1 << 39), ["early"]);
        assert_eq!(fire(&mut wheel, 1 << 41), ["late"]);
    }

    #[test]
    fn next_deadline_is_exact() {
        let mut wheel = TimerWheel::new(1_000);
        assert_eq!(wheel.next_deadline(), None);
        let a = wheel.insert(1_300, ());
        assert_eq!(wheel.next_deadline(), Some(1_300));
        let b = wheel.insert(1_001, ());
        assert_eq!(wheel.next_deadline(), Some(1_001));
        let c = wheel.insert(5_000, ());
        wheel.cancel(b);
        assert_eq!(wheel.next_deadline(), Some(1_300));
        wheel.cancel(a);
        assert_eq!(wheel.next_deadline(), Some(5_000));
        wheel.cancel(c);
        assert_eq!(wheel.next_deadline(), None);
    }

    #[test]
    fn next_deadline_wraps_round_the_wheel() {
        // Start so the window straddles slot 511 -> 0.
        let mut wheel = TimerWheel::new(500);
        wheel.insert(1_000, "slot 488");
        wheel.insert(520, "slot 8");
        assert_eq!(wheel.next_deadline(), Some(520));
        assert_eq!(fire(&mut wheel, 520), ["slot 8"]);
        assert_eq!(wheel.next_deadline(), Some(1_000));
    }

    #[test]
    fn past_deadlines_fire_at_the_next_expire() {
        let mut wheel = TimerWheel::new(1_000);
        wheel.insert(1_005, "soon");
        wheel.insert(400, "long overdue");
        wheel.insert(1_000, "due now");
        wheel.insert(0, "overdue since the origin");
        assert_eq!(wheel.next_deadline(), Some(0));
        assert_eq!(
            fire(&mut wheel, 1_000),
            ["overdue since the origin", "long overdue", "due now"]
        );
        assert_eq!(wheel.next_deadline(), Some(1_005));
        assert_eq!(fire(&mut wheel, 1_010), ["soon"]);
    }

    #[test]
    fn deadlines_near_u64_max_do_not_overflow() {
        let mut wheel = TimerWheel::new(u64::MAX - 600);
        wheel.insert(u64::MAX, "max");
        wheel.insert(u64::MAX - 1, "max - 1");
        assert_eq!(fire(&mut wheel, u64::MAX - 200), Vec::<&str>::new());
        assert_eq!(wheel.next_deadline(), Some(u64::MAX - 1));
        assert_eq!(fire(&mut wheel, u64::MAX), ["max - 1", "max"]);
    }

    #[test]
    fn slab_entries_are_reused() {
        let mut wheel = TimerWheel::new(0);
        for round in 0..1_000 {
            let near = wheel.insert(round + 10, ());
            let far = wheel.insert(round + 10_000, ());
            wheel.cancel(near);
            wheel.cancel(far);
        }
        assert_eq!(wheel.entries.len(), 2);
        assert!(
            wheel.overflow.len() <= 2 * OVERFLOW_STALE_MIN + 2,
            "overflow not compacted"
        );
    }

    #[test]
    fn cancelled_far_timers_do_not_pile_up_in_overflow() {
        let mut wheel = TimerWheel::new(0);
        let keep = wheel.insert(50_000, "keep");
        let ids: Vec<_> = (0..10_000)
            .map(|n| wheel.insert(20_000 + n, "gone"))
            .collect();
        for id in ids {
            wheel.cancel(id);
        }
        assert!(
            wheel.overflow.len() <= 2 * OVERFLOW_STALE_MIN + 2,
            "overflow not compacted"
        );
        assert_eq!(wheel.next_deadline(), Some(50_000));
        assert_eq!(wheel.cancel(keep), Some("keep"));
    }

    #[test]
    #[should_panic(expected = "time went backwards: expire(99) after expire(100)")]
    fn expire_with_earlier_time_panics() {
        let mut wheel = TimerWheel::<()>::new(100);
        wheel.expire(99, &mut Vec::new());
    }

    #[test]
    #[should_panic(expected = "timer wheel full")]
    fn insert_beyond_the_bound_panics() {
        let mut wheel = TimerWheel::new(0);
        // Pretend the wheel is full rather than allocating a million timers.
        wheel.len = MAX_TIMERS;
        wheel.insert(1, ());
    }

    /// Random inserts, cancels and expiries, checked step by step against a sorted map.
    fn check_against_model(seed: u64, steps: usize) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut now: u64 = rng.gen_range(0..1_000_000);
        let mut wheel = TimerWheel::new(now);
        // Keyed by (deadline, insertion number): the order expire must produce.
        let mut model: BTreeMap<(u64, u64), TimerId> = BTreeMap::new();
        let mut issued: Vec<(TimerId, (u64, u64))> = Vec::new();

        for step in 0..steps {
            match rng.gen_range(0..100) {
                0..=49 => {
                    let deadline = random_deadline(&mut rng, now);
                    let key = (deadline, issued.len() as u64);
                    let id = wheel.insert(deadline, key);
                    model.insert(key, id);
                    issued.push((id, key));
                }
                50..=74 if !issued.is_empty() => {
                    // Any id ever issued, so fired and cancelled ones get tried again too.
                    let (id, key) = issued[rng.gen_range(0..issued.len())];
                    let expected = model.remove(&key).map(|_| key);
                    assert_eq!(wheel.cancel(id), expected, "seed {seed} step {step}");
                }
                _ => {
                    now += random_step(&mut rng);
                    let mut out = Vec::new();
                    wheel.expire(now, &mut out);
                    let later = model.split_off(&(now + 1, 0));
                    let due: Vec<_> = mem::replace(&mut model, later).into_iter().collect();
                    let fired: Vec<_> = out.into_iter().map(|(id, key)| (key, id)).collect();
                    assert_eq!(fired, due, "seed {seed} step {step} now {now}");
                }
            }
            assert_eq!(wheel.len(), model.len(), "seed {seed} step {step}");
            let model_next = model.keys().next().map(|&(deadline, _)| deadline);
            assert_eq!(wheel.next_deadline(), model_next, "seed {seed} step {step}");
        }
    }

    /// A deadline that is overdue, inside the window, or beyond it.
    fn random_deadline(rng: &mut StdRng, now: u64) -> u64 {
        match rng.gen_range(0..10) {
            0 => now.saturating_sub(rng.gen_range(0..200)),
            1..=6 => now + rng.gen_range(0..=SLOT_COUNT as u64),
            7 | 8 => now + rng.gen_range(0..3_000),
            _ => now + rng.gen_range(0..50_000),
        }
    }

    /// Mostly small advances, with the occasional jump of many wheel turns.
    fn random_step(rng: &mut StdRng) -> u64 {
        match rng.gen_range(0..20) {
            0..=11 => rng.gen_range(0..5),
            12..=17 => rng.gen_range(0..700),
            _ => rng.gen_range(0..40_000),
        }
    }

    #[test]
    fn matches_a_sorted_map_model() {
        for seed in 0..20 {
            check_against_model(seed, 5_000);
        }
    }
}
