//! iptables-style packet filter rules, used to partition the cluster by hand.
//!
//! An operator types lines such as `-A INPUT -s 2 -j DROP` on the control socket. This module
//! parses them ([`parse_rule_command`]), keeps the ordered rule table ([`RuleSet`]) and decides,
//! for each datagram, whether it passes ([`RuleSet::verdict`]). The words are iptables' own
//! because the people who partition networks already know them; only the parts that mean
//! something between Raft nodes are kept: two chains, one peer match per rule, the random
//! `statistic` match and the DROP and ACCEPT targets.
//!
//! Nothing here does IO or draws random numbers: the caller supplies the draws, so a test can
//! script exactly which datagrams a lossy rule drops.

use std::fmt;

use serde::Serialize;

use crate::core::message::NodeId;

/// Most rules a [`RuleSet`] holds, so a runaway script cannot grow the table without end.
pub const MAX_RULES: usize = 1024;

/// Which way a datagram travels, as seen from this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Chain {
    /// Datagrams arriving from a peer; a rule names the peer with `-s`.
    Input,
    /// Datagrams about to be sent to a peer; a rule names the peer with `-d`.
    Output,
}

impl Chain {
    /// The flag that names the peer in a rule of this chain.
    fn peer_flag(self) -> &'static str {
        match self {
            Chain::Input => "-s",
            Chain::Output => "-d",
        }
    }
}

impl fmt::Display for Chain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Chain::Input => "INPUT",
            Chain::Output => "OUTPUT",
        })
    }
}

/// What happens to a datagram that matches a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Target {
    /// Discard the datagram silently, as a broken link would.
    Drop,
    /// Let the datagram through and stop looking at later rules.
    Accept,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Target::Drop => "DROP",
            Target::Accept => "ACCEPT",
        })
    }
}

/// One line of the rule table.
///
/// Displays in the form `iptables -S` prints, e.g. `-A INPUT -s 2 -j DROP`, which
/// [`parse_rule_command`] reads back as the same rule.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rule {
    /// The chain the rule sits in.
    pub chain: Chain,
    /// The peer the rule applies to: the sender on INPUT, the receiver on OUTPUT. `None` matches
    /// every peer.
    pub peer: Option<NodeId>,
    /// Chance, within `0..=1`, that the rule matches a datagram its chain and peer already
    /// match. `None` means it always does.
    pub probability: Option<f64>,
    /// The verdict for a datagram the rule matches.
    pub target: Target,
}

impl Rule {
    /// Whether this rule matches a datagram on `chain` from or to `peer`.
    ///
    /// `draw` is called only when chain and peer match and the rule has a probability, so a
    /// scripted sequence of draws lines up with the rules that use them.
    fn matches(&self, chain: Chain, peer: NodeId, draw: &mut dyn FnMut() -> f64) -> bool {
        if self.chain != chain || self.peer.is_some_and(|p| p != peer) {
            return false;
        }
        let Some(probability) = self.probability else {
            return true;
        };
        let sample = draw();
        assert!(
            (0.0..1.0).contains(&sample),
            "random draw {sample} is outside [0, 1)"
        );
        sample < probability
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "-A {}", self.chain)?;
        if let Some(peer) = self.peer {
            write!(f, " {} {peer}", self.chain.peer_flag())?;
        }
        // f64's Display prints the shortest text that parses back to the same value, and never
        // an exponent, so the line round-trips through the parser.
        if let Some(probability) = self.probability {
            write!(f, " -m statistic --mode random --probability {probability}")?;
        }
        write!(f, " -j {}", self.target)
    }
}

/// One parsed operator command.
#[derive(Debug, Clone, PartialEq)]
pub enum RuleCommand {
    /// `-A`: add the rule at the end of the table.
    Append(Rule),
    /// `-I`: add the rule at the front of the table, so it is consulted first.
    Insert(Rule),
    /// `-D`: remove the first rule identical to this one.
    Delete(Rule),
    /// `-F`: remove every rule of one chain, or of both when `None`.
    Flush(Option<Chain>),
    /// `-L` or `-S`: show the rules of one chain, or of both when `None`.
    List(Option<Chain>),
}

/// Why an operator's command was refused; the message names the offending word.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError(pub String);

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RuleError {}

/// Shorthand for a failed parse or apply with the given message.
fn refuse<T>(message: impl Into<String>) -> Result<T, RuleError> {
    Err(RuleError(message.into()))
}

