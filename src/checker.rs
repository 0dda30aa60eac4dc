//! A linearizability checker for histories of the key-value store, one register per key.
//!
//! A test records, for every client operation, when it was invoked, when it completed (if it
//! did) and what the client saw. [`check`] then asks, key by key, whether some order of the
//! operations explains every observation while respecting real time: an operation that
//! completed before another was invoked must come first (Herlihy and Wing's definition).
//!
//! **Model.** A key holds `Option<String>`. `put` sets it, `del` clears it, `cas(expected, new)`
//! sets it to `new` exactly when it holds `Some(expected)`; a cas that did not swap reports the
//! value it found, which is an observation like a `get`. An operation whose outcome is
//! *unknown* may have taken effect once, at any moment after its invocation and before its
//! bound (`complete`, or never-ending when `None`), or not at all. Operations that definitely
//! had no effect (`Observed::Fail`: a refused write, a read that timed out) are dropped, and so
//! are reads of unknown outcome, which change nothing.
//!
//! **Search.** Wing and Gong's backtracking search with Lowe's just-in-time linearization: walk
//! the invocation and completion events in time order, linearize an invoked operation as soon
//! as the register allows, and backtrack when reaching the completion of an operation that is
//! not linearized yet. A memo of (set of linearized operations, register value) prunes
//! configurations already explored; the set is kept as a 128-bit Zobrist fingerprint, so a memo
//! entry costs 16 bytes (a false match needs a 128-bit collision). Each key's search is bounded
//! in steps, memo size and wall time, and reports [`Verdict::Inconclusive`] when it runs out.
//!
//! **Before searching**, unknown writes whose written value nobody observes are removed: such a
//! write can always be taken as never having happened, so removing it changes no verdict, and
//! with unique values per write it removes most of the uncertainty a faulty run leaves behind.
//!
//! **On a violation** the checker looks for a small slice that still cannot be linearized:
//! first the history up to the furthest completion the search ever reached (later operations
//! cannot matter), then a short time window before that point in which the value at the start
//! of the window is left unconstrained, then it relaxes operations one by one (drops a read,
//! turns a completed write into one of unknown outcome) while the slice still fails. Each step
//! only removes constraints, so a slice that fails proves the whole history does.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::time::{Duration, Instant};

/// A moment in a history: nanoseconds from an origin the caller chooses.
pub type Nanos = u64;

/// What a client asked for, on one key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Call {
    /// Set the value.
    Put(String),
    /// Read the value.
    Get,
    /// Remove the value.
    Del,
    /// Set the value to `new` if it is `Some(expected)`.
    Cas {
        /// Value the key must hold.
        expected: String,
        /// Value stored when it does.
        new: String,
    },
}

/// What the client saw when the operation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    /// A put or del was applied; a cas swapped.
    Ok,
    /// A get's answer.
    Value(Option<String>),
    /// A cas did not swap and found this value.
    Mismatch(Option<String>),
    /// No answer: a write may or may not have taken effect (a read with this outcome is
    /// dropped).
    Unknown,
    /// Definitely no effect: a refused write or a read that failed. Dropped.
    Fail,
}

/// One client operation on one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// The caller's id for the operation, used in reports.
    pub id: u64,
    /// The client (process) that issued it, used in reports.
    pub process: u64,
    /// The key it touched.
    pub key: String,
    /// What was asked.
    pub call: Call,
    /// What the client saw.
    pub observed: Observed,
    /// When the client sent it.
    pub invoke: Nanos,
    /// When the client got its answer. For an unknown outcome: the latest moment at which it
    /// can have taken effect, if the caller knows one; `None` means any time after `invoke`.
    /// Never before `invoke`.
    pub complete: Option<Nanos>,
}

impl Operation {
    /// Checks that the observation fits the call and the times are ordered.
    ///
    /// # Errors
    /// A message naming the mismatch.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(complete) = self.complete {
            if complete < self.invoke {
                return Err(format!("op {} completes before it is invoked", self.id));
            }
        }
        let fits = matches!(
            (&self.call, &self.observed),
            (_, Observed::Unknown | Observed::Fail)
                | (Call::Put(_) | Call::Del, Observed::Ok)
                | (Call::Get, Observed::Value(_))
                | (Call::Cas { .. }, Observed::Ok | Observed::Mismatch(_))
        );
        if !fits {
            return Err(format!(
                "op {}: {:?} cannot observe {:?}",
                self.id, self.call, self.observed
            ));
        }
        Ok(())
    }

    /// True for operations that take part in the search (see the module docs).
    fn counts(&self) -> bool {
        match self.observed {
            Observed::Fail => false,
            Observed::Unknown => self.call != Call::Get,
            _ => true,
        }
    }

    fn is_unknown(&self) -> bool {
        self.observed == Observed::Unknown
    }
}

fn show_value(value: &Option<String>) -> String {
    match value {
        Some(v) => format!("{v:?}"),
        None => "absent".to_string(),
    }
}

fn show_time(t: Nanos) -> String {
    format!("{}.{:06}s", t / 1_000_000_000, (t % 1_000_000_000) / 1000)
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let end = self.complete.map_or("never".to_string(), show_time);
        write!(
            f,
            "[{} .. {}] client {} op {}: ",
            show_time(self.invoke),
            end,
            self.process,
            self.id
        )?;
        match &self.call {
            Call::Put(v) => write!(f, "put {:?} {v:?}", self.key)?,
            Call::Get => write!(f, "get {:?}", self.key)?,
            Call::Del => write!(f, "del {:?}", self.key)?,
            Call::Cas { expected, new } => write!(f, "cas {:?} {expected:?} {new:?}", self.key)?,
        }
        match &self.observed {
            Observed::Ok if matches!(self.call, Call::Cas { .. }) => write!(f, " -> swapped"),
            Observed::Ok => write!(f, " -> ok"),
            Observed::Value(v) => write!(f, " -> {}", show_value(v)),
            Observed::Mismatch(v) => write!(f, " -> mismatch, found {}", show_value(v)),
            Observed::Unknown => write!(f, " -> unknown"),
            Observed::Fail => write!(f, " -> fail"),
        }
    }
}

/// Bounds on the effort spent on one key.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most search steps (events visited) before the key is inconclusive.
    pub max_steps: u64,
    /// Most memoised configurations (16 bytes and some overhead each).
    pub max_configs: usize,
    /// Longest wall time for the main search.
    pub max_time: Duration,
    /// Most candidate slices the shrinker may check for one violation.
    pub shrink_checks: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_steps: 500_000_000,
            max_configs: 20_000_000,
            max_time: Duration::from_secs(300),
            shrink_checks: 400,
        }
    }
}

/// The answer for one key.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// Some order explains every observation.
    Linearizable,
    /// No order does; the slice shows why.
    Violation(Violation),
    /// The search ran out of budget; the reason says which one.
    Inconclusive(String),
}

/// One operation of a violating slice.
#[derive(Debug, Clone)]
pub struct SliceOp {
    /// The operation as recorded.
    pub op: Operation,
    /// True when the slice only needs the weaker claim that this write may have taken effect
    /// at any time after its invocation, or not at all.
    pub relaxed: bool,
}

