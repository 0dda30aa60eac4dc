//! A node's data directory: its identity file, a lock, and the write-ahead log that holds the
//! Raft hard state and log entries.
//!
//! Layout of `DATA_DIR`:
//!
//! ```text
//! meta          "raftnode-data 1\nnode_id=N\ncluster_id=HEX\n" — written once, checked on start
//! LOCK          flock()ed while a node runs, so two processes never share a directory
//! wal           append-only records (below)
//! control.sock  the control socket (see `control`)
//! ```
//!
//! A WAL record is `len: u32 LE | crc32c(body): u32 LE | body`, the body a bincode
//! [`Record`]. Replaying the file in order rebuilds the state: a hard-state record replaces
//! the previous one, an entry record at index `i` drops every entry from `i` on and appends
//! itself. All records written in one turn of the event loop share one `fdatasync`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::core::{Entry, HardState, NodeId};

/// Largest record accepted on replay; anything longer is damage, not data.
const MAX_RECORD: u32 = 1 << 24;

/// One WAL record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Record {
    /// The hard state from here on.
    HardState(HardState),
    /// A log entry; replaces any entry at or after its index.
    Entry(Entry),
}

/// Failures opening a data directory, worded for the operator.
#[derive(Debug)]
pub enum StorageError {
    /// The directory was made for another node or cluster.
    Identity(String),
    /// Another process holds the directory.
    Locked(PathBuf),
    /// The WAL is damaged before its end.
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
    /// The log, from index 1.
    pub entries: Vec<Entry>,
}

/// An open data directory.
pub struct Storage {
    dir: PathBuf,
    wal: File,
    /// Holds the flock for as long as the storage lives.
    _lock: File,
    /// Records encoded but not yet written.
    buf: Vec<u8>,
    /// Index of the last entry written; entries at or below it arriving again mean truncation.
    last_index: u64,
    /// True when written records still await fdatasync.
    unsynced: bool,
}

impl Storage {
    /// Opens (creating if needed) the data directory of node `node_id` in cluster
    /// `cluster_id`, locks it and replays the WAL.
    ///
    /// # Errors
    /// If the directory belongs to another node or cluster, is locked by another process, or
    /// cannot be read; or if the WAL is damaged before its last record.
    pub fn open(
        dir: &Path,
        node_id: NodeId,
        cluster_id: u64,
    ) -> Result<(Storage, Recovered), StorageError> {
        fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
        let lock = lock_dir(dir)?;
        check_identity(dir, node_id, cluster_id)?;

        let path = dir.join("wal");
        let mut wal = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(io_err(format!("opening {}", path.display())))?;
        let (recovered, valid_len) = replay(&mut wal, &path)?;
        let file_len = wal.metadata().map_err(io_err("reading wal size"))?.len();
        if valid_len < file_len {
            log::warn!(
                "{}: dropping a torn record at offset {valid_len} ({} bytes) left by a crash",
                path.display(),
                file_len - valid_len
            );
            wal.set_len(valid_len)
                .map_err(io_err("truncating torn wal tail"))?;
            wal.sync_all().map_err(io_err("syncing wal"))?;
        }
        let last_index = recovered.entries.last().map_or(0, |e| e.index);
        let storage = Storage {
            dir: dir.to_path_buf(),
            wal,
            _lock: lock,
            buf: Vec::with_capacity(64 * 1024),
            last_index,
            unsynced: false,
        };
        Ok((storage, recovered))
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Queues a new hard state.
    pub fn save_hard_state(&mut self, hard_state: HardState) {
        self.push(&Record::HardState(hard_state));
    }

    /// Queues entries; the first may replace stored entries from its index on.
    pub fn append(&mut self, entries: &[Entry]) {
        for entry in entries {
            // Records hold owned entries; encoding borrows, so no copy of the payload is made.
            self.push_entry(entry);
            self.last_index = entry.index;
        }
    }

    fn push_entry(&mut self, entry: &Entry) {
        #[derive(Serialize)]
        enum RecordRef<'a> {
            #[allow(dead_code)]
            HardState(HardState),
            Entry(&'a Entry),
        }
        self.push(&RecordRef::Entry(entry));
    }

    fn push<T: Serialize>(&mut self, record: &T) {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0; 8]);
        bincode::serde::encode_into_std_write(record, &mut self.buf, bincode::config::standard())
            .expect("records encode into memory");
        let body = &self.buf[start + 8..];
        let len = body.len() as u32;
        let crc = crc32c::crc32c(body);
        self.buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
        self.buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    }

    /// Writes the queued records and makes them durable with one `fdatasync`.
    ///
    /// # Errors
    /// The write or sync failure. The caller must not acknowledge anything queued since the
    /// last successful sync.
    pub fn sync(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.wal.write_all(&self.buf)?;
            self.buf.clear();
            self.unsynced = true;
        }
        if self.unsynced {
            self.wal.sync_data()?;
            self.unsynced = false;
        }
        Ok(())
    }

    /// Index of the last entry handed to `append`.
    pub fn last_index(&self) -> u64 {
        self.last_index
    }
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
            let tmp = dir.join("meta.tmp");
            fs::write(&tmp, want).map_err(io_err("writing meta"))?;
            File::open(&tmp)
                .and_then(|f| f.sync_all())
                .map_err(io_err("syncing meta"))?;
            fs::rename(&tmp, &path).map_err(io_err("renaming meta"))?;
            sync_dir(dir).map_err(io_err("syncing data directory"))
        }
        Err(e) => Err(StorageError::Io(format!("reading {}", path.display()), e)),
    }
}

