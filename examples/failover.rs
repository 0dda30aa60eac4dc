//! Leader failover time: isolate the leader of a running local cluster, time how long until a
//! write succeeds again, heal, and repeat; then print percentiles.
//!
//! ```text
//! cargo run --release --example failover -- --dir CLUSTER_DIR [--rounds 50]
//! ```
//! CLUSTER_DIR is a folder made by `scripts/cluster.sh start` (it reads `cluster.env` and the
//! nodes' control sockets under `node-ID/data/`). `scripts/bench.sh` runs it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use raftnode::client::{Client, Outcome};
use raftnode::config::Cluster;
use raftnode::control;
use raftnode::kv::Op;

const CTL_TIMEOUT: Duration = Duration::from_secs(1);

fn control_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("node-{id}/data/control.sock"))
}

fn status(dir: &Path, id: u64) -> Option<serde_json::Value> {
    let lines = control::request(&control_path(dir, id), "status", CTL_TIMEOUT).ok()?;
    serde_json::from_str(lines.first()?).ok()
}

/// The leader that a majority of nodes agree on, if any.
fn agreed_leader(dir: &Path, cluster: &Cluster) -> Option<u64> {
    let ids = cluster.ids();
    let leaders: Vec<u64> = ids
        .iter()
        .filter_map(|&id| status(dir, id)?["leader"].as_u64())
        .collect();
    let candidate = *leaders.first()?;
    let agree = leaders.iter().filter(|&&l| l == candidate).count();
    let is_leader = status(dir, candidate)?["role"] == "leader";
    (agree == ids.len() && is_leader).then_some(candidate)
}

fn wait_for_agreed_leader(dir: &Path, cluster: &Cluster) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Some(leader) = agreed_leader(dir, cluster) {
            return leader;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("failover: the cluster did not agree on a leader within 20s");
    std::process::exit(1);
}

fn ctl(dir: &Path, id: u64, line: &str) {
    if let Err(e) = control::request(&control_path(dir, id), line, CTL_TIMEOUT) {
        eprintln!("failover: node {id}: {line}: {e}");
        std::process::exit(1);
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((p / 100.0) * (sorted.len() - 1) as f64).round() as usize]
}

fn main() {
    let mut dir = PathBuf::from("cluster");
    let mut rounds = 50usize;
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        match (pair[0].as_str(), pair.get(1)) {
            ("--dir", Some(v)) => dir = PathBuf::from(v),
            ("--rounds", Some(v)) => rounds = v.parse().expect("--rounds takes a number"),
            _ => {
                eprintln!("usage: failover --dir CLUSTER_DIR [--rounds N]");
                std::process::exit(2);
            }
        }
    }
    let env = std::fs::read_to_string(dir.join("cluster.env")).expect("reading cluster.env");
    let spec = env
        .lines()
        .find_map(|l| {
            l.split_once("RAFTNODE_CLUSTER=")
                .map(|(_, v)| v.trim_matches('\''))
        })
        .expect("RAFTNODE_CLUSTER in cluster.env");
    let cluster: Cluster = spec.parse().expect("cluster list");

    let mut times = Vec::with_capacity(rounds);
    for round in 0..rounds.max(1) {
        let leader = wait_for_agreed_leader(&dir, &cluster);
        // A client that knows the old leader, as a real one would.
        let mut client = Client::new(cluster.clone(), None, Duration::from_secs(10)).unwrap();
        let warm = Op::Put {
            key: b"failover".to_vec(),
            value: vec![b'w'],
        };
        assert!(matches!(client.execute(warm), Outcome::Done(_)));

        ctl(&dir, leader, "isolate");
        let start = Instant::now();
        let op = Op::Put {
            key: b"failover".to_vec(),
            value: format!("round {round}").into_bytes(),
        };
        let outcome = client.execute(op);
        let took = start.elapsed().as_secs_f64() * 1000.0;
        ctl(&dir, leader, "heal");
        match outcome {
            Outcome::Done(_) => times.push(took),
            other => eprintln!("round {round}: {other:?}"),
        }
    }
    times.sort_by(f64::total_cmp);
    if times.is_empty() {
        eprintln!("failover: no round succeeded");
        std::process::exit(1);
    }
    println!(
        "failover over {} rounds: first successful write after isolating the leader, ms: \
         p50 {:.0} p90 {:.0} p99 {:.0} max {:.0}",
        times.len(),
        percentile(&times, 50.0),
        percentile(&times, 90.0),
        percentile(&times, 99.0),
        percentile(&times, 100.0)
    );
}