/// A small slice of a key's history that no order explains.
#[derive(Debug, Clone)]
pub struct Violation {
    /// When set, the slice starts at this time and leaves the key's value at that moment
    /// unconstrained; otherwise it starts from the beginning, with the key absent.
    pub window_start: Option<Nanos>,
    /// The operations of the slice, by invocation time.
    pub ops: Vec<SliceOp>,
    /// An operation whose completion no order of the slice can get past.
    pub stuck: Operation,
    /// Operations in the key's full history (after dropping those that do not count).
    pub history_len: usize,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.window_start {
            Some(t) => writeln!(
                f,
                "{} operations from {} on (value at that moment unconstrained) cannot be \
                 linearized:",
                self.ops.len(),
                show_time(t)
            )?,
            None => writeln!(
                f,
                "{} operations from the start (key absent) cannot be linearized:",
                self.ops.len()
            )?,
        }
        for slice_op in &self.ops {
            let note = if slice_op.relaxed {
                "   (relaxed: may have taken effect any time after invocation, or never)"
            } else {
                ""
            };
            writeln!(f, "  {}{note}", slice_op.op)?;
        }
        write!(f, "  no order gets past the completion of: {}", self.stuck)
    }
}

/// What checking one key found and cost.
#[derive(Debug, Clone)]
pub struct KeyReport {
    /// The key.
    pub key: String,
    /// Operations searched.
    pub ops: usize,
    /// Operations dropped because they had no effect (failed, or reads of unknown outcome).
    pub dropped: usize,
    /// Unknown writes removed because nobody observed what they wrote.
    pub pruned: usize,
    /// Search steps taken by the main search.
    pub steps: u64,
    /// Configurations memoised by the main search.
    pub configs: usize,
    /// Wall time, shrinking included.
    pub elapsed: Duration,
    /// The answer.
    pub verdict: Verdict,
}

/// The answer for a whole history.
#[derive(Debug, Clone)]
pub struct Report {
    /// One entry per key, in key order.
    pub keys: Vec<KeyReport>,
}

impl Report {
    /// True when every key is linearizable.
    pub fn is_linearizable(&self) -> bool {
        self.keys
            .iter()
            .all(|k| matches!(k.verdict, Verdict::Linearizable))
    }

    /// The keys with a violation.
    pub fn violations(&self) -> impl Iterator<Item = (&str, &Violation)> {
        self.keys.iter().filter_map(|k| match &k.verdict {
            Verdict::Violation(v) => Some((k.key.as_str(), v)),
            _ => None,
        })
    }

    /// The keys the search gave up on, with the reason.
    pub fn inconclusive(&self) -> impl Iterator<Item = (&str, &str)> {
        self.keys.iter().filter_map(|k| match &k.verdict {
            Verdict::Inconclusive(why) => Some((k.key.as_str(), why.as_str())),
            _ => None,
        })
    }
}

impl fmt::Display for KeyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = match &self.verdict {
            Verdict::Linearizable => "linearizable".to_string(),
            Verdict::Violation(_) => "NOT LINEARIZABLE".to_string(),
            Verdict::Inconclusive(why) => format!("inconclusive ({why})"),
        };
        write!(
            f,
            "key {:?}: {verdict}; {} ops searched ({} dropped, {} unobserved unknown writes \
             pruned), {} steps, {} configurations, {:?}",
            self.key, self.ops, self.dropped, self.pruned, self.steps, self.configs, self.elapsed
        )
    }
}

/// Checks every key of `history` separately (keys are independent registers), several keys at
/// once on the machine's cores.
///
/// # Panics
/// If an operation fails [`Operation::validate`].
pub fn check(history: &[Operation], limits: &Limits) -> Report {
    let mut by_key: BTreeMap<&str, Vec<&Operation>> = BTreeMap::new();
    for op in history {
        by_key.entry(&op.key).or_default().push(op);
    }
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let groups: Vec<(&str, Vec<&Operation>)> = by_key.into_iter().collect();
    let mut keys = Vec::with_capacity(groups.len());
    for batch in groups.chunks(workers.max(1)) {
        std::thread::scope(|scope| {
            let handles: Vec<_> = batch
                .iter()
                .map(|(key, ops)| scope.spawn(move || check_ops(key, ops, limits)))
                .collect();
            for handle in handles {
                keys.push(handle.join().expect("checker thread panicked"));
            }
        });
    }
    Report { keys }
}

/// Checks the history of one key (every operation must be on `key`).
///
/// # Panics
/// If an operation fails [`Operation::validate`] or is on another key.
pub fn check_key(key: &str, ops: &[Operation], limits: &Limits) -> KeyReport {
    let ops: Vec<&Operation> = ops.iter().collect();
    check_ops(key, &ops, limits)
}

/// [`check_key`] on borrowed operations, so that big histories are not copied.
fn check_ops(key: &str, ops: &[&Operation], limits: &Limits) -> KeyReport {
    let started = Instant::now();
    for op in ops {
        assert_eq!(op.key, key, "op {} is on another key", op.id);
        if let Err(e) = op.validate() {
            panic!("invalid history: {e}");
        }
    }
    let counted: Vec<&Operation> = ops.iter().copied().filter(|op| op.counts()).collect();
    let dropped = ops.len() - counted.len();
    let kept = prune_unobserved(&counted);
    let pruned = counted.len() - kept.len();

    let problem = Problem::new(&kept, ABSENT);
    let searched = problem.search(limits);
    let verdict = match searched.outcome {
        Outcome::Linearizable => Verdict::Linearizable,
        Outcome::GaveUp(why) => Verdict::Inconclusive(why),
        Outcome::Stuck { time, op } => {
            let stuck = (*kept[op]).clone();
            Verdict::Violation(shrink(&kept, time, stuck, limits))
        }
    };
    KeyReport {
        key: key.to_string(),
        ops: kept.len(),
        dropped,
        pruned,
        steps: searched.steps,
        configs: searched.configs,
        elapsed: started.elapsed(),
        verdict,
    }
}

// ----- removing unobserved unknown writes -----

/// The values an operation observes: what a read returned, what a cas found or expected.
fn observations(op: &Operation) -> Vec<Option<&str>> {
    match (&op.call, &op.observed) {
        (Call::Get, Observed::Value(v)) => vec![v.as_deref()],
        (Call::Cas { expected, .. }, Observed::Ok | Observed::Unknown) => {
            vec![Some(expected.as_str())]
        }
        (Call::Cas { .. }, Observed::Mismatch(v)) => vec![v.as_deref()],
        _ => Vec::new(),
    }
}

/// The value an unknown write would leave, if `op` is one.
fn unknown_write(op: &Operation) -> Option<Option<&str>> {
    if !op.is_unknown() {
        return None;
    }
    match &op.call {
        Call::Put(v) => Some(Some(v)),
        Call::Del => Some(None),
        Call::Cas { new, .. } => Some(Some(new)),
        Call::Get => None,
    }
}

