//! The datagram format: a fixed header, then a bincode body.
//!
//! ```text
//! offset  size  field
//!      0     4  magic "RFTN"
//!      4     1  protocol version (1)
//!      5     1  kind: 1 peer message, 2 client request, 3 client response
//!      6     8  cluster id (little endian), from the cluster spec
//!     14     8  sender node id (little endian; 0 for clients)
//!     22     -  bincode (standard config) body: a core Message, ClientRequest or ClientResponse
//! ```
//!
//! Decoding never trusts a length inside the body: bincode is given a byte limit, so a hostile
//! length prefix cannot make the node allocate more than one datagram's worth.

use serde::{Deserialize, Serialize};

use crate::core::{Message, NodeId};
use crate::kv::{Op, Reply};

/// First bytes of every datagram.
pub const MAGIC: &[u8; 4] = b"RFTN";
/// Bumped whenever the body encoding changes incompatibly.
pub const VERSION: u8 = 1;
/// Header length in bytes.
pub const HEADER_LEN: usize = 22;
/// Largest datagram sent or accepted. It fits IPv4 UDP's 65,507-byte payload limit; the core's
/// AppendEntries budget (48 KiB of entries) and the key-value size limits keep every message
/// under it.
pub const MAX_DATAGRAM: usize = 65_000;

/// What a datagram carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Raft traffic between members.
    Peer = 1,
    /// A client's request to a member.
    ClientRequest = 2,
    /// A member's answer to a client.
    ClientResponse = 3,
}

/// Set in the sequence number of every read (see [`ClientRequest::seq`]).
pub const READ_SEQ_BIT: u64 = 1 << 63;

/// A client request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientRequest {
    /// Random id the client chose for itself.
    pub client_id: u64,
    /// Identifies the operation; a retry reuses it. Writes are numbered 1, 2, 3... in their
    /// own sequence, which the state machine's session uses to apply each write once. Reads
    /// are never logged, so they are numbered separately with [`READ_SEQ_BIT`] set; their
    /// number only pairs the answer with the request.
    pub seq: u64,
    /// The operation.
    pub op: Op,
}

/// A member's answer to a client request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientResponse {
    /// Echo of the request's client id.
    pub client_id: u64,
    /// Echo of the request's sequence number.
    pub seq: u64,
    /// The outcome.
    pub outcome: ClientOutcome,
}

/// How a request ended at the member that answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientOutcome {
    /// Applied (or read) with this reply.
    Applied(Reply),
    /// This member does not lead; try the one named, if any. A write may still be applied later
    /// if this member had appended it: retry with the same sequence number.
    NotLeader(Option<NodeId>),
    /// Refused as invalid; retrying will not help.
    Rejected(String),
}

/// A decoded datagram body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// Raft traffic from member `from`.
    Peer {
        /// Sender.
        from: NodeId,
        /// The message.
        message: Message,
    },
    /// A client request.
    Request(ClientRequest),
    /// A reply to a client.
    Response(ClientResponse),
}

/// Why a datagram was dropped; each reason has its own counter in `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// Shorter than a header, or not starting with the magic.
    NotOurs,
    /// Our magic with another protocol version.
    Version,
    /// Built for another cluster spec.
    WrongCluster,
    /// Longer than [`MAX_DATAGRAM`].
    Oversized,
    /// Header fine, body undecodable.
    Body,
}

impl DecodeError {
    /// Counter name used in status output.
    pub fn name(self) -> &'static str {
        match self {
            DecodeError::NotOurs => "garbage",
            DecodeError::Version => "version",
            DecodeError::WrongCluster => "wrong_cluster",
            DecodeError::Oversized => "oversized",
            DecodeError::Body => "undecodable",
        }
    }
}

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_DATAGRAM>()
}

