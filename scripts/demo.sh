#!/bin/sh
# raftnode's main story in one command: elect, replicate, partition the leader away, fail
# over, refuse writes on the minority side, heal, converge. Exits 0 only if every check passed.
set -eu

SCRIPT_DIR=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd)
# shellcheck source=scripts/lib.sh
. "$SCRIPT_DIR/lib.sh"

usage() {
    cat <<EOF
Usage: $PROG

Builds raftnode, starts a 3-node cluster on 127.0.0.1, writes keys, cuts the leader off,
shows a new leader taking over while the old one cannot commit, heals the partition, checks
that every node converged, and stops the cluster. Exits 0 only if every check passed.

Environment:
  DEMO_BASE_PORT  the nodes use ports DEMO_BASE_PORT+1..+3 (default 7100)
  DEMO_DIR        a new or empty folder for the cluster (default: a new temporary folder,
                  removed when the demo passes; a given DEMO_DIR is kept)
  DEMO_KEEP=1     keep the temporary folder even when the demo passes
  RAFTNODE_BIN    binary to use instead of building one with cargo
EOF
}

case ${1:-} in
    -h | --help) usage && exit 0 ;;
    '') ;;
    *) usage_error "takes no arguments" ;;
esac

NODES=3
base_port=${DEMO_BASE_PORT:-7100}
if ! is_uint "$base_port" || [ "$base_port" -lt 1 ] || [ "$base_port" -gt 65000 ]; then
    usage_error "DEMO_BASE_PORT must be a port number, not '$base_port'"
fi

checks=0
started=0
made_dir=
dir=

step() {
    printf '\n==> %s\n' "$*"
}

say() {
    printf '    %s\n' "$*"
}

passed() {
    checks=$((checks + 1))
    printf '    ok: %s\n' "$*"
}

fail() {
    printf '\nDEMO FAILED: %s\n' "$*" >&2
    exit 1
}

# shown COMMAND...: prints a raftnode command line, runs it, indents its output, and leaves
# its exit status in $rc and its stdout in $out.
shown() {
    printf '    $ raftnode %s\n' "$*"
    _sh_err=$dir/demo.stderr
    rc=0
    out=$("$bin" "$@" 2>"$_sh_err") || rc=$?
    if [ -n "$out" ]; then
        printf '%s\n' "$out" | sed 's/^/      /'
    fi
    sed 's/^/      /' "$_sh_err"
    printf '      (exit %s)\n' "$rc"
}

