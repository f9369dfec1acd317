#!/usr/bin/env bash
# A three-node RabbitMQ cluster on one machine for the cluster fault tests, each node in a
# network namespace of its own on a bridge, so that a partition is a link going down, not
# a stopped process. Nodes are rabbit@10.231.0.11 … .13 (long names on the namespaces'
# addresses), AMQP on 5672 in each namespace, quorum queues, partition handling
# `pause_minority` (docs/operations.md, "RabbitMQ and Redis"). Each node also has a side
# link of its own to this host (10.232.N.2, a veth pair outside the bridge, carrying AMQP
# only): a client that connects through side links can be cut off from one node while
# the cluster and every other client still reach it. Beside it, on loopback, a
# Redis master (7301) and replica (7302) watched by three sentinels (7311-7313, service
# hookline-cluster), AOF everysec and noeviction as production wants. Needs root.
#
#   scripts/cluster.sh up                 namespaces, bridge, three nodes, clustered
#   scripts/cluster.sh down               stop every node, remove namespaces and bridge
#   scripts/cluster.sh env                the AMQP URLs listing the three nodes (over the
#                                         bridge, and over the side links), the Redis URL
#   scripts/cluster.sh redis-kill-master  SIGKILL the Redis master (a sentinel promotes)
#   scripts/cluster.sh redis-master       the port of the master the sentinels name
#   scripts/cluster.sh kill N | start N   SIGKILL node N / start it again (it rejoins)
#   scripts/cluster.sh cut N | heal N     take node N's link down / up again
#   scripts/cluster.sh side-cut N | side-heal N
#                                         take node N's side link down / up again
#   scripts/cluster.sh side-nodes         the node of each client connection over a side link
#   scripts/cluster.sh leader PREFIX      the node (1-3) leading most of PREFIX.deliveries.*
#   scripts/cluster.sh disk-alarm on|off  raise / clear a disk alarm on every running node
#   scripts/cluster.sh ctl N ARGS…        rabbitmqctl against node N
set -euo pipefail
cd "$(dirname "$0")/.."

STATE=${HOOKLINE_CLUSTER_DIR:-$PWD/target/cluster}
NET=10.231.0
BRIDGE=hlk0
RMQ_BIN=/usr/lib/rabbitmq/bin
NODES=(1 2 3)

log() { echo "cluster: $*" >&2; }
die() {
  log "$*"
  exit 1
}
ns() { echo "hlk-n$1"; }
ip_of() { echo "$NET.1$1"; }
# Node N's side link: this host is 10.232.N.1, the node 10.232.N.2.
SIDE=10.232
side_ip_of() { echo "$SIDE.$1.2"; }
node() { echo "rabbit@$(ip_of "$1")"; }

