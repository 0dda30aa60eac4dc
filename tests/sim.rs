//! Whole-cluster simulation tests: sweeps over many seeds with random faults, and named
//! scenarios from the Raft paper, all on `raftnode::sim`, which checks Raft's safety
//! properties after every step.
//!
//! Rerun one seed of the sweeps with `RAFTNODE_SIM_SEED=N cargo test --test sim`; change how
//! many seeds each sweep runs with `RAFTNODE_SIM_SEEDS=N`.

use std::panic::{self, AssertUnwindSafe};
use std::time::Instant;

use raftnode::core::{Message, NodeId, Payload, Role};
use raftnode::sim::{run_seed, Outcome, SimConfig, Simulation, SEED_ENV};

/// Generous bound for anything that needs one election and a few round trips.
const ELECTION_BUDGET: u64 = 5_000;

/// The seeds a sweep runs: the one in `RAFTNODE_SIM_SEED`, else `0..RAFTNODE_SIM_SEEDS`, else
/// `0..default`.
fn seeds(default: u64) -> Vec<u64> {
    if let Ok(seed) = std::env::var(SEED_ENV) {
        return vec![seed.parse().expect("RAFTNODE_SIM_SEED must be a number")];
    }
    let count = std::env::var("RAFTNODE_SIM_SEEDS")
        .map(|n| n.parse().expect("RAFTNODE_SIM_SEEDS must be a number"))
        .unwrap_or(default);
    (0..count).collect()
}

/// Runs every seed of a sweep; on failure, panics with the seed and the command to rerun it.
fn sweep(nodes: usize, test: &str, default_seeds: u64) {
    let started = Instant::now();
    let mut totals = (0, 0, 0, 0, 0);
    for seed in seeds(default_seeds) {
        let config = SimConfig::varied(nodes, seed);
        let report = match panic::catch_unwind(AssertUnwindSafe(|| run_seed(config))) {
            Ok(report) => report,
            Err(cause) => {
                let cause = cause
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| cause.downcast_ref::<&str>().copied())
                    .unwrap_or("(no message)");
                let cause = cause.lines().next().unwrap_or_default();
                panic!(
                    "seed {seed} ({nodes} nodes) failed: {cause}\n\
                     rerun with: {SEED_ENV}={seed} cargo test --test sim {test}"
                );
            }
        };
        totals.0 += report.elections;
        totals.1 += report.acked;
        totals.2 += report.reads_answered;
        totals.3 += report.crashes;
        totals.4 += report.snapshots_installed;
    }
    eprintln!(
        "{test}: {} elections, {} acked commands, {} reads, {} crashes, {} snapshots \
         installed in {:.1?}",
        totals.0,
        totals.1,
        totals.2,
        totals.3,
        totals.4,
        started.elapsed()
    );
}

#[test]
fn random_faults_3_nodes() {
    sweep(3, "random_faults_3_nodes", 600);
}

#[test]
fn random_faults_5_nodes() {
    sweep(5, "random_faults_5_nodes", 400);
}

#[test]
fn same_seed_replays_exactly() {
    let first = run_seed(SimConfig::varied(5, 7));
    let second = run_seed(SimConfig::varied(5, 7));
    assert_eq!(first, second);
    let other = run_seed(SimConfig::varied(5, 8));
    assert_ne!(first.trace_digest, other.trace_digest);
}

/// The algorithm of the paper alone: no pre-vote, no check-quorum.
fn classic(nodes: usize, seed: u64) -> SimConfig {
    SimConfig {
        pre_vote: false,
        check_quorum: false,
        ..SimConfig::scripted(nodes, seed)
    }
}

/// Asserts that every acknowledged command was applied at its index, and that every node has
/// applied past it and still holds it (or has compacted it into a snapshot): State Machine
/// Safety, seen from the client's side.
fn assert_acknowledged_everywhere(sim: &Simulation) {
    for (id, index) in sim.acknowledged() {
        let command = sim.proposal_payload(id);
        assert_eq!(sim.applied_entry(index).map(|e| &e.payload), Some(&command));
        for node in sim.node_ids() {
            let log = sim.node(node).expect("running").log();
            match log.entry(index) {
                Some(entry) => assert_eq!(entry.payload, command, "node {node} at {index}"),
                None => assert!(index <= log.snapshot_index(), "node {node} lost {index}"),
            }
            assert!(sim.applied_index(node) >= index);
        }
    }
}

