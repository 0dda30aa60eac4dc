//! The `raftnode` binary: everything lives in the library; see `raftnode::cli`.

fn main() -> std::process::ExitCode {
    raftnode::cli::main()
}
