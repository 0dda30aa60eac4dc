# shellcheck shell=sh
# Shared helpers for the scripts in this folder; sourced, never run.
#
# A cluster folder (default ./cluster) made by `cluster.sh start` holds:
#   cluster.env      RAFTNODE_CLUSTER=... (source it: `. cluster/cluster.env`)
#   raftnode.path    absolute path of the binary the nodes run
#   node-ID/data     the node's --data-dir (its control socket is data/control.sock)
#   node-ID/node.log the node's stderr
#   node-ID/pid      the node's process id, while it may be running
#   node-ID/run.sh   the command line that starts the node
#
# Scripts call raftnode with long flags only.

# Name used in messages: the calling script's file name.
PROG=${0##*/}

# Poll interval of every wait loop, and polls per second (the loops count polls so that they
# stay bounded even if the clock jumps).
POLL_INTERVAL=0.1
POLLS_PER_SECOND=10

die() {
    printf '%s: %s\n' "$PROG" "$*" >&2
    exit 1
}

usage_error() {
    printf '%s: %s\n' "$PROG" "$*" >&2
    printf "Try '%s --help'.\n" "$PROG" >&2
    exit 2
}

note() {
    printf '%s\n' "$*"
}

# is_uint VALUE: true for a non-empty string of decimal digits.
is_uint() {
    case $1 in
        '' | *[!0-9]*) return 1 ;;
        *) return 0 ;;
    esac
}

# repo_root: the repository holding this folder.
repo_root() {
    (CDPATH='' cd -- "$SCRIPT_DIR/.." && pwd)
}

# abs_dir DIR: DIR as an absolute path; DIR must exist.
abs_dir() {
    (CDPATH='' cd -- "$1" && pwd)
}

# ----- the raftnode binary -----

# build_bin: prints the binary to start nodes with: $RAFTNODE_BIN if set, otherwise the
# release build of this repository, built (or brought up to date) by cargo first.
build_bin() {
    if [ -n "${RAFTNODE_BIN:-}" ]; then
        [ -x "$RAFTNODE_BIN" ] || die "RAFTNODE_BIN=$RAFTNODE_BIN is not an executable file"
        printf '%s\n' "$RAFTNODE_BIN"
        return 0
    fi
    _bb_root=$(repo_root)
    _bb_target=${CARGO_TARGET_DIR:-target}
    case $_bb_target in
        /*) ;;
        *) _bb_target=$_bb_root/$_bb_target ;;
    esac
    _bb_bin=$_bb_target/release/raftnode
    if command -v cargo >/dev/null 2>&1; then
        printf 'building raftnode: cargo build --release (in %s)\n' "$_bb_root" >&2
        (cd "$_bb_root" && cargo build --release --quiet) >&2 ||
            die "cargo build --release failed (or set RAFTNODE_BIN to a built binary)"
    elif [ -x "$_bb_bin" ]; then
        printf 'cargo not found; using the existing %s\n' "$_bb_bin" >&2
    else
        die "cargo not found and no binary at $_bb_bin; install Rust or set RAFTNODE_BIN"
    fi
    [ -x "$_bb_bin" ] || die "cargo build succeeded but $_bb_bin is missing"
    printf '%s\n' "$_bb_bin"
}

# find_bin DIR: prints the binary to talk to the cluster in DIR with, without building:
# $RAFTNODE_BIN, else the one the cluster was started with, else a build in this repository.
find_bin() {
    if [ -n "${RAFTNODE_BIN:-}" ]; then
        [ -x "$RAFTNODE_BIN" ] || die "RAFTNODE_BIN=$RAFTNODE_BIN is not an executable file"
        printf '%s\n' "$RAFTNODE_BIN"
        return 0
    fi
    if [ -f "$1/raftnode.path" ]; then
        _fb_bin=$(cat "$1/raftnode.path")
        if [ -x "$_fb_bin" ]; then
            printf '%s\n' "$_fb_bin"
            return 0
        fi
    fi
    _fb_root=$(repo_root)
    for _fb_bin in "$_fb_root/target/release/raftnode" "$_fb_root/target/debug/raftnode"; do
        if [ -x "$_fb_bin" ]; then
            printf '%s\n' "$_fb_bin"
            return 0
        fi
    done
    die "no raftnode binary found; set RAFTNODE_BIN or start the cluster with cluster.sh start"
}

# ----- the cluster folder -----

# cluster_spec DIR: prints the RAFTNODE_CLUSTER value recorded in DIR/cluster.env.
cluster_spec() {
    [ -f "$1/cluster.env" ] ||
        die "no cluster in $1 ($1/cluster.env is missing); start one with: scripts/cluster.sh start --dir $1"
    _cs_spec=$(sed -n 's/^RAFTNODE_CLUSTER=//p' "$1/cluster.env")
    [ -n "$_cs_spec" ] || die "$1/cluster.env has no RAFTNODE_CLUSTER line"
    printf '%s\n' "$_cs_spec"
}

# spec_ids SPEC: prints the node ids of a cluster spec, space-separated.
spec_ids() {
    printf '%s\n' "$1" | tr ',' '\n' | sed -n 's/^ *\([0-9][0-9]*\)=.*/\1/p' | tr '\n' ' ' |
        sed 's/ $//'
}