node_env() {
  local i=$1 ip
  ip=$(ip_of "$i")
  ENV=(PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME="$STATE/home" LC_ALL=C.UTF-8
    RABBITMQ_USE_LONGNAME=true RABBITMQ_NODENAME="$(node "$i")"
    RABBITMQ_NODE_PORT=5672 RABBITMQ_DIST_PORT=25672
    ERL_EPMD_PORT=4369 ERL_EPMD_ADDRESS="$ip,127.0.0.1"
    RABBITMQ_MNESIA_BASE="$STATE/n$i/mnesia" RABBITMQ_LOG_BASE="$STATE/n$i/log"
    RABBITMQ_LOGS="$STATE/n$i/log/rabbit.log" RABBITMQ_PID_FILE="$STATE/n$i/rabbit.pid"
    RABBITMQ_ENABLED_PLUGINS_FILE="$STATE/plugins" RABBITMQ_CONFIG_FILE="$STATE/rabbitmq.conf"
    RABBITMQ_CONF_ENV_FILE=/dev/null
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {${ip//./,}}"
    RABBITMQ_CTL_ERL_ARGS="-kernel inet_dist_use_interface {${ip//./,}}")
}
in_ns() {
  local i=$1
  shift
  node_env "$i"
  ip netns exec "$(ns "$i")" env -i "${ENV[@]}" "$@"
}
ctl() {
  local i=$1
  shift
  in_ns "$i" "$RMQ_BIN/rabbitmqctl" -q -n "$(node "$i")" "$@"
}

net_up() {
  ip link add "$BRIDGE" type bridge
  ip addr add "$NET.1/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  for i in "${NODES[@]}"; do
    ip netns add "$(ns "$i")"
    ip link add "hlk-n$i" type veth peer name "hlk-n${i}p" netns "$(ns "$i")"
    ip link set "hlk-n$i" master "$BRIDGE" up
    ip -n "$(ns "$i")" addr add "$(ip_of "$i")/24" dev "hlk-n${i}p"
    ip -n "$(ns "$i")" link set "hlk-n${i}p" up
    ip -n "$(ns "$i")" link set lo up
    # AMQP listens on every address of the namespace, so on the side link too; the
    # nodes talk to each other only over the bridge (inet_dist_use_interface).
    ip link add "hlk-s$i" type veth peer name "hlk-s${i}p" netns "$(ns "$i")"
    ip addr add "$SIDE.$i.1/30" dev "hlk-s$i"
    ip link set "hlk-s$i" up
    ip -n "$(ns "$i")" addr add "$(side_ip_of "$i")/30" dev "hlk-s${i}p"
    ip -n "$(ns "$i")" link set "hlk-s${i}p" up
  done
}

net_down() {
  for i in "${NODES[@]}"; do
    ip netns del "$(ns "$i")" 2>/dev/null || true
    ip link del "hlk-n$i" 2>/dev/null || true
    ip link del "hlk-s$i" 2>/dev/null || true
  done
  ip link del "$BRIDGE" 2>/dev/null || true
}

REDIS_PORTS=(7301 7302)
SENTINEL_PORTS=(7311 7312 7313)

redis_up() {
  local port dir
  for port in "${REDIS_PORTS[@]}"; do
    dir="$STATE/redis-$port"
    mkdir -p "$dir"
    local extra=()
    [ "$port" = 7302 ] && extra=(--replicaof 127.0.0.1 7301)
    redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --appendonly yes \
      --appendfsync everysec --maxmemory-policy noeviction --save "" \
      --daemonize yes --pidfile "$dir/pid" --logfile "$dir/log" "${extra[@]}"
  done
  for port in "${SENTINEL_PORTS[@]}"; do
    dir="$STATE/sentinel-$port"
    mkdir -p "$dir"
    cat >"$dir/sentinel.conf" <<CONF
bind 127.0.0.1
port $port
dir $dir
sentinel monitor hookline-cluster 127.0.0.1 7301 2
sentinel down-after-milliseconds hookline-cluster 2000
sentinel failover-timeout hookline-cluster 10000
CONF
    redis-server "$dir/sentinel.conf" --sentinel --daemonize yes --pidfile "$dir/pid" --logfile "$dir/log"
  done
  local end=$((SECONDS + 20))
  until [ "$(redis-cli -p 7302 info replication 2>/dev/null | tr -d '\r' | grep -c '^master_link_status:up')" = 1 ]; do
    [ "$SECONDS" -ge "$end" ] && die "the Redis replica did not sync within 20 s"
    sleep 0.2
  done
}

redis_down() {
  local pidfile
  for pidfile in "$STATE"/redis-*/pid "$STATE"/sentinel-*/pid; do
    if [ -f "$pidfile" ]; then kill -9 "$(cat "$pidfile")" 2>/dev/null || true; fi
  done
}

redis_master() {
  redis-cli -p "${SENTINEL_PORTS[0]}" sentinel get-master-addr-by-name hookline-cluster | tail -1 | tr -d '\r'
}

redis_kill_master() {
  local port
  port=$(redis_master)
  kill -9 "$(cat "$STATE/redis-$port/pid")"
  echo "$port"
}

amqp_open() { timeout 1 bash -c "echo > /dev/tcp/$(ip_of "$1")/5672" 2>/dev/null; }

start() {
  local i=$1
  mkdir -p "$STATE/n$i/mnesia" "$STATE/n$i/log"
  in_ns "$i" epmd -daemon
  # The launcher keeps none of the caller's descriptors (a caller reading this script's
  # output would wait for the node to exit).
  (
    exec >>"$STATE/n$i/start.log" 2>&1 </dev/null
    in_ns "$i" setsid "$RMQ_BIN/rabbitmq-server" &
  )
  local end=$((SECONDS + 90))
  until amqp_open "$i"; do
    if [ "$SECONDS" -ge "$end" ]; then
      tail -20 "$STATE/n$i/start.log" >&2
      die "node $i did not accept AMQP within 90 s"
    fi
    sleep 0.5
  done
  ctl "$i" await_startup
}

stop_all() {
  # Every process started in a namespace dies with it: the nodes and their epmd.
  for i in "${NODES[@]}"; do
    if [ -e "/run/netns/$(ns "$i")" ]; then
      ip netns pids "$(ns "$i")" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    fi
  done
}

up() {
  [ "$(id -u)" = 0 ] || die "needs root (network namespaces)"
  [ -x "$RMQ_BIN/rabbitmq-server" ] || scripts/brokers.sh install
  if ip link show "$BRIDGE" >/dev/null 2>&1; then
    log "already up; taking it down first"
    down
  fi
  rm -rf "$STATE"
  mkdir -p "$STATE/home"
  (umask 077 && head -c 20 /dev/urandom | od -An -tx1 | tr -d ' \n' | tr a-f A-F >"$STATE/home/.erlang.cookie")
  chmod 400 "$STATE/home/.erlang.cookie"
  echo '[rabbitmq_consistent_hash_exchange].' >"$STATE/plugins"
  {
    echo "cluster_partition_handling = pause_minority"
    # As the prod overlay: a cut-off node is declared down within 15-20 s, not a minute
    # (docs/operations.md, "Partition handling").
    echo "net_ticktime = ${HOOKLINE_CLUSTER_NET_TICKTIME:-15}"
    # Clients reach the nodes over the bridge, not loopback.
    echo "loopback_users = none"
  } >"$STATE/rabbitmq.conf"
  net_up
  for i in "${NODES[@]}"; do start "$i"; done
  for i in 2 3; do
    ctl "$i" stop_app
    ctl "$i" join_cluster "$(node 1)"
    ctl "$i" start_app
  done
  redis_up
  log "up: $(ctl 1 eval 'length(rabbit_mnesia:cluster_nodes(running)).') nodes running"
}

down() {
  redis_down
  stop_all
  net_down
  log "down"
}

env_url() {
  local urls=() side_urls=()
  for i in "${NODES[@]}"; do
    urls+=("amqp://guest:guest@$(ip_of "$i"):5672/%2f")
    side_urls+=("amqp://guest:guest@$(side_ip_of "$i"):5672/%2f")
  done
  (
    IFS=,
    echo "HOOKLINE_TEST_CLUSTER_AMQP_URL=${urls[*]}"
    echo "HOOKLINE_TEST_CLUSTER_SIDE_AMQP_URL=${side_urls[*]}"
  )
  local sentinels=("${SENTINEL_PORTS[@]/#/127.0.0.1:}")
  (
    IFS=,
    echo "HOOKLINE_TEST_CLUSTER_REDIS_URL=redis+sentinel://${sentinels[*]}/hookline-cluster"
  )
}

# rabbitmqctl ARGS… against the first node that answers (a cluster-wide listing).
ctl_any() {
  local i
  for i in "${NODES[@]}"; do
    if amqp_open "$i"; then
      ctl "$i" "$@" 2>/dev/null
      return 0
    fi
  done
  die "no node answers"
}

leader() {
  ctl_any list_queues name leader |
    awk -v p="$1.deliveries." 'index($1, p) == 1 { print $2 }' |
    sort | uniq -c | sort -rn | head -1 | awk '{ print $2 }' |
    sed -E "s/^rabbit@$NET\.1//"
}

# A side-link client's peer address is 10.232.N.1: N is the node it is connected to.
side_nodes() {
  ctl_any list_connections peer_host | awk -F. -v side="$SIDE" '$1 "." $2 == side { print $3 }'
}

disk_alarm() {
  local limit=$1 i
  for i in "${NODES[@]}"; do
    if amqp_open "$i"; then ctl "$i" set_disk_free_limit "$limit" || true; fi
  done
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  env) env_url ;;
  kill) kill -9 "$(cat "$STATE/n$2/rabbit.pid")" ;;
  start) start "$2" ;;
  cut) ip link set "hlk-n$2" down ;;
  heal) ip link set "hlk-n$2" up ;;
  side-cut) ip link set "hlk-s$2" down ;;
  side-heal) ip link set "hlk-s$2" up ;;
  side-nodes) side_nodes ;;
  leader) leader "$2" ;;
  redis-master) redis_master ;;
  redis-kill-master) redis_kill_master ;;
  # Above the free space: every publisher is blocked. The limit resets to the default.
  disk-alarm) if [ "$2" = on ]; then disk_alarm 100000GB; else disk_alarm 50MB; fi ;;
  ctl)
    shift
    n=$1
    shift
    ctl "$n" "$@"
    ;;
  *)
    sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
