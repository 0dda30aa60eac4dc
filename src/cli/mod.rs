//! The command line: clap definitions (which also feed `--help` and the man page), the
//! validation that turns raw flags into a checked configuration, and the dispatch to the
//! runtime, the control client and the key-value client.

mod client;
mod logger;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::config::Cluster;
use crate::runtime::{self, NodeOptions};

pub use logger::init_logger;

/// Exit code: success.
pub const EXIT_OK: u8 = 0;
/// Exit code: the key was absent, a cas found another value, or a command failed.
pub const EXIT_FAIL: u8 = 1;
/// Exit code: bad usage (flags, arguments, cluster list).
pub const EXIT_USAGE: u8 = 2;
/// Exit code: the outcome is unknown (timeout or no leader).
pub const EXIT_UNKNOWN: u8 = 3;

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  key not found or cas mismatch; for run and ctl: the command failed
  2  usage error: bad flag, argument or cluster list, or a key or value over the size limit
  3  outcome unknown: timed out or no leader (a write may or may not have been applied)

Environment:
  RAFTNODE_CLUSTER  the cluster list, when --cluster is not given
  RAFTNODE_LOG      log level of `run` (error, warn, info, debug, trace), when --log-level is not given";

/// A Raft consensus node and its clients: run one process per member, talk UDP, replicate a
/// key-value store, and partition the network from a control socket.
#[derive(Debug, Parser)]
#[command(name = "raftnode", version, after_help = EXIT_CODES, max_term_width = 100)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one node of the cluster in the foreground until SIGINT, SIGTERM or SIGHUP.
    Run(RunArgs),
    /// Send a command to a running node's control socket.
    #[command(after_help = crate::control::HELP)]
    Ctl(CtlArgs),
    /// Set KEY to VALUE.
    Put {
        /// Key (at most 1024 bytes).
        key: String,
        /// Value (at most 16384 bytes).
        value: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print the value of KEY; exit 1 when it is absent.
    Get {
        /// Key.
        key: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Remove KEY (removing an absent key succeeds).
    Del {
        /// Key.
        key: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Set KEY to NEW if it holds EXPECTED; otherwise print the current value and exit 1.
    Cas {
        /// Key.
        key: String,
        /// Value the key must hold now.
        expected: String,
        /// Value to store.
        new: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Read operations from stdin, one per line, and print one JSON result per line.
    #[command(after_help = client::CLIENT_HELP)]
    Client {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Run the deterministic cluster simulation (the tests' fault model) for some seeds and
    /// print what happened; a safety violation prints the seed and exits 1.
    Sim(SimArgs),
}

/// Flags of `raftnode sim`.
#[derive(Debug, Args)]
pub struct SimArgs {
    /// Cluster size.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=9))]
    pub nodes: u64,
    /// First seed [default: random].
    #[arg(long)]
    pub seed: Option<u64>,
    /// How many consecutive seeds to run.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub seeds: u64,
}

/// Flags of `raftnode run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// This node's id in the cluster list.
    #[arg(long)]
    pub id: u64,
    /// The cluster: ID=HOST:PORT,... for every member, this node included.
    #[arg(long, env = "RAFTNODE_CLUSTER", value_name = "LIST")]
    pub cluster: String,
    /// Directory for the log and the control socket [default: ./raftnode-data/node-ID].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Path of the control socket [default: DATA_DIR/control.sock].
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,
    /// Shortest randomized election timeout.
    #[arg(long, default_value = "150ms", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub election_timeout_min: Duration,
    /// Longest randomized election timeout (exclusive).
    #[arg(long, default_value = "300ms", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub election_timeout_max: Duration,
    /// Interval between a leader's heartbeats.
    #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub heartbeat: Duration,
    /// Seed for election timeouts and probabilistic drop rules [default: random].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Elect without a pre-vote round (the plain algorithm of the paper, for teaching: a node
    /// returning from a partition then forces an election with its inflated term).
    #[arg(long)]
    pub no_pre_vote: bool,
    /// Keep a leader that lost its quorum in office, and let followers vote while they still
    /// hear from a leader (the plain algorithm of the paper).
    #[arg(long)]
    pub no_check_quorum: bool,
    /// Take a snapshot of the key-value store every N applied entries and delete the log
    /// behind it (0: never).
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    pub snapshot_every: u64,
    /// Start a new write-ahead-log segment once the current one reaches this many bytes.
    #[arg(long, default_value_t = crate::storage::DEFAULT_SEGMENT_BYTES, value_name = "BYTES",
          value_parser = clap::value_parser!(u64).range(4096..))]
    pub segment_bytes: u64,
    /// Log level on stderr: error, warn, info, debug or trace.
    #[arg(
        long,
        env = "RAFTNODE_LOG",
        default_value = "info",
        value_name = "LEVEL"
    )]
    pub log_level: log::LevelFilter,
}