# has_word LIST WORD: true when WORD is one of the space-separated words of LIST.
has_word() {
    case " $1 " in
        *" $2 "*) return 0 ;;
        *) return 1 ;;
    esac
}

node_dir() { printf '%s/node-%s\n' "$1" "$2"; }
node_data() { printf '%s/node-%s/data\n' "$1" "$2"; }

# node_pid DIR ID: prints the recorded pid of node ID, or nothing.
node_pid() {
    if [ -f "$1/node-$2/pid" ]; then
        cat "$1/node-$2/pid"
    fi
}

# pid_alive PID: true while the process exists and is not a zombie.
pid_alive() {
    is_uint "$1" || return 1
    kill -0 "$1" 2>/dev/null || return 1
    _pa_stat=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
    case $_pa_stat in
        Z*) return 1 ;;
        *) return 0 ;;
    esac
}

# pid_is_node PID DIR ID: true when PID is alive and is `raftnode run` for node ID of the
# cluster in DIR, or the launcher just about to exec it (so a recycled pid is never
# signalled).
pid_is_node() {
    pid_alive "$1" || return 1
    _pn_args=$(ps -o args= -p "$1" 2>/dev/null) || return 1
    case $_pn_args in
        *" run "*"--data-dir $2/node-$3/data"* | *"sh $2/node-$3/run.sh") return 0 ;;
        *) return 1 ;;
    esac
}

# live_nodes DIR SPEC: prints the ids whose recorded pid runs that node, space-separated.
live_nodes() {
    _ln_out=
    for _ln_id in $(spec_ids "$2"); do
        if pid_is_node "$(node_pid "$1" "$_ln_id")" "$1" "$_ln_id"; then
            _ln_out="$_ln_out $_ln_id"
        fi
    done
    printf '%s\n' "${_ln_out# }"
}

# ctl BIN DIR ID COMMAND...: runs `raftnode ctl` against node ID.
ctl() {
    _ctl_bin=$1
    _ctl_data=$(node_data "$2" "$3")
    shift 3
    "$_ctl_bin" ctl --data-dir "$_ctl_data" --timeout 1s "$@"
}

# node_status BIN DIR ID: prints the node's `status --json` line, or fails quietly.
node_status() {
    ctl "$1" "$2" "$3" status --json 2>/dev/null
}

# json_field KEY JSON: prints the value of top-level field KEY of a one-line JSON object
# (strings without their quotes; null as null). Nested arrays and objects are removed first,
# so a key inside them (the peers' "id") is never mistaken for a top-level one. Good enough
# for `status --json`, whose strings hold no quotes, brackets or braces.
json_field() {
    printf '%s\n' "$2" |
        sed -e 's/^ *{//' -e 's/} *$//' -e 's/\[[^]]*\]/[]/g' -e 's/{[^{}]*}/{}/g' |
        sed -n -e "s/^\\(.*,\\)\\{0,1\\}\"$1\":\"\\([^\"]*\\)\".*\$/\\2/p" -e t \
            -e "s/^\\(.*,\\)\\{0,1\\}\"$1\":\\([^,]*\\).*\$/\\2/p"
}

# ----- bounded waiting -----

