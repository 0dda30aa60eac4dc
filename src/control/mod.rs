//! The control protocol: one text command per line on a node's Unix socket, answered by zero or
//! more data lines and then one line that is either `ok` or `error: REASON`.
//!
//! The node speaks iptables' words for packet rules (`-A INPUT -s 2 -j DROP`, `-D ...`, `-F`,
//! `-L`, `-S`) and a few friendly verbs that translate into the same rules (`block`, `unblock`,
//! `isolate`, `heal`, `rules`), plus `status`, `campaign` and `help`. `raftnode ctl` sends the
//! same lines, so `socat`, `nc -U` and the CLI see one vocabulary.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::core::NodeId;
use crate::net::rules::{parse_rule_command, Chain, Rule, RuleCommand, RuleSet, Target};

/// Longest control line accepted; a longer one is an error and the connection is closed.
pub const MAX_LINE: usize = 4096;

/// Which direction a friendly `block`/`unblock` touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Datagrams from the peers (`--in`).
    In,
    /// Datagrams to the peers (`--out`).
    Out,
    /// Both (the default).
    Both,
}

/// A parsed control line.
#[derive(Debug, Clone, PartialEq)]
pub enum ControlCommand {
    /// `status` (JSON on one line).
    Status,
    /// An iptables-style rule command.
    Rule(RuleCommand),
    /// `block [--in|--out] PEER...`
    Block(Direction, Vec<NodeId>),
    /// `unblock [--in|--out] PEER...`
    Unblock(Direction, Vec<NodeId>),
    /// `isolate`: drop every datagram from and to every peer.
    Isolate,
    /// `heal`: remove every rule.
    Heal,
    /// `rules`: list the rules.
    Rules,
    /// `campaign`: fire this node's election timeout now.
    Campaign,
    /// `snapshot`: take a snapshot now and compact the log behind it.
    Snapshot,
    /// `transfer-leader PEER`: hand leadership to PEER.
    TransferLeader(NodeId),
    /// `help`: list the commands.
    Help,
}

/// Text of the `help` reply.
pub const HELP: &str = "\
status [--json]                 this node's state (the socket always answers JSON;
                                raftnode ctl formats it unless given --json)
block [--in|--out] PEER...      drop datagrams from/to peers (both ways by default)
unblock [--in|--out] PEER...    remove those rules
isolate                         drop datagrams from and to every peer
heal                            remove every rule
rules                           list the rules (as -S does, or say there are none)
campaign                        start an election now
snapshot                        take a snapshot now and compact the log
transfer-leader PEER            hand leadership to PEER (on the leader)
-A|-I|-D INPUT|OUTPUT [-s ID|-d ID] [-m statistic --mode random --probability P] -j DROP|ACCEPT
-F [CHAIN]   -L [CHAIN]   -S [CHAIN]
help                            this text";

/// Parses one control line.
///
/// # Errors
/// A message naming what was wrong with the line.
pub fn parse_command(line: &str) -> Result<ControlCommand, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let Some((&verb, args)) = words.split_first() else {
        return Err("empty command (try 'help')".to_string());
    };
    let no_args = |cmd: ControlCommand| {
        if args.is_empty() {
            Ok(cmd)
        } else {
            Err(format!("'{verb}' takes no arguments"))
        }
    };
    match verb {
        "status" if args == ["--json"] => Ok(ControlCommand::Status),
        "status" => no_args(ControlCommand::Status),
        "block" => parse_peers(verb, args).map(|(d, p)| ControlCommand::Block(d, p)),
        "unblock" => parse_peers(verb, args).map(|(d, p)| ControlCommand::Unblock(d, p)),
        "isolate" => no_args(ControlCommand::Isolate),
        "heal" => no_args(ControlCommand::Heal),
        "rules" => no_args(ControlCommand::Rules),
        "campaign" => no_args(ControlCommand::Campaign),
        "snapshot" => no_args(ControlCommand::Snapshot),
        "transfer-leader" => match args {
            [peer] => peer
                .parse()
                .map(ControlCommand::TransferLeader)
                .map_err(|_| format!("'{peer}' is not a node id")),
            _ => Err("transfer-leader takes one peer id".to_string()),
        },
        "help" => no_args(ControlCommand::Help),
        v if v.starts_with('-') || v == "iptables" => parse_rule_command(&words)
            .map(ControlCommand::Rule)
            .map_err(|e| e.to_string()),
        _ => Err(format!("unknown command '{verb}' (try 'help')")),
    }
}

