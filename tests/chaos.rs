//! Chaos test: five real `raftnode` processes on 127.0.0.1, several clients doing random
//! put/get/cas/del on a few keys, and a seeded schedule of faults: majority/minority
//! partitions (the leader in the minority half of the time), a bridge between two halves, a
//! node (often the leader) that hears nothing, says nothing or both, lossy links, kill -9 and
//! restart of one node, several or all five, SIGSTOP and SIGCONT, and leadership transfers
//! just before another fault. Each fault lasts 50 ms to 4 s, then everything is healed.
//! Afterwards the test checks that the cluster makes progress, that every node applied the
//! same entries, and that every key's history is linearizable (see `raftnode::checker`).
//!
//! Clients time out after 1 s, 500 ms or 250 ms (by turns), so faults leave operations of
//! unknown outcome behind. The checker may assume one thing about them from the product's
//! exactly-once sessions: an unknown write takes effect, if at all, before the same session's
//! next acknowledged write completes. A key that fails with that assumption is checked again
//! without it, and the report says which it was.
//!
//! Knobs, all from the environment:
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `RAFTNODE_CHAOS_SEED` | random | seed of the workload and the fault schedule (printed) |
//! | `RAFTNODE_CHAOS_SECS` | 20 | how long faults are injected |
//! | `RAFTNODE_CHAOS_CLIENTS` | 6 | concurrent clients |
//! | `RAFTNODE_CHAOS_KEYS` | 4 | keys they share |
//! | `RAFTNODE_CHAOS_THINK_MS` | 3 | longest pause between one client's operations |
//! | `RAFTNODE_CHAOS_SNAPSHOT_EVERY` | 1000 | the nodes' `--snapshot-every` |
//! | `RAFTNODE_CHAOS_CANARY` | 0 | 1: corrupt one recorded read; the run then passes only if the
//! checker catches it (a self-test of the checking) |
//!
//! The long run: `RAFTNODE_CHAOS_SECS=600 cargo test --release --test chaos -- --nocapture`.
//! Replay a schedule with the printed seed (timing differs, so the run will not be identical).
//!
//! It fails on a linearizability violation, on nodes that applied different entries, on a node
//! that exits by itself, on a reply a client can never legitimately get, and when the healed
//! cluster makes no progress. Unknown outcomes during faults are expected.

#[path = "common/chaos_support.rs"]
mod chaos_support;
mod common;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use chaos_support::{wait_until, Cluster, Crash, Life};
use raftnode::checker::{self, Call, Limits, Nanos, Observed, Operation, Verdict};
use raftnode::client::{Client, Outcome};
use raftnode::kv::{Op, Reply};

/// Nodes in the cluster.
const NODES: u64 = 5;
/// How long one client operation may take before its outcome is unknown. Clients take turns
/// with the shorter limits so that faults leave unknown outcomes behind (the cluster often
/// recovers within a second).
const OP_TIMEOUTS: [Duration; 3] = [
    Duration::from_millis(1000),
    Duration::from_millis(500),
    Duration::from_millis(250),
];
/// The limit of the test's own checking client.
const OP_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest a fault stays in place, and shortest.
const FAULT_MAX: Duration = Duration::from_millis(4000);
const FAULT_MIN: Duration = Duration::from_millis(50);
/// Longest calm between two faults.
const CALM_MAX: Duration = Duration::from_millis(1500);
/// How long the healed cluster has to complete a write, and then to converge.
const RECOVERY: Duration = Duration::from_secs(30);

/// The test's settings, from the environment.
#[derive(Debug, Clone)]
struct Settings {
    seed: u64,
    secs: u64,
    clients: u64,
    keys: usize,
    think_ms: u64,
    snapshot_every: u64,
    canary: bool,
}

fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} is not a number")),
        Err(_) => default,
    }
}

impl Settings {
    fn from_env() -> Settings {
        Settings {
            seed: env_number("RAFTNODE_CHAOS_SEED", rand::random::<u64>() >> 1),
            secs: env_number("RAFTNODE_CHAOS_SECS", 20),
            clients: env_number("RAFTNODE_CHAOS_CLIENTS", 6).max(1),
            keys: env_number("RAFTNODE_CHAOS_KEYS", 4).max(1) as usize,
            think_ms: env_number("RAFTNODE_CHAOS_THINK_MS", 3),
            snapshot_every: env_number("RAFTNODE_CHAOS_SNAPSHOT_EVERY", 1000),
            canary: env_number("RAFTNODE_CHAOS_CANARY", 0) != 0,
        }
    }

