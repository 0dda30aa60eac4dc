//! `RaftNode`: one member's consensus state machine, as Figure 2 of the Raft paper describes it.
//!
//! The node is sans-IO. The caller feeds it clock ticks (`tick`), peer messages (`step`),
//! client commands (`propose`, `read_index`) and durability notices (`on_persisted`), then
//! collects a [`Ready`] batch: state and entries to persist, messages to send, committed
//! entries to apply and reads that may now be answered. Everything that happens within one
//! turn of the caller's loop lands in one batch, so one fsync and one datagram per peer
//! cover many client commands.
//!
//! One tick is one millisecond of the runtime's clock; log lines say "ms" on that basis.

use std::collections::BTreeMap;
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::log::RaftLog;
use super::message::{
    AppendEntries, AppendEntriesResponse, Entry, Envelope, HardState, Index, Message, NodeId,
    Payload, RequestVote, RequestVoteResponse, Term,
};
use super::progress::{Progress, ProgressMode};
use leadership::is_granted_pre_vote_or_request;
use snapshot::IncomingSnapshot;

/// Logs at info with the node id and term in front, as every line of the core does.
macro_rules! node_info {
    ($node:expr, $($arg:tt)*) => {
        log::info!("node={} term={}: {}", $node.id, $node.current_term, format_args!($($arg)*))
    };
}

/// Logs at debug with the node id and term in front.
macro_rules! node_debug {
    ($node:expr, $($arg:tt)*) => {
        log::debug!("node={} term={}: {}", $node.id, $node.current_term, format_args!($($arg)*))
    };
}

mod leadership;
mod snapshot;

/// Largest term a message may carry. Terms grow by one per election, so no real cluster gets
/// near it; a larger term can only come from a forged or corrupt datagram, and obeying it would
/// bring the cluster close to overflowing its terms.
pub const MAX_TERM: Term = 1 << 48;

/// Node ids as "1, 2, 3", for log lines and reasons (no brackets, so scripts that pick
/// fields out of status JSON with sed see one plain string).
fn id_list(ids: &[NodeId]) -> String {
    let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
    ids.join(", ")
}

/// Static settings of one node. Timeouts are in ticks.
#[derive(Debug, Clone)]
pub struct Config {
    /// This node's id; must be one of `voters`.
    pub id: NodeId,
    /// Every member of the cluster, this node included.
    pub voters: Vec<NodeId>,
    /// Lower bound of the randomized election timeout (§5.2).
    pub election_timeout_min_ticks: u32,
    /// Upper bound (exclusive) of the randomized election timeout.
    pub election_timeout_max_ticks: u32,
    /// How often a leader sends heartbeats; well below the election timeout.
    pub heartbeat_ticks: u32,
    /// Most entries one AppendEntries carries.
    pub max_append_entries: usize,
    /// Most estimated bytes of entries one AppendEntries carries, so it fits a datagram.
    pub max_append_bytes: usize,
    /// Most unanswered AppendEntries per follower while replicating.
    pub max_inflight: usize,
    /// Bytes of snapshot per InstallSnapshot chunk, so a chunk fits a datagram.
    pub snapshot_chunk_bytes: usize,
    /// Most snapshot chunks on the wire per follower before an answer.
    pub snapshot_window: usize,
    /// Entries kept in memory below a snapshot, so followers that are only a little behind
    /// catch up from the log instead of receiving the whole snapshot.
    pub compaction_tail: u64,
    /// Run a pre-vote round before each election (dissertation §9.6), so a node that was cut
    /// off cannot disturb a healthy leader or inflate terms when it returns.
    pub pre_vote: bool,
    /// A leader that has not heard from a quorum within an election timeout steps down, and
    /// followers that heard from a leader recently ignore vote requests (§6.2, §4.2.3).
    pub check_quorum: bool,
}

impl Config {
    /// Settings for node `id` of `voters` with the defaults the CLI documents: election
    /// timeout 150..300 ms, heartbeat every 50 ms.
    pub fn new(id: NodeId, voters: Vec<NodeId>) -> Config {
        Config {
            id,
            voters,
            election_timeout_min_ticks: 150,
            election_timeout_max_ticks: 300,
            heartbeat_ticks: 50,
            max_append_entries: 512,
            max_append_bytes: 48 * 1024,
            max_inflight: 64,
            snapshot_chunk_bytes: 32 * 1024,
            snapshot_window: 8,
            compaction_tail: 1000,
            pre_vote: true,
            check_quorum: true,
        }
    }

    /// Checks the settings; the CLI reports the error to the operator.
    ///
    /// # Errors
    /// A message naming the first setting that cannot work.
    pub fn validate(&self) -> Result<(), String> {
        if !self.voters.contains(&self.id) {
            return Err(format!("node {} is not in the cluster", self.id));
        }
        if self.voters.contains(&0) {
            return Err("node id 0 is reserved".to_string());
        }
        if self.election_timeout_min_ticks < 2 {
            return Err("election timeout must be at least 2 ms".to_string());
        }
        if self.election_timeout_max_ticks <= self.election_timeout_min_ticks {
            return Err("election timeout range is empty".to_string());
        }
        if self.heartbeat_ticks == 0 || self.heartbeat_ticks >= self.election_timeout_min_ticks {
            return Err("heartbeat must be shorter than the election timeout".to_string());
        }
        if self.snapshot_chunk_bytes == 0 || self.snapshot_window == 0 {
            return Err("snapshot chunk and window must be positive".to_string());
        }
        if self.max_append_entries == 0 || self.max_inflight == 0 {
            return Err("append batch and in-flight window must be positive".to_string());
        }
        Ok(())
    }
}

