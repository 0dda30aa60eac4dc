//! The extensions that keep leadership stable on a faulty network (Ongaro's dissertation):
//! pre-vote (§9.6), check-quorum and leader leases on votes (§6.2, §4.2.3), and leadership
//! transfer (§3.10).
//!
//! * Pre-vote: a node whose election timer fires first asks "would you vote for me in the next
//!   term?" without changing any state. Peers that heard from a live leader within the minimum
//!   election timeout say no, so a node returning from a partition neither deposes a healthy
//!   leader nor inflates terms.
//! * Check-quorum: a leader that has not heard from a quorum within an election timeout steps
//!   down; followers that heard from a leader that recently ignore vote requests altogether.
//! * Transfer: the leader stops taking proposals, brings the target up to date, and tells it to
//!   campaign at once; it resumes if the target has not won within an election timeout.

use super::{RaftNode, Role};
use crate::core::message::{Message, NodeId, RequestVote, RequestVoteResponse, TimeoutNow};

/// True for the messages whose higher term must not make the receiver a follower: a pre-vote
/// request (it changes nothing) and a granted pre-vote answer (it carries the term the
/// pre-candidate would campaign in).
pub(super) fn is_granted_pre_vote_or_request(message: &Message) -> bool {
    match message {
        Message::RequestVote(m) => m.pre_vote,
        Message::RequestVoteResponse(m) => m.pre_vote && m.vote_granted,
        _ => false,
    }
}

impl RaftNode {
    /// True while this node has reason to believe a leader is alive: it is the leader, or it
    /// heard from one within the minimum election timeout.
    fn heard_from_leader_recently(&self) -> bool {
        self.role == Role::Leader
            || (self.leader_id.is_some()
                && self.election_elapsed < self.config.election_timeout_min_ticks)
    }

    /// With check-quorum, a vote request of a higher term that arrives while a leader is known
    /// to be alive is ignored outright: it comes from a node that was cut off, and obeying its
    /// term would depose a healthy leader. Transfers are exempt: the leader asked for them.
    pub(super) fn in_lease_ignoring(&self, from: NodeId, message: &Message) -> bool {
        let Message::RequestVote(m) = message else {
            return false;
        };
        if m.pre_vote || m.transfer || !self.config.check_quorum {
            return false;
        }
        if !self.heard_from_leader_recently() {
            return false;
        }
        node_debug!(
            self,
            "ignored vote request of term {} from node {from}: leader is alive",
            m.term
        );
        true
    }

    /// Starts an election, with a pre-vote round first when configured.
    pub(super) fn start_election(&mut self, reason: &str) {
        if !self.config.pre_vote {
            self.request_votes(reason, false);
            return;
        }
        self.become_pre_candidate(reason);
        if self.votes_granted() >= self.quorum() {
            let reason = format!("{reason}; pre-vote won");
            self.request_votes(&reason, false);
            return;
        }
        let request = RequestVote {
            term: self.current_term + 1,
            last_log_index: self.log.last_index(),
            last_log_term: self.log.last_term(),
            pre_vote: true,
            transfer: false,
        };
        let peers: Vec<NodeId> = self.peers().collect();
        for to in peers {
            self.send_persisted(to, Message::RequestVote(request.clone()));
        }
    }

    /// Asks peers whether they would vote, keeping the term and vote as they are.
    fn become_pre_candidate(&mut self, reason: &str) {
        assert_ne!(
            self.role,
            Role::Leader,
            "leader cannot become pre-candidate"
        );
        let previous = self.role;
        self.role = Role::PreCandidate;
        self.role_reason = reason.to_string();
        self.leader_id = None;
        self.votes.clear();
        self.votes.insert(self.id, true);
        self.reset_election_timer();
        // A node cut off retries every election timeout; only the first attempt is news.
        if previous == Role::PreCandidate {
            node_debug!(self, "pre-vote again: {reason}");
        } else {
            node_info!(self, "became pre-candidate (was {previous:?}): {reason}");
        }
    }

    /// Pre-vote receiver: "yes" only for a later term, a log at least as up to date as ours,
    /// and when no leader has been heard from recently. Nothing is persisted or changed.
    pub(super) fn handle_pre_vote_request(&mut self, from: NodeId, m: RequestVote) {
        let vote_granted = m.term > self.current_term
            && !self.heard_from_leader_recently()
            && self.log.is_up_to_date(m.last_log_index, m.last_log_term);
        node_debug!(
            self,
            "pre-vote for node {from} in term {}: {vote_granted}",
            m.term
        );
        let response = RequestVoteResponse {
            term: if vote_granted {
                m.term
            } else {
                self.current_term
            },
            vote_granted,
            pre_vote: true,
        };
        self.send_persisted(from, Message::RequestVoteResponse(response));
    }