cleanup() {
    _cu_rc=$?
    trap - EXIT
    if [ "$started" = 1 ]; then
        step "Stopping the cluster"
        if ! indented sh "$SCRIPT_DIR/cluster.sh" stop --dir "$dir"; then
            printf '\nDEMO FAILED: could not stop every node of %s\n' "$dir" >&2
            _cu_rc=1
        fi
    fi
    if [ "$_cu_rc" = 0 ]; then
        printf '\nDEMO PASSED: all %s checks passed.\n' "$checks"
        if [ -n "$made_dir" ] && [ "${DEMO_KEEP:-0}" != 1 ]; then
            rm -rf "$made_dir"
        elif [ -n "$dir" ]; then
            printf 'Logs and data are in %s\n' "$dir"
        fi
    else
        if [ -n "$dir" ]; then
            printf 'Logs and data are kept in %s (node-*/node.log)\n' "$dir" >&2
        fi
    fi
    exit "$_cu_rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# all_statuses: prints "ID ROLE TERM LEADER COMMIT APPLIED DIGEST" for every node that answers.
all_statuses() {
    for _as_id in $ids; do
        if _as_json=$(node_status "$bin" "$dir" "$_as_id"); then
            printf '%s %s %s %s %s %s %s\n' "$_as_id" \
                "$(json_field role "$_as_json")" "$(json_field term "$_as_json")" \
                "$(json_field leader "$_as_json")" "$(json_field commit_index "$_as_json")" \
                "$(json_field last_applied "$_as_json")" "$(json_field applied_digest "$_as_json")"
        fi
    done
}

# converged: true when every node answers, agrees on term and leader, has applied all it has
# committed, and all have the same commit index and state machine digest.
converged() {
    all_statuses | awk -v n="$NODES" '
        { count++; same[$3 " " $4 " " $5 " " $7]++; if ($5 != $6 || $4 == "null") bad = 1 }
        END { for (s in same) kinds++; exit !(count == n && kinds == 1 && !bad) }'
}

# indented COMMAND...: runs COMMAND, then prints its output indented; returns its status.
indented() {
    _in_rc=0
    "$@" >"$dir/demo.out" 2>&1 || _in_rc=$?
    sed 's/^/    /' "$dir/demo.out"
    return "$_in_rc"
}

show_table() {
    indented sh "$SCRIPT_DIR/cluster.sh" status --dir "$dir" || true
}

# ----------------------------------------------------------------------------------------

step "Step 1: build raftnode"
bin=$(build_bin)
say "using $bin"

step "Step 2: start $NODES nodes on 127.0.0.1:$((base_port + 1))..$((base_port + NODES))"
if [ -n "${DEMO_DIR:-}" ]; then
    dir=$DEMO_DIR
    mkdir -p "$dir"
else
    made_dir=$(mktemp -d "${TMPDIR:-/tmp}/raftnode-demo.XXXXXX")
    dir=$made_dir
fi
dir=$(abs_dir "$dir")
say "every node logs to $dir/node-ID/node.log and keeps its data in $dir/node-ID/data"
if [ -f "$dir/cluster.env" ]; then
    # Not ours: leave started at 0 so that the exit trap does not stop it.
    fail "$dir already holds a cluster; give DEMO_DIR a new or empty folder"
fi
started=1
indented env RAFTNODE_BIN="$bin" sh "$SCRIPT_DIR/cluster.sh" start --nodes "$NODES" \
    --base-port "$base_port" --dir "$dir" ||
    fail "the cluster did not start (is a port in $((base_port + 1))..$((base_port + NODES)) taken? try DEMO_BASE_PORT)"
spec=$(cluster_spec "$dir")
ids=$(spec_ids "$spec")
RAFTNODE_CLUSTER=$spec
export RAFTNODE_CLUSTER
say "clients find the cluster through RAFTNODE_CLUSTER=$spec (see $dir/cluster.env)"

step "Step 3: find the leader"
deadline_start 20
until found=$(leader_of "$bin" "$dir" "$NODES" "$ids"); do
    deadline_poll || fail "no leader elected within 20s"
done
leader=${found% *}
term=${found#* }
passed "node $leader is the leader of term $term, and a majority follows it"
follower=
others=
for id in $ids; do
    if [ "$id" != "$leader" ]; then
        others="$others,$id"
        [ -n "$follower" ] || follower=$id
    fi
done
others=${others#,}
show_table

step "Step 4: write keys"
say "a client that talks to follower $follower alone (--node) is turned away: only the leader"
say "accepts writes, and the follower names it"
shown put --node "$follower" --timeout 2s demo-direct refused
[ "$rc" != 0 ] || fail "follower $follower accepted a write with --node"
case $(cat "$dir/demo.stderr") in
    *"leader is $leader"*) passed "follower $follower refused the write and named leader $leader" ;;
    *) fail "follower $follower refused the write without naming leader $leader" ;;
esac
say "the full client starts at any node and follows those redirects to the leader:"
for kv in demo-color=blue demo-fruit=apple demo-count=1; do
    shown put "${kv%%=*}" "${kv#*=}"
    [ "$rc" = 0 ] || fail "put ${kv%%=*} failed with exit $rc"
done
shown cas demo-count 1 2
[ "$rc" = 0 ] || fail "cas demo-count 1 2 failed with exit $rc"
shown get demo-count
if [ "$rc" != 0 ] || [ "$out" != 2 ]; then
    fail "get demo-count gave '$out' (exit $rc), expected 2"
fi
passed "3 puts and a cas committed; demo-count reads 2"

step "Step 5: partition the leader (node $leader) away from nodes $others"
indented sh "$SCRIPT_DIR/partition.sh" --dir "$dir" "$leader" "$others" ||
    fail "partition.sh failed"
passed "node $leader and nodes $others now drop each other's datagrams"

step "Step 6: wait for a new leader among nodes $others"
say "they stop hearing heartbeats, time out and elect one of themselves in a higher term"
deadline_start 20
while :; do
    if found=$(leader_of "$bin" "$dir" "$NODES" "$(printf '%s\n' "$others" | tr ',' ' ')") &&
        [ "${found#* }" -gt "$term" ]; then
        break
    fi
    deadline_poll || fail "nodes $others elected no leader within 20s"
done
new_leader=${found% *}
new_term=${found#* }
passed "node $new_leader leads term $new_term with a majority of the cluster behind it"
old_json=$(node_status "$bin" "$dir" "$leader") || fail "old leader $leader does not answer"
say "old leader $leader says: role $(json_field role "$old_json"), term $(json_field term "$old_json")"
say "(cut off, it cannot hear about term $new_term; once a whole election timeout passes"
say " without word from a majority it steps down by itself: check-quorum)"
say "why, in its own words: $(json_field role_reason "$old_json")"
show_table

step "Step 7: the old leader cannot commit; the majority side can"
say "node $leader either still believes it leads and accepts the write but cannot reach a"
say "majority to commit it, or has already stepped down and refuses it; either way nothing is"
say "acknowledged, and the client reports the outcome as unknown (exit 3):"
shown put --node "$leader" --timeout 2s demo-minority lost
[ "$rc" = 3 ] || fail "a write to the cut-off old leader exited $rc, expected 3 (unknown)"
passed "write to old leader $leader: outcome unknown, not acknowledged"
say "the full client finds the new leader and commits:"
shown put demo-majority committed
[ "$rc" = 0 ] || fail "put demo-majority on the majority side exited $rc"
passed "the majority side committed demo-majority"

step "Step 8: heal the partition and wait until every node converged"
indented sh "$SCRIPT_DIR/heal.sh" --dir "$dir" || fail "heal.sh failed"
deadline_start 20
until converged; do
    deadline_poll || {
        show_table
        fail "nodes did not converge within 20s after healing"
    }
done
show_table
passed "all nodes agree on term, leader, commit index and applied digest"
say "the old leader's uncommitted entry was overwritten by the new leader's log:"
shown get demo-minority
[ "$rc" = 1 ] || fail "demo-minority: exit $rc, expected 1 (absent): an unacknowledged write survived"
passed "demo-minority was never applied"
shown get demo-direct
[ "$rc" = 1 ] || fail "demo-direct: exit $rc, expected 1 (absent)"
passed "demo-direct (refused by the follower) was never applied"

step "Step 9: read every key back"
say "get asks the leader, which confirms it still leads (ReadIndex) before answering; the"
say "equal applied digests above show the followers hold the same data"
for kv in demo-color=blue demo-fruit=apple demo-count=2 demo-majority=committed; do
    shown get "${kv%%=*}"
    if [ "$rc" != 0 ] || [ "$out" != "${kv#*=}" ]; then
        fail "get ${kv%%=*} gave '$out' (exit $rc), expected '${kv#*=}'"
    fi
done
passed "every key reads back with its committed value"