    fn run_args(&self) -> Vec<String> {
        let args = [
            "--election-timeout-min",
            "150ms",
            "--election-timeout-max",
            "300ms",
            "--heartbeat",
            "50ms",
            "--log-level",
            "info",
        ];
        let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        args.extend([
            "--snapshot-every".to_string(),
            self.snapshot_every.to_string(),
        ]);
        args
    }
}

fn since(origin: Instant) -> Nanos {
    origin.elapsed().as_nanos() as Nanos
}

fn secs(t: Nanos) -> String {
    format!("{:.3}s", t as f64 / 1e9)
}

// ----- the workload -----

/// One client operation as the client saw it.
#[derive(Debug, Clone)]
struct Record {
    client: u64,
    /// The client's session (its id on the wire) when it sent the operation.
    session: u64,
    /// The client's operation number.
    n: u64,
    key: String,
    call: Call,
    observed: Observed,
    invoke: Nanos,
    complete: Nanos,
}

/// What the clients share: the stop flag, the latest value seen per key (so a cas has a fair
/// chance of expecting the right one) and replies no client should ever get.
struct Shared {
    stop: AtomicBool,
    latest: Mutex<Vec<Option<String>>>,
    anomalies: Mutex<Vec<String>>,
}

/// One client thread's loop: random operations until told to stop.
struct Worker {
    index: u64,
    client: Client,
    keys: Vec<String>,
    rng: StdRng,
    origin: Instant,
    shared: Arc<Shared>,
    think_ms: u64,
    clients: u64,
}

impl Worker {
    fn run(mut self) -> Vec<Record> {
        let mut records = Vec::new();
        for n in 1..u64::MAX {
            if self.shared.stop.load(Ordering::Relaxed) {
                break;
            }
            let k = self.rng.gen_range(0..self.keys.len());
            let call = self.pick_call(k, n);
            records.push(self.execute(k, n, call));
            if self.think_ms > 0 {
                // Pacing, not synchronisation: keeps the history a size the checker likes.
                let pause = self.rng.gen_range(0..=self.think_ms);
                thread::sleep(Duration::from_millis(pause));
            }
        }
        records
    }

    fn pick_call(&mut self, k: usize, n: u64) -> Call {
        let value = format!("{}.{n}", self.index);
        match self.rng.gen_range(0..100) {
            0..35 => Call::Get,
            35..65 => Call::Put(value),
            65..90 => {
                let latest = self.shared.latest.lock().expect("lock")[k].clone();
                let expected = match latest {
                    Some(v) if self.rng.gen_bool(0.8) => v,
                    _ => format!(
                        "{}.{}",
                        self.rng.gen_range(0..self.clients),
                        self.rng.gen_range(1..=n)
                    ),
                };
                Call::Cas {
                    expected,
                    new: value,
                }
            }
            _ => Call::Del,
        }
    }

    fn execute(&mut self, k: usize, n: u64, call: Call) -> Record {
        let key = self.keys[k].clone();
        let op = to_op(&key, &call);
        let session = self.client.id();
        let invoke = since(self.origin);
        let outcome = self.client.execute(op);
        let complete = since(self.origin);
        let observed = match observe(&call, &outcome) {
            Ok(observed) => observed,
            Err(anomaly) => {
                let line = format!("client {} op {n} on {key}: {anomaly}", self.index);
                self.shared.anomalies.lock().expect("lock").push(line);
                Observed::Unknown
            }
        };
        self.note_latest(k, &call, &observed);
        Record {
            client: self.index,
            session,
            n,
            key,
            call,
            observed,
            invoke,
            complete,
        }
    }

    fn note_latest(&self, k: usize, call: &Call, observed: &Observed) {
        let seen = match (call, observed) {
            (Call::Put(v), Observed::Ok) => Some(v.clone()),
            (Call::Cas { new, .. }, Observed::Ok) => Some(new.clone()),
            (_, Observed::Value(Some(v)) | Observed::Mismatch(Some(v))) => Some(v.clone()),
            _ => None,
        };
        if let Some(v) = seen {
            self.shared.latest.lock().expect("lock")[k] = Some(v);
        }
    }
}

