//! A node's data directory: its identity, a lock, the segmented write-ahead log that holds the
//! Raft hard state and log entries, and the latest state-machine snapshot.
//!
//! ```text
//! DATA_DIR/meta              "raftnode-data 1\nnode_id=N\ncluster_id=HEX\n", checked on start
//! DATA_DIR/LOCK              flock()ed while a node runs: one process per directory
//! DATA_DIR/wal/SEQ.seg       WAL segments, SEQ = 16 hex digits, replayed in order
//! DATA_DIR/snapshot          latest snapshot (see `snapshot.rs`)
//! DATA_DIR/control.sock      the control socket (see `control`)
//! ```
//!
//! A segment starts with the 8-byte magic `RFTNWAL1`, then records:
//!
//! ```text
//! magic "RN" (2) | len: u32 LE (4) | crc32c(len bytes ++ body): u32 LE (4) | body (len)
//! ```
//!
//! The body is a bincode [`Record`]. Replaying every segment in order rebuilds the state: a
//! hard-state record replaces the previous one, an entry at index `i` drops every entry from `i`
//! on and appends itself, a reset drops the whole log in favour of a snapshot received from the
//! leader. Every segment opens with the hard state current at its creation, so deleting older
//! segments never loses the term or vote. All records of one turn of the event loop share one
//! `fdatasync` (group commit); the directory is fsynced whenever a file is created, renamed or
//! removed.

mod recovery;
pub mod snapshot;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::core::{Entry, HardState, Index, NodeId, Term};
pub use snapshot::{SnapshotFile, SnapshotMeta};

/// First bytes of every segment file.
const SEGMENT_MAGIC: &[u8; 8] = b"RFTNWAL1";
/// First bytes of every record.
const RECORD_MAGIC: &[u8; 2] = b"RN";
/// Bytes before a record's body.
const RECORD_HEADER: usize = 10;
/// Largest record accepted on replay; anything longer is damage, not data.
const MAX_RECORD: u32 = 1 << 24;
/// Default size at which the current segment is closed and a new one started.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;

/// One WAL record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Record {
    /// The hard state from here on.
    HardState(HardState),
    /// A log entry; replaces any entry at or after its index.
    Entry(Entry),
    /// The log was replaced by a snapshot ending at (`index`, `term`): drop every entry.
    Reset {
        /// Last index the snapshot covers.
        index: Index,
        /// Term of that entry.
        term: Term,
    },
}

/// Borrowing twin of [`Record`] for writing, so an entry is encoded without being cloned. The
/// variant order must match `Record`'s.
#[derive(Serialize)]
enum RecordRef<'a> {
    HardState(&'a HardState),
    Entry(&'a Entry),
    Reset { index: Index, term: Term },
}

/// Failures opening a data directory, worded for the operator.
#[derive(Debug)]
pub enum StorageError {
    /// The directory was made for another node or cluster.
    Identity(String),
    /// Another process holds the directory.
    Locked(PathBuf),
    /// The WAL or snapshot is damaged where a crash cannot explain it.
    Corrupt(String),
    /// An IO error, with what was being done.
    Io(String, io::Error),
}

impl std::fmt::Display for StorageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StorageError::Identity(msg) | StorageError::Corrupt(msg) => f.write_str(msg),
            StorageError::Locked(dir) => write!(
                f,
                "data directory {} is in use by another raftnode process",
                dir.display()
            ),
            StorageError::Io(what, e) => write!(f, "{what}: {e}"),
        }
    }
}

impl std::error::Error for StorageError {}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> StorageError {
    let what = what.into();
    move |e| StorageError::Io(what, e)
}

/// What a node had persisted when it stopped.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Last persisted term and vote.
    pub hard_state: HardState,
    /// The latest snapshot, if one was taken or received.
    pub snapshot: Option<SnapshotFile>,
    /// The log after the snapshot (or from index 1 without one), contiguous.
    pub entries: Vec<Entry>,
}

/// One segment file.
#[derive(Debug, Clone)]
struct Segment {
    seq: u64,
    path: PathBuf,
    /// Highest entry index written to it (0 if none); once the snapshot covers it, and every
    /// older segment is gone, the segment can go too.
    max_index: Index,
}

/// An open data directory.
pub struct Storage {
    dir: PathBuf,
    wal_dir: PathBuf,
    /// Older segments, oldest first, then the current one last.
    segments: Vec<Segment>,
    /// The segment being appended to.
    current: File,
    current_len: u64,
    segment_bytes: u64,
    /// Holds the flock for as long as the storage lives.
    _lock: File,
    /// Records encoded but not yet written.
    buf: Vec<u8>,
    /// Hard state as last queued; opens every new segment.
    hard_state: HardState,
    /// True when written records still await fdatasync.
    unsynced: bool,
    /// Test failpoint: after this many more successful syncs, every sync fails.
    fail_sync_after: Option<u64>,
}

