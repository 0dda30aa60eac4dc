//! raftnode: a Raft consensus node that runs one process per member, talks UDP, and
//! replicates a key-value store.
//!
//! Layers, each using only those below it: `core` (the algorithm, sans-IO), `kv` (the state
//! machine), `config` (the cluster spec), `net` (wire format and packet rules), `storage`
//! (the node's disk), `runtime` (the mio event loop), `control` and `client` (the operator and
//! client sides), `sim` (a deterministic cluster simulation), `cli` (the command line).

pub mod checker;
pub mod cli;
pub mod client;
pub mod config;
pub mod control;
pub mod core;
pub mod kv;
pub mod net;
pub mod runtime;
pub mod sim;
pub mod storage;
