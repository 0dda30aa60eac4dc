#!/bin/sh
# Long-run check (not part of CI): drives a local 3-node cluster with puts in rounds and, after
# each round, prints every node's resident memory and data-directory size, then checks both
# stay under a bound. With snapshots on, neither should grow with the number of writes.
set -eu

SCRIPT_DIR=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd)
# shellcheck source=scripts/lib.sh
. "$SCRIPT_DIR/lib.sh"

usage() {
    cat <<EOF
Usage: $PROG [--rounds N] [--round-seconds S] [--max-rss-mib M] [--max-disk-mib D]

Starts 3 nodes on 127.0.0.1:7401..7403 (default snapshot settings), runs N rounds (default 10)
of S seconds (default 10) of 128 clients writing 100-byte values to 1,000 keys, and after each
round prints resident memory and data-directory size per node. Fails if any node exceeds
M MiB resident (default 128) or D MiB on disk (default 256) after the first round.
EOF
}

rounds=10
round_seconds=10
max_rss=128
max_disk=256
while [ $# -gt 0 ]; do
    case $1 in
        --rounds | --round-seconds | --max-rss-mib | --max-disk-mib)
            [ $# -ge 2 ] || usage_error "$1 needs a value"
            is_uint "$2" || usage_error "$1 takes a whole number, not '$2'"
            case $1 in
                --rounds) rounds=$2 ;;
                --round-seconds) round_seconds=$2 ;;
                --max-rss-mib) max_rss=$2 ;;
                --max-disk-mib) max_disk=$2 ;;
            esac
            shift 2
            ;;
        -h | --help) usage && exit 0 ;;
        *) usage_error "unknown argument '$1'" ;;
    esac
done

root=$(repo_root)
start_temp_cluster longrun 7400
dir=$CLUSTER_DIR

failed=0
round=1
while [ "$round" -le "$rounds" ]; do
    "$root/target/release/examples/bench" --clients 128 --duration "${round_seconds}s" \
        --keys 1000 | sed "s/^/round $round: /"
    for id in 1 2 3; do
        pid=$(cat "$dir/node-$id/pid")
        rss_kib=$(ps -o rss= -p "$pid" | tr -d ' ')
        disk_kib=$(du -sk "$dir/node-$id/data" | cut -f1)
        rss_mib=$((rss_kib / 1024))
        disk_mib=$((disk_kib / 1024))
        note "    node $id: resident ${rss_mib} MiB, data directory ${disk_mib} MiB"
        if [ "$round" -gt 1 ] && { [ "$rss_mib" -gt "$max_rss" ] || [ "$disk_mib" -gt "$max_disk" ]; }; then
            note "    node $id is over the bound (${max_rss} MiB resident, ${max_disk} MiB disk)"
            failed=1
        fi
    done
    round=$((round + 1))
done
[ "$failed" = 0 ] || die "memory or disk grew past the bound"
note "memory and disk stayed within ${max_rss} MiB resident and ${max_disk} MiB on disk"
