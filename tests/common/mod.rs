//! A harness for end-to-end tests that run real `raftnode` processes on 127.0.0.1.
//!
//! It owns everything a test starts: a temporary directory (removed on drop), the node
//! processes (killed on drop, also when the test panics), and the UDP ports it picked. Helpers
//! run `raftnode ctl` and the client commands with a time limit, parse `status --json`, and
//! wait for a condition with a deadline instead of sleeping.
//!
//! Set `RAFTNODE_TEST_KEEP=1` to keep the temporary directories (node logs included) after a
//! run; a failing test prints the tail of every node's log either way.

#![allow(dead_code)]

use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Deserialize;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_raftnode");

/// How often `wait_until` probes.
const POLL: Duration = Duration::from_millis(30);
/// Longest any single ctl or client command may run before the harness kills it.
const COMMAND_LIMIT: Duration = Duration::from_secs(30);
/// Ports handed out by `pick_ports`: below Linux's ephemeral range (32768..), so the UDP
/// sockets of clients never take a node's port between our check and the node's bind.
const PORT_RANGE: (u16, u16) = (20_000, 32_000);
/// Attempts at starting a cluster when a port turned out to be taken after all.
const START_ATTEMPTS: usize = 4;

/// Election settings that make elections quick; tests that exercise the defaults pass none.
pub const FAST: &[&str] = &[
    "--election-timeout-min",
    "100ms",
    "--election-timeout-max",
    "200ms",
    "--heartbeat",
    "20ms",
];

/// A deadline `d` from now.
pub fn within(d: Duration) -> Instant {
    Instant::now() + d
}

/// Seconds as a Duration, for brevity in tests.
pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Calls `probe` every 30 ms until it returns `Ok` or `deadline` passes. `probe` returns
/// `Err(description of what it saw)` while the condition does not hold yet; on timeout that
/// last observation is part of the error.
///
/// # Errors
/// "timed out waiting for WHAT; last observed: ..." when the deadline passes.
pub fn wait_until<T>(
    deadline: Instant,
    what: &str,
    mut probe: impl FnMut() -> Result<T, String>,
) -> Result<T, String> {
    let started = Instant::now();
    let mut probes = 0u64;
    loop {
        probes += 1;
        let last = match probe() {
            Ok(value) => return Ok(value),
            Err(observed) => observed,
        };
        if Instant::now() >= deadline {
            return Err(format!(
                "timed out after {:?} ({probes} probes) waiting for {what}; last observed: {last}",
                started.elapsed()
            ));
        }
        thread::sleep(POLL.min(deadline.saturating_duration_since(Instant::now())));
    }
}

// ----- temporary directories -----

static UNIQUE: AtomicU64 = AtomicU64::new(0);

fn unique_suffix() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let n = UNIQUE.fetch_add(1, Ordering::Relaxed);
    format!("{}-{n}-{nanos:x}", std::process::id())
}

/// A directory under the system temp dir, removed (with its contents) on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `$TMP/raftnode-test-NAME-UNIQUE`.
    pub fn new(name: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("raftnode-test-{name}-{}", unique_suffix()));
        fs::create_dir_all(&path).expect("creating test temp dir");
        TempDir { path }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("RAFTNODE_TEST_KEEP").is_some() {
            eprintln!("keeping {}", self.path.display());
            return;
        }
        let _ = fs::remove_dir_all(&self.path);
    }
}

// ----- ports -----

/// Ports this test process has handed out, so parallel tests never pick the same one.
static TAKEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A small xorshift generator; tests need variety, not quality.
pub struct Rng(u64);

