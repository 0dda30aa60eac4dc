//! The client commands: one-shot `put`/`get`/`del`/`cas` with exit codes, the line-oriented
//! `client` that prints one JSON object per operation, and the human form of `ctl status`.

use std::io::{self, BufRead, Write};

use serde_json::{json, Map, Value};

use super::{ClientArgs, EXIT_FAIL, EXIT_OK, EXIT_UNKNOWN, EXIT_USAGE};
use crate::client::{Client, Outcome};
use crate::config::Cluster;
use crate::kv::{Op, Reply};

/// Extra help for `raftnode client`.
pub const CLIENT_HELP: &str = "\
Input lines:
  put KEY VALUE       VALUE is the rest of the line
  get KEY
  del KEY
  cas KEY EXPECTED NEW
Output: one JSON object per line with \"op\", the operation's fields, and \"result\":
  \"ok\"       applied (for get: \"value\" is the value, or null when absent)
  \"fail\"     definitely not applied (cas mismatch with the current \"value\", a line that does
             not parse, an oversized key or value, or a get that timed out); \"error\" says why
  \"unknown\"  timed out: a write may or may not have been applied";

/// A put of `value` at `key`.
pub fn put(key: String, value: String) -> Op {
    Op::Put {
        key: key.into_bytes(),
        value: value.into_bytes(),
    }
}

/// A get of `key`.
pub fn get(key: String) -> Op {
    Op::Get {
        key: key.into_bytes(),
    }
}

/// A del of `key`.
pub fn del(key: String) -> Op {
    Op::Del {
        key: key.into_bytes(),
    }
}

/// A cas of `key` from `expected` to `new`.
pub fn cas(key: String, expected: String, new: String) -> Op {
    Op::Cas {
        key: key.into_bytes(),
        expected: expected.into_bytes(),
        new: new.into_bytes(),
    }
}