/// Parses one command line, already split on whitespace, such as
/// `["-A", "INPUT", "-s", "2", "-j", "DROP"]`. A leading `iptables` word is skipped.
///
/// # Errors
///
/// Returns a [`RuleError`] naming the problem for an unknown word, a missing or malformed value,
/// a repeated option, a peer flag on the wrong chain, an incomplete `-m statistic` match or a
/// rule without `-j`.
pub fn parse_rule_command(words: &[&str]) -> Result<RuleCommand, RuleError> {
    let words = match words.split_first() {
        Some((first, rest)) if first.eq_ignore_ascii_case("iptables") => rest,
        _ => words,
    };
    let mut cursor = Cursor { words, pos: 0 };
    let mut draft = Draft::default();
    while let Some(word) = cursor.take() {
        draft.take(word, &mut cursor)?;
    }
    draft.finish()
}

/// The command word of a line, with the chain it names.
#[derive(Debug, Clone, Copy)]
enum Verb {
    Append(Chain),
    Insert(Chain),
    Delete(Chain),
    Flush(Option<Chain>),
    List(Option<Chain>),
}

/// Walks the words of a line, handing out option values.
struct Cursor<'w> {
    words: &'w [&'w str],
    pos: usize,
}

impl<'w> Cursor<'w> {
    /// The next word, whatever it is.
    fn take(&mut self) -> Option<&'w str> {
        let word = self.words.get(self.pos).copied()?;
        self.pos += 1;
        Some(word)
    }

    /// The next word if it is a value rather than an option; otherwise nothing is consumed, so
    /// `-s -j DROP` reports the missing id instead of calling `-j` a bad one.
    fn take_value(&mut self) -> Option<&'w str> {
        let word = self.words.get(self.pos).copied()?;
        if looks_like_option(word) {
            return None;
        }
        self.pos += 1;
        Some(word)
    }

    /// The value that must follow `flag`.
    fn value_after(&mut self, flag: &str) -> Result<&'w str, RuleError> {
        match self.take_value() {
            Some(value) => Ok(value),
            None => refuse(format!("missing value after {flag}")),
        }
    }

    /// The chain that must follow `flag` (`-A`, `-I`, `-D`).
    fn chain_after(&mut self, flag: &str) -> Result<Chain, RuleError> {
        match self.take_value() {
            Some(word) => parse_chain(word),
            None => refuse(format!("missing chain after {flag}")),
        }
    }

    /// The chain that may follow `-F`, `-L` or `-S`.
    fn optional_chain(&mut self) -> Result<Option<Chain>, RuleError> {
        self.take_value().map(parse_chain).transpose()
    }
}

/// Whether `word` is an option such as `-s` or `--source`; `-5` and `-0.5` count as values, so
/// the value parsers can say what is wrong with them.
fn looks_like_option(word: &str) -> bool {
    let mut chars = word.chars();
    chars.next() == Some('-')
        && chars
            .next()
            .is_some_and(|c| !c.is_ascii_digit() && c != '.')
}

/// Everything seen so far on a line; [`Draft::finish`] checks that it forms a command.
#[derive(Default)]
struct Draft<'w> {
    /// The command and the word that named it, for error messages.
    verb: Option<(Verb, &'w str)>,
    source: Option<NodeId>,
    destination: Option<NodeId>,
    /// `-m statistic` was given, which unlocks `--mode` and `--probability`.
    statistic: bool,
    mode_random: bool,
    probability: Option<f64>,
    target: Option<Target>,
    /// The first option that only makes sense in a rule, to name it if the command is -F or -L.
    rule_option: Option<&'w str>,
}

impl<'w> Draft<'w> {
    /// Consumes `word` and any value it takes from `cursor`.
    fn take(&mut self, word: &'w str, cursor: &mut Cursor<'w>) -> Result<(), RuleError> {
        let verb = match word {
            "-A" | "--append" => Verb::Append(cursor.chain_after(word)?),
            "-I" | "--insert" => Verb::Insert(cursor.chain_after(word)?),
            "-D" | "--delete" => Verb::Delete(cursor.chain_after(word)?),
            "-F" | "--flush" => Verb::Flush(cursor.optional_chain()?),
            "-L" | "--list" | "-S" | "--list-rules" => Verb::List(cursor.optional_chain()?),
            _ => {
                self.rule_option.get_or_insert(word);
                return self.take_rule_option(word, cursor);
            }
        };
        if let Some((_, earlier)) = self.verb {
            return refuse(format!("more than one command: {earlier} and {word}"));
        }
        self.verb = Some((verb, word));
        Ok(())
    }

