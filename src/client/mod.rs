//! The client side of the key-value protocol: find the leader, send, retry, and say honestly
//! whether an operation happened.
//!
//! A client picks a random id for itself and numbers its operations. A retry (after a lost
//! datagram, a timeout, or a redirect to a new leader) reuses the operation's number, so the
//! cluster applies it at most once (see `kv`). When no answer arrives before the deadline the
//! outcome is *unknown*: a write may or may not have been applied.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use rand::Rng;

use crate::config::Cluster;
use crate::core::NodeId;
use crate::kv::{Op, Reply};
use crate::net::wire::{self, Body, ClientOutcome, ClientRequest, MAX_DATAGRAM, READ_SEQ_BIT};

/// How an operation ended, from the client's point of view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The cluster applied (or, for a get, read) it with this reply.
    Done(Reply),
    /// Definitely not applied: the cluster refused it as invalid.
    Failed(String),
    /// No definite answer before the deadline: a write may or may not have been applied.
    Unknown(String),
}

/// First wait for an answer before trying again.
const FIRST_ATTEMPT: Duration = Duration::from_millis(100);
/// Longest wait for one attempt; attempts grow toward it.
const MAX_ATTEMPT: Duration = Duration::from_millis(1000);
/// Pause before retrying when a node knows of no leader (an election is under way).
const NO_LEADER_PAUSE: Duration = Duration::from_millis(20);

/// A client of one cluster.
pub struct Client {
    socket: UdpSocket,
    cluster: Cluster,
    cluster_id: u64,
    client_id: u64,
    /// Number of the last write; writes are numbered from 1 within a session.
    write_seq: u64,
    /// Number of the last read (sent with `READ_SEQ_BIT` set).
    read_seq: u64,
    /// Number of the operation under way, as sent.
    seq: u64,
    /// Where the last answer came from, or the leader a node named.
    leader: Option<NodeId>,
    /// Talk to this node only and never follow a redirect.
    only: Option<NodeId>,
    /// Round-robin position used when no leader is known.
    next_guess: usize,
    /// The node that last failed to answer; skipped while others remain to try, so a crashed
    /// or cut-off leader does not cost a timeout on every round.
    silent: Option<NodeId>,
    timeout: Duration,
    buf: Vec<u8>,
}

impl Client {
    /// A client of `cluster` that gives each operation `timeout` to complete. With `only`, it
    /// talks to that node alone.
    ///
    /// # Errors
    /// If no local UDP socket can be bound, or `only` is not a member.
    pub fn new(cluster: Cluster, only: Option<NodeId>, timeout: Duration) -> io::Result<Client> {
        if let Some(id) = only {
            if cluster.addr(id).is_none() {
                let msg = format!("node {id} is not in the cluster list");
                return Err(io::Error::new(io::ErrorKind::InvalidInput, msg));
            }
        }
        let first = cluster.members().next().map(|(_, a)| a);
        let bind: SocketAddr = match first {
            Some(SocketAddr::V6(_)) => "[::]:0".parse().expect("literal"),
            _ => "0.0.0.0:0".parse().expect("literal"),
        };
        let socket = UdpSocket::bind(bind)?;
        let mut rng = rand::thread_rng();
        let next_guess = rng.gen_range(0..cluster.len().max(1));
        Ok(Client {
            socket,
            cluster_id: cluster.cluster_id(),
            cluster,
            client_id: rng.gen_range(1..u64::MAX),
            write_seq: 0,
            read_seq: 0,
            seq: 0,
            leader: None,
            only,
            next_guess,
            silent: None,
            timeout,
            buf: vec![0; MAX_DATAGRAM + 1],
        })
    }

    /// This client's id.
    pub fn id(&self) -> u64 {
        self.client_id
    }

    fn pick_target(&mut self) -> NodeId {
        if let Some(id) = self.only.or(self.leader) {
            return id;
        }
        let ids = self.cluster.ids();
        let mut id = ids[self.next_guess % ids.len()];
        self.next_guess += 1;
        if Some(id) == self.silent && ids.len() > 1 {
            id = ids[self.next_guess % ids.len()];
            self.next_guess += 1;
        }
        id
    }

