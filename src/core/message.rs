//! The vocabulary of the Raft core: ids, log entries, persistent state and the messages
//! peers exchange (Figure 2 of the Raft paper, plus the small additions the runtime needs).
//!
//! These types cross every boundary: they are persisted by `storage`, encoded on the wire by
//! `net`, and simulated by `sim`. They carry no behaviour.

use serde::{Deserialize, Serialize};

/// A node's identity inside its cluster. Id 0 is reserved and never valid.
pub type NodeId = u64;
/// A Raft term. Terms start at 0 on a fresh node and only ever grow.
pub type Term = u64;
/// A position in the replicated log. The first real entry has index 1; index 0 is the empty
/// prefix whose term is 0.
pub type Index = u64;

/// What a log entry carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Payload {
    /// Appended by a new leader at the start of its term (§5.4.2, §8): committing it commits
    /// every earlier entry and lets the leader learn the commit index.
    Noop,
    /// An opaque state-machine command; the core never looks inside.
    Command(#[serde(with = "serde_bytes")] Vec<u8>),
}

/// One entry of the replicated log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Term of the leader that created the entry.
    pub term: Term,
    /// Position of the entry in the log.
    pub index: Index,
    /// What the entry carries.
    pub payload: Payload,
}

impl Entry {
    /// A rough count of the bytes this entry takes on the wire, used to keep each
    /// AppendEntries under the datagram budget. It errs on the large side.
    pub fn wire_size(&self) -> usize {
        let payload = match &self.payload {
            Payload::Noop => 0,
            Payload::Command(data) => data.len(),
        };
        payload + 32
    }
}

/// The state Figure 2 calls "persistent state on all servers", apart from the log itself.
/// It must be durable before any message that depends on it leaves the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HardState {
    /// Latest term this node has seen.
    pub current_term: Term,
    /// Candidate that received this node's vote in `current_term`, if any.
    pub voted_for: Option<NodeId>,
}

/// RequestVote RPC arguments (Figure 2), also used for a pre-vote round.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestVote {
    /// Candidate's term (for a pre-vote: the term it would campaign in).
    pub term: Term,
    /// Index of the candidate's last log entry (§5.4).
    pub last_log_index: Index,
    /// Term of the candidate's last log entry (§5.4).
    pub last_log_term: Term,
    /// True for a pre-vote (dissertation §9.6): "would you vote for me?", which changes no
    /// state on either side.
    pub pre_vote: bool,
    /// True when the election was started by a leadership transfer (TimeoutNow): voters then
    /// answer even if they heard from the leader recently.
    pub transfer: bool,
}

/// RequestVote RPC results.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestVoteResponse {
    /// The voter's current term, for the candidate to update itself.
    pub term: Term,
    /// True means the candidate received this vote.
    pub vote_granted: bool,
    /// True when answering a pre-vote.
    pub pre_vote: bool,
}

/// Sent by a leader handing over leadership: the receiver starts an election at once
/// (dissertation §3.10).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeoutNow {
    /// Leader's term.
    pub term: Term,
}

/// AppendEntries RPC arguments (Figure 2). With no entries it is a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendEntries {
    /// Leader's term.
    pub term: Term,
    /// Index of the log entry immediately preceding the new ones.
    pub prev_log_index: Index,
    /// Term of the entry at `prev_log_index`.
    pub prev_log_term: Term,
    /// Entries to store, in index order starting at `prev_log_index + 1`.
    pub entries: Vec<Entry>,
    /// Leader's commit index.
    pub leader_commit: Index,
    /// The leader's heartbeat round when it sent this message; echoed back so the leader can
    /// confirm it still leads before it answers a read (dissertation §6.4).
    pub read_round: u64,
}

/// AppendEntries RPC results, with the hints that let the leader skip back fast.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendEntriesResponse {
    /// The follower's current term, for the leader to update itself.
    pub term: Term,
    /// True if the follower held an entry matching `prev_log_index` and `prev_log_term`.
    pub success: bool,
    /// The `prev_log_index` of the request this answers; lets the leader drop stale answers.
    pub request_prev_index: Index,
    /// On success: the index of the last entry the request made the follower match.
    pub match_index: Index,
    /// On failure: where the leader should try next. When `conflict_term` is set, this is the
    /// follower's first index of that term; otherwise one past the follower's last entry.
    pub conflict_index: Index,
    /// On failure: the term of the follower's entry at `prev_log_index`, if it has one.
    pub conflict_term: Option<Term>,
    /// Echo of the request's `read_round`.
    pub read_round: u64,
}

/// One chunk of a snapshot, sent by the leader to a follower whose next entry it no longer
/// holds (Figure 13). Chunks of one snapshot share every field but `offset` and `data`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallSnapshot {
    /// Leader's term.
    pub term: Term,
    /// Last index the snapshot replaces.
    pub last_included_index: Index,
    /// Term of that entry.
    pub last_included_term: Term,
    /// Length of the whole snapshot in bytes.
    pub total_len: u64,
    /// crc32c of the whole snapshot, checked before it is installed.
    pub checksum: u32,
    /// Where this chunk starts.
    pub offset: u64,
    /// The chunk.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// A follower's answer to a snapshot chunk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallSnapshotResponse {
    /// The follower's current term.
    pub term: Term,
    /// Which snapshot this answers.
    pub last_included_index: Index,
    /// Bytes received in order so far: where the leader should continue.
    pub next_offset: u64,
    /// True once the follower's log holds everything up to `last_included_index`.
    pub installed: bool,
}

/// Every message Raft peers exchange.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Sent by candidates to gather votes (§5.2).
    RequestVote(RequestVote),
    /// A voter's answer.
    RequestVoteResponse(RequestVoteResponse),
    /// Sent by the leader to replicate entries and as a heartbeat (§5.3).
    AppendEntries(AppendEntries),
    /// A follower's answer.
    AppendEntriesResponse(AppendEntriesResponse),
    /// A chunk of the leader's snapshot.
    InstallSnapshot(InstallSnapshot),
    /// A follower's answer to a chunk.
    InstallSnapshotResponse(InstallSnapshotResponse),
    /// A leader's request that the receiver campaign now.
    TimeoutNow(TimeoutNow),
}

impl Message {
    /// The sender's term, which every Raft message carries.
    pub fn term(&self) -> Term {
        match self {
            Message::RequestVote(m) => m.term,
            Message::RequestVoteResponse(m) => m.term,
            Message::AppendEntries(m) => m.term,
            Message::AppendEntriesResponse(m) => m.term,
            Message::InstallSnapshot(m) => m.term,
            Message::InstallSnapshotResponse(m) => m.term,
            Message::TimeoutNow(m) => m.term,
        }
    }

    /// A short name for logs and counters.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::RequestVote(_) => "RequestVote",
            Message::RequestVoteResponse(_) => "RequestVoteResponse",
            Message::AppendEntries(_) => "AppendEntries",
            Message::AppendEntriesResponse(_) => "AppendEntriesResponse",
            Message::InstallSnapshot(_) => "InstallSnapshot",
            Message::InstallSnapshotResponse(_) => "InstallSnapshotResponse",
            Message::TimeoutNow(_) => "TimeoutNow",
        }
    }
}

/// A message addressed to one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Receiver.
    pub to: NodeId,
    /// What to deliver.
    pub message: Message,
}
