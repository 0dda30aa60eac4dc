//! What a leader knows about each follower's log: Figure 2's `next_index` and `match_index`,
//! plus the flow control that decides when to send more.
//!
//! A follower's progress is in one of two modes. In `Probe` the leader does not know where the
//! follower's log diverges, so it sends one AppendEntries at a time and waits for the answer
//! (or the next heartbeat). In `Replicate` the last answer was a success, so the leader streams
//! entries optimistically, keeping at most `max_inflight` unanswered messages on the wire.

use std::collections::VecDeque;

use super::message::Index;

/// How the leader currently sends to one follower.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    /// Finding the point where the logs agree: one message at a time.
    Probe,
    /// Logs agree up to `match_index`: stream entries, bounded by the in-flight window.
    Replicate,
    /// The follower needs entries the leader compacted away: stream the snapshot instead.
    Snapshot,
}

/// The leader's view of one follower.
#[derive(Debug, Clone)]
pub struct Progress {
    /// Index of the next entry to send to this follower. Invariant: `next_index > match_index`.
    pub next_index: Index,
    /// Highest index known to be replicated on this follower. Never decreases within a term.
    pub match_index: Index,
    /// Current sending mode.
    pub mode: ProgressMode,
    /// In `Probe`: a probe is on the wire, so wait for its answer or the next heartbeat.
    pub probe_sent: bool,
    /// In `Replicate`: the last index carried by each unanswered AppendEntries, oldest first.
    /// Bounded by the node's `max_inflight`.
    inflight: VecDeque<Index>,
    /// Highest heartbeat round this follower has answered in the current term.
    pub read_round_acked: u64,
    /// True if the follower answered anything since the leader last checked for a quorum.
    pub recent_active: bool,
    /// In `Snapshot`: the snapshot being sent and how far.
    pub snapshot: Option<SnapshotTransfer>,
}

/// A snapshot on its way to one follower.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotTransfer {
    /// Last index of the snapshot being sent.
    pub index: Index,
    /// Bytes in the snapshot.
    pub total_len: u64,
    /// Next byte to send.
    pub next_offset: u64,
    /// Bytes the follower confirmed receiving in order.
    pub acked_offset: u64,
}

impl Progress {
    /// Progress for a follower whose log the new leader knows nothing about: probe from the
    /// leader's own end (§5.3: next_index starts one past the leader's last entry).
    pub fn new(last_index: Index) -> Progress {
        Progress {
            next_index: last_index + 1,
            match_index: 0,
            mode: ProgressMode::Probe,
            probe_sent: false,
            inflight: VecDeque::new(),
            read_round_acked: 0,
            recent_active: false,
            snapshot: None,
        }
    }

    /// True when no message may be sent now (a probe awaits its answer, or the window is full).
    pub fn is_paused(&self, max_inflight: usize) -> bool {
        match self.mode {
            ProgressMode::Probe => self.probe_sent,
            ProgressMode::Replicate => self.inflight.len() >= max_inflight,
            ProgressMode::Snapshot => true,
        }
    }

    /// Records that an AppendEntries carrying entries up to `last` was sent.
    pub fn sent(&mut self, last: Index, entries: usize) {
        match self.mode {
            ProgressMode::Probe => self.probe_sent = true,
            ProgressMode::Replicate if entries > 0 => {
                assert!(
                    last >= self.next_index,
                    "sent {last} behind {}",
                    self.next_index
                );
                self.next_index = last + 1;
                self.inflight.push_back(last);
            }
            ProgressMode::Replicate | ProgressMode::Snapshot => {}
        }
    }

    /// A success up to `index`: raises `match_index` and frees the window. Returns false when
    /// the answer told nothing new (a duplicate or reordered reply).
    pub fn matched(&mut self, index: Index) -> bool {
        while self.inflight.front().is_some_and(|&last| last <= index) {
            self.inflight.pop_front();
        }
        if index <= self.match_index {
            return false;
        }
        self.match_index = index;
        self.next_index = self.next_index.max(index + 1);
        if self.mode != ProgressMode::Replicate {
            self.mode = ProgressMode::Replicate;
            self.probe_sent = false;
            self.snapshot = None;
        }
        true
    }

    /// A rejection: go back to probing from `next`, never below what is known to match.
    pub fn rejected(&mut self, next: Index) {
        self.next_index = next.max(self.match_index + 1);
        self.mode = ProgressMode::Probe;
        self.probe_sent = false;
        self.inflight.clear();
        self.snapshot = None;
    }

    /// The follower's log ends before `next` although it had acknowledged more (its disk lost
    /// a tail): forget what it acknowledged from `next` on and probe from there.
    pub fn regressed(&mut self, next: Index) {
        assert!(next >= 1, "next index starts at 1");
        self.match_index = self.match_index.min(next - 1);
        self.rejected(next);
    }

    /// Switches to sending the snapshot that ends at `index`.
    pub fn start_snapshot(&mut self, index: Index, total_len: u64) {
        self.mode = ProgressMode::Snapshot;
        self.inflight.clear();
        self.snapshot = Some(SnapshotTransfer {
            index,
            total_len,
            next_offset: 0,
            acked_offset: 0,
        });
    }

    /// Number of unanswered messages in the window.
    pub fn inflight(&self) -> usize {
        self.inflight.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_sends_one_then_waits() {
        let mut pr = Progress::new(5);
        assert!(!pr.is_paused(4));
        pr.sent(6, 1);
        assert!(pr.is_paused(4));
        assert_eq!(pr.next_index, 6, "probe does not advance next_index");
    }

    #[test]
    fn success_switches_to_replicate_and_window_bounds_sends() {
        let mut pr = Progress::new(5);
        pr.sent(6, 1);
        assert!(pr.matched(6));
        assert_eq!(pr.mode, ProgressMode::Replicate);
        pr.sent(8, 2);
        pr.sent(9, 1);
        assert!(pr.is_paused(2));
        assert!(pr.matched(8));
        assert!(!pr.is_paused(2));
        assert_eq!(pr.next_index, 10);
    }

    #[test]
    fn stale_success_changes_nothing() {
        let mut pr = Progress::new(5);
        pr.matched(6);
        assert!(!pr.matched(4));
        assert_eq!(pr.match_index, 6);
    }

    #[test]
    fn rejection_never_goes_below_match() {
        let mut pr = Progress::new(9);
        pr.matched(7);
        pr.rejected(3);
        assert_eq!(pr.next_index, 8);
        assert_eq!(pr.mode, ProgressMode::Probe);
    }
}
