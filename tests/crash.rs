//! Crash and disk-damage tests of the real binary: kill -9 at random moments under concurrent
//! writes, a follower that has fallen so far behind that only a snapshot can bring it back, and
//! write-ahead-log files damaged on purpose.
//!
//! The nodes run with a tiny `--snapshot-every` and `--segment-bytes`, so snapshots, log
//! compaction and segment rotation happen many times in each test and restarts load snapshots.
//!
//! `acknowledged_writes_survive_random_kill_9` draws its fault schedule from a seed it prints;
//! `RAFTNODE_CRASH_SEED=N cargo test --test crash` replays the schedule (the timing of the
//! processes still differs), and `RAFTNODE_CRASH_ROUNDS=N` changes the number of rounds.

mod common;

use std::fs;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{secs, wait_until, within, Background, Cluster, Rng, FAST};
use raftnode::client::{Client, Outcome};
use raftnode::config::Cluster as Members;
use raftnode::kv::{Op, Reply};

/// Generous bound on an election, a restart or convergence; a healthy run needs well under a
/// second, but the machine may be busy with other tests.
const WAIT: Duration = Duration::from_secs(20);
/// How long one client operation may take before its outcome is unknown. Short, so writers
/// blocked by a dead majority move on soon after the nodes are back.
const OP_TIMEOUT: Duration = Duration::from_millis(1500);
/// Concurrent writers in each round of the kill -9 test.
const WRITERS: usize = 4;
/// Pause between one writer's puts: keeps the store (and so every snapshot) small enough that
/// snapshotting every 50 entries stays cheap on a 2-core machine.
const WRITER_PACE: Duration = Duration::from_millis(4);
/// Upper bound on one writer's puts in one round.
const WRITES_MAX: u64 = 2_000;
/// Threads that read acknowledged writes back.
const READERS: usize = 4;

/// A key and the value an acknowledged put gave it.
type Ack = (String, String);

/// The node flags that make snapshots, compaction and segment rotation frequent.
fn small_storage(snapshot_every: &str) -> Vec<&str> {
    let mut args = FAST.to_vec();
    args.extend_from_slice(&[
        "--snapshot-every",
        snapshot_every,
        "--segment-bytes",
        "4096",
    ]);
    args
}

fn members(c: &Cluster) -> Members {
    c.spec().parse().expect("the harness's cluster list parses")
}

/// The last `n` lines of node `id`'s log.
fn log_tail(c: &Cluster, id: u64, n: usize) -> String {
    let log = c.node(id).log();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Panics, with the end of its log, if any of `ids` is not running: none was killed by the
/// test, so it died on its own.
fn assert_alive(c: &Cluster, ids: &[u64], context: &str) {
    for &id in ids {
        assert!(
            c.is_running(id),
            "{context}: node {id} exited on its own; end of its log:\n{}",
            log_tail(c, id, 60)
        );
    }
}

/// Reads every acknowledged write back through the leader (linearizable reads) with a few
/// clients in parallel. Returns a description of each key that is missing or wrong.
fn unreadable(spec: &Members, acked: &[Ack]) -> Vec<String> {
    let chunk = acked.len().div_ceil(READERS).max(1);
    thread::scope(|scope| {
        let readers: Vec<_> = acked
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    let mut client = Client::new(spec.clone(), None, secs(5)).expect("client");
                    let mut bad = Vec::new();
                    for (key, value) in part {
                        let get = || Op::Get {
                            key: key.clone().into_bytes(),
                        };
                        // Only an answer counts; a read that found no leader in time is retried.
                        let mut outcome = client.execute(get());
                        for _ in 0..2 {
                            if matches!(outcome, Outcome::Done(_)) {
                                break;
                            }
                            outcome = client.execute(get());
                        }
                        match outcome {
                            Outcome::Done(Reply::Value(Some(v))) if v[..] == *value.as_bytes() => {}
                            other => bad.push(format!("{key}: want {value:?}, got {other:?}")),
                        }
                    }
                    bad
                })
            })
            .collect();
        readers
            .into_iter()
            .flat_map(|r| r.join().expect("reader thread"))
            .collect()
    })
}

/// Every put one writer tried, by outcome.
#[derive(Default)]
struct WriterReport {
    acked: Vec<Ack>,
    unknown: usize,
    /// Outcomes a put never legitimately gets (a refusal, or a reply of the wrong kind).
    wrong: Vec<String>,
}

