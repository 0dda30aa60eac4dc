//! Unit tests of the core, one per rule of the Raft paper where possible.
use std::sync::Arc;

use super::*;
use crate::core::message::{AppendEntries, RequestVote};

/// The plain algorithm of the paper: no pre-vote, no check-quorum.
fn config(id: NodeId, n: u64) -> Config {
    let mut c = Config::new(id, (1..=n).collect());
    c.pre_vote = false;
    c.check_quorum = false;
    c
}

/// With the dissertation's extensions on, as the runtime runs it.
fn node_ext(id: NodeId, n: u64) -> RaftNode {
    let c = Config::new(id, (1..=n).collect());
    RaftNode::new(c, HardState::default(), RaftLog::default(), id)
}

/// Ticks every node in `ticking` `n` times, delivering messages along allowed links.
fn run_ticks(
    nodes: &mut [RaftNode],
    ticking: &[NodeId],
    n: u32,
    allow: &dyn Fn(NodeId, NodeId) -> bool,
) {
    for _ in 0..n {
        for &id in ticking {
            nodes[(id - 1) as usize].tick();
        }
        settle(nodes, allow);
    }
}

fn node(id: NodeId, n: u64) -> RaftNode {
    RaftNode::new(config(id, n), HardState::default(), RaftLog::default(), id)
}

fn entry(index: Index, term: Term) -> Entry {
    Entry {
        term,
        index,
        payload: Payload::Command(vec![index as u8]),
    }
}

fn node_with_log(id: NodeId, n: u64, term: Term, terms: &[Term]) -> RaftNode {
    let entries = terms
        .iter()
        .enumerate()
        .map(|(i, &t)| entry(i as u64 + 1, t))
        .collect();
    let hs = HardState {
        current_term: term,
        voted_for: None,
    };
    RaftNode::new(config(id, n), hs, RaftLog::new(0, 0, entries), id)
}

/// Takes a ready batch, "persists" it at once, and returns every message with its sender.
fn drain(node: &mut RaftNode) -> Vec<(NodeId, Envelope)> {
    let mut out = Vec::new();
    while node.has_ready() {
        let rd = node.ready();
        if let Some(last) = rd.entries.last() {
            node.on_persisted(last.index, last.term);
        }
        let from = node.id();
        out.extend(rd.messages.into_iter().map(|m| (from, m)));
        out.extend(rd.persisted_messages.into_iter().map(|m| (from, m)));
    }
    out
}

/// Delivers messages among `nodes` until none are left; `allow` filters links.
fn settle(nodes: &mut [RaftNode], allow: &dyn Fn(NodeId, NodeId) -> bool) {
    let mut queue: Vec<(NodeId, Envelope)> = Vec::new();
    for n in nodes.iter_mut() {
        queue.extend(drain(n));
    }
    let mut steps = 0;
    while let Some((from, env)) = queue.pop() {
        steps += 1;
        assert!(steps < 100_000, "cluster does not settle");
        if !allow(from, env.to) {
            continue;
        }
        let target = &mut nodes[(env.to - 1) as usize];
        target.step(from, env.message);
        target.check_invariants();
        queue.extend(drain(target));
    }
}

fn all(_: NodeId, _: NodeId) -> bool {
    true
}

fn elect(nodes: &mut [RaftNode], id: NodeId) {
    nodes[(id - 1) as usize].campaign();
    settle(nodes, &all);
    assert_eq!(nodes[(id - 1) as usize].role(), Role::Leader);
}

// §5.2: a follower that hears nothing for an election timeout starts an election.
#[test]
fn follower_times_out_and_campaigns() {
    let mut n = node(1, 3);
    for _ in 0..300 {
        n.tick();
    }
    assert_eq!(n.role(), Role::Candidate);
    assert_eq!(n.current_term(), 1);
    let rd = n.ready();
    assert_eq!(rd.hard_state.unwrap().voted_for, Some(1));
    assert!(
        rd.messages.is_empty(),
        "vote requests wait for the vote to be durable"
    );
    assert_eq!(rd.persisted_messages.len(), 2);
}

// §5.2: the randomized timeout stays inside the configured range.
#[test]
fn election_timeout_is_randomized_within_range() {
    let n = node(1, 3);
    let timeout = n.ticks_until_timer();
    assert!((150..300).contains(&timeout), "timeout {timeout}");
}

