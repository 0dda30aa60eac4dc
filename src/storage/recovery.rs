//! Start-up recovery: clean up interrupted writes, replay the WAL segments, and fit the
//! replayed log to the snapshot.
//!
//! The rule for damage: a crash can only tear the end of the newest segment, so a bad record
//! with nothing valid after it in the newest segment is cut off with a warning. Anything else
//! (a bad record followed by intact ones, damage in an older segment, a missing segment, a log
//! that does not reach back to the snapshot) cannot come from a crash; the node then refuses to
//! start rather than silently drop entries it may have acknowledged.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};

use super::snapshot::SnapshotFile;
use super::{
    io_err, record_crc, segment_path, Record, Recovered, Segment, StorageError, MAX_RECORD,
    RECORD_HEADER, RECORD_MAGIC, SEGMENT_MAGIC,
};
use crate::core::{Entry, HardState, Index, Term};

/// The log as the WAL describes it, before it is fitted to the snapshot.
#[derive(Debug, Default)]
pub(super) struct ReplayedLog {
    /// Index just before `entries[0]`, and its term when a reset record named it.
    base: Option<(Index, Option<Term>)>,
    entries: Vec<Entry>,
}

/// Everything replaying the WAL produced.
pub(super) struct Replayed {
    pub hard_state: HardState,
    pub log: ReplayedLog,
    pub segments: Vec<Segment>,
    /// The newest segment, opened for appending (None when there is no segment yet).
    pub current: Option<File>,
    pub current_len: u64,
}

/// Removes what an interrupted snapshot, rotation or first start left behind.
pub(super) fn remove_leftovers(dir: &Path, wal_dir: &Path) -> Result<(), StorageError> {
    let mut leftovers: Vec<PathBuf> = ["snapshot.tmp", "meta.tmp"]
        .iter()
        .map(|name| dir.join(name))
        .filter(|p| p.exists())
        .collect();
    let listing =
        fs::read_dir(wal_dir).map_err(io_err(format!("listing {}", wal_dir.display())))?;
    for item in listing.flatten() {
        if item.file_name().to_string_lossy().ends_with(".tmp") {
            leftovers.push(item.path());
        }
    }
    for path in leftovers {
        log::warn!("removing {} left by an interrupted write", path.display());
        fs::remove_file(&path).map_err(io_err(format!("removing {}", path.display())))?;
    }
    Ok(())
}

/// Segment files in order, checking that none is missing in between.
fn list_segments(wal_dir: &Path) -> Result<Vec<(u64, PathBuf)>, StorageError> {
    let listing =
        fs::read_dir(wal_dir).map_err(io_err(format!("listing {}", wal_dir.display())))?;
    let mut segments = Vec::new();
    for item in listing.flatten() {
        let name = item.file_name().to_string_lossy().into_owned();
        let Some(seq) = name
            .strip_suffix(".seg")
            .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        else {
            log::warn!(
                "ignoring unexpected file {} in the wal",
                item.path().display()
            );
            continue;
        };
        segments.push((seq, item.path()));
    }
    segments.sort();
    for pair in segments.windows(2) {
        if pair[1].0 != pair[0].0 + 1 {
            return Err(StorageError::Corrupt(format!(
                "{}: segment {} is missing between {} and {}; refusing to start with a hole \
                 in the log. Restore the data directory from a backup, or remove it to rejoin \
                 as an empty node",
                wal_dir.display(),
                segment_path(wal_dir, pair[0].0 + 1).display(),
                pair[0].1.display(),
                pair[1].1.display()
            )));
        }
    }
    Ok(segments)
}

/// Replays every segment in order.
pub(super) fn replay(wal_dir: &Path) -> Result<Replayed, StorageError> {
    let listed = list_segments(wal_dir)?;
    let mut replayed = Replayed {
        hard_state: HardState::default(),
        log: ReplayedLog::default(),
        segments: Vec::new(),
        current: None,
        current_len: 0,
    };
    let count = listed.len();
    for (i, (seq, path)) in listed.into_iter().enumerate() {
        let newest = i + 1 == count;
        let bytes = fs::read(&path).map_err(io_err(format!("reading {}", path.display())))?;
        if bytes.len() < SEGMENT_MAGIC.len() || &bytes[..SEGMENT_MAGIC.len()] != SEGMENT_MAGIC {
            return Err(corrupt(&path, 0, "the segment header is damaged"));
        }
        let mut max_index = 0;
        let mut offset = SEGMENT_MAGIC.len();
        while offset < bytes.len() {
            match parse_record(&bytes[offset..]) {
                Some((record, used)) => {
                    if let Record::Entry(e) = &record {
                        max_index = max_index.max(e.index);
                    }
                    apply(&mut replayed, record, &path, offset)?;
                    offset += used;
                }
                None => {
                    truncate_or_refuse(&path, &bytes, offset, newest)?;
                    break;
                }
            }
        }
        replayed.segments.push(Segment {
            seq,
            path: path.clone(),
            max_index,
        });
        if newest {
            let file = OpenOptions::new()
                .append(true)
                .open(&path)
                .map_err(io_err(format!("opening {}", path.display())))?;
            replayed.current_len = offset as u64;
            replayed.current = Some(file);
        }
    }
    Ok(replayed)
}

