//! Process management for the chaos test: a cluster of real `raftnode` processes on 127.0.0.1
//! that the test may kill -9, restart, stop (SIGSTOP) and continue, and whose control sockets
//! it drives.
//!
//! Everything here belongs to the test that created it: the temporary directory (removed on
//! drop unless the test failed or `RAFTNODE_TEST_KEEP` is set), the node processes (killed by
//! pid on drop, also when the test panics) and the ports. A node that exits without the test
//! having killed it is a crash; [`Cluster::reap_crashes`] notices it and keeps its exit status.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use rand::Rng;

use raftnode::control;

use super::common::pick_ports;
pub use super::common::wait_until;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_raftnode");

/// Longest wait for one control command.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest wait for a started node to answer on its control socket.
const START_LIMIT: Duration = Duration::from_secs(20);

/// A temporary directory, removed on drop unless asked to keep it.
pub struct TempDir {
    path: PathBuf,
    keep: bool,
}

impl TempDir {
    /// Creates `$TMP/raftnode-chaos-UNIQUE`.
    pub fn new() -> TempDir {
        let unique: u64 = rand::thread_rng().gen();
        let name = format!("raftnode-chaos-{}-{unique:x}", std::process::id());
        let path = std::env::temp_dir().join(name);
        fs::create_dir_all(&path).expect("creating the chaos temp dir");
        let keep = std::env::var_os("RAFTNODE_TEST_KEEP").is_some();
        TempDir { path, keep }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Keep the directory after the test (it holds the node logs).
    pub fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.keep || thread::panicking() {
            eprintln!("chaos files kept in {}", self.path.display());
            return;
        }
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// What the test did to a node's process last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Life {
    /// Running (as far as the test knows).
    Running,
    /// Stopped with SIGSTOP by the test.
    Paused,
    /// Killed by the test, or found dead and reaped; not running.
    Down,
}

/// One node: its files and, while it runs, its process.
pub struct Node {
    /// Node id.
    pub id: u64,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Its stderr, appended to across restarts.
    pub log_path: PathBuf,
    child: Option<Child>,
    /// What the test did to it last.
    pub life: Life,
    /// Times it was started.
    pub starts: u32,
}

impl Node {
    /// The control socket.
    pub fn control_path(&self) -> PathBuf {
        self.data_dir.join("control.sock")
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = fs::read_to_string(&self.log_path).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn signal(&mut self, signal: i32) -> Result<(), String> {
        let child = self.child.as_mut().ok_or("not running")?;
        // Our own unreaped child, so the pid cannot have been reused.
        let pid = child.id() as libc::pid_t;
        if unsafe { libc::kill(pid, signal) } != 0 {
            return Err(format!(
                "kill({pid}, {signal}): {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(())
    }
}

/// A node that exited without the test killing it.
#[derive(Debug, Clone)]
pub struct Crash {
    /// Node id.
    pub id: u64,
    /// How it exited.
    pub status: String,
    /// The end of its log.
    pub log_tail: String,
}

/// The cluster: every node's files and processes.
pub struct Cluster {
    spec: String,
    run_args: Vec<String>,
    /// Base of the nodes' `--seed` values.
    seed: u64,
    nodes: BTreeMap<u64, Node>,
    origin: Instant,
    /// Every node's data and log. `Drop` kills the processes before this goes.
    dir: TempDir,
}

impl Cluster {
    /// Starts nodes 1..=n with the extra `run` flags `run_args` (and a `--seed` derived from
    /// `seed`) and waits until each answers on its control socket. Retries with fresh ports
    /// when one was taken meanwhile.
    ///
    /// # Panics
    /// If the cluster cannot be started.
    pub fn start(n: u64, run_args: &[String], seed: u64, origin: Instant) -> Cluster {
        let mut last = String::new();
        for _ in 0..4 {
            let mut cluster = Cluster::new(n, run_args, seed, origin);
            let started = cluster
                .ids()
                .into_iter()
                .try_for_each(|id| cluster.spawn(id));
            let served = started.and_then(|()| {
                let ids = cluster.ids();
                ids.into_iter().try_for_each(|id| cluster.wait_serving(id))
            });
            match served {
                Ok(()) => return cluster,
                Err(e) => last = e,
            }
            if !last.contains("binding UDP socket") {
                break;
            }
        }
        panic!("starting the chaos cluster: {last}");
    }

    fn new(n: u64, run_args: &[String], seed: u64, origin: Instant) -> Cluster {
        let dir = TempDir::new();
        let ports = pick_ports(n as usize);
        let spec = (1..=n)
            .zip(&ports)
            .map(|(id, port)| format!("{id}=127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",");
        let nodes = (1..=n)
            .map(|id| {
                let node = Node {
                    id,
                    data_dir: dir.path().join(format!("node-{id}")),
                    log_path: dir.path().join(format!("node-{id}.log")),
                    child: None,
                    life: Life::Down,
                    starts: 0,
                };
                (id, node)
            })
            .collect();
        Cluster {
            spec,
            run_args: run_args.to_vec(),
            seed,
            nodes,
            origin,
            dir,
        }
    }

    /// The cluster list.
    pub fn spec(&self) -> &str {
        &self.spec
    }

    /// The temporary directory.
    pub fn dir(&mut self) -> &mut TempDir {
        &mut self.dir
    }

    /// Member ids.
    pub fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    /// Node `id`.
    pub fn node(&self, id: u64) -> &Node {
        &self.nodes[&id]
    }

    fn spawn(&mut self, id: u64) -> Result<(), String> {
        let elapsed = self.origin.elapsed();
        let node = self.nodes.get_mut(&id).expect("node id");
        assert!(node.child.is_none(), "node {id} already has a process");
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log_path)
            .map_err(|e| format!("opening {}: {e}", node.log_path.display()))?;
        let _ = writeln!(log, "=== chaos: starting node {id} at {elapsed:?}");
        // Each start gets its own seed, so a restarted node does not replay its timeouts.
        let seed =
            self.seed ^ (u64::from(node.starts) << 32 | id).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let mut args = vec![
            "run".to_string(),
            "--id".to_string(),
            id.to_string(),
            "--cluster".to_string(),
            self.spec.clone(),
            "--data-dir".to_string(),
            node.data_dir.display().to_string(),
            "--seed".to_string(),
            seed.to_string(),
        ];
        args.extend(self.run_args.iter().cloned());
        let child = Command::new(BIN)
            .args(&args)
            .env_remove("RAFTNODE_CLUSTER")
            .env_remove("RAFTNODE_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawning node {id}: {e}"))?;
        node.child = Some(child);
        node.life = Life::Running;
        node.starts += 1;
        Ok(())
    }

    /// Waits until node `id` answers `status`; fails with its log if it exits first.
    fn wait_serving(&mut self, id: u64) -> Result<(), String> {
        let deadline = Instant::now() + START_LIMIT;
        wait_until(deadline, &format!("node {id} to serve"), || {
            let node = self.nodes.get_mut(&id).expect("node id");
            let child = node.child.as_mut().ok_or("no process")?;
            if let Ok(Some(status)) = child.try_wait() {
                node.child = None;
                node.life = Life::Down;
                let tail = node.log_tail(40);
                return Ok(Err(format!(
                    "node {id} exited during start ({status}):\n{tail}"
                )));
            }
            self.status(id).map(|_| Ok(()))
        })?
    }

    /// Restarts node `id` (down) on the same data directory and waits until it serves.
    ///
    /// # Errors
    /// If it cannot be spawned, or exits or stays silent during start.
    pub fn restart(&mut self, id: u64) -> Result<(), String> {
        assert_eq!(self.nodes[&id].life, Life::Down, "node {id} is not down");
        self.spawn(id)?;
        self.wait_serving(id)
    }

    /// kill -9 node `id` and reap it.
    ///
    /// # Errors
    /// If it was not running.
    pub fn kill9(&mut self, id: u64) -> Result<(), String> {
        let node = self.nodes.get_mut(&id).expect("node id");
        node.signal(libc::SIGKILL)?;
        let mut child = node.child.take().expect("signalled, so present");
        let _ = child.wait();
        node.life = Life::Down;
        Ok(())
    }

    /// SIGSTOP node `id`.
    ///
    /// # Errors
    /// If it was not running.
    pub fn pause(&mut self, id: u64) -> Result<(), String> {
        let node = self.nodes.get_mut(&id).expect("node id");
        node.signal(libc::SIGSTOP)?;
        node.life = Life::Paused;
        Ok(())
    }

    /// SIGCONT node `id`.
    ///
    /// # Errors
    /// If it has no process.
    pub fn resume(&mut self, id: u64) -> Result<(), String> {
        let node = self.nodes.get_mut(&id).expect("node id");
        node.signal(libc::SIGCONT)?;
        node.life = Life::Running;
        Ok(())
    }

    /// Reaps every node that exited although the test did not kill it, marks it down and
    /// returns what it left behind.
    pub fn reap_crashes(&mut self) -> Vec<Crash> {
        let mut crashes = Vec::new();
        for node in self.nodes.values_mut() {
            let Some(child) = node.child.as_mut() else {
                continue;
            };
            let status: ExitStatus = match child.try_wait() {
                Ok(Some(status)) => status,
                _ => continue,
            };
            node.child = None;
            node.life = Life::Down;
            crashes.push(Crash {
                id: node.id,
                status: status.to_string(),
                log_tail: node.log_tail(60),
            });
        }
        crashes
    }

    /// Sends one control line to node `id` and returns the data lines of its reply.
    ///
    /// # Errors
    /// The node's refusal or why it could not be reached.
    pub fn ctl(&self, id: u64, line: &str) -> Result<Vec<String>, String> {
        let path = self.nodes[&id].control_path();
        control::request(&path, line, CONTROL_TIMEOUT).map_err(|e| format!("node {id}: {e}"))
    }

    /// Node `id`'s `status` JSON.
    ///
    /// # Errors
    /// As for [`Cluster::ctl`], or a reply that is not JSON.
    pub fn status(&self, id: u64) -> Result<serde_json::Value, String> {
        let lines = self.ctl(id, "status")?;
        let line = lines.first().ok_or(format!("node {id}: empty status"))?;
        serde_json::from_str(line).map_err(|e| format!("node {id}: status is not JSON: {e}"))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in self.nodes.values_mut() {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