// §5.2: a candidate with a quorum of votes becomes leader and appends a no-op (§8).
#[test]
fn candidate_with_quorum_leads_and_appends_noop() {
    let mut nodes: Vec<RaftNode> = (1..=3).map(|id| node(id, 3)).collect();
    elect(&mut nodes, 1);
    let leader = &nodes[0];
    assert_eq!(leader.log().last_index(), 1);
    assert_eq!(leader.log().entry(1).unwrap().payload, Payload::Noop);
    assert_eq!(leader.commit_index(), 1);
    for n in &nodes[1..] {
        assert_eq!(n.leader_id(), Some(1));
        assert_eq!(n.commit_index(), 1, "followers learn the commit index");
    }
}

// Single-member clusters elect themselves and commit alone.
#[test]
fn single_node_commits_alone() {
    let mut n = node(1, 1);
    n.campaign();
    assert_eq!(n.role(), Role::Leader);
    let index = n.propose(b"x".to_vec()).unwrap();
    drain(&mut n);
    assert_eq!(n.commit_index(), index);
}

// §5.1: a message with a higher term turns any node into a follower of that term.
#[test]
fn higher_term_makes_leader_step_down() {
    let mut nodes: Vec<RaftNode> = (1..=3).map(|id| node(id, 3)).collect();
    elect(&mut nodes, 1);
    let request = RequestVote {
        term: 5,
        last_log_index: 0,
        last_log_term: 0,
        pre_vote: false,
        transfer: false,
    };
    nodes[0].step(2, Message::RequestVote(request));
    assert_eq!(nodes[0].role(), Role::Follower);
    assert_eq!(nodes[0].current_term(), 5);
}

