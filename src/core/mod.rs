//! The Raft algorithm, sans-IO: no sockets, files, clocks, threads or global randomness.
//!
//! Ticks, messages and client commands go in; a [`Ready`] batch of things to persist, send and
//! apply comes out. The runtime and the simulation are two drivers of the same core.

#![deny(missing_docs)]

pub mod log;
pub mod message;
pub mod node;
pub mod progress;

pub use self::log::RaftLog;
pub use message::{Entry, Envelope, HardState, Index, Message, NodeId, Payload, Term};
pub use node::{Config, NotLeader, RaftNode, ReadState, Ready, Role, Snapshot, Status};
