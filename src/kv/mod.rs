//! The replicated key-value state machine and its client sessions.
//!
//! It does not know Raft: the runtime hands it committed commands in log order and it applies
//! each one. Each command carries the client's id and sequence number; the session table
//! remembers every client's last sequence number and reply, so a retried command (a lost reply,
//! a duplicated datagram, a resend to a new leader) is applied once and answered with the
//! original reply (dissertation §6.3).
//!
//! Sessions expire by *log time*: each command carries the leader's clock reading when it was
//! proposed, and the store's clock is the largest reading applied so far. Every node applies the
//! same commands in the same order, so every node expires the same sessions at the same entry.
//! A command from a client whose session expired (a sequence number above 1 from an unknown
//! client) is refused rather than applied, since it may be the retry of a command that was
//! already applied.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::core::{Entry, Index, Payload};

/// Longest key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;
/// Longest value accepted, in bytes. With the key and headers a request stays well inside one
/// datagram and one AppendEntries.
pub const MAX_VALUE_BYTES: usize = 16 * 1024;

/// An operation a client asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Set `key` to `value`.
    Put {
        /// Key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// New value.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// Read `key`. Served by the leader through ReadIndex, never written to the log.
    Get {
        /// Key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// Remove `key`; removing an absent key succeeds.
    Del {
        /// Key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// Set `key` to `new` only if it currently holds `expected`.
    Cas {
        /// Key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// Value the key must hold now.
        #[serde(with = "serde_bytes")]
        expected: Vec<u8>,
        /// Value to store when it does.
        #[serde(with = "serde_bytes")]
        new: Vec<u8>,
    },
}

impl Op {
    /// The key the operation touches.
    pub fn key(&self) -> &[u8] {
        match self {
            Op::Put { key, .. } | Op::Get { key } | Op::Del { key } | Op::Cas { key, .. } => key,
        }
    }

    /// True for operations that change state and so go through the log.
    pub fn is_write(&self) -> bool {
        !matches!(self, Op::Get { .. })
    }

    /// Checks the documented size limits.
    ///
    /// # Errors
    /// A message naming the limit that was exceeded.
    pub fn validate(&self) -> Result<(), String> {
        if self.key().len() > MAX_KEY_BYTES {
            return Err(format!("key is longer than {MAX_KEY_BYTES} bytes"));
        }
        let values: &[&Vec<u8>] = match self {
            Op::Put { value, .. } => &[value],
            Op::Cas { expected, new, .. } => &[expected, new],
            _ => &[],
        };
        if values.iter().any(|v| v.len() > MAX_VALUE_BYTES) {
            return Err(format!("value is longer than {MAX_VALUE_BYTES} bytes"));
        }
        Ok(())
    }
}

/// What applying an operation produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// A put or del was applied.
    Done,
    /// A get's answer: the value, or None when the key is absent.
    Value(Option<serde_bytes::ByteBuf>),
    /// A cas was applied.
    Swapped,
    /// A cas found another value (or none); nothing changed.
    Mismatch(Option<serde_bytes::ByteBuf>),
    /// The command's sequence number is older than the client's latest: it is a late duplicate
    /// of a request the client has already seen answered, and was not applied again.
    Stale,
    /// The client's session expired (or never existed) and this is not its first command: it
    /// was not applied now, but an earlier attempt of it may have been. The client must start a
    /// new session.
    SessionExpired,
}

/// A session unused for this long (in log time) expires.
pub const SESSION_TTL_MS: u64 = 60 * 60 * 1000;
/// Most sessions kept; beyond it the least recently active are dropped first.
pub const MAX_SESSIONS: usize = 100_000;

/// A write as it travels through the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// Client that issued it.
    pub client_id: u64,
    /// Client's sequence number for it; a client's numbers increase, starting at 1.
    pub seq: u64,
    /// The leader's clock (ms since the Unix epoch) when it proposed the command: log time.
    pub time_ms: u64,
    /// The write itself.
    pub op: Op,
}

/// A client's last applied command and its reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Session {
    last_seq: u64,
    reply: Reply,
    /// Log time of the client's last command.
    last_active_ms: u64,
}