/// Runs until every node has applied everything known committed.
fn converge(sim: &mut Simulation) {
    let done = |s: &Simulation| {
        let commit = s.commit_index();
        s.node_ids().iter().all(|&n| s.applied_index(n) == commit)
    };
    assert!(sim.run_until(ELECTION_BUDGET, done));
}

// §5.2, §5.3: without check-quorum, a leader cut off from the rest keeps leading and accepting
// commands it can never commit, while the majority elects a new leader. After healing, the old
// leader steps down on the higher term and its uncommitted entries are replaced, while nothing
// committed is lost. Its reads are never answered meanwhile (dissertation §6.4): it cannot
// confirm that it still leads.
#[test]
fn isolated_leader_steps_down_and_loses_only_uncommitted_entries() {
    let mut sim = Simulation::new(classic(5, 11));
    let old = sim.wait_for_leader(ELECTION_BUDGET);
    for _ in 0..3 {
        sim.commit_one(ELECTION_BUDGET);
    }
    let old_term = sim.node(old).unwrap().current_term();

    sim.isolate(old);
    let stranded: Vec<u64> = (0..4)
        .filter_map(|_| sim.propose_to(old))
        .map(|p| p.id)
        .collect();
    assert_eq!(stranded.len(), 4, "the isolated leader accepts commands");
    let new_leader = |s: &Simulation| s.stable_leader().filter(|&l| l != old);
    assert!(sim.run_until(ELECTION_BUDGET, |s| new_leader(s).is_some()));
    let new = new_leader(&sim).unwrap();
    for _ in 0..3 {
        sim.commit_one(ELECTION_BUDGET);
    }
    let answered = sim.report().reads_answered;
    assert!(sim.read_from(old).is_some());
    sim.run_ticks(1_000);
    assert!(sim.is_leader(old), "nothing told the old leader");
    assert_eq!(sim.report().reads_answered, answered, "a stale read");

    sim.heal();
    let new_term = sim.node(new).unwrap().current_term();
    assert!(new_term > old_term);
    let caught_up = |s: &Simulation| {
        let node = s.node(old).unwrap();
        node.role() == Role::Follower && s.applied_index(old) == s.commit_index()
    };
    assert!(sim.run_until(ELECTION_BUDGET, caught_up));
    assert!(sim.node(old).unwrap().current_term() >= new_term);
    for id in stranded {
        assert_eq!(sim.outcome(id), Some(Outcome::Lost), "command {id}");
    }
    sim.settle();
    assert_acknowledged_everywhere(&sim);
}

// Dissertation §6.2 and §9.6: with check-quorum an isolated leader steps down by itself within
// an election timeout, and with pre-vote it then cannot raise its term while cut off, so when
// the partition heals it rejoins without deposing the leader the majority elected meanwhile.
#[test]
fn isolated_leader_steps_down_by_itself_and_rejoins_quietly() {
    let mut sim = Simulation::new(SimConfig::scripted(5, 13));
    let old = sim.wait_for_leader(ELECTION_BUDGET);
    sim.commit_one(ELECTION_BUDGET);
    let old_term = sim.node(old).unwrap().current_term();

    sim.isolate(old);
    let timeout = u64::from(sim.config().election_timeout_max_ticks);
    assert!(sim.run_until(2 * timeout + 1, |s| !s.is_leader(old)));
    let new_leader = |s: &Simulation| s.stable_leader().filter(|&l| l != old);
    assert!(sim.run_until(ELECTION_BUDGET, |s| new_leader(s).is_some()));
    let new = new_leader(&sim).unwrap();
    sim.commit_one(ELECTION_BUDGET);
    sim.run_ticks(10 * timeout);
    assert_eq!(
        sim.node(old).unwrap().current_term(),
        old_term,
        "pre-vote kept its term"
    );

    let new_term = sim.node(new).unwrap().current_term();
    sim.heal();
    converge(&mut sim);
    sim.run_ticks(10 * timeout);
    assert!(sim.is_leader(new), "the rejoining node deposed the leader");
    assert_eq!(sim.node(new).unwrap().current_term(), new_term);
    sim.settle();
    assert_acknowledged_everywhere(&sim);
}

