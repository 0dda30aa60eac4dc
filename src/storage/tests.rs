//! Storage tests, including fault injection: every truncation point, flipped bytes, missing
//! segments, damaged snapshots, and interrupted snapshot installs.

use super::*;
use crate::core::Payload;

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "raftnode-storage-{name}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&dir);
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn entry(index: u64, term: u64) -> Entry {
    Entry {
        term,
        index,
        payload: Payload::Command(vec![index as u8; 10]),
    }
}

fn open(dir: &Path) -> Result<(Storage, Recovered), StorageError> {
    Storage::open(dir, 1, 9, DEFAULT_SEGMENT_BYTES)
}

fn open_small(dir: &Path) -> (Storage, Recovered) {
    Storage::open(dir, 1, 9, 4096).unwrap()
}

fn write_entries(s: &mut Storage, range: std::ops::RangeInclusive<u64>, term: u64) {
    for i in range {
        s.append(&[entry(i, term)]);
        s.sync().unwrap();
    }
}

fn only_segment(dir: &Path) -> PathBuf {
    let mut segs: Vec<PathBuf> = fs::read_dir(dir.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segs.sort();
    segs.pop().unwrap()
}

fn indexes(rec: &Recovered) -> Vec<u64> {
    rec.entries.iter().map(|e| e.index).collect()
}

#[test]
fn recovers_hard_state_and_truncated_log() {
    let t = TempDir::new("recover");
    {
        let (mut s, rec) = open(&t.0).unwrap();
        assert!(rec.entries.is_empty());
        s.save_hard_state(HardState {
            current_term: 3,
            voted_for: Some(2),
        });
        s.append(&[entry(1, 1), entry(2, 1), entry(3, 2)]);
        s.append(&[entry(2, 3)]);
        s.sync().unwrap();
    }
    let (_, rec) = open(&t.0).unwrap();
    assert_eq!(rec.hard_state.current_term, 3);
    assert_eq!(rec.hard_state.voted_for, Some(2));
    assert_eq!(rec.entries, vec![entry(1, 1), entry(2, 3)]);
}

#[test]
fn refuses_other_identity_and_second_opener() {
    let t = TempDir::new("identity");
    let (s, _) = open(&t.0).unwrap();
    assert!(matches!(open(&t.0), Err(StorageError::Locked(_))));
    drop(s);
    let other_node = Storage::open(&t.0, 2, 9, DEFAULT_SEGMENT_BYTES);
    assert!(matches!(other_node, Err(StorageError::Identity(_))));
    let other_cluster = Storage::open(&t.0, 1, 8, DEFAULT_SEGMENT_BYTES);
    assert!(matches!(other_cluster, Err(StorageError::Identity(_))));
}

// A crash can stop a write anywhere: every cut of the newest segment recovers exactly the
// records that were whole before the cut.
#[test]
fn every_truncation_point_recovers_the_whole_records_before_it() {
    let t = TempDir::new("cuts");
    let mut ends = Vec::new();
    let head;
    {
        let (mut s, _) = open(&t.0).unwrap();
        head = s.current_len as usize;
        for i in 1..=6 {
            s.append(&[entry(i, 1)]);
            s.sync().unwrap();
            ends.push(s.current_len as usize);
        }
    }
    let seg = only_segment(&t.0);
    let pristine = fs::read(&seg).unwrap();
    for cut in head..=pristine.len() {
        fs::write(&seg, &pristine[..cut]).unwrap();
        let (_, rec) = open(&t.0).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        let whole = ends.iter().filter(|&&end| end <= cut).count();
        let want: Vec<u64> = (1..=whole as u64).collect();
        assert_eq!(indexes(&rec), want, "cut at {cut}");
        let kept = if whole == 0 { head } else { ends[whole - 1] };
        let len = fs::metadata(&seg).unwrap().len() as usize;
        assert_eq!(len, kept, "torn tail cut off after a cut at {cut}");
    }
}

#[test]
fn damage_before_intact_records_refuses_to_start() {
    let t = TempDir::new("flip");
    {
        let (mut s, _) = open(&t.0).unwrap();
        write_entries(&mut s, 1..=5, 1);
    }
    let seg = only_segment(&t.0);
    let pristine = fs::read(&seg).unwrap();
    // Flip one byte in every position of the second record and beyond, except the last record:
    // each must refuse, naming the file and an offset.
    let last_record_start = pristine.len() - (RECORD_HEADER + 16);
    for at in [
        SEGMENT_MAGIC.len() + 30,
        pristine.len() / 2,
        last_record_start - 5,
    ] {
        let mut bytes = pristine.clone();
        bytes[at] ^= 0x40;
        fs::write(&seg, &bytes).unwrap();
        match open(&t.0) {
            Err(StorageError::Corrupt(msg)) => {
                assert!(msg.contains(&seg.display().to_string()), "{msg}");
                assert!(msg.contains("offset"), "{msg}");
            }
            Err(other) => panic!("flip at {at}: wrong error {other}"),
            Ok((_, rec)) => panic!("flip at {at}: started with {:?}", indexes(&rec)),
        }
    }
    // Damage in the very last record looks like a torn write: cut off, the rest recovered.
    let mut bytes = pristine.clone();
    let at = pristine.len() - 3;
    bytes[at] ^= 0x40;
    fs::write(&seg, &bytes).unwrap();
    let (_, rec) = open(&t.0).unwrap();
    assert_eq!(indexes(&rec), vec![1, 2, 3, 4]);
}

#[test]
fn segments_rotate_and_a_missing_one_refuses() {
    let t = TempDir::new("rotate");
    {
        let (mut s, _) = open_small(&t.0);
        s.save_hard_state(HardState {
            current_term: 7,
            voted_for: Some(1),
        });
        write_entries(&mut s, 1..=400, 7);
        assert!(
            s.segment_count() >= 3,
            "only {} segments",
            s.segment_count()
        );
    }
    let (s, rec) = open_small(&t.0);
    assert_eq!(indexes(&rec), (1..=400).collect::<Vec<_>>());
    assert_eq!(rec.hard_state.current_term, 7);
    let middle = s.segments[1].path.clone();
    let first = s.segments[0].path.clone();
    drop(s);

    let saved = fs::read(&middle).unwrap();
    fs::remove_file(&middle).unwrap();
    match open_small_err(&t.0) {
        StorageError::Corrupt(msg) => assert!(msg.contains("missing"), "{msg}"),
        other => panic!("wrong error {other}"),
    }
    fs::write(&middle, saved).unwrap();

    fs::remove_file(&first).unwrap();
    match open_small_err(&t.0) {
        StorageError::Corrupt(msg) => assert!(msg.contains("segments are missing"), "{msg}"),
        other => panic!("wrong error {other}"),
    }
}

fn open_small_err(dir: &Path) -> StorageError {
    match Storage::open(dir, 1, 9, 4096) {
        Err(e) => e,
        Ok((_, rec)) => panic!("opened with {:?}", indexes(&rec)),
    }
}

#[test]
fn snapshot_compacts_covered_segments() {
    let t = TempDir::new("compact");
    {
        let (mut s, _) = open_small(&t.0);
        s.save_hard_state(HardState {
            current_term: 2,
            voted_for: None,
        });
        write_entries(&mut s, 1..=400, 2);
        let before = s.segment_count();
        let meta = SnapshotMeta {
            index: 300,
            term: 2,
        };
        s.save_snapshot(meta, b"state at 300").unwrap();
        assert!(s.segment_count() < before, "nothing deleted");
        write_entries(&mut s, 401..=410, 2);
    }
    let (_, rec) = open_small(&t.0);
    let snap = rec.snapshot.as_ref().unwrap();
    assert_eq!(snap.meta.index, 300);
    assert_eq!(snap.data, b"state at 300");
    assert_eq!(indexes(&rec), (301..=410).collect::<Vec<_>>());
    assert_eq!(
        rec.hard_state.current_term, 2,
        "hard state survives deleted segments"
    );
}

#[test]
fn installed_snapshot_replaces_the_log() {
    let t = TempDir::new("install");
    {
        let (mut s, _) = open(&t.0).unwrap();
        write_entries(&mut s, 1..=20, 1);
        let meta = SnapshotMeta { index: 50, term: 3 };
        s.install_snapshot(meta, b"leader state").unwrap();
        write_entries(&mut s, 51..=52, 3);
    }
    let (_, rec) = open(&t.0).unwrap();
    assert_eq!(rec.snapshot.as_ref().unwrap().meta.index, 50);
    assert_eq!(indexes(&rec), vec![51, 52]);
}

// Figure 13, rule 6: a crash after the snapshot was saved but before the log was reset leaves
// the old log; entries survive only if the log agrees with the snapshot at its last index.
#[test]
fn interrupted_install_keeps_only_an_agreeing_log() {
    let t = TempDir::new("interrupted");
    {
        let (mut s, _) = open(&t.0).unwrap();
        write_entries(&mut s, 1..=10, 1);
    }
    let agree = SnapshotMeta { index: 5, term: 1 };
    snapshot::save(&t.0, agree, b"x").unwrap();
    let (s, rec) = open(&t.0).unwrap();
    assert_eq!(indexes(&rec), (6..=10).collect::<Vec<_>>());
    drop(s);
    let disagree = SnapshotMeta { index: 8, term: 2 };
    snapshot::save(&t.0, disagree, b"y").unwrap();
    let (_, rec) = open(&t.0).unwrap();
    assert!(rec.entries.is_empty());
}

#[test]
fn leftovers_are_removed_and_damaged_snapshot_refuses() {
    let t = TempDir::new("leftovers");
    drop(open(&t.0).unwrap());
    fs::write(t.0.join("snapshot.tmp"), b"half").unwrap();
    fs::write(t.0.join("wal").join("0000000000000002.seg.tmp"), b"half").unwrap();
    drop(open(&t.0).unwrap());
    assert!(!t.0.join("snapshot.tmp").exists());
    assert!(!t.0.join("wal").join("0000000000000002.seg.tmp").exists());

    snapshot::save(&t.0, SnapshotMeta { index: 1, term: 1 }, b"data").unwrap();
    let path = t.0.join("snapshot");
    let mut bytes = fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    fs::write(&path, bytes).unwrap();
    match open(&t.0) {
        Err(StorageError::Corrupt(msg)) => assert!(msg.contains("damaged snapshot"), "{msg}"),
        Err(other) => panic!("wrong error {other}"),
        Ok(_) => panic!("started on a damaged snapshot"),
    }
}