/// Writer threads putting unique keys until told to stop.
struct Writers {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    threads: Vec<thread::JoinHandle<WriterReport>>,
}

impl Writers {
    /// Starts `WRITERS` threads; writer `w` of round `round` puts `r{round}-w{w}-{i}`.
    fn start(spec: &Members, round: u64, tag: u64) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let threads = (0..WRITERS)
            .map(|w| {
                let (spec, stop, acked) = (spec.clone(), stop.clone(), acked.clone());
                thread::spawn(move || {
                    let prefix = format!("r{round}-w{w}");
                    write_until_stopped(spec, &prefix, tag, &stop, &acked)
                })
            })
            .collect();
        Writers {
            stop,
            acked,
            threads,
        }
    }

    /// Puts acknowledged so far, over all writers.
    fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    /// Waits until `more` further puts are acknowledged.
    fn wait_for_progress(&self, more: u64, what: &str) -> Result<(), String> {
        let target = self.acked() + more;
        wait_until(within(WAIT), what, || {
            let now = self.acked();
            if now >= target {
                Ok(())
            } else {
                Err(format!("{now} of {target} puts acknowledged"))
            }
        })
    }

    /// Stops the writers and merges their reports.
    fn finish(mut self) -> WriterReport {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = WriterReport::default();
        for thread in std::mem::take(&mut self.threads) {
            let report = thread.join().expect("writer thread");
            all.acked.extend(report.acked);
            all.unknown += report.unknown;
            all.wrong.extend(report.wrong);
        }
        all
    }
}

impl Drop for Writers {
    /// Stops the writers also when the test fails half-way, so none outlives its cluster.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn write_until_stopped(
    spec: Members,
    prefix: &str,
    tag: u64,
    stop: &AtomicBool,
    acked: &AtomicU64,
) -> WriterReport {
    let mut client = Client::new(spec, None, OP_TIMEOUT).expect("client");
    let mut report = WriterReport::default();
    // A safety net only: the test stops the writers long before this.
    let deadline = within(secs(60));
    for i in 0..WRITES_MAX {
        if stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
            break;
        }
        let key = format!("{prefix}-{i}");
        let value = format!("{tag:x}-{prefix}-{i}");
        let put = Op::Put {
            key: key.clone().into_bytes(),
            value: value.clone().into_bytes(),
        };
        match client.execute(put) {
            Outcome::Done(Reply::Done) => {
                report.acked.push((key, value));
                acked.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Unknown(_) => report.unknown += 1,
            other => report.wrong.push(format!("put {key}: {other:?}")),
        }
        thread::sleep(WRITER_PACE);
    }
    report
}

/// The seed of the fault schedule: `RAFTNODE_CRASH_SEED`, or a fresh one.
fn crash_seed() -> u64 {
    match std::env::var("RAFTNODE_CRASH_SEED") {
        Ok(s) => s.trim().parse().expect("RAFTNODE_CRASH_SEED is a number"),
        Err(_) => Rng::from_clock().next_u64() >> 1,
    }
}

fn crash_rounds() -> u64 {
    std::env::var("RAFTNODE_CRASH_ROUNDS").map_or(30, |s| {
        s.trim().parse().expect("RAFTNODE_CRASH_ROUNDS is a number")
    })
}

/// `n` distinct ids out of `ids`, chosen by `rng`.
fn choose(rng: &mut Rng, ids: &[u64], n: usize) -> Vec<u64> {
    let mut pool = ids.to_vec();
    let mut chosen = Vec::new();
    while chosen.len() < n {
        let at = rng.range(0, pool.len() as u64) as usize;
        chosen.push(pool.swap_remove(at));
    }
    chosen.sort_unstable();
    chosen
}

/// Highest segment number in node `id`'s WAL (how many segments it has ever started).
fn newest_segment_seq(c: &Cluster, id: u64) -> u64 {
    segments(&c.node(id).data_dir)
        .last()
        .map_or(0, |(seq, _)| *seq)
}

/// Counts over the whole kill -9 test, printed at the end.
#[derive(Debug, Default)]
struct Tally {
    acked: usize,
    unknown: usize,
    kills: usize,
    restarts_from_snapshot: usize,
}

