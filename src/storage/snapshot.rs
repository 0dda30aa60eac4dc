//! The snapshot file: the state machine as of one log index, replacing every entry up to it.
//!
//! ```text
//! magic "RFTNSNP1" (8) | index u64 LE | term u64 LE | len u64 LE | crc32c(data) u32 LE | data
//! ```
//!
//! It is written to `snapshot.tmp`, fsynced, renamed over `snapshot`, and the directory is
//! fsynced, so a crash leaves either the old snapshot or the new one, never half of one.

use std::fs;
use std::io;
use std::path::Path;

use super::{write_durably, StorageError};
use crate::core::{Index, Term};

const MAGIC: &[u8; 8] = b"RFTNSNP1";
const HEADER: usize = 36;

/// Which log prefix a snapshot replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SnapshotMeta {
    /// Last index the snapshot covers.
    pub index: Index,
    /// Term of the entry at `index`.
    pub term: Term,
}

/// A snapshot read back from disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFile {
    /// What it covers.
    pub meta: SnapshotMeta,
    /// The state machine's encoding of itself.
    pub data: Vec<u8>,
}

/// Encodes a snapshot file's bytes.
pub fn encode(meta: SnapshotMeta, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + data.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&meta.index.to_le_bytes());
    out.extend_from_slice(&meta.term.to_le_bytes());
    out.extend_from_slice(&(data.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(data).to_le_bytes());
    out.extend_from_slice(data);
    out
}

/// Decodes a snapshot file's bytes.
///
/// # Errors
/// A description of what is wrong with them.
pub fn decode(bytes: &[u8]) -> Result<SnapshotFile, String> {
    if bytes.len() < HEADER || &bytes[..8] != MAGIC {
        return Err("not a raftnode snapshot (bad header)".to_string());
    }
    let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let meta = SnapshotMeta {
        index: word(8),
        term: word(16),
    };
    let len = word(24);
    let crc = u32::from_le_bytes(bytes[32..36].try_into().expect("4 bytes"));
    let data = &bytes[HEADER..];
    if data.len() as u64 != len {
        return Err(format!(
            "holds {} bytes of data, header says {len}",
            data.len()
        ));
    }
    if crc32c::crc32c(data) != crc {
        return Err("checksum mismatch".to_string());
    }
    Ok(SnapshotFile {
        meta,
        data: data.to_vec(),
    })
}

/// Writes the snapshot durably and atomically into `dir`.
///
/// # Errors
/// Any write, sync or rename failure; the previous snapshot then stays in place.
pub fn save(dir: &Path, meta: SnapshotMeta, data: &[u8]) -> io::Result<()> {
    write_durably(dir, "snapshot", &encode(meta, data))
}

/// Reads the snapshot in `dir`, if any.
///
/// # Errors
/// If it exists but cannot be read or is damaged: it is the only copy of the entries it
/// replaced, so the node must not start without it.
pub fn load(dir: &Path) -> Result<Option<SnapshotFile>, StorageError> {
    let path = dir.join("snapshot");
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StorageError::Io(format!("reading {}", path.display()), e)),
    };
    decode(&bytes).map(Some).map_err(|why| {
        StorageError::Corrupt(format!(
            "{}: damaged snapshot: {why}. It is the only copy of the log entries it replaced; \
             restore the data directory from a backup, or remove it to rejoin as an empty node",
            path.display()
        ))
    })
}
