//! The in-memory Raft log: the entries after the latest snapshot, addressed by Raft index.
//!
//! The log knows nothing of disks. `RaftNode` tells storage what changed through `Ready`; the
//! log only keeps the entries and answers the questions Figure 2 asks of it (term at an index,
//! last index and term, is another log at least as up to date).

use super::message::{Entry, Index, Term};

/// The entries a node holds, after an optional compacted prefix.
#[derive(Debug, Clone, Default)]
pub struct RaftLog {
    /// Index of the last entry folded into a snapshot (0 when there is none). Entries up to
    /// here are committed and no longer held. Never decreases.
    snapshot_index: Index,
    /// Term of the entry at `snapshot_index` (0 when there is none).
    snapshot_term: Term,
    /// Invariant: `entries[i].index == snapshot_index + 1 + i`, and terms never decrease.
    entries: Vec<Entry>,
}

impl RaftLog {
    /// A log that starts after a snapshot at `snapshot_index` (0 for an empty log) and holds
    /// `entries`, which must follow it contiguously.
    ///
    /// # Panics
    /// If `entries` do not follow `snapshot_index` contiguously with non-decreasing terms.
    pub fn new(snapshot_index: Index, snapshot_term: Term, entries: Vec<Entry>) -> RaftLog {
        let log = RaftLog {
            snapshot_index,
            snapshot_term,
            entries,
        };
        log.check();
        log
    }

    fn check(&self) {
        let mut term = self.snapshot_term;
        for (i, entry) in self.entries.iter().enumerate() {
            let want = self.snapshot_index + 1 + i as u64;
            assert_eq!(entry.index, want, "log entry out of place");
            assert!(entry.term >= term, "term falls at index {want}");
            term = entry.term;
        }
    }

    /// Index of the last entry covered by the snapshot.
    pub fn snapshot_index(&self) -> Index {
        self.snapshot_index
    }

    /// Term of the entry at `snapshot_index`.
    pub fn snapshot_term(&self) -> Term {
        self.snapshot_term
    }

    /// Index of the first entry still held in memory (one past the snapshot).
    pub fn first_index(&self) -> Index {
        self.snapshot_index + 1
    }

    /// Index of the last entry, or the snapshot index when no entry follows it.
    pub fn last_index(&self) -> Index {
        self.snapshot_index + self.entries.len() as u64
    }

    /// Term of the last entry, or of the snapshot when no entry follows it.
    pub fn last_term(&self) -> Term {
        self.entries.last().map_or(self.snapshot_term, |e| e.term)
    }

    /// Term of the entry at `index`: known for the snapshot point and every held entry, unknown
    /// (None) below the snapshot or past the end.
    pub fn term_at(&self, index: Index) -> Option<Term> {
        if index == self.snapshot_index {
            return Some(self.snapshot_term);
        }
        self.entry(index).map(|e| e.term)
    }

    /// The entry at `index`, if it is held.
    pub fn entry(&self, index: Index) -> Option<&Entry> {
        if index <= self.snapshot_index {
            return None;
        }
        self.entries.get((index - self.snapshot_index - 1) as usize)
    }

    /// Entries from `from` on, at most `max_count` of them and no more than `max_bytes` of
    /// estimated wire size, but always at least one if any exists (an entry larger than the
    /// budget still has to travel).
    pub fn slice(&self, from: Index, max_count: usize, max_bytes: usize) -> &[Entry] {
        if from <= self.snapshot_index || from > self.last_index() {
            return &[];
        }
        let start = (from - self.snapshot_index - 1) as usize;
        let rest = &self.entries[start..];
        let mut bytes = 0;
        let mut count = 0;
        for entry in rest.iter().take(max_count) {
            bytes += entry.wire_size();
            if count > 0 && bytes > max_bytes {
                break;
            }
            count += 1;
        }
        &rest[..count]
    }

    /// Appends one entry at the end.
    ///
    /// # Panics
    /// If the entry does not directly follow the last index, or its term is lower.
    pub fn append(&mut self, entry: Entry) {
        assert_eq!(
            entry.index,
            self.last_index() + 1,
            "append leaves a gap after {}",
            self.last_index()
        );
        assert!(
            entry.term >= self.last_term(),
            "append of term {} after term {}",
            entry.term,
            self.last_term()
        );
        self.entries.push(entry);
    }

    /// Removes the entry at `index` and every entry after it.
    ///
    /// # Panics
    /// If `index` is inside the snapshot: compacted entries are committed and never removed.
    pub fn truncate_from(&mut self, index: Index) {
        assert!(
            index > self.snapshot_index,
            "truncate at {index} inside snapshot {}",
            self.snapshot_index
        );
        let keep = (index - self.snapshot_index - 1) as usize;
        self.entries.truncate(keep);
    }