fn to_op(key: &str, call: &Call) -> Op {
    let key = key.as_bytes().to_vec();
    match call {
        Call::Put(v) => Op::Put {
            key,
            value: v.as_bytes().to_vec(),
        },
        Call::Get => Op::Get { key },
        Call::Del => Op::Del { key },
        Call::Cas { expected, new } => Op::Cas {
            key,
            expected: expected.as_bytes().to_vec(),
            new: new.as_bytes().to_vec(),
        },
    }
}

fn text(bytes: Option<serde_bytes::ByteBuf>) -> Option<String> {
    bytes.map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// What the checker should take the client to have seen, or an anomaly: a reply the client
/// can never legitimately get for its current operation.
fn observe(call: &Call, outcome: &Outcome) -> Result<Observed, String> {
    let reply = match outcome {
        Outcome::Done(reply) => reply.clone(),
        // The client library promises "definitely not applied" here.
        Outcome::Failed(_) => return Ok(Observed::Fail),
        Outcome::Unknown(_) => return Ok(Observed::Unknown),
    };
    match (call, reply) {
        (Call::Put(_) | Call::Del, Reply::Done) => Ok(Observed::Ok),
        (Call::Get, Reply::Value(v)) => Ok(Observed::Value(text(v))),
        (Call::Cas { .. }, Reply::Swapped) => Ok(Observed::Ok),
        (Call::Cas { .. }, Reply::Mismatch(v)) => Ok(Observed::Mismatch(text(v))),
        (call, reply) => Err(format!("reply {reply:?} to {call:?}")),
    }
}

/// Turns the records into the checker's operations. With `session_bounds`, a write of unknown
/// outcome must have taken effect, if at all, before the next acknowledged write of the same
/// client session completed: the cluster applies a session's commands in sequence-number
/// order and refuses older ones once a newer one was applied (exactly-once sessions).
fn operations(records: &[Record], session_bounds: bool) -> Vec<Operation> {
    let mut bounds: BTreeMap<(u64, u64), Nanos> = BTreeMap::new();
    let mut by_client: BTreeMap<(u64, u64), Vec<&Record>> = BTreeMap::new();
    for r in records {
        by_client.entry((r.client, r.session)).or_default().push(r);
    }
    for ops in by_client.values_mut() {
        ops.sort_by_key(|r| r.n);
        let mut bound = None;
        for r in ops.iter().rev() {
            if r.call == Call::Get {
                continue;
            }
            match r.observed {
                Observed::Unknown => {
                    if let Some(b) = bound {
                        bounds.insert((r.client, r.n), b);
                    }
                }
                Observed::Ok | Observed::Mismatch(_) => bound = Some(r.complete),
                _ => {}
            }
        }
    }
    records
        .iter()
        .map(|r| {
            let complete = match r.observed {
                Observed::Unknown if session_bounds => bounds.get(&(r.client, r.n)).copied(),
                Observed::Unknown => None,
                _ => Some(r.complete),
            };
            Operation {
                id: r.n,
                process: r.client,
                key: r.key.clone(),
                call: r.call.clone(),
                observed: r.observed.clone(),
                invoke: r.invoke,
                complete,
            }
        })
        .collect()
}

// ----- faults -----

/// One fault the schedule applies, then heals.
#[derive(Debug, Clone)]
enum Fault {
    /// Each side drops every datagram from and to the other.
    Partition(Vec<u64>, Vec<u64>),
    /// Two sides cut from each other, one node in touch with both.
    Bridge(Vec<u64>, u64, Vec<u64>),
    /// One node (often the leader) drops everything it would receive, send, or both.
    Isolate(u64, Chains),
    /// Datagrams from a peer dropped at a node with some probability: (node, peer) pairs.
    Lossy(Vec<(u64, u64)>, f64),
    /// kill -9; restarted on the same data directories when healed. All five at times.
    Kill(Vec<u64>),
    /// SIGSTOP; SIGCONT when healed.
    Pause(Vec<u64>),
    /// The leader hands leadership to a peer (once; nothing to heal).
    Transfer(u64, u64),
}

/// Which way an isolated node is cut off.
#[derive(Debug, Clone, Copy)]
enum Chains {
    /// Hears nothing.
    Input,
    /// Says nothing.
    Output,
    /// Both.
    Both,
}

impl Fault {
    fn kind(&self) -> &'static str {
        match self {
            Fault::Partition(..) => "partition",
            Fault::Bridge(..) => "bridge",
            Fault::Isolate(..) => "isolate",
            Fault::Lossy(..) => "lossy links",
            Fault::Kill(ids) if ids.len() > 1 => "kill -9 several",
            Fault::Kill(_) => "kill -9",
            Fault::Pause(ids) if ids.len() > 1 => "SIGSTOP several",
            Fault::Pause(_) => "SIGSTOP",
            Fault::Transfer(..) => "transfer-leader",
        }
    }

    fn apply(&self, cluster: &mut Cluster) -> Result<(), String> {
        match self {
            Fault::Partition(a, b) => cut(cluster, a, b),
            Fault::Bridge(a, _, b) => cut(cluster, a, b),
            Fault::Isolate(id, chains) => {
                let line = match chains {
                    Chains::Input => "-A INPUT -j DROP",
                    Chains::Output => "-A OUTPUT -j DROP",
                    Chains::Both => "isolate",
                };
                cluster.ctl(*id, line).map(drop)
            }
            Fault::Lossy(links, p) => links.iter().try_for_each(|(id, peer)| {
                let rule = format!(
                    "-A INPUT -s {peer} -m statistic --mode random --probability {p} -j DROP"
                );
                cluster.ctl(*id, &rule).map(drop)
            }),
            Fault::Kill(ids) => ids.iter().try_for_each(|&id| cluster.kill9(id)),
            Fault::Pause(ids) => ids.iter().try_for_each(|&id| cluster.pause(id)),
            Fault::Transfer(from, to) => cluster
                .ctl(*from, &format!("transfer-leader {to}"))
                .map(drop),
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Partition(a, b) => write!(f, "partition {a:?} | {b:?}"),
            Fault::Bridge(a, m, b) => write!(f, "bridge {a:?} | {m} | {b:?}"),
            Fault::Isolate(id, Chains::Both) => write!(f, "isolate node {id}"),
            Fault::Isolate(id, Chains::Input) => write!(f, "node {id} hears nothing"),
            Fault::Isolate(id, Chains::Output) => write!(f, "node {id} says nothing"),
            Fault::Lossy(links, p) => {
                write!(f, "drop {:.0}% of datagrams on", p * 100.0)?;
                links
                    .iter()
                    .try_for_each(|(id, peer)| write!(f, " {peer}->{id}"))
            }
            Fault::Kill(ids) => write!(f, "kill -9 nodes {ids:?}"),
            Fault::Pause(ids) => write!(f, "SIGSTOP nodes {ids:?}"),
            Fault::Transfer(from, to) => write!(f, "node {from} transfers leadership to {to}"),
        }
    }
}