/// Kills `victims` with SIGKILL, lets the writers run on for a random moment, and restarts
/// them; checks that a node with a snapshot file restarts from it.
fn kill_and_restart(
    c: &mut Cluster,
    rng: &mut Rng,
    victims: &[u64],
    tally: &mut Tally,
    context: &str,
) {
    for &id in victims {
        c.kill9(id);
    }
    tally.kills += victims.len();

    // The writers keep going (blocked, if a majority died) until the victims are back.
    thread::sleep(Duration::from_millis(rng.range(0, 300)));
    for &id in victims {
        let has_snapshot = c.node(id).data_dir.join("snapshot").exists();
        c.start_node(id);
        let status = c.status(id).unwrap();
        if has_snapshot {
            assert!(
                status.snapshot_index > 0,
                "{context}: node {id} had a snapshot file but restarted without it: {}",
                status.brief()
            );
            tally.restarts_from_snapshot += 1;
        }
    }
}

#[test]
fn acknowledged_writes_survive_random_kill_9() {
    let seed = crash_seed();
    let rounds = crash_rounds();
    eprintln!("crash seed {seed} (replay with RAFTNODE_CRASH_SEED={seed}), {rounds} rounds");
    let started = Instant::now();
    let mut rng = Rng::new(seed);
    let mut c = Cluster::start("kill9", 3, &small_storage("50"));
    let ids = c.ids();
    let spec = members(&c);
    c.wait_for_leader(&ids, within(WAIT)).unwrap();

    let mut all_acked: Vec<Ack> = Vec::new();
    let mut tally = Tally::default();
    for round in 0..rounds {
        let context = format!("seed {seed} round {round}");
        let writers = Writers::start(&spec, round, seed);
        writers
            .wait_for_progress(WRITERS as u64, "writers to start")
            .unwrap_or_else(|e| panic!("{context}: {e}"));

        // The fault: after a random pause, kill -9 one, two or all three nodes at once.
        thread::sleep(Duration::from_millis(rng.range(0, 400)));
        let count = rng.range(1, 4) as usize;
        let mut victims = choose(&mut rng, &ids, count);
        assert_alive(&c, &ids, &format!("{context}, before the kill"));
        kill_and_restart(&mut c, &mut rng, &victims, &mut tally, &context);

        // Sometimes a second blow while the restarted nodes recover and catch up.
        if rng.range(0, 4) == 0 {
            thread::sleep(Duration::from_millis(rng.range(0, 150)));
            let again = choose(&mut rng, &ids, 1);
            assert_alive(&c, &ids, &format!("{context}, before the second kill"));
            kill_and_restart(&mut c, &mut rng, &again, &mut tally, &context);
            victims.extend(again);
        }
        c.wait_for_leader(&ids, within(WAIT))
            .unwrap_or_else(|e| panic!("{context}: after restarting {victims:?}: {e}"));
        writers
            .wait_for_progress(
                WRITERS as u64,
                "writes to be acknowledged after the restart",
            )
            .unwrap_or_else(|e| panic!("{context}: after restarting {victims:?}: {e}"));
        let report = writers.finish();

        assert!(report.wrong.is_empty(), "{context}: {:?}", report.wrong);
        assert_alive(&c, &ids, &format!("{context}, after the round"));
        c.wait_converged(&ids, within(WAIT))
            .unwrap_or_else(|e| panic!("{context}: {e}"));
        let lost = unreadable(&spec, &report.acked);
        assert!(
            lost.is_empty(),
            "{context}: {} of {} acknowledged writes of this round are lost after killing \
             {victims:?}, e.g. {:?}",
            lost.len(),
            report.acked.len(),
            &lost[..lost.len().min(10)]
        );
        eprintln!(
            "round {round}: killed {victims:?}, {} acknowledged, {} unknown ({:?} so far)",
            report.acked.len(),
            report.unknown,
            started.elapsed()
        );
        tally.acked += report.acked.len();
        tally.unknown += report.unknown;
        all_acked.extend(report.acked);
    }

    // Every write acknowledged in any round is still there, with its value, and every node
    // applied the same entries.
    let lost = unreadable(&spec, &all_acked);
    assert!(
        lost.is_empty(),
        "seed {seed}: {} of {} acknowledged writes lost by the end, e.g. {:?}",
        lost.len(),
        all_acked.len(),
        &lost[..lost.len().min(10)]
    );
    let last = c.wait_converged(&ids, within(WAIT)).unwrap();
    assert!(
        last.keys >= all_acked.len() as u64,
        "seed {seed}: {} keys, {} acknowledged: {}",
        last.keys,
        all_acked.len(),
        last.brief()
    );
    assert_alive(&c, &ids, &format!("seed {seed}, at the end"));

    // The storage paths the test is about were really taken, many times over.
    assert!(
        tally.restarts_from_snapshot >= rounds as usize / 2,
        "seed {seed}: few restarts loaded a snapshot: {tally:?}"
    );
    for &id in &ids {
        let status = c.status(id).unwrap();
        assert!(status.snapshot_index > 0, "{}", status.brief());
        let seq = newest_segment_seq(&c, id);
        assert!(seq >= 10, "node {id} started only {seq} WAL segments");
    }
    eprintln!(
        "seed {seed}: {tally:?}, {:?}, {}",
        started.elapsed(),
        last.brief()
    );
}

