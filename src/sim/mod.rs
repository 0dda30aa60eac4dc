//! A deterministic simulation of a whole Raft cluster, with Raft's safety properties checked
//! after every step.
//!
//! A [`Simulation`] owns every member's [`RaftNode`], a simulated network and a simulated disk
//! per member, and drives them the way the runtime does: hand a node one input (a delivered
//! message, a clock tick, a client command), take its [`Ready`], persist what it says, tell the
//! node, send its messages, install a snapshot from the leader, apply what committed, answer
//! the reads that may now be answered, and every so many applied entries snapshot the state
//! machine so the core compacts its log. There are no clocks, threads or sockets. Every choice
//! (message delays, losses, duplicates, partitions, crashes, client traffic, each node's
//! election timeouts) comes from one `StdRng` seeded with [`SimConfig::seed`], so a seed
//! replays exactly, step for step.
//!
//! The network is a priority queue of messages ordered by delivery tick, then by send order.
//! Every message waits a random number of ticks, so messages overtake each other; it may also
//! be lost or duplicated. Partitions and one-way link cuts are checked at delivery time, so a
//! message sent before a partition can still be dropped by it. A crash throws away the node and
//! everything in flight to it; a restart builds a new `RaftNode` from the disk alone, which holds
//! exactly what the node persisted: hard state, latest snapshot, log after it. A crash may also
//! strike in the middle of handling a `Ready`: after its `messages` left but before the disk
//! write, or after the write but before the node heard of it. A pause stalls a node without
//! losing anything, and an operator may ask for elections and leadership transfers.
//!
//! After every step the simulation checks, and panics with the seed and the step number on the
//! first violation:
//!
//! - Election Safety (§5.2): at most one leader per term, over the whole run.
//! - Log Matching (§5.3): an (index, term) pair names one entry and one log prefix. Every entry
//!   a node hands to its disk is checked against a registry of all entries ever seen and
//!   against the live logs of the other nodes; all live logs are also compared in full every
//!   [`SimConfig::full_check_steps`] steps.
//! - Leader Completeness (§5.4): an entry committed in term T is in the log of the leader of
//!   every term after T, checked when the leader is elected and when the entry commits.
//! - State Machine Safety (§5.4.3): every node applies the same entry at each index, in order,
//!   once per incarnation; only committed entries are applied; a snapshot a node loads holds
//!   exactly the state every node had at its index.
//! - Linearizable reads (dissertation §6.4): a read reflects every write acknowledged before
//!   it began; its read index covers everything committed before it began.
//! - Durability (Figure 2): a message promises only what its sender's disk holds (its term, a
//!   vote, acknowledged entries or snapshot), and an entry counts as committed only once a
//!   majority of disks hold it, and stays on a majority from then on.
//! - Per node: the core's own `check_invariants`; the term never falls and the vote never
//!   changes within a term, even across crashes; the commit index never falls within one
//!   incarnation; the disk always equals the in-memory log once a step is done.
//!
//! [`run_seed`] runs one seed end to end: a phase with random faults and client traffic, then a
//! liveness phase that heals everything and requires the cluster to elect a leader, commit a
//! fresh command and bring every node to the same applied index.

use std::cell::Cell;
use std::cmp::{Ordering, Reverse};
use std::collections::hash_map::Entry as MapEntry;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::core::{
    Config, Entry, HardState, Index, Message, NodeId, Payload, RaftLog, RaftNode, ReadState, Ready,
    Role, Snapshot, Term,
};

/// The environment variable the test harness reads to rerun one seed.
pub const SEED_ENV: &str = "RAFTNODE_SIM_SEED";

/// Most `Ready` batches one input may lead to before the simulation calls it a busy loop: a
/// runtime that trusted `has_ready` would spin forever.
const MAX_READY_ROUNDS: usize = 64;

/// Events kept for the failure report.
const TRACE_LEN: usize = 48;

/// Everything that shapes one simulated run. Probabilities are per tick unless they say
/// otherwise; durations are in ticks (one tick is one millisecond of the runtime's clock).
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// Cluster size; members get ids `1..=nodes`.
    pub nodes: usize,
    /// Seed of the one RNG every random choice is drawn from.
    pub seed: u64,
    /// Ticks of the faulty phase of [`run_seed`].
    pub fault_ticks: u64,
    /// Bound on the ticks of the liveness phase ([`Simulation::settle`]).
    pub settle_ticks: u64,
    /// Lower bound of each node's randomized election timeout.
    pub election_timeout_min_ticks: u32,
    /// Upper bound (exclusive) of the election timeout.
    pub election_timeout_max_ticks: u32,
    /// Leader heartbeat interval.
    pub heartbeat_ticks: u32,
    /// Most entries per AppendEntries; small values exercise batching and probing.
    pub max_append_entries: usize,
    /// Most estimated bytes of entries per AppendEntries.
    pub max_append_bytes: usize,
    /// Most unanswered AppendEntries per follower.
    pub max_inflight: usize,
    /// Run a pre-vote round before each election.
    pub pre_vote: bool,
    /// Leaders step down without a quorum; followers in contact with a leader ignore votes.
    pub check_quorum: bool,
    /// The driver snapshots its state machine every this many applied entries, as the
    /// runtime does (0: never).
    pub snapshot_every: u64,
    /// Entries the core keeps in memory behind a snapshot; small values send followers that
    /// fall behind an InstallSnapshot instead of entries.
    pub compaction_tail: u64,
    /// Bytes per InstallSnapshot chunk.
    pub snapshot_chunk_bytes: usize,
    /// Unanswered snapshot chunks per follower.
    pub snapshot_window: usize,
    /// Each command carries its 8-byte id plus `0..=payload_bytes_max` bytes of filler, so
    /// large commands meet the byte budget of an AppendEntries.
    pub payload_bytes_max: usize,
    /// Each message waits `1..=max_delay_ticks` ticks, drawn per message, which reorders them.
    /// Keep it well below the election timeout, or elections cannot finish (§5.6).
    pub max_delay_ticks: u64,
    /// Chance that a message is lost (each message, each link, independently).
    pub drop_prob: f64,
    /// Chance that a message is delivered twice, each copy with its own delay.
    pub dup_prob: f64,
    /// Chance to start a partition when none is active.
    pub partition_prob: f64,
    /// Chance to cut one direction of one link.
    pub link_cut_prob: f64,
    /// Longest a random partition or link cut lasts.
    pub partition_ticks_max: u64,
    /// Chance to crash one random running node.
    pub crash_prob: f64,
    /// Per `Ready` that must be persisted: chance that its node crashes while handling it.
    pub torn_crash_prob: f64,
    /// Longest a randomly crashed node stays down.
    pub down_ticks_max: u64,
    /// Chance to pause one random running node (a stalled process): it keeps its state but
    /// neither ticks nor receives until it resumes, then gets the messages that waited for it.
    pub pause_prob: f64,
    /// Longest a pause lasts.
    pub pause_ticks_max: u64,
    /// Chance that a client proposes a command to a node that believes it leads.
    pub proposal_prob: f64,
    /// Chance that a client asks a node that believes it leads for a linearizable read.
    pub read_prob: f64,
    /// Chance that an operator tells a random node to campaign.
    pub campaign_prob: f64,
    /// Chance that an operator asks the leader to hand leadership to a random peer.
    pub transfer_prob: f64,
    /// Steps between full pairwise comparisons of the live logs (and of log against disk).
    pub full_check_steps: u64,
    /// Most steps a run may take; more means a message storm or a busy loop, reported as a
    /// failure instead of hanging the test.
    pub max_steps: u64,
}

impl SimConfig {
    /// A run of `nodes` members with the core's default timers and a moderate mix of every
    /// fault.
    pub fn new(nodes: usize, seed: u64) -> SimConfig {
        SimConfig {
            nodes,
            seed,
            fault_ticks: 10_000,
            settle_ticks: 30_000,
            election_timeout_min_ticks: 150,
            election_timeout_max_ticks: 300,
            heartbeat_ticks: 50,
            max_append_entries: 8,
            max_append_bytes: 48 * 1024,
            max_inflight: 4,
            pre_vote: true,
            check_quorum: true,
            snapshot_every: 100,
            compaction_tail: 20,
            snapshot_chunk_bytes: 1024,
            snapshot_window: 4,
            payload_bytes_max: 64,
            max_delay_ticks: 10,
            drop_prob: 0.02,
            dup_prob: 0.02,
            partition_prob: 0.001,
            link_cut_prob: 0.0005,
            partition_ticks_max: 1_500,
            crash_prob: 0.0005,
            torn_crash_prob: 0.0005,
            down_ticks_max: 1_500,
            pause_prob: 0.0005,
            pause_ticks_max: 1_000,
            proposal_prob: 0.05,
            read_prob: 0.02,
            campaign_prob: 0.0005,
            transfer_prob: 0.0005,
            full_check_steps: 10_000,
            max_steps: 2_000_000,
        }
    }

    /// A calm run for scripted scenarios: no random faults and no client traffic, only the
    /// random delays. The test drives everything else through [`Simulation`]'s methods.
    pub fn scripted(nodes: usize, seed: u64) -> SimConfig {
        SimConfig {
            drop_prob: 0.0,
            dup_prob: 0.0,
            partition_prob: 0.0,
            link_cut_prob: 0.0,
            crash_prob: 0.0,
            torn_crash_prob: 0.0,
            pause_prob: 0.0,
            proposal_prob: 0.0,
            read_prob: 0.0,
            campaign_prob: 0.0,
            transfer_prob: 0.0,
            ..SimConfig::new(nodes, seed)
        }
    }