    /// Consumes a match or target option.
    fn take_rule_option(
        &mut self,
        word: &'w str,
        cursor: &mut Cursor<'w>,
    ) -> Result<(), RuleError> {
        match word {
            "-s" | "--source" => {
                let id = parse_node_id(cursor.value_after(word)?)?;
                set_once(&mut self.source, id, word)
            }
            "-d" | "--destination" => {
                let id = parse_node_id(cursor.value_after(word)?)?;
                set_once(&mut self.destination, id, word)
            }
            "-m" | "--match" => self.take_match_module(word, cursor.value_after(word)?),
            "--mode" => self.take_mode(word, cursor.value_after(word)?),
            "--probability" => self.take_probability(word, cursor.value_after(word)?),
            "-j" | "--jump" => {
                let target = parse_target(cursor.value_after(word)?)?;
                set_once(&mut self.target, target, word)
            }
            _ if word.starts_with('-') => refuse(format!("unknown option '{word}'")),
            _ => refuse(format!("unexpected word '{word}'")),
        }
    }

    /// Handles `-m MODULE`; only `statistic` exists here.
    fn take_match_module(&mut self, flag: &str, module: &str) -> Result<(), RuleError> {
        if module != "statistic" {
            return refuse(format!(
                "unknown match module '{module}' (only 'statistic' is supported)"
            ));
        }
        if self.statistic {
            return refuse(format!("duplicate option '{flag} statistic'"));
        }
        self.statistic = true;
        Ok(())
    }

    /// Handles `--mode MODE`; only `random` exists here.
    fn take_mode(&mut self, flag: &str, mode: &str) -> Result<(), RuleError> {
        self.require_statistic(flag)?;
        if mode != "random" {
            return refuse(format!(
                "unknown statistic mode '{mode}' (only 'random' is supported)"
            ));
        }
        if self.mode_random {
            return refuse(format!("duplicate option '{flag}'"));
        }
        self.mode_random = true;
        Ok(())
    }

    /// Handles `--probability P`.
    fn take_probability(&mut self, flag: &str, text: &str) -> Result<(), RuleError> {
        self.require_statistic(flag)?;
        let probability = parse_probability(text)?;
        set_once(&mut self.probability, probability, flag)
    }

    /// iptables only knows the statistic options once `-m statistic` has loaded them, and
    /// mirroring that keeps a typo like `--probabilty` from looking half-valid.
    fn require_statistic(&self, flag: &str) -> Result<(), RuleError> {
        if self.statistic {
            Ok(())
        } else {
            refuse(format!("{flag} needs '-m statistic' before it"))
        }
    }

    /// Checks the whole line and builds the command.
    fn finish(self) -> Result<RuleCommand, RuleError> {
        let Some((verb, verb_word)) = self.verb else {
            return refuse("missing command (one of -A, -I, -D, -F, -L, -S)");
        };
        match verb {
            Verb::Append(chain) => self.into_rule(chain).map(RuleCommand::Append),
            Verb::Insert(chain) => self.into_rule(chain).map(RuleCommand::Insert),
            Verb::Delete(chain) => self.into_rule(chain).map(RuleCommand::Delete),
            Verb::Flush(chain) => self
                .without_rule(verb_word)
                .map(|()| RuleCommand::Flush(chain)),
            Verb::List(chain) => self
                .without_rule(verb_word)
                .map(|()| RuleCommand::List(chain)),
        }
    }

    /// Builds the rule of an -A, -I or -D line.
    fn into_rule(self, chain: Chain) -> Result<Rule, RuleError> {
        let peer = self.peer_for(chain)?;
        let probability = self.statistic_probability()?;
        let Some(target) = self.target else {
            return refuse("missing -j TARGET (DROP or ACCEPT)");
        };
        Ok(Rule {
            chain,
            peer,
            probability,
            target,
        })
    }

    /// The peer match, refusing the flag that belongs to the other chain.
    fn peer_for(&self, chain: Chain) -> Result<Option<NodeId>, RuleError> {
        match chain {
            Chain::Input if self.destination.is_some() => {
                refuse("-d only applies to OUTPUT (use -s for INPUT)")
            }
            Chain::Output if self.source.is_some() => {
                refuse("-s only applies to INPUT (use -d for OUTPUT)")
            }
            Chain::Input => Ok(self.source),
            Chain::Output => Ok(self.destination),
        }
    }

