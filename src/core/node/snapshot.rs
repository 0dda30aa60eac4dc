//! Snapshots in the core: compacting the log behind a snapshot the caller took, streaming a
//! snapshot to a follower in chunks, and receiving one (Figure 13, §7).
//!
//! A transfer is a byte stream with cumulative acknowledgements. The leader keeps at most
//! `snapshot_window` chunks unconfirmed and, at each heartbeat, goes back to the last byte the
//! follower confirmed. The follower accepts chunks only in order, so a lost or reordered chunk
//! costs a resend, never a corrupt install; it checks the whole snapshot's crc32c before it
//! installs anything, and starts over when a different snapshot (a new leader's, or a newer
//! one) begins arriving.

use std::sync::Arc;

use super::{RaftNode, Snapshot};
use crate::core::message::{
    Index, InstallSnapshot, InstallSnapshotResponse, Message, NodeId, Term,
};
use crate::core::progress::ProgressMode;

/// Largest snapshot a follower accepts, so a hostile length cannot exhaust memory.
const MAX_SNAPSHOT_BYTES: u64 = 4 << 30;

/// A snapshot arriving at a follower.
#[derive(Debug)]
pub(super) struct IncomingSnapshot {
    index: Index,
    term: Term,
    total_len: u64,
    checksum: u32,
    buf: Vec<u8>,
}

impl IncomingSnapshot {
    /// Last index, bytes received, total bytes; for status.
    pub(super) fn progress(&self) -> (Index, u64, u64) {
        (self.index, self.buf.len() as u64, self.total_len)
    }

    fn is_for(&self, m: &InstallSnapshot) -> bool {
        self.index == m.last_included_index
            && self.term == m.last_included_term
            && self.total_len == m.total_len
            && self.checksum == m.checksum
    }
}

impl RaftNode {
    /// Takes note of a snapshot the caller made of its state machine (and has made durable),
    /// or loaded at start-up: the log is compacted behind it, keeping `compaction_tail`
    /// entries, and a leader sends it to followers whose next entry is gone.
    ///
    /// # Panics
    /// If the snapshot reaches past the entries handed out for applying, or its term does not
    /// match the log.
    pub fn compact(&mut self, snapshot: Snapshot) {
        assert!(
            snapshot.index <= self.last_applied,
            "snapshot at {} past applied {}",
            snapshot.index,
            self.last_applied
        );
        assert!(!snapshot.data.is_empty(), "empty snapshot");
        if let Some(term) = self.log.term_at(snapshot.index) {
            assert_eq!(term, snapshot.term, "snapshot term differs from the log");
        }
        if self
            .snapshot
            .as_ref()
            .is_some_and(|s| s.index >= snapshot.index)
        {
            return;
        }
        let keep_from = snapshot.index.saturating_sub(self.config.compaction_tail);
        if keep_from > self.log.snapshot_index() {
            self.log.compact(keep_from);
        }
        node_debug!(
            self,
            "snapshot at index {} (term {})",
            snapshot.index,
            snapshot.term
        );
        self.snapshot_checksum = crc32c::crc32c(&snapshot.data);
        self.snapshot = Some(snapshot);
    }

    /// Switches `to` to receiving the snapshot (if it is not already) and sends what the
    /// window allows.
    pub(super) fn send_snapshot(&mut self, to: NodeId) {
        let Some(snapshot) = self.snapshot.clone() else {
            // Entries are only ever compacted behind a snapshot, so this cannot happen.
            panic!("node {to} needs compacted entries but there is no snapshot");
        };
        let total_len = snapshot.data.len() as u64;
        let pr = self.progress.get_mut(&to).expect("progress of peer");
        let current = pr.snapshot.is_some_and(|t| t.index == snapshot.index);
        if pr.mode != ProgressMode::Snapshot || !current {
            node_info!(self, "sending snapshot at {} to node {to}", snapshot.index);
            let pr = self.progress.get_mut(&to).expect("progress of peer");
            pr.start_snapshot(snapshot.index, total_len);
        }
        self.send_snapshot_chunks(to, &snapshot);
    }

    fn send_snapshot_chunks(&mut self, to: NodeId, snapshot: &Snapshot) {
        let chunk = self.config.snapshot_chunk_bytes as u64;
        let window = chunk * self.config.snapshot_window as u64;
        loop {
            let pr = self.progress.get_mut(&to).expect("progress of peer");
            let transfer = pr.snapshot.as_mut().expect("snapshot transfer");
            let offset = transfer.next_offset;
            if offset >= transfer.total_len || offset - transfer.acked_offset >= window {
                return;
            }
            let end = (offset + chunk).min(transfer.total_len);
            transfer.next_offset = end;
            let message = InstallSnapshot {
                term: self.current_term,
                last_included_index: snapshot.index,
                last_included_term: snapshot.term,
                total_len: transfer.total_len,
                checksum: self.snapshot_checksum,
                offset,
                data: snapshot.data[offset as usize..end as usize].to_vec(),
            };
            self.ready.messages.push(crate::core::Envelope {
                to,
                message: Message::InstallSnapshot(message),
            });
        }
    }