/// Blocks every link between `a` and `b`, on both sides.
fn cut(cluster: &Cluster, a: &[u64], b: &[u64]) -> Result<(), String> {
    let list = |ids: &[u64]| ids.iter().map(u64::to_string).collect::<Vec<_>>().join(" ");
    for id in a {
        cluster.ctl(*id, &format!("block {}", list(b)))?;
    }
    for id in b {
        cluster.ctl(*id, &format!("block {}", list(a)))?;
    }
    Ok(())
}

/// Draws the next episode: one network fault, one process fault, or one of each. `leader` is
/// the current leader if one is known; faults aim at it half of the time.
fn plan_episode(rng: &mut StdRng, leader: Option<u64>) -> Vec<Fault> {
    let mut ids: Vec<u64> = (1..=NODES).collect();
    ids.shuffle(rng);
    // Half of the time the leader is first, so it ends up in a minority or on the bridge's
    // side.
    if let Some(l) = leader.filter(|_| rng.gen_bool(0.5)) {
        let at = ids
            .iter()
            .position(|&id| id == l)
            .expect("leader is a member");
        ids.swap(0, at);
    }
    let target = |rng: &mut StdRng| match leader {
        Some(l) if rng.gen_bool(0.5) => l,
        _ => *ids.choose(rng).expect("nodes"),
    };
    let network = match rng.gen_range(0..100) {
        0..25 => {
            let minority = rng.gen_range(1..=2);
            Fault::Partition(ids[..minority].to_vec(), ids[minority..].to_vec())
        }
        25..40 => Fault::Bridge(ids[..2].to_vec(), ids[2], ids[3..].to_vec()),
        40..70 => {
            let chains = [Chains::Input, Chains::Output, Chains::Both];
            Fault::Isolate(target(rng), *chains.choose(rng).expect("three"))
        }
        _ => {
            let p = f64::from(rng.gen_range(1..=9)) / 10.0;
            let links = ids
                .iter()
                .flat_map(|&a| ids.iter().map(move |&b| (a, b)))
                .filter(|(a, b)| a != b)
                .filter(|_| rng.gen_bool(0.4))
                .collect();
            Fault::Lossy(links, p)
        }
    };
    let process = match rng.gen_range(0..100) {
        0..40 => Fault::Kill(vec![target(rng)]),
        40..80 => Fault::Pause(vec![target(rng)]),
        80..90 => Fault::Kill(ids[..rng.gen_range(2..=3)].to_vec()),
        90..95 => Fault::Pause(ids[..2].to_vec()),
        // The whole cluster crashes: acknowledged writes must survive on disk.
        _ => Fault::Kill(ids.clone()),
    };
    let mut episode = match rng.gen_range(0..100) {
        0..40 => vec![network],
        40..75 => vec![process],
        _ => vec![network, process],
    };
    // Sometimes the leader also hands over leadership just before the other faults strike
    // (first, so that it is still up to receive the command).
    if let Some(l) = leader.filter(|_| rng.gen_bool(0.2)) {
        let to = *ids
            .iter()
            .filter(|&&id| id != l)
            .collect::<Vec<_>>()
            .choose(rng)
            .expect("peers");
        episode.insert(0, Fault::Transfer(l, *to));
    }
    episode
}

