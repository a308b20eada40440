#!/usr/bin/env bash
# A private Redis Cluster of three masters (no replicas, no persistence),
# from the same redis-server binary, on 127.0.0.1. Used by the cluster test
# (tests/cli/redis/cluster.rs) and by .ci/run, which runs the race, crash
# and fencing tests against it.
#
#   redis_cluster.sh start DIR PORT1 PORT2 PORT3
#   redis_cluster.sh stop DIR
set -euo pipefail

action=$1
dir=$2
case $action in
stop)
    for pidfile in "$dir"/*/redis.pid; do
        [ -e "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
    done
    exit 0
    ;;
start) shift 2 ;;
*) echo "usage: $0 start DIR PORT1 PORT2 PORT3 | stop DIR" >&2; exit 2 ;;
esac

nodes=()
for port in "$@"; do
    mkdir -p "$dir/$port"
    redis-server --port "$port" --bind 127.0.0.1 --dir "$dir/$port" --daemonize yes \
        --pidfile "$dir/$port/redis.pid" --logfile "$dir/$port/log" \
        --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 5000 \
        --save "" --appendonly no
    nodes+=("127.0.0.1:$port")
done
for port in "$@"; do
    for _ in $(seq 100); do
        [ "$(redis-cli -p "$port" ping 2>/dev/null)" = PONG ] && break
        sleep 0.05
    done
done
redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >/dev/null
for port in "$@"; do
    for _ in $(seq 200); do
        redis-cli -p "$port" cluster info | grep -q '^cluster_state:ok' && break
        sleep 0.05
    done
done