    /// The probability of a complete `-m statistic --mode random --probability P` match.
    fn statistic_probability(&self) -> Result<Option<f64>, RuleError> {
        if !self.statistic {
            return Ok(None);
        }
        if !self.mode_random {
            return refuse("-m statistic needs --mode random");
        }
        match self.probability {
            Some(probability) => Ok(Some(probability)),
            None => refuse("-m statistic needs --probability P"),
        }
    }

    /// -F and -L take no rule, so any match or target on their line is a mistake.
    fn without_rule(&self, verb_word: &str) -> Result<(), RuleError> {
        match self.rule_option {
            Some(option) => refuse(format!("'{option}' cannot be used with {verb_word}")),
            None => Ok(()),
        }
    }
}

/// Stores `value` unless `slot` already holds one from an earlier `flag`.
fn set_once<V>(slot: &mut Option<V>, value: V, flag: &str) -> Result<(), RuleError> {
    if slot.is_some() {
        return refuse(format!("duplicate option '{flag}'"));
    }
    *slot = Some(value);
    Ok(())
}

/// Reads a chain name, in any letter case as iptables users often type it.
fn parse_chain(word: &str) -> Result<Chain, RuleError> {
    if word.eq_ignore_ascii_case("INPUT") {
        Ok(Chain::Input)
    } else if word.eq_ignore_ascii_case("OUTPUT") {
        Ok(Chain::Output)
    } else {
        refuse(format!("unknown chain '{word}' (expected INPUT or OUTPUT)"))
    }
}

/// Reads a target name, in any letter case.
fn parse_target(word: &str) -> Result<Target, RuleError> {
    if word.eq_ignore_ascii_case("DROP") {
        Ok(Target::Drop)
    } else if word.eq_ignore_ascii_case("ACCEPT") {
        Ok(Target::Accept)
    } else {
        refuse(format!("unknown target '{word}' (expected DROP or ACCEPT)"))
    }
}

/// Reads a peer's node id.
fn parse_node_id(word: &str) -> Result<NodeId, RuleError> {
    match word.parse() {
        Ok(id) => Ok(id),
        Err(_) => refuse(format!("node id '{word}' is not a number")),
    }
}

/// Reads the value of `--probability`, which must lie within `0..=1`.
fn parse_probability(word: &str) -> Result<f64, RuleError> {
    let Ok(probability) = word.parse::<f64>() else {
        return refuse(format!("probability '{word}' is not a number"));
    };
    // The range check also turns away NaN, which compares false with everything.
    if !(0.0..=1.0).contains(&probability) {
        return refuse(format!("probability {word} is outside 0..=1"));
    }
    Ok(probability)
}

/// The ordered rule table of one node. The first rule that matches a datagram decides it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuleSet {
    /// Rules in the order they are consulted; never longer than [`MAX_RULES`].
    rules: Vec<Rule>,
}

impl RuleSet {
    /// An empty table, which accepts everything.
    pub fn new() -> Self {
        Self::default()
    }

    /// Carries out one command. List returns one line per rule in `iptables -S` form; the other
    /// commands return an empty vec.
    ///
    /// # Errors
    ///
    /// Delete fails when no identical rule exists; Append and Insert fail when the table already
    /// holds [`MAX_RULES`] rules.
    pub fn apply(&mut self, cmd: RuleCommand) -> Result<Vec<String>, RuleError> {
        match cmd {
            RuleCommand::Append(rule) => self.add(self.rules.len(), rule),
            RuleCommand::Insert(rule) => self.add(0, rule),
            RuleCommand::Delete(rule) => self.delete(&rule),
            RuleCommand::Flush(chain) => {
                self.rules.retain(|rule| !in_chain(rule, chain));
                Ok(Vec::new())
            }
            RuleCommand::List(chain) => Ok(self
                .rules
                .iter()
                .filter(|rule| in_chain(rule, chain))
                .map(Rule::to_string)
                .collect()),
        }
    }

    /// Puts `rule` at `index`, unless the table is full.
    fn add(&mut self, index: usize, rule: Rule) -> Result<Vec<String>, RuleError> {
        if self.rules.len() >= MAX_RULES {
            return refuse(format!("rule table is full ({MAX_RULES} rules)"));
        }
        self.rules.insert(index, rule);
        Ok(Vec::new())
    }

    /// Removes the first rule equal to `rule`.
    fn delete(&mut self, rule: &Rule) -> Result<Vec<String>, RuleError> {
        match self.rules.iter().position(|r| r == rule) {
            Some(index) => {
                self.rules.remove(index);
                Ok(Vec::new())
            }
            None => refuse(format!("no such rule: {rule}")),
        }
    }

