#!/bin/sh
# Remove every packet rule from every node of a local cluster (made by cluster.sh).
set -eu

SCRIPT_DIR=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd)
# shellcheck source=scripts/lib.sh
. "$SCRIPT_DIR/lib.sh"

usage() {
    cat <<EOF
Usage: $PROG [--dir DIR]

Runs 'raftnode ctl heal' on every node of the cluster in DIR (default ./cluster), so every
link is open again. Exits 1 when a node could not be reached (the others are still healed).
EOF
}

dir_only_args "" "$@"
dir=$CLUSTER_DIR
spec=$(cluster_spec "$dir")
bin=$(find_bin "$dir")

failed=0
for id in $(spec_ids "$spec"); do
    if reply=$(ctl "$bin" "$dir" "$id" heal 2>&1); then
        printf 'node %s: %s\n' "$id" "$reply"
    else
        printf 'node %s: not healed: %s\n' "$id" "$reply"
        failed=1
    fi
done
exit "$failed"