    /// Runs one operation to completion or to the deadline.
    pub fn execute(&mut self, op: Op) -> Outcome {
        if let Err(reason) = op.validate() {
            return Outcome::Failed(reason);
        }
        self.seq = if op.is_write() {
            self.write_seq += 1;
            self.write_seq
        } else {
            self.read_seq += 1;
            READ_SEQ_BIT | self.read_seq
        };
        let request = ClientRequest {
            client_id: self.client_id,
            seq: self.seq,
            op,
        };
        let mut encoded = Vec::new();
        if !wire::encode(&mut encoded, self.cluster_id, 0, &Body::Request(request)) {
            return Outcome::Failed("request does not fit in a datagram".to_string());
        }

        let deadline = Instant::now() + self.timeout;
        let mut attempt = FIRST_ATTEMPT;
        let mut last_problem = "no answer from any node".to_string();
        while Instant::now() < deadline {
            let target = self.pick_target();
            let addr = self.cluster.addr(target).expect("member address");
            if let Err(e) = self.socket.send_to(&encoded, addr) {
                log::debug!("sending to node {target}: {e}");
            }
            let wait = attempt.min(deadline.saturating_duration_since(Instant::now()));
            match self.await_answer(wait) {
                Some(ClientOutcome::Applied(reply)) => {
                    self.leader = Some(target);
                    self.silent = None;
                    return self.applied(reply);
                }
                Some(ClientOutcome::Rejected(reason)) => return Outcome::Failed(reason),
                Some(ClientOutcome::NotLeader(hint)) => {
                    last_problem = match hint {
                        Some(l) => format!("node {target} is not the leader (leader is {l})"),
                        None => format!("node {target} is not the leader and knows of none"),
                    };
                    if self.only.is_some() {
                        return Outcome::Unknown(last_problem);
                    }
                    self.leader = hint.filter(|&l| l != target);
                    if self.leader.is_none() {
                        // An election is under way: give it a moment, but an answer from an
                        // earlier attempt still counts if one arrives meanwhile.
                        let pause =
                            NO_LEADER_PAUSE.min(deadline.saturating_duration_since(Instant::now()));
                        if let Some(ClientOutcome::Applied(reply)) = self.await_answer(pause) {
                            return self.applied(reply);
                        }
                    }
                }
                None => {
                    last_problem = format!("no answer from node {target}");
                    self.leader = None;
                    self.silent = Some(target);
                    attempt = (attempt * 2).min(MAX_ATTEMPT);
                }
            }
        }
        Outcome::Unknown(format!(
            "timed out after {:?}: {last_problem}",
            self.timeout
        ))
    }

    /// The outcome of an operation the cluster answered with `reply`.
    fn applied(&mut self, reply: Reply) -> Outcome {
        if reply != Reply::SessionExpired {
            return Outcome::Done(reply);
        }
        // A fresh session for what comes next; this operation may have been applied by an
        // earlier attempt before the session expired.
        self.client_id = rand::thread_rng().gen_range(1..u64::MAX);
        self.write_seq = 0;
        let why = "the client session expired; the operation may have been applied";
        Outcome::Unknown(why.to_string())
    }

    /// Waits up to `wait` for the answer to the current operation, skipping stale answers.
    fn await_answer(&mut self, wait: Duration) -> Option<ClientOutcome> {
        let until = Instant::now() + wait;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.socket.set_read_timeout(Some(left)).ok()?;
            let len = match self.socket.recv_from(&mut self.buf) {
                Ok((len, _)) => len,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return None
                }
                // An ICMP "port unreachable" from a node that is down: try elsewhere.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return None,
                Err(_) => continue,
            };
            let Ok(Body::Response(response)) = wire::decode(&self.buf[..len], self.cluster_id)
            else {
                continue;
            };
            if response.client_id == self.client_id && response.seq == self.seq {
                return Some(response.outcome);
            }
        }
    }
}