/// Which of `ops` are unknown writes whose value no other operation observes, directly or
/// through other such writes.
///
/// Removing them is sound in both directions: if an order uses such a write W, the value W
/// leaves is never read before the next write that changes it, so the only operations in
/// between are unknown cas operations that did not swap; taking W and those as never having
/// happened leaves every other operation seeing what it saw. Removing an unknown cas can leave
/// its expected value unobserved in turn, hence the work list.
fn unobserved(ops: &[&Operation]) -> Vec<bool> {
    let mut observers: HashMap<Option<&str>, usize> = HashMap::new();
    let mut writers: HashMap<Option<&str>, Vec<usize>> = HashMap::new();
    for (i, op) in ops.iter().enumerate() {
        for value in observations(op) {
            *observers.entry(value).or_default() += 1;
        }
        if let Some(value) = unknown_write(op) {
            writers.entry(value).or_default().push(i);
        }
    }
    let mut removed = vec![false; ops.len()];
    let mut work: Vec<Option<&str>> = writers
        .keys()
        .filter(|v| observers.get(*v).copied().unwrap_or(0) == 0)
        .copied()
        .collect();
    while let Some(value) = work.pop() {
        for i in writers.remove(&value).unwrap_or_default() {
            removed[i] = true;
            for seen in observations(ops[i]) {
                let count = observers.get_mut(&seen).expect("counted above");
                *count -= 1;
                if *count == 0 && writers.contains_key(&seen) {
                    work.push(seen);
                }
            }
        }
    }
    removed
}

/// `ops` without the unknown writes nobody observes (see [`unobserved`]).
fn prune_unobserved<'a>(ops: &[&'a Operation]) -> Vec<&'a Operation> {
    let removed = unobserved(ops);
    ops.iter()
        .zip(removed)
        .filter(|(_, gone)| !gone)
        .map(|(&op, _)| op)
        .collect()
}

// ----- shrinking a violation -----

/// A candidate slice of a violating history.
#[derive(Clone)]
struct Slice {
    ops: Vec<SliceOp>,
    window_start: Option<Nanos>,
}

impl SliceOp {
    fn original(op: &Operation) -> SliceOp {
        SliceOp {
            op: op.clone(),
            relaxed: false,
        }
    }

    /// The operation as the search sees it: a relaxed write has an unknown, unbounded outcome.
    fn for_search(&self) -> Operation {
        let mut op = self.op.clone();
        if self.relaxed {
            op.observed = Observed::Unknown;
            op.complete = None;
        }
        op
    }

    /// True when it certainly took effect (if at all) before `t`.
    fn ends_before(&self, t: Nanos) -> bool {
        !self.relaxed && self.op.complete.is_some_and(|c| c < t)
    }

    /// The weaker claim about this operation: None for a read (which then says nothing), the
    /// write with an unknown outcome otherwise. None also when it is as weak as it gets.
    fn relax(&self) -> Option<Option<SliceOp>> {
        if self.op.call == Call::Get {
            return Some(None);
        }
        if self.relaxed || (self.op.is_unknown() && self.op.complete.is_none()) {
            return None;
        }
        Some(Some(SliceOp {
            op: self.op.clone(),
            relaxed: true,
        }))
    }
}

impl Slice {
    /// Searches the slice; returns the operation it gets stuck on, if it fails.
    fn fails(&self, limits: &Limits) -> Option<Operation> {
        let ops: Vec<Operation> = self.ops.iter().map(SliceOp::for_search).collect();
        let initial = if self.window_start.is_some() {
            ANY
        } else {
            ABSENT
        };
        let ops: Vec<&Operation> = ops.iter().collect();
        match Problem::new(&ops, initial).search(limits).outcome {
            Outcome::Stuck { op, .. } => Some(self.ops[op].op.clone()),
            _ => None,
        }
    }

    /// Drops the unknown writes nobody observes.
    fn pruned(mut self) -> Slice {
        let ops: Vec<Operation> = self.ops.iter().map(SliceOp::for_search).collect();
        let removed = unobserved(&ops.iter().collect::<Vec<_>>());
        let mut gone = removed.into_iter();
        self.ops.retain(|_| !gone.next().expect("one flag per op"));
        self
    }

    /// The part of the slice from `start` on, with the value at `start` unconstrained:
    /// operations over by then are dropped, those under way are relaxed. A relaxation: an
    /// order of the whole slice, with every relaxed operation that it placed before the last
    /// dropped one taken as never having happened, is an order of the window.
    fn window(&self, start: Nanos) -> Slice {
        let mut ops = Vec::new();
        for slice_op in &self.ops {
            if slice_op.op.invoke >= start {
                ops.push(slice_op.clone());
            } else if !slice_op.ends_before(start) {
                match slice_op.relax() {
                    Some(Some(relaxed)) => ops.push(relaxed),
                    Some(None) => {}
                    None => ops.push(slice_op.clone()),
                }
            }
        }
        Slice {
            ops,
            window_start: Some(start),
        }
        .pruned()
    }

    /// The slice with operation `i` relaxed, if it can be.
    fn relaxed_at(&self, i: usize) -> Option<Slice> {
        let replacement = self.ops[i].relax()?;
        let mut candidate = self.clone();
        match replacement {
            Some(op) => candidate.ops[i] = op,
            None => {
                candidate.ops.remove(i);
            }
        }
        Some(candidate.pruned())
    }
}

/// Finds a small slice of the failing `history` that still fails (see the module docs).
/// `stuck_time` and `stuck` are where the full search got furthest.
fn shrink(
    history: &[&Operation],
    stuck_time: Nanos,
    stuck: Operation,
    limits: &Limits,
) -> Violation {
    let started = Instant::now();
    let mut checks = 0;
    let budget_left =
        |checks: usize| checks < limits.shrink_checks && started.elapsed() < limits.max_time;

    // Operations invoked after the furthest completion any branch reached played no part.
    let cut: Vec<SliceOp> = history
        .iter()
        .filter(|op| op.invoke <= stuck_time)
        .map(|op| SliceOp::original(op))
        .collect();
    let first = cut.iter().map(|s| s.op.invoke).min().unwrap_or(0);
    let mut best = Slice {
        ops: cut,
        window_start: None,
    };
    let mut best_stuck = stuck;

    // The shortest window before that point that fails on its own, doubling from 1 ns.
    let mut width: Nanos = 1;
    while budget_left(checks) && stuck_time.saturating_sub(width) > first {
        let candidate = best.window(stuck_time - width);
        checks += 1;
        if let Some(op) = candidate.fails(limits) {
            best = candidate;
            best_stuck = op;
            break;
        }
        width = width.saturating_mul(2);
    }

    // Then weaken one operation at a time while the slice still fails.
    let mut i = 0;
    while i < best.ops.len() && budget_left(checks) {
        let Some(candidate) = best.relaxed_at(i) else {
            i += 1;
            continue;
        };
        checks += 1;
        match candidate.fails(limits) {
            Some(op) => {
                best = candidate;
                best_stuck = op;
            }
            None => i += 1,
        }
    }
    best.ops
        .sort_by_key(|s| (s.op.invoke, s.op.process, s.op.id));
    Violation {
        window_start: best.window_start,
        ops: best.ops,
        stuck: best_stuck,
        history_len: history.len(),
    }
}