// §5.2, §5.4.1: one vote per term, and only for a log at least as up to date.
#[test]
fn votes_once_per_term_for_up_to_date_logs() {
    let mut n = node_with_log(1, 3, 2, &[1, 2]);
    let stale = RequestVote {
        term: 3,
        last_log_index: 5,
        last_log_term: 1,
        pre_vote: false,
        transfer: false,
    };
    n.step(2, Message::RequestVote(stale));
    assert_eq!(
        n.hard_state().voted_for,
        None,
        "log with older last term refused"
    );
    let good = RequestVote {
        term: 3,
        last_log_index: 2,
        last_log_term: 2,
        pre_vote: false,
        transfer: false,
    };
    n.step(2, Message::RequestVote(good.clone()));
    assert_eq!(n.hard_state().voted_for, Some(2));
    n.step(3, Message::RequestVote(good));
    assert_eq!(
        n.hard_state().voted_for,
        Some(2),
        "second vote in a term refused"
    );
    let rd = n.ready();
    assert!(
        rd.hard_state.is_some(),
        "the vote is persisted before the reply is sent"
    );
    let granted: Vec<bool> = rd
        .persisted_messages
        .iter()
        .map(|e| match &e.message {
            Message::RequestVoteResponse(r) => r.vote_granted,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(granted, vec![false, true, false]);
}

// §5.3: the consistency check rejects with a hint that skips a whole conflicting term.
#[test]
fn append_rejected_with_conflict_hint() {
    let mut n = node_with_log(2, 3, 3, &[1, 1, 2, 2, 2]);
    let append = AppendEntries {
        term: 3,
        prev_log_index: 5,
        prev_log_term: 3,
        entries: vec![],
        leader_commit: 0,
        read_round: 0,
    };
    n.step(1, Message::AppendEntries(append));
    let rd = n.ready();
    let Message::AppendEntriesResponse(r) = &rd.persisted_messages[0].message else {
        panic!("expected a response");
    };
    assert!(!r.success);
    assert_eq!((r.conflict_index, r.conflict_term), (3, Some(2)));
}

// §5.3: a delayed or duplicated append of a matching prefix must not cut newer entries.
#[test]
fn stale_append_does_not_truncate_log() {
    let mut n = node_with_log(2, 3, 1, &[1, 1, 1, 1]);
    let old = AppendEntries {
        term: 1,
        prev_log_index: 1,
        prev_log_term: 1,
        entries: vec![entry(2, 1)],
        leader_commit: 0,
        read_round: 0,
    };
    n.step(1, Message::AppendEntries(old));
    assert_eq!(n.log().last_index(), 4);
    let conflicting = AppendEntries {
        term: 2,
        prev_log_index: 2,
        prev_log_term: 1,
        entries: vec![entry(3, 2)],
        leader_commit: 0,
        read_round: 0,
    };
    n.step(1, Message::AppendEntries(conflicting));
    assert_eq!(n.log().last_index(), 3, "a real conflict truncates");
    assert_eq!(n.log().last_term(), 2);
}

// §5.3: a follower never commits past the last entry the leader vouched for.
#[test]
fn follower_commit_bounded_by_last_new_entry() {
    let mut n = node_with_log(2, 3, 1, &[1, 1, 1]);
    let append = AppendEntries {
        term: 2,
        prev_log_index: 1,
        prev_log_term: 1,
        entries: vec![],
        leader_commit: 3,
        read_round: 0,
    };
    n.step(1, Message::AppendEntries(append));
    assert_eq!(n.commit_index(), 1);
}

// §5.4.2 and Figure 8: a leader does not commit an entry of an earlier term by counting
// replicas; it commits it only together with an entry of its own term.
#[test]
fn leader_counts_only_current_term_entries() {
    // Node 1 holds an old-term entry at index 2 that node 2 also has; node 3 does not.
    let mut nodes = vec![
        node_with_log(1, 3, 3, &[1, 2]),
        node_with_log(2, 3, 3, &[1, 2]),
        node_with_log(3, 3, 3, &[1]),
    ];
    nodes[0].campaign();
    settle(&mut nodes, &all);
    assert_eq!(
        nodes[0].commit_index(),
        3,
        "the no-op of term 4 commits index 2 with it"
    );
    // Now force a state where a quorum matches index 2 (old term) but not the no-op.
    let leader = &mut nodes[0];
    leader.commit_index = 1;
    leader.progress.get_mut(&2).unwrap().match_index = 2;
    leader.persisted_index = 2;
    leader.maybe_commit();
    assert_eq!(
        leader.commit_index(),
        1,
        "old-term entry not committed by counting"
    );
}

// The leader's own entry counts toward commit only once durable.
#[test]
fn leader_commit_waits_for_own_fsync_or_quorum() {
    let mut nodes: Vec<RaftNode> = (1..=3).map(|id| node(id, 3)).collect();
    elect(&mut nodes, 1);
    let index = nodes[0].propose(b"v".to_vec()).unwrap();
    let rd = nodes[0].ready();
    assert_eq!(rd.entries.len(), 1);
    assert_eq!(
        rd.messages.len(),
        2,
        "appends leave before the leader's own fsync"
    );
    // One follower acknowledges; without the leader's fsync that is 1 of 3.
    let Message::AppendEntries(append) = rd.messages[0].message.clone() else {
        panic!("expected append");
    };
    let to = rd.messages[0].to;
    nodes[(to - 1) as usize].step(1, Message::AppendEntries(append));
    let replies = drain(&mut nodes[(to - 1) as usize]);
    for (from, env) in replies {
        nodes[0].step(from, env.message);
    }
    assert_eq!(
        nodes[0].commit_index(),
        1,
        "one follower alone is not a quorum of three"
    );
    nodes[0].on_persisted(index, 1);
    assert_eq!(
        nodes[0].commit_index(),
        index,
        "leader's durable copy completes the quorum"
    );
}

// Dissertation §6.4: a read is released only after a quorum answers its heartbeat round.
#[test]
fn read_index_needs_a_quorum_round() {
    let mut nodes: Vec<RaftNode> = (1..=3).map(|id| node(id, 3)).collect();
    elect(&mut nodes, 1);
    nodes[0].read_index(7).unwrap();
    let rd = nodes[0].ready();
    assert!(rd.read_states.is_empty());
    assert_eq!(rd.messages.len(), 2, "one heartbeat per follower");
    let Message::AppendEntries(hb) = rd.messages[0].message.clone() else {
        panic!("expected heartbeat");
    };
    let to = rd.messages[0].to;
    nodes[(to - 1) as usize].step(1, Message::AppendEntries(hb));
    for (from, env) in drain(&mut nodes[(to - 1) as usize]) {
        nodes[0].step(from, env.message);
    }
    let rd = nodes[0].ready();
    assert_eq!(rd.read_states, vec![ReadState { ctx: 7, index: 1 }]);
}

// §6.4: a new leader answers reads only once an entry of its term has committed.
#[test]
fn new_leader_defers_reads_until_noop_commits() {
    let mut fresh: Vec<RaftNode> = (1..=3).map(|id| node(id, 3)).collect();
    fresh[0].campaign();
    // Deliver the vote requests and answers, but hold the leader's appends.
    let out = drain(&mut fresh[0]);
    for (from, env) in out {
        let to = env.to;
        fresh[(to - 1) as usize].step(from, env.message);
        for (f, e) in drain(&mut fresh[(to - 1) as usize]) {
            fresh[0].step(f, e.message);
        }
    }
    assert_eq!(fresh[0].role(), Role::Leader);
    fresh[0].read_index(1).unwrap();
    assert!(
        fresh[0].pending_reads.is_empty(),
        "read waits for the no-op to commit"
    );
    assert_eq!(fresh[0].reads_awaiting_commit, vec![1]);
}

#[test]
fn not_leader_names_the_leader() {
    let mut nodes: Vec<RaftNode> = (1..=3).map(|id| node(id, 3)).collect();
    elect(&mut nodes, 2);
    assert_eq!(
        nodes[0].propose(vec![1]),
        Err(NotLeader { leader: Some(2) })
    );
    assert_eq!(nodes[0].read_index(1), Err(NotLeader { leader: Some(2) }));
}

fn snapshot_at(index: Index, term: Term, len: usize) -> Snapshot {
    Snapshot {
        index,
        term,
        data: Arc::new((0..len).map(|i| i as u8).collect()),
    }
}

/// Commits `count` proposals through leader 1 with every link up.
fn commit_proposals(nodes: &mut [RaftNode], count: usize) {
    for i in 0..count {
        nodes[0].propose(vec![i as u8]).unwrap();
        settle(nodes, &all);
    }
}

// §7: a follower whose next entry the leader compacted away receives the snapshot in chunks,
// installs it once complete, and then replicates normally.
#[test]
fn lagging_follower_catches_up_by_snapshot_despite_lost_chunks() {
    let mut nodes: Vec<RaftNode> = (1..=3)
        .map(|id| {
            let mut c = config(id, 3);
            c.snapshot_chunk_bytes = 100;
            c.snapshot_window = 3;
            c.compaction_tail = 0;
            RaftNode::new(c, HardState::default(), RaftLog::default(), id)
        })
        .collect();
    elect(&mut nodes, 1);
    // Node 3 hears nothing while ten entries commit and the leader compacts them away.
    for i in 0..10u8 {
        nodes[0].propose(vec![i]).unwrap();
        settle(&mut nodes, &|_, to| to != 3);
    }
    let applied = nodes[0].last_applied();
    nodes[0].compact(snapshot_at(applied, 1, 1000));
    assert!(nodes[0].log().first_index() > 2);

    // Heartbeats now stream the snapshot; lose every fourth chunk on the way.
    let mut sent = 0;
    for _ in 0..200 {
        for _ in 0..50 {
            nodes[0].tick();
        }
        let mut queue: std::collections::VecDeque<_> = drain(&mut nodes[0]).into();
        while let Some((from, env)) = queue.pop_front() {
            let lose = matches!(env.message, Message::InstallSnapshot(_)) && {
                sent += 1;
                sent % 4 == 2
            };
            if lose {
                continue;
            }
            let to = env.to;
            nodes[(to - 1) as usize].step(from, env.message);
            nodes[(to - 1) as usize].check_invariants();
            queue.extend(drain(&mut nodes[(to - 1) as usize]));
        }
        if nodes[2].commit_index() >= applied {
            break;
        }
    }
    assert_eq!(nodes[2].status().snapshot_index, applied);
    assert_eq!(nodes[2].commit_index(), nodes[0].commit_index());
    commit_proposals(&mut nodes, 2);
    assert_eq!(nodes[2].log().last_index(), nodes[0].log().last_index());
}

// Figure 13, rule 6: a snapshot whose last entry the follower already holds changes nothing,
// so a delayed snapshot cannot cut entries the follower acknowledged after it.
#[test]
fn stale_snapshot_does_not_truncate_log() {
    let mut n = node_with_log(2, 3, 1, &[1, 1, 1, 1, 1]);
    let data = vec![7u8; 10];
    let chunk = crate::core::message::InstallSnapshot {
        term: 1,
        last_included_index: 3,
        last_included_term: 1,
        total_len: 10,
        checksum: crc32c::crc32c(&data),
        offset: 0,
        data,
    };
    n.step(1, Message::InstallSnapshot(chunk));
    assert_eq!(n.log().last_index(), 5);
    let rd = n.ready();
    assert!(rd.snapshot.is_none());
    let Message::InstallSnapshotResponse(r) = &rd.persisted_messages[0].message else {
        panic!("expected a response");
    };
    assert!(r.installed);
}

// A snapshot that fails its checksum is never installed.
#[test]
fn corrupt_snapshot_is_refused() {
    let mut n = node(2, 3);
    let chunk = crate::core::message::InstallSnapshot {
        term: 1,
        last_included_index: 3,
        last_included_term: 1,
        total_len: 4,
        checksum: 12345,
        offset: 0,
        data: vec![1, 2, 3, 4],
    };
    n.step(1, Message::InstallSnapshot(chunk));
    assert_eq!(n.log().last_index(), 0);
    assert!(n.ready().snapshot.is_none());
}

// §9.6: a node cut off for many election timeouts neither raises its term nor, once back,
// disturbs the leader.
#[test]
fn pre_vote_stops_term_inflation_and_disruption() {
    let mut nodes: Vec<RaftNode> = (1..=3).map(|id| node_ext(id, 3)).collect();
    elect(&mut nodes, 1);
    let term = nodes[0].current_term();
    let cut = |a: NodeId, b: NodeId| a != 3 && b != 3;
    run_ticks(&mut nodes, &[1, 2, 3], 3000, &cut);
    assert_eq!(nodes[2].current_term(), term, "isolated node kept its term");
    assert_eq!(nodes[2].role(), Role::PreCandidate);
    run_ticks(&mut nodes, &[1, 2, 3], 500, &all);
    assert_eq!(nodes[0].role(), Role::Leader, "leader undisturbed");
    assert_eq!(nodes[0].current_term(), term);
    assert_eq!(nodes[2].leader_id(), Some(1));
}

// §6.2: a leader that cannot hear from a quorum steps down and says why.
#[test]
fn check_quorum_steps_down_isolated_leader() {
    let mut nodes: Vec<RaftNode> = (1..=3).map(|id| node_ext(id, 3)).collect();
    elect(&mut nodes, 1);
    let cut = |a: NodeId, b: NodeId| a != 1 && b != 1;
    run_ticks(&mut nodes, &[1], 700, &cut);
    assert_eq!(nodes[0].role(), Role::Follower);
    assert!(nodes[0].status().role_reason.contains("lost quorum"));
}

// §4.2.3: a follower that heard from the leader recently ignores a disruptive vote request.
#[test]
fn lease_ignores_disruptive_vote_request() {
    let mut nodes: Vec<RaftNode> = (1..=3).map(|id| node_ext(id, 3)).collect();
    elect(&mut nodes, 1);
    let term = nodes[1].current_term();
    let request = RequestVote {
        term: term + 5,
        last_log_index: 100,
        last_log_term: term + 4,
        pre_vote: false,
        transfer: false,
    };
    nodes[1].step(3, Message::RequestVote(request));
    assert_eq!(nodes[1].current_term(), term);
    assert!(nodes[1].ready().persisted_messages.is_empty());
}

// §3.10: a transfer brings the target up to date, then it wins an election at once.
#[test]
fn leadership_transfer_hands_over() {
    let mut nodes: Vec<RaftNode> = (1..=3).map(|id| node_ext(id, 3)).collect();
    elect(&mut nodes, 1);
    nodes[0].propose(b"x".to_vec()).unwrap();
    settle(&mut nodes, &|_, to| to != 3);
    nodes[0].transfer_leader(3).unwrap();
    assert!(
        nodes[0].propose(b"y".to_vec()).is_err(),
        "no proposals during a transfer"
    );
    // The lost append is noticed at the next heartbeat; then the target catches up.
    run_ticks(&mut nodes, &[1], 60, &all);
    assert_eq!(nodes[2].role(), Role::Leader);
    assert_eq!(nodes[0].leader_id(), Some(3));
    assert!(
        nodes[0].transfer_leader(2).is_err(),
        "only the leader transfers"
    );
}

// A transfer to a target that never answers is abandoned, and proposals resume.
#[test]
fn stuck_transfer_times_out() {
    let mut nodes: Vec<RaftNode> = (1..=3).map(|id| node_ext(id, 3)).collect();
    elect(&mut nodes, 1);
    nodes[0].transfer_leader(3).unwrap();
    run_ticks(&mut nodes, &[1, 2], 400, &|a, b| a != 3 && b != 3);
    assert_eq!(nodes[0].role(), Role::Leader);
    assert!(nodes[0].propose(b"z".to_vec()).is_ok());
}