# deadline_start SECONDS: starts a wait of at most SECONDS (checked by clock and poll count).
deadline_start() {
    _dl_end=$(($(date +%s) + $1))
    _dl_polls=$(($1 * POLLS_PER_SECOND))
}

# deadline_poll: sleeps one poll interval; false once the wait is over.
deadline_poll() {
    [ "$_dl_polls" -gt 0 ] || return 1
    [ "$(date +%s)" -le "$_dl_end" ] || return 1
    _dl_polls=$((_dl_polls - 1))
    sleep "$POLL_INTERVAL"
}

# leader_of BIN DIR SIZE IDS: prints "LEADER TERM" when a node among IDS is leader and more
# than half of SIZE nodes (the whole cluster) report it as leader in that term; otherwise
# fails. Only the nodes in IDS are asked.
leader_of() {
    _lo_bin=$1
    _lo_dir=$2
    _lo_size=$3
    _lo_statuses=
    for _lo_id in $4; do
        _lo_json=$(node_status "$_lo_bin" "$_lo_dir" "$_lo_id") || continue
        _lo_statuses="$_lo_statuses$(json_field id "$_lo_json") $(json_field role "$_lo_json") \
$(json_field term "$_lo_json") $(json_field leader "$_lo_json")
"
    done
    _lo_found=$(printf '%s' "$_lo_statuses" | awk -v n="$_lo_size" '
        $2 == "leader" { leader[$1] = $3 }
        { votes[$4 " " $3]++ }
        END {
            for (l in leader) if (votes[l " " leader[l]] * 2 > n) { print l, leader[l]; exit }
        }')
    [ -n "$_lo_found" ] || return 1
    printf '%s\n' "$_lo_found"
}

# log_tail DIR ID: shows the end of a node's log.
log_tail() {
    _lt_log=$(node_dir "$1" "$2")/node.log
    if [ -s "$_lt_log" ]; then
        printf -- '--- last lines of %s:\n' "$_lt_log"
        tail -n 8 "$_lt_log"
    fi
}

# ----- argument helpers shared by the scripts -----

# dir_only_args CONTEXT ARGS...: parses arguments that may only be --dir DIR (default
# ./cluster) or -h/--help (calls the script's usage and exits). Sets CLUSTER_DIR to the absolute
# path of an existing cluster folder. CONTEXT prefixes the message about an unknown argument.
dir_only_args() {
    _context=$1
    shift
    CLUSTER_DIR=./cluster
    while [ $# -gt 0 ]; do
        case $1 in
            --dir)
                [ $# -ge 2 ] || usage_error "--dir needs a value"
                CLUSTER_DIR=$2
                shift 2
                ;;
            -h | --help) usage && exit 0 ;;
            *) usage_error "${_context}unknown argument '$1'" ;;
        esac
    done
    [ -d "$CLUSTER_DIR" ] || die "no cluster in $CLUSTER_DIR (no such folder)"
    CLUSTER_DIR=$(abs_dir "$CLUSTER_DIR")
}

# start_temp_cluster NAME BASE_PORT: builds the release binary and examples, starts 3 quiet
# nodes on 127.0.0.1 (ports BASE_PORT+1..+3) in a new temporary folder, sets CLUSTER_DIR to
# it, exports RAFTNODE_CLUSTER, and arranges for the nodes and folder to go when the script
# exits or is interrupted.
start_temp_cluster() {
    (cd "$(repo_root)" && cargo build --release --quiet --examples) || die "build failed"
    CLUSTER_DIR=$(mktemp -d "${TMPDIR:-/tmp}/raftnode-$1.XXXXXX")
    trap remove_temp_cluster EXIT INT TERM
    sh "$SCRIPT_DIR/cluster.sh" start --nodes 3 --base-port "$2" --dir "$CLUSTER_DIR" \
        -- --log-level warn >/dev/null
    # shellcheck disable=SC1091
    . "$CLUSTER_DIR/cluster.env"
    export RAFTNODE_CLUSTER
}

# remove_temp_cluster: stops the nodes of start_temp_cluster's folder and deletes it.
remove_temp_cluster() {
    sh "$SCRIPT_DIR/cluster.sh" stop --dir "$CLUSTER_DIR" >/dev/null 2>&1 || true
    rm -rf "$CLUSTER_DIR"
}
