//! Load generator: N concurrent clients doing puts (or gets) against a running cluster for a
//! fixed time, then throughput and latency percentiles.
//!
//! ```text
//! cargo run --release --example bench -- --cluster LIST [--clients N] [--duration 10s]
//!     [--op put|get] [--value-size 100] [--keys 1000]
//! ```
//! `scripts/bench.sh` starts a local cluster and runs this against it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use raftnode::client::{Client, Outcome};
use raftnode::config::Cluster;
use raftnode::kv::Op;

struct Args {
    cluster: Cluster,
    clients: usize,
    duration: Duration,
    op: String,
    value_size: usize,
    keys: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        cluster: std::env::var("RAFTNODE_CLUSTER")
            .unwrap_or_default()
            .parse()
            .unwrap_or_else(|_| "1=127.0.0.1:1".parse().expect("literal")),
        clients: 1,
        duration: Duration::from_secs(10),
        op: "put".to_string(),
        value_size: 100,
        keys: 1000,
    };
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let mut it = raw.iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--cluster" => args.cluster = value.parse()?,
            "--clients" => args.clients = value.parse().map_err(|_| "bad --clients")?,
            "--duration" => {
                args.duration = humantime::parse_duration(value).map_err(|e| e.to_string())?
            }
            "--op" => args.op = value.clone(),
            "--value-size" => args.value_size = value.parse().map_err(|_| "bad --value-size")?,
            "--keys" => args.keys = value.parse().map_err(|_| "bad --keys")?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if args.clients == 0 || args.clients > 1024 {
        return Err("--clients must be 1..=1024".into());
    }
    Ok(args)
}

struct Tally {
    latencies_us: Vec<u32>,
    unknown: u64,
}

fn worker(args: &Args, n: usize, stop: &AtomicBool) -> Tally {
    let mut client =
        Client::new(args.cluster.clone(), None, Duration::from_secs(5)).expect("client socket");
    let value = vec![b'v'; args.value_size];
    let mut tally = Tally {
        latencies_us: Vec::with_capacity(100_000),
        unknown: 0,
    };
    let mut i = n;
    while !stop.load(Ordering::Relaxed) {
        let key = format!("key-{}", i % args.keys).into_bytes();
        i += args.clients;
        let op = match args.op.as_str() {
            "get" => Op::Get { key },
            _ => Op::Put {
                key,
                value: value.clone(),
            },
        };
        let start = Instant::now();
        match client.execute(op) {
            Outcome::Done(_) => {
                let us = start.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
                tally.latencies_us.push(us);
            }
            _ => tally.unknown += 1,
        }
    }
    tally
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    f64::from(sorted[rank]) / 1000.0
}

fn main() {
    let args = match parse_args() {
        Ok(args) => Arc::new(args),
        Err(e) => {
            eprintln!("bench: {e}");
            std::process::exit(2);
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    // Warm up: one op finds the leader and makes sure the cluster answers.
    let mut probe =
        Client::new(args.cluster.clone(), None, Duration::from_secs(10)).expect("socket");
    if !matches!(
        probe.execute(Op::Get {
            key: b"warmup".to_vec()
        }),
        Outcome::Done(_)
    ) {
        eprintln!("bench: the cluster does not answer");
        std::process::exit(1);
    }
    let started = Instant::now();
    let handles: Vec<_> = (0..args.clients)
        .map(|n| {
            let (args, stop) = (Arc::clone(&args), Arc::clone(&stop));
            thread::spawn(move || worker(&args, n, &stop))
        })
        .collect();
    thread::sleep(args.duration);
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    let mut unknown = 0;
    for h in handles {
        let tally = h.join().expect("worker");
        all.extend(tally.latencies_us);
        unknown += tally.unknown;
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_unstable();
    println!(
        "{} clients, {}: {} ops in {:.1}s = {:.0} ops/s; latency ms p50 {:.3} p90 {:.3} p99 {:.3} max {:.3}; {} unknown",
        args.clients,
        args.op,
        all.len(),
        elapsed,
        all.len() as f64 / elapsed,
        percentile(&all, 50.0),
        percentile(&all, 90.0),
        percentile(&all, 99.0),
        percentile(&all, 100.0),
        unknown
    );
}