// ----- the search -----

/// Register value id of an absent key.
const ABSENT: u32 = 0;
/// Register value "unconstrained", used only at the start of a shrinker's window: it matches
/// any observation once.
const ANY: u32 = u32::MAX;
/// End of the event list.
const NIL: usize = usize::MAX;

/// An operation with its values interned: what it may do to the register.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// A put (of a value id) or a del (of ABSENT).
    Write { value: u32, unknown: bool },
    /// A get that saw `seen`.
    Read { seen: u32 },
    /// A cas that swapped.
    CasSwapped { expected: u32, new: u32 },
    /// A cas that found `seen` instead.
    CasMismatch { expected: u32, seen: u32 },
    /// A cas of unknown outcome.
    CasUnknown { expected: u32, new: u32 },
}

/// The register values an operation may leave when linearized in `state`: none when it cannot
/// be linearized there, two when its outcome is unknown (took effect, or never did).
fn successors(state: u32, step: Step) -> ([u32; 2], usize) {
    let one = |a| ([a, a], 1);
    let two = |a, b| if a == b { ([a, a], 1) } else { ([a, b], 2) };
    let none = ([0, 0], 0);
    let matches = |v| state == v || state == ANY;
    match step {
        Step::Write {
            value,
            unknown: false,
        } => one(value),
        Step::Write {
            value,
            unknown: true,
        } => two(value, state),
        Step::Read { seen } if matches(seen) => one(seen),
        Step::CasSwapped { expected, new } if matches(expected) => one(new),
        Step::CasMismatch { expected, seen } if seen != expected && matches(seen) => one(seen),
        Step::CasUnknown { expected, new } if matches(expected) => two(new, state),
        Step::CasUnknown { .. } => one(state),
        Step::Read { .. } | Step::CasSwapped { .. } | Step::CasMismatch { .. } => none,
    }
}

/// An invocation or completion, at a time.
#[derive(Debug, Clone, Copy)]
struct Event {
    time: Nanos,
    op: usize,
    is_call: bool,
}

/// A key's history ready for searching.
struct Problem {
    steps: Vec<Step>,
    /// Events in time order, invocations before completions at equal times (so operations
    /// that touch in time count as concurrent).
    events: Vec<Event>,
    /// Node in the event list (position in `events` plus one) of each operation's invocation
    /// and completion.
    call_at: Vec<usize>,
    ret_at: Vec<usize>,
    /// Register value before the first operation.
    initial: u32,
}

/// Why a search stopped.
enum Outcome {
    Linearizable,
    /// No order gets past the completion of `op` at `time`, the furthest completion any branch
    /// reached.
    Stuck {
        time: Nanos,
        op: usize,
    },
    GaveUp(String),
}

struct Searched {
    outcome: Outcome,
    steps: u64,
    configs: usize,
}

/// A linearized operation on the search stack.
struct Frame {
    op: usize,
    prev_state: u32,
    successors: ([u32; 2], usize),
    /// Which successor was taken.
    choice: usize,
}

/// Memo keys are already uniformly random, so they hash to their low bits.
#[derive(Default)]
struct Fingerprint(u64);

impl Hasher for Fingerprint {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u128(&mut self, n: u128) {
        self.0 = n as u64;
    }
}

type Memo = HashSet<u128, BuildHasherDefault<Fingerprint>>;

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Zobrist code of "operation `op` is linearized".
fn op_code(op: usize) -> u128 {
    let op = op as u64;
    (u128::from(splitmix(op.wrapping_mul(2))) << 64) | u128::from(splitmix(op * 2 + 1))
}

/// Zobrist code of "the register holds `state`".
fn state_code(state: u32) -> u128 {
    let s = u64::from(state) ^ 0x5eed_0000_0000_0000;
    (u128::from(splitmix(s.rotate_left(17))) << 64) | u128::from(splitmix(!s))
}

/// Interns register values: 0 is absent, then 1, 2, ... in order of appearance.
struct Values<'a>(HashMap<&'a str, u32>);

impl<'a> Values<'a> {
    fn id(&mut self, value: Option<&'a str>) -> u32 {
        let Some(value) = value else { return ABSENT };
        let next = self.0.len() as u32 + 1;
        assert!(next < ANY, "too many distinct values");
        *self.0.entry(value).or_insert(next)
    }
}

fn to_step<'a>(op: &'a Operation, values: &mut Values<'a>) -> Step {
    let unknown = op.is_unknown();
    match (&op.call, &op.observed) {
        (Call::Put(v), _) => Step::Write {
            value: values.id(Some(v)),
            unknown,
        },
        (Call::Del, _) => Step::Write {
            value: ABSENT,
            unknown,
        },
        (Call::Get, Observed::Value(v)) => Step::Read {
            seen: values.id(v.as_deref()),
        },
        (Call::Cas { expected, new }, observed) => {
            let expected = values.id(Some(expected));
            match observed {
                Observed::Ok => Step::CasSwapped {
                    expected,
                    new: values.id(Some(new)),
                },
                Observed::Mismatch(v) => Step::CasMismatch {
                    expected,
                    seen: values.id(v.as_deref()),
                },
                _ => Step::CasUnknown {
                    expected,
                    new: values.id(Some(new)),
                },
            }
        }
        (Call::Get, other) => panic!("op {}: a get that saw {other:?} takes no part", op.id),
    }
}

impl Problem {
    /// Prepares `ops` (all counting, on one key) for a search starting from `initial`.
    fn new(ops: &[&Operation], initial: u32) -> Problem {
        let mut values = Values(HashMap::new());
        let steps = ops.iter().map(|op| to_step(op, &mut values)).collect();
        let mut events = Vec::with_capacity(ops.len() * 2);
        for (i, op) in ops.iter().enumerate() {
            events.push(Event {
                time: op.invoke,
                op: i,
                is_call: true,
            });
            events.push(Event {
                time: op.complete.unwrap_or(Nanos::MAX),
                op: i,
                is_call: false,
            });
        }
        events.sort_by_key(|e| (e.time, !e.is_call, e.op));
        let mut call_at = vec![0; ops.len()];
        let mut ret_at = vec![0; ops.len()];
        for (pos, e) in events.iter().enumerate() {
            if e.is_call {
                call_at[e.op] = pos + 1;
            } else {
                ret_at[e.op] = pos + 1;
            }
        }
        Problem {
            steps,
            events,
            call_at,
            ret_at,
            initial,
        }
    }