    /// InstallSnapshot receiver (Figure 13).
    pub(super) fn handle_install_snapshot(&mut self, from: NodeId, m: InstallSnapshot) {
        assert!(m.term <= self.current_term, "higher term not handled first");
        let mut response = InstallSnapshotResponse {
            term: self.current_term,
            last_included_index: m.last_included_index,
            next_offset: 0,
            installed: false,
        };
        if m.term < self.current_term {
            self.send_persisted(from, Message::InstallSnapshotResponse(response));
            return;
        }
        if !self.accept_leader(from) {
            return;
        }

        // Rule 6: a log that already agrees at the snapshot's last entry holds everything the
        // snapshot would give, and the entries after it must stay.
        let index = m.last_included_index;
        if index <= self.commit_index || self.log.term_at(index) == Some(m.last_included_term) {
            self.incoming = None;
            response.installed = true;
            response.next_offset = m.total_len;
            self.send_persisted(from, Message::InstallSnapshotResponse(response));
            return;
        }
        let end = m.offset.checked_add(m.data.len() as u64);
        if m.total_len > MAX_SNAPSHOT_BYTES || end.is_none_or(|end| end > m.total_len) {
            node_debug!(self, "dropped malformed snapshot chunk from node {from}");
            return;
        }

        response.next_offset = self.receive_chunk(m);
        if let Some(snapshot) = self.take_complete_snapshot() {
            self.install(snapshot);
            response.installed = true;
        }
        self.send_persisted(from, Message::InstallSnapshotResponse(response));
    }

    /// Adds an in-order chunk to the snapshot being received; returns the bytes held.
    fn receive_chunk(&mut self, m: InstallSnapshot) -> u64 {
        let fresh = !self.incoming.as_ref().is_some_and(|inc| inc.is_for(&m));
        if fresh {
            if m.offset != 0 {
                // A chunk of a snapshot we are not receiving: ask for it from the start.
                return 0;
            }
            self.incoming = Some(IncomingSnapshot {
                index: m.last_included_index,
                term: m.last_included_term,
                total_len: m.total_len,
                checksum: m.checksum,
                buf: Vec::with_capacity(m.total_len.min(64 << 20) as usize),
            });
        }
        let incoming = self.incoming.as_mut().expect("incoming snapshot");
        if m.offset == incoming.buf.len() as u64 {
            incoming.buf.extend_from_slice(&m.data);
        }
        incoming.buf.len() as u64
    }

    /// The received snapshot, once every byte is in and the checksum holds.
    fn take_complete_snapshot(&mut self) -> Option<Snapshot> {
        let incoming = self.incoming.as_ref()?;
        if (incoming.buf.len() as u64) < incoming.total_len {
            return None;
        }
        let incoming = self.incoming.take().expect("incoming snapshot");
        if crc32c::crc32c(&incoming.buf) != incoming.checksum {
            log::warn!(
                "node={} term={}: snapshot at {} failed its checksum; asking again",
                self.id,
                self.current_term,
                incoming.index
            );
            return None;
        }
        Some(Snapshot {
            index: incoming.index,
            term: incoming.term,
            data: Arc::new(incoming.buf),
        })
    }

    /// Replaces the log and state machine by `snapshot`. Our log disagrees with it at its last
    /// index (or is shorter), so no entry we hold after that index can be committed: by Log
    /// Matching they all differ from the leader's.
    fn install(&mut self, snapshot: Snapshot) {
        assert!(snapshot.index > self.commit_index, "install below commit");
        node_info!(
            self,
            "installed snapshot at index {} (term {}) from leader {}",
            snapshot.index,
            snapshot.term,
            self.leader_id.unwrap_or(0)
        );
        self.log.reset_to_snapshot(snapshot.index, snapshot.term);
        self.unstable_from = snapshot.index + 1;
        self.persisted_index = snapshot.index;
        self.commit_index = snapshot.index;
        self.last_applied = snapshot.index;
        self.snapshot_checksum = crc32c::crc32c(&snapshot.data);
        self.snapshot = Some(snapshot.clone());
        self.ready.snapshot = Some(snapshot);
    }

    /// A follower's answer to a chunk.
    pub(super) fn handle_snapshot_response(&mut self, from: NodeId, m: InstallSnapshotResponse) {
        if self.role != super::Role::Leader || m.term != self.current_term {
            return;
        }
        let Some(pr) = self.progress.get_mut(&from) else {
            return;
        };
        pr.recent_active = true;
        if m.installed {
            if m.last_included_index <= self.log.last_index() && pr.matched(m.last_included_index) {
                self.maybe_commit();
            }
            self.send_appends_to(from);
            return;
        }
        let Some(transfer) = pr.snapshot.as_mut() else {
            return;
        };
        if transfer.index != m.last_included_index || pr.mode != ProgressMode::Snapshot {
            return;
        }
        // Not max(): a follower that restarted has lost what it had confirmed.
        transfer.acked_offset = m.next_offset.min(transfer.total_len);
        if transfer.next_offset < transfer.acked_offset {
            transfer.next_offset = transfer.acked_offset;
        }
        if let Some(snapshot) = self.snapshot.clone() {
            self.send_snapshot_chunks(from, &snapshot);
        }
    }
}