fn connect(args: &ClientArgs) -> Result<Client, String> {
    if args.timeout < std::time::Duration::from_millis(1) {
        return Err("--timeout must be at least 1ms".to_string());
    }
    let cluster: Cluster = args.cluster.parse()?;
    Client::new(cluster, args.node, args.timeout).map_err(|e| e.to_string())
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs one operation and maps its outcome to output and an exit code.
pub fn one_shot(args: &ClientArgs, op: Op) -> u8 {
    let mut client = match connect(args) {
        Ok(client) => client,
        Err(e) => return super::usage_error(&e),
    };
    match client.execute(op) {
        Outcome::Done(Reply::Value(Some(value))) => {
            println!("{}", text(&value));
            EXIT_OK
        }
        Outcome::Done(Reply::Value(None)) => EXIT_FAIL,
        Outcome::Done(Reply::Mismatch(current)) => {
            match current {
                Some(value) => {
                    println!("{}", text(&value));
                    eprintln!("raftnode: cas failed: the key holds another value");
                }
                None => eprintln!("raftnode: cas failed: the key is absent"),
            }
            EXIT_FAIL
        }
        Outcome::Done(Reply::Stale) => {
            eprintln!("raftnode: the cluster saw a newer request from this client id");
            EXIT_UNKNOWN
        }
        Outcome::Done(_) => EXIT_OK,
        Outcome::Failed(reason) => {
            eprintln!("raftnode: refused: {reason}");
            EXIT_USAGE
        }
        Outcome::Unknown(reason) => {
            eprintln!("raftnode: outcome unknown: {reason}");
            EXIT_UNKNOWN
        }
    }
}

/// Splits off the first whitespace-separated word; returns it and the rest, trimmed at the
/// front.
fn next_word(line: &str) -> Option<(&str, &str)> {
    let line = line.trim_start();
    if line.is_empty() {
        return None;
    }
    let end = line.find(char::is_whitespace).unwrap_or(line.len());
    Some((&line[..end], line[end..].trim_start()))
}

/// Parses one input line of `raftnode client` into an operation and its JSON fields.
fn parse_line(line: &str) -> Result<(Op, Map<String, Value>), String> {
    let (verb, rest) = next_word(line).ok_or("empty line")?;
    let (key, rest) = next_word(rest).ok_or_else(|| format!("'{verb}' needs a key"))?;
    let mut fields = Map::new();
    fields.insert("op".into(), json!(verb));
    fields.insert("key".into(), json!(key));
    let words: Vec<&str> = rest.split_whitespace().collect();
    let op = match (verb, words.as_slice()) {
        ("put", [_, ..]) => {
            let value = rest.trim_end();
            fields.insert("value".into(), json!(value));
            put(key.into(), value.into())
        }
        ("put", []) => return Err("put needs a key and a value".into()),
        ("get", []) => get(key.into()),
        ("del", []) => del(key.into()),
        ("cas", [expected, new]) => {
            fields.insert("expected".into(), json!(expected));
            fields.insert("new".into(), json!(new));
            cas(key.into(), (*expected).into(), (*new).into())
        }
        ("cas", _) => return Err("cas needs KEY EXPECTED NEW".into()),
        ("get" | "del", _) => return Err(format!("{verb} takes only a key")),
        _ => {
            return Err(format!(
                "unknown operation '{verb}' (use put, get, del or cas)"
            ))
        }
    };
    Ok((op, fields))
}

/// Fills in `result` (and `value`, `error`) for an operation's outcome.
fn record_outcome(fields: &mut Map<String, Value>, is_get: bool, outcome: Outcome) {
    let (result, value, error) = match outcome {
        Outcome::Done(Reply::Value(v)) => ("ok", Some(v.map(|v| text(&v))), None),
        Outcome::Done(Reply::Mismatch(current)) => (
            "fail",
            Some(current.map(|v| text(&v))),
            Some("cas mismatch".to_string()),
        ),
        Outcome::Done(Reply::Stale) => ("unknown", None, Some("stale request".to_string())),
        Outcome::Done(_) => ("ok", None, None),
        Outcome::Failed(reason) => ("fail", None, Some(reason)),
        // A read that timed out changed nothing, so it definitely did not happen.
        Outcome::Unknown(reason) if is_get => ("fail", None, Some(reason)),
        Outcome::Unknown(reason) => ("unknown", None, Some(reason)),
    };
    fields.insert("result".into(), json!(result));
    if let Some(value) = value {
        fields.insert("value".into(), json!(value));
    }
    if let Some(error) = error {
        fields.insert("error".into(), json!(error));
    }
}

/// Reads operations from stdin until EOF, printing one JSON result per line.
pub fn interactive(args: &ClientArgs) -> u8 {
    let mut client = match connect(args) {
        Ok(client) => client,
        Err(e) => return super::usage_error(&e),
    };
    let stdin = io::stdin();
    let mut stdout = io::stdout().lock();
    for raw in stdin.lock().split(b'\n') {
        let Ok(raw) = raw else {
            break;
        };
        // A line that is not UTF-8 is answered like any other bad line, and reading goes on.
        let (line, parsed) = match String::from_utf8(raw) {
            Ok(line) => {
                let parsed = parse_line(&line);
                (line, parsed)
            }
            Err(e) => {
                let line = String::from_utf8_lossy(e.as_bytes()).into_owned();
                (line, Err("the line is not valid UTF-8".to_string()))
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        let fields = match parsed {
            Ok((op, mut fields)) => {
                let is_get = matches!(op, Op::Get { .. });
                record_outcome(&mut fields, is_get, client.execute(op));
                fields
            }
            Err(error) => {
                let mut fields = Map::new();
                fields.insert("line".into(), json!(line));
                fields.insert("result".into(), json!("fail"));
                fields.insert("error".into(), json!(error));
                fields
            }
        };
        let out = Value::Object(fields).to_string();
        // A closed stdout (a pipe to `head`) ends the session quietly.
        if writeln!(stdout, "{out}")
            .and_then(|()| stdout.flush())
            .is_err()
        {
            break;
        }
    }
    EXIT_OK
}

/// Renders `status` JSON for a person.
pub fn format_status(json_line: &str) -> String {
    let Ok(v) = serde_json::from_str::<Value>(json_line) else {
        return format!("{json_line}\n");
    };
    let s = |k: &str| match &v[k] {
        Value::Null => "none".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut out = format!(
        "node {} at {}: {}, term {}, leader {}, voted for {}\n",
        s("id"),
        s("address"),
        s("role"),
        s("term"),
        s("leader"),
        s("voted_for")
    );
    out += &format!("why: {}\n", s("role_reason"));
    if let Some(error) = v["disk_error"].as_str() {
        out += &format!("DISK ERROR: {error}; not voting, leading or acknowledging\n");
    }
    if !v["snapshot_receiving"].is_null() {
        out += &format!("receiving snapshot: {}\n", v["snapshot_receiving"]);
    }
    out += &format!(
        "log: last index {} (term {}), commit {}, applied {}, snapshot {} (term {}), keys {}, digest {}\n",
        s("last_log_index"),
        s("last_log_term"),
        s("commit_index"),
        s("last_applied"),
        s("snapshot_index"),
        s("snapshot_term"),
        s("keys"),
        s("applied_digest")
    );
    if let Some(peers) = v["peers"].as_array().filter(|p| !p.is_empty()) {
        for p in peers {
            out += &format!(
                "peer {}: next {} match {} ({}, {} in flight)\n",
                p["id"],
                p["next_index"],
                p["match_index"],
                p["mode"].as_str().unwrap_or("?"),
                p["inflight"]
            );
        }
    }
    match v["rules"].as_array() {
        Some(rules) if !rules.is_empty() => {
            for r in rules {
                out += &format!("rule: {}\n", r.as_str().unwrap_or("?"));
            }
        }
        _ => out += "rules: none (every link open)\n",
    }
    if let Some(counters) = v["counters"].as_object() {
        let nonzero: Vec<String> = counters
            .iter()
            .filter(|(_, n)| n.as_u64().unwrap_or(0) > 0)
            .map(|(k, n)| format!("{k}={n}"))
            .collect();
        out += &format!("counters: {}\n", nonzero.join(" "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_client_lines() {
        let (op, fields) = parse_line("put k hello  world").unwrap();
        assert_eq!(op, put("k".into(), "hello  world".into()));
        assert_eq!(fields["value"], json!("hello  world"));
        assert!(parse_line("put k").is_err());
        assert!(parse_line("get").is_err());
        assert!(parse_line("get k extra").is_err());
        assert!(parse_line("cas k a").is_err());
        assert!(parse_line("frob k")
            .unwrap_err()
            .contains("unknown operation"));
        assert_eq!(parse_line("  del   k ").unwrap().0, del("k".into()));
    }

    #[test]
    fn read_timeouts_are_failures_but_write_timeouts_unknown() {
        let mut fields = Map::new();
        record_outcome(&mut fields, true, Outcome::Unknown("t".into()));
        assert_eq!(fields["result"], json!("fail"));
        record_outcome(&mut fields, false, Outcome::Unknown("t".into()));
        assert_eq!(fields["result"], json!("unknown"));
    }
}