    /// The rules in the order they are consulted.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Whether the table has no rules, so every datagram passes.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Decides whether a datagram from `peer` (on [`Chain::Input`]) or to `peer` (on
    /// [`Chain::Output`]) passes. The first matching rule wins; with none, the datagram is
    /// accepted.
    ///
    /// `draw` must return a fresh uniform sample in `[0, 1)` on each call. It is called once for
    /// each rule that has a probability and whose chain and peer match, and such a rule matches
    /// when the sample is below its probability.
    ///
    /// # Panics
    ///
    /// If `draw` returns a value outside `[0, 1)`, which is a bug in the caller.
    pub fn verdict(&self, chain: Chain, peer: NodeId, draw: &mut dyn FnMut() -> f64) -> Target {
        self.rules
            .iter()
            .find(|rule| rule.matches(chain, peer, &mut *draw))
            .map_or(Target::Accept, |rule| rule.target)
    }
}

/// Whether `rule` is selected by a chain argument, where `None` selects both chains.
fn in_chain(rule: &Rule, chain: Option<Chain>) -> bool {
    match chain {
        Some(chain) => rule.chain == chain,
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<RuleCommand, RuleError> {
        let words: Vec<&str> = line.split_whitespace().collect();
        parse_rule_command(&words)
    }

    fn rule(chain: Chain, peer: Option<NodeId>, probability: Option<f64>, target: Target) -> Rule {
        Rule {
            chain,
            peer,
            probability,
            target,
        }
    }

    fn set_of(lines: &[&str]) -> RuleSet {
        let mut set = RuleSet::new();
        for line in lines {
            set.apply(parse(line).unwrap()).unwrap();
        }
        set
    }

    /// A draw closure that never gets called, for rule sets without probabilities.
    fn no_draw() -> impl FnMut() -> f64 {
        || panic!("no rule here has a probability")
    }

    #[test]
    fn parses_append_insert_delete_short_and_long() {
        let drop_from_2 = rule(Chain::Input, Some(2), None, Target::Drop);
        let cases = [
            (
                "-A INPUT -s 2 -j DROP",
                RuleCommand::Append(drop_from_2.clone()),
            ),
            (
                "--append INPUT --source 2 --jump DROP",
                RuleCommand::Append(drop_from_2.clone()),
            ),
            (
                "-I INPUT -s 2 -j DROP",
                RuleCommand::Insert(drop_from_2.clone()),
            ),
            (
                "--insert INPUT -s 2 -j DROP",
                RuleCommand::Insert(drop_from_2.clone()),
            ),
            (
                "-D INPUT -s 2 -j DROP",
                RuleCommand::Delete(drop_from_2.clone()),
            ),
            (
                "--delete INPUT -s 2 -j DROP",
                RuleCommand::Delete(drop_from_2.clone()),
            ),
            (
                "iptables -A INPUT -s 2 -j DROP",
                RuleCommand::Append(drop_from_2.clone()),
            ),
            ("-A input -s 2 -j drop", RuleCommand::Append(drop_from_2)),
        ];
        for (line, expected) in cases {
            assert_eq!(parse(line), Ok(expected), "{line}");
        }
    }

    #[test]
    fn parses_output_any_peer_and_statistic() {
        assert_eq!(
            parse("-A OUTPUT --destination 3 -j ACCEPT"),
            Ok(RuleCommand::Append(rule(
                Chain::Output,
                Some(3),
                None,
                Target::Accept
            )))
        );
        assert_eq!(
            parse("-A OUTPUT -j DROP"),
            Ok(RuleCommand::Append(rule(
                Chain::Output,
                None,
                None,
                Target::Drop
            )))
        );
        assert_eq!(
            parse("-A OUTPUT -d 3 -m statistic --mode random --probability 0.3 -j DROP"),
            Ok(RuleCommand::Append(rule(
                Chain::Output,
                Some(3),
                Some(0.3),
                Target::Drop
            )))
        );
        // Options may come in any order, as iptables allows.
        assert_eq!(
            parse("-j DROP --match statistic --probability 1 --mode random -A INPUT"),
            Ok(RuleCommand::Append(rule(
                Chain::Input,
                None,
                Some(1.0),
                Target::Drop
            )))
        );
    }

    #[test]
    fn parses_flush_and_list() {
        let cases = [
            ("-F", RuleCommand::Flush(None)),
            ("--flush", RuleCommand::Flush(None)),
            ("-F OUTPUT", RuleCommand::Flush(Some(Chain::Output))),
            (
                "iptables --flush input",
                RuleCommand::Flush(Some(Chain::Input)),
            ),
            ("-L", RuleCommand::List(None)),
            ("--list INPUT", RuleCommand::List(Some(Chain::Input))),
            ("-S", RuleCommand::List(None)),
            (
                "--list-rules OUTPUT",
                RuleCommand::List(Some(Chain::Output)),
            ),
        ];
        for (line, expected) in cases {
            assert_eq!(parse(line), Ok(expected), "{line}");
        }
    }

    #[test]
    fn reports_each_error_by_name() {
        let cases = [
            ("", "missing command (one of -A, -I, -D, -F, -L, -S)"),
            (
                "iptables",
                "missing command (one of -A, -I, -D, -F, -L, -S)",
            ),
            ("-A INPUT -x 2 -j DROP", "unknown option '-x'"),
            ("-A INPUT bogus -j DROP", "unexpected word 'bogus'"),
            ("-A INPUT -s", "missing value after -s"),
            ("-A INPUT -s -j DROP", "missing value after -s"),
            ("-A INPUT -s abc -j DROP", "node id 'abc' is not a number"),
            ("-A INPUT -s -4 -j DROP", "node id '-4' is not a number"),
            (
                "-A OUTPUT -s 2 -j DROP",
                "-s only applies to INPUT (use -d for OUTPUT)",
            ),
            (
                "-A INPUT -d 2 -j DROP",
                "-d only applies to OUTPUT (use -s for INPUT)",
            ),
            ("-A", "missing chain after -A"),
            ("--insert -j DROP", "missing chain after --insert"),
            (
                "-A FORWARD -j DROP",
                "unknown chain 'FORWARD' (expected INPUT or OUTPUT)",
            ),
            ("-F nat", "unknown chain 'nat' (expected INPUT or OUTPUT)"),
            ("-A INPUT -s 2", "missing -j TARGET (DROP or ACCEPT)"),
            ("-A INPUT -j", "missing value after -j"),
            (
                "-A INPUT -j REJECT",
                "unknown target 'REJECT' (expected DROP or ACCEPT)",
            ),
            ("-A INPUT -s 1 -s 2 -j DROP", "duplicate option '-s'"),
            (
                "-A INPUT -s 1 --source 2 -j DROP",
                "duplicate option '--source'",
            ),
            ("-A OUTPUT -d 1 -d 2 -j DROP", "duplicate option '-d'"),
            ("-A INPUT -j DROP -j ACCEPT", "duplicate option '-j'"),
            (
                "-A INPUT -D INPUT -j DROP",
                "more than one command: -A and -D",
            ),
            (
                "-A INPUT -m conntrack -j DROP",
                "unknown match module 'conntrack' (only 'statistic' is supported)",
            ),
            (
                "-A INPUT -m statistic -m statistic --mode random --probability 0.5 -j DROP",
                "duplicate option '-m statistic'",
            ),
            (
                "-A INPUT --probability 0.5 -j DROP",
                "--probability needs '-m statistic' before it",
            ),
            (
                "-A INPUT --mode random -j DROP",
                "--mode needs '-m statistic' before it",
            ),
            (
                "-A INPUT -m statistic --mode nth -j DROP",
                "unknown statistic mode 'nth' (only 'random' is supported)",
            ),
            (
                "-A INPUT -m statistic --mode random --mode random --probability 0.5 -j DROP",
                "duplicate option '--mode'",
            ),
            (
                "-A INPUT -m statistic --probability 0.5 -j DROP",
                "-m statistic needs --mode random",
            ),
            (
                "-A INPUT -m statistic --mode random -j DROP",
                "-m statistic needs --probability P",
            ),
            (
                "-A INPUT -m statistic --mode random --probability 1.5 -j DROP",
                "probability 1.5 is outside 0..=1",
            ),
            (
                "-A INPUT -m statistic --mode random --probability -0.5 -j DROP",
                "probability -0.5 is outside 0..=1",
            ),
            (
                "-A INPUT -m statistic --mode random --probability NaN -j DROP",
                "probability NaN is outside 0..=1",
            ),
            (
                "-A INPUT -m statistic --mode random --probability half -j DROP",
                "probability 'half' is not a number",
            ),
            (
                "-A INPUT -m statistic --mode random --probability 0.1 --probability 0.2 -j DROP",
                "duplicate option '--probability'",
            ),
            ("-A INPUT -m", "missing value after -m"),
            ("-F INPUT -j DROP", "'-j' cannot be used with -F"),
            ("-L -s 2", "'-s' cannot be used with -L"),
            (
                "--list-rules OUTPUT -d 2",
                "'-d' cannot be used with --list-rules",
            ),
        ];
        for (line, message) in cases {
            assert_eq!(parse(line), Err(RuleError(message.to_string())), "{line}");
        }
    }

    #[test]
    fn error_displays_its_message() {
        let error = parse("-A INPUT -x").unwrap_err();
        assert_eq!(error.to_string(), "unknown option '-x'");
        let boxed: Box<dyn std::error::Error> = Box::new(error);
        assert_eq!(boxed.to_string(), "unknown option '-x'");
    }

    #[test]
    fn display_renders_iptables_s_form() {
        assert_eq!(
            rule(Chain::Input, Some(2), None, Target::Drop).to_string(),
            "-A INPUT -s 2 -j DROP"
        );
        assert_eq!(
            rule(Chain::Output, Some(3), Some(0.3), Target::Drop).to_string(),
            "-A OUTPUT -d 3 -m statistic --mode random --probability 0.3 -j DROP"
        );
        assert_eq!(
            rule(Chain::Output, None, Some(1.0), Target::Accept).to_string(),
            "-A OUTPUT -m statistic --mode random --probability 1 -j ACCEPT"
        );
    }

    #[test]
    fn display_round_trips_through_parse() {
        let rules = [
            rule(Chain::Input, Some(2), None, Target::Drop),
            rule(Chain::Input, None, None, Target::Accept),
            rule(Chain::Output, Some(u64::MAX), None, Target::Drop),
            rule(Chain::Output, None, Some(0.0), Target::Drop),
            rule(Chain::Input, Some(7), Some(0.1 + 0.2), Target::Drop),
            rule(Chain::Output, Some(3), Some(1e-9), Target::Accept),
        ];
        for original in rules {
            let line = original.to_string();
            assert_eq!(parse(&line), Ok(RuleCommand::Append(original)), "{line}");
        }
    }

    #[test]
    fn first_matching_rule_wins() {
        let set = set_of(&[
            "-A INPUT -s 2 -j ACCEPT",
            "-A INPUT -j DROP",
            "-A OUTPUT -d 4 -j DROP",
        ]);
        let mut draw = no_draw();
        assert_eq!(set.verdict(Chain::Input, 2, &mut draw), Target::Accept);
        assert_eq!(set.verdict(Chain::Input, 3, &mut draw), Target::Drop);
        assert_eq!(set.verdict(Chain::Output, 2, &mut draw), Target::Accept);
        assert_eq!(set.verdict(Chain::Output, 4, &mut draw), Target::Drop);

        // The same rules the other way round: the catch-all DROP now shadows the ACCEPT.
        let set = set_of(&["-A INPUT -j DROP", "-A INPUT -s 2 -j ACCEPT"]);
        assert_eq!(set.verdict(Chain::Input, 2, &mut draw), Target::Drop);
    }

    #[test]
    fn empty_set_accepts_everything() {
        let set = RuleSet::default();
        assert!(set.is_empty());
        assert_eq!(set.verdict(Chain::Input, 1, &mut no_draw()), Target::Accept);
        assert_eq!(
            set.verdict(Chain::Output, 1, &mut no_draw()),
            Target::Accept
        );
    }

    #[test]
    fn probability_uses_one_draw_per_candidate_rule() {
        let set = set_of(&[
            "-A INPUT -s 9 -m statistic --mode random --probability 0.9 -j ACCEPT",
            "-A INPUT -s 2 -m statistic --mode random --probability 0.3 -j DROP",
            "-A INPUT -m statistic --mode random --probability 0.5 -j DROP",
        ]);
        let mut script = vec![0.29, 0.3, 0.49, 0.3, 0.5].into_iter();
        let mut draw = || {
            script
                .next()
                .expect("verdict drew more samples than scripted")
        };

        // 0.29 < 0.3 on the peer-2 rule; the peer-9 rule is skipped without a draw.
        assert_eq!(set.verdict(Chain::Input, 2, &mut draw), Target::Drop);
        // 0.3 misses the peer-2 rule, 0.49 hits the catch-all.
        assert_eq!(set.verdict(Chain::Input, 2, &mut draw), Target::Drop);
        // 0.3 misses the peer-2 rule, 0.5 misses the catch-all: no rule left, so ACCEPT.
        assert_eq!(set.verdict(Chain::Input, 2, &mut draw), Target::Accept);
        assert_eq!(script.next(), None);
    }

    #[test]
    fn probability_bounds_behave() {
        let never = set_of(&["-A OUTPUT -m statistic --mode random --probability 0 -j DROP"]);
        let always = set_of(&["-A OUTPUT -m statistic --mode random --probability 1 -j DROP"]);
        for sample in [0.0, 0.5, 0.999_999] {
            assert_eq!(
                never.verdict(Chain::Output, 1, &mut || sample),
                Target::Accept
            );
            assert_eq!(
                always.verdict(Chain::Output, 1, &mut || sample),
                Target::Drop
            );
        }
    }

    #[test]
    #[should_panic(expected = "random draw 1 is outside [0, 1)")]
    fn draw_outside_unit_interval_panics() {
        let set = set_of(&["-A OUTPUT -m statistic --mode random --probability 1 -j DROP"]);
        set.verdict(Chain::Output, 1, &mut || 1.0);
    }

    #[test]
    fn insert_goes_first_and_append_last() {
        let set = set_of(&[
            "-A INPUT -s 1 -j DROP",
            "-I INPUT -s 2 -j DROP",
            "-A INPUT -s 3 -j DROP",
        ]);
        let peers: Vec<_> = set.rules().iter().map(|r| r.peer).collect();
        assert_eq!(peers, [Some(2), Some(1), Some(3)]);
    }

    #[test]
    fn delete_removes_only_the_first_identical_rule() {
        let mut set = set_of(&[
            "-A INPUT -s 2 -j DROP",
            "-A INPUT -s 3 -j DROP",
            "-A INPUT -s 2 -j DROP",
        ]);
        assert_eq!(
            set.apply(parse("-D INPUT -s 2 -j DROP").unwrap()),
            Ok(vec![])
        );
        let peers: Vec<_> = set.rules().iter().map(|r| r.peer).collect();
        assert_eq!(peers, [Some(3), Some(2)]);
    }

    #[test]
    fn delete_of_missing_rule_errors() {
        let mut set = set_of(&["-A INPUT -s 2 -j ACCEPT"]);
        let result = set.apply(parse("-D INPUT -s 2 -j DROP").unwrap());
        assert_eq!(
            result,
            Err(RuleError("no such rule: -A INPUT -s 2 -j DROP".into()))
        );
        assert_eq!(set.rules().len(), 1);
    }

    #[test]
    fn flush_one_chain_leaves_the_other() {
        let mut set = set_of(&[
            "-A INPUT -s 2 -j DROP",
            "-A OUTPUT -d 2 -j DROP",
            "-A INPUT -j DROP",
        ]);
        assert_eq!(
            set.apply(RuleCommand::Flush(Some(Chain::Input))),
            Ok(vec![])
        );
        assert_eq!(
            set.rules(),
            [rule(Chain::Output, Some(2), None, Target::Drop)]
        );

        set.apply(RuleCommand::Flush(None)).unwrap();
        assert!(set.is_empty());
    }

    #[test]
    fn list_renders_each_rule_as_a_line() {
        let lines = [
            "-A INPUT -s 2 -j DROP",
            "-A OUTPUT -d 3 -m statistic --mode random --probability 0.3 -j DROP",
            "-A INPUT -j ACCEPT",
        ];
        let mut set = set_of(&lines);
        assert_eq!(
            set.apply(RuleCommand::List(None)),
            Ok(lines.map(String::from).to_vec())
        );
        assert_eq!(
            set.apply(parse("-S INPUT").unwrap()),
            Ok(vec![lines[0].to_string(), lines[2].to_string()])
        );
        assert_eq!(
            set.apply(parse("-L OUTPUT").unwrap()),
            Ok(vec![lines[1].to_string()])
        );
    }

    #[test]
    fn table_is_bounded() {
        let mut set = RuleSet::new();
        let drop_all = rule(Chain::Input, None, None, Target::Drop);
        for _ in 0..MAX_RULES {
            set.apply(RuleCommand::Append(drop_all.clone())).unwrap();
        }
        let full = Err(RuleError(format!("rule table is full ({MAX_RULES} rules)")));
        assert_eq!(set.apply(RuleCommand::Insert(drop_all.clone())), full);
        assert_eq!(set.apply(RuleCommand::Append(drop_all)), full);
        assert_eq!(set.rules().len(), MAX_RULES);
    }

    #[test]
    fn rules_serialize_with_their_fields() {
        let json = serde_json::to_string(&rule(Chain::Input, Some(1), Some(0.5), Target::Drop));
        assert_eq!(
            json.unwrap(),
            r#"{"chain":"Input","peer":1,"probability":0.5,"target":"Drop"}"#
        );
    }
}