/// A fault's lifetime: log-uniform between FAULT_MIN and FAULT_MAX, so both flapping and
/// long faults occur.
fn fault_duration(rng: &mut StdRng) -> Duration {
    let ratio = FAULT_MAX.as_secs_f64() / FAULT_MIN.as_secs_f64();
    FAULT_MIN.mul_f64(ratio.powf(rng.gen_range(0.0..=1.0)))
}

/// What happened during the run, for the report.
#[derive(Default)]
struct Journal {
    schedule: Vec<(Nanos, String)>,
    faults: BTreeMap<&'static str, u32>,
    crashes: Vec<(Nanos, Crash)>,
    /// Things that went wrong driving the cluster (not product failures by themselves).
    warnings: Vec<String>,
    failures: Vec<String>,
}

impl Journal {
    fn note(&mut self, origin: Instant, what: String) {
        let t = since(origin);
        println!("  {:>9} {what}", secs(t));
        self.schedule.push((t, what));
    }
}

/// The fault side of the test: applies episodes until `until`, reaping crashes as it goes.
struct Chaos {
    cluster: Cluster,
    rng: StdRng,
    origin: Instant,
    journal: Journal,
}

impl Chaos {
    fn run(&mut self, until: Instant) {
        let end = |now: Instant| now.min(until);
        while Instant::now() < until {
            let calm = self.rng.gen_range(Duration::ZERO..=CALM_MAX);
            self.hold(end(Instant::now() + calm));
            if Instant::now() >= until {
                break;
            }
            let leader = self.leader();
            let episode = plan_episode(&mut self.rng, leader);
            let now_leading = leader.map_or("no leader".to_string(), |l| format!("leader {l}"));
            for fault in &episode {
                self.journal
                    .note(self.origin, format!("{fault} ({now_leading})"));
                *self.journal.faults.entry(fault.kind()).or_default() += 1;
                if let Err(e) = fault.apply(&mut self.cluster) {
                    self.journal.warnings.push(format!("applying {fault}: {e}"));
                }
            }
            let lasts = fault_duration(&mut self.rng);
            self.hold(end(Instant::now() + lasts));
            self.heal();
        }
    }

    /// Waits until `until` (the schedule's own pacing), watching for nodes that die by
    /// themselves.
    fn hold(&mut self, until: Instant) {
        loop {
            self.reap();
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            thread::sleep(left.min(Duration::from_millis(20)));
        }
    }