    /// A run whose timers, batch sizes and fault mix are themselves drawn from the seed, so a
    /// sweep over seeds covers calm and stormy networks, slow and fast timers, one-entry and
    /// large batches. The same seed always gives the same config.
    pub fn varied(nodes: usize, seed: u64) -> SimConfig {
        // A separate stream, so the config does not shift the run's own random choices.
        let mut rng = StdRng::seed_from_u64(mix(seed, 0x5eed_c0f1_6000_0001));
        let (min, max, heartbeat) = *pick(&mut rng, &[(150, 300, 50), (40, 80, 12), (15, 30, 4)]);
        let election_max = u64::from(max);
        SimConfig {
            election_timeout_min_ticks: min,
            election_timeout_max_ticks: max,
            heartbeat_ticks: heartbeat,
            max_append_entries: *pick(&mut rng, &[1, 3, 64, 512]),
            max_append_bytes: *pick(&mut rng, &[1024, 48 * 1024]),
            max_inflight: *pick(&mut rng, &[1, 2, 8, 64]),
            pre_vote: rng.gen_bool(0.5),
            check_quorum: rng.gen_bool(0.5),
            snapshot_every: *pick(&mut rng, &[0, 10, 100, 500]),
            compaction_tail: *pick(&mut rng, &[0, 5, 100]),
            snapshot_chunk_bytes: *pick(&mut rng, &[64, 1024, 32 * 1024]),
            snapshot_window: *pick(&mut rng, &[1, 8]),
            payload_bytes_max: *pick(&mut rng, &[0, 64, 4096]),
            // §5.6: broadcast time must stay well below the election timeout.
            max_delay_ticks: rng.gen_range(1..=u64::from(min / 5).max(1)),
            drop_prob: *pick(&mut rng, &[0.0, 0.01, 0.05, 0.2]),
            dup_prob: *pick(&mut rng, &[0.0, 0.02, 0.1]),
            partition_prob: *pick(&mut rng, &[0.0, 0.0005, 0.002, 0.005]),
            link_cut_prob: *pick(&mut rng, &[0.0, 0.0005, 0.002]),
            partition_ticks_max: election_max * rng.gen_range(2..=10),
            crash_prob: *pick(&mut rng, &[0.0, 0.0003, 0.001, 0.003]),
            torn_crash_prob: *pick(&mut rng, &[0.0, 0.001, 0.005]),
            down_ticks_max: election_max * rng.gen_range(2..=10),
            pause_prob: *pick(&mut rng, &[0.0, 0.0005, 0.002]),
            pause_ticks_max: election_max * rng.gen_range(1..=5),
            proposal_prob: *pick(&mut rng, &[0.01, 0.05, 0.2]),
            read_prob: *pick(&mut rng, &[0.005, 0.02, 0.1]),
            campaign_prob: *pick(&mut rng, &[0.0, 0.001]),
            transfer_prob: *pick(&mut rng, &[0.0, 0.001]),
            ..SimConfig::new(nodes, seed)
        }
    }

    /// Checks that the run can be simulated.
    ///
    /// # Errors
    /// A message naming the first setting that cannot work.
    pub fn validate(&self) -> Result<(), String> {
        if self.nodes == 0 {
            return Err("a cluster needs at least one node".to_string());
        }
        if self.max_delay_ticks == 0 {
            return Err("max_delay_ticks must be at least 1".to_string());
        }
        let probabilities = [
            ("drop_prob", self.drop_prob),
            ("dup_prob", self.dup_prob),
            ("partition_prob", self.partition_prob),
            ("link_cut_prob", self.link_cut_prob),
            ("crash_prob", self.crash_prob),
            ("torn_crash_prob", self.torn_crash_prob),
            ("pause_prob", self.pause_prob),
            ("proposal_prob", self.proposal_prob),
            ("read_prob", self.read_prob),
            ("campaign_prob", self.campaign_prob),
            ("transfer_prob", self.transfer_prob),
        ];
        for (name, p) in probabilities {
            if !(0.0..=1.0).contains(&p) {
                return Err(format!("{name} {p} is not a probability"));
            }
        }
        self.node_config(1).validate()
    }

    /// The core's settings for member `id`.
    fn node_config(&self, id: NodeId) -> Config {
        let voters = (1..=self.nodes as NodeId).collect();
        Config {
            election_timeout_min_ticks: self.election_timeout_min_ticks,
            election_timeout_max_ticks: self.election_timeout_max_ticks,
            heartbeat_ticks: self.heartbeat_ticks,
            max_append_entries: self.max_append_entries,
            max_append_bytes: self.max_append_bytes,
            max_inflight: self.max_inflight,
            pre_vote: self.pre_vote,
            check_quorum: self.check_quorum,
            compaction_tail: self.compaction_tail,
            snapshot_chunk_bytes: self.snapshot_chunk_bytes,
            snapshot_window: self.snapshot_window,
            ..Config::new(id, voters)
        }
    }
}

/// Counts from one run, for the test log and the CLI.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimReport {
    /// The run's seed.
    pub seed: u64,
    /// Cluster size.
    pub nodes: usize,
    /// Ticks simulated.
    pub ticks: u64,
    /// Steps taken (inputs handed to a node).
    pub steps: u64,
    /// Leaders elected (terms that had a leader).
    pub elections: u64,
    /// Highest term any node reached.
    pub max_term: Term,
    /// Commands the leaders accepted.
    pub proposals: u64,
    /// Commands acknowledged to the client as committed.
    pub acked: u64,
    /// Commands known lost (another entry took their index).
    pub lost: u64,
    /// Highest index known committed at the end.
    pub commit_index: Index,
    /// Reads the leaders accepted.
    pub reads: u64,
    /// Reads answered and checked.
    pub reads_answered: u64,
    /// Messages handed to the network.
    pub sent: u64,
    /// Messages delivered to a running node.
    pub delivered: u64,
    /// Messages lost at random.
    pub dropped: u64,
    /// Messages dropped by a partition, a link cut or a test's interceptor.
    pub blocked: u64,
    /// Messages whose receiver was down when they arrived.
    pub undeliverable: u64,
    /// Extra copies of messages the network made.
    pub duplicated: u64,
    /// Partitions started (random or scripted).
    pub partitions: u64,
    /// One-way link cuts started.
    pub link_cuts: u64,
    /// Crashes, torn ones included.
    pub crashes: u64,
    /// Crashes in the middle of handling a `Ready`.
    pub torn_crashes: u64,
    /// Restarts from disk.
    pub restarts: u64,
    /// Process pauses.
    pub pauses: u64,
    /// Snapshots the driver took of a state machine.
    pub snapshots_taken: u64,
    /// Snapshots a follower installed from its leader.
    pub snapshots_installed: u64,
    /// Leadership transfers an operator asked for.
    pub transfers: u64,
    /// Digest of every event of the run: equal digests mean the runs took the same steps.
    pub trace_digest: u64,
}

impl fmt::Display for SimReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed {} nodes {}: {} ticks, {} steps, {} elections (max term {}), \
             {} proposals ({} acked, {} lost), commit index {}, {}/{} reads answered, \
             messages {} sent {} delivered {} dropped {} blocked {} undeliverable {} duplicated, \
             {} partitions, {} link cuts, {} crashes ({} torn), {} restarts, {} pauses, \
             {} snapshots taken, {} installed, {} transfers, digest {:016x}",
            self.seed,
            self.nodes,
            self.ticks,
            self.steps,
            self.elections,
            self.max_term,
            self.proposals,
            self.acked,
            self.lost,
            self.commit_index,
            self.reads_answered,
            self.reads,
            self.sent,
            self.delivered,
            self.dropped,
            self.blocked,
            self.undeliverable,
            self.duplicated,
            self.partitions,
            self.link_cuts,
            self.crashes,
            self.torn_crashes,
            self.restarts,
            self.pauses,
            self.snapshots_taken,
            self.snapshots_installed,
            self.transfers,
            self.trace_digest
        )
    }
}

/// A command a leader accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proposal {
    /// The command's number; its payload is [`Simulation::proposal_payload`] of it.
    pub id: u64,
    /// The node that accepted it.
    pub node: NodeId,
    /// The index it got in that node's log.
    pub index: Index,
}

/// What became of a proposal, as its client would learn it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Not known yet, or never (the node that accepted it crashed).
    Pending,
    /// The accepting node applied it at this index: acknowledged to the client.
    Committed(Index),
    /// The accepting node applied another entry at its index.
    Lost,
}

/// Decides, at delivery time, whether a message goes through (true) and may trim it first.
/// Scripted tests use it to lose chosen messages or to make a leader's batch smaller.
pub type Interceptor = Box<dyn FnMut(NodeId, NodeId, &mut Message) -> bool>;

/// Runs one seed end to end: `fault_ticks` of random faults and client traffic, then the
/// liveness phase of [`Simulation::settle`].
///
/// # Panics
/// On the first safety or liveness violation, with the seed, the step and the last events.
pub fn run_seed(config: SimConfig) -> SimReport {
    let mut sim = Simulation::new(config);
    let ticks = sim.config.fault_ticks;
    sim.run_ticks(ticks);
    sim.settle();
    sim.report()
}

// ----- per-node state the simulation keeps -----

/// What a member has made durable: exactly what it persisted, nothing more, kept the way the
/// runtime's storage recovers it: the hard state, the latest snapshot, the log after it.
#[derive(Debug, Default)]
struct Disk {
    hard_state: HardState,
    snapshot: Option<Snapshot>,
    /// Contiguous, starting right after the snapshot.
    entries: Vec<Entry>,
}

impl Disk {
    fn snapshot_index(&self) -> Index {
        self.snapshot.as_ref().map_or(0, |s| s.index)
    }

    /// Index and term of the last entry, or of the snapshot point.
    fn last(&self) -> (Index, Term) {
        match (self.entries.last(), &self.snapshot) {
            (Some(e), _) => (e.index, e.term),
            (None, Some(s)) => (s.index, s.term),
            (None, None) => (0, 0),
        }
    }

    fn entry(&self, index: Index) -> Option<&Entry> {
        let offset = index.checked_sub(self.snapshot_index() + 1)?;
        self.entries.get(usize::try_from(offset).ok()?)
    }

    /// True if the entry at `index` with `term` survives a crash here, in the log or inside
    /// the snapshot (which holds only committed entries).
    fn holds(&self, index: Index, term: Term) -> bool {
        index <= self.snapshot_index() || self.entry(index).is_some_and(|e| e.term == term)
    }

    /// Entries replace the stored suffix from their first index (a conflict truncation).
    fn append(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first() else {
            return;
        };
        let keep = first.index - self.snapshot_index() - 1;
        self.entries.truncate(keep as usize);
        self.entries.extend_from_slice(entries);
    }

    /// A snapshot of this node's own state machine: the log behind it is no longer needed.
    fn save_snapshot(&mut self, snapshot: Snapshot) {
        let drop = (snapshot.index - self.snapshot_index()) as usize;
        self.entries.drain(..drop.min(self.entries.len()));
        self.snapshot = Some(snapshot);
    }

    /// A snapshot from the leader replaces the whole log.
    fn install_snapshot(&mut self, snapshot: Snapshot) {
        self.entries.clear();
        self.snapshot = Some(snapshot);
    }
}

/// The replicated state machine of one incarnation, modelled as the sequence of applied
/// payloads: their fingerprints, the last index and a running digest. Its snapshot is the
/// list of fingerprints, so a snapshot garbled in transit shows up as a wrong digest.
#[derive(Debug, Default, Clone)]
struct Machine {
    applied: Index,
    digest: u64,
    fingerprints: Vec<u64>,
}

impl Machine {
    fn apply(&mut self, entry: &Entry) {
        let fingerprint = fingerprint(&entry.payload);
        self.applied = entry.index;
        self.digest = mix(self.digest, fingerprint);
        self.fingerprints.push(fingerprint);
    }

    fn encode(&self) -> Vec<u8> {
        self.fingerprints
            .iter()
            .flat_map(|f| f.to_le_bytes())
            .collect()
    }