// ----- a follower far behind -----

/// Puts `count` keys `{prefix}{i}` with `value_len`-byte values from `threads` clients in
/// parallel, each put retried until acknowledged.
fn put_many(spec: &Members, prefix: &str, count: usize, value_len: usize, threads: usize) {
    let per_thread = count.div_ceil(threads);
    thread::scope(|scope| {
        for t in 0..threads {
            scope.spawn(move || {
                let mut client = Client::new(spec.clone(), None, secs(5)).expect("client");
                for i in t * per_thread..((t + 1) * per_thread).min(count) {
                    let key = format!("{prefix}{i}");
                    let mut value = format!("{i}-").into_bytes();
                    value.resize(value_len, b'a' + (i % 26) as u8);
                    let put = || Op::Put {
                        key: key.clone().into_bytes(),
                        value: value.clone(),
                    };
                    let acknowledged =
                        (0..5).any(|_| client.execute(put()) == Outcome::Done(Reply::Done));
                    assert!(acknowledged, "put {key} was not acknowledged in 5 attempts");
                }
            });
        }
    });
}

#[test]
fn lagging_follower_catches_up_by_snapshot() {
    let mut c = Cluster::start("lagging", 3, &small_storage("100"));
    let ids = c.ids();
    let spec = members(&c);
    let (first_leader, _) = c.wait_for_leader(&ids, within(WAIT)).unwrap();
    let leader = first_leader;
    let lagging = *ids.iter().find(|&&id| id != leader).unwrap();
    let other = *ids
        .iter()
        .find(|&&id| id != leader && id != lagging)
        .unwrap();
    put_many(&spec, "early", 20, 16, 1);
    c.wait_converged(&ids, within(WAIT)).unwrap();
    let behind_at = c.status(lagging).unwrap().last_log_index;
    c.kill9(lagging);

    // The leader compacts far past the follower: it keeps 1,000 entries below its snapshot,
    // so the follower must be more than that behind. 2,500 puts of 400 bytes make a snapshot
    // of about 32 chunks, so the 20% loss below is all but certain to hit some of them.
    put_many(&spec, "k", 2_500, 400, 4);
    // Usually still the first leader, but a busy machine may have elected the other node.
    let (leader, _) = c.wait_for_leader(&[leader, other], within(WAIT)).unwrap();
    let other = if leader == other { first_leader } else { other };
    let status = c.status(leader).unwrap();
    assert!(
        status.snapshot_index > behind_at + 1_000,
        "the leader still holds the follower's next entry: {} (follower at {behind_at})",
        status.brief()
    );

    // Hold the follower's traffic back until its lossy input rule is in place (rules do not
    // survive a restart, and the transfer takes only milliseconds without loss).
    let to_lagging = lagging.to_string();
    let hold = ["OUTPUT", "-d", to_lagging.as_str(), "-j", "DROP"];
    for id in [leader, other] {
        c.ctl_ok(id, &[&["-A"][..], &hold].concat());
    }
    c.start_node(lagging);
    let from_leader = leader.to_string();
    let lossy = [
        "-A",
        "INPUT",
        "-s",
        &from_leader,
        "-m",
        "statistic",
        "--mode",
        "random",
        "--probability",
        "0.2",
        "-j",
        "DROP",
    ];
    c.ctl_ok(lagging, &lossy);
    for id in [leader, other] {
        c.ctl_ok(id, &[&["-D"][..], &hold].concat());
    }

    let installed = wait_until(within(WAIT), "the snapshot to be installed", || {
        let s = c.status(lagging)?;
        if s.counter("snapshots_installed") >= 1 && s.snapshot_index > 0 {
            Ok(s)
        } else {
            Err(format!("{} snapshot_index {}", s.brief(), s.snapshot_index))
        }
    })
    .unwrap();
    assert!(
        installed.snapshot_index > behind_at + 1_000,
        "the follower installed an old snapshot: {}",
        installed.snapshot_index
    );
    let converged = c.wait_converged(&ids, within(WAIT)).unwrap();
    assert_eq!(converged.keys, 2_520, "{}", converged.brief());
    let follower = c.status(lagging).unwrap();
    assert!(
        follower.counter("dropped_rule_in") > 0,
        "the lossy rule dropped nothing: {:?}",
        follower.counters
    );
    assert_alive(&c, &ids, "after the catch-up");

    // The cluster still takes writes, and the caught-up follower applies them.
    c.ctl_ok(lagging, &["-F"]);
    put_many(&spec, "late", 20, 16, 1);
    let last = c.wait_converged(&ids, within(WAIT)).unwrap();
    assert_eq!(last.keys, 2_540, "{}", last.brief());
}

