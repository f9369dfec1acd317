#!/usr/bin/env bash
# Redis Cluster and Redis Sentinel on loopback, for the tests that run Hookline against
# them (`make test` calls this). Scratch data under target/brokers/redis-topologies/.
#
#   scripts/redis-topologies.sh up     start both, print nothing but progress (stderr)
#   scripts/redis-topologies.sh down   stop what `up` started (by PID)
#   scripts/redis-topologies.sh env    the URLs, as shell exports
#
# Cluster: three masters on 7101-7103. Sentinel: a master on 7201 watched by one
# sentinel on 7202 (service name hookline-test).
set -euo pipefail
cd "$(dirname "$0")/.."

root="$PWD/target/brokers/redis-topologies"
cluster_ports=(7101 7102 7103)
master_port=7201
sentinel_port=7202

log() { echo "redis-topologies: $*" >&2; }

start_server() { # name, port, extra args...
  local name=$1 port=$2
  shift 2
  local dir="$root/$name"
  mkdir -p "$dir"
  if [[ -f "$dir/pid" ]] && kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
    return
  fi
  redis-server --bind 127.0.0.1 --port "$port" --dir "$dir" --daemonize yes \
    --pidfile "$dir/pid" --logfile "$dir/log" --save "" --appendonly no "$@"
  for _ in $(seq 1 100); do
    redis-cli -p "$port" ping >/dev/null 2>&1 && return
    sleep 0.1
  done
  log "redis on $port did not start; see $dir/log"
  exit 1
}

up() {
  command -v redis-server >/dev/null || scripts/brokers.sh install
  for port in "${cluster_ports[@]}"; do
    start_server "cluster-$port" "$port" --cluster-enabled yes \
      --cluster-config-file "$root/cluster-$port/nodes.conf" --cluster-node-timeout 2000
  done
  if ! redis-cli -p "${cluster_ports[0]}" cluster info 2>/dev/null | grep -q "cluster_state:ok"; then
    log "creating the cluster"
    redis-cli --cluster create "${cluster_ports[@]/#/127.0.0.1:}" --cluster-replicas 0 --cluster-yes >/dev/null
    for _ in $(seq 1 100); do
      redis-cli -p "${cluster_ports[0]}" cluster info | grep -q "cluster_state:ok" && break
      sleep 0.1
    done
  fi
  start_server master "$master_port"
  local sentinel_dir="$root/sentinel"
  mkdir -p "$sentinel_dir"
  if ! redis-cli -p "$sentinel_port" ping >/dev/null 2>&1; then
    cat >"$sentinel_dir/sentinel.conf" <<CONF
bind 127.0.0.1
port $sentinel_port
dir $sentinel_dir
sentinel monitor hookline-test 127.0.0.1 $master_port 1
sentinel down-after-milliseconds hookline-test 2000
CONF
    redis-server "$sentinel_dir/sentinel.conf" --sentinel --daemonize yes \
      --pidfile "$sentinel_dir/pid" --logfile "$sentinel_dir/log"
    for _ in $(seq 1 100); do
      redis-cli -p "$sentinel_port" sentinel get-master-addr-by-name hookline-test 2>/dev/null |
        grep -q "$master_port" && break
      sleep 0.1
    done
  fi
  log "cluster on ${cluster_ports[*]}, sentinel on $sentinel_port (master $master_port)"
}

down() {
  local pidfile pid pids=()
  for pidfile in "$root"/*/pid; do
    [[ -f "$pidfile" ]] || continue
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null && pids+=("$pid")
    rm -f "$pidfile"
  done
  # A server still shutting down writes its log: removing its directory under it fails.
  for pid in "${pids[@]}"; do
    for _ in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
  done
  rm -rf "$root"
  log "stopped"
}

env_exports() {
  local nodes
  nodes=$(printf '127.0.0.1:%s,' "${cluster_ports[@]}")
  echo "export HOOKLINE_TEST_REDIS_CLUSTER_URL=redis+cluster://${nodes%,}"
  echo "export HOOKLINE_TEST_REDIS_SENTINEL_URL=redis+sentinel://127.0.0.1:$sentinel_port/hookline-test"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  env) env_exports ;;
  *)
    echo "usage: $0 up|down|env" >&2
    exit 2
    ;;
esac