    fn decode(data: &[u8]) -> Machine {
        assert_eq!(data.len() % 8, 0, "snapshot of {} bytes", data.len());
        let mut machine = Machine::default();
        for chunk in data.chunks(8) {
            let fingerprint = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
            machine.applied += 1;
            machine.digest = mix(machine.digest, fingerprint);
            machine.fingerprints.push(fingerprint);
        }
        machine
    }
}

/// What a read must observe, fixed when the client asked.
#[derive(Debug, Clone, Copy)]
struct ReadBound {
    /// Highest index acknowledged to any client as committed.
    acked: Index,
    /// Highest index any node knew committed.
    committed: Index,
}

/// One member as the simulation sees it.
struct SimNode {
    id: NodeId,
    /// The running node; None while crashed.
    raft: Option<RaftNode>,
    /// Survives crashes.
    disk: Disk,
    /// Bumped at every crash; part of the node's seed, so each restart draws new timeouts.
    incarnation: u64,
    /// When a randomly crashed node comes back.
    restart_at: Option<u64>,
    /// While set, the node is paused: not ticked, and messages to it wait until this tick.
    paused_until: Option<u64>,
    /// This incarnation's state machine; a restart starts it over from index 1.
    machine: Machine,
    /// Commit index at the end of the last step of this incarnation. Never falls.
    commit_seen: Index,
    /// Hard state at the end of the last completed step, so durable. The term never falls and
    /// the vote never changes within a term, across crashes too.
    hard_state_seen: HardState,
    /// Role and term at the end of the last step, to trace changes.
    role_seen: (Role, Term),
    /// Commands accepted by this incarnation and not yet applied: index -> proposal id.
    proposals: BTreeMap<Index, u64>,
    /// Reads accepted by this incarnation and not yet confirmed: ctx -> bound.
    reads: BTreeMap<u64, ReadBound>,
    /// Reads confirmed, waiting for the state machine to reach their index.
    confirmed_reads: Vec<(ReadState, ReadBound)>,
}

impl SimNode {
    fn new(id: NodeId) -> SimNode {
        SimNode {
            id,
            raft: None,
            disk: Disk::default(),
            incarnation: 0,
            restart_at: None,
            paused_until: None,
            machine: Machine::default(),
            commit_seen: 0,
            hard_state_seen: HardState::default(),
            role_seen: (Role::Follower, 0),
            proposals: BTreeMap::new(),
            reads: BTreeMap::new(),
            confirmed_reads: Vec::new(),
        }
    }

    /// Forgets everything a crash loses. The disk stays.
    fn lose_volatile_state(&mut self) {
        self.raft = None;
        self.paused_until = None;
        self.incarnation += 1;
        self.machine = Machine::default();
        self.commit_seen = 0;
        self.proposals.clear();
        self.reads.clear();
        self.confirmed_reads.clear();
    }
}

// ----- the network -----

/// A message on the wire.
struct InFlight {
    /// Delivery tick.
    at: u64,
    /// Send order, to break ties deterministically.
    seq: u64,
    from: NodeId,
    to: NodeId,
    message: Message,
}

impl PartialEq for InFlight {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for InFlight {}

impl PartialOrd for InFlight {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for InFlight {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// One direction of one link, cut until a tick.
#[derive(Debug, Clone, Copy)]
struct LinkCut {
    from: NodeId,
    to: NodeId,
    until: u64,
}

// ----- the history the checks compare against -----

/// A leader as it was when first seen: its id and its log's terms, as runs.
struct LeaderRecord {
    id: NodeId,
    /// Entries up to here were compacted into a snapshot, so they are committed ones.
    snapshot_index: Index,
    /// (first index, term) of each run of equal terms after the snapshot, in index order.
    runs: Vec<(Index, Term)>,
    last_index: Index,
}

impl LeaderRecord {
    fn of(id: NodeId, log: &RaftLog) -> LeaderRecord {
        let mut runs: Vec<(Index, Term)> = Vec::new();
        for index in log.first_index()..=log.last_index() {
            let term = log.term_at(index).expect("held entry");
            if !matches!(runs.last(), Some(&(_, t)) if t == term) {
                runs.push((index, term));
            }
        }
        LeaderRecord {
            id,
            snapshot_index: log.snapshot_index(),
            runs,
            last_index: log.last_index(),
        }
    }

    /// True if the leader's log held the entry at `index` with `term`.
    fn holds(&self, index: Index, term: Term) -> bool {
        if index <= self.snapshot_index {
            return true;
        }
        if index > self.last_index {
            return false;
        }
        let run = self.runs.partition_point(|&(first, _)| first <= index);
        self.runs[run - 1].1 == term
    }
}

/// An entry known committed.
#[derive(Debug, Clone, Copy)]
struct CommitRecord {
    /// The entry's term.
    term: Term,
    /// The term of the node that first counted it committed: the committing leader's term.
    commit_term: Term,
}

/// Everything the safety checks remember about the whole run.
#[derive(Default)]
struct History {
    /// Election Safety: the leader of each term.
    leaders: BTreeMap<Term, LeaderRecord>,
    /// Log Matching: (index, term) -> (payload fingerprint, term of the entry before it).
    entries: HashMap<(Index, Term), (u64, Term)>,
    /// `committed[i - 1]` is the entry at index i; the committed entries form a prefix.
    committed: Vec<CommitRecord>,
    /// `applied[i - 1]` is the entry first applied at index i, with the digest of the state
    /// machine after it.
    applied: Vec<(Entry, u64)>,
    /// Highest index acknowledged to a client as committed.
    max_acked: Index,
}

impl History {
    /// Log Matching (§5.3): checks `entry`, whose predecessor has `prev_term`, against every
    /// entry ever seen at the same index and term.
    fn register(&mut self, entry: &Entry, prev_term: Term) -> Result<(), String> {
        let seen = (fingerprint(&entry.payload), prev_term);
        match self.entries.entry((entry.index, entry.term)) {
            MapEntry::Vacant(slot) => {
                slot.insert(seen);
                Ok(())
            }
            MapEntry::Occupied(slot) if *slot.get() == seen => Ok(()),
            MapEntry::Occupied(slot) => Err(format!(
                "Log Matching: two different entries at index {} term {}: \
                 (payload {:016x}, previous term {}) and (payload {:016x}, previous term {})",
                entry.index,
                entry.term,
                slot.get().0,
                slot.get().1,
                seen.0,
                seen.1
            )),
        }
    }

    /// Notes that `node` counts everything up to its commit index as committed; `seen` is what
    /// it counted at the end of its previous step.
    fn observe_commits(&mut self, node: &RaftNode, seen: &mut Index) -> Result<(), String> {
        let commit = node.commit_index();
        if commit < *seen {
            return Err(format!(
                "node {}: commit index fell from {} to {commit}",
                node.id(),
                *seen
            ));
        }
        // Entries below the node's snapshot are gone from its log; the snapshot was taken of an
        // applied, so committed, prefix, which the history must already know.
        let snapshot_index = node.log().snapshot_index();
        if commit > *seen && snapshot_index > self.committed.len() as Index {
            return Err(format!(
                "node {} holds a snapshot at {snapshot_index} past every known commit ({})",
                node.id(),
                self.committed.len()
            ));
        }
        for index in (*seen + 1).max(snapshot_index)..=commit {
            let term = node
                .log()
                .term_at(index)
                .ok_or("committed entry not in log")?;
            self.record_commit(node.id(), index, term, node.current_term())?;
        }
        *seen = commit;
        Ok(())
    }

    fn record_commit(
        &mut self,
        id: NodeId,
        index: Index,
        term: Term,
        by_term: Term,
    ) -> Result<(), String> {
        let known = self.committed.len() as Index;
        if index <= known {
            let first = self.committed[index as usize - 1].term;
            if first != term {
                return Err(format!(
                    "State Machine Safety: node {id} committed index {index} with term {term}, \
                     but term {first} was committed there before"
                ));
            }
            return Ok(());
        }
        assert_eq!(index, known + 1, "commits are recorded in index order");
        self.committed.push(CommitRecord {
            term,
            commit_term: by_term,
        });
        // §5.4: leaders of later terms elected before we saw this commit must hold it too.
        for (leader_term, leader) in self.leaders.range(by_term + 1..) {
            if !leader.holds(index, term) {
                return Err(format!(
                    "Leader Completeness: entry {index} (term {term}) committed in term \
                     {by_term} is missing from node {}, leader of term {leader_term}",
                    leader.id
                ));
            }
        }
        Ok(())
    }

    /// Election Safety and Leader Completeness for a node that may lead. Returns true when it
    /// is a leader not seen before.
    fn observe_leader(&mut self, node: &RaftNode) -> Result<bool, String> {
        if node.role() != Role::Leader {
            return Ok(false);
        }
        let term = node.current_term();
        if let Some(leader) = self.leaders.get(&term) {
            if leader.id != node.id() {
                return Err(format!(
                    "Election Safety: nodes {} and {} both lead term {term}",
                    leader.id,
                    node.id()
                ));
            }
            return Ok(false);
        }
        let record = LeaderRecord::of(node.id(), node.log());
        for (i, commit) in self.committed.iter().enumerate() {
            let index = i as Index + 1;
            if commit.commit_term < term && !record.holds(index, commit.term) {
                return Err(format!(
                    "Leader Completeness: node {} leads term {term} without entry {index} \
                     (term {}) committed in term {}",
                    node.id(),
                    commit.term,
                    commit.commit_term
                ));
            }
        }
        self.leaders.insert(term, record);
        Ok(true)
    }

    /// State Machine Safety (§5.4.3): `entry` is committed and is what every other node
    /// applied at its index; `digest` is the applying machine's state after it.
    fn record_apply(&mut self, id: NodeId, entry: &Entry, digest: u64) -> Result<(), String> {
        let i = entry.index as usize;
        let Some(commit) = self.committed.get(i - 1) else {
            return Err(format!(
                "node {id} applied entry {i} before it was committed"
            ));
        };
        if commit.term != entry.term {
            return Err(format!(
                "State Machine Safety: node {id} applied entry {i} of term {}, \
                 but the committed entry there has term {}",
                entry.term, commit.term
            ));
        }
        if i > self.applied.len() {
            self.applied.push((entry.clone(), digest));
            return Ok(());
        }
        let (first, first_digest) = &self.applied[i - 1];
        if first != entry {
            return Err(format!(
                "State Machine Safety: node {id} applied {entry:?} at index {i}, \
                 another node applied {first:?}"
            ));
        }
        if *first_digest != digest {
            return Err(format!(
                "node {id}: state after index {i} differs from other nodes"
            ));
        }
        Ok(())
    }

