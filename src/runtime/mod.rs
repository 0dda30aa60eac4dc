//! The event loop of one node: a single-threaded mio `Poll` over the UDP socket, the control
//! listener and its connections, with every timer in one timer wheel.
//!
//! Each turn of the loop: wait for an event or the next deadline; advance the core's clock by
//! the milliseconds that passed; drain the UDP socket and the control connections into the
//! core; then carry out the core's `Ready` batches (persist with one fdatasync, send, apply,
//! answer clients). The loop holds no Raft logic of its own.

pub mod control;
pub mod signal;
pub mod timer;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::config::Cluster;
use crate::core::{Config, Envelope, Index, RaftLog, RaftNode, Ready, Role, Snapshot};
use crate::kv::{self, Command, KvStore, Op, Reply};
use crate::net::rules::{Chain, RuleSet, Target};
use crate::net::wire::{self, Body, ClientOutcome, ClientRequest, ClientResponse, MAX_DATAGRAM};
use crate::storage::{SnapshotMeta, Storage};
use control::ControlServer;
use timer::{TimerId, TimerWheel};

/// The UDP socket.
const UDP: Token = Token(0);
/// The signal self-pipe.
const SIGNAL: Token = Token(1);
/// The control listener; connections get tokens above it.
const CONTROL: Token = Token(2);

/// How long the node remembers a client request it could not answer yet. A client retries
/// well before this; the entry only stops the table from growing without bound.
const PENDING_TTL_MS: u64 = 30_000;
/// Most client requests waiting for an answer at once; beyond it new ones are refused.
const MAX_PENDING: usize = 65_536;
/// Most ticks replayed at once after the process was stopped (SIGSTOP) or the clock jumped.
const MAX_TICK_CATCHUP: u64 = 10_000;

/// Everything `run` needs to start a node.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// This node's id.
    pub id: u64,
    /// The cluster.
    pub cluster: Cluster,
    /// Directory for the WAL and the control socket.
    pub data_dir: PathBuf,
    /// Path of the control socket.
    pub control_path: PathBuf,
    /// Election timeout range, in milliseconds.
    pub election_timeout_ms: (u32, u32),
    /// Heartbeat interval in milliseconds.
    pub heartbeat_ms: u32,
    /// Seed for election timeouts and probabilistic rules; random when None.
    pub seed: Option<u64>,
    /// Run a pre-vote round before elections.
    pub pre_vote: bool,
    /// Leaders step down without a quorum; followers in a leader's lease ignore votes.
    pub check_quorum: bool,
    /// Take a snapshot after this many entries were applied since the last one (0: never).
    pub snapshot_every: u64,
    /// Size at which a WAL segment is closed and the next one started.
    pub segment_bytes: u64,
}

/// Timers the loop keeps in its wheel.
#[derive(Debug, Clone, Copy)]
enum Timer {
    /// The core's next election or heartbeat deadline.
    Raft,
    /// A client request to forget if still unanswered.
    ExpireWrite(u64),
    /// A read to forget if still unanswered.
    ExpireRead(u64),
}

/// A client write appended to the log, waiting to be applied.
struct PendingWrite {
    seq: u64,
    index: Index,
    /// Term the entry was appended in; if the log at `index` holds another term, it is gone.
    term: u64,
    addr: SocketAddr,
    timer: TimerId,
}

/// A client read waiting for its read index.
struct PendingRead {
    client_id: u64,
    seq: u64,
    key: Vec<u8>,
    addr: SocketAddr,
    timer: TimerId,
    /// Set once the leader confirmed the read; answer when applied reaches it.
    index: Option<Index>,
}

/// Counters shown in `status`.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Counters {
    /// Datagrams received from peers and handed to the core.
    pub peer_received: u64,
    /// Datagrams sent to peers.
    pub peer_sent: u64,
    /// Client requests received.
    pub client_requests: u64,
    /// Dropped: not a raftnode datagram.
    pub dropped_garbage: u64,
    /// Dropped: another protocol version.
    pub dropped_version: u64,
    /// Dropped: another cluster.
    pub dropped_wrong_cluster: u64,
    /// Dropped: longer than the datagram limit.
    pub dropped_oversized: u64,
    /// Dropped: header fine, body undecodable.
    pub dropped_undecodable: u64,
    /// Dropped: sender is not a member.
    pub dropped_unknown_sender: u64,
    /// Dropped by an INPUT rule.
    pub dropped_rule_in: u64,
    /// Not sent because of an OUTPUT rule.
    pub dropped_rule_out: u64,
    /// Not sent: the socket refused (buffer full, peer unreachable).
    pub send_errors: u64,
    /// fdatasync calls.
    pub fsyncs: u64,
    /// Snapshots taken here.
    pub snapshots_taken: u64,
    /// Snapshots received from a leader and installed.
    pub snapshots_installed: u64,
    /// Datagrams and client requests ignored because of a disk error.
    pub dropped_disk_error: u64,
    /// Client requests ignored because too many were waiting.
    pub dropped_overload: u64,
}