/// The three roles of §5.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Passive: answers leaders and candidates.
    Follower,
    /// Asking whether peers would vote for it, before starting a real election.
    PreCandidate,
    /// Asking for votes to become leader.
    Candidate,
    /// Takes client commands and replicates them.
    Leader,
}

/// Returned to a command that only a leader can take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotLeader {
    /// The leader this node knows of in its current term, if any.
    pub leader: Option<NodeId>,
}

/// A read that the leader has confirmed: answer it once `last_applied >= index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadState {
    /// The caller's tag from `read_index`.
    pub ctx: u64,
    /// Commit index when the read arrived; the answer must reflect at least this much.
    pub index: Index,
}

/// A snapshot of the state machine as of `index`, which replaces the log up to there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Last index covered.
    pub index: Index,
    /// Term of the entry at `index`.
    pub term: Term,
    /// The state machine's encoding of itself; shared, never copied, while chunks go out.
    pub data: Arc<Vec<u8>>,
}

/// Everything the caller must do after a turn, in this order: persist `hard_state` and
/// `entries` (then call `on_persisted`), send `persisted_messages`, apply
/// `committed_entries`, answer `read_states` as the state machine catches up. `messages` may be
/// sent at once, before persisting.
#[derive(Debug, Default)]
pub struct Ready {
    /// A snapshot received from the leader: persist it (it replaces the whole log) and load it
    /// into the state machine before anything else in this batch.
    pub snapshot: Option<Snapshot>,
    /// New term or vote to persist, if either changed.
    pub hard_state: Option<HardState>,
    /// Entries to persist. If the first index is at or below the last stored index, storage
    /// drops its entries from that index on first (a follower's conflict truncation).
    pub entries: Vec<Entry>,
    /// Messages that do not depend on this batch being durable (a leader's AppendEntries).
    pub messages: Vec<Envelope>,
    /// Messages to send only after `hard_state` and `entries` are durable: votes and
    /// acknowledgements promise what the disk must keep.
    pub persisted_messages: Vec<Envelope>,
    /// Newly committed entries, in index order, to apply exactly once.
    pub committed_entries: Vec<Entry>,
    /// Reads the leader has confirmed.
    pub read_states: Vec<ReadState>,
}

impl Ready {
    /// True if the batch holds nothing to do.
    pub fn is_empty(&self) -> bool {
        self.snapshot.is_none()
            && self.hard_state.is_none()
            && self.entries.is_empty()
            && self.messages.is_empty()
            && self.persisted_messages.is_empty()
            && self.committed_entries.is_empty()
            && self.read_states.is_empty()
    }

    /// True if something must reach the disk before `persisted_messages` go out.
    pub fn must_persist(&self) -> bool {
        self.snapshot.is_some() || self.hard_state.is_some() || !self.entries.is_empty()
    }
}

/// The leader's view of one follower, as `status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PeerStatus {
    /// Follower id.
    pub id: NodeId,
    /// Next index to send.
    pub next_index: Index,
    /// Highest index known replicated there.
    pub match_index: Index,
    /// "probe", "replicate" or "snapshot".
    pub mode: &'static str,
    /// While sending a snapshot: bytes confirmed and total.
    pub snapshot_sent: Option<(u64, u64)>,
    /// Unanswered AppendEntries.
    pub inflight: usize,
}

/// A snapshot of the node's consensus state for operators.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// Node id.
    pub id: NodeId,
    /// Current role.
    pub role: Role,
    /// Current term.
    pub term: Term,
    /// Known leader of the current term.
    pub leader: Option<NodeId>,
    /// Vote cast in the current term.
    pub voted_for: Option<NodeId>,
    /// Highest index known committed.
    pub commit_index: Index,
    /// Highest index handed to the state machine.
    pub last_applied: Index,
    /// Index of the last log entry.
    pub last_log_index: Index,
    /// Term of the last log entry.
    pub last_log_term: Term,
    /// Highest index durable on this node's disk.
    pub persisted_index: Index,
    /// Last index covered by the latest snapshot (0 without one).
    pub snapshot_index: Index,
    /// Term of that entry.
    pub snapshot_term: Term,
    /// While receiving a snapshot: its last index, bytes received, and total.
    pub snapshot_receiving: Option<(Index, u64, u64)>,
    /// Per-follower progress (leader only; empty otherwise).
    pub peers: Vec<PeerStatus>,
    /// Why the node holds its current role (the reason of its last role change).
    pub role_reason: String,
    /// Leader only: the peer leadership is being handed to.
    pub transfer_to: Option<NodeId>,
}

/// A read waiting for its heartbeat round to be acknowledged by a quorum.
#[derive(Debug, Clone, Copy)]
struct PendingRead {
    ctx: u64,
    index: Index,
    round: u64,
}

