#!/bin/sh
# Start, stop and inspect a local raftnode cluster whose nodes all live under one folder.
set -eu

SCRIPT_DIR=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd)
# shellcheck source=scripts/lib.sh
. "$SCRIPT_DIR/lib.sh"

usage() {
    cat <<EOF
Usage:
  $PROG start [--nodes N] [--base-port P] [--dir DIR] [--tmux] [-- RUN-FLAGS...]
  $PROG stop [--dir DIR]
  $PROG status [--dir DIR]

start   Starts N nodes (default 3) on 127.0.0.1, ports P+1..P+N (default base 7000), in the
        background, or each in its own pane of one tmux window with --tmux. Everything goes
        under DIR (default ./cluster): DIR/cluster.env (source it to get RAFTNODE_CLUSTER),
        DIR/node-ID/{data,node.log,pid,run.sh}. RUN-FLAGS are added to every
        'raftnode run' (e.g. -- --heartbeat 20ms --log-level debug). Waits until a leader
        is elected and prints it; if that fails, stops the nodes again and exits 1.
stop    Stops every node that start started: SIGTERM, then SIGKILL after a bounded wait.
        Succeeds when nothing is running.
status  Prints a table of the nodes (from 'raftnode ctl status --json'); exits 1 when a
        node does not answer.

Environment:
  RAFTNODE_BIN            binary to run (default: cargo build --release in this repository)
  RAFTNODE_LOG            log level of the nodes (error, warn, info, debug, trace)
  CLUSTER_START_TIMEOUT   seconds start waits for a leader (default 20)
  CLUSTER_STOP_TIMEOUT    seconds stop waits after SIGTERM before SIGKILL (default 5)
EOF
}

# quote WORD: WORD as a single-quoted shell word.
quote() {
    printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"
}

# write_run_script BIN DIR ID SPEC RUN-FLAGS...: writes node-ID/run.sh, which starts the node
# in the foreground with its stderr appended to node.log.
write_run_script() {
    _wl_bin=$1
    _wl_dir=$2
    _wl_id=$3
    _wl_spec=$4
    shift 4
    _wl_nd=$(node_dir "$_wl_dir" "$_wl_id")
    _wl_extra=
    for _wl_arg in "$@"; do
        _wl_extra="$_wl_extra $(quote "$_wl_arg")"
    done
    {
        printf '#!/bin/sh\n'
        printf '# Node %s of the cluster in %s, written by cluster.sh start.\n' \
            "$_wl_id" "$_wl_dir"
        if [ -n "${RAFTNODE_LOG:-}" ]; then
            printf 'RAFTNODE_LOG=%s\nexport RAFTNODE_LOG\n' "$(quote "$RAFTNODE_LOG")"
        fi
        printf 'exec %s run --id %s --cluster %s --data-dir %s%s 2>>%s\n' \
            "$(quote "$_wl_bin")" "$_wl_id" "$(quote "$_wl_spec")" \
            "$(quote "$_wl_nd/data")" "$_wl_extra" "$(quote "$_wl_nd/node.log")"
    } >"$_wl_nd/run.sh"
}

# write_pane_script DIR ID: writes node-ID/pane.sh, which a tmux pane runs: it starts run.sh,
# records the node's pid and shows the log until the node exits.
write_pane_script() {
    _wp_nd=$(node_dir "$1" "$2")
    {
        printf '#!/bin/sh\n'
        printf '# tmux pane of node %s, written by cluster.sh start --tmux.\n' "$2"
        printf 'nd=%s\n' "$(quote "$_wp_nd")"
        cat <<'EOF'
# Show this run's part of the log: from the line cluster.sh start wrote last.
from=$(wc -l <"$nd/node.log")
sh "$nd/run.sh" </dev/null &
node=$!
printf '%s\n' "$node" >"$nd/pid"
tail -n +"$from" -f "$nd/node.log" &
tail=$!
status=0
wait "$node" || status=$?
kill "$tail"
echo "node exited with status $status"
EOF
    } >"$_wp_nd/pane.sh"
}