    /// Digest of the state machine after applying entries `1..=index`.
    fn digest_at(&self, index: Index) -> u64 {
        match index {
            0 => 0,
            i => self.applied[i as usize - 1].1,
        }
    }
}

// ----- the trace -----

/// The gist of a message, for the trace.
#[derive(Debug, Clone, Copy, Hash)]
struct MessageSummary {
    kind: &'static str,
    term: Term,
    fields: [u64; 4],
}

impl MessageSummary {
    fn of(message: &Message) -> MessageSummary {
        let fields = match message {
            Message::RequestVote(m) => [m.last_log_index, m.last_log_term, 0, 0],
            Message::RequestVoteResponse(m) => [u64::from(m.vote_granted), 0, 0, 0],
            Message::AppendEntries(m) => [
                m.prev_log_index,
                m.prev_log_term,
                m.entries.len() as u64,
                m.leader_commit,
            ],
            Message::AppendEntriesResponse(m) => [
                u64::from(m.success),
                m.match_index,
                m.conflict_index,
                m.request_prev_index,
            ],
            Message::InstallSnapshot(m) => [
                m.last_included_index,
                m.last_included_term,
                m.offset,
                m.data.len() as u64,
            ],
            Message::InstallSnapshotResponse(m) => [
                u64::from(m.installed),
                m.last_included_index,
                m.next_offset,
                0,
            ],
            Message::TimeoutNow(_) => [0; 4],
        };
        let kind = match message {
            Message::RequestVote(m) if m.pre_vote => "PreVote",
            Message::RequestVoteResponse(m) if m.pre_vote => "PreVoteResponse",
            _ => message.kind(),
        };
        MessageSummary {
            kind,
            term: message.term(),
            fields,
        }
    }
}

impl fmt::Display for MessageSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d] = self.fields;
        write!(f, "{} term {}", self.kind, self.term)?;
        match self.kind {
            "RequestVote" | "PreVote" => write!(f, " last ({a}, term {b})"),
            "RequestVoteResponse" | "PreVoteResponse" => write!(f, " granted {}", a == 1),
            "AppendEntries" => write!(f, " prev ({a}, term {b}) {c} entries commit {d}"),
            "AppendEntriesResponse" => {
                write!(f, " success {} match {b} conflict {c} prev {d}", a == 1)
            }
            "InstallSnapshot" => write!(f, " at ({a}, term {b}) bytes {c}..+{d}"),
            "InstallSnapshotResponse" => write!(f, " installed {} at {b} next {c}", a == 1),
            _ => Ok(()),
        }
    }
}

/// Something that happened, for the failure report and the run digest.
#[derive(Debug, Clone, Hash)]
enum Event {
    Deliver {
        from: NodeId,
        to: NodeId,
        message: MessageSummary,
    },
    Role {
        node: NodeId,
        role: &'static str,
        term: Term,
    },
    Propose {
        node: NodeId,
        index: Index,
        id: u64,
    },
    Read {
        node: NodeId,
        ctx: u64,
    },
    Crash {
        node: NodeId,
        when: &'static str,
    },
    Restart {
        node: NodeId,
    },
    Pause {
        node: NodeId,
        until: u64,
    },
    Partition {
        groups: Vec<u32>,
    },
    Heal,
    Cut {
        from: NodeId,
        to: NodeId,
    },
    Campaign {
        node: NodeId,
    },
    Transfer {
        from: NodeId,
        to: NodeId,
    },
    Snapshot {
        node: NodeId,
        index: Index,
    },
    Install {
        node: NodeId,
        index: Index,
    },
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Deliver { from, to, message } => write!(f, "{from} -> {to}: {message}"),
            Event::Role { node, role, term } => write!(f, "node {node} is {role} in term {term}"),
            Event::Propose { node, index, id } => {
                write!(f, "node {node} accepted proposal {id} at index {index}")
            }
            Event::Read { node, ctx } => write!(f, "node {node} accepted read {ctx}"),
            Event::Crash { node, when } => write!(f, "node {node} crashed {when}"),
            Event::Restart { node } => write!(f, "node {node} restarted from disk"),
            Event::Pause { node, until } => write!(f, "node {node} paused until tick {until}"),
            Event::Partition { groups } => write!(f, "partition, group of each node {groups:?}"),
            Event::Heal => write!(f, "partition healed"),
            Event::Cut { from, to } => write!(f, "link {from} -> {to} cut"),
            Event::Campaign { node } => write!(f, "node {node} told to campaign"),
            Event::Transfer { from, to } => write!(f, "node {from} told to hand over to {to}"),
            Event::Snapshot { node, index } => write!(f, "node {node} snapshotted at {index}"),
            Event::Install { node, index } => {
                write!(f, "node {node} installed the leader's snapshot at {index}")
            }
        }
    }
}

/// A traced event with when it happened.
struct TraceLine {
    step: u64,
    tick: u64,
    event: Event,
}

// ----- the simulation -----

/// A cluster of `RaftNode`s over a simulated network and disks, checked after every step.
pub struct Simulation {
    config: SimConfig,
    /// The one source of randomness.
    rng: StdRng,
    /// `nodes[i]` is member `i + 1`.
    nodes: Vec<SimNode>,
    /// Messages in flight, earliest first.
    network: BinaryHeap<Reverse<InFlight>>,
    /// Next message sequence number.
    next_seq: u64,
    /// Current tick.
    now: u64,
    /// Inputs handed to nodes so far.
    step: u64,
    /// Step of the last full check.
    full_check_step: u64,
    /// True once this tick's faults and client traffic ran.
    tick_begun: bool,
    /// Nodes still to tick this tick, popped from the back.
    tick_order: Vec<NodeId>,
    /// Random faults (losses, duplicates, partitions, crashes) are on.
    faults: bool,
    /// Random client traffic is on.
    clients: bool,
    /// Partition group of each node; messages cross no group boundary.
    groups: Vec<u32>,
    /// When a random partition heals (None: no partition, or a scripted one).
    partition_until: Option<u64>,
    cuts: Vec<LinkCut>,
    interceptor: Option<Interceptor>,
    history: History,
    outcomes: BTreeMap<u64, Outcome>,
    next_proposal: u64,
    next_read: u64,
    stats: SimReport,
    trace: VecDeque<TraceLine>,
    digest: Fnv,
    /// Set once a violation is reported, so the drop guard stays quiet.
    failed: Cell<bool>,
}

impl Simulation {
    /// A fresh cluster: every node starts as a follower in term 0 with an empty disk.
    ///
    /// # Panics
    /// If the config does not validate.
    pub fn new(config: SimConfig) -> Simulation {
        if let Err(e) = config.validate() {
            panic!("invalid simulation config: {e}");
        }
        let n = config.nodes;
        let mut sim = Simulation {
            rng: StdRng::seed_from_u64(config.seed),
            nodes: (1..=n as NodeId).map(SimNode::new).collect(),
            network: BinaryHeap::new(),
            next_seq: 0,
            now: 0,
            step: 0,
            full_check_step: 0,
            tick_begun: false,
            tick_order: Vec::new(),
            faults: true,
            clients: true,
            groups: vec![0; n],
            partition_until: None,
            cuts: Vec::new(),
            interceptor: None,
            history: History::default(),
            outcomes: BTreeMap::new(),
            next_proposal: 1,
            next_read: 1,
            stats: SimReport {
                seed: config.seed,
                nodes: n,
                ..SimReport::default()
            },
            trace: VecDeque::with_capacity(TRACE_LEN),
            digest: Fnv::new(),
            failed: Cell::new(false),
            config,
        };
        for id in 1..=n as NodeId {
            sim.start(id);
        }
        sim
    }

    // ----- observation -----

    /// The run's settings.
    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    /// Current tick.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Ids of all members, running or not.
    pub fn node_ids(&self) -> Vec<NodeId> {
        (1..=self.nodes.len() as NodeId).collect()
    }

    /// Member `id` if it is running.
    ///
    /// # Panics
    /// If `id` is not a member.
    pub fn node(&self, id: NodeId) -> Option<&RaftNode> {
        self.member(id).raft.as_ref()
    }

    /// True if member `id` is running.
    pub fn is_up(&self, id: NodeId) -> bool {
        self.node(id).is_some()
    }

    /// True if `id` is paused (see [`pause`](Self::pause)).
    pub fn is_paused(&self, id: NodeId) -> bool {
        self.member(id).paused_until.is_some()
    }

    /// True if `id` runs and believes it leads.
    pub fn is_leader(&self, id: NodeId) -> bool {
        self.node(id).is_some_and(|n| n.role() == Role::Leader)
    }

    /// The running node that believes it leads in the highest term, if any.
    pub fn leader(&self) -> Option<NodeId> {
        self.running()
            .filter(|n| n.role() == Role::Leader)
            .max_by_key(|n| n.current_term())
            .map(|n| n.id())
    }

    /// Like [`leader`](Self::leader), but only once the leader has committed an entry of its
    /// own term, so it knows the commit index and serves reads (§5.4.2, §8).
    pub fn stable_leader(&self) -> Option<NodeId> {
        self.running()
            .filter(|n| n.role() == Role::Leader)
            .filter(|n| n.log().term_at(n.commit_index()) == Some(n.current_term()))
            .max_by_key(|n| n.current_term())
            .map(|n| n.id())
    }

    /// Index of the last entry member `id`'s state machine applied in this incarnation.
    pub fn applied_index(&self, id: NodeId) -> Index {
        self.member(id).machine.applied
    }

    /// Highest index known committed by any node so far.
    pub fn commit_index(&self) -> Index {
        self.history.committed.len() as Index
    }

    /// The entry applied at `index` (the same on every node, or the run would have failed).
    pub fn applied_entry(&self, index: Index) -> Option<&Entry> {
        let i = usize::try_from(index).ok()?.checked_sub(1)?;
        self.history.applied.get(i).map(|(entry, _)| entry)
    }

    /// What became of proposal `id`, if it was ever accepted.
    pub fn outcome(&self, id: u64) -> Option<Outcome> {
        self.outcomes.get(&id).copied()
    }

    /// The command of proposal `id`: the id, then filler whose length and bytes are drawn
    /// from the seed and the id, so payloads are unique and random but need not be stored.
    pub fn proposal_payload(&self, id: u64) -> Payload {
        let noise = mix(self.config.seed, id);
        let len = (noise % (self.config.payload_bytes_max as u64 + 1)) as usize;
        let mut data = id.to_le_bytes().to_vec();
        data.extend((0..len).map(|i| (noise >> (i % 8 * 8)) as u8));
        Payload::Command(data)
    }

    /// Proposals acknowledged to clients: (proposal id, index).
    pub fn acknowledged(&self) -> Vec<(u64, Index)> {
        self.outcomes
            .iter()
            .filter_map(|(&id, outcome)| match outcome {
                Outcome::Committed(index) => Some((id, *index)),
                _ => None,
            })
            .collect()
    }

