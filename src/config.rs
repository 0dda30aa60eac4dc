//! The cluster specification that every node and client shares, and its identity.
//!
//! `1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003` names each member's id and UDP
//! address. The cluster id is a hash of the canonical form of that list, so nodes started with
//! different lists refuse each other's datagrams and data directories.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::str::FromStr;

use crate::core::NodeId;

/// The members of a cluster and their UDP addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    members: BTreeMap<NodeId, SocketAddr>,
}

/// Largest cluster accepted: Raft clusters are small, and the bound keeps status and loops short.
pub const MAX_MEMBERS: usize = 15;

impl Cluster {
    /// Ids of all members, in ascending order.
    pub fn ids(&self) -> Vec<NodeId> {
        self.members.keys().copied().collect()
    }

    /// Address of member `id`.
    pub fn addr(&self, id: NodeId) -> Option<SocketAddr> {
        self.members.get(&id).copied()
    }

    /// The member listening on `addr`, if any.
    pub fn id_of(&self, addr: SocketAddr) -> Option<NodeId> {
        self.members
            .iter()
            .find(|(_, &a)| a == addr)
            .map(|(&id, _)| id)
    }

    /// Members and addresses, in id order.
    pub fn members(&self) -> impl Iterator<Item = (NodeId, SocketAddr)> + '_ {
        self.members.iter().map(|(&id, &addr)| (id, addr))
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// True for a cluster without members (never produced by parsing).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Identity of this cluster: a 64-bit FNV-1a hash of the canonical spec.
    pub fn cluster_id(&self) -> u64 {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.to_string().bytes() {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        hash
    }
}

impl fmt::Display for Cluster {
    /// The canonical spec: members in id order, `id=addr` joined by commas.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (id, addr) in &self.members {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            write!(f, "{id}={addr}")?;
        }
        Ok(())
    }
}

impl FromStr for Cluster {
    type Err = String;

    /// Parses `ID=HOST:PORT[,ID=HOST:PORT...]`.
    fn from_str(spec: &str) -> Result<Cluster, String> {
        let mut members = BTreeMap::new();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (id, addr) = item
                .split_once('=')
                .ok_or_else(|| format!("cluster member '{item}' is not ID=HOST:PORT"))?;
            let id: NodeId = id
                .trim()
                .parse()
                .map_err(|_| format!("node id '{id}' is not a positive number"))?;
            if id == 0 {
                return Err("node id 0 is reserved; ids start at 1".to_string());
            }
            let addr = resolve(addr.trim())?;
            if addr.port() == 0 {
                return Err(format!("node {id} has port 0; give each node a fixed port"));
            }
            if members.values().any(|&a| a == addr) {
                return Err(format!("address {addr} is listed twice"));
            }
            if members.insert(id, addr).is_some() {
                return Err(format!("node id {id} is listed twice"));
            }
        }
        if members.is_empty() {
            return Err("the cluster list is empty".to_string());
        }
        if members.len() > MAX_MEMBERS {
            return Err(format!("at most {MAX_MEMBERS} members are supported"));
        }
        Ok(Cluster { members })
    }
}

fn resolve(addr: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = addr.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let mut addrs = addr
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve address '{addr}': {e}"))?;
    addrs
        .next()
        .ok_or_else(|| format!("address '{addr}' resolves to nothing"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_canonically() {
        let c: Cluster = "2=127.0.0.1:7002, 1=127.0.0.1:7001".parse().unwrap();
        assert_eq!(c.to_string(), "1=127.0.0.1:7001,2=127.0.0.1:7002");
        assert_eq!(c.ids(), vec![1, 2]);
        let same: Cluster = "1=127.0.0.1:7001,2=127.0.0.1:7002".parse().unwrap();
        assert_eq!(c.cluster_id(), same.cluster_id());
    }

    #[test]
    fn rejects_bad_specs() {
        for bad in [
            "",
            "1",
            "x=127.0.0.1:1",
            "0=127.0.0.1:1",
            "1=nope",
            "1=127.0.0.1:1,1=127.0.0.1:2",
        ] {
            assert!(bad.parse::<Cluster>().is_err(), "accepted {bad:?}");
        }
        let dup_addr = "1=127.0.0.1:1,2=127.0.0.1:1";
        assert!(dup_addr.parse::<Cluster>().is_err());
    }
}