impl Rng {
    /// A generator seeded from `seed` (never zero inside).
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    /// A generator seeded from the clock and the process.
    pub fn from_clock() -> Rng {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let n = UNIQUE.fetch_add(1, Ordering::Relaxed);
        Rng::new(nanos ^ (u64::from(std::process::id()) << 32) ^ n.wrapping_mul(0x9e37_79b9))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number in `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo)
    }

    /// `len` random bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }
}

/// Picks `n` distinct UDP ports on 127.0.0.1 that are free right now. The sockets that proved
/// them free are held until all `n` are found and then released, so a node started next can
/// bind them; another process could still take one in between, which `Cluster::start`
/// survives by retrying with fresh ports.
pub fn pick_ports(n: usize) -> Vec<u16> {
    let mut rng = Rng::from_clock();
    let mut held = Vec::new();
    let mut taken = TAKEN.lock().unwrap_or_else(|e| e.into_inner());
    let taken = taken.get_or_insert_with(HashSet::new);
    for _ in 0..10_000 {
        if held.len() == n {
            break;
        }
        let port = rng.range(u64::from(PORT_RANGE.0), u64::from(PORT_RANGE.1)) as u16;
        if taken.contains(&port) {
            continue;
        }
        if let Ok(socket) = UdpSocket::bind(("127.0.0.1", port)) {
            taken.insert(port);
            held.push((port, socket));
        }
    }
    assert_eq!(held.len(), n, "could not find {n} free UDP ports");
    held.into_iter().map(|(port, _socket)| port).collect()
}

// ----- running commands -----

/// What a finished command left behind.
#[derive(Debug, Clone)]
pub struct Output {
    /// Exit code; None if killed by a signal (including by the harness's time limit).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// Wall time it took.
    pub elapsed: Duration,
}

impl Output {
    /// The command line summary for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "exit {:?} after {:?}, stdout {:?}, stderr {:?}",
            self.code, self.elapsed, self.stdout, self.stderr
        )
    }

    /// Stdout without the trailing newline.
    pub fn line(&self) -> &str {
        self.stdout.trim_end_matches('\n')
    }
}

/// Kills and reaps a child when dropped, so no process outlives a failing test.
pub struct ChildGuard {
    child: Option<Child>,
}

impl ChildGuard {
    /// Guards `child`.
    pub fn new(child: Child) -> ChildGuard {
        ChildGuard { child: Some(child) }
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The guarded child.
    pub fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("child present until dropped")
    }

    /// Waits up to `limit` for the child to exit; kills it (SIGKILL) after that. Returns the
    /// exit code, None for death by signal.
    pub fn wait_with_limit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = within(limit);
        let child = self.child();
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return status.code(),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(5)),
                _ => {
                    let _ = child.kill();
                    return child.wait().ok().and_then(|s| s.code());
                }
            }
        }
    }

    /// True while the child has not exited.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child().try_wait(), Ok(None))
    }

    /// Sends `signal` to the child.
    pub fn signal(&mut self, signal: i32) {
        let pid = self.pid() as libc::pid_t;
        // The child is ours and not yet reaped (we reap only through this guard), so its pid
        // cannot have been reused.
        if self.is_running() {
            unsafe {
                libc::kill(pid, signal);
            }
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn read_all_in_thread(mut r: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = r.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// A `raftnode` command running in the background, its output collected by threads.
pub struct Background {
    process: ChildGuard,
    stdout: Option<thread::JoinHandle<String>>,
    stderr: Option<thread::JoinHandle<String>>,
    started: Instant,
}

impl Background {
    /// Starts `raftnode ARGS`, feeding it `stdin` (then end of input) if given.
    pub fn spawn(args: &[&str], stdin: Option<&str>) -> Background {
        let started = Instant::now();
        let child = Command::new(BIN)
            .args(args)
            .env_remove("RAFTNODE_CLUSTER")
            .env_remove("RAFTNODE_LOG")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning raftnode");
        let mut process = ChildGuard::new(child);
        let stdout = read_all_in_thread(process.child().stdout.take().expect("stdout"));
        let stderr = read_all_in_thread(process.child().stderr.take().expect("stderr"));
        if let Some(input) = stdin {
            let mut pipe = process.child().stdin.take().expect("stdin");
            let input = input.to_string();
            // A writer thread, so a child that stops reading cannot block the test.
            thread::spawn(move || {
                let _ = pipe.write_all(input.as_bytes());
            });
        }
        Background {
            process,
            stdout: Some(stdout),
            stderr: Some(stderr),
            started,
        }
    }

    /// True while the command runs.
    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    /// Waits up to `limit` for the command to finish (killing it after that) and returns
    /// what it printed.
    pub fn finish(mut self, limit: Duration) -> Output {
        let code = self.process.wait_with_limit(limit);
        let join = |h: Option<thread::JoinHandle<String>>| {
            h.and_then(|h| h.join().ok()).unwrap_or_default()
        };
        Output {
            code,
            stdout: join(self.stdout.take()),
            stderr: join(self.stderr.take()),
            elapsed: self.started.elapsed(),
        }
    }
}

/// Runs `raftnode ARGS` with `stdin` as input, killing it after `limit`.
pub fn run_limited(args: &[&str], stdin: Option<&str>, limit: Duration) -> Output {
    Background::spawn(args, stdin).finish(limit)
}

/// Runs `raftnode ARGS` with the default time limit.
pub fn run(args: &[&str]) -> Output {
    run_limited(args, None, COMMAND_LIMIT)
}

// ----- status -----

/// The fields of `ctl status --json` the tests look at.
#[derive(Debug, Clone, Deserialize)]
pub struct Status {
    pub id: u64,
    pub role: String,
    pub term: u64,
    pub leader: Option<u64>,
    pub voted_for: Option<u64>,
    pub commit_index: u64,
    pub last_applied: u64,
    pub last_log_index: u64,
    pub last_log_term: u64,
    /// Last index covered by the node's snapshot (0 without one).
    pub snapshot_index: u64,
    pub cluster: String,
    pub applied_digest: String,
    pub keys: u64,
    pub rules: Vec<String>,
    pub counters: BTreeMap<String, u64>,
}

impl Status {
    /// A counter by name (0 when absent, so a renamed counter shows up as a wrong count).
    pub fn counter(&self, name: &str) -> u64 {
        self.counters.get(name).copied().unwrap_or(0)
    }

    /// One-line summary for error messages.
    pub fn brief(&self) -> String {
        format!(
            "node {} {} term {} leader {:?} commit {} applied {} last {} digest {}",
            self.id,
            self.role,
            self.term,
            self.leader,
            self.commit_index,
            self.last_applied,
            self.last_log_index,
            self.applied_digest
        )
    }
}

// ----- one node -----

/// One node process and its files.
pub struct Node {
    pub id: u64,
    pub data_dir: PathBuf,
    /// Its stderr (the log), appended to across restarts.
    pub log_path: PathBuf,
    /// Extra environment for its next starts (e.g. a storage failpoint).
    pub env: Vec<(String, String)>,
    /// The running process; a RefCell so that `&self` helpers can notice it died.
    process: RefCell<Option<ChildGuard>>,
}

impl Node {
    /// Path of the node's control socket.
    pub fn control_path(&self) -> PathBuf {
        self.data_dir.join("control.sock")
    }

    /// The node's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Pid of the running process.
    pub fn pid(&self) -> Option<u32> {
        self.process.borrow().as_ref().map(ChildGuard::pid)
    }
}

// ----- a cluster -----

/// A cluster of node processes on 127.0.0.1, each with its own data directory.
pub struct Cluster {
    dir: TempDir,
    ports: BTreeMap<u64, u16>,
    spec: String,
    run_args: Vec<String>,
    nodes: BTreeMap<u64, Node>,
}

impl Cluster {
    /// Starts `n` nodes with ids 1..=n and the extra `run` flags `run_args`, and waits until
    /// each answers on its control socket. Retries with fresh ports if one was taken.
    pub fn start(name: &str, n: u64, run_args: &[&str]) -> Cluster {
        let mut last_error = String::new();
        for _ in 0..START_ATTEMPTS {
            let mut cluster = Cluster::new(name, n, run_args);
            match cluster.start_all() {
                Ok(()) => return cluster,
                Err(e) if e.contains("binding UDP socket") => last_error = e,
                Err(e) => panic!("starting cluster {name}: {e}"),
            }
        }
        panic!("starting cluster {name}: ports kept being taken; last: {last_error}");
    }

    /// A cluster with picked ports and directories, nothing started.
    pub fn new(name: &str, n: u64, run_args: &[&str]) -> Cluster {
        let dir = TempDir::new(name);
        let ports: BTreeMap<u64, u16> = (1..=n).zip(pick_ports(n as usize)).collect();
        let spec = ports
            .iter()
            .map(|(id, port)| format!("{id}=127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",");
        let nodes = (1..=n)
            .map(|id| {
                let node = Node {
                    id,
                    data_dir: dir.path().join(format!("node-{id}")),
                    log_path: dir.path().join(format!("node-{id}.log")),
                    env: Vec::new(),
                    process: RefCell::new(None),
                };
                (id, node)
            })
            .collect();
        Cluster {
            dir,
            ports,
            spec,
            run_args: run_args.iter().map(|s| s.to_string()).collect(),
            nodes,
        }
    }

    fn start_all(&mut self) -> Result<(), String> {
        for id in self.ids() {
            self.spawn(id)?;
        }
        for id in self.ids() {
            self.wait_serving(id)?;
        }
        Ok(())
    }

    /// The cluster list, `1=127.0.0.1:P1,...`.
    pub fn spec(&self) -> &str {
        &self.spec
    }

    /// The temporary directory holding every node's files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Member ids.
    pub fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    /// Node `id`.
    pub fn node(&self, id: u64) -> &Node {
        &self.nodes[&id]
    }

    /// UDP port of node `id`.
    pub fn port(&self, id: u64) -> u16 {
        self.ports[&id]
    }

    /// The `run` arguments for node `id` (without the binary).
    pub fn run_args(&self, id: u64) -> Vec<String> {
        let node = &self.nodes[&id];
        let mut args: Vec<String> = vec![
            "run".into(),
            "--id".into(),
            id.to_string(),
            "--cluster".into(),
            self.spec.clone(),
            "--data-dir".into(),
            node.data_dir.display().to_string(),
            "--log-level".into(),
            "debug".into(),
        ];
        args.extend(self.run_args.iter().cloned());
        args
    }

    fn spawn(&mut self, id: u64) -> Result<(), String> {
        let args = self.run_args(id);
        let node = self.nodes.get_mut(&id).expect("node id");
        assert!(
            node.process.borrow().is_none(),
            "node {id} is already running"
        );
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log_path)
            .map_err(|e| format!("opening {}: {e}", node.log_path.display()))?;
        let child = Command::new(BIN)
            .args(&args)
            .envs(node.env.iter().map(|(k, v)| (k, v)))
            .env_remove("RAFTNODE_CLUSTER")
            .env_remove("RAFTNODE_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawning node {id}: {e}"))?;
        *node.process.borrow_mut() = Some(ChildGuard::new(child));
        Ok(())
    }

    /// Waits until node `id` answers `status`, or fails with its log if it exits first.
    fn wait_serving(&mut self, id: u64) -> Result<(), String> {
        wait_until(within(secs(15)), &format!("node {id} to serve"), || {
            if !self.is_running(id) {
                let log = self.nodes[&id].log();
                return Ok(Err(format!("node {id} exited during start; log:\n{log}")));
            }
            self.status_unchecked(id).map(|_| Ok(()))
        })?
    }

    /// Sets an environment variable for node `id`'s next starts.
    pub fn set_env(&mut self, id: u64, key: &str, value: &str) {
        let node = self.nodes.get_mut(&id).expect("node id");
        node.env.push((key.to_string(), value.to_string()));
    }

    /// Starts node `id` (again) and waits until it serves its control socket.
    ///
    /// # Panics
    /// If the node does not come up; the message holds its log.
    pub fn start_node(&mut self, id: u64) {
        self.spawn(id).expect("spawning node");
        if let Err(e) = self.wait_serving(id) {
            panic!("{e}");
        }
    }

    /// True while node `id`'s process runs.
    pub fn is_running(&self, id: u64) -> bool {
        let node = &self.nodes[&id];
        let mut process = node.process.borrow_mut();
        process.as_mut().is_some_and(ChildGuard::is_running)
    }

    /// Panics, with the end of its log, if node `id` was started and has exited since without
    /// being stopped by the harness: nothing a test waits for can happen after that.
    fn assert_not_crashed(&self, id: u64) {
        let node = &self.nodes[&id];
        let exited = match node.process.borrow_mut().as_mut() {
            Some(process) => process.child().try_wait().ok().flatten(),
            None => None,
        };
        if let Some(status) = exited {
            let log = node.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(30)..].join("\n");
            panic!("node {id} exited unexpectedly ({status}); end of its log:\n{tail}");
        }
    }

    /// Pid of node `id`'s process.
    pub fn pid(&self, id: u64) -> Option<u32> {
        self.nodes[&id].pid()
    }

    /// SIGKILLs node `id` and reaps it.
    pub fn kill9(&mut self, id: u64) {
        let node = self.nodes.get_mut(&id).expect("node id");
        let mut process = node.process.take().expect("node is running");
        let code = process.wait_with_limit(Duration::ZERO);
        assert_eq!(code, None, "node {id} had exited on its own before kill -9");
    }

    /// Stops node `id` with SIGTERM and returns its exit code (SIGKILL after 10 s).
    pub fn stop(&mut self, id: u64) -> Option<i32> {
        let node = self.nodes.get_mut(&id).expect("node id");
        let mut process = node.process.take().expect("node is running");
        process.signal(libc::SIGTERM);
        process.wait_with_limit(secs(10))
    }

    /// Runs `raftnode ctl --data-dir DIR ARGS` against node `id`.
    pub fn ctl(&self, id: u64, args: &[&str]) -> Output {
        let dir = self.nodes[&id].data_dir.display().to_string();
        let mut all = vec!["ctl", "--data-dir", &dir, "--timeout", "3s"];
        all.extend_from_slice(args);
        run(&all)
    }

    /// Runs a ctl command that must succeed and returns its output lines.
    ///
    /// # Panics
    /// If it fails.
    pub fn ctl_ok(&self, id: u64, args: &[&str]) -> Vec<String> {
        let out = self.ctl(id, args);
        assert_eq!(
            out.code,
            Some(0),
            "ctl {args:?} on node {id}: {}",
            out.describe()
        );
        out.stdout.lines().map(str::to_string).collect()
    }

    /// Node `id`'s status.
    ///
    /// # Errors
    /// What went wrong asking.
    pub fn status(&self, id: u64) -> Result<Status, String> {
        let status = self.status_unchecked(id);
        if status.is_err() {
            self.assert_not_crashed(id);
        }
        status
    }

    fn status_unchecked(&self, id: u64) -> Result<Status, String> {
        let out = self.ctl(id, &["status", "--json"]);
        if out.code != Some(0) {
            return Err(format!("status of node {id}: {}", out.describe()));
        }
        serde_json::from_str(out.line())
            .map_err(|e| format!("status of node {id} is not the expected JSON: {e}: {out:?}"))
    }

    /// Statuses of `ids`, or the first error.
    pub fn statuses(&self, ids: &[u64]) -> Result<Vec<Status>, String> {
        ids.iter().map(|&id| self.status(id)).collect()
    }

    /// Runs a client command (`put`, `get`, `del`, `cas`, `client`) with `--cluster` added.
    pub fn client(&self, args: &[&str]) -> Output {
        self.client_with_input(args, None)
    }

    /// Like `client`, feeding `stdin`.
    pub fn client_with_input(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut all = args.to_vec();
        all.extend_from_slice(&["--cluster", &self.spec]);
        run_limited(&all, stdin, COMMAND_LIMIT)
    }

    /// `put KEY VALUE` through the leader-following client; panics unless it succeeds.
    pub fn put_ok(&self, key: &str, value: &str) {
        let out = self.client(&["put", key, value]);
        assert_eq!(out.code, Some(0), "put {key} {value}: {}", out.describe());
    }

    /// `get KEY`: Some(value) on exit 0, None on exit 1; panics on anything else.
    pub fn get(&self, key: &str) -> Option<String> {
        let out = self.client(&["get", key]);
        match out.code {
            Some(0) => Some(out.line().to_string()),
            Some(1) => None,
            _ => panic!("get {key}: {}", out.describe()),
        }
    }

    /// Waits until exactly one of `among` leads, every one of them names it as leader and
    /// they share its term. Returns (leader, term).
    ///
    /// # Errors
    /// On timeout, with the last statuses seen.
    pub fn wait_for_leader(&self, among: &[u64], deadline: Instant) -> Result<(u64, u64), String> {
        self.wait_for_leader_above(among, 0, deadline)
    }

    /// Like `wait_for_leader`, for a leader of a term above `term`.
    ///
    /// # Errors
    /// On timeout, with the last statuses seen.
    pub fn wait_for_leader_above(
        &self,
        among: &[u64],
        term: u64,
        deadline: Instant,
    ) -> Result<(u64, u64), String> {
        let what = format!("nodes {among:?} to agree on one leader of a term above {term}");
        wait_until(deadline, &what, || {
            let statuses = self.statuses(among)?;
            let summary = || {
                statuses
                    .iter()
                    .map(Status::brief)
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            let leaders: Vec<&Status> = statuses.iter().filter(|s| s.role == "leader").collect();
            let [leader] = leaders.as_slice() else {
                return Err(summary());
            };
            let agreed = leader.term > term
                && statuses
                    .iter()
                    .all(|s| s.leader == Some(leader.id) && s.term == leader.term);
            if agreed {
                Ok((leader.id, leader.term))
            } else {
                Err(summary())
            }
        })
    }

    /// Waits until `among` have applied the same history: the same commit index, everything
    /// committed applied, and the same digest. Returns one of their statuses.
    ///
    /// # Errors
    /// On timeout, with the last statuses seen.
    pub fn wait_converged(&self, among: &[u64], deadline: Instant) -> Result<Status, String> {
        let what = format!("nodes {among:?} to converge");
        wait_until(deadline, &what, || {
            let statuses = self.statuses(among)?;
            let first = &statuses[0];
            let same = statuses.iter().all(|s| {
                s.commit_index == first.commit_index
                    && s.last_applied == s.commit_index
                    && s.applied_digest == first.applied_digest
                    && s.keys == first.keys
            });
            if same {
                Ok(first.clone())
            } else {
                Err(statuses
                    .iter()
                    .map(Status::brief)
                    .collect::<Vec<_>>()
                    .join("; "))
            }
        })
    }

    /// Prints the end of every node's log to stderr (shown by the test runner on failure).
    pub fn dump_logs(&self) {
        for node in self.nodes.values() {
            let log = node.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(40)..];
            eprintln!(
                "----- node {} log ({} lines, last {}) -----",
                node.id,
                lines.len(),
                tail.len()
            );
            for line in tail {
                eprintln!("{line}");
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Kill first so the logs are complete, then show them if the test failed.
        for node in self.nodes.values_mut() {
            node.process.take();
        }
        if thread::panicking() {
            eprintln!("cluster files in {}", self.dir.path().display());
            self.dump_logs();
        }
        let mut taken = TAKEN.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(taken) = taken.as_mut() {
            for port in self.ports.values() {
                taken.remove(port);
            }
        }
    }
}

// ----- an interactive client session -----

/// A `raftnode client` process fed one line at a time.
pub struct Session {
    process: ChildGuard,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

impl Session {
    /// Starts `raftnode client --cluster SPEC EXTRA...`.
    pub fn start(cluster: &Cluster, extra: &[&str]) -> Session {
        let mut child = Command::new(BIN)
            .arg("client")
            .args(["--cluster", cluster.spec()])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning raftnode client");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Session {
            process: ChildGuard::new(child),
            stdin,
            lines,
        }
    }

    /// Sends one input line.
    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").expect("writing to client");
        stdin.flush().expect("flushing client stdin");
    }

    /// Waits up to `limit` for the next output line, parsed as JSON.
    ///
    /// # Errors
    /// On timeout, end of output, or a line that is not JSON.
    pub fn recv(&mut self, limit: Duration) -> Result<serde_json::Value, String> {
        match self.lines.recv_timeout(limit) {
            Ok(line) => serde_json::from_str(&line).map_err(|e| format!("{e}: {line:?}")),
            Err(RecvTimeoutError::Timeout) => Err(format!("no output line within {limit:?}")),
            Err(RecvTimeoutError::Disconnected) => Err("client output ended".to_string()),
        }
    }

    /// Sends `line` and returns its JSON result.
    ///
    /// # Panics
    /// If no result arrives within 20 s.
    pub fn request(&mut self, line: &str) -> serde_json::Value {
        self.send(line);
        self.recv(secs(20))
            .unwrap_or_else(|e| panic!("client line {line:?}: {e}"))
    }

    /// Closes stdin and waits for the client to exit; returns its exit code.
    pub fn finish(mut self) -> Option<i32> {
        self.stdin = None;
        self.process.wait_with_limit(secs(20))
    }
}

/// 64-bit FNV-1a, the hash raftnode uses for the cluster id (of the canonical cluster list).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}