    /// Counts so far.
    pub fn report(&self) -> SimReport {
        let max_term = self
            .nodes
            .iter()
            .map(|n| n.disk.hard_state.current_term)
            .max();
        SimReport {
            ticks: self.now,
            steps: self.step,
            max_term: max_term.unwrap_or(0),
            commit_index: self.commit_index(),
            trace_digest: self.digest.finish(),
            ..self.stats.clone()
        }
    }

    fn member(&self, id: NodeId) -> &SimNode {
        &self.nodes[slot(id)]
    }

    fn running(&self) -> impl Iterator<Item = &RaftNode> {
        self.nodes.iter().filter_map(|n| n.raft.as_ref())
    }

    fn raft_mut(&mut self, id: NodeId) -> &mut RaftNode {
        self.nodes[slot(id)].raft.as_mut().expect("node is running")
    }

    // ----- running -----

    /// Runs `ticks` ticks.
    pub fn run_ticks(&mut self, ticks: u64) {
        let end = self.now + ticks;
        while self.now < end {
            self.step_once();
        }
    }

    /// Runs step by step until `done` holds (checked before the first step and after every
    /// one) or `max_ticks` ticks have passed. Returns whether `done` held.
    pub fn run_until(&mut self, max_ticks: u64, mut done: impl FnMut(&Simulation) -> bool) -> bool {
        let end = self.now.saturating_add(max_ticks);
        loop {
            if done(self) {
                return true;
            }
            if self.now >= end {
                return false;
            }
            self.step_once();
        }
    }

    /// Turns random faults (losses, duplicates, partitions, link cuts, crashes, pauses,
    /// campaigns) on or off. Scripted faults and the interceptor are not affected.
    pub fn set_faults(&mut self, on: bool) {
        self.faults = on;
    }

    /// Turns random client proposals and reads on or off.
    pub fn set_clients(&mut self, on: bool) {
        self.clients = on;
    }

    /// Does one thing: starts a tick (faults and client traffic), delivers one due message,
    /// ticks one node, or ends the tick.
    fn step_once(&mut self) {
        if !self.tick_begun {
            self.tick_begun = true;
            self.begin_tick();
        } else if let Some(message) = self.pop_due() {
            self.deliver(message);
        } else if let Some(id) = self.tick_order.pop() {
            self.tick_node(id);
        } else {
            self.now += 1;
            self.tick_begun = false;
        }
        if self.step >= self.full_check_step + self.config.full_check_steps {
            self.check_all();
        }
        if self.step > self.config.max_steps {
            let max_steps = self.config.max_steps;
            self.fail(format!(
                "step budget of {max_steps} exhausted: a message storm?"
            ));
        }
    }

    fn begin_tick(&mut self) {
        self.expire_faults();
        if self.faults {
            self.inject_faults();
        }
        if self.clients {
            self.client_traffic();
        }
        let mut order: Vec<NodeId> = self.running().map(|n| n.id()).collect();
        order.shuffle(&mut self.rng);
        self.tick_order = order;
    }

    fn tick_node(&mut self, id: NodeId) {
        if self.is_paused(id) {
            return;
        }
        let Some(node) = self.nodes[slot(id)].raft.as_mut() else {
            return;
        };
        node.tick();
        self.step += 1;
        self.drive(id);
    }

    // ----- the driver: what the runtime does with a Ready -----

    /// Takes and carries out `Ready` batches until the node has nothing left to do, then
    /// checks it.
    fn drive(&mut self, id: NodeId) {
        for _ in 0..MAX_READY_ROUNDS {
            let Some(node) = self.nodes[slot(id)].raft.as_mut() else {
                return;
            };
            if !node.has_ready() {
                self.check_node(id);
                return;
            }
            let ready = node.ready();
            if !self.handle_ready(id, ready) {
                return;
            }
        }
        self.fail(format!(
            "node {id}: has_ready still true after {MAX_READY_ROUNDS} batches"
        ));
    }

    /// Carries out one batch in the order the core requires. Returns false if the node
    /// crashed halfway through.
    fn handle_ready(&mut self, id: NodeId, ready: Ready) -> bool {
        let Ready {
            snapshot,
            hard_state,
            entries,
            messages,
            persisted_messages,
            committed_entries,
            read_states,
        } = ready;
        // Observe first: a torn crash below must not hide a commit or a leader whose
        // messages already left.
        self.observe(id);
        for envelope in messages {
            self.send(id, envelope.to, envelope.message);
        }
        let must_persist = snapshot.is_some() || hard_state.is_some() || !entries.is_empty();
        if must_persist && self.torn_crash(id, "before persisting its Ready") {
            return false;
        }
        if let Some(snapshot) = snapshot {
            self.install_snapshot(id, snapshot);
        }
        self.register_entries(id, &entries);
        self.persist(id, hard_state, &entries);
        if must_persist && self.torn_crash(id, "after persisting, before on_persisted") {
            return false;
        }
        if let Some(last) = entries.last() {
            self.raft_mut(id).on_persisted(last.index, last.term);
            self.observe(id);
        }
        for envelope in persisted_messages {
            self.send(id, envelope.to, envelope.message);
        }
        for entry in &committed_entries {
            self.apply(id, entry);
        }
        self.confirm_reads(id, read_states);
        self.answer_reads(id);
        self.maybe_take_snapshot(id);
        true
    }

    /// A snapshot from the leader: it replaces the disk's log, then the state machine.
    fn install_snapshot(&mut self, id: NodeId, snapshot: Snapshot) {
        let index = snapshot.index;
        let disk = &self.nodes[slot(id)].disk;
        let committed = &self.history.committed;
        let dropped: Vec<Index> = (index + 1..=disk.last().0.min(committed.len() as Index))
            .filter(|&i| disk.holds(i, committed[i as usize - 1].term))
            .collect();
        self.nodes[slot(id)].disk.install_snapshot(snapshot.clone());
        for i in dropped {
            self.check_durable_quorum(i);
        }
        self.load_snapshot(id, &snapshot);
        self.stats.snapshots_installed += 1;
        self.trace(Event::Install { node: id, index });
    }

    /// Writes a batch to the node's disk: the hard state, then the entries, which replace
    /// the stored suffix from their first index.
    fn persist(&mut self, id: NodeId, hard_state: Option<HardState>, entries: &[Entry]) {
        if let Some(first) = entries.first() {
            let disk = &self.nodes[slot(id)].disk;
            let (stored, _) = disk.last();
            if first.index > stored + 1 || first.index <= disk.snapshot_index() {
                self.fail(format!(
                    "node {id}: Ready entries start at {} but the disk holds a snapshot at {} \
                     and entries up to {stored}",
                    first.index,
                    disk.snapshot_index()
                ));
            }
        }
        let dropped = entries
            .first()
            .map(|_| committed_overwritten(&self.nodes[slot(id)].disk, entries, &self.history));
        let disk = &mut self.nodes[slot(id)].disk;
        if let Some(hard_state) = hard_state {
            disk.hard_state = hard_state;
        }
        disk.append(entries);
        for index in dropped.unwrap_or_default() {
            self.check_durable_quorum(index);
        }
    }

    /// Log Matching: checks each entry the node is about to persist against the registry of
    /// every entry seen so far and against the other nodes' live logs.
    fn register_entries(&mut self, id: NodeId, entries: &[Entry]) {
        let Some(first) = entries.first() else {
            return;
        };
        let node = self.nodes[slot(id)].raft.as_ref().expect("node is running");
        let Some(mut prev_term) = node.log().term_at(first.index - 1) else {
            self.fail(format!(
                "node {id}: Ready entry {} has no predecessor",
                first.index
            ));
        };
        for entry in entries {
            if let Err(e) = self.history.register(entry, prev_term) {
                self.fail(e);
            }
            prev_term = entry.term;
        }
        for other in self.running().filter(|n| n.id() != id) {
            if let Err(e) = check_new_entries_against(id, node.log(), entries, other) {
                self.fail(e);
            }
        }
    }

    /// Applies one committed entry to the node's state machine and settles the proposal that
    /// was waiting for its index, if any.
    fn apply(&mut self, id: NodeId, entry: &Entry) {
        let member = &mut self.nodes[slot(id)];
        let expected = member.machine.applied + 1;
        if entry.index != expected {
            self.fail(format!(
                "node {id}: applied index {} but expected {expected}",
                entry.index
            ));
        }
        member.machine.apply(entry);
        let digest = member.machine.digest;
        if let Err(e) = self.history.record_apply(id, entry, digest) {
            self.fail(e);
        }
        self.settle_proposal(id, entry.index);
    }

    /// Tells the client of the command this node accepted at `index`, if any, what became of
    /// it, now that the node's state machine has passed `index`.
    fn settle_proposal(&mut self, id: NodeId, index: Index) {
        let Some(proposal) = self.nodes[slot(id)].proposals.remove(&index) else {
            return;
        };
        let applied = self.applied_entry(index).map(|e| e.payload.clone());
        if applied == Some(self.proposal_payload(proposal)) {
            self.outcomes.insert(proposal, Outcome::Committed(index));
            self.history.max_acked = self.history.max_acked.max(index);
            self.stats.acked += 1;
        } else {
            self.outcomes.insert(proposal, Outcome::Lost);
            self.stats.lost += 1;
        }
    }

    /// Loads a snapshot into the node's state machine, which jumps to its index; checks that
    /// it is the state every node had there.
    fn load_snapshot(&mut self, id: NodeId, snapshot: &Snapshot) {
        let machine = Machine::decode(&snapshot.data);
        if machine.applied != snapshot.index {
            self.fail(format!(
                "node {id}: snapshot at {} holds {} entries",
                snapshot.index, machine.applied
            ));
        }
        let known = self.history.applied.len() as Index;
        if snapshot.index > known || machine.digest != self.history.digest_at(snapshot.index) {
            self.fail(format!(
                "node {id}: snapshot at {} is not the state every node applied there",
                snapshot.index
            ));
        }
        self.nodes[slot(id)].machine = machine;
        let waiting: Vec<Index> = self.nodes[slot(id)]
            .proposals
            .range(..=snapshot.index)
            .map(|(&index, _)| index)
            .collect();
        for index in waiting {
            self.settle_proposal(id, index);
        }
    }

    /// Snapshots the node's state machine every `snapshot_every` entries, as the runtime
    /// does: the snapshot is made durable first, then the core compacts its log behind it.
    fn maybe_take_snapshot(&mut self, id: NodeId) {
        let every = self.config.snapshot_every;
        let member = &mut self.nodes[slot(id)];
        let index = member.machine.applied;
        if every == 0 || index < member.disk.snapshot_index() + every {
            return;
        }
        let node = member.raft.as_mut().expect("node is running");
        let term = node.log().term_at(index).expect("applied entries are held");
        let snapshot = Snapshot {
            index,
            term,
            data: Arc::new(member.machine.encode()),
        };
        member.disk.save_snapshot(snapshot.clone());
        node.compact(snapshot);
        self.stats.snapshots_taken += 1;
        self.trace(Event::Snapshot { node: id, index });
    }