    /// Records nodes that exited on their own and starts them again, so the run goes on.
    fn reap(&mut self) {
        for crash in self.cluster.reap_crashes() {
            let t = since(self.origin);
            let line = format!("node {} exited by itself ({})", crash.id, crash.status);
            self.journal.note(self.origin, format!("CRASH: {line}"));
            self.journal
                .failures
                .push(format!("at {}: {line}", secs(t)));
            self.journal.crashes.push((t, crash));
        }
    }

    /// Continues paused nodes, restarts killed ones and removes every rule.
    fn heal(&mut self) {
        self.reap();
        for id in self.cluster.ids() {
            let result = match self.cluster.node(id).life {
                Life::Paused => self.cluster.resume(id),
                Life::Down => self.cluster.restart(id),
                Life::Running => Ok(()),
            };
            if let Err(e) = result {
                let line = format!("node {id} did not come back: {e}");
                self.journal.failures.push(line);
            }
        }
        for id in self.cluster.ids() {
            if let Err(e) = self.cluster.ctl(id, "heal") {
                self.journal.warnings.push(format!("healing: {e}"));
            }
        }
        self.journal.note(self.origin, "heal".to_string());
    }

    /// The leader of the highest term among the nodes that answer, if any.
    fn leader(&self) -> Option<u64> {
        self.cluster
            .ids()
            .into_iter()
            .filter(|&id| self.cluster.node(id).life == Life::Running)
            .filter_map(|id| self.cluster.status(id).ok())
            .filter(|s| s["role"] == "leader")
            .max_by_key(|s| s["term"].as_u64())
            .and_then(|s| s["id"].as_u64())
    }
}

// ----- after the faults -----

/// Waits until a fresh client completes a write: the healed cluster makes progress.
fn await_progress(cluster: &Cluster) -> Result<Duration, String> {
    let members: raftnode::config::Cluster = cluster.spec().parse().expect("cluster list");
    let mut client = Client::new(members, None, OP_TIMEOUT).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let op = Op::Put {
        key: b"chaos-progress".to_vec(),
        value: b"done".to_vec(),
    };
    wait_until(
        started + RECOVERY,
        "a write to complete after healing",
        || match client.execute(op.clone()) {
            Outcome::Done(_) => Ok(started.elapsed()),
            other => Err(format!("{other:?}")),
        },
    )
}

/// One final read of every key by a fresh client, added to the history.
fn final_reads(cluster: &Cluster, keys: &[String], origin: Instant) -> Vec<Record> {
    let members: raftnode::config::Cluster = cluster.spec().parse().expect("cluster list");
    let Ok(mut client) = Client::new(members, None, OP_TIMEOUT) else {
        return Vec::new();
    };
    let mut records = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        for _ in 0..10 {
            let invoke = since(origin);
            let outcome = client.execute(Op::Get {
                key: key.as_bytes().to_vec(),
            });
            let complete = since(origin);
            if let Ok(observed @ Observed::Value(_)) = observe(&Call::Get, &outcome) {
                records.push(Record {
                    client: u64::MAX,
                    session: client.id(),
                    n: i as u64 + 1,
                    key: key.clone(),
                    call: Call::Get,
                    observed,
                    invoke,
                    complete,
                });
                break;
            }
        }
    }
    records
}

/// Waits until every node has applied everything committed, with one commit index and one
/// digest. On timeout the error shows every node's state and says whether any two nodes that
/// applied the same number of entries disagree on them (a divergence, not slowness).
fn await_convergence(cluster: &Cluster) -> Result<String, String> {
    let deadline = Instant::now() + RECOVERY;
    wait_until(deadline, "all nodes to apply the same entries", || {
        let statuses: Vec<serde_json::Value> = cluster
            .ids()
            .into_iter()
            .map(|id| cluster.status(id))
            .collect::<Result<_, _>>()?;
        let field = |s: &serde_json::Value, f: &str| s[f].to_string();
        let summary = statuses
            .iter()
            .map(|s| {
                let (id, role, term) = (field(s, "id"), field(s, "role"), field(s, "term"));
                let (commit, applied) = (field(s, "commit_index"), field(s, "last_applied"));
                let (digest, disk) = (field(s, "applied_digest"), field(s, "disk_error"));
                format!("node {id} {role} term {term} commit {commit} applied {applied} digest {digest} disk_error {disk}")
            })
            .collect::<Vec<_>>()
            .join("; ");
        let mut by_applied: BTreeMap<String, String> = BTreeMap::new();
        for s in &statuses {
            let digest = field(s, "applied_digest");
            let seen = by_applied
                .entry(field(s, "last_applied"))
                .or_insert(digest.clone());
            if *seen != digest {
                return Ok(Err(format!("DIVERGENCE: {summary}")));
            }
        }
        let first = &statuses[0];
        let same = statuses.iter().all(|s| {
            s["commit_index"] == first["commit_index"]
                && s["last_applied"] == s["commit_index"]
                && s["applied_digest"] == first["applied_digest"]
        });
        if same {
            Ok(Ok(summary))
        } else {
            Err(summary)
        }
    })?
}