// §5.4.2 and Figure 8: a leader must not count replicas of an entry from an earlier term as
// committing it. Here the entry X of term t1 ends up on four of five nodes under a leader of a
// later term whose own entries cannot spread; X must stay uncommitted, and indeed a node with
// a later-term entry at X's index can still win an election and replace X everywhere.
fn figure_8(mut config: SimConfig) {
    // One entry per AppendEntries, so X and a later entry travel separately, as in the figure.
    config.max_append_entries = 1;
    let mut sim = Simulation::new(config);

    // (a) Leader L commits a prefix, then X reaches only B before a partition.
    let l = sim.wait_for_leader(ELECTION_BUDGET);
    sim.commit_one(ELECTION_BUDGET);
    converge(&mut sim);
    let prefix = sim.commit_index();
    let others: Vec<NodeId> = sim.node_ids().into_iter().filter(|&n| n != l).collect();
    let (b, rest) = (others[0], &others[1..]);
    sim.partition(&[&[l, b], rest]);
    let x = sim.propose_to(l).expect("L leads");
    let ix = x.index;
    assert_eq!(ix, prefix + 1);
    let b_has_x = |s: &Simulation| s.node(b).unwrap().log().last_index() == ix;
    assert!(sim.run_until(ELECTION_BUDGET, b_has_x));
    let t1 = sim.node(l).unwrap().current_term();

    // (b) The other side elects W, whose no-op at index ix (term t2) must stay on W alone.
    sim.campaign(rest[2]);
    let leads_rest = |s: &Simulation| rest.iter().copied().find(|&n| s.is_leader(n));
    assert!(sim.run_until(ELECTION_BUDGET, |s| leads_rest(s).is_some()));
    let w = leads_rest(&sim).unwrap();
    let t2 = sim.node(w).unwrap().current_term();
    let voters: Vec<NodeId> = rest.iter().copied().filter(|&n| n != w).collect();
    sim.partition(&[&[l, b, voters[0], voters[1]], &[w]]);
    assert_eq!(sim.node(w).unwrap().log().term_at(ix), Some(t2));

    // (c) L or B wins term t3 and copies X to the voters, but its own entries of t3 never
    // leave it: the interceptor trims them off, as if the leader sent smaller batches.
    let t3_leader = |s: &Simulation| {
        [l, b]
            .into_iter()
            .find(|&n| s.is_leader(n) && s.node(n).unwrap().current_term() > t2)
    };
    assert!(sim.run_until(ELECTION_BUDGET, |s| t3_leader(s).is_some()));
    let leader3 = t3_leader(&sim).unwrap();
    let t3 = sim.node(leader3).unwrap().current_term();
    sim.set_interceptor(Box::new(move |from, _to, message: &mut Message| {
        if let Message::AppendEntries(append) = message {
            if from == leader3 {
                append.entries.retain(|e| e.term != t3);
            }
        }
        true
    }));
    let has_x = |s: &Simulation, n: NodeId| s.node(n).unwrap().log().term_at(ix) == Some(t1);
    assert!(sim.run_until(ELECTION_BUDGET, |s| voters.iter().all(|&v| has_x(s, v))));
    sim.run_ticks(1_000);
    let holders = [l, b, voters[0], voters[1]];
    assert!(
        holders.iter().all(|&n| has_x(&sim, n)),
        "X is on 4 of 5 nodes"
    );
    assert!(sim.is_leader(leader3));
    assert_eq!(
        sim.node(leader3).unwrap().commit_index(),
        prefix,
        "the leader of term {t3} counted replicas of an entry of term {t1}"
    );

    // (d) The t3 leader crashes; W, whose last entry (term t2) is newer than X's, wins with
    // the two voters and replaces X. That is safe only because X was never committed.
    sim.crash(leader3);
    sim.clear_interceptor();
    let follower = if leader3 == l { b } else { l };
    sim.partition(&[&[w, voters[0], voters[1]], &[follower]]);
    let w_commits = |s: &Simulation| s.is_leader(w) && s.node(w).unwrap().commit_index() > ix;
    assert!(sim.run_until(ELECTION_BUDGET, w_commits));
    let replaced = sim.applied_entry(ix).expect("index ix committed").clone();
    assert_eq!((replaced.term, replaced.payload), (t2, Payload::Noop));
    assert_ne!(sim.outcome(x.id), Some(Outcome::Committed(ix)));

    sim.settle();
    for n in sim.node_ids() {
        let log = sim.node(n).unwrap().log();
        assert_eq!(log.term_at(ix), Some(t2), "node {n} still has X");
    }
}

