//! What crosses the network: the datagram format and the operator's packet-filter rules.

pub mod rules;
pub mod wire;