// ----- the report -----

fn summarize(records: &[Record]) -> String {
    let mut table: BTreeMap<&str, [u64; 4]> = BTreeMap::new();
    for r in records {
        let kind = match r.call {
            Call::Put(_) => "put",
            Call::Get => "get",
            Call::Del => "del",
            Call::Cas { .. } => "cas",
        };
        let column = match r.observed {
            Observed::Ok | Observed::Value(_) => 0,
            Observed::Mismatch(_) => 1,
            Observed::Fail => 2,
            Observed::Unknown => 3,
        };
        table.entry(kind).or_default()[column] += 1;
    }
    let mut out = String::from("  op     ok  mismatch  fail  unknown\n");
    for (kind, [ok, mismatch, fail, unknown]) in table {
        out += &format!("  {kind}  {ok:>6} {mismatch:>9} {fail:>5} {unknown:>8}\n");
    }
    out
}

/// Makes a read from the middle of the run return a value first written more than a second
/// after the read completed, which no order can explain. Returns the read's key and what was
/// done.
fn plant_canary(records: &mut [Record]) -> Option<(String, String)> {
    let middle = records.iter().map(|r| r.invoke).max()? / 2;
    let reader = records.iter().position(|r| {
        r.call == Call::Get && matches!(r.observed, Observed::Value(_)) && r.invoke >= middle
    })?;
    let (key, after) = (
        records[reader].key.clone(),
        records[reader].complete + 1_000_000_000,
    );
    let value = records
        .iter()
        .filter(|r| r.key == key && r.invoke > after)
        .find_map(|r| match &r.call {
            Call::Put(v) => Some(v.clone()),
            _ => None,
        })?;
    let r = &mut records[reader];
    r.observed = Observed::Value(Some(value.clone()));
    let what = format!(
        "client {} op {} on {key} now reads {value:?}",
        r.client, r.n
    );
    Some((key, what))
}

/// Checks the history, with session bounds and, for a key that fails with them, again
/// without (to tell a session-order problem from a plain one). Returns the failing keys and
/// what failed.
fn check_history(records: &[Record]) -> Vec<(String, String)> {
    let limits = Limits {
        max_configs: 10_000_000,
        max_time: Duration::from_secs(180),
        ..Limits::default()
    };
    let started = Instant::now();
    let report = checker::check(&operations(records, true), &limits);
    println!("linearizability (checked in {:?}):", started.elapsed());
    for key in &report.keys {
        println!("  {key}");
    }
    let mut failures = Vec::new();
    for (key, why) in report.inconclusive() {
        println!("WARNING: key {key:?} is inconclusive: {why}");
    }
    for (key, violation) in report.violations() {
        println!("VIOLATION on key {key:?}:\n{violation}");
        let plain: Vec<Operation> = operations(records, false)
            .into_iter()
            .filter(|op| op.key == key)
            .collect();
        let again = checker::check_key(key, &plain, &limits);
        let note = match again.verdict {
            Verdict::Linearizable => {
                "linearizable without session bounds: an unknown write took effect after the \
                 same client's next acknowledged write (exactly-once ordering broken)"
                    .to_string()
            }
            Verdict::Violation(_) => "also without session bounds".to_string(),
            Verdict::Inconclusive(why) => format!("without session bounds: inconclusive ({why})"),
        };
        println!("  ({note})");
        let failure = format!("key {key:?} is not linearizable ({note})");
        failures.push((key.to_string(), failure));
    }
    failures
}

fn print_crashes(journal: &Journal) {
    for (t, crash) in &journal.crashes {
        println!(
            "----- node {} exited by itself at {} ({}); end of its log -----\n{}",
            crash.id,
            secs(*t),
            crash.status,
            crash.log_tail
        );
    }
}

// ----- the test -----