    /// Counts a pre-vote; a quorum of "yes" starts the real election.
    pub(super) fn handle_pre_vote_response(&mut self, from: NodeId, m: RequestVoteResponse) {
        if self.role != Role::PreCandidate {
            return;
        }
        let current = m.vote_granted && m.term == self.current_term + 1;
        let refusal = !m.vote_granted && m.term == self.current_term;
        if !current && !refusal {
            return;
        }
        self.votes.insert(from, m.vote_granted);
        if self.votes_granted() >= self.quorum() {
            let voters: Vec<NodeId> = self.voters_granted();
            let reason = format!(
                "{}; pre-vote won with {}",
                self.role_reason,
                super::id_list(&voters)
            );
            self.request_votes(&reason, false);
            return;
        }
        let refused = self.votes.values().filter(|&&granted| !granted).count();
        if refused >= self.quorum() {
            let term = self.current_term;
            self.become_follower(term, None, "lost pre-vote: a quorum would not vote for it");
        }
    }

    fn voters_granted(&self) -> Vec<NodeId> {
        self.votes
            .iter()
            .filter(|(_, &granted)| granted)
            .map(|(&id, _)| id)
            .collect()
    }

    /// Leader's periodic checks: a quorum still in contact, and a transfer not stuck.
    pub(super) fn tick_leadership_checks(&mut self) {
        let period = self.config.election_timeout_max_ticks;
        if self.config.check_quorum {
            self.check_quorum_elapsed += 1;
            if self.check_quorum_elapsed >= period {
                self.check_quorum_elapsed = 0;
                self.check_quorum();
            }
        }
        if self.role == Role::Leader && self.lead_transferee.is_some() {
            self.transfer_elapsed += 1;
            if self.transfer_elapsed >= period {
                let to = self.lead_transferee.take().unwrap_or_default();
                self.role_reason = format!("transfer to node {to} timed out; leading again");
                node_info!(
                    self,
                    "leadership transfer to node {to} timed out after {period}ms"
                );
            }
        }
    }

    /// Ticks until `tick_leadership_checks` acts.
    pub(super) fn ticks_until_leadership_check(&self) -> u32 {
        let period = self.config.election_timeout_max_ticks;
        let mut left = u32::MAX;
        if self.config.check_quorum {
            left = period.saturating_sub(self.check_quorum_elapsed);
        }
        if self.lead_transferee.is_some() {
            left = left.min(period.saturating_sub(self.transfer_elapsed));
        }
        left
    }

    /// Steps down unless a quorum (this leader included) answered since the last check.
    fn check_quorum(&mut self) {
        let active = 1 + self.progress.values().filter(|p| p.recent_active).count();
        for pr in self.progress.values_mut() {
            pr.recent_active = false;
        }
        if active >= self.quorum() {
            return;
        }
        let term = self.current_term;
        let reason = format!(
            "lost quorum: heard from {active} of {} members in the last {}ms",
            self.config.voters.len(),
            self.config.election_timeout_max_ticks
        );
        self.become_follower(term, None, &reason);
    }

    /// Hands leadership to `to` (dissertation §3.10): proposals stop, `to` is brought up to
    /// date, then told to campaign at once.
    ///
    /// # Errors
    /// A message for the operator when this node cannot transfer to `to`.
    pub fn transfer_leader(&mut self, to: NodeId) -> Result<(), String> {
        if self.role != Role::Leader {
            let leader = self
                .leader_id
                .map_or("unknown".to_string(), |l| l.to_string());
            return Err(format!(
                "node {} is not the leader (leader: {leader})",
                self.id
            ));
        }
        if to == self.id {
            return Err(format!("node {to} is already the leader"));
        }
        if !self.config.voters.contains(&to) {
            return Err(format!("node {to} is not a member of the cluster"));
        }
        if self.lead_transferee != Some(to) {
            node_info!(self, "transferring leadership to node {to}");
            self.lead_transferee = Some(to);
            self.transfer_elapsed = 0;
            self.role_reason = format!("transferring leadership to node {to}");
        }
        self.maybe_send_timeout_now(to);
        self.send_appends_to(to);
        Ok(())
    }

    /// Tells the transfer target to campaign once its log matches ours.
    pub(super) fn maybe_send_timeout_now(&mut self, to: NodeId) {
        if self.lead_transferee != Some(to) {
            return;
        }
        let caught_up = self
            .progress
            .get(&to)
            .is_some_and(|pr| pr.match_index == self.log.last_index());
        if caught_up {
            let message = Message::TimeoutNow(TimeoutNow {
                term: self.current_term,
            });
            self.ready
                .messages
                .push(crate::core::Envelope { to, message });
        }
    }

    /// TimeoutNow receiver: campaign at once, skipping pre-vote, as the leader asked.
    pub(super) fn handle_timeout_now(&mut self, from: NodeId, m: TimeoutNow) {
        if m.term != self.current_term || self.role == Role::Leader {
            return;
        }
        let reason = format!("leadership transfer requested by node {from}");
        self.request_votes(&reason, true);
    }
}