# start_tmux DIR IDS PORT: runs each node's pane.sh in a pane of one new tiled window: in the
# current session when run inside tmux, otherwise in a new detached session.
start_tmux() {
    command -v tmux >/dev/null 2>&1 || die "--tmux needs tmux, which is not installed"
    _st_name=raftnode-$3
    _st_pane=
    for _st_id in $2; do
        _st_cmd="sh $(quote "$(node_dir "$1" "$_st_id")/pane.sh")"
        if [ -n "$_st_pane" ]; then
            # Splitting the newest pane keeps the panes in node order.
            _st_pane=$(tmux split-window -d -t "$_st_pane" -P -F '#{pane_id}' "$_st_cmd")
            tmux select-layout -t "$_st_window" tiled >/dev/null
        elif [ -n "${TMUX:-}" ]; then
            _st_window=$(tmux new-window -d -n "$_st_name" -P \
                -F '#{session_name}:#{window_index}' "$_st_cmd")
            _st_pane=$(tmux display-message -p -t "$_st_window" '#{pane_id}')
            _st_hint="see it with: tmux select-window -t $_st_window"
        else
            if tmux has-session -t "=$_st_name" 2>/dev/null; then
                die "a tmux session named $_st_name exists already; stop it or pick another --base-port"
            fi
            _st_pane=$(tmux new-session -d -s "$_st_name" -n nodes -x 200 -y 50 -P \
                -F '#{pane_id}' "$_st_cmd")
            _st_window="$_st_name:nodes"
            _st_hint="attach with: tmux attach -t $_st_name"
        fi
        tmux select-pane -t "$_st_pane" -T "node $_st_id"
    done
    tmux set-option -w -t "$_st_window" pane-border-status top
    tmux set-option -w -t "$_st_window" pane-border-format ' #{pane_title} '
    tmux select-layout -t "$_st_window" tiled >/dev/null
    note "nodes run in tmux window $_st_window; $_st_hint"
}

# await_pids DIR IDS: waits (bounded) until every node has written its pid file.
await_pids() {
    deadline_start 10
    while :; do
        _ap_missing=
        for _ap_id in $2; do
            [ -s "$(node_dir "$1" "$_ap_id")/pid" ] || _ap_missing="$_ap_missing $_ap_id"
        done
        [ -n "$_ap_missing" ] || return 0
        deadline_poll || abort_start "$1" "tmux panes did not record the pids of nodes$_ap_missing"
    done
}

# abort_start DIR MESSAGE: explains a failed start, stops what was started, and exits 1.
abort_start() {
    printf '%s: %s\n' "$PROG" "$2" >&2
    stop_nodes "$1" >&2 || true
    die "start failed; logs are in $1/node-*/node.log"
}

# await_leader BIN DIR IDS SIZE: waits until a leader is elected; prints "LEADER TERM".
await_leader() {
    deadline_start "${CLUSTER_START_TIMEOUT:-20}"
    while :; do
        for _al_id in $3; do
            if ! pid_alive "$(node_pid "$2" "$_al_id")"; then
                log_tail "$2" "$_al_id" >&2
                abort_start "$2" "node $_al_id exited during start-up (see its log above)"
            fi
        done
        if leader_of "$1" "$2" "$4" "$3"; then
            return 0
        fi
        if ! deadline_poll; then
            cmd_status --dir "$2" >&2 || true
            abort_start "$2" "no leader elected within ${CLUSTER_START_TIMEOUT:-20}s"
        fi
    done
}

