#!/bin/sh
# Split a local cluster (made by cluster.sh) into groups that cannot reach each other.
set -eu

SCRIPT_DIR=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd)
# shellcheck source=scripts/lib.sh
. "$SCRIPT_DIR/lib.sh"

usage() {
    cat <<EOF
Usage: $PROG [--dir DIR] GROUP GROUP...

Splits the cluster in DIR (default ./cluster) into groups, each a comma-separated list of node
ids, e.g. '$PROG 1,2 3,4,5'. Every node of a group blocks, in both directions, every node
listed in another group ('raftnode ctl block'). Nodes listed nowhere keep their links, so
'$PROG 1 2' cuts only the link between 1 and 2.

Rules add to those already installed; run heal.sh first to start from a connected cluster.
Prints the rules each node holds afterwards. Exits 1 when a node could not be reached, 2 on
bad usage (fewer than two groups, an id that is not a member, an id listed twice).
EOF
}

dir=./cluster
while [ $# -gt 0 ]; do
    case $1 in
        --dir)
            [ $# -ge 2 ] || usage_error "--dir needs a value"
            dir=$2
            shift 2
            ;;
        -h | --help) usage && exit 0 ;;
        --) shift && break ;;
        -*) usage_error "unknown option '$1'" ;;
        *) break ;;
    esac
done
[ $# -ge 2 ] || usage_error "give at least two groups, e.g. 1,2 3"
[ -d "$dir" ] || die "no cluster in $dir (no such folder)"
dir=$(abs_dir "$dir")
spec=$(cluster_spec "$dir")
members=$(spec_ids "$spec")
bin=$(find_bin "$dir")

# Check every group before changing anything. group_of_ID records each listed node's group.
listed=
group_count=0
for group in "$@"; do
    group_count=$((group_count + 1))
    case $group in
        '' | ,* | *, | *,,*) usage_error "group '$group' is not a comma-separated list of ids" ;;
    esac
    for id in $(printf '%s\n' "$group" | tr ',' ' '); do
        is_uint "$id" || usage_error "'$id' in group '$group' is not a node id"
        id=$(printf '%s\n' "$id" | sed 's/^0*\(.\)/\1/')
        has_word "$members" "$id" ||
            usage_error "node $id is not a member of the cluster in $dir (members: $members)"
        ! has_word "$listed" "$id" || usage_error "node $id is listed twice"
        listed="$listed $id"
        eval "group_of_$id=$group_count"
    done
done

failed=0
for id in $listed; do
    eval "own=\$group_of_$id"
    peers=
    for other in $listed; do
        eval "theirs=\$group_of_$other"
        # shellcheck disable=SC2154 # own and theirs are set by the evals above
        if [ "$theirs" != "$own" ]; then
            peers="$peers $other"
        fi
    done
    # shellcheck disable=SC2086 # peers is a list of numeric ids
    if ! ctl "$bin" "$dir" "$id" block $peers >/dev/null; then
        printf '%s: node %s: could not install its rules (see above)\n' "$PROG" "$id" >&2
        failed=1
    fi
done

note "rules now installed:"
for id in $members; do
    if rules=$(ctl "$bin" "$dir" "$id" rules 2>&1); then
        printf '%s\n' "$rules" | sed "s/^/  node $id: /"
    else
        printf '  node %s: unreachable: %s\n' "$id" "$rules"
        failed=1
    fi
done
exit "$failed"