/// Makes a directory's entries (created, renamed, removed files) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Replays the WAL. Returns what it holds and the length of the valid prefix.
fn replay(wal: &mut File, path: &Path) -> Result<(Recovered, u64), StorageError> {
    wal.seek(SeekFrom::Start(0))
        .map_err(io_err("seeking wal"))?;
    let file_len = wal.metadata().map_err(io_err("reading wal size"))?.len();
    let mut reader = BufReader::new(&mut *wal);
    let mut recovered = Recovered::default();
    let mut offset = 0u64;
    let mut body = Vec::new();
    loop {
        let mut header = [0u8; 8];
        match reader.read_exact(&mut header) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(StorageError::Io(format!("reading {}", path.display()), e)),
        }
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        let end = offset + 8 + u64::from(len);
        if len > MAX_RECORD || end > file_len {
            break;
        }
        body.resize(len as usize, 0);
        reader
            .read_exact(&mut body)
            .map_err(io_err(format!("reading {}", path.display())))?;
        let record = if crc32c::crc32c(&body) == crc {
            bincode::serde::decode_from_slice::<Record, _>(&body, bincode::config::standard())
                .ok()
                .map(|(r, _)| r)
        } else {
            None
        };
        let Some(record) = record else {
            if end < file_len {
                return Err(StorageError::Corrupt(format!(
                    "{}: damaged record at offset {offset} with {} more bytes after it; \
                     refusing to start rather than lose acknowledged entries. Restore the \
                     directory from a backup, or remove it to rejoin as an empty node",
                    path.display(),
                    file_len - end
                )));
            }
            break;
        };
        apply_record(&mut recovered, record);
        offset = end;
    }
    Ok((recovered, offset))
}

fn apply_record(recovered: &mut Recovered, record: Record) {
    match record {
        Record::HardState(hs) => recovered.hard_state = hs,
        Record::Entry(entry) => {
            let keep = entry.index.saturating_sub(1) as usize;
            recovered.entries.truncate(keep);
            if recovered.entries.len() == keep {
                recovered.entries.push(entry);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::Payload;

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("raftnode-storage-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            term,
            index,
            payload: Payload::Command(vec![index as u8; 10]),
        }
    }

    #[test]
    fn recovers_hard_state_and_truncated_log() {
        let dir = temp_dir("recover");
        {
            let (mut s, rec) = Storage::open(&dir, 1, 9).unwrap();
            assert!(rec.entries.is_empty());
            s.save_hard_state(HardState {
                current_term: 3,
                voted_for: Some(2),
            });
            s.append(&[entry(1, 1), entry(2, 1), entry(3, 2)]);
            s.append(&[entry(2, 3)]);
            s.sync().unwrap();
        }
        let (_, rec) = Storage::open(&dir, 1, 9).unwrap();
        assert_eq!(rec.hard_state.current_term, 3);
        assert_eq!(rec.hard_state.voted_for, Some(2));
        assert_eq!(rec.entries, vec![entry(1, 1), entry(2, 3)]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn refuses_other_identity_and_second_opener() {
        let dir = temp_dir("identity");
        let (s, _) = Storage::open(&dir, 1, 9).unwrap();
        assert!(matches!(
            Storage::open(&dir, 1, 9),
            Err(StorageError::Locked(_))
        ));
        drop(s);
        assert!(matches!(
            Storage::open(&dir, 2, 9),
            Err(StorageError::Identity(_))
        ));
        assert!(matches!(
            Storage::open(&dir, 1, 8),
            Err(StorageError::Identity(_))
        ));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn torn_tail_is_dropped_but_inner_damage_refuses() {
        let dir = temp_dir("torn");
        {
            let (mut s, _) = Storage::open(&dir, 1, 9).unwrap();
            s.append(&[entry(1, 1), entry(2, 1), entry(3, 1)]);
            s.sync().unwrap();
        }
        let wal = dir.join("wal");
        let len = fs::metadata(&wal).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&wal)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        {
            let (_, rec) = Storage::open(&dir, 1, 9).unwrap();
            assert_eq!(rec.entries.len(), 2);
        }
        let mut bytes = fs::read(&wal).unwrap();
        bytes[10] ^= 0xff;
        fs::write(&wal, &bytes).unwrap();
        assert!(matches!(
            Storage::open(&dir, 1, 9),
            Err(StorageError::Corrupt(_))
        ));
        fs::remove_dir_all(&dir).unwrap();
    }
}