/// Decodes the record at the start of `bytes`, or None if it is not a whole valid record.
fn parse_record(bytes: &[u8]) -> Option<(Record, usize)> {
    if bytes.len() < RECORD_HEADER || &bytes[..2] != RECORD_MAGIC {
        return None;
    }
    let len = u32::from_le_bytes(bytes[2..6].try_into().expect("4 bytes"));
    let crc = u32::from_le_bytes(bytes[6..10].try_into().expect("4 bytes"));
    let end = RECORD_HEADER + len as usize;
    if len > MAX_RECORD || end > bytes.len() {
        return None;
    }
    let body = &bytes[RECORD_HEADER..end];
    if record_crc(len, body) != crc {
        return None;
    }
    let config = bincode::config::standard().with_limit::<{ MAX_RECORD as usize }>();
    let (record, used) = bincode::serde::decode_from_slice::<Record, _>(body, config).ok()?;
    (used == body.len()).then_some((record, end))
}

/// True if any whole valid record starts after `from`.
fn valid_record_after(bytes: &[u8], from: usize) -> bool {
    (from + 1..bytes.len().saturating_sub(RECORD_HEADER - 1))
        .filter(|&at| &bytes[at..at + 2] == RECORD_MAGIC)
        .any(|at| parse_record(&bytes[at..]).is_some())
}

/// A bad record at `offset`: cut it off if it is a torn tail, refuse otherwise.
fn truncate_or_refuse(
    path: &Path,
    bytes: &[u8],
    offset: usize,
    newest: bool,
) -> Result<(), StorageError> {
    if !newest {
        return Err(corrupt(path, offset, "damaged record in an older segment"));
    }
    if valid_record_after(bytes, offset) {
        return Err(corrupt(
            path,
            offset,
            "damaged record followed by intact records",
        ));
    }
    log::warn!(
        "{}: cutting off a torn record at offset {offset} ({} bytes) left by a crash",
        path.display(),
        bytes.len() - offset
    );
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err(format!("opening {}", path.display())))?;
    file.set_len(offset as u64)
        .and_then(|()| file.sync_all())
        .map_err(io_err(format!("truncating {}", path.display())))
}

fn corrupt(path: &Path, offset: usize, what: &str) -> StorageError {
    StorageError::Corrupt(format!(
        "{}: {what} at offset {offset}; this cannot be a torn write from a crash, so the node \
         refuses to start rather than lose entries it may have acknowledged. Restore the data \
         directory from a backup, or remove it to rejoin as an empty node that catches up from \
         the others",
        path.display()
    ))
}

fn apply(
    replayed: &mut Replayed,
    record: Record,
    path: &Path,
    offset: usize,
) -> Result<(), StorageError> {
    let log = &mut replayed.log;
    match record {
        Record::HardState(hs) => replayed.hard_state = hs,
        Record::Reset { index, term } => {
            log.base = Some((index, Some(term)));
            log.entries.clear();
        }
        Record::Entry(entry) => {
            // Without a reset or earlier entry, the first entry seen fixes where the log starts
            // (older segments were deleted once a snapshot covered them).
            let (base, _) = *log
                .base
                .get_or_insert((entry.index.saturating_sub(1), None));
            if entry.index <= base {
                return Ok(());
            }
            let at = (entry.index - base - 1) as usize;
            if at > log.entries.len() {
                let last = base + log.entries.len() as u64;
                let what = format!("entry {} follows entry {last}", entry.index);
                return Err(corrupt(path, offset, &what));
            }
            log.entries.truncate(at);
            if log
                .entries
                .last()
                .is_some_and(|prev| prev.term > entry.term)
            {
                return Err(corrupt(path, offset, "log term decreases"));
            }
            log.entries.push(entry);
        }
    }
    Ok(())
}

/// Fits the replayed log to the snapshot: the log must reach back to the snapshot point, and
/// entries after it survive only if the log agrees with the snapshot there (Figure 13, rule 6).
pub(super) fn reconcile(
    log: ReplayedLog,
    hard_state: HardState,
    snapshot: Option<SnapshotFile>,
) -> Result<Recovered, StorageError> {
    let (snap_index, snap_term) = snapshot
        .as_ref()
        .map_or((0, 0), |s| (s.meta.index, s.meta.term));
    let (base, base_term) = log.base.unwrap_or((snap_index, Some(snap_term)));
    let mut entries = log.entries;
    if base > snap_index {
        return Err(StorageError::Corrupt(format!(
            "the log starts after entry {base} but the snapshot only covers up to {snap_index}: \
             segments are missing. Restore the data directory from a backup, or remove it to \
             rejoin as an empty node"
        )));
    }
    let last = base + entries.len() as u64;
    let term_at_snap = if snap_index == base {
        base_term
    } else if snap_index <= last {
        Some(entries[(snap_index - base - 1) as usize].term)
    } else {
        None
    };
    let keep_from = (snap_index - base) as usize;
    if snap_index > last || term_at_snap.is_some_and(|t| t != snap_term) {
        if !entries.is_empty() {
            log::warn!("log disagrees with the snapshot at {snap_index}: dropping the log");
        }
        entries.clear();
    } else {
        entries.drain(..keep_from);
    }
    Ok(Recovered {
        hard_state,
        snapshot,
        entries,
    })
}