// ----- damaged WAL files -----

/// The segment files in `data_dir/wal`, oldest first, with their sequence numbers.
fn segments(data_dir: &Path) -> Vec<(u64, PathBuf)> {
    let Ok(listing) = fs::read_dir(data_dir.join("wal")) else {
        return Vec::new();
    };
    let mut found: Vec<(u64, PathBuf)> = listing
        .flatten()
        .filter_map(|item| {
            let name = item.file_name().to_string_lossy().into_owned();
            let seq = u64::from_str_radix(name.strip_suffix(".seg")?, 16).ok()?;
            Some((seq, item.path()))
        })
        .collect();
    found.sort();
    found
}

/// Start offset and length of each whole record in a segment, as README "Durability" frames
/// them: the magic `RFTNWAL1`, then records `"RN" | length u32 | crc32c u32 | body`.
fn records(bytes: &[u8]) -> Vec<(usize, usize)> {
    const HEADER: usize = 10;
    let mut found = Vec::new();
    let mut at = 8;
    while at + HEADER <= bytes.len() && &bytes[at..at + 2] == b"RN" {
        let len = u32::from_le_bytes(bytes[at + 2..at + 6].try_into().unwrap()) as usize;
        if at + HEADER + len > bytes.len() {
            break;
        }
        found.push((at, HEADER + len));
        at += HEADER + len;
    }
    found
}

/// Puts keys until node `id`'s newest segment holds at least 3 records (so more than the hard
/// state it opens with), and returns its path.
fn fill_newest_segment(c: &Cluster, spec: &Members, id: u64) -> PathBuf {
    let data_dir = &c.node(id).data_dir;
    wait_until(within(WAIT), "a newest segment with records", || {
        put_many(spec, "fill", 3, 40, 1);
        let (_, path) = segments(data_dir).pop().ok_or("no segments")?;
        let bytes = fs::read(&path).map_err(|e| e.to_string())?;
        let count = records(&bytes).len();
        if count >= 3 {
            Ok(path)
        } else {
            Err(format!("{} has {count} records", path.display()))
        }
    })
    .unwrap()
}

/// Cuts the last 3 bytes off `segment`, as a write torn by a crash would leave it; returns
/// the offset of the record that is now incomplete.
fn tear_last_record(segment: &Path) -> usize {
    let bytes = fs::read(segment).unwrap();
    let (last_at, last_len) = *records(&bytes).last().expect("a record");
    assert_eq!(
        last_at + last_len,
        bytes.len(),
        "{} ends on a whole record",
        segment.display()
    );
    fs::OpenOptions::new()
        .write(true)
        .open(segment)
        .unwrap()
        .set_len((bytes.len() - 3) as u64)
        .unwrap();
    last_at
}

/// Restarts node `id` after `tear_last_record` and checks that it says what it cut off.
fn restart_after_tear(c: &mut Cluster, id: u64, segment: &Path, offset: usize) {
    let log_before = c.node(id).log().len();
    c.start_node(id);
    let log = c.node(id).log();
    let restart_log = &log[log_before..];
    let warning = restart_log
        .lines()
        .find(|l| l.contains("torn record"))
        .unwrap_or_else(|| panic!("no warning about the torn record:\n{restart_log}"));
    assert!(
        warning.contains("WARN") && warning.contains(&segment.display().to_string()),
        "the warning names the file: {warning}"
    );
    assert!(
        warning.contains(&format!("offset {offset}")),
        "the warning names offset {offset}: {warning}"
    );
}