/// Flags of `raftnode ctl`.
#[derive(Debug, Args)]
pub struct CtlArgs {
    /// Path of the node's control socket.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["data_dir", "id"])]
    pub control: Option<PathBuf>,
    /// The node's data directory (its control socket is DIR/control.sock).
    #[arg(long, value_name = "DIR", conflicts_with = "id")]
    pub data_dir: Option<PathBuf>,
    /// The node's id, for a node using the default data directory ./raftnode-data/node-ID.
    #[arg(long)]
    pub id: Option<u64>,
    /// How long to wait for the node's answer.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub timeout: Duration,
    /// The command and its arguments: status [--json], block [--in|--out] PEER..., unblock
    /// [--in|--out] PEER..., isolate, heal, rules, campaign, snapshot, transfer-leader PEER,
    /// help, or an iptables-style rule.
    #[arg(required = true, num_args = 1.., trailing_var_arg = true, allow_hyphen_values = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// Flags shared by the client commands.
#[derive(Debug, Args, Clone)]
pub struct ClientArgs {
    /// The cluster: ID=HOST:PORT,... for every member.
    #[arg(long, env = "RAFTNODE_CLUSTER", value_name = "LIST")]
    pub cluster: String,
    /// Talk to this node only, without following redirects to the leader.
    #[arg(long, value_name = "ID")]
    pub node: Option<u64>,
    /// How long one operation may take before its outcome is reported unknown.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub timeout: Duration,
}

/// The clap command, for the man page generator and tests.
pub fn command() -> clap::Command {
    Cli::command()
}

/// Default data directory of node `id`.
pub fn default_data_dir(id: u64) -> PathBuf {
    PathBuf::from(format!("./raftnode-data/node-{id}"))
}

/// Parses the process arguments and runs the chosen command; returns the exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { EXIT_OK };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    ExitCode::from(dispatch(cli.command))
}

fn dispatch(command: Command) -> u8 {
    match command {
        Command::Run(args) => run_node(args),
        Command::Ctl(args) => ctl(args),
        Command::Put { key, value, client } => client::one_shot(&client, client::put(key, value)),
        Command::Get { key, client } => client::one_shot(&client, client::get(key)),
        Command::Del { key, client } => client::one_shot(&client, client::del(key)),
        Command::Cas {
            key,
            expected,
            new,
            client,
        } => client::one_shot(&client, client::cas(key, expected, new)),
        Command::Client { client } => client::interactive(&client),
        Command::Sim(args) => simulate(&args),
    }
}

fn simulate(args: &SimArgs) -> u8 {
    use crate::sim::{run_seed, SimConfig};
    let first = args.seed.unwrap_or_else(|| rand::random::<u32>().into());
    for seed in first..first.saturating_add(args.seeds) {
        let config = SimConfig::varied(args.nodes as usize, seed);
        // A violation panics with the seed, the step and the events before it.
        match std::panic::catch_unwind(|| run_seed(config)) {
            Ok(report) => println!("{report}"),
            Err(_) => {
                eprintln!("raftnode sim: seed {seed} failed (details above)");
                return EXIT_FAIL;
            }
        }
    }
    EXIT_OK
}

/// Prints a usage problem found after clap's own checks.
fn usage_error(message: &str) -> u8 {
    eprintln!("raftnode: {message}");
    EXIT_USAGE
}

/// Turns `run`'s raw flags into checked node options.
fn node_options(args: &RunArgs) -> Result<NodeOptions, String> {
    let cluster: Cluster = args.cluster.parse()?;
    if cluster.addr(args.id).is_none() {
        return Err(format!(
            "--id {} is not in the cluster list {cluster}",
            args.id
        ));
    }
    let ms = |d: Duration, flag: &str| -> Result<u32, String> {
        let ms = d.as_millis();
        if d.subsec_nanos() % 1_000_000 != 0 || ms == 0 || ms > 600_000 {
            return Err(format!(
                "{flag} must be a whole number of milliseconds from 1ms to 10m"
            ));
        }
        Ok(ms as u32)
    };
    let min = ms(args.election_timeout_min, "--election-timeout-min")?;
    let max = ms(args.election_timeout_max, "--election-timeout-max")?;
    let heartbeat = ms(args.heartbeat, "--heartbeat")?;
    if max <= min {
        return Err("--election-timeout-max must be longer than --election-timeout-min".into());
    }
    if heartbeat >= min {
        return Err("--heartbeat must be shorter than --election-timeout-min".into());
    }
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| default_data_dir(args.id));
    let control_path = args
        .control
        .clone()
        .unwrap_or_else(|| data_dir.join("control.sock"));
    Ok(NodeOptions {
        id: args.id,
        cluster,
        data_dir,
        control_path,
        election_timeout_ms: (min, max),
        heartbeat_ms: heartbeat,
        seed: args.seed,
        pre_vote: !args.no_pre_vote,
        check_quorum: !args.no_check_quorum,
        snapshot_every: args.snapshot_every,
        segment_bytes: args.segment_bytes,
    })
}

fn run_node(args: RunArgs) -> u8 {
    init_logger(args.log_level);
    let opts = match node_options(&args) {
        Ok(opts) => opts,
        Err(e) => return usage_error(&e),
    };
    match runtime::run(opts) {
        Ok(()) => EXIT_OK,
        Err(e) => {
            log::error!("node={}: {e}", args.id);
            EXIT_FAIL
        }
    }
}

fn ctl(args: CtlArgs) -> u8 {
    let path = match (&args.control, &args.data_dir, args.id) {
        (Some(path), _, _) => path.clone(),
        (None, Some(dir), _) => dir.join("control.sock"),
        (None, None, Some(id)) => default_data_dir(id).join("control.sock"),
        (None, None, None) => {
            return usage_error("ctl needs --control, --data-dir or --id before the command")
        }
    };
    let words = &args.command;
    let misplaced = ["--control", "--data-dir", "--id", "--timeout"];
    if let Some(flag) = words.iter().find(|w| misplaced.contains(&w.as_str())) {
        return usage_error(&format!(
            "{flag} must come before the command, e.g. raftnode ctl --id 1 status"
        ));
    }
    let human_status = words == &["status"];
    let line = words.join(" ");
    match crate::control::request(&path, &line, args.timeout) {
        Ok(lines) => {
            for l in &lines {
                if human_status {
                    print!("{}", client::format_status(l));
                } else {
                    println!("{l}");
                }
            }
            EXIT_OK
        }
        Err(e) => {
            eprintln!("raftnode ctl: {e}");
            EXIT_FAIL
        }
    }
}