    /// Pairs each confirmed read with what the client asked, and checks its read index.
    fn confirm_reads(&mut self, id: NodeId, read_states: Vec<ReadState>) {
        for read in read_states {
            let Some(bound) = self.nodes[slot(id)].reads.remove(&read.ctx) else {
                self.fail(format!(
                    "node {id}: read state for unknown read {}",
                    read.ctx
                ));
            };
            if read.index < bound.committed {
                self.fail(format!(
                    "stale read {} on node {id}: read index {} is below index {} that was \
                     committed before the read began",
                    read.ctx, read.index, bound.committed
                ));
            }
            self.nodes[slot(id)].confirmed_reads.push((read, bound));
        }
    }

    /// Answers the confirmed reads the state machine has caught up with, checking that each
    /// sees every write acknowledged before it began and a state other nodes also had.
    fn answer_reads(&mut self, id: NodeId) {
        let member = &mut self.nodes[slot(id)];
        let (applied, digest) = (member.machine.applied, member.machine.digest);
        let mut answered = Vec::new();
        member.confirmed_reads.retain(|&(read, bound)| {
            let ready = applied >= read.index;
            if ready {
                answered.push((read, bound));
            }
            !ready
        });
        for (read, bound) in answered {
            self.stats.reads_answered += 1;
            if applied < bound.acked {
                self.fail(format!(
                    "stale read {} on node {id}: it sees index {applied} but index {} was \
                     acknowledged before it began",
                    read.ctx, bound.acked
                ));
            }
            if digest != self.history.digest_at(applied) {
                self.fail(format!(
                    "read {} on node {id} saw a state no one else had",
                    read.ctx
                ));
            }
        }
    }

    // ----- checks -----

    /// Records the node's commits and leadership; checks them against the history.
    fn observe(&mut self, id: NodeId) {
        let known = self.commit_index();
        let member = &mut self.nodes[slot(id)];
        let Some(node) = member.raft.as_ref() else {
            return;
        };
        let result = self
            .history
            .observe_commits(node, &mut member.commit_seen)
            .and_then(|()| self.history.observe_leader(node));
        match result {
            Ok(true) => self.stats.elections += 1,
            Ok(false) => {}
            Err(e) => self.fail(e),
        }
        for index in known + 1..=self.commit_index() {
            self.check_durable_quorum(index);
        }
    }