/// One member of a Raft cluster.
pub struct RaftNode {
    /// This node's id. Fixed.
    id: NodeId,
    /// Settings. Fixed.
    config: Config,
    /// Latest term seen (Figure 2). Never decreases; persisted before any message that
    /// carries it is acted on by a peer.
    current_term: Term,
    /// Vote cast in `current_term` (Figure 2). Set at most once per term; persisted before the
    /// vote is sent.
    voted_for: Option<NodeId>,
    /// The log (Figure 2).
    log: RaftLog,
    /// Highest index known committed (Figure 2). Never decreases; `<= log.last_index()`.
    commit_index: Index,
    /// Highest index handed out in `Ready::committed_entries`. `<= commit_index`.
    last_applied: Index,
    /// Current role; written only by the `become_*` functions.
    role: Role,
    /// Leader of `current_term`, once known.
    leader_id: Option<NodeId>,
    /// Ticks since the last reset of the election timer (followers and candidates).
    election_elapsed: u32,
    /// This round's election timeout, drawn from the configured range at every reset.
    randomized_election_timeout: u32,
    /// Ticks since the leader's last heartbeat broadcast.
    heartbeat_elapsed: u32,
    /// Candidate and pre-candidate: answers received in this election (own vote included).
    votes: BTreeMap<NodeId, bool>,
    /// Why the node holds its current role; set by the `become_*` functions.
    role_reason: String,
    /// Leader only: ticks since the last check that a quorum is still in contact.
    check_quorum_elapsed: u32,
    /// Leader only: the peer leadership is being handed to. While set, no proposals.
    lead_transferee: Option<NodeId>,
    /// Leader only: ticks since the transfer began; it is abandoned after an election timeout.
    transfer_elapsed: u32,
    /// Leader only: Figure 2's `next_index` and `match_index`, with flow control.
    progress: BTreeMap<NodeId, Progress>,
    /// First index not yet handed to storage in a `Ready`.
    unstable_from: Index,
    /// Highest index storage has confirmed durable. `<= log.last_index()`.
    persisted_index: Index,
    /// Hard state as last handed to storage, to tell when it changed.
    persisted_hard_state: HardState,
    /// The leader's current heartbeat round for reads. Never decreases.
    read_round: u64,
    /// A read arrived: start a new heartbeat round at the next `ready`.
    read_round_wanted: bool,
    /// The commit index rose: tell followers at the next `ready`, so they apply promptly.
    commit_broadcast_wanted: bool,
    /// Reads waiting until an entry of this leader's term commits (§6.4: only then does a new
    /// leader know the commit index).
    reads_awaiting_commit: Vec<u64>,
    /// Reads waiting for their heartbeat round to be acknowledged.
    pending_reads: Vec<PendingRead>,
    /// The latest snapshot, taken here or received from a leader; what a leader sends to a
    /// follower whose next entry was compacted away.
    snapshot: Option<Snapshot>,
    /// crc32c of `snapshot.data`, computed once per snapshot.
    snapshot_checksum: u32,
    /// Follower only: the snapshot being received, chunk by chunk.
    incoming: Option<IncomingSnapshot>,
    /// The batch being built for the caller.
    ready: Ready,
    /// Source of election timeouts, seeded by the caller so runs can be replayed.
    rng: StdRng,
}

impl RaftNode {
    /// A node restored from its persisted `hard_state` and `log` (both empty for a new node).
    /// It starts as a follower with a fresh randomized election timeout.
    ///
    /// # Panics
    /// If `config` does not validate.
    pub fn new(config: Config, hard_state: HardState, log: RaftLog, seed: u64) -> RaftNode {
        if let Err(e) = config.validate() {
            panic!("invalid raft config: {e}");
        }
        let last_index = log.last_index();
        let snapshot_index = log.snapshot_index();
        let mut node = RaftNode {
            id: config.id,
            config,
            current_term: hard_state.current_term,
            voted_for: hard_state.voted_for,
            log,
            commit_index: snapshot_index,
            last_applied: snapshot_index,
            role: Role::Follower,
            leader_id: None,
            election_elapsed: 0,
            randomized_election_timeout: 0,
            heartbeat_elapsed: 0,
            votes: BTreeMap::new(),
            role_reason: "started".to_string(),
            check_quorum_elapsed: 0,
            lead_transferee: None,
            transfer_elapsed: 0,
            progress: BTreeMap::new(),
            unstable_from: last_index + 1,
            persisted_index: last_index,
            persisted_hard_state: hard_state,
            read_round: 0,
            read_round_wanted: false,
            commit_broadcast_wanted: false,
            reads_awaiting_commit: Vec::new(),
            pending_reads: Vec::new(),
            snapshot: None,
            snapshot_checksum: 0,
            incoming: None,
            ready: Ready::default(),
            rng: StdRng::seed_from_u64(seed),
        };
        node.reset_election_timer();
        node
    }

    // ----- accessors -----

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Current role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Current term.
    pub fn current_term(&self) -> Term {
        self.current_term
    }

    /// Leader of the current term, if known.
    pub fn leader_id(&self) -> Option<NodeId> {
        self.leader_id
    }

    /// Highest index known committed.
    pub fn commit_index(&self) -> Index {
        self.commit_index
    }

    /// Highest index handed to the state machine.
    pub fn last_applied(&self) -> Index {
        self.last_applied
    }

    /// The log.
    pub fn log(&self) -> &RaftLog {
        &self.log
    }

    /// The persistent state as it stands in memory.
    pub fn hard_state(&self) -> HardState {
        HardState {
            current_term: self.current_term,
            voted_for: self.voted_for,
        }
    }

    /// The cluster members.
    pub fn voters(&self) -> &[NodeId] {
        &self.config.voters
    }