impl Storage {
    /// Opens (creating if needed) the data directory of node `node_id` in cluster
    /// `cluster_id`, locks it, cleans up interrupted writes and replays the snapshot and WAL.
    /// Segments grow to about `segment_bytes` before a new one starts.
    ///
    /// # Errors
    /// If the directory belongs to another node or cluster, is locked by another process, or
    /// cannot be read; or if the WAL or snapshot is damaged in a way a crash cannot explain.
    pub fn open(
        dir: &Path,
        node_id: NodeId,
        cluster_id: u64,
        segment_bytes: u64,
    ) -> Result<(Storage, Recovered), StorageError> {
        fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
        let lock = lock_dir(dir)?;
        check_identity(dir, node_id, cluster_id)?;
        let wal_dir = dir.join("wal");
        fs::create_dir_all(&wal_dir).map_err(io_err(format!("creating {}", wal_dir.display())))?;
        recovery::remove_leftovers(dir, &wal_dir)?;

        let snapshot = snapshot::load(dir)?;
        let replayed = recovery::replay(&wal_dir)?;
        let recovered = recovery::reconcile(replayed.log, replayed.hard_state, snapshot)?;

        let mut segments = replayed.segments;
        let (current, current_len) = match replayed.current {
            Some(current) => (current, replayed.current_len),
            None => {
                let (segment, file, len) =
                    create_segment(&wal_dir, 1, &recovered.hard_state, None)?;
                segments.push(segment);
                (file, len)
            }
        };
        let storage = Storage {
            dir: dir.to_path_buf(),
            wal_dir,
            segments,
            current,
            current_len,
            segment_bytes: segment_bytes.max(4096),
            _lock: lock,
            buf: Vec::with_capacity(64 * 1024),
            hard_state: recovered.hard_state,
            unsynced: false,
            fail_sync_after: None,
        };
        Ok((storage, recovered))
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Makes every sync after the next `syncs` fail, as a full or failing disk would: for
    /// testing how the node behaves (`RAFTNODE_FAILPOINT_SYNC_AFTER`).
    pub fn fail_sync_after(&mut self, syncs: u64) {
        self.fail_sync_after = Some(syncs);
    }

    /// Number of WAL segment files.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Queues a new hard state.
    pub fn save_hard_state(&mut self, hard_state: HardState) {
        self.hard_state = hard_state;
        push(&mut self.buf, &RecordRef::HardState(&hard_state));
    }

    /// Queues entries; the first may replace stored entries from its index on.
    pub fn append(&mut self, entries: &[Entry]) {
        for entry in entries {
            push(&mut self.buf, &RecordRef::Entry(entry));
        }
        if let (Some(last), Some(segment)) = (entries.last(), self.segments.last_mut()) {
            segment.max_index = segment.max_index.max(last.index);
        }
    }

    /// Writes the queued records and makes them durable with one `fdatasync`; starts a new
    /// segment once the current one is full.
    ///
    /// # Errors
    /// The write or sync failure. The caller must not acknowledge anything queued since the
    /// last successful sync.
    pub fn sync(&mut self) -> io::Result<()> {
        if let Some(left) = self.fail_sync_after.as_mut() {
            if *left == 0 {
                return Err(io::Error::other("injected write failure (failpoint)"));
            }
            *left -= 1;
        }
        if !self.buf.is_empty() {
            self.current.write_all(&self.buf)?;
            self.current_len += self.buf.len() as u64;
            self.buf.clear();
            self.unsynced = true;
        }
        if self.unsynced {
            self.current.sync_data()?;
            self.unsynced = false;
        }
        if self.current_len >= self.segment_bytes {
            self.start_segment(None).map_err(into_io)?;
        }
        Ok(())
    }

    /// Writes `data` as the snapshot at `meta` (temporary name, fsync, rename, fsync of the
    /// directory), then deletes the segments it covers entirely.
    ///
    /// # Errors
    /// Any write, sync, rename or removal failure; the previous snapshot then stays in place.
    pub fn save_snapshot(&mut self, meta: SnapshotMeta, data: &[u8]) -> io::Result<()> {
        snapshot::save(&self.dir, meta, data)?;
        self.compact(meta.index)
    }

    /// Replaces the whole log by a snapshot received from the leader: saves it, starts a new
    /// segment that records the reset, and deletes every older segment.
    ///
    /// # Errors
    /// Any write, sync, rename or removal failure.
    pub fn install_snapshot(&mut self, meta: SnapshotMeta, data: &[u8]) -> io::Result<()> {
        self.sync()?;
        snapshot::save(&self.dir, meta, data)?;
        self.start_segment(Some(meta)).map_err(into_io)?;
        let keep = self.segments.len() - 1;
        self.remove_oldest(keep)
    }

    /// Deletes the oldest segments while every entry they hold is at or below `index`.
    fn compact(&mut self, index: Index) -> io::Result<()> {
        let current = self.segments.len() - 1;
        let removable = self.segments[..current]
            .iter()
            .take_while(|s| s.max_index <= index)
            .count();
        self.remove_oldest(removable)
    }

    fn remove_oldest(&mut self, count: usize) -> io::Result<()> {
        if count == 0 {
            return Ok(());
        }
        for segment in self.segments.drain(..count) {
            fs::remove_file(&segment.path)?;
        }
        sync_dir(&self.wal_dir)
    }

    /// Closes the current segment and starts the next.
    fn start_segment(&mut self, reset: Option<SnapshotMeta>) -> Result<(), StorageError> {
        let seq = self.segments.last().map_or(1, |s| s.seq + 1);
        let (segment, file, len) = create_segment(&self.wal_dir, seq, &self.hard_state, reset)?;
        self.segments.push(segment);
        self.current = file;
        self.current_len = len;
        Ok(())
    }
}

/// Creates segment `seq`, opening with the hard state (and a reset record when a snapshot
/// replaced the log). It is written under a temporary name and renamed once durable, so an
/// interrupted rotation leaves no half segment behind.
fn create_segment(
    wal_dir: &Path,
    seq: u64,
    hard_state: &HardState,
    reset: Option<SnapshotMeta>,
) -> Result<(Segment, File, u64), StorageError> {
    let path = segment_path(wal_dir, seq);
    let tmp = path.with_extension("seg.tmp");
    let mut head = SEGMENT_MAGIC.to_vec();
    push(&mut head, &RecordRef::HardState(hard_state));
    if let Some(meta) = reset {
        let reset = RecordRef::Reset {
            index: meta.index,
            term: meta.term,
        };
        push(&mut head, &reset);
    }
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&tmp)
        .map_err(io_err(format!("creating {}", tmp.display())))?;
    file.write_all(&head)
        .and_then(|()| file.sync_all())
        .map_err(io_err(format!("writing {}", tmp.display())))?;
    fs::rename(&tmp, &path).map_err(io_err(format!("renaming {}", tmp.display())))?;
    sync_dir(wal_dir).map_err(io_err("syncing wal directory"))?;
    let file = OpenOptions::new()
        .append(true)
        .open(&path)
        .map_err(io_err(format!("opening {}", path.display())))?;
    let segment = Segment {
        seq,
        path,
        max_index: reset.map_or(0, |m| m.index),
    };
    Ok((segment, file, head.len() as u64))
}