    /// An entry is committed only once a majority stores it durably (§5.3, Figure 2), and
    /// stays on a majority from then on: a crash of every node must never lose it.
    fn check_durable_quorum(&self, index: Index) {
        let term = self.history.committed[index as usize - 1].term;
        let holders: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|m| m.disk.holds(index, term))
            .map(|m| m.id)
            .collect();
        if holders.len() <= self.nodes.len() / 2 {
            self.fail(format!(
                "entry {index} (term {term}) counted committed but only nodes {holders:?} \
                 have it on disk"
            ));
        }
    }

    /// Everything checked about one node after each of its steps.
    fn check_node(&mut self, id: NodeId) {
        self.observe(id);
        // Only node `id` changed, but checking every running node is cheap.
        self.running().for_each(RaftNode::check_invariants);
        let member = &mut self.nodes[slot(id)];
        let Some(node) = member.raft.as_ref() else {
            return;
        };
        let hard_state = node.hard_state();
        let result = check_hard_state(id, member.hard_state_seen, hard_state)
            .and_then(|()| check_disk_tail(id, &member.disk, node))
            .and_then(|()| check_applied(id, &member.machine, node));
        member.hard_state_seen = hard_state;
        let role = (node.role(), node.current_term());
        let changed = member.role_seen != role;
        member.role_seen = role;
        if let Err(e) = result {
            self.fail(e);
        }
        if changed {
            let role_name = match role.0 {
                Role::Follower => "follower",
                Role::PreCandidate => "pre-candidate",
                Role::Candidate => "candidate",
                Role::Leader => "leader",
            };
            self.trace(Event::Role {
                node: id,
                role: role_name,
                term: role.1,
            });
        }
    }

    /// The expensive checks: every running node's invariants, its log against its disk, and
    /// Log Matching on every pair of live logs.
    pub fn check_all(&mut self) {
        self.full_check_step = self.step;
        let mut result = Ok(());
        for member in &self.nodes {
            let Some(node) = member.raft.as_ref() else {
                continue;
            };
            node.check_invariants();
            result = result.and_then(|()| check_disk_full(member.id, &member.disk, node));
        }
        let running: Vec<&RaftNode> = self.running().collect();
        for (i, a) in running.iter().enumerate() {
            for b in &running[i + 1..] {
                result = result.and_then(|()| check_log_pair(a, b));
            }
        }
        if let Err(e) = result {
            self.fail(e);
        }
    }

    /// Reports a violation: panics with the seed, the step, the last events and how to rerun.
    fn fail(&self, what: impl fmt::Display) -> ! {
        self.failed.set(true);
        let mut events = String::new();
        for line in &self.trace {
            events.push_str(&format!(
                "  step {} tick {}: {}\n",
                line.step, line.tick, line.event
            ));
        }
        panic!(
            "raft simulation failed: seed {} ({} nodes), step {}, tick {}: {what}\n\
             last events:\n{events}rerun with: {SEED_ENV}={} cargo test --test sim",
            self.config.seed, self.config.nodes, self.step, self.now, self.config.seed
        );
    }

    fn trace(&mut self, event: Event) {
        (self.step, self.now, &event).hash(&mut self.digest);
        if self.trace.len() == TRACE_LEN {
            self.trace.pop_front();
        }
        self.trace.push_back(TraceLine {
            step: self.step,
            tick: self.now,
            event,
        });
    }

    // ----- network -----

    fn send(&mut self, from: NodeId, to: NodeId, message: Message) {
        if let Err(e) = check_durable(from, to, &self.member(from).disk, &message) {
            self.fail(e);
        }
        self.stats.sent += 1;
        if self.faults && self.rng.gen_bool(self.config.drop_prob) {
            self.stats.dropped += 1;
            return;
        }
        if self.faults && self.rng.gen_bool(self.config.dup_prob) {
            self.stats.duplicated += 1;
            self.enqueue(from, to, message.clone());
        }
        self.enqueue(from, to, message);
    }

    fn enqueue(&mut self, from: NodeId, to: NodeId, message: Message) {
        let delay = self.rng.gen_range(1..=self.config.max_delay_ticks);
        self.next_seq += 1;
        self.network.push(Reverse(InFlight {
            at: self.now + delay,
            seq: self.next_seq,
            from,
            to,
            message,
        }));
    }

    fn pop_due(&mut self) -> Option<InFlight> {
        let due = self.network.peek().is_some_and(|m| m.0.at <= self.now);
        due.then(|| self.network.pop().expect("peeked").0)
    }

    fn deliver(&mut self, mut m: InFlight) {
        if !self.is_up(m.to) {
            self.stats.undeliverable += 1;
            return;
        }
        if let Some(until) = self.member(m.to).paused_until {
            // The message sits in the stalled process's socket buffer until it resumes.
            self.next_seq += 1;
            m.at = until;
            m.seq = self.next_seq;
            self.network.push(Reverse(m));
            return;
        }
        let mut open = self.connected(m.from, m.to);
        if let Some(interceptor) = self.interceptor.as_mut() {
            open = open && interceptor(m.from, m.to, &mut m.message);
        }
        if !open {
            self.stats.blocked += 1;
            return;
        }
        self.stats.delivered += 1;
        self.step += 1;
        self.trace(Event::Deliver {
            from: m.from,
            to: m.to,
            message: MessageSummary::of(&m.message),
        });
        self.raft_mut(m.to).step(m.from, m.message);
        self.drive(m.to);
    }

    fn connected(&self, from: NodeId, to: NodeId) -> bool {
        self.groups[slot(from)] == self.groups[slot(to)]
            && !self.cuts.iter().any(|c| c.from == from && c.to == to)
    }

    // ----- scripted faults -----

    /// Splits the network into `groups`: nodes talk only within their group. Nodes in no
    /// group are each alone. Lasts until [`heal`](Self::heal).
    pub fn partition(&mut self, groups: &[&[NodeId]]) {
        let n = self.nodes.len();
        let mut assignment: Vec<u32> = (0..n).map(|i| (groups.len() + i) as u32).collect();
        for (group, members) in groups.iter().enumerate() {
            for &id in *members {
                assignment[slot(id)] = group as u32;
            }
        }
        self.set_partition(assignment, None);
    }

    /// Cuts `id` off from every other node, which stay connected among themselves.
    pub fn isolate(&mut self, id: NodeId) {
        let rest: Vec<NodeId> = self.node_ids().into_iter().filter(|&p| p != id).collect();
        self.partition(&[&[id], &rest]);
    }

    /// Ends any partition and every link cut.
    pub fn heal(&mut self) {
        self.groups.iter_mut().for_each(|g| *g = 0);
        self.partition_until = None;
        self.cuts.clear();
        self.trace(Event::Heal);
    }

    /// Drops every message from `from` to `to` (one direction only) until `heal`.
    pub fn cut_link(&mut self, from: NodeId, to: NodeId) {
        self.add_cut(from, to, u64::MAX);
    }

    /// Installs a function that sees every message at delivery time, after partitions, and
    /// may drop it (return false) or trim it.
    pub fn set_interceptor(&mut self, interceptor: Interceptor) {
        self.interceptor = Some(interceptor);
    }

    /// Removes the interceptor.
    pub fn clear_interceptor(&mut self) {
        self.interceptor = None;
    }

    /// Crashes `id`: its node and every message in flight to it are gone; its disk stays.
    pub fn crash(&mut self, id: NodeId) {
        self.crash_as(id, "between steps");
    }

    /// Restarts `id` from its disk alone, if it is down.
    pub fn restart(&mut self, id: NodeId) {
        if self.is_up(id) {
            return;
        }
        self.stats.restarts += 1;
        self.start(id);
        self.trace(Event::Restart { node: id });
    }

    /// Tells `id` to start an election now (the operator's `campaign`).
    pub fn campaign(&mut self, id: NodeId) {
        let Some(node) = self.nodes[slot(id)].raft.as_mut() else {
            return;
        };
        node.campaign();
        self.step += 1;
        self.trace(Event::Campaign { node: id });
        self.drive(id);
    }

    /// Asks leader `from` to hand leadership to `to` (the operator's `transfer`); returns
    /// whether `from` accepted.
    pub fn transfer_leader(&mut self, from: NodeId, to: NodeId) -> bool {
        let Some(node) = self.nodes[slot(from)].raft.as_mut() else {
            return false;
        };
        if node.transfer_leader(to).is_err() {
            return false;
        }
        self.step += 1;
        self.stats.transfers += 1;
        self.trace(Event::Transfer { from, to });
        self.drive(from);
        true
    }

    /// Stalls running node `id` for `ticks` ticks: it keeps its state but is not ticked, and
    /// messages to it wait until it resumes.
    pub fn pause(&mut self, id: NodeId, ticks: u64) {
        if !self.is_up(id) || self.is_paused(id) {
            return;
        }
        let until = self.now + ticks.max(1);
        self.stats.pauses += 1;
        self.nodes[slot(id)].paused_until = Some(until);
        self.trace(Event::Pause { node: id, until });
    }

    fn set_partition(&mut self, groups: Vec<u32>, until: Option<u64>) {
        self.stats.partitions += 1;
        self.groups.clone_from(&groups);
        self.partition_until = until;
        self.trace(Event::Partition { groups });
    }

    fn add_cut(&mut self, from: NodeId, to: NodeId, until: u64) {
        self.stats.link_cuts += 1;
        self.cuts.push(LinkCut { from, to, until });
        self.trace(Event::Cut { from, to });
    }

    /// Builds member `id`'s node from its disk, as the runtime does at boot: the log after
    /// the snapshot, then the snapshot handed to the core and loaded into the state machine.
    fn start(&mut self, id: NodeId) {
        let config = self.config.node_config(id);
        let member = &mut self.nodes[slot(id)];
        let seed = mix(self.config.seed, (id << 32) | member.incarnation);
        let disk = &member.disk;
        let (index, term) = disk.snapshot.as_ref().map_or((0, 0), |s| (s.index, s.term));
        let log = RaftLog::new(index, term, disk.entries.clone());
        let mut node = RaftNode::new(config, disk.hard_state, log, seed);
        let snapshot = disk.snapshot.clone();
        if let Some(snapshot) = &snapshot {
            node.compact(snapshot.clone());
        }
        member.raft = Some(node);
        member.restart_at = None;
        member.role_seen = (Role::Follower, member.disk.hard_state.current_term);
        member.machine = Machine::default();
        if let Some(snapshot) = snapshot {
            self.load_snapshot(id, &snapshot);
        }
        // The incremental Log Matching check only sees changes; a log loaded from disk is new.
        let node = self.member(id).raft.as_ref().expect("just started");
        for other in self.running().filter(|n| n.id() != id) {
            if let Err(e) = check_log_pair(node, other) {
                self.fail(e);
            }
        }
        self.check_node(id);
    }

    fn crash_as(&mut self, id: NodeId, when: &'static str) {
        if !self.is_up(id) {
            return;
        }
        self.stats.crashes += 1;
        self.nodes[slot(id)].lose_volatile_state();
        self.network.retain(|m| m.0.to != id);
        self.trace(Event::Crash { node: id, when });
    }

    // ----- random faults and clients -----

    fn expire_faults(&mut self) {
        let now = self.now;
        if self.partition_until.is_some_and(|until| until <= now) {
            self.heal();
        }
        self.cuts.retain(|c| c.until > now);
        for member in &mut self.nodes {
            if member.paused_until.is_some_and(|until| until <= now) {
                member.paused_until = None;
            }
        }
        for id in self.node_ids() {
            if self.member(id).restart_at.is_some_and(|at| at <= now) {
                self.restart(id);
            }
        }
    }

    fn inject_faults(&mut self) {
        if self.partition_until.is_none() && self.rng.gen_bool(self.config.partition_prob) {
            self.random_partition();
        }
        if self.rng.gen_bool(self.config.link_cut_prob) {
            self.random_link_cut();
        }
        if self.rng.gen_bool(self.config.crash_prob) {
            if let Some(id) = self.random_node(|_| true) {
                self.crash_for_a_while(id, "between steps");
            }
        }
        if self.rng.gen_bool(self.config.pause_prob) {
            if let Some(id) = self.random_node(|_| true) {
                let ticks = self.rng.gen_range(1..=self.config.pause_ticks_max.max(1));
                self.pause(id, ticks);
            }
        }
        if self.rng.gen_bool(self.config.campaign_prob) {
            if let Some(id) = self.random_node(|_| true) {
                self.campaign(id);
            }
        }
        if self.rng.gen_bool(self.config.transfer_prob) {
            let leader = self.random_node(|n| n.role() == Role::Leader);
            let target = self.random_node(|n| n.role() != Role::Leader);
            if let (Some(from), Some(to)) = (leader, target) {
                self.transfer_leader(from, to);
            }
        }
    }

    /// Crashes `id` now and schedules its restart.
    fn crash_for_a_while(&mut self, id: NodeId, when: &'static str) {
        self.crash_as(id, when);
        let down = self.rng.gen_range(1..=self.config.down_ticks_max.max(1));
        self.nodes[slot(id)].restart_at = Some(self.now + down);
    }

    /// With the configured chance, crashes `id` in the middle of handling a Ready.
    fn torn_crash(&mut self, id: NodeId, when: &'static str) -> bool {
        if !self.faults || !self.rng.gen_bool(self.config.torn_crash_prob) {
            return false;
        }
        self.stats.torn_crashes += 1;
        self.crash_for_a_while(id, when);
        true
    }

    /// One of: the leader alone; a random minority; the leader with a minority; a random
    /// split into up to three groups.
    fn random_partition(&mut self) {
        let n = self.nodes.len();
        if n < 2 {
            return;
        }
        let mut ids = self.node_ids();
        ids.shuffle(&mut self.rng);
        if let Some(leader) = self.leader() {
            // Put the leader first, so "the first k nodes" can mean "the leader and k - 1 more".
            let at = ids.iter().position(|&id| id == leader).expect("member");
            ids.swap(0, at);
        }
        let mut groups = vec![0; n];
        match self.rng.gen_range(0..4) {
            0 => groups[slot(ids[0])] = 1,
            1 | 2 => {
                let minority = self.rng.gen_range(1..=n / 2);
                for &id in &ids[..minority] {
                    groups[slot(id)] = 1;
                }
            }
            _ => groups
                .iter_mut()
                .for_each(|g| *g = self.rng.gen_range(0..3)),
        }
        let until = self.now
            + self
                .rng
                .gen_range(1..=self.config.partition_ticks_max.max(1));
        self.set_partition(groups, Some(until));
    }

    fn random_link_cut(&mut self) {
        let n = self.nodes.len() as NodeId;
        if n < 2 {
            return;
        }
        let from = self.rng.gen_range(1..=n);
        let to = self.rng.gen_range(1..n);
        let to = if to >= from { to + 1 } else { to };
        let until = self.now
            + self
                .rng
                .gen_range(1..=self.config.partition_ticks_max.max(1));
        self.add_cut(from, to, until);
    }

    /// A random running node that is not paused and passes `filter`.
    fn random_node(&mut self, filter: impl Fn(&RaftNode) -> bool) -> Option<NodeId> {
        let candidates: Vec<NodeId> = self
            .running()
            .filter(|n| !self.is_paused(n.id()) && filter(n))
            .map(|n| n.id())
            .collect();
        candidates.choose(&mut self.rng).copied()
    }

    fn client_traffic(&mut self) {
        if self.rng.gen_bool(self.config.proposal_prob) {
            if let Some(id) = self.random_node(|n| n.role() == Role::Leader) {
                self.propose_to(id);
            }
        }
        if self.rng.gen_bool(self.config.read_prob) {
            if let Some(id) = self.random_node(|n| n.role() == Role::Leader) {
                self.read_from(id);
            }
        }
    }

    // ----- clients -----

    /// Proposes a fresh command to the highest-term leader, if there is one.
    pub fn propose(&mut self) -> Option<Proposal> {
        let leader = self.leader()?;
        self.propose_to(leader)
    }

    /// Proposes a fresh command to node `id`; None if it is down or does not lead.
    pub fn propose_to(&mut self, id: NodeId) -> Option<Proposal> {
        let proposal = self.next_proposal;
        let Payload::Command(data) = self.proposal_payload(proposal) else {
            unreachable!("proposals are commands");
        };
        let index = self.nodes[slot(id)].raft.as_mut()?.propose(data).ok()?;
        self.next_proposal += 1;
        self.step += 1;
        self.stats.proposals += 1;
        self.outcomes.insert(proposal, Outcome::Pending);
        let member = &mut self.nodes[slot(id)];
        if let Some(replaced) = member.proposals.insert(index, proposal) {
            // This node accepted another command at the same index in an earlier term, and
            // lost it when its log was overwritten.
            self.outcomes.insert(replaced, Outcome::Lost);
            self.stats.lost += 1;
        }
        self.trace(Event::Propose {
            node: id,
            index,
            id: proposal,
        });
        self.drive(id);
        Some(Proposal {
            id: proposal,
            node: id,
            index,
        })
    }

    /// Asks node `id` for a linearizable read; returns its context, or None if the node is
    /// down or does not lead. The read is checked when the node answers it.
    pub fn read_from(&mut self, id: NodeId) -> Option<u64> {
        let ctx = self.next_read;
        self.nodes[slot(id)].raft.as_mut()?.read_index(ctx).ok()?;
        self.next_read += 1;
        self.step += 1;
        self.stats.reads += 1;
        let bound = ReadBound {
            acked: self.history.max_acked,
            committed: self.commit_index(),
        };
        self.nodes[slot(id)].reads.insert(ctx, bound);
        self.trace(Event::Read { node: id, ctx });
        self.drive(id);
        Some(ctx)
    }

    /// Runs until a stable leader exists and returns it.
    ///
    /// # Panics
    /// If none appears within `max_ticks`.
    pub fn wait_for_leader(&mut self, max_ticks: u64) -> NodeId {
        if !self.run_until(max_ticks, |s| s.stable_leader().is_some()) {
            self.fail(format!(
                "liveness: no stable leader within {max_ticks} ticks"
            ));
        }
        self.stable_leader().expect("just checked")
    }

    /// Proposes fresh commands to the leader until one is acknowledged; returns its
    /// proposal id and index.
    ///
    /// # Panics
    /// If no command commits within `max_ticks`.
    pub fn commit_one(&mut self, max_ticks: u64) -> (u64, Index) {
        let deadline = self.now.saturating_add(max_ticks);
        loop {
            if self.now >= deadline {
                self.fail(format!(
                    "liveness: no command committed within {max_ticks} ticks"
                ));
            }
            let leader = self.wait_for_leader(deadline - self.now);
            let Some(p) = self.propose_to(leader) else {
                // The leader is handing over leadership and takes no commands meanwhile.
                self.run_ticks(1);
                continue;
            };
            self.run_until(deadline.saturating_sub(self.now), |s| {
                s.outcome(p.id) != Some(Outcome::Pending) || !s.is_leader(leader)
            });
            if let Some(Outcome::Committed(index)) = self.outcome(p.id) {
                return (p.id, index);
            }
        }
    }

    /// The liveness phase: stops random faults and client traffic, heals the network,
    /// restarts every crashed node, then requires a leader, a freshly committed command and
    /// every node applying up to the same index, all within `settle_ticks`. Returns that index.
    ///
    /// # Panics
    /// If the cluster does not get there in time.
    pub fn settle(&mut self) -> Index {
        self.faults = false;
        self.clients = false;
        self.nodes.iter_mut().for_each(|m| m.paused_until = None);
        self.heal();
        for id in self.node_ids() {
            self.restart(id);
        }
        let budget = self.config.settle_ticks;
        let deadline = self.now + budget;
        let (_, index) = self.commit_one(budget);
        let converged = |s: &Simulation| {
            let commit = s.commit_index();
            commit >= index
                && s.nodes
                    .iter()
                    .all(|m| m.raft.is_some() && m.machine.applied == commit)
        };
        if !self.run_until(deadline.saturating_sub(self.now), converged) {
            let applied: Vec<Index> = self.nodes.iter().map(|m| m.machine.applied).collect();
            self.fail(format!(
                "liveness: nodes did not all apply up to commit index {} within {budget} \
                 ticks; applied {applied:?}",
                self.commit_index()
            ));
        }
        self.check_all();
        index
    }
}