/// The key-value store plus the session table.
#[derive(Debug, Default)]
pub struct KvStore {
    /// The data. Ordered so that a snapshot writes it in a deterministic order.
    data: BTreeMap<Vec<u8>, Vec<u8>>,
    /// client id -> last applied command and its reply.
    sessions: HashMap<u64, Session>,
    /// Index of the last applied entry.
    applied_index: Index,
    /// Rolling hash of every applied entry, so two nodes can tell cheaply whether they have
    /// applied the same history.
    digest: u64,
    /// Log time: the largest `time_ms` applied. Never decreases.
    log_time_ms: u64,
    /// Sessions idle longer than this expire.
    session_ttl_ms: u64,
    /// Most sessions kept.
    max_sessions: usize,
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv(mut hash: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

impl KvStore {
    /// An empty store.
    pub fn new() -> KvStore {
        KvStore::with_session_limits(SESSION_TTL_MS, MAX_SESSIONS)
    }

    /// An empty store with other session limits (tests use short ones). Every node of a
    /// cluster must use the same limits, or their stores diverge.
    pub fn with_session_limits(session_ttl_ms: u64, max_sessions: usize) -> KvStore {
        KvStore {
            digest: FNV_OFFSET,
            session_ttl_ms,
            max_sessions: max_sessions.max(1),
            ..KvStore::default()
        }
    }

    /// Index of the last applied entry.
    pub fn applied_index(&self) -> Index {
        self.applied_index
    }

    /// Digest of the applied history, as 16 hex digits.
    pub fn digest(&self) -> String {
        format!("{:016x}", self.digest)
    }

    /// Number of keys stored.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// True when no key is stored.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Number of client sessions remembered.
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Current value of `key`.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.data.get(key).map(Vec::as_slice)
    }

    /// The reply already given to `client_id` for `seq`, if that command was applied.
    pub fn cached_reply(&self, client_id: u64, seq: u64) -> Option<Reply> {
        let Some(session) = self.sessions.get(&client_id) else {
            return (seq > 1).then_some(Reply::SessionExpired);
        };
        match seq.cmp(&session.last_seq) {
            std::cmp::Ordering::Equal => Some(session.reply.clone()),
            std::cmp::Ordering::Less => Some(Reply::Stale),
            std::cmp::Ordering::Greater => None,
        }
    }

    /// Applies one committed entry, which must be the next one. Returns the decoded command
    /// and its reply; no-ops and undecodable commands return None (the latter is logged: it
    /// means a peer with another build wrote it, and skipping it on every node keeps the
    /// replicas equal).
    ///
    /// # Panics
    /// If `entry` is not the entry right after the last applied one.
    pub fn apply(&mut self, entry: &Entry) -> Option<(Command, Reply)> {
        assert_eq!(
            entry.index,
            self.applied_index + 1,
            "applying {} after {}",
            entry.index,
            self.applied_index
        );
        self.applied_index = entry.index;
        self.digest = fnv(self.digest, &entry.index.to_le_bytes());
        self.digest = fnv(self.digest, &entry.term.to_le_bytes());
        let Payload::Command(data) = &entry.payload else {
            return None;
        };
        self.digest = fnv(self.digest, data);
        let command = match decode_command(data) {
            Ok(command) => command,
            Err(e) => {
                log::warn!("entry {} holds an undecodable command: {e}", entry.index);
                return None;
            }
        };
        let reply = self.apply_command(&command);
        Some((command, reply))
    }

    fn apply_command(&mut self, command: &Command) -> Reply {
        self.advance_log_time(command.time_ms);
        if let Some(reply) = self.cached_reply(command.client_id, command.seq) {
            if let Some(session) = self.sessions.get_mut(&command.client_id) {
                session.last_active_ms = self.log_time_ms;
            }
            return reply;
        }
        let reply = self.apply_op(&command.op);
        let session = Session {
            last_seq: command.seq,
            reply: reply.clone(),
            last_active_ms: self.log_time_ms,
        };
        self.sessions.insert(command.client_id, session);
        if self.sessions.len() > self.max_sessions {
            self.evict_oldest_sessions();
        }
        reply
    }

    /// Moves log time forward and expires sessions idle past the TTL. Time only moves forward,
    /// so a leader with a clock behind its predecessor's cannot revive expired sessions.
    fn advance_log_time(&mut self, time_ms: u64) {
        if time_ms <= self.log_time_ms {
            return;
        }
        // Scanning on every command would cost O(sessions) each; once per second of log time
        // keeps expiry prompt and cheap, and depends only on the log, so every node agrees.
        let crossed_second = time_ms / 1000 != self.log_time_ms / 1000;
        self.log_time_ms = time_ms;
        if crossed_second {
            let horizon = self.log_time_ms.saturating_sub(self.session_ttl_ms);
            self.sessions.retain(|_, s| s.last_active_ms >= horizon);
        }
    }

    /// Drops the least recently active tenth of the sessions (ties broken by client id, so
    /// every node drops the same ones).
    fn evict_oldest_sessions(&mut self) {
        let mut by_age: Vec<(u64, u64)> = self
            .sessions
            .iter()
            .map(|(&id, s)| (s.last_active_ms, id))
            .collect();
        by_age.sort_unstable();
        let drop = (self.sessions.len() - self.max_sessions).max(self.max_sessions / 10);
        for (_, id) in by_age.into_iter().take(drop) {
            self.sessions.remove(&id);
        }
    }

    fn apply_op(&mut self, op: &Op) -> Reply {
        match op {
            Op::Put { key, value } => {
                self.data.insert(key.clone(), value.clone());
                Reply::Done
            }
            Op::Del { key } => {
                self.data.remove(key);
                Reply::Done
            }
            Op::Cas { key, expected, new } => {
                let current = self.data.get(key);
                if current == Some(expected) {
                    self.data.insert(key.clone(), new.clone());
                    Reply::Swapped
                } else {
                    Reply::Mismatch(current.map(|v| serde_bytes::ByteBuf::from(v.clone())))
                }
            }
            Op::Get { key } => Reply::Value(self.get(key).map(serde_bytes::ByteBuf::from)),
        }
    }
}

/// The store as a snapshot holds it.
#[derive(Serialize, Deserialize)]
struct SnapshotImage {
    applied_index: Index,
    digest: u64,
    log_time_ms: u64,
    session_ttl_ms: u64,
    max_sessions: u64,
    data: Vec<(serde_bytes::ByteBuf, serde_bytes::ByteBuf)>,
    sessions: Vec<(u64, Session)>,
}

impl KvStore {
    /// Encodes the whole store (data, sessions, applied index and digest) for a snapshot.
    pub fn snapshot(&self) -> Vec<u8> {
        let mut sessions: Vec<(u64, Session)> = self
            .sessions
            .iter()
            .map(|(&id, s)| (id, s.clone()))
            .collect();
        // Sorted, so every node encodes the same state to the same bytes.
        sessions.sort_by_key(|(id, _)| *id);
        let image = SnapshotImage {
            applied_index: self.applied_index,
            digest: self.digest,
            log_time_ms: self.log_time_ms,
            session_ttl_ms: self.session_ttl_ms,
            max_sessions: self.max_sessions as u64,
            data: self
                .data
                .iter()
                .map(|(k, v)| (k.clone().into(), v.clone().into()))
                .collect(),
            sessions,
        };
        bincode::serde::encode_to_vec(&image, bincode::config::standard())
            .expect("snapshots encode into memory")
    }