/// Path of segment `seq`.
fn segment_path(wal_dir: &Path, seq: u64) -> PathBuf {
    wal_dir.join(format!("{seq:016x}.seg"))
}

fn into_io(e: StorageError) -> io::Error {
    match e {
        StorageError::Io(_, e) => e,
        other => io::Error::other(other.to_string()),
    }
}

/// Appends one framed record to `buf`.
fn push<T: Serialize>(buf: &mut Vec<u8>, record: &T) {
    let start = buf.len();
    buf.extend_from_slice(&[0; RECORD_HEADER]);
    bincode::serde::encode_into_std_write(record, buf, bincode::config::standard())
        .expect("records encode into memory");
    let len = (buf.len() - start - RECORD_HEADER) as u32;
    let crc = record_crc(len, &buf[start + RECORD_HEADER..]);
    buf[start..start + 2].copy_from_slice(RECORD_MAGIC);
    buf[start + 2..start + 6].copy_from_slice(&len.to_le_bytes());
    buf[start + 6..start + 10].copy_from_slice(&crc.to_le_bytes());
}

/// The checksum covers the length too, so a damaged length is caught like damaged data.
fn record_crc(len: u32, body: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&len.to_le_bytes()), body)
}

fn lock_dir(dir: &Path) -> Result<File, StorageError> {
    let path = dir.join("LOCK");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err(format!("opening {}", path.display())))?;
    // SAFETY: flock on a file descriptor we own; it is released when the file is closed.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(StorageError::Locked(dir.to_path_buf()));
    }
    Ok(file)
}

fn check_identity(dir: &Path, node_id: NodeId, cluster_id: u64) -> Result<(), StorageError> {
    let path = dir.join("meta");
    let want = format!("raftnode-data 1\nnode_id={node_id}\ncluster_id={cluster_id:016x}\n");
    match fs::read_to_string(&path) {
        Ok(have) if have == want => Ok(()),
        Ok(have) => Err(StorageError::Identity(format!(
            "{} belongs to another node or cluster ({}); this is node {node_id} of cluster \
             {cluster_id:016x}: use another --data-dir, or check --id and --cluster",
            dir.display(),
            have.lines().skip(1).collect::<Vec<_>>().join(", ")
        ))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            write_durably(dir, "meta", want.as_bytes()).map_err(io_err("writing meta"))
        }
        Err(e) => Err(StorageError::Io(format!("reading {}", path.display()), e)),
    }
}

/// Writes `dir/name` atomically: a temporary file, fsync, rename, fsync of the directory.
fn write_durably(dir: &Path, name: &str, data: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut file = File::create(&tmp)?;
    file.write_all(data)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, dir.join(name))?;
    sync_dir(dir)
}

/// Makes a directory's entries (created, renamed, removed files) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests;