/// The running node: the core plus everything that does IO for it.
pub struct Node {
    id: u64,
    cluster: Cluster,
    cluster_id: u64,
    raft: RaftNode,
    kv: KvStore,
    storage: Storage,
    poll: Poll,
    socket: UdpSocket,
    control: ControlServer,
    signals: signal::SignalPipe,
    rules: RuleSet,
    rng: StdRng,
    timers: TimerWheel<Timer>,
    raft_timer: Option<TimerId>,
    origin: Instant,
    last_tick_ms: u64,
    writes: HashMap<u64, PendingWrite>,
    reads: HashMap<u64, PendingRead>,
    next_read_ctx: u64,
    counters: Counters,
    send_buf: Vec<u8>,
    recv_buf: Vec<u8>,
    shutdown: bool,
    last_role: (Role, Option<u64>),
    /// Applied index of the latest snapshot.
    snapshot_index: u64,
    snapshot_every: u64,
    /// Set when a write or fsync failed: the node then neither leads nor votes nor
    /// acknowledges anything, because what it promised may not be on disk.
    disk_error: Option<String>,
}

/// Failures that stop a node, with what it was doing.
#[derive(Debug)]
pub struct RunError(pub String);

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RunError {}

fn ctx(what: impl FnOnce() -> String) -> impl FnOnce(io::Error) -> RunError {
    move |e| RunError(format!("{}: {e}", what()))
}

/// Starts node `opts.id` and runs it until SIGINT or SIGTERM.
///
/// # Errors
/// If the node cannot start (bad data directory, address in use, control socket held by a
/// live node) or its disk fails.
pub fn run(opts: NodeOptions) -> Result<(), RunError> {
    let mut node = Node::start(opts)?;
    node.run_loop()?;
    log::info!(
        "node={} term={}: stopped",
        node.id,
        node.raft.current_term()
    );
    Ok(())
}

impl Node {
    /// Opens storage, binds sockets and restores the core, ready to loop.
    ///
    /// # Errors
    /// As for [`run`].
    pub fn start(opts: NodeOptions) -> Result<Node, RunError> {
        let cluster_id = opts.cluster.cluster_id();
        let addr = opts
            .cluster
            .addr(opts.id)
            .ok_or_else(|| RunError(format!("node {} is not in the cluster list", opts.id)))?;

        let (storage, recovered) =
            Storage::open(&opts.data_dir, opts.id, cluster_id, opts.segment_bytes)
                .map_err(|e| RunError(e.to_string()))?;
        let (kv, snapshot) = match &recovered.snapshot {
            Some(snap) => {
                let kv = KvStore::restore(&snap.data).map_err(|e| {
                    RunError(format!("snapshot in {}: {e}", opts.data_dir.display()))
                })?;
                (kv, snap.meta)
            }
            None => (KvStore::new(), SnapshotMeta::default()),
        };
        let mut config = Config::new(opts.id, opts.cluster.ids());
        config.election_timeout_min_ticks = opts.election_timeout_ms.0;
        config.election_timeout_max_ticks = opts.election_timeout_ms.1;
        config.heartbeat_ticks = opts.heartbeat_ms;
        config.pre_vote = opts.pre_vote;
        config.check_quorum = opts.check_quorum;
        config.validate().map_err(RunError)?;
        let seed = opts.seed.unwrap_or_else(rand::random);
        let log = RaftLog::new(snapshot.index, snapshot.term, recovered.entries);
        let mut raft = RaftNode::new(config, recovered.hard_state, log, seed);
        if let Some(snap) = recovered.snapshot {
            raft.compact(Snapshot {
                index: snap.meta.index,
                term: snap.meta.term,
                data: Arc::new(snap.data),
            });
        }

        let poll = Poll::new().map_err(ctx(|| "creating poll".to_string()))?;
        let mut socket =
            UdpSocket::bind(addr).map_err(ctx(|| format!("binding UDP socket {addr}")))?;
        poll.registry()
            .register(&mut socket, UDP, Interest::READABLE)
            .map_err(ctx(|| "registering UDP socket".to_string()))?;
        let mut storage = storage;
        if let Some(n) = std::env::var("RAFTNODE_FAILPOINT_SYNC_AFTER")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            log::warn!(
                "node={}: failpoint: disk writes fail after {n} syncs",
                opts.id
            );
            storage.fail_sync_after(n);
        }
        let control = ControlServer::bind(&opts.control_path, poll.registry(), CONTROL)?;
        let signals = signal::SignalPipe::install(poll.registry(), SIGNAL)
            .map_err(ctx(|| "installing signal handlers".to_string()))?;