    /// An operator's view of the consensus state.
    pub fn status(&self) -> Status {
        let peers = self
            .progress
            .iter()
            .map(|(&id, pr)| PeerStatus {
                id,
                next_index: pr.next_index,
                match_index: pr.match_index,
                mode: match pr.mode {
                    ProgressMode::Probe => "probe",
                    ProgressMode::Replicate => "replicate",
                    ProgressMode::Snapshot => "snapshot",
                },
                snapshot_sent: pr.snapshot.map(|t| (t.acked_offset, t.total_len)),
                inflight: pr.inflight(),
            })
            .collect();
        Status {
            id: self.id,
            role: self.role,
            term: self.current_term,
            leader: self.leader_id,
            voted_for: self.voted_for,
            commit_index: self.commit_index,
            last_applied: self.last_applied,
            last_log_index: self.log.last_index(),
            last_log_term: self.log.last_term(),
            persisted_index: self.persisted_index,
            snapshot_index: self.snapshot.as_ref().map_or(0, |s| s.index),
            snapshot_term: self.snapshot.as_ref().map_or(0, |s| s.term),
            snapshot_receiving: self.incoming.as_ref().map(IncomingSnapshot::progress),
            peers,
            role_reason: self.role_reason.clone(),
            transfer_to: self.lead_transferee,
        }
    }

    fn quorum(&self) -> usize {
        self.config.voters.len() / 2 + 1
    }

    fn peers(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.config
            .voters
            .iter()
            .copied()
            .filter(move |&p| p != self.id)
    }

    // ----- inputs -----

    /// Advances the clock by one tick: followers and candidates count toward an election,
    /// leaders toward the next heartbeat.
    pub fn tick(&mut self) {
        if self.role == Role::Leader {
            self.heartbeat_elapsed += 1;
            if self.heartbeat_elapsed >= self.config.heartbeat_ticks {
                self.heartbeat_elapsed = 0;
                self.send_heartbeats();
            }
            self.tick_leadership_checks();
            return;
        }
        self.election_elapsed += 1;
        if self.election_elapsed >= self.randomized_election_timeout {
            let reason = match self.leader_id {
                Some(leader) => format!(
                    "election timeout after {}ms without hearing from leader {leader}",
                    self.election_elapsed
                ),
                None => format!(
                    "election timeout after {}ms with no leader",
                    self.election_elapsed
                ),
            };
            self.start_election(&reason);
        }
    }

    /// Ticks until `tick` would do something (start an election or send heartbeats), so an
    /// idle caller can sleep that long. Always at least 1.
    pub fn ticks_until_timer(&self) -> u32 {
        let left = if self.role == Role::Leader {
            let heartbeat = self
                .config
                .heartbeat_ticks
                .saturating_sub(self.heartbeat_elapsed);
            heartbeat.min(self.ticks_until_leadership_check())
        } else {
            self.randomized_election_timeout
                .saturating_sub(self.election_elapsed)
        };
        left.max(1)
    }

    /// Starts an election now, as if the election timeout had fired (operator's `campaign`).
    /// A leader ignores it.
    pub fn campaign(&mut self) {
        if self.role == Role::Leader {
            node_debug!(self, "campaign ignored: already leader");
            return;
        }
        self.start_election("campaign requested by operator");
    }

    /// Handles one message from peer `from`. Messages from unknown peers are dropped.
    pub fn step(&mut self, from: NodeId, message: Message) {
        if from == self.id || !self.config.voters.contains(&from) {
            node_debug!(self, "dropped {} from unknown node {from}", message.kind());
            return;
        }
        if message.term() > MAX_TERM {
            node_debug!(
                self,
                "dropped {} from node {from}: implausible term",
                message.kind()
            );
            return;
        }

        // §5.1: a higher term anywhere makes this node a follower of that term. A leader of
        // that term is known only from its AppendEntries.
        let term = message.term();
        if term > self.current_term && self.in_lease_ignoring(from, &message) {
            return;
        }
        if term > self.current_term && !is_granted_pre_vote_or_request(&message) {
            let leader = match message {
                Message::AppendEntries(_) | Message::InstallSnapshot(_) => Some(from),
                _ => None,
            };
            let reason = format!(
                "saw higher term {term} from node {from} ({})",
                message.kind()
            );
            self.become_follower(term, leader, &reason);
        }

        match message {
            Message::RequestVote(m) => self.handle_vote_request(from, m),
            Message::RequestVoteResponse(m) => self.handle_vote_response(from, m),
            Message::AppendEntries(m) => self.handle_append_entries(from, m),
            Message::AppendEntriesResponse(m) => self.handle_append_response(from, m),
            Message::InstallSnapshot(m) => self.handle_install_snapshot(from, m),
            Message::InstallSnapshotResponse(m) => self.handle_snapshot_response(from, m),
            Message::TimeoutNow(m) => self.handle_timeout_now(from, m),
        }
    }

    /// Appends a client command to the leader's log and returns its index. It commits once a
    /// quorum stores it; `Ready::committed_entries` then carries it back.
    ///
    /// # Errors
    /// `NotLeader` with the known leader when this node does not lead.
    pub fn propose(&mut self, data: Vec<u8>) -> Result<Index, NotLeader> {
        if self.lead_transferee.is_some() {
            // Leadership is being handed over: new entries would only delay it.
            return Err(NotLeader { leader: None });
        }
        if self.role != Role::Leader {
            return Err(NotLeader {
                leader: self.leader_id,
            });
        }
        Ok(self.append_own(Payload::Command(data)))
    }

    /// Asks for a linearizable read point (ReadIndex, dissertation §6.4). Once this leader has
    /// confirmed with a quorum that it still leads, `Ready::read_states` returns `ctx` with the
    /// index the state machine must reach before the read is answered.
    ///
    /// # Errors
    /// `NotLeader` when this node does not lead.
    pub fn read_index(&mut self, ctx: u64) -> Result<(), NotLeader> {
        if self.role != Role::Leader {
            return Err(NotLeader {
                leader: self.leader_id,
            });
        }
        if self.log.term_at(self.commit_index) != Some(self.current_term) {
            self.reads_awaiting_commit.push(ctx);
            return Ok(());
        }
        self.queue_read(ctx);
        Ok(())
    }