fn parse_peers(verb: &str, args: &[&str]) -> Result<(Direction, Vec<NodeId>), String> {
    let mut direction = Direction::Both;
    let mut peers = Vec::new();
    for &arg in args {
        match arg {
            "--in" if direction == Direction::Both => direction = Direction::In,
            "--out" if direction == Direction::Both => direction = Direction::Out,
            "--in" | "--out" => return Err("give at most one of --in and --out".to_string()),
            _ => {
                let peer: NodeId = arg
                    .parse()
                    .map_err(|_| format!("'{arg}' is not a node id"))?;
                peers.push(peer);
            }
        }
    }
    if peers.is_empty() {
        return Err(format!("'{verb}' needs at least one peer id"));
    }
    Ok((direction, peers))
}

fn drop_rule(chain: Chain, peer: Option<NodeId>) -> Rule {
    Rule {
        chain,
        peer,
        probability: None,
        target: Target::Drop,
    }
}

fn chains(direction: Direction) -> &'static [Chain] {
    match direction {
        Direction::In => &[Chain::Input],
        Direction::Out => &[Chain::Output],
        Direction::Both => &[Chain::Input, Chain::Output],
    }
}

/// The peers a command names, to be checked against the membership.
fn named_peers(command: &ControlCommand) -> Vec<NodeId> {
    match command {
        ControlCommand::Block(_, peers) | ControlCommand::Unblock(_, peers) => peers.clone(),
        ControlCommand::Rule(
            RuleCommand::Append(rule) | RuleCommand::Insert(rule) | RuleCommand::Delete(rule),
        ) => rule.peer.into_iter().collect(),
        _ => Vec::new(),
    }
}

/// Carries out a rule-changing command on `rules` and returns the reply lines, which list the
/// rules that now hold. Friendly verbs are idempotent: blocking twice adds one rule. `peers`
/// are this node's peers: a rule naming anything else could never match, so it is refused.
///
/// # Errors
/// A named node that is not a peer, or the rule set's refusal (e.g. deleting a rule that does
/// not exist).
pub fn apply_rules(
    rules: &mut RuleSet,
    peers: &[NodeId],
    command: ControlCommand,
) -> Result<Vec<String>, String> {
    if let Some(bad) = named_peers(&command)
        .into_iter()
        .find(|p| !peers.contains(p))
    {
        return Err(format!(
            "node {bad} is not a peer of this node (peers: {peers:?})"
        ));
    }
    let err = |e: crate::net::rules::RuleError| e.to_string();
    match command {
        ControlCommand::Rule(cmd @ RuleCommand::List(_)) => return rules.apply(cmd).map_err(err),
        ControlCommand::Rule(cmd) => {
            rules.apply(cmd).map_err(err)?;
        }
        ControlCommand::Block(direction, peers) => {
            for &chain in chains(direction) {
                for &peer in &peers {
                    let rule = drop_rule(chain, Some(peer));
                    if !rules.rules().contains(&rule) {
                        rules.apply(RuleCommand::Append(rule)).map_err(err)?;
                    }
                }
            }
        }
        ControlCommand::Unblock(direction, peers) => {
            for &chain in chains(direction) {
                for &peer in &peers {
                    let rule = drop_rule(chain, Some(peer));
                    while rules.rules().contains(&rule) {
                        rules
                            .apply(RuleCommand::Delete(rule.clone()))
                            .map_err(err)?;
                    }
                }
            }
        }
        ControlCommand::Isolate => {
            for chain in [Chain::Input, Chain::Output] {
                let rule = drop_rule(chain, None);
                if !rules.rules().contains(&rule) {
                    rules.apply(RuleCommand::Append(rule)).map_err(err)?;
                }
            }
        }
        ControlCommand::Heal => {
            rules.apply(RuleCommand::Flush(None)).map_err(err)?;
        }
        ControlCommand::Rules => {}
        other => panic!("apply_rules given a non-rule command {other:?}"),
    }
    Ok(describe_rules(rules))
}