#[test]
fn figure_8_old_term_entry_is_not_committed_by_counting_replicas() {
    figure_8(classic(5, 3));
}

#[test]
fn figure_8_with_pre_vote_and_check_quorum() {
    figure_8(SimConfig::scripted(5, 3));
}

// §5.4.1, Figure 2, §7: what is committed survives every node crashing at once, because
// terms, votes, entries and snapshots are on disk before anyone relies on them. Nodes restart
// from their latest snapshot plus the log after it.
#[test]
fn all_nodes_crash_after_commits_and_recover_everything() {
    for nodes in [3, 5] {
        let config = SimConfig {
            snapshot_every: 30,
            ..SimConfig::scripted(nodes, 21)
        };
        let mut sim = Simulation::new(config);
        sim.wait_for_leader(ELECTION_BUDGET);
        for _ in 0..70 {
            sim.commit_one(ELECTION_BUDGET);
        }
        // Leave some commands in flight too, so the crash cuts replication mid-way.
        for _ in 0..5 {
            sim.propose();
        }
        sim.run_ticks(3);
        let committed = sim.commit_index();
        for id in sim.node_ids() {
            sim.crash(id);
        }
        sim.run_ticks(500);
        for id in sim.node_ids() {
            sim.restart(id);
            let restored = sim.applied_index(id);
            assert!(
                restored >= 30,
                "node {id} restored its snapshot, at {restored}"
            );
        }
        sim.commit_one(ELECTION_BUDGET);
        sim.settle();
        assert!(sim.commit_index() > committed);
        assert!(sim.acknowledged().len() >= 70);
        assert!(sim.report().snapshots_taken > 0);
        assert_acknowledged_everywhere(&sim);
    }
}

/// Crashes a follower, commits 300 commands without it, restarts it and returns how many
/// ticks it took to apply them all.
fn far_behind_follower(config: SimConfig) -> (u64, Simulation) {
    let mut sim = Simulation::new(config);
    let leader = sim.wait_for_leader(ELECTION_BUDGET);
    let lagging = sim.node_ids().into_iter().find(|&n| n != leader).unwrap();
    sim.crash(lagging);
    let mut accepted = Vec::new();
    for round in 0..30 {
        accepted.extend((0..10).filter_map(|_| sim.propose()));
        if round % 10 == 9 {
            // A lost leader loses its pending commands; keep going with the next one.
            sim.wait_for_leader(ELECTION_BUDGET);
        }
        sim.run_ticks(20);
    }
    assert!(sim.run_until(ELECTION_BUDGET, |s| {
        accepted
            .iter()
            .all(|p| s.outcome(p.id) != Some(Outcome::Pending))
    }));
    let target = sim.commit_index();
    assert!(target >= 300, "only {target} entries committed");

    sim.restart(lagging);
    let started = sim.now();
    assert!(sim.run_until(ELECTION_BUDGET, |s| s.applied_index(lagging) >= target));
    let took = sim.now() - started;
    sim.settle();
    assert_acknowledged_everywhere(&sim);
    (took, sim)
}

// §5.3: a follower that missed hundreds of entries is brought up to date by the leader's
// probing (next_index backs off after rejections), then streamed entries in batches.
#[test]
fn far_behind_follower_catches_up_from_the_log() {
    let config = SimConfig {
        max_append_entries: 16,
        max_inflight: 4,
        snapshot_every: 0,
        ..SimConfig::scripted(5, 5)
    };
    let (took, sim) = far_behind_follower(config);
    assert!(took < 2_000, "catching up took {took} ticks");
    assert_eq!(sim.report().snapshots_installed, 0);
}

// §7: when the entries a follower lacks were compacted away, the leader sends its snapshot in
// chunks instead, then the entries after it.
#[test]
fn far_behind_follower_catches_up_from_a_snapshot() {
    let config = SimConfig {
        snapshot_every: 50,
        compaction_tail: 10,
        snapshot_chunk_bytes: 256,
        snapshot_window: 2,
        ..SimConfig::scripted(5, 5)
    };
    let (took, sim) = far_behind_follower(config);
    assert!(took < 2_000, "catching up took {took} ticks");
    assert!(sim.report().snapshots_installed > 0);
}

