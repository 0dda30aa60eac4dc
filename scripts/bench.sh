#!/bin/sh
# Benchmarks a local 3-node cluster: put throughput and latency with 1 and 128 clients, get
# throughput with 16 clients, and leader failover time. Rerunnable; prints one line each.
set -eu

SCRIPT_DIR=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd)
# shellcheck source=scripts/lib.sh
. "$SCRIPT_DIR/lib.sh"

usage() {
    cat <<EOF
Usage: $PROG [--duration SECONDS] [--rounds N] [--base-port P]

Builds the release binary and examples, starts 3 nodes on 127.0.0.1 (ports P+1..P+3, default
7200) in a temporary folder, runs examples/bench.rs and examples/failover.rs against them, and
stops the nodes. --duration is per load level (default 10), --rounds the failover rounds
(default 50).
EOF
}

duration=10
rounds=50
base_port=7200
while [ $# -gt 0 ]; do
    case $1 in
        --duration | --rounds | --base-port)
            [ $# -ge 2 ] || usage_error "$1 needs a value"
            is_uint "$2" || usage_error "$1 takes a whole number, not '$2'"
            case $1 in
                --duration) duration=$2 ;;
                --rounds) rounds=$2 ;;
                --base-port) base_port=$2 ;;
            esac
            shift 2
            ;;
        -h | --help) usage && exit 0 ;;
        *) usage_error "unknown argument '$1'" ;;
    esac
done

root=$(repo_root)
start_temp_cluster bench "$base_port"
dir=$CLUSTER_DIR

bench="$root/target/release/examples/bench"
"$bench" --clients 1 --duration "${duration}s"
"$bench" --clients 128 --duration "${duration}s"
"$bench" --clients 16 --duration "${duration}s" --op get
"$root/target/release/examples/failover" --dir "$dir" --rounds "$rounds"