cmd_start() {
    _nodes=3
    _base_port=7000
    _dir=./cluster
    _tmux=0
    while [ $# -gt 0 ]; do
        case $1 in
            --nodes | --base-port | --dir)
                [ $# -ge 2 ] || usage_error "$1 needs a value"
                case $1 in
                    --nodes) _nodes=$2 ;;
                    --base-port) _base_port=$2 ;;
                    --dir) _dir=$2 ;;
                esac
                shift 2
                ;;
            --tmux) _tmux=1 && shift ;;
            -h | --help) usage && exit 0 ;;
            --) shift && break ;;
            *) usage_error "start: unknown argument '$1'" ;;
        esac
    done
    for _arg in "$@"; do
        case $_arg in
            --id | --id=* | --cluster | --cluster=* | --data-dir | --data-dir=* | --control | --control=*)
                usage_error "start sets ${_arg%%=*} itself; do not pass it after --"
                ;;
        esac
    done
    if ! is_uint "$_nodes" || [ "$_nodes" -lt 1 ] || [ "$_nodes" -gt 15 ]; then
        usage_error "--nodes must be a number from 1 to 15, not '$_nodes'"
    fi
    if ! is_uint "$_base_port" || [ "$_base_port" -lt 1 ] ||
        [ $((_base_port + _nodes)) -gt 65535 ]; then
        usage_error "--base-port must be a number with ports $_base_port+1..$_base_port+$_nodes valid"
    fi
    [ -n "$_dir" ] || usage_error "--dir must not be empty"
    is_uint "${CLUSTER_START_TIMEOUT:-20}" ||
        usage_error "CLUSTER_START_TIMEOUT must be a whole number of seconds"

    _ids=
    _spec=
    _id=1
    while [ "$_id" -le "$_nodes" ]; do
        _ids="$_ids $_id"
        _spec="$_spec,$_id=127.0.0.1:$((_base_port + _id))"
        _id=$((_id + 1))
    done
    _ids=${_ids# }
    _spec=${_spec#,}

    mkdir -p "$_dir"
    _dir=$(abs_dir "$_dir")
    _sock="$_dir/node-$_nodes/data/control.sock"
    [ "${#_sock}" -lt 108 ] ||
        die "$_sock is too long for a Unix socket path (108 bytes at most); use a shorter --dir"
    if [ -f "$_dir/cluster.env" ]; then
        _old_spec=$(cluster_spec "$_dir")
        _live=$(live_nodes "$_dir" "$_old_spec")
        [ -z "$_live" ] ||
            die "nodes $_live of the cluster in $_dir are running; stop them first: $0 stop --dir $_dir"
        [ "$_old_spec" = "$_spec" ] ||
            die "$_dir holds a cluster with other members ($_old_spec); use another --dir or remove $_dir"
        note "restarting the cluster in $_dir with its existing data"
    fi

    _bin=$(build_bin)
    {
        printf '# Written by scripts/cluster.sh start. Use it with: . %s/cluster.env\n' "$_dir"
        printf 'RAFTNODE_CLUSTER=%s\n' "$_spec"
        printf 'export RAFTNODE_CLUSTER\n'
    } >"$_dir/cluster.env"
    printf '%s\n' "$_bin" >"$_dir/raftnode.path"

    for _id in $_ids; do
        _nd=$(node_dir "$_dir" "$_id")
        mkdir -p "$_nd/data"
        rm -f "$_nd/pid"
        rm -f "$_nd/pane.sh"
        write_run_script "$_bin" "$_dir" "$_id" "$_spec" "$@"
        if [ "$_tmux" = 1 ]; then
            write_pane_script "$_dir" "$_id"
        fi
        printf '# %s: cluster.sh start\n' "$(date '+%Y-%m-%dT%H:%M:%S%z')" >>"$_nd/node.log"
    done
    if [ "$_tmux" = 1 ]; then
        start_tmux "$_dir" "$_ids" "$_base_port"
        await_pids "$_dir" "$_ids"
    else
        for _id in $_ids; do
            _nd=$(node_dir "$_dir" "$_id")
            nohup sh "$_nd/run.sh" </dev/null >/dev/null 2>&1 &
            printf '%s\n' "$!" >"$_nd/pid"
        done
    fi
    for _id in $_ids; do
        note "node $_id: 127.0.0.1:$((_base_port + _id)), pid $(node_pid "$_dir" "$_id"), log $(node_dir "$_dir" "$_id")/node.log"
    done

    note "waiting for a leader (at most ${CLUSTER_START_TIMEOUT:-20}s)..."
    _found=$(await_leader "$_bin" "$_dir" "$_ids" "$_nodes") || exit 1
    note "leader: node ${_found% *} (term ${_found#* })"
    note "cluster ready: . $_dir/cluster.env; then e.g. $_bin put --cluster \"\$RAFTNODE_CLUSTER\" k v"
    note "status: $0 status --dir $_dir    stop: $0 stop --dir $_dir"
}

# stop_nodes DIR: SIGTERM to every running node of DIR, SIGKILL to those still running after
# the wait, then removes their pid files.
stop_nodes() {
    _sn_dir=$1
    _sn_spec=$(cluster_spec "$_sn_dir")
    _sn_sent=
    for _sn_id in $(spec_ids "$_sn_spec"); do
        _sn_pid=$(node_pid "$_sn_dir" "$_sn_id")
        [ -n "$_sn_pid" ] || continue
        if pid_is_node "$_sn_pid" "$_sn_dir" "$_sn_id"; then
            kill -TERM "$_sn_pid" 2>/dev/null || true
            _sn_sent="$_sn_sent $_sn_id"
        else
            if pid_alive "$_sn_pid"; then
                note "node $_sn_id: pid $_sn_pid is no longer this node; leaving it alone"
            fi
            rm -f "$(node_dir "$_sn_dir" "$_sn_id")/pid"
        fi
    done
    if [ -z "$_sn_sent" ]; then
        note "no node of the cluster in $_sn_dir is running"
        return 0
    fi
    note "sent SIGTERM to nodes$_sn_sent"

    _sn_wait=${CLUSTER_STOP_TIMEOUT:-5}
    is_uint "$_sn_wait" || die "CLUSTER_STOP_TIMEOUT must be a whole number of seconds"
    for _sn_signal in KILL NONE; do
        deadline_start "$_sn_wait"
        while :; do
            _sn_left=
            for _sn_id in $_sn_sent; do
                if pid_alive "$(node_pid "$_sn_dir" "$_sn_id")"; then
                    _sn_left="$_sn_left $_sn_id"
                fi
            done
            if [ -z "$_sn_left" ] || ! deadline_poll; then
                break
            fi
        done
        [ -n "$_sn_left" ] || break
        [ "$_sn_signal" = KILL ] || break
        note "nodes$_sn_left still running after ${_sn_wait}s; sending SIGKILL"
        for _sn_id in $_sn_left; do
            _sn_pid=$(node_pid "$_sn_dir" "$_sn_id")
            if pid_is_node "$_sn_pid" "$_sn_dir" "$_sn_id"; then
                kill -KILL "$_sn_pid" 2>/dev/null || true
            fi
        done
        _sn_wait=2
    done
    for _sn_id in $_sn_sent; do
        if ! has_word "$_sn_left" "$_sn_id"; then
            rm -f "$(node_dir "$_sn_dir" "$_sn_id")/pid"
        fi
    done
    [ -z "$_sn_left" ] || die "nodes$_sn_left did not stop, even after SIGKILL"
    note "stopped nodes$_sn_sent"
}

cmd_stop() {
    dir_only_args "stop: " "$@"
    stop_nodes "$CLUSTER_DIR"
}

cmd_status() {
    dir_only_args "status: " "$@"
    _dir=$CLUSTER_DIR
    _spec=$(cluster_spec "$_dir")
    _bin=$(find_bin "$_dir")
    note "cluster in $_dir: RAFTNODE_CLUSTER=$_spec"
    _format='%-4s %-8s %-5s %-13s %-5s %-6s %-6s %-7s %-16s %s\n'
    # shellcheck disable=SC2059 # the format is the constant above
    printf "$_format" NODE PID ALIVE ROLE TERM LEADER COMMIT APPLIED DIGEST RULES
    _rc=0
    for _id in $(spec_ids "$_spec"); do
        _pid=$(node_pid "$_dir" "$_id")
        _alive=no
        if pid_is_node "$_pid" "$_dir" "$_id"; then
            _alive=yes
        fi
        _role=- _term=- _leader=- _commit=- _applied=- _digest=- _rules=-
        if _json=$(node_status "$_bin" "$_dir" "$_id"); then
            _role=$(json_field role "$_json")
            _term=$(json_field term "$_json")
            _leader=$(json_field leader "$_json")
            [ "$_leader" != null ] || _leader=none
            _commit=$(json_field commit_index "$_json")
            _applied=$(json_field last_applied "$_json")
            _digest=$(json_field applied_digest "$_json")
            _rules=$(printf '%s\n' "$_json" | sed -n 's/.*"rules":\[\([^]]*\)\].*/\1/p' |
                awk -F'","' '{ print ($0 == "" ? 0 : NF) }')
        elif [ "$_alive" = yes ]; then
            _role="no answer"
            _rc=1
        else
            _rc=1
        fi
        # shellcheck disable=SC2059
        printf "$_format" "$_id" "${_pid:--}" "$_alive" "$_role" "$_term" "$_leader" \
            "$_commit" "$_applied" "$_digest" "$_rules"
    done
    return "$_rc"
}

[ $# -ge 1 ] || usage_error "missing command: start, stop or status"
_command=$1
shift
case $_command in
    start) cmd_start "$@" ;;
    stop) cmd_stop "$@" ;;
    status) cmd_status "$@" ;;
    -h | --help | help) usage ;;
    *) usage_error "unknown command '$_command' (start, stop or status)" ;;
esac