impl Drop for Simulation {
    /// A panic that did not come from [`Simulation::fail`] (an assertion inside the core, or
    /// a test's own) still says which seed and step to rerun.
    fn drop(&mut self) {
        if std::thread::panicking() && !self.failed.get() {
            eprintln!(
                "raft simulation panicked: seed {} ({} nodes), step {}, tick {}; \
                 rerun with: {SEED_ENV}={} cargo test --test sim",
                self.config.seed, self.config.nodes, self.step, self.now, self.config.seed
            );
        }
    }
}

// ----- pure checks -----

fn check_hard_state(id: NodeId, before: HardState, now: HardState) -> Result<(), String> {
    if now.current_term < before.current_term {
        return Err(format!(
            "node {id}: term fell from {} to {}",
            before.current_term, now.current_term
        ));
    }
    if now.current_term == before.current_term
        && before.voted_for.is_some()
        && now.voted_for != before.voted_for
    {
        return Err(format!(
            "node {id}: vote in term {} changed from {:?} to {:?}",
            now.current_term, before.voted_for, now.voted_for
        ));
    }
    Ok(())
}

/// Once a step is done, the disk holds the node's whole log and hard state (cheap check: the
/// last entry; [`check_disk_full`] compares everything).
fn check_disk_tail(id: NodeId, disk: &Disk, node: &RaftNode) -> Result<(), String> {
    let log = node.log();
    let memory = (log.last_index(), log.last_term());
    if disk.last() != memory || disk.hard_state != node.hard_state() {
        return Err(format!(
            "node {id}: disk (last {:?}, {:?}) differs from memory (last {memory:?}, {:?})",
            disk.last(),
            disk.hard_state,
            node.hard_state()
        ));
    }
    Ok(())
}

/// Everything on disk is in memory too; memory may also keep a tail behind its snapshot.
fn check_disk_full(id: NodeId, disk: &Disk, node: &RaftNode) -> Result<(), String> {
    check_disk_tail(id, disk, node)?;
    if node.status().snapshot_index != disk.snapshot_index() {
        return Err(format!(
            "node {id}: disk and memory hold different snapshots"
        ));
    }
    for entry in &disk.entries {
        if node.log().entry(entry.index) != Some(entry) {
            return Err(format!(
                "node {id}: disk and memory differ at index {}",
                entry.index
            ));
        }
    }
    Ok(())
}

fn check_applied(id: NodeId, machine: &Machine, node: &RaftNode) -> Result<(), String> {
    if machine.applied != node.last_applied() {
        return Err(format!(
            "node {id}: state machine at {} but the node handed out up to {}",
            machine.applied,
            node.last_applied()
        ));
    }
    Ok(())
}

/// A message may promise only what its sender's disk already holds (Figure 2: respond to RPCs
/// only after updating stable storage): its term, a vote, or the entries an
/// acknowledgement vouches for.
fn check_durable(from: NodeId, to: NodeId, disk: &Disk, message: &Message) -> Result<(), String> {
    // A pre-vote (dissertation §9.6) promises nothing and carries the term the candidate
    // would use, which no one has persisted yet.
    match message {
        Message::RequestVote(m) if m.pre_vote => return Ok(()),
        Message::RequestVoteResponse(m) if m.pre_vote => return Ok(()),
        _ => {}
    }
    let durable = disk.hard_state;
    if message.term() > durable.current_term {
        return Err(format!(
            "node {from} sent {} of term {} before persisting that term (disk has {})",
            message.kind(),
            message.term(),
            durable.current_term
        ));
    }
    let vote_needed = match message {
        Message::RequestVote(_) => Some(from),
        Message::RequestVoteResponse(m) if m.vote_granted => Some(to),
        _ => None,
    };
    if let Some(candidate) = vote_needed {
        if durable.current_term != message.term() || durable.voted_for != Some(candidate) {
            return Err(format!(
                "node {from} sent {} for node {candidate} in term {} before persisting the \
                 vote (disk has {durable:?})",
                message.kind(),
                message.term()
            ));
        }
    }
    let acknowledged = match message {
        Message::AppendEntriesResponse(m) if m.success => m.match_index,
        Message::InstallSnapshotResponse(m) if m.installed => m.last_included_index,
        _ => 0,
    };
    let stored = disk.last().0;
    if acknowledged > stored {
        return Err(format!(
            "node {from} acknowledged entries up to {acknowledged} with only {stored} on disk"
        ));
    }
    Ok(())
}

/// The committed entries a disk write replaces. A follower may legitimately do that: a node
/// that was not part of the quorum that committed an entry can still be following a leader of
/// an earlier term, which need not hold it (§5.4.2). What must hold is that the entry stays
/// on a majority of disks, which the caller checks.
fn committed_overwritten(disk: &Disk, entries: &[Entry], history: &History) -> Vec<Index> {
    let first = entries[0].index;
    let last_checked = disk.last().0.min(history.committed.len() as Index);
    (first..=last_checked)
        .filter(|&index| {
            let wanted = history.committed[index as usize - 1].term;
            let old = disk.entry(index).map(|e| e.term);
            let new = entries.get((index - first) as usize).map(|e| e.term);
            old == Some(wanted) && new != Some(wanted)
        })
        .collect()
}

/// Log Matching on live logs, incrementally: node `id`'s log changed only at `entries`, so
/// only there can it newly agree with `other` on a term. Where it does, the entries and the
/// terms just before them must agree too; by induction over earlier steps, so do the prefixes.
fn check_new_entries_against(
    id: NodeId,
    log: &RaftLog,
    entries: &[Entry],
    other: &RaftNode,
) -> Result<(), String> {
    let theirs = other.log();
    for entry in entries {
        if theirs.term_at(entry.index) != Some(entry.term) {
            continue;
        }
        // Either log may have compacted the entry or the one before; compare what both hold.
        let before = entry.index - 1;
        let entry_differs = theirs.entry(entry.index).is_some_and(|e| e != entry);
        let before_differs = match (theirs.term_at(before), log.term_at(before)) {
            (Some(a), Some(b)) => a != b,
            _ => false,
        };
        if entry_differs || before_differs {
            return Err(format!(
                "Log Matching: nodes {id} and {} agree on the term at {} but not on the entry \\
                 or the term before it",
                other.id(),
                entry.index
            ));
        }
    }
    Ok(())
}

/// Log Matching on two live logs: if they agree on the term at some index, they hold the same
/// entries up to there. Finds the highest such index, then compares everything below it that
/// both still hold.
fn check_log_pair(a: &RaftNode, b: &RaftNode) -> Result<(), String> {
    let (la, lb) = (a.log(), b.log());
    let low = la.first_index().max(lb.first_index());
    let mut index = la.last_index().min(lb.last_index());
    while index >= low && la.term_at(index) != lb.term_at(index) {
        index -= 1;
    }
    for i in low..=index {
        if la.entry(i) != lb.entry(i) {
            return Err(format!(
                "Log Matching: nodes {} and {} agree on the term at {index} but differ at {i}",
                a.id(),
                b.id()
            ));
        }
    }
    Ok(())
}

// ----- small helpers -----

fn slot(id: NodeId) -> usize {
    assert!(id >= 1, "node ids start at 1");
    (id - 1) as usize
}

fn pick<'a, T>(rng: &mut StdRng, choices: &'a [T]) -> &'a T {
    choices.choose(rng).expect("choices are never empty")
}

/// A 64-bit mix of two values (SplitMix64's finalizer), for seeds and digests.
fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A stable fingerprint of a payload, eight bytes at a time since payloads can be large (the
/// std hasher would do, but its seed varies by process).
fn fingerprint(payload: &Payload) -> u64 {
    let Payload::Command(data) = payload else {
        return 0;
    };
    let mut hash = mix(1, data.len() as u64);
    for chunk in data.chunks(8) {
        let mut word = [0; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        hash = mix(hash, u64::from_le_bytes(word));
    }
    hash
}

/// FNV-1a: a small hasher with a fixed seed, so digests repeat across processes.
#[derive(Debug, Clone, Copy)]
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 ^= u64::from(byte);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leader_record_answers_terms_by_run() {
        let entries = [1, 1, 2, 4, 4]
            .iter()
            .enumerate()
            .map(|(i, &term)| Entry {
                term,
                index: i as Index + 1,
                payload: Payload::Noop,
            })
            .collect();
        let mut log = RaftLog::new(0, 0, entries);
        let record = LeaderRecord::of(1, &log);
        assert!(record.holds(2, 1));
        assert!(record.holds(3, 2));
        assert!(!record.holds(3, 1));
        assert!(record.holds(5, 4));
        assert!(!record.holds(6, 4));
        log.compact(3);
        let record = LeaderRecord::of(1, &log);
        assert!(record.holds(1, 7), "compacted entries count as held");
        assert!(record.holds(4, 4));
    }

    #[test]
    fn registry_rejects_a_second_entry_at_the_same_index_and_term() {
        let mut history = History::default();
        let entry = |payload| Entry {
            term: 2,
            index: 3,
            payload,
        };
        assert!(history.register(&entry(Payload::Noop), 1).is_ok());
        assert!(history.register(&entry(Payload::Noop), 1).is_ok());
        let command = Payload::Command(vec![7]);
        assert!(history.register(&entry(command), 1).is_err());
        assert!(history.register(&entry(Payload::Noop), 2).is_err());
    }

    #[test]
    fn varied_config_is_valid_and_repeatable() {
        for seed in 0..50 {
            let config = SimConfig::varied(5, seed);
            assert_eq!(config.validate(), Ok(()));
            assert_eq!(config, SimConfig::varied(5, seed));
        }
    }
}