        log::info!(
            "node={} term={}: started on {addr}, last log index {}, control socket {}",
            opts.id,
            raft.current_term(),
            raft.log().last_index(),
            opts.control_path.display()
        );
        let last_role = (raft.role(), raft.leader_id());
        Ok(Node {
            id: opts.id,
            cluster: opts.cluster,
            cluster_id,
            raft,
            kv,
            storage,
            poll,
            socket,
            control,
            signals,
            rules: RuleSet::new(),
            rng: StdRng::seed_from_u64(seed ^ 0x5eed),
            timers: TimerWheel::new(0),
            raft_timer: None,
            origin: Instant::now(),
            last_tick_ms: 0,
            writes: HashMap::new(),
            reads: HashMap::new(),
            next_read_ctx: 1,
            counters: Counters::default(),
            send_buf: Vec::with_capacity(MAX_DATAGRAM),
            recv_buf: vec![0; MAX_DATAGRAM + 1],
            shutdown: false,
            last_role,
            snapshot_index: snapshot.index,
            snapshot_every: opts.snapshot_every,
            disk_error: None,
        })
    }

    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    /// Runs until a shutdown signal.
    ///
    /// # Errors
    /// A failing poll or disk.
    pub fn run_loop(&mut self) -> Result<(), RunError> {
        let mut events = Events::with_capacity(256);
        let mut expired = Vec::new();
        while !self.shutdown {
            self.arm_raft_timer();
            let timeout = self
                .timers
                .next_deadline()
                .map(|deadline| Duration::from_millis(deadline.saturating_sub(self.now_ms())));
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(RunError(format!("polling: {e}"))),
            }

            // Time first: ticks that passed before these events must not count after them.
            self.advance_clock(&mut expired);
            for event in events.iter() {
                match event.token() {
                    UDP => self.drain_udp(),
                    SIGNAL => self.shutdown = self.signals.drain(),
                    CONTROL => self.control.accept(self.poll.registry()),
                    token => self.control_event(token, event.is_readable(), event.is_writable()),
                }
            }
            self.process_ready()?;
        }
        self.control.remove_socket();
        Ok(())
    }

    /// Feeds the core one tick per elapsed millisecond and fires expired timers.
    fn advance_clock(&mut self, expired: &mut Vec<(TimerId, Timer)>) {
        let now = self.now_ms();
        let ticks = (now - self.last_tick_ms).min(MAX_TICK_CATCHUP);
        if self.disk_error.is_none() {
            for _ in 0..ticks {
                self.raft.tick();
            }
        }
        self.last_tick_ms = now;
        expired.clear();
        self.timers.expire(now, expired);
        for &(id, timer) in expired.iter() {
            match timer {
                Timer::Raft => {
                    if self.raft_timer == Some(id) {
                        self.raft_timer = None;
                    }
                }
                Timer::ExpireWrite(client_id) => {
                    if self.writes.get(&client_id).is_some_and(|w| w.timer == id) {
                        self.writes.remove(&client_id);
                    }
                }
                Timer::ExpireRead(ctx) => {
                    self.reads.remove(&ctx);
                }
            }
        }
    }

    /// Keeps exactly one wheel timer at the core's next deadline.
    fn arm_raft_timer(&mut self) {
        if let Some(id) = self.raft_timer.take() {
            self.timers.cancel(id);
        }
        let deadline = self.last_tick_ms + u64::from(self.raft.ticks_until_timer());
        self.raft_timer = Some(self.timers.insert(deadline, Timer::Raft));
    }

    // ----- UDP -----

    fn drain_udp(&mut self) {
        loop {
            let (len, from) = match self.socket.recv_from(&mut self.recv_buf) {
                Ok(received) => received,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // ICMP errors from earlier sends surface here on some systems; not fatal.
                    log::debug!("node={}: recv error: {e}", self.id);
                    continue;
                }
            };
            self.handle_datagram(len, from);
        }
    }

    fn handle_datagram(&mut self, len: usize, from: SocketAddr) {
        let body = match wire::decode(&self.recv_buf[..len], self.cluster_id) {
            Ok(body) => body,
            Err(e) => {
                self.count_drop(e);
                log::debug!(
                    "node={}: dropped datagram from {from}: {}",
                    self.id,
                    e.name()
                );
                return;
            }
        };
        match body {
            Body::Peer {
                from: peer,
                message,
            } => {
                // A member sends from the address it is listed at; anything else is forged or
                // misconfigured, and trusting its header would let it speak for the member.
                if peer == self.id || self.cluster.addr(peer) != Some(from) {
                    self.counters.dropped_unknown_sender += 1;
                    return;
                }
                if self.blocked(Chain::Input, peer) {
                    self.counters.dropped_rule_in += 1;
                    return;
                }
                if self.disk_error.is_some() {
                    self.counters.dropped_disk_error += 1;
                    return;
                }
                self.counters.peer_received += 1;
                self.raft.step(peer, message);
            }
            Body::Request(request) => {
                self.counters.client_requests += 1;
                self.handle_client(request, from);
            }
            Body::Response(_) => self.counters.dropped_undecodable += 1,
        }
    }

    fn count_drop(&mut self, e: wire::DecodeError) {
        let c = &mut self.counters;
        match e {
            wire::DecodeError::NotOurs => c.dropped_garbage += 1,
            wire::DecodeError::Version => c.dropped_version += 1,
            wire::DecodeError::WrongCluster => c.dropped_wrong_cluster += 1,
            wire::DecodeError::Oversized => c.dropped_oversized += 1,
            wire::DecodeError::Body => c.dropped_undecodable += 1,
        }
    }

    fn blocked(&mut self, chain: Chain, peer: u64) -> bool {
        if self.rules.is_empty() {
            return false;
        }
        let rng = &mut self.rng;
        self.rules.verdict(chain, peer, &mut || rng.gen::<f64>()) == Target::Drop
    }

    fn send_peer(&mut self, envelope: Envelope) {
        if self.blocked(Chain::Output, envelope.to) {
            self.counters.dropped_rule_out += 1;
            return;
        }
        let Some(addr) = self.cluster.addr(envelope.to) else {
            return;
        };
        let body = Body::Peer {
            from: self.id,
            message: envelope.message,
        };
        if !wire::encode(&mut self.send_buf, self.cluster_id, self.id, &body) {
            log::warn!(
                "node={}: message to {} too large to send",
                self.id,
                envelope.to
            );
            return;
        }
        self.counters.peer_sent += 1;
        self.send_datagram(addr);
    }

    fn send_datagram(&mut self, addr: SocketAddr) {
        if let Err(e) = self.socket.send_to(&self.send_buf, addr) {
            // UDP may drop anyway; Raft retransmits, and clients retry.
            self.counters.send_errors += 1;
            log::trace!("node={}: send to {addr} failed: {e}", self.id);
        }
    }

    // ----- clients -----

    fn reply(&mut self, addr: SocketAddr, client_id: u64, seq: u64, outcome: ClientOutcome) {
        let response = ClientResponse {
            client_id,
            seq,
            outcome,
        };
        if wire::encode(
            &mut self.send_buf,
            self.cluster_id,
            self.id,
            &Body::Response(response),
        ) {
            self.send_datagram(addr);
        }
    }

    fn handle_client(&mut self, request: ClientRequest, addr: SocketAddr) {
        let ClientRequest { client_id, seq, op } = request;
        if let Err(reason) = op.validate() {
            self.reply(addr, client_id, seq, ClientOutcome::Rejected(reason));
            return;
        }
        if self.disk_error.is_some() {
            // Not leading any more: send the client on to the other members.
            self.counters.dropped_disk_error += 1;
            self.reply(addr, client_id, seq, ClientOutcome::NotLeader(None));
            return;
        }
        if op.is_write() == (seq & wire::READ_SEQ_BIT != 0) {
            let why = "a write's sequence number must not have the read bit set, a read's must";
            self.reply(
                addr,
                client_id,
                seq,
                ClientOutcome::Rejected(why.to_string()),
            );
            return;
        }
        if self.raft.role() != Role::Leader {
            let leader = self.raft.leader_id();
            self.reply(addr, client_id, seq, ClientOutcome::NotLeader(leader));
            return;
        }
        if self.writes.len() + self.reads.len() >= MAX_PENDING {
            // Overloaded: no answer, so the client retries later as after a lost datagram.
            self.counters.dropped_overload += 1;
            return;
        }
        if op.is_write() {
            self.client_write(client_id, seq, op, addr);
        } else {
            self.client_read(client_id, seq, op, addr);
        }
    }

    fn client_write(&mut self, client_id: u64, seq: u64, op: Op, addr: SocketAddr) {
        // A retry of something already applied gets the original answer, not a second apply.
        if let Some(reply) = self.kv.cached_reply(client_id, seq) {
            self.reply(addr, client_id, seq, ClientOutcome::Applied(reply));
            return;
        }
        // A retry of something still in the log: wait for it rather than append it again.
        if let Some(pending) = self.writes.get_mut(&client_id) {
            let in_log = self.raft.log().term_at(pending.index) == Some(pending.term);
            if pending.seq == seq && in_log {
                pending.addr = addr;
                return;
            }
        }
        let time_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let command = Command {
            client_id,
            seq,
            op,
            time_ms,
        };
        let data = kv::encode_command(&command);
        let index = match self.raft.propose(data) {
            Ok(index) => index,
            Err(not_leader) => {
                let outcome = ClientOutcome::NotLeader(not_leader.leader);
                self.reply(addr, client_id, seq, outcome);
                return;
            }
        };
        let deadline = self.last_tick_ms + PENDING_TTL_MS;
        let timer = self.timers.insert(deadline, Timer::ExpireWrite(client_id));
        let pending = PendingWrite {
            seq,
            index,
            term: self.raft.current_term(),
            addr,
            timer,
        };
        if let Some(old) = self.writes.insert(client_id, pending) {
            self.timers.cancel(old.timer);
        }
    }

    fn client_read(&mut self, client_id: u64, seq: u64, op: Op, addr: SocketAddr) {
        let ctx = self.next_read_ctx;
        self.next_read_ctx += 1;
        if let Err(not_leader) = self.raft.read_index(ctx) {
            self.reply(
                addr,
                client_id,
                seq,
                ClientOutcome::NotLeader(not_leader.leader),
            );
            return;
        }
        let deadline = self.last_tick_ms + PENDING_TTL_MS;
        let timer = self.timers.insert(deadline, Timer::ExpireRead(ctx));
        let read = PendingRead {
            client_id,
            seq,
            key: op.key().to_vec(),
            addr,
            timer,
            index: None,
        };
        self.reads.insert(ctx, read);
    }

    // ----- the core's output -----

    /// Carries out the core's batches until it has nothing more to do. A disk failure stops
    /// the node from acting on Raft traffic, since it can no longer keep its promises.
    fn process_ready(&mut self) -> Result<(), RunError> {
        while self.disk_error.is_none() && self.raft.has_ready() {
            let ready = self.raft.ready();
            if let Err(e) = self.handle_ready(ready) {
                log::error!(
                    "node={} term={}: {e}; no longer voting, leading or acknowledging",
                    self.id,
                    self.raft.current_term()
                );
                self.disk_error = Some(e.to_string());
                self.fail_pending();
            }
        }
        self.note_role_change();
        // Debug builds (the tests) re-check the core's invariants after every turn.
        if cfg!(debug_assertions) {
            self.raft.check_invariants();
        }
        Ok(())
    }

    fn handle_ready(&mut self, ready: Ready) -> io::Result<()> {
        let Ready {
            snapshot,
            hard_state,
            entries,
            messages,
            persisted_messages,
            committed_entries,
            read_states,
        } = ready;

        // A leader's appends go out before its own fsync: the two overlap (§10.2.1 of the
        // dissertation), and its own entry only counts toward commit once durable.
        for envelope in messages {
            self.send_peer(envelope);
        }
        if let Some(snapshot) = snapshot {
            self.install_snapshot(&snapshot)?;
        }
        if let Some(hs) = hard_state {
            self.storage.save_hard_state(hs);
        }
        self.storage.append(&entries);
        if hard_state.is_some() || !entries.is_empty() {
            self.storage.sync()?;
            self.counters.fsyncs += 1;
        }
        if let Some(last) = entries.last() {
            self.raft.on_persisted(last.index, last.term);
        }
        for envelope in persisted_messages {
            self.send_peer(envelope);
        }
        for entry in &committed_entries {
            self.apply(entry);
        }
        for read in read_states {
            if let Some(pending) = self.reads.get_mut(&read.ctx) {
                pending.index = Some(read.index);
            }
        }
        self.answer_reads();
        if self.snapshot_every > 0
            && self.kv.applied_index() >= self.snapshot_index + self.snapshot_every
        {
            self.take_snapshot()?;
        }
        Ok(())
    }

    /// Makes a snapshot received from the leader durable and loads it.
    fn install_snapshot(&mut self, snapshot: &Snapshot) -> io::Result<()> {
        let meta = SnapshotMeta {
            index: snapshot.index,
            term: snapshot.term,
        };
        let kv = KvStore::restore(&snapshot.data)
            .map_err(|e| io::Error::other(format!("snapshot from the leader: {e}")))?;
        self.storage.install_snapshot(meta, &snapshot.data)?;
        self.kv = kv;
        self.snapshot_index = snapshot.index;
        self.counters.snapshots_installed += 1;
        Ok(())
    }

    /// Writes the state machine to a snapshot and lets the core and storage drop the log
    /// behind it.
    fn take_snapshot(&mut self) -> io::Result<u64> {
        let index = self.kv.applied_index();
        if index <= self.snapshot_index {
            return Ok(self.snapshot_index);
        }
        let term = self
            .raft
            .log()
            .term_at(index)
            .expect("applied entries are held until snapshotted");
        let data = self.kv.snapshot();
        self.storage
            .save_snapshot(SnapshotMeta { index, term }, &data)?;
        self.raft.compact(Snapshot {
            index,
            term,
            data: Arc::new(data),
        });
        self.snapshot_index = index;
        self.counters.snapshots_taken += 1;
        log::debug!("node={}: snapshot at index {index}", self.id);
        Ok(index)
    }

    /// After a disk error, forgets every waiting client: none may be told its write happened.
    fn fail_pending(&mut self) {
        for (_, write) in self.writes.drain() {
            self.timers.cancel(write.timer);
        }
        for (_, read) in self.reads.drain() {
            self.timers.cancel(read.timer);
        }
    }

    fn apply(&mut self, entry: &crate::core::Entry) {
        let Some((command, reply)) = self.kv.apply(entry) else {
            return;
        };
        let Some(pending) = self.writes.get(&command.client_id) else {
            return;
        };
        if pending.index != entry.index {
            return;
        }
        let pending = self
            .writes
            .remove(&command.client_id)
            .expect("pending write");
        self.timers.cancel(pending.timer);
        if pending.seq == command.seq {
            self.reply(
                pending.addr,
                command.client_id,
                command.seq,
                ClientOutcome::Applied(reply),
            );
        }
    }

    /// Answers every confirmed read whose index the state machine has reached.
    fn answer_reads(&mut self) {
        let applied = self.kv.applied_index();
        let ready: Vec<u64> = self
            .reads
            .iter()
            .filter(|(_, r)| r.index.is_some_and(|i| i <= applied))
            .map(|(&ctx, _)| ctx)
            .collect();
        for ctx in ready {
            let read = self.reads.remove(&ctx).expect("pending read");
            self.timers.cancel(read.timer);
            let value = self
                .kv
                .get(&read.key)
                .map(|v| serde_bytes::ByteBuf::from(v.to_vec()));
            let outcome = ClientOutcome::Applied(Reply::Value(value));
            self.reply(read.addr, read.client_id, read.seq, outcome);
        }
    }

    /// After a role or leader change, tells waiting readers to go elsewhere (the core dropped
    /// their reads).
    fn note_role_change(&mut self) {
        let now = (self.raft.role(), self.raft.leader_id());
        if now == self.last_role {
            return;
        }
        self.last_role = now;
        if now.0 == Role::Leader {
            return;
        }
        let reads: Vec<PendingRead> = self.reads.drain().map(|(_, r)| r).collect();
        for read in reads {
            self.timers.cancel(read.timer);
            let outcome = ClientOutcome::NotLeader(now.1);
            self.reply(read.addr, read.client_id, read.seq, outcome);
        }
    }

    // ----- control -----

    fn control_event(&mut self, token: Token, readable: bool, writable: bool) {
        let lines = self.control.handle_event(token, readable, writable);
        for line in lines {
            let reply = self.execute(&line);
            self.control.respond(token, &reply);
        }
        self.control.finish(self.poll.registry(), token);
    }

    /// Runs one control line and returns the full reply text (data lines, then ok or error).
    fn execute(&mut self, line: &str) -> String {
        use crate::control::{self as proto, ControlCommand};
        let result = match proto::parse_command(line) {
            Err(e) => Err(e),
            Ok(ControlCommand::Status) => Ok(vec![self.status_json()]),
            Ok(ControlCommand::Snapshot) => match self.disk_error.clone() {
                Some(e) => Err(format!("disk error: {e}")),
                None => match self.take_snapshot() {
                    Ok(index) => Ok(vec![format!("snapshot at index {index}")]),
                    Err(e) => {
                        self.disk_error = Some(e.to_string());
                        Err(format!("taking a snapshot: {e}"))
                    }
                },
            },
            Ok(ControlCommand::TransferLeader(to)) => self
                .raft
                .transfer_leader(to)
                .map(|()| vec![format!("transferring leadership to node {to}")]),
            Ok(ControlCommand::Campaign) if self.raft.role() == Role::Leader => {
                Err("already the leader; use transfer-leader to hand leadership over".to_string())
            }
            Ok(ControlCommand::Campaign) => {
                self.raft.campaign();
                // With pre-vote, the outcome may already be known (a live leader refuses).
                let status = self.raft.status();
                let role = serde_json::to_value(status.role).unwrap_or_default();
                let role = role.as_str().unwrap_or("?").to_string();
                Ok(vec![format!(
                    "{role} in term {}: {}",
                    status.term, status.role_reason
                )])
            }
            Ok(ControlCommand::Help) => Ok(proto::HELP.lines().map(str::to_string).collect()),
            Ok(cmd) => {
                let listing = matches!(
                    cmd,
                    ControlCommand::Rules
                        | ControlCommand::Rule(crate::net::rules::RuleCommand::List(_))
                );
                let peers: Vec<u64> = self
                    .cluster
                    .ids()
                    .into_iter()
                    .filter(|&p| p != self.id)
                    .collect();
                let result = proto::apply_rules(&mut self.rules, &peers, cmd);
                if result.is_ok() && !listing {
                    let rules = proto::describe_rules(&self.rules).join("; ");
                    log::info!(
                        "node={} term={}: '{line}': {rules}",
                        self.id,
                        self.raft.current_term()
                    );
                }
                result
            }
        };
        match result {
            Ok(lines) => {
                let mut out = String::new();
                for l in lines {
                    out.push_str(&l);
                    out.push('\n');
                }
                out.push_str("ok\n");
                out
            }
            Err(e) => format!("error: {e}\n"),
        }
    }

    /// The node's state for `status`, as one JSON line.
    pub fn status_json(&self) -> String {
        #[derive(Serialize)]
        struct Full<'a> {
            #[serde(flatten)]
            raft: crate::core::Status,
            address: String,
            cluster: String,
            applied_digest: String,
            keys: usize,
            sessions: usize,
            rules: Vec<String>,
            counters: &'a Counters,
            pending_writes: usize,
            pending_reads: usize,
            disk_error: Option<&'a str>,
        }
        let full = Full {
            raft: self.raft.status(),
            address: self
                .cluster
                .addr(self.id)
                .map(|a| a.to_string())
                .unwrap_or_default(),
            cluster: self.cluster.to_string(),
            applied_digest: self.kv.digest(),
            keys: self.kv.len(),
            sessions: self.kv.sessions(),
            rules: self.rules.rules().iter().map(ToString::to_string).collect(),
            counters: &self.counters,
            pending_writes: self.writes.len(),
            pending_reads: self.reads.len(),
            disk_error: self.disk_error.as_deref(),
        };
        let mut value = serde_json::to_value(&full).expect("status serializes");
        if let Some(error) = &self.disk_error {
            // The core still holds its last role, but the node no longer acts on it.
            value["role"] = "stopped".into();
            value["leader"] = serde_json::Value::Null;
            value["role_reason"] = format!("disk error: {error}").into();
        }
        value.to_string()
    }
}