    /// Runs the just-in-time search (see the module docs).
    fn search(&self, limits: &Limits) -> Searched {
        let mut walk = Walk {
            problem: self,
            list: EventList::new(self.events.len()),
            memo: Memo::default(),
            stack: Vec::new(),
            state: self.initial,
            linearized: 0,
        };
        let mut furthest: Option<usize> = None;
        let mut steps = 0u64;
        let started = Instant::now();
        let mut cur = walk.list.first();

        while cur != NIL {
            steps += 1;
            if let Some(why) = self.over_budget(limits, steps, walk.memo.len(), started) {
                return walk.finish(Outcome::GaveUp(why), steps);
            }
            let event = self.events[cur - 1];
            if event.is_call {
                let succ = successors(walk.state, self.steps[event.op]);
                cur = if walk.linearize(event.op, succ, 0) {
                    walk.list.first()
                } else {
                    walk.list.next[cur]
                };
                continue;
            }
            // The completion of an operation not yet linearized: this branch is dead.
            furthest = furthest.max(Some(cur));
            match walk.backtrack() {
                Some(next) => cur = next,
                None => {
                    let last = self.events[furthest.expect("set above") - 1];
                    let outcome = Outcome::Stuck {
                        time: last.time,
                        op: last.op,
                    };
                    return walk.finish(outcome, steps);
                }
            }
        }
        walk.finish(Outcome::Linearizable, steps)
    }

    fn over_budget(
        &self,
        limits: &Limits,
        steps: u64,
        configs: usize,
        started: Instant,
    ) -> Option<String> {
        if steps > limits.max_steps {
            return Some(format!("more than {} search steps", limits.max_steps));
        }
        if configs > limits.max_configs {
            return Some(format!("more than {} configurations", limits.max_configs));
        }
        if steps % 4096 == 0 && started.elapsed() > limits.max_time {
            return Some(format!("search took longer than {:?}", limits.max_time));
        }
        None
    }
}

/// The mutable state of one search.
struct Walk<'p> {
    problem: &'p Problem,
    list: EventList,
    memo: Memo,
    stack: Vec<Frame>,
    /// Register value after the linearized operations.
    state: u32,
    /// Zobrist fingerprint of the set of linearized operations.
    linearized: u128,
}

impl Walk<'_> {
    fn finish(self, outcome: Outcome, steps: u64) -> Searched {
        Searched {
            outcome,
            steps,
            configs: self.memo.len(),
        }
    }

    /// Linearizes `op` with the first of its successors from `from` on whose configuration
    /// (linearized set with `op`, register value) is new, memoising it. False if none is.
    fn linearize(&mut self, op: usize, successors: ([u32; 2], usize), from: usize) -> bool {
        let (values, count) = successors;
        let with_op = self.linearized ^ op_code(op);
        let Some(choice) =
            (from..count).find(|&i| self.memo.insert(with_op ^ state_code(values[i])))
        else {
            return false;
        };
        self.stack.push(Frame {
            op,
            prev_state: self.state,
            successors,
            choice,
        });
        self.linearized = with_op;
        self.state = values[choice];
        self.list.remove(self.problem.call_at[op]);
        self.list.remove(self.problem.ret_at[op]);
        true
    }

    /// Undoes the last linearization and tries that operation's next successor; returns the
    /// node to continue from, or None when there is nothing left to undo.
    fn backtrack(&mut self) -> Option<usize> {
        let frame = self.stack.pop()?;
        // Restored in reverse order of removal, as dancing links need.
        self.list.restore(self.problem.ret_at[frame.op]);
        self.list.restore(self.problem.call_at[frame.op]);
        self.linearized ^= op_code(frame.op);
        self.state = frame.prev_state;
        if self.linearize(frame.op, frame.successors, frame.choice + 1) {
            return Some(self.list.first());
        }
        Some(self.list.next[self.problem.call_at[frame.op]])
    }
}

/// The events not yet lifted, as a doubly linked list (dancing links: a removed node keeps
/// its pointers, so removals undone in reverse order restore the list). Node 0 is the head;
/// node `p + 1` holds the event at position `p`.
struct EventList {
    next: Vec<usize>,
    prev: Vec<usize>,
}

impl EventList {
    fn new(events: usize) -> EventList {
        let next = (0..=events)
            .map(|n| if n < events { n + 1 } else { NIL })
            .collect();
        let prev = (0..=events).map(|n| n.wrapping_sub(1)).collect();
        EventList { next, prev }
    }

    /// The first node after the head, or NIL when every event is lifted.
    fn first(&self) -> usize {
        self.next[0]
    }

    fn remove(&mut self, node: usize) {
        let (p, n) = (self.prev[node], self.next[node]);
        self.next[p] = n;
        if n != NIL {
            self.prev[n] = p;
        }
    }