// §5.1, dissertation §6.4: a leader stalled past an election resumes believing it still leads,
// and a client reaches it before any message does. Its read must not be answered from its
// stale state; the first answers it gets carry the new term and make it step down.
#[test]
fn paused_leader_wakes_up_without_serving_a_stale_read() {
    let mut sim = Simulation::new(SimConfig::scripted(3, 17));
    let old = sim.wait_for_leader(ELECTION_BUDGET);
    sim.commit_one(ELECTION_BUDGET);
    sim.pause(old, 2_000);
    let new_leader = |s: &Simulation| s.stable_leader().filter(|&l| l != old);
    assert!(sim.run_until(ELECTION_BUDGET, |s| new_leader(s).is_some()));
    let (_, index) = sim.commit_one(ELECTION_BUDGET);

    assert!(sim.run_until(ELECTION_BUDGET, |s| !s.is_paused(old)));
    assert!(
        sim.is_leader(old),
        "the resumed leader has heard nothing yet"
    );
    assert!(sim.applied_index(old) < index);
    let answered = sim.report().reads_answered;
    assert!(sim.read_from(old).is_some(), "it still accepts reads");
    assert!(sim.run_until(ELECTION_BUDGET, |s| !s.is_leader(old)));
    sim.run_ticks(1_000);
    assert_eq!(
        sim.report().reads_answered,
        answered,
        "a stale leader answered a read"
    );
    sim.settle();
    assert_acknowledged_everywhere(&sim);
}

// Dissertation §3.10: a leadership transfer stops proposals at the old leader, brings the
// target up to date and has it win the next term at once; nothing committed is lost.
#[test]
fn leadership_transfer_hands_over_without_losing_commands() {
    let mut sim = Simulation::new(SimConfig::scripted(5, 23));
    let old = sim.wait_for_leader(ELECTION_BUDGET);
    for _ in 0..10 {
        sim.commit_one(ELECTION_BUDGET);
    }
    let term = sim.node(old).unwrap().current_term();
    let target = sim.node_ids().into_iter().find(|&n| n != old).unwrap();
    assert!(sim.transfer_leader(old, target));
    assert!(
        sim.propose_to(old).is_none(),
        "proposals wait for the transfer"
    );
    let timeout = u64::from(sim.config().election_timeout_max_ticks);
    assert!(sim.run_until(timeout, |s| s.is_leader(target)));
    assert_eq!(sim.node(target).unwrap().current_term(), term + 1);
    sim.commit_one(ELECTION_BUDGET);
    sim.settle();
    assert!(!sim.is_leader(old));
    assert_acknowledged_everywhere(&sim);
}

// §5.2: a one-way link cut from the leader to one follower leaves the follower timing out and
// campaigning; the cluster must still make progress and converge once the link heals.
#[test]
fn one_way_link_cut_disrupts_but_does_not_break_the_cluster() {
    for config in [classic(3, 29), SimConfig::scripted(3, 29)] {
        let mut sim = Simulation::new(config);
        let leader = sim.wait_for_leader(ELECTION_BUDGET);
        let follower = sim.node_ids().into_iter().find(|&n| n != leader).unwrap();
        sim.cut_link(leader, follower);
        for _ in 0..5 {
            sim.commit_one(ELECTION_BUDGET);
            sim.run_ticks(300);
        }
        sim.heal();
        sim.settle();
        assert_acknowledged_everywhere(&sim);
    }
}

// Dissertation §9.6: a follower cut off for many election timeouts keeps its term (its
// pre-votes fail), and when it comes back the leader and the term stay as they were.
#[test]
fn isolated_follower_rejoins_without_changing_leader_or_term() {
    let mut sim = Simulation::new(SimConfig::scripted(3, 17));
    let leader = sim.wait_for_leader(ELECTION_BUDGET);
    sim.commit_one(ELECTION_BUDGET);
    let term = sim.node(leader).unwrap().current_term();
    let follower = sim.node_ids().into_iter().find(|&n| n != leader).unwrap();

    sim.isolate(follower);
    let timeout = u64::from(sim.config().election_timeout_max_ticks);
    sim.run_ticks(20 * timeout);
    assert_eq!(
        sim.node(follower).unwrap().current_term(),
        term,
        "term inflated"
    );

    sim.heal();
    sim.run_ticks(10 * timeout);
    assert!(
        sim.is_leader(leader),
        "the returning follower changed the leader"
    );
    assert_eq!(sim.node(leader).unwrap().current_term(), term);
    converge(&mut sim);
}