    /// First index of the run of entries that share the term of the entry at `index`, not going
    /// below the first held entry. Followers send it as a rejection hint (§5.3).
    pub fn first_index_of_term_at(&self, index: Index) -> Index {
        let Some(term) = self.term_at(index) else {
            return index;
        };
        let mut first = index;
        while first > self.first_index() && self.term_at(first - 1) == Some(term) {
            first -= 1;
        }
        first
    }

    /// Last index holding an entry of `term`, if the log has one; the leader uses it to jump
    /// over a follower's conflicting term in a single round trip.
    pub fn last_index_of_term(&self, term: Term) -> Option<Index> {
        let pos = self.entries.iter().rposition(|e| e.term == term)?;
        Some(self.snapshot_index + 1 + pos as u64)
    }

    /// True when a log ending at (`last_index`, `last_term`) is at least as up to date as this
    /// one (§5.4.1): a later last term wins, and with equal terms the longer log wins.
    pub fn is_up_to_date(&self, last_index: Index, last_term: Term) -> bool {
        (last_term, last_index) >= (self.last_term(), self.last_index())
    }

    /// Drops every entry up to and including `index`, which becomes the snapshot point.
    ///
    /// # Panics
    /// If `index` is past the last entry or before the current snapshot.
    pub fn compact(&mut self, index: Index) {
        assert!(index >= self.snapshot_index, "compact backwards to {index}");
        assert!(index <= self.last_index(), "compact past end to {index}");
        let term = self.term_at(index).expect("term of held entry");
        let drop = (index - self.snapshot_index) as usize;
        self.entries.drain(..drop);
        self.snapshot_index = index;
        self.snapshot_term = term;
    }

    /// Replaces the whole log by an empty one starting after a snapshot received from the
    /// leader at (`index`, `term`).
    pub fn reset_to_snapshot(&mut self, index: Index, term: Term) {
        self.entries.clear();
        self.snapshot_index = index;
        self.snapshot_term = term;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::message::Payload;

    fn entry(index: Index, term: Term) -> Entry {
        Entry {
            term,
            index,
            payload: Payload::Noop,
        }
    }

    fn log_of(terms: &[Term]) -> RaftLog {
        let entries = terms
            .iter()
            .enumerate()
            .map(|(i, &t)| entry(i as u64 + 1, t))
            .collect();
        RaftLog::new(0, 0, entries)
    }

    #[test]
    fn empty_log_has_index_and_term_zero() {
        let log = RaftLog::default();
        assert_eq!(log.last_index(), 0);
        assert_eq!(log.last_term(), 0);
        assert_eq!(log.term_at(0), Some(0));
        assert_eq!(log.term_at(1), None);
    }

    #[test]
    fn term_hints_find_run_boundaries() {
        let log = log_of(&[1, 1, 2, 2, 2, 4]);
        assert_eq!(log.first_index_of_term_at(5), 3);
        assert_eq!(log.first_index_of_term_at(2), 1);
        assert_eq!(log.last_index_of_term(2), Some(5));
        assert_eq!(log.last_index_of_term(3), None);
    }

    // §5.4.1: compare last terms first, then lengths.
    #[test]
    fn up_to_date_compares_term_then_length() {
        let log = log_of(&[1, 2, 2]);
        assert!(log.is_up_to_date(3, 2));
        assert!(log.is_up_to_date(1, 3));
        assert!(!log.is_up_to_date(2, 2));
        assert!(!log.is_up_to_date(9, 1));
    }

    #[test]
    fn slice_respects_budget_but_sends_one() {
        let log = log_of(&[1, 1, 1, 1]);
        assert_eq!(log.slice(2, 10, 1).len(), 1);
        assert_eq!(log.slice(2, 2, 1 << 20).len(), 2);
        assert_eq!(log.slice(5, 10, 1 << 20).len(), 0);
    }

    #[test]
    fn compact_keeps_term_of_snapshot_point() {
        let mut log = log_of(&[1, 1, 2, 3]);
        log.compact(3);
        assert_eq!(log.first_index(), 4);
        assert_eq!(log.term_at(3), Some(2));
        assert_eq!(log.term_at(2), None);
        assert_eq!(log.last_index(), 4);
        log.truncate_from(4);
        assert_eq!(log.last_index(), 3);
        assert_eq!(log.last_term(), 2);
    }
}