/// Appends the header and `body` to `buf` (cleared first). Returns false, leaving `buf`
/// empty, if the encoding would exceed [`MAX_DATAGRAM`].
pub fn encode(buf: &mut Vec<u8>, cluster_id: u64, sender: NodeId, body: &Body) -> bool {
    buf.clear();
    let kind = match body {
        Body::Peer { .. } => Kind::Peer,
        Body::Request(_) => Kind::ClientRequest,
        Body::Response(_) => Kind::ClientResponse,
    };
    buf.extend_from_slice(MAGIC);
    buf.push(VERSION);
    buf.push(kind as u8);
    buf.extend_from_slice(&cluster_id.to_le_bytes());
    buf.extend_from_slice(&sender.to_le_bytes());
    let encoded = match body {
        Body::Peer { message, .. } => {
            bincode::serde::encode_into_std_write(message, buf, bincode_config())
        }
        Body::Request(r) => bincode::serde::encode_into_std_write(r, buf, bincode_config()),
        Body::Response(r) => bincode::serde::encode_into_std_write(r, buf, bincode_config()),
    };
    if encoded.is_err() || buf.len() > MAX_DATAGRAM {
        buf.clear();
        return false;
    }
    true
}

/// Decodes one datagram that must belong to `cluster_id`.
///
/// # Errors
/// The reason it was dropped.
pub fn decode(datagram: &[u8], cluster_id: u64) -> Result<Body, DecodeError> {
    if datagram.len() > MAX_DATAGRAM {
        return Err(DecodeError::Oversized);
    }
    if datagram.len() < HEADER_LEN || &datagram[..4] != MAGIC {
        return Err(DecodeError::NotOurs);
    }
    if datagram[4] != VERSION {
        return Err(DecodeError::Version);
    }
    let field = |at: usize| u64::from_le_bytes(datagram[at..at + 8].try_into().expect("8 bytes"));
    if field(6) != cluster_id {
        return Err(DecodeError::WrongCluster);
    }
    let sender = field(14);
    let body = &datagram[HEADER_LEN..];
    let config = bincode_config();
    let decoded = match datagram[5] {
        1 => bincode::serde::decode_from_slice(body, config).map(|(message, used)| {
            (
                Body::Peer {
                    from: sender,
                    message,
                },
                used,
            )
        }),
        2 => bincode::serde::decode_from_slice(body, config)
            .map(|(r, used)| (Body::Request(r), used)),
        3 => bincode::serde::decode_from_slice(body, config)
            .map(|(r, used)| (Body::Response(r), used)),
        _ => return Err(DecodeError::Body),
    };
    match decoded {
        // Trailing bytes mean the sender and we disagree about the format.
        Ok((body, used)) if used == datagram.len() - HEADER_LEN => Ok(body),
        _ => Err(DecodeError::Body),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::message::{AppendEntries, Entry, Payload};

    fn append(entries: usize) -> Body {
        let entries = (1..=entries as u64)
            .map(|index| Entry {
                term: 2,
                index,
                payload: Payload::Command(vec![7; 100]),
            })
            .collect();
        Body::Peer {
            from: 3,
            message: Message::AppendEntries(AppendEntries {
                term: 2,
                prev_log_index: 0,
                prev_log_term: 0,
                entries,
                leader_commit: 0,
                read_round: 9,
            }),
        }
    }

    #[test]
    fn round_trips_and_checks_cluster() {
        let mut buf = Vec::new();
        assert!(encode(&mut buf, 42, 3, &append(3)));
        assert_eq!(decode(&buf, 42), Ok(append(3)));
        assert_eq!(decode(&buf, 43), Err(DecodeError::WrongCluster));
    }

    #[test]
    fn garbage_is_classified_not_panicking() {
        let mut buf = Vec::new();
        encode(&mut buf, 1, 1, &append(1));
        assert_eq!(decode(b"hello", 1), Err(DecodeError::NotOurs));
        let mut wrong_version = buf.clone();
        wrong_version[4] = 9;
        assert_eq!(decode(&wrong_version, 1), Err(DecodeError::Version));
        for cut in HEADER_LEN..buf.len() {
            assert!(
                decode(&buf[..cut], 1).is_err(),
                "truncated at {cut} decoded"
            );
        }
        // A body claiming a huge vector must fail fast rather than allocate.
        let mut huge = buf[..HEADER_LEN].to_vec();
        huge.extend_from_slice(&[3, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(decode(&huge, 1), Err(DecodeError::Body));
        assert_eq!(
            decode(&vec![0; MAX_DATAGRAM + 1], 1),
            Err(DecodeError::Oversized)
        );
    }

    #[test]
    fn a_full_append_fits_a_datagram() {
        let mut buf = Vec::new();
        // 48 KiB of 100-byte entries is the core's default budget: about 370 entries.
        assert!(encode(&mut buf, 1, 1, &append(370)));
        assert!(buf.len() < MAX_DATAGRAM);
    }
}