    /// Rebuilds a store from [`KvStore::snapshot`] bytes.
    ///
    /// # Errors
    /// When the bytes are not a snapshot image.
    pub fn restore(bytes: &[u8]) -> Result<KvStore, String> {
        let config = bincode::config::standard().with_limit::<{ 1 << 32 }>();
        let (image, used): (SnapshotImage, usize) =
            bincode::serde::decode_from_slice(bytes, config).map_err(|e| e.to_string())?;
        if used != bytes.len() {
            return Err("trailing bytes after the snapshot image".to_string());
        }
        Ok(KvStore {
            data: image
                .data
                .into_iter()
                .map(|(k, v)| (k.into_vec(), v.into_vec()))
                .collect(),
            sessions: image.sessions.into_iter().collect(),
            applied_index: image.applied_index,
            digest: image.digest,
            log_time_ms: image.log_time_ms,
            session_ttl_ms: image.session_ttl_ms,
            max_sessions: image.max_sessions as usize,
        })
    }
}

/// Encodes a command as a log entry payload.
pub fn encode_command(command: &Command) -> Vec<u8> {
    bincode::serde::encode_to_vec(command, bincode::config::standard())
        .expect("commands always encode")
}

/// Decodes a log entry payload.
///
/// # Errors
/// When the bytes are not a command.
pub fn decode_command(data: &[u8]) -> Result<Command, bincode::error::DecodeError> {
    let config = bincode::config::standard().with_limit::<{ 1 << 20 }>();
    let (command, _) = bincode::serde::decode_from_slice(data, config)?;
    Ok(command)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put_entry(index: Index, client_id: u64, seq: u64, key: &str, value: &str) -> Entry {
        let op = Op::Put {
            key: key.into(),
            value: value.into(),
        };
        cmd_entry(index, client_id, seq, op)
    }

    fn cmd_entry(index: Index, client_id: u64, seq: u64, op: Op) -> Entry {
        timed_entry(index, client_id, seq, op, 1000 * index)
    }

    fn timed_entry(index: Index, client_id: u64, seq: u64, op: Op, time_ms: u64) -> Entry {
        let command = Command {
            client_id,
            seq,
            op,
            time_ms,
        };
        Entry {
            term: 1,
            index,
            payload: Payload::Command(encode_command(&command)),
        }
    }

    #[test]
    fn retried_command_is_applied_once() {
        let mut kv = KvStore::new();
        kv.apply(&put_entry(1, 7, 1, "k", "a"));
        let cas = Op::Cas {
            key: "k".into(),
            expected: "a".into(),
            new: "b".into(),
        };
        let (_, first) = kv.apply(&cmd_entry(2, 7, 2, cas.clone())).unwrap();
        assert_eq!(first, Reply::Swapped);
        // The same request committed again (a retry through a new leader) answers the same.
        let (_, again) = kv.apply(&cmd_entry(3, 7, 2, cas)).unwrap();
        assert_eq!(again, Reply::Swapped);
        assert_eq!(kv.get(b"k"), Some(&b"b"[..]));
        assert_eq!(kv.cached_reply(7, 1), Some(Reply::Stale));
    }

    #[test]
    fn idle_sessions_expire_by_log_time_and_refuse_retries() {
        let put = |v: &str| Op::Put {
            key: b"k".to_vec(),
            value: v.as_bytes().to_vec(),
        };
        let mut kv = KvStore::with_session_limits(10_000, 100);
        kv.apply(&timed_entry(1, 7, 1, put("a"), 1_000));
        kv.apply(&timed_entry(2, 8, 1, put("b"), 5_000));
        assert_eq!(kv.sessions(), 2);
        // Client 8 stays active; client 7 falls idle past the TTL.
        kv.apply(&timed_entry(3, 8, 2, put("c"), 12_000));
        assert_eq!(kv.sessions(), 1);
        let (_, reply) = kv
            .apply(&timed_entry(4, 7, 2, put("late"), 12_500))
            .unwrap();
        assert_eq!(reply, Reply::SessionExpired);
        assert_eq!(
            kv.get(b"k"),
            Some(&b"c"[..]),
            "an expired session's retry is not applied"
        );
        let (_, fresh) = kv.apply(&timed_entry(5, 9, 1, put("new"), 13_000)).unwrap();
        assert_eq!(fresh, Reply::Done, "a new session starts at 1");
    }

    #[test]
    fn session_table_is_bounded() {
        let mut kv = KvStore::with_session_limits(u64::MAX, 10);
        for client in 1..=50 {
            let op = Op::Del { key: b"k".to_vec() };
            kv.apply(&timed_entry(client, client, 1, op, client));
            assert!(kv.sessions() <= 10);
        }
        assert!(
            kv.cached_reply(50, 1).is_some(),
            "the newest session is kept"
        );
    }

    #[test]
    fn cas_mismatch_reports_current_value() {
        let mut kv = KvStore::new();
        kv.apply(&put_entry(1, 1, 1, "k", "x"));
        let cas = Op::Cas {
            key: "k".into(),
            expected: "y".into(),
            new: "z".into(),
        };
        let (_, reply) = kv.apply(&cmd_entry(2, 1, 2, cas)).unwrap();
        assert_eq!(reply, Reply::Mismatch(Some(b"x".to_vec().into())));
    }

    #[test]
    fn digest_tracks_history() {
        let mut a = KvStore::new();
        let mut b = KvStore::new();
        a.apply(&put_entry(1, 1, 1, "k", "v"));
        b.apply(&put_entry(1, 1, 1, "k", "v"));
        assert_eq!(a.digest(), b.digest());
        a.apply(&put_entry(2, 1, 2, "k", "w"));
        assert_ne!(a.digest(), b.digest());
    }

    #[test]
    fn snapshot_restores_data_sessions_and_digest() {
        let mut kv = KvStore::new();
        kv.apply(&put_entry(1, 7, 1, "a", "1"));
        kv.apply(&put_entry(2, 8, 1, "b", "2"));
        let copy = KvStore::restore(&kv.snapshot()).unwrap();
        assert_eq!(copy.get(b"b"), Some(&b"2"[..]));
        assert_eq!(copy.applied_index(), 2);
        assert_eq!(copy.digest(), kv.digest());
        assert_eq!(copy.cached_reply(8, 1), Some(Reply::Done));
        assert!(KvStore::restore(b"junk").is_err());
    }

    #[test]
    fn oversized_values_are_refused() {
        let op = Op::Put {
            key: vec![b'k'; 10],
            value: vec![0; MAX_VALUE_BYTES + 1],
        };
        assert!(op.validate().is_err());
        let op = Op::Get {
            key: vec![b'k'; MAX_KEY_BYTES + 1],
        };
        assert!(op.validate().is_err());
    }
}