    /// Storage reports that every entry up to `index`, which had term `term`, is durable. A
    /// notice about entries since replaced by a truncation is ignored.
    pub fn on_persisted(&mut self, index: Index, term: Term) {
        if self.log.term_at(index) != Some(term) || index <= self.persisted_index {
            return;
        }
        self.persisted_index = index;
        if self.role == Role::Leader {
            self.maybe_commit();
        }
    }

    /// True if `ready` would return a non-empty batch.
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
            || self.read_round_wanted
            || self.commit_broadcast_wanted
            || self.unstable_from <= self.log.last_index()
            || self.hard_state() != self.persisted_hard_state
            || self.last_applied < self.commit_index
            || (self.role == Role::Leader && self.any_follower_sendable())
    }

    /// Takes the batch of work built since the last call. See [`Ready`] for the order in which
    /// the caller must carry it out.
    pub fn ready(&mut self) -> Ready {
        if self.role == Role::Leader {
            if self.read_round_wanted {
                self.read_round_wanted = false;
                self.commit_broadcast_wanted = false;
                self.read_round += 1;
                self.send_heartbeats();
                self.check_reads();
            }
            self.send_pending_appends();
            if self.commit_broadcast_wanted {
                self.commit_broadcast_wanted = false;
                self.send_commit_updates();
            }
        }

        let mut ready = std::mem::take(&mut self.ready);
        let hard_state = self.hard_state();
        if hard_state != self.persisted_hard_state {
            ready.hard_state = Some(hard_state);
            self.persisted_hard_state = hard_state;
        }
        if self.unstable_from <= self.log.last_index() {
            let from = self.unstable_from;
            ready.entries = self.log.slice(from, usize::MAX, usize::MAX).to_vec();
            self.unstable_from = self.log.last_index() + 1;
        }
        if self.last_applied < self.commit_index {
            let from = self.last_applied + 1;
            let count = (self.commit_index - self.last_applied) as usize;
            ready.committed_entries = self.log.slice(from, count, usize::MAX).to_vec();
            assert_eq!(
                ready.committed_entries.len(),
                count,
                "committed entries missing"
            );
            self.last_applied = self.commit_index;
        }
        ready
    }

    // ----- role changes: the only writers of `role` -----

    /// Becomes a follower in `term` (≥ the current term), forgetting the vote if the term is
    /// new. Logs the change with its reason.
    fn become_follower(&mut self, term: Term, leader: Option<NodeId>, reason: &str) {
        assert!(
            term >= self.current_term,
            "follower of older term {term} < {}",
            self.current_term
        );
        let previous = self.role;
        if term > self.current_term {
            self.current_term = term;
            self.voted_for = None;
        }
        self.role = Role::Follower;
        self.leader_id = leader;
        self.role_reason = reason.to_string();
        self.lead_transferee = None;
        self.commit_broadcast_wanted = false;
        self.votes.clear();
        self.progress.clear();
        self.drop_reads();
        self.reset_election_timer();
        if previous == Role::Follower {
            node_info!(self, "follower in a new term: {reason}");
        } else {
            node_info!(self, "became follower (was {previous:?}): {reason}");
        }
    }

    /// Starts a new term as candidate, voting for itself (§5.2).
    fn become_candidate(&mut self, reason: &str) {
        assert_ne!(self.role, Role::Leader, "leader cannot become candidate");
        let previous = self.role;
        self.current_term += 1;
        self.voted_for = Some(self.id);
        self.role = Role::Candidate;
        self.role_reason = reason.to_string();
        self.leader_id = None;
        self.votes.clear();
        self.votes.insert(self.id, true);
        self.reset_election_timer();
        node_info!(self, "became candidate (was {previous:?}): {reason}");
    }

    /// Takes leadership of the current term after winning its election (§5.2), then appends
    /// a no-op of its own term so earlier entries can commit (§5.4.2, §8).
    fn become_leader(&mut self) {
        assert_eq!(self.role, Role::Candidate, "only a candidate can win");
        assert_eq!(self.voted_for, Some(self.id), "a leader voted for itself");
        self.role = Role::Leader;
        self.leader_id = Some(self.id);
        self.heartbeat_elapsed = 0;
        self.check_quorum_elapsed = 0;
        let last_index = self.log.last_index();
        self.progress = self
            .peers()
            .map(|p| (p, Progress::new(last_index)))
            .collect();
        let voters: Vec<NodeId> = self
            .votes
            .iter()
            .filter(|(_, &granted)| granted)
            .map(|(&id, _)| id)
            .collect();
        self.votes.clear();
        let term = self.current_term;
        let voters = id_list(&voters);
        self.role_reason = format!("won the election of term {term} with votes from {voters}");
        node_info!(
            self,
            "became leader (was Candidate): won election with votes from {voters}"
        );
        self.append_own(Payload::Noop);
    }

    // ----- elections -----

    /// Becomes a candidate and asks every peer for its vote (§5.2).
    fn request_votes(&mut self, reason: &str, transfer: bool) {
        self.become_candidate(reason);
        if self.votes_granted() >= self.quorum() {
            self.become_leader();
            return;
        }
        let request = RequestVote {
            term: self.current_term,
            last_log_index: self.log.last_index(),
            last_log_term: self.log.last_term(),
            pre_vote: false,
            transfer,
        };
        let peers: Vec<NodeId> = self.peers().collect();
        for to in peers {
            // The vote for ourselves must be durable before we ask for others' (§5.2, Figure 2).
            self.send_persisted(to, Message::RequestVote(request.clone()));
        }
    }

    fn votes_granted(&self) -> usize {
        self.votes.values().filter(|&&granted| granted).count()
    }

    /// RequestVote receiver (Figure 2): one vote per term, only for a log at least as up to
    /// date as ours (§5.4.1).
    fn handle_vote_request(&mut self, from: NodeId, m: RequestVote) {
        if m.pre_vote {
            self.handle_pre_vote_request(from, m);
            return;
        }
        assert!(m.term <= self.current_term, "higher term not handled first");
        let vote_granted = if m.term < self.current_term {
            node_debug!(
                self,
                "refused vote to node {from}: its term {} is stale",
                m.term
            );
            false
        } else if self.voted_for.is_some_and(|v| v != from) {
            let voted = self.voted_for.unwrap_or_default();
            node_debug!(
                self,
                "refused vote to node {from}: already voted for {voted}"
            );
            false
        } else if !self.log.is_up_to_date(m.last_log_index, m.last_log_term) {
            node_debug!(
                self,
                "refused vote to node {from}: its log ({}, {}) is behind ours ({}, {})",
                m.last_log_term,
                m.last_log_index,
                self.log.last_term(),
                self.log.last_index()
            );
            false
        } else {
            self.voted_for = Some(from);
            self.reset_election_timer();
            node_debug!(self, "granted vote to node {from}");
            true
        };
        let response = RequestVoteResponse {
            term: self.current_term,
            vote_granted,
            pre_vote: false,
        };
        self.send_persisted(from, Message::RequestVoteResponse(response));
    }

    /// Counts a vote; a quorum of grants wins, a quorum of refusals loses (§5.2).
    fn handle_vote_response(&mut self, from: NodeId, m: RequestVoteResponse) {
        if m.pre_vote {
            self.handle_pre_vote_response(from, m);
            return;
        }
        if self.role != Role::Candidate || m.term != self.current_term {
            node_debug!(self, "ignored stale vote response from node {from}");
            return;
        }
        self.votes.insert(from, m.vote_granted);
        if self.votes_granted() >= self.quorum() {
            self.become_leader();
            return;
        }
        let refused = self.votes.values().filter(|&&granted| !granted).count();
        if refused >= self.quorum() {
            let term = self.current_term;
            self.become_follower(term, None, "lost election: a quorum refused its vote");
        }
    }

    // ----- replication: follower side -----

    /// AppendEntries receiver (Figure 2, §5.3).
    fn handle_append_entries(&mut self, from: NodeId, m: AppendEntries) {
        assert!(m.term <= self.current_term, "higher term not handled first");
        let mut response = AppendEntriesResponse {
            term: self.current_term,
            success: false,
            request_prev_index: m.prev_log_index,
            match_index: 0,
            conflict_index: 0,
            conflict_term: None,
            read_round: m.read_round,
        };
        if m.term < self.current_term {
            // Our answer carries our term, which makes the stale leader step down.
            node_debug!(
                self,
                "rejected append from stale leader {from} (term {})",
                m.term
            );
            self.send_persisted(from, Message::AppendEntriesResponse(response));
            return;
        }
        if !self.accept_leader(from) {
            return;
        }

        match self.append_from_leader(&m) {
            Ok(last_new) => {
                response.success = true;
                response.match_index = last_new;
                if m.leader_commit > self.commit_index {
                    self.commit_index = m.leader_commit.min(last_new).max(self.commit_index);
                }
            }
            Err((conflict_index, conflict_term)) => {
                response.conflict_index = conflict_index;
                response.conflict_term = conflict_term;
            }
        }
        self.send_persisted(from, Message::AppendEntriesResponse(response));
    }

    /// Recognises `from` as the leader of the current term (its message carried our term).
    /// Returns false if that is impossible because this node leads the same term.
    fn accept_leader(&mut self, from: NodeId) -> bool {
        if self.role == Role::Leader {
            log::error!(
                "node={} term={}: two leaders in one term: ignoring node {from}",
                self.id,
                self.current_term
            );
            return false;
        }
        if matches!(self.role, Role::Candidate | Role::PreCandidate) {
            let term = self.current_term;
            let reason = format!("node {from} won the election of this term");
            self.become_follower(term, Some(from), &reason);
        }
        if self.leader_id != Some(from) {
            self.leader_id = Some(from);
            self.role_reason = format!("following leader {from}");
            node_info!(self, "following leader {from}");
        }
        self.reset_election_timer();
        true
    }

    /// Applies the consistency check and stores the new entries. Returns the index of the
    /// last entry the request vouches for, or the rejection hint (conflict index and term).
    fn append_from_leader(&mut self, m: &AppendEntries) -> Result<Index, (Index, Option<Term>)> {
        let mut prev_index = m.prev_log_index;
        let mut entries = &m.entries[..];

        // Entries inside our snapshot are committed, so they match whatever the leader has.
        let snapshot_index = self.log.snapshot_index();
        if prev_index < snapshot_index {
            let skip = ((snapshot_index - prev_index) as usize).min(entries.len());
            entries = &entries[skip..];
            prev_index = snapshot_index;
            if entries.is_empty() {
                return Ok(snapshot_index);
            }
        } else {
            match self.log.term_at(prev_index) {
                None => {
                    node_debug!(self, "rejected append at {prev_index}: log ends before it");
                    return Err((self.log.last_index() + 1, None));
                }
                Some(term) if term != m.prev_log_term => {
                    let first = self.log.first_index_of_term_at(prev_index);
                    node_debug!(self, "rejected append at {prev_index}: term {term} there");
                    return Err((first, Some(term)));
                }
                Some(_) => {}
            }
        }

        for entry in entries {
            match self.log.term_at(entry.index) {
                Some(term) if term == entry.term => continue,
                Some(_) => {
                    // Only a real conflict cuts the log; a matching prefix never does, so a
                    // delayed or duplicated append cannot undo newer entries (§5.3).
                    if entry.index <= self.commit_index {
                        log::error!(
                            "node={} term={}: leader conflicts with committed entry {}",
                            self.id,
                            self.current_term,
                            entry.index
                        );
                        return Err((self.commit_index + 1, None));
                    }
                    node_debug!(self, "truncating log from {} (conflict)", entry.index);
                    self.log.truncate_from(entry.index);
                    self.unstable_from = self.unstable_from.min(entry.index);
                    self.persisted_index = self.persisted_index.min(entry.index - 1);
                    self.log.append(entry.clone());
                }
                None => self.log.append(entry.clone()),
            }
        }
        Ok(prev_index + entries.len() as u64)
    }

    // ----- replication: leader side -----

    /// Appends an entry of the current term to the leader's own log.
    fn append_own(&mut self, payload: Payload) -> Index {
        assert_eq!(
            self.role,
            Role::Leader,
            "only the leader appends its own entries"
        );
        let index = self.log.last_index() + 1;
        self.log.append(Entry {
            term: self.current_term,
            index,
            payload,
        });
        index
    }

    /// AppendEntries answer (Figure 2): advance on success, skip back on rejection.
    fn handle_append_response(&mut self, from: NodeId, m: AppendEntriesResponse) {
        if self.role != Role::Leader || m.term != self.current_term {
            return;
        }
        let last_index = self.log.last_index();
        let Some(pr) = self.progress.get_mut(&from) else {
            return;
        };
        pr.recent_active = true;
        pr.read_round_acked = pr.read_round_acked.max(m.read_round);

        if m.success && m.match_index > last_index {
            node_debug!(
                self,
                "ignored response from node {from}: matched past our log"
            );
        } else if m.success {
            if pr.matched(m.match_index) {
                self.maybe_commit();
            }
        } else {
            let stale = m.request_prev_index < pr.match_index
                || (pr.mode == ProgressMode::Probe && m.request_prev_index + 1 != pr.next_index);
            let regressed = m.request_prev_index >= pr.match_index
                && m.conflict_term.is_none()
                && m.conflict_index <= pr.match_index
                && pr.match_index > 0;
            if regressed {
                // The follower no longer holds entries it acknowledged: its disk lost them (a
                // torn or damaged tail cut off at restart). Believe it, or it never catches up.
                let next = m.conflict_index.min(m.request_prev_index).max(1);
                log::warn!(
                    "node={} term={}: node {from} lost entries it acknowledged (up to {}); \
                     resending from {next}",
                    self.id,
                    self.current_term,
                    pr.match_index
                );
                let pr = self.progress.get_mut(&from).expect("progress of peer");
                pr.regressed(next);
            } else if stale {
                node_debug!(self, "ignored stale rejection from node {from}");
            } else {
                let hint = match m.conflict_term {
                    Some(term) => self
                        .log
                        .last_index_of_term(term)
                        .map_or(m.conflict_index, |i| i + 1),
                    None => m.conflict_index,
                };
                let next = hint.min(m.request_prev_index).max(1);
                let pr = self.progress.get_mut(&from).expect("progress of peer");
                pr.rejected(next);
                node_debug!(
                    self,
                    "node {from} rejected at {}: retry from {next}",
                    m.request_prev_index
                );
            }
        }
        self.check_reads();
        self.maybe_send_timeout_now(from);
        self.send_appends_to(from);
    }

    /// Raises `commit_index` to the highest index a quorum stores, but only by counting an
    /// entry of the current term (§5.4.2; the paper's Figure 8).
    fn maybe_commit(&mut self) {
        let mut matched: Vec<Index> = self.progress.values().map(|p| p.match_index).collect();
        matched.push(self.persisted_index);
        matched.sort_unstable_by(|a, b| b.cmp(a));
        let quorum_index = matched[self.quorum() - 1];
        if quorum_index <= self.commit_index {
            return;
        }
        if self.log.term_at(quorum_index) != Some(self.current_term) {
            return;
        }
        let first_in_term = self.log.term_at(self.commit_index) != Some(self.current_term);
        self.commit_index = quorum_index;
        self.commit_broadcast_wanted = true;
        if first_in_term {
            // The no-op of this term has committed: reads held back until now may proceed.
            for ctx in std::mem::take(&mut self.reads_awaiting_commit) {
                self.queue_read(ctx);
            }
        }
    }

    fn any_follower_sendable(&self) -> bool {
        let last_index = self.log.last_index();
        self.progress
            .values()
            .any(|pr| pr.next_index <= last_index && !pr.is_paused(self.config.max_inflight))
    }

    /// Sends what each follower's window allows of the entries it lacks.
    fn send_pending_appends(&mut self) {
        let peers: Vec<NodeId> = self.peers().collect();
        for to in peers {
            self.send_appends_to(to);
        }
    }

    /// Streams entries to one follower until its window is full or it has everything.
    fn send_appends_to(&mut self, to: NodeId) {
        let max_inflight = self.config.max_inflight;
        loop {
            let Some(pr) = self.progress.get(&to) else {
                return;
            };
            if pr.is_paused(max_inflight) || pr.next_index > self.log.last_index() {
                return;
            }
            self.send_append(to);
        }
    }

    /// A heartbeat to every follower: an AppendEntries from its `next_index`, with whatever
    /// entries it still lacks, so a lost message is noticed and a probe is retried (§5.2).
    fn send_heartbeats(&mut self) {
        let peers: Vec<NodeId> = self.peers().collect();
        for to in peers {
            if let Some(pr) = self.progress.get_mut(&to) {
                pr.probe_sent = false;
                // Chunks not confirmed by now were probably lost: go back to the last
                // confirmed byte (the follower only accepts chunks in order).
                if let Some(transfer) = pr.snapshot.as_mut() {
                    transfer.next_offset = transfer.acked_offset;
                }
            }
            self.send_append(to);
        }
    }

    /// Tells followers the new commit index, skipping those that this batch already tells.
    fn send_commit_updates(&mut self) {
        let told: Vec<NodeId> = self.ready.messages.iter().map(|e| e.to).collect();
        let peers: Vec<NodeId> = self.peers().filter(|p| !told.contains(p)).collect();
        for to in peers {
            self.send_append(to);
        }
    }

    /// Sends one AppendEntries to `to` starting at its `next_index`, carrying entries unless
    /// the window is full (then it is a bare heartbeat).
    fn send_append(&mut self, to: NodeId) {
        let max_inflight = self.config.max_inflight;
        let pr = self.progress.get(&to).expect("progress of peer");
        let prev_log_index = pr.next_index - 1;
        let snapshot_mode = pr.mode == ProgressMode::Snapshot;
        let Some(prev_log_term) = self.log.term_at(prev_log_index).filter(|_| !snapshot_mode)
        else {
            // The follower needs entries compacted away: it gets the snapshot instead.
            self.send_snapshot(to);
            return;
        };
        let entries = if pr.is_paused(max_inflight) && pr.mode == ProgressMode::Replicate {
            Vec::new()
        } else {
            let (count, bytes) = (self.config.max_append_entries, self.config.max_append_bytes);
            self.log.slice(pr.next_index, count, bytes).to_vec()
        };
        let last = prev_log_index + entries.len() as u64;
        let count = entries.len();
        let message = AppendEntries {
            term: self.current_term,
            prev_log_index,
            prev_log_term,
            entries,
            leader_commit: self.commit_index,
            read_round: self.read_round,
        };
        self.progress
            .get_mut(&to)
            .expect("progress of peer")
            .sent(last, count);
        self.ready.messages.push(Envelope {
            to,
            message: Message::AppendEntries(message),
        });
    }

    // ----- reads -----

    fn queue_read(&mut self, ctx: u64) {
        self.pending_reads.push(PendingRead {
            ctx,
            index: self.commit_index,
            round: self.read_round + 1,
        });
        self.read_round_wanted = true;
    }

    /// Releases reads whose heartbeat round a quorum (this leader included) has answered.
    fn check_reads(&mut self) {
        if self.pending_reads.is_empty() {
            return;
        }
        let mut rounds: Vec<u64> = self.progress.values().map(|p| p.read_round_acked).collect();
        rounds.push(self.read_round);
        rounds.sort_unstable_by(|a, b| b.cmp(a));
        let confirmed = rounds[self.quorum() - 1];
        let ready = &mut self.ready;
        self.pending_reads.retain(|read| {
            if read.round > confirmed {
                return true;
            }
            ready.read_states.push(ReadState {
                ctx: read.ctx,
                index: read.index,
            });
            false
        });
    }

    fn drop_reads(&mut self) {
        self.reads_awaiting_commit.clear();
        self.pending_reads.clear();
        self.read_round_wanted = false;
    }

    // ----- helpers -----

    fn reset_election_timer(&mut self) {
        self.election_elapsed = 0;
        let (min, max) = (
            self.config.election_timeout_min_ticks,
            self.config.election_timeout_max_ticks,
        );
        self.randomized_election_timeout = self.rng.gen_range(min..max);
    }

    fn send_persisted(&mut self, to: NodeId, message: Message) {
        self.ready.persisted_messages.push(Envelope { to, message });
    }

    /// Checks what must hold between any two steps. Tests and the simulation call it after
    /// every step.
    ///
    /// # Panics
    /// With the broken invariant and the values involved.
    pub fn check_invariants(&self) {
        let last = self.log.last_index();
        assert!(
            self.last_applied <= self.commit_index,
            "node {}: applied {} past commit {}",
            self.id,
            self.last_applied,
            self.commit_index
        );
        assert!(
            self.commit_index <= last,
            "node {}: commit {} past last index {last}",
            self.id,
            self.commit_index
        );
        assert!(
            self.persisted_index <= last,
            "node {}: persisted past end",
            self.id
        );
        if self.role == Role::Leader {
            assert_eq!(self.leader_id, Some(self.id), "leader knows itself");
            assert_eq!(self.voted_for, Some(self.id), "leader voted for itself");
        }
        for (id, pr) in &self.progress {
            assert!(
                pr.next_index > pr.match_index,
                "node {}: next <= match for {id}",
                self.id
            );
            assert!(
                pr.match_index <= last,
                "node {}: match past end for {id}",
                self.id
            );
        }
    }
}

#[cfg(test)]
mod tests;