#[test]
fn damaged_wal_refuses_to_start_and_torn_tail_recovers() {
    // No snapshots, so no segment is deleted and older segments keep their records.
    let mut c = Cluster::start("damaged", 3, &small_storage("0"));
    let ids = c.ids();
    let spec = members(&c);
    let (leader, _) = c.wait_for_leader(&ids, within(WAIT)).unwrap();
    put_many(&spec, "k", 150, 40, 2);

    // (a) A few bytes missing from the end of the newest segment: a torn write. The victim is
    // the leader, so the next leader learns the victim's log afresh. (A follower whose cut-off
    // entry the leader already counted: see the last test below.)
    let victim = leader;
    let data_dir = c.node(victim).data_dir.clone();
    let newest = fill_newest_segment(&c, &spec, victim);
    c.wait_converged(&ids, within(WAIT)).unwrap();
    c.kill9(victim);
    let offset = tear_last_record(&newest);
    restart_after_tear(&mut c, victim, &newest, offset);
    c.wait_for_leader(&ids, within(WAIT)).unwrap();
    put_many(&spec, "after-torn", 10, 40, 1);
    c.wait_converged(&ids, within(WAIT)).unwrap();

    // (b) One flipped byte inside a record that intact records follow cannot come from a
    // crash: the node refuses to start and says where.
    c.kill9(victim);
    let (damaged, original, at) = segments(&data_dir)
        .into_iter()
        .find_map(|(_, path)| {
            let bytes = fs::read(&path).ok()?;
            let found = records(&bytes);
            (found.len() >= 3).then(|| {
                let (at, _) = found[found.len() / 2];
                (path, bytes, at)
            })
        })
        .expect("a segment with at least 3 records");
    let (_, len) = records(&original)
        .into_iter()
        .find(|&(start, _)| start == at)
        .unwrap();
    let mut bytes = original.clone();
    bytes[at + 10 + (len - 10) / 2] ^= 0x40;
    fs::write(&damaged, &bytes).unwrap();

    let args = c.run_args(victim);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut refused = Background::spawn(&args, None);
    let control = c.node(victim).control_path();
    wait_until(within(WAIT), "the node to refuse to start", || {
        if !refused.is_running() {
            return Ok(());
        }
        if serves_control(&control) {
            Ok(())
        } else {
            Err("still running".to_string())
        }
    })
    .unwrap();
    let out = refused.finish(Duration::ZERO);
    assert!(
        matches!(out.code, Some(code) if code != 0),
        "run on a damaged WAL must exit non-zero by itself: {}",
        out.describe()
    );
    assert!(
        out.stderr.contains(&damaged.display().to_string())
            && out.stderr.contains(&format!("offset {at}")),
        "the error names {} and offset {at}: {}",
        damaged.display(),
        out.describe()
    );

    // Restored, the file is fine again and the node rejoins.
    fs::write(&damaged, &original).unwrap();
    c.start_node(victim);
    put_many(&spec, "after-restore", 10, 40, 1);
    let last = c.wait_converged(&ids, within(WAIT)).unwrap();
    assert!(last.keys >= 170, "{}", last.brief());
    assert_alive(&c, &ids, "at the end");
}

/// A follower restarts without the last entry it acknowledged (its final record was cut off
/// as torn) while the leader that counted that entry stays in charge. Raft's fsync-before-ack
/// rule means a real crash tears only records never acknowledged, but `run` cuts any bad tail
/// record, so damage there must not stall the follower for good.
#[test]
fn torn_tail_of_a_follower_converges_under_the_same_leader() {
    let mut c = Cluster::start("torn-follower", 3, &small_storage("0"));
    let ids = c.ids();
    let spec = members(&c);
    let (leader, term) = c.wait_for_leader(&ids, within(WAIT)).unwrap();
    let victim = *ids.iter().find(|&&id| id != leader).unwrap();
    put_many(&spec, "k", 150, 40, 2);
    let newest = fill_newest_segment(&c, &spec, victim);
    c.wait_converged(&ids, within(WAIT)).unwrap();

    c.kill9(victim);
    let offset = tear_last_record(&newest);
    restart_after_tear(&mut c, victim, &newest, offset);
    put_many(&spec, "after-torn", 10, 40, 1);
    c.wait_converged(&ids, within(WAIT)).unwrap();
    assert_eq!(
        c.wait_for_leader(&ids, within(WAIT)).unwrap(),
        (leader, term)
    );
}

/// Whether a node serves its control socket; a socket file left by a killed node refuses.
fn serves_control(path: &Path) -> bool {
    UnixStream::connect(path).is_ok()
}