fn timeout(client: u64) -> Duration {
    OP_TIMEOUTS[client as usize % OP_TIMEOUTS.len()]
}

fn start_clients(
    settings: &Settings,
    cluster: &Cluster,
    keys: &[String],
    origin: Instant,
    shared: &Arc<Shared>,
) -> Vec<thread::JoinHandle<Vec<Record>>> {
    let members: raftnode::config::Cluster = cluster.spec().parse().expect("cluster list");
    (0..settings.clients)
        .map(|index| {
            let worker = Worker {
                index,
                client: Client::new(members.clone(), None, timeout(index)).expect("client socket"),
                keys: keys.to_vec(),
                rng: StdRng::seed_from_u64(settings.seed ^ (index + 1).wrapping_mul(0x5851_f42d)),
                origin,
                shared: Arc::clone(shared),
                think_ms: settings.think_ms,
                clients: settings.clients,
            };
            thread::spawn(move || worker.run())
        })
        .collect()
}

#[test]
fn chaos() {
    let settings = Settings::from_env();
    println!(
        "chaos: seed {} (RAFTNODE_CHAOS_SEED={} to replay the schedule), {} s of faults, \
         {} clients, {} keys",
        settings.seed, settings.seed, settings.secs, settings.clients, settings.keys
    );
    let origin = Instant::now();
    let cluster = Cluster::start(NODES, &settings.run_args(), settings.seed, origin);
    let keys: Vec<String> = (0..settings.keys).map(|k| format!("key{k}")).collect();
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        latest: Mutex::new(vec![None; keys.len()]),
        anomalies: Mutex::new(Vec::new()),
    });
    let workers = start_clients(&settings, &cluster, &keys, origin, &shared);

    println!("fault schedule:");
    let mut chaos = Chaos {
        cluster,
        rng: StdRng::seed_from_u64(settings.seed),
        origin,
        journal: Journal::default(),
    };
    chaos.run(Instant::now() + Duration::from_secs(settings.secs));
    chaos.heal();

    match await_progress(&chaos.cluster) {
        Ok(took) => println!("healed cluster completed a write after {took:?}"),
        Err(e) => chaos
            .journal
            .failures
            .push(format!("no progress after healing: {e}")),
    }
    shared.stop.store(true, Ordering::Relaxed);
    let mut records: Vec<Record> = workers
        .into_iter()
        .flat_map(|w| w.join().expect("client thread panicked"))
        .collect();
    records.extend(final_reads(&chaos.cluster, &keys, origin));
    match await_convergence(&chaos.cluster) {
        Ok(states) => println!("converged: {states}"),
        Err(e) => chaos.journal.failures.push(e),
    }
    chaos.reap();
    let faults_took = origin.elapsed();

    println!(
        "operations ({} in {:?}):\n{}",
        records.len(),
        faults_took,
        summarize(&records)
    );
    let faults: Vec<String> = chaos
        .journal
        .faults
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    println!("faults applied: {}", faults.join(", "));
    for w in &chaos.journal.warnings {
        println!("warning: {w}");
    }
    for a in shared.anomalies.lock().expect("lock").iter() {
        chaos
            .journal
            .failures
            .push(format!("impossible reply: {a}"));
    }
    let canary = match settings.canary {
        true => Some(plant_canary(&mut records)),
        false => None,
    };
    let mut violations = check_history(&records);
    match canary {
        None => {}
        Some(None) => chaos
            .journal
            .failures
            .push("no read to plant a canary in".to_string()),
        Some(Some((key, what))) => {
            let before = violations.len();
            violations.retain(|(k, _)| *k != key);
            if violations.len() == before {
                let line = format!("the canary ({what}) was NOT caught");
                chaos.journal.failures.push(line);
            } else {
                println!("the canary ({what}) was caught, as it should be");
            }
        }
    }
    chaos
        .journal
        .failures
        .extend(violations.into_iter().map(|(_, f)| f));
    print_crashes(&chaos.journal);

    if !chaos.journal.failures.is_empty() {
        chaos.cluster.dir().keep();
        panic!(
            "chaos run with seed {} failed:\n  {}",
            settings.seed,
            chaos.journal.failures.join("\n  ")
        );
    }
    println!(
        "chaos: seed {} passed in {:?}",
        settings.seed,
        origin.elapsed()
    );
}