    fn restore(&mut self, node: usize) {
        let (p, n) = (self.prev[node], self.next[node]);
        self.next[p] = node;
        if n != NIL {
            self.prev[n] = node;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // ----- building histories -----

    fn put(v: &str) -> Call {
        Call::Put(v.to_string())
    }

    fn cas(expected: &str, new: &str) -> Call {
        Call::Cas {
            expected: expected.to_string(),
            new: new.to_string(),
        }
    }

    fn seen(v: &str) -> Observed {
        Observed::Value(Some(v.to_string()))
    }

    fn absent() -> Observed {
        Observed::Value(None)
    }

    fn mismatch(v: Option<&str>) -> Observed {
        Observed::Mismatch(v.map(str::to_string))
    }

    /// A history on key "k", one process per operation unless set.
    #[derive(Default)]
    struct History(Vec<Operation>);

    impl History {
        /// Adds an operation that completed at `end`.
        fn op(self, call: Call, observed: Observed, start: u64, end: u64) -> History {
            self.add(call, observed, start, Some(end))
        }

        /// Adds an operation of unknown outcome with no bound.
        fn unknown(self, call: Call, start: u64) -> History {
            self.add(call, Observed::Unknown, start, None)
        }

        fn add(mut self, call: Call, observed: Observed, start: u64, end: Option<u64>) -> History {
            let id = self.0.len() as u64;
            self.0.push(Operation {
                id,
                process: id,
                key: "k".to_string(),
                call,
                observed,
                invoke: start,
                complete: end,
            });
            self
        }

        fn check(&self) -> KeyReport {
            let report = check_key("k", &self.0, &Limits::default());
            assert_eq!(
                brute_force(&self.0),
                matches!(report.verdict, Verdict::Linearizable),
                "search and brute force disagree on {:#?}: {report}",
                self.0
            );
            report
        }

        fn assert_linearizable(&self) {
            let report = self.check();
            assert!(
                matches!(report.verdict, Verdict::Linearizable),
                "{report}: {:?}",
                report.verdict
            );
        }

        fn assert_violation(&self) -> Violation {
            match self.check().verdict {
                Verdict::Violation(v) => v,
                other => panic!("expected a violation, got {other:?}"),
            }
        }
    }

    // ----- an independent oracle for small histories -----

    /// Register values `op` may leave from `state`, straight from the model (an unknown
    /// operation's "never happened" is handled by the caller).
    fn apply(state: &Option<String>, op: &Operation) -> Vec<Option<String>> {
        let holds = |v: &String| state.as_ref() == Some(v);
        match (&op.call, &op.observed) {
            (Call::Put(v), _) => vec![Some(v.clone())],
            (Call::Del, _) => vec![None],
            (Call::Get, Observed::Value(v)) if v == state => vec![state.clone()],
            (Call::Cas { expected, new }, Observed::Ok) if holds(expected) => {
                vec![Some(new.clone())]
            }
            (Call::Cas { expected, .. }, Observed::Mismatch(v))
                if !holds(expected) && v == state =>
            {
                vec![state.clone()]
            }
            (Call::Cas { expected, new }, Observed::Unknown) if holds(expected) => {
                vec![Some(new.clone())]
            }
            (Call::Cas { .. }, Observed::Unknown) => vec![state.clone()],
            _ => Vec::new(),
        }
    }

    /// Tries every order (and every choice of which unknown writes happened), from an absent
    /// key.
    fn brute_force(history: &[Operation]) -> bool {
        brute_force_from(history, &[None])
    }

    /// Like `brute_force`, from any of `initial`.
    fn brute_force_from(history: &[Operation], initial: &[Option<String>]) -> bool {
        fn go(ops: &[Operation], remaining: u32, state: Option<String>) -> bool {
            if remaining == 0 {
                return true;
            }
            let live = |i: usize| remaining & (1 << i) != 0;
            (0..ops.len()).filter(|&i| live(i)).any(|i| {
                let op = &ops[i];
                let rest = remaining & !(1 << i);
                if op.is_unknown() && go(ops, rest, state.clone()) {
                    return true;
                }
                let blocked = (0..ops.len())
                    .filter(|&j| j != i && live(j))
                    .any(|j| ops[j].complete.is_some_and(|c| c < op.invoke));
                !blocked && apply(&state, op).into_iter().any(|s| go(ops, rest, s))
            })
        }
        let ops: Vec<Operation> = history.iter().filter(|op| op.counts()).cloned().collect();
        assert!(ops.len() <= 12, "brute force is for small histories");
        let all = (1u32 << ops.len()) - 1;
        initial.iter().any(|start| go(&ops, all, start.clone()))
    }

    /// Every value a window's unconstrained start could usefully hold: those the slice
    /// mentions, absent, and one it does not mention.
    fn any_start(ops: &[Operation]) -> Vec<Option<String>> {
        let mut values = vec![None, Some("unmentioned".to_string())];
        for op in ops {
            let mentioned = match (&op.call, &op.observed) {
                (Call::Put(v), _) => vec![v.clone()],
                (Call::Cas { expected, new }, _) => vec![expected.clone(), new.clone()],
                (_, Observed::Value(Some(v)) | Observed::Mismatch(Some(v))) => vec![v.clone()],
                _ => Vec::new(),
            };
            values.extend(mentioned.into_iter().map(Some));
        }
        values
    }

    // ----- a tiny deterministic generator -----

    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self.0.wrapping_add(1);
            splitmix(self.0) % n
        }

        fn chance(&mut self, percent: u64) -> bool {
            self.below(100) < percent
        }

        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[self.below(items.len() as u64) as usize]
        }
    }

    /// A random small history with results drawn at random (mostly not linearizable).
    fn random_history(rng: &mut Rng) -> Vec<Operation> {
        let values = ["a", "b", "c"];
        let n = 1 + rng.below(7);
        let mut history = History::default();
        for _ in 0..n {
            let start = rng.below(20);
            let end = start + rng.below(10);
            let (call, observed) = match rng.below(4) {
                0 => (put(rng.pick(&values)), Observed::Ok),
                1 => (Call::Del, Observed::Ok),
                2 => {
                    let v = rng.pick(&values);
                    let observed = if rng.chance(25) { absent() } else { seen(v) };
                    (Call::Get, observed)
                }
                _ => {
                    let call = cas(rng.pick(&values), rng.pick(&values));
                    let found = rng.pick(&values);
                    let observed = match rng.below(3) {
                        0 => Observed::Ok,
                        1 => mismatch(Some(found)),
                        _ => mismatch(None),
                    };
                    (call, observed)
                }
            };
            history = match rng.below(10) {
                0 => history.add(call, Observed::Unknown, start, None),
                1 => history.add(call, Observed::Unknown, start, Some(end)),
                2 => history.add(call, Observed::Fail, start, Some(end)),
                _ => history.add(call, observed, start, Some(end)),
            };
        }
        history.0
    }

    /// A history of `processes` clients running `per_process` operations each against a real
    /// register, so it is linearizable by construction. Writes store unique values; about
    /// `unknown_percent` of the writes time out, and half of those take effect anyway, possibly
    /// after the client gave up: within `late_bound` of that (which the history then states as
    /// their bound), or up to 500 later with no stated bound.
    fn simulated_history(
        rng: &mut Rng,
        processes: u64,
        per_process: u64,
        unknown_percent: u64,
        late_bound: Option<u64>,
    ) -> Vec<Operation> {
        // (linearization point, op index, whether it takes effect, whether the client knows)
        let mut ops = Vec::new();
        let mut points = Vec::new();
        for p in 0..processes {
            let mut t = rng.below(50);
            for n in 0..per_process {
                let start = t;
                let end = start + 1 + rng.below(40);
                let mut point = start + rng.below(end - start + 1);
                let call = match rng.below(8) {
                    0..=2 => Call::Get,
                    3 | 4 => put(&format!("p{p}-{n}")),
                    5 => Call::Del,
                    _ => cas(
                        &format!("p{}-{}", rng.below(processes), rng.below(n + 1)),
                        &format!("p{p}-{n}"),
                    ),
                };
                let unknown = call != Call::Get && rng.chance(unknown_percent);
                let takes_effect = !unknown || rng.chance(50);
                if unknown && rng.chance(50) {
                    point = end + rng.below(late_bound.unwrap_or(500));
                }
                let complete = match (unknown, late_bound) {
                    (false, _) => Some(end),
                    (true, bound) => bound.map(|b| end + b),
                };
                points.push((point, ops.len(), takes_effect, !unknown));
                ops.push(Operation {
                    id: ops.len() as u64,
                    process: p,
                    key: "k".to_string(),
                    call,
                    observed: Observed::Unknown,
                    invoke: start,
                    complete,
                });
                t = end + rng.below(10);
            }
        }
        points.sort();
        let mut state: Option<String> = None;
        for (_, i, takes_effect, known) in points {
            let op = &mut ops[i];
            let (observed, next) = match &op.call {
                Call::Put(v) => (Observed::Ok, Some(v.clone())),
                Call::Del => (Observed::Ok, None),
                Call::Get => (Observed::Value(state.clone()), state.clone()),
                Call::Cas { expected, new } if state.as_ref() == Some(expected) => {
                    (Observed::Ok, Some(new.clone()))
                }
                Call::Cas { .. } => (Observed::Mismatch(state.clone()), state.clone()),
            };
            if takes_effect {
                state = next;
            }
            if known {
                op.observed = observed;
            }
        }
        ops
    }

    // ----- basic histories -----

    #[test]
    fn empty_and_sequential_histories_are_linearizable() {
        History::default().assert_linearizable();
        History::default()
            .op(Call::Get, absent(), 0, 10)
            .op(put("a"), Observed::Ok, 20, 30)
            .op(Call::Get, seen("a"), 40, 50)
            .op(Call::Del, Observed::Ok, 60, 70)
            .op(Call::Get, absent(), 80, 90)
            .assert_linearizable();
    }

    #[test]
    fn stale_read_after_acknowledged_write_is_caught() {
        let violation = History::default()
            .op(put("a"), Observed::Ok, 0, 10)
            .op(put("b"), Observed::Ok, 20, 30)
            .op(Call::Get, seen("a"), 40, 50)
            .assert_violation();
        assert_eq!(violation.stuck.id, 2, "{violation}");
        assert!(violation.ops.iter().any(|s| s.op.id == 1), "{violation}");
    }

    #[test]
    fn lost_acknowledged_write_is_caught() {
        History::default()
            .op(put("a"), Observed::Ok, 0, 10)
            .op(Call::Get, absent(), 20, 30)
            .assert_violation();
        History::default()
            .op(Call::Get, seen("z"), 0, 10)
            .assert_violation();
    }

    #[test]
    fn concurrent_read_may_see_old_or_new_value() {
        for observed in [seen("a"), seen("b")] {
            History::default()
                .op(put("a"), Observed::Ok, 0, 10)
                .op(put("b"), Observed::Ok, 20, 40)
                .op(Call::Get, observed, 25, 35)
                .assert_linearizable();
        }
    }

    #[test]
    fn reads_during_a_slow_write_cannot_go_back() {
        History::default()
            .op(put("a"), Observed::Ok, 0, 100)
            .op(Call::Get, absent(), 10, 20)
            .op(Call::Get, seen("a"), 30, 40)
            .assert_linearizable();
        History::default()
            .op(put("a"), Observed::Ok, 0, 100)
            .op(Call::Get, seen("a"), 10, 20)
            .op(Call::Get, absent(), 30, 40)
            .assert_violation();
    }

    #[test]
    fn operations_touching_in_time_count_as_concurrent() {
        History::default()
            .op(put("a"), Observed::Ok, 0, 10)
            .op(Call::Get, absent(), 10, 20)
            .assert_linearizable();
    }

    #[test]
    fn deleted_value_does_not_come_back() {
        History::default()
            .op(put("a"), Observed::Ok, 0, 10)
            .op(Call::Del, Observed::Ok, 20, 30)
            .op(Call::Get, seen("a"), 40, 50)
            .assert_violation();
    }

    // ----- unknown outcomes -----

    #[test]
    fn unknown_write_may_apply_late_or_never() {
        History::default()
            .unknown(put("a"), 0)
            .op(Call::Get, absent(), 10, 20)
            .op(Call::Get, seen("a"), 100, 110)
            .assert_linearizable();
        History::default()
            .unknown(put("a"), 0)
            .op(Call::Get, absent(), 100, 110)
            .assert_linearizable();
    }

    #[test]
    fn unknown_write_cannot_apply_before_its_invocation() {
        History::default()
            .op(Call::Get, seen("a"), 0, 10)
            .unknown(put("a"), 20)
            .assert_violation();
    }

    #[test]
    fn late_unknown_write_takes_effect_once() {
        History::default()
            .unknown(put("a"), 0)
            .op(put("b"), Observed::Ok, 10, 20)
            .op(Call::Get, seen("a"), 30, 40)
            .assert_linearizable();
        History::default()
            .unknown(put("a"), 0)
            .op(put("b"), Observed::Ok, 10, 20)
            .op(Call::Get, seen("a"), 30, 40)
            .op(Call::Get, seen("b"), 50, 60)
            .assert_violation();
    }

    #[test]
    fn bounded_unknown_write_takes_effect_by_its_bound_or_never() {
        History::default()
            .add(put("a"), Observed::Unknown, 0, Some(30))
            .op(Call::Get, absent(), 40, 50)
            .op(Call::Get, seen("a"), 60, 70)
            .assert_violation();
        History::default()
            .add(put("a"), Observed::Unknown, 0, Some(30))
            .op(Call::Get, seen("a"), 60, 70)
            .assert_linearizable();
    }

    #[test]
    fn failed_operations_had_no_effect() {
        History::default()
            .op(put("a"), Observed::Fail, 0, 10)
            .op(Call::Get, Observed::Fail, 20, 30)
            .op(Call::Get, Observed::Unknown, 20, 30)
            .op(Call::Get, absent(), 40, 50)
            .assert_linearizable();
        History::default()
            .op(put("a"), Observed::Fail, 0, 10)
            .op(Call::Get, seen("a"), 40, 50)
            .assert_violation();
    }

    // ----- cas -----

    #[test]
    fn cas_swaps_only_on_the_expected_value() {
        History::default()
            .op(put("a"), Observed::Ok, 0, 10)
            .op(cas("a", "b"), Observed::Ok, 20, 30)
            .op(Call::Get, seen("b"), 40, 50)
            .assert_linearizable();
        History::default()
            .op(put("a"), Observed::Ok, 0, 10)
            .op(cas("x", "y"), Observed::Ok, 20, 30)
            .assert_violation();
        History::default()
            .op(cas("x", "y"), Observed::Ok, 20, 30)
            .assert_violation();
    }

    #[test]
    fn two_cas_from_the_same_value_cannot_both_swap() {
        History::default()
            .op(put("a"), Observed::Ok, 0, 10)
            .op(cas("a", "b"), Observed::Ok, 20, 30)
            .op(cas("a", "c"), Observed::Ok, 40, 50)
            .assert_violation();
        History::default()
            .op(put("a"), Observed::Ok, 0, 10)
            .op(cas("a", "b"), Observed::Ok, 20, 50)
            .op(cas("a", "c"), Observed::Ok, 25, 45)
            .assert_violation();
        // With a concurrent write of "a" between them, both may swap.
        History::default()
            .op(put("a"), Observed::Ok, 0, 10)
            .op(cas("a", "b"), Observed::Ok, 20, 50)
            .op(cas("a", "c"), Observed::Ok, 25, 45)
            .op(put("a"), Observed::Ok, 22, 40)
            .assert_linearizable();
    }

    #[test]
    fn cas_mismatch_is_an_observation() {
        History::default()
            .op(put("a"), Observed::Ok, 0, 10)
            .op(cas("x", "y"), mismatch(Some("a")), 20, 30)
            .op(cas("x", "y"), mismatch(Some("a")), 20, 30)
            .assert_linearizable();
        History::default()
            .op(put("a"), Observed::Ok, 0, 10)
            .op(cas("x", "y"), mismatch(None), 20, 30)
            .assert_violation();
        // A mismatch cannot report the very value it expected.
        History::default()
            .op(put("a"), Observed::Ok, 0, 10)
            .op(cas("a", "b"), mismatch(Some("a")), 20, 30)
            .assert_violation();
        History::default()
            .op(cas("a", "b"), mismatch(None), 0, 10)
            .assert_linearizable();
    }

    #[test]
    fn unknown_cas_swaps_only_on_the_expected_value() {
        for observed in [seen("a"), seen("b")] {
            History::default()
                .op(put("a"), Observed::Ok, 0, 10)
                .unknown(cas("a", "b"), 20)
                .op(Call::Get, observed, 30, 40)
                .assert_linearizable();
        }
        History::default()
            .op(put("c"), Observed::Ok, 0, 10)
            .unknown(cas("a", "b"), 20)
            .op(Call::Get, seen("b"), 30, 40)
            .assert_violation();
        // It swaps once "a" arrives, even late.
        History::default()
            .unknown(cas("a", "b"), 0)
            .op(put("a"), Observed::Ok, 10, 20)
            .op(Call::Get, seen("b"), 30, 40)
            .assert_linearizable();
    }

    // ----- whole histories -----

    #[test]
    fn keys_are_checked_independently() {
        let mut history = History::default()
            .op(put("a"), Observed::Ok, 0, 10)
            .op(Call::Get, absent(), 20, 30)
            .0;
        let mut other = History::default()
            .op(put("a"), Observed::Ok, 0, 10)
            .op(Call::Get, seen("a"), 20, 30)
            .0;
        for op in &mut other {
            op.key = "j".to_string();
        }
        history.extend(other);
        let report = check(&history, &Limits::default());
        assert!(!report.is_linearizable());
        let bad: Vec<&str> = report.violations().map(|(k, _)| k).collect();
        assert_eq!(bad, vec!["k"]);
        assert_eq!(report.keys.len(), 2);
    }

    #[test]
    fn effort_bound_gives_inconclusive() {
        let mut history = History::default();
        for i in 0..30 {
            history = history.unknown(put(&format!("v{i}")), i);
        }
        for i in 0..30 {
            history = history.op(Call::Get, seen(&format!("v{}", (i * 7) % 30)), 100 + i, 200);
        }
        let limits = Limits {
            max_steps: 1000,
            ..Limits::default()
        };
        let report = check_key("k", &history.0, &limits);
        assert!(
            matches!(report.verdict, Verdict::Inconclusive(_)),
            "{report}"
        );
    }

    #[test]
    fn unobserved_unknown_writes_are_pruned() {
        let history = History::default()
            .unknown(put("a"), 0)
            .unknown(cas("a", "b"), 5)
            .unknown(put("c"), 7)
            .op(Call::Get, seen("c"), 10, 20);
        let report = check_key("k", &history.0, &Limits::default());
        // "b" is never read, so the cas goes; then nobody observes "a" either.
        assert_eq!(report.pruned, 2, "{report}");
        assert!(matches!(report.verdict, Verdict::Linearizable));
    }

    #[test]
    fn search_agrees_with_brute_force_on_random_histories() {
        let mut rng = Rng(1);
        let (mut linearizable, mut not) = (0, 0);
        for _ in 0..20_000 {
            let history = random_history(&mut rng);
            let report = check_key("k", &history, &Limits::default());
            let expected = brute_force(&history);
            match (&report.verdict, expected) {
                (Verdict::Linearizable, true) => linearizable += 1,
                (Verdict::Violation(v), false) => {
                    not += 1;
                    // The slice must fail on its own, by the oracle too.
                    let ops: Vec<Operation> = v.ops.iter().map(SliceOp::for_search).collect();
                    let starts = match v.window_start {
                        Some(_) => any_start(&ops),
                        None => vec![None],
                    };
                    assert!(!brute_force_from(&ops, &starts), "{v}");
                }
                (verdict, _) => panic!("{history:#?}: search {verdict:?}, brute force {expected}"),
            }
        }
        // The generator must exercise both answers.
        assert!(linearizable > 2000 && not > 2000, "{linearizable} / {not}");
    }

    #[test]
    fn small_simulated_histories_agree_with_brute_force() {
        let mut rng = Rng(7);
        for _ in 0..3000 {
            let history = simulated_history(&mut rng, 3, 3, 30, None);
            assert!(brute_force(&history), "simulation is not linearizable?");
            let report = check_key("k", &history, &Limits::default());
            assert!(
                matches!(report.verdict, Verdict::Linearizable),
                "{report} on {history:#?}"
            );
        }
    }

    #[test]
    fn large_simulated_history_is_linearizable() {
        let mut rng = Rng(42);
        let history = simulated_history(&mut rng, 8, 2500, 5, None);
        let report = check_key("k", &history, &Limits::default());
        assert!(
            matches!(report.verdict, Verdict::Linearizable),
            "{report}: {:?}",
            report.verdict
        );
        assert!(report.ops > 15_000, "{report}");
    }

    #[test]
    fn future_read_in_large_history_shrinks_to_a_small_slice() {
        let mut rng = Rng(9);
        let mut history = simulated_history(&mut rng, 6, 1000, 5, None);
        // Make a read in the middle return a value first written after it completed.
        let (reader, value) = {
            let get = history
                .iter()
                .filter(|op| op.call == Call::Get && op.complete.is_some())
                .nth(2000)
                .expect("enough reads")
                .clone();
            let later = history
                .iter()
                .filter(|op| op.invoke > get.complete.unwrap() + 200)
                .find_map(|op| match &op.call {
                    Call::Put(v) => Some(v.clone()),
                    _ => None,
                })
                .expect("a later put");
            (get.id, later)
        };
        history[reader as usize].observed = Observed::Value(Some(value));
        let report = check_key("k", &history, &Limits::default());
        let Verdict::Violation(violation) = &report.verdict else {
            panic!("expected a violation: {report}");
        };
        eprintln!("{report}\n{violation}");
        assert!(violation.ops.len() <= 4, "{violation}");
        assert!(
            violation.ops.iter().any(|s| s.op.id == reader),
            "{violation}"
        );
        assert!(violation.to_string().contains("cannot be linearized"));
    }

    #[test]
    fn stale_read_after_long_prefix_shrinks_to_a_small_slice() {
        let mut history = History::default();
        for i in 0..2000u64 {
            let t = i * 100;
            history = history
                .op(put(&format!("v{i}")), Observed::Ok, t, t + 30)
                .op(Call::Get, seen(&format!("v{i}")), t + 40, t + 60);
        }
        let end = 2000 * 100;
        history = history.op(Call::Get, seen("v1000"), end, end + 10);
        let report = check_key("k", &history.0, &Limits::default());
        let Verdict::Violation(violation) = &report.verdict else {
            panic!("expected a violation: {report}");
        };
        assert!(violation.ops.len() <= 4, "{violation}");
        eprintln!("{report}\n{violation}");
        assert_eq!(violation.stuck.id, 4000, "{violation}");
    }

    /// `cargo test --release --lib checker::tests::timing -- --ignored --nocapture`
    #[test]
    #[ignore = "a timing run, not a check"]
    fn timing_of_large_histories() {
        let runs = [
            (8, 25_000, 2, None),
            (8, 25_000, 10, None),
            (8, 25_000, 10, Some(60)),
            (16, 10_000, 5, Some(60)),
        ];
        for (processes, per_process, unknown, bound) in runs {
            let mut rng = Rng(processes * per_process + unknown);
            let history = simulated_history(&mut rng, processes, per_process, unknown, bound);
            let report = check_key("k", &history, &Limits::default());
            eprintln!(
                "{processes} processes, {unknown}% unknown writes, bound {bound:?}: {report}"
            );
            assert!(!matches!(report.verdict, Verdict::Violation(_)));
        }
    }
}