/// The reply lines that say what rules hold now.
pub fn describe_rules(rules: &RuleSet) -> Vec<String> {
    if rules.is_empty() {
        return vec!["no rules: every link is open".to_string()];
    }
    rules.rules().iter().map(ToString::to_string).collect()
}

/// The client side: sends `line` to the control socket at `path` and returns the data lines
/// of a successful reply.
///
/// # Errors
/// A message saying why the node could not be reached, or the node's `error:` text.
pub fn request(path: &Path, line: &str, timeout: Duration) -> Result<Vec<String>, String> {
    let mut stream = UnixStream::connect(path).map_err(|e| {
        format!(
            "cannot reach the node's control socket {}: {e} (is the node running?)",
            path.display()
        )
    })?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| format!("control socket: {e}"))?;
    stream
        .write_all(format!("{line}\n").as_bytes())
        .map_err(|e| format!("sending to the control socket: {e}"))?;
    let mut lines = Vec::new();
    for reply in BufReader::new(stream).lines() {
        let reply = reply.map_err(|e| format!("reading the node's reply: {e}"))?;
        if reply == "ok" {
            return Ok(lines);
        }
        if let Some(reason) = reply.strip_prefix("error: ") {
            return Err(reason.to_string());
        }
        lines.push(reply);
    }
    Err("the node closed the control connection without an answer".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_friendly_verbs() {
        assert_eq!(parse_command("status --json"), Ok(ControlCommand::Status));
        assert_eq!(
            parse_command("block --in 2 3"),
            Ok(ControlCommand::Block(Direction::In, vec![2, 3]))
        );
        assert!(parse_command("block").is_err());
        assert!(parse_command("block --in --out 2").is_err());
        assert!(parse_command("block two").unwrap_err().contains("'two'"));
        assert!(parse_command("frobnicate")
            .unwrap_err()
            .contains("unknown command"));
        assert!(parse_command("heal now").is_err());
        assert_eq!(
            parse_command("transfer-leader 3"),
            Ok(ControlCommand::TransferLeader(3))
        );
        assert!(parse_command("transfer-leader").is_err());
        assert!(parse_command("transfer-leader x").is_err());
        assert!(parse_command("").is_err());
        assert!(matches!(
            parse_command("-A INPUT -s 2 -j DROP"),
            Ok(ControlCommand::Rule(_))
        ));
        assert!(parse_command("-A INPUT -s").is_err());
    }

    #[test]
    fn friendly_verbs_become_rules_idempotently() {
        let mut rules = RuleSet::new();
        let both = ControlCommand::Block(Direction::Both, vec![2]);
        apply_rules(&mut rules, &[2, 3], both.clone()).unwrap();
        let lines = apply_rules(&mut rules, &[2, 3], both).unwrap();
        assert_eq!(
            lines,
            vec!["-A INPUT -s 2 -j DROP", "-A OUTPUT -d 2 -j DROP"]
        );
        let lines = apply_rules(
            &mut rules,
            &[2, 3],
            ControlCommand::Unblock(Direction::In, vec![2]),
        )
        .unwrap();
        assert_eq!(lines, vec!["-A OUTPUT -d 2 -j DROP"]);
        apply_rules(&mut rules, &[2, 3], ControlCommand::Isolate).unwrap();
        assert_eq!(rules.rules().len(), 3);
        let lines = apply_rules(&mut rules, &[2, 3], ControlCommand::Heal).unwrap();
        assert_eq!(lines, vec!["no rules: every link is open"]);
        let own = ControlCommand::Block(Direction::Both, vec![1]);
        assert!(apply_rules(&mut rules, &[2, 3], own)
            .unwrap_err()
            .contains("not a peer"));
    }
}
