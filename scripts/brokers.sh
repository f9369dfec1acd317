#!/usr/bin/env bash
# Local RabbitMQ (Debian 3.10) and Redis (7.0) servers on loopback, one set per instance
# (run | test | bench | chaos), each with its own ports and scratch directory, without
# systemd. Used by `make run`, `make test`, `make bench` and the chaos tests.
#
#   scripts/brokers.sh install
#   scripts/brokers.sh up|down|wipe|status|env <instance>
#   scripts/brokers.sh start|stop|restart|kill <instance> rabbitmq|redis
#   scripts/brokers.sh ctl <instance> <rabbitmqctl args...>   (rabbitmqctl with the right env)
#
# State: ${HOOKLINE_BROKERS_DIR:-<repo>/target/brokers}/<instance>/ ; `up` writes
# <state>/env with the HOOKLINE__AMQP__URL / HOOKLINE__REDIS__URL exports.
#
# Port overrides (defaults per instance in the table below):
#   HOOKLINE_BROKERS_AMQP_PORT  HOOKLINE_BROKERS_DIST_PORT  HOOKLINE_BROKERS_EPMD_PORT
#   HOOKLINE_BROKERS_MGMT_PORT  HOOKLINE_BROKERS_PROMETHEUS_PORT  HOOKLINE_BROKERS_REDIS_PORT
# Other knobs: HOOKLINE_BROKERS_TIMEOUT (start timeout, s, default 120),
#   HOOKLINE_BROKERS_STOP_TIMEOUT (graceful stop timeout, s, default 60),
#   HOOKLINE_BROKERS_MANAGEMENT=1|0 (management + prometheus plugins; default 1 for `run` only),
#   HOOKLINE_BROKERS_TLS=1|0 (default 1 for `test` and `chaos`): TLS listeners beside the plain
#   ones, AMQPS on the AMQP port + 20 and Redis TLS on the Redis port + 20, with a CA and
#   a server certificate (localhost, 127.0.0.1) generated under <state>/tls; `env` then
#   also exports HOOKLINE_BROKERS_AMQPS_URL, HOOKLINE_BROKERS_REDISS_URL and
#   HOOKLINE_BROKERS_TLS_CA (the CA file a client must trust).
#
# Only processes started by this script (recorded in its pidfiles) are ever signalled.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$SCRIPT_DIR")
RMQ_BIN=/usr/lib/rabbitmq/bin
START_TIMEOUT=${HOOKLINE_BROKERS_TIMEOUT:-120}
STOP_TIMEOUT=${HOOKLINE_BROKERS_STOP_TIMEOUT:-60}
INSTANCE=""

usage() {
  cat >&2 <<'EOF'
usage: scripts/brokers.sh <command> [instance] [service]
  install                      install rabbitmq-server and redis-server (apt) if missing
  up <instance>                start RabbitMQ + Redis (reuse if running), write <state>/env
  down <instance>              stop both (graceful, SIGKILL fallback) and their epmd
  wipe <instance>              down, then delete the instance's queues and keys
  start|stop|restart <instance> rabbitmq|redis   one service, data kept
  kill <instance> rabbitmq|redis                 SIGKILL the server process (fault tests)
  status <instance>            running/stopped for each service
  env <instance>               print the env exports (exit 1 if not up)
  ctl <instance> <args...>     run rabbitmqctl against the instance
instances: run test bench chaos
EOF
  exit 2
}

log() { printf 'brokers[%s]: %s\n' "${INSTANCE:-*}" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------- install

as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    if [ -t 0 ]; then sudo "$@"; else sudo -n "$@"; fi
  else
    die "need root (or sudo) to run: $*"
  fi
}

binaries_present() {
  [ -x "$RMQ_BIN/rabbitmq-server" ] && [ -x "$RMQ_BIN/rabbitmqctl" ] &&
    command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1 &&
    command -v epmd >/dev/null 2>&1
}

# Waits (bounded) while another apt/dpkg process runs, e.g. a background install.
wait_for_package_manager() {
  local deadline=$((SECONDS + 900)) said=0 busy comm f
  while :; do
    busy=""
    for f in /proc/[0-9]*/comm; do
      comm=$(cat "$f" 2>/dev/null) || continue
      case $comm in apt | apt-get | dpkg | aptitude | unattended-upgr) busy=$comm; break ;; esac
    done
    [ -z "$busy" ] && return 0
    [ "$said" -eq 0 ] && { log "waiting for another package manager process ($busy) to finish"; said=1; }
    [ "$SECONDS" -ge "$deadline" ] && die "another package manager process ($busy) is still running after 900 s"
    sleep 1
  done
}

cmd_install() {
  if binaries_present; then
    log "rabbitmq-server and redis-server already installed"
    return 0
  fi
  wait_for_package_manager
  if binaries_present; then
    log "rabbitmq-server and redis-server already installed"
    return 0
  fi
  command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install rabbitmq-server and redis-server manually"
  # Keep the packages' init scripts from starting system-wide brokers on the default ports
  # (they would collide with the `run` instance): temporary policy-rc.d if there is none.
  local policy=/usr/sbin/policy-rc.d created_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# temporary, scripts/brokers.sh install\nexit 101\n' | as_root tee "$policy" >/dev/null
    as_root chmod 755 "$policy"
    created_policy=1
  fi
  local rc=0
  log "installing rabbitmq-server and redis-server (apt-get)"
  {
    as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update -q &&
      as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q \
        rabbitmq-server redis-server </dev/null
  } || rc=$?
  if [ "$created_policy" -eq 1 ]; then as_root rm -f "$policy"; fi
  [ "$rc" -eq 0 ] || die "apt-get failed (exit $rc)"
  binaries_present || die "packages installed but binaries still missing ($RMQ_BIN/rabbitmq-server, redis-server, redis-cli, epmd)"
  log "installed"
}

ensure_installed() { binaries_present || cmd_install; }

# ---------------------------------------------------------------- instance layout

is_port() { [[ $1 =~ ^[0-9]+$ ]] && [ "$1" -ge 1 ] && [ "$1" -le 65535 ]; }

setup_instance() {
  INSTANCE=$1
  local idx
  case $INSTANCE in
    run) idx=0 ;; test) idx=1 ;; bench) idx=2 ;; chaos) idx=3 ;;
    *) INSTANCE=""; die "unknown instance '$1' (expected run, test, bench or chaos)" ;;
  esac
  local base=${HOOKLINE_BROKERS_DIR:-$REPO/target/brokers}
  case $base in /*) ;; *) base=$PWD/$base ;; esac
  STATE=$base/$INSTANCE
  RMQ_DIR=$STATE/rabbitmq
  RMQ_HOME=$RMQ_DIR/home
  RMQ_MNESIA=$RMQ_DIR/mnesia
  RMQ_LOGDIR=$RMQ_DIR/log
  RMQ_LOGFILE=$RMQ_LOGDIR/rabbit.log
  RMQ_STARTLOG=$RMQ_LOGDIR/startup.log
  RMQ_CONF=$RMQ_DIR/rabbitmq.conf
  RMQ_PLUGINS=$RMQ_DIR/enabled_plugins
  REDIS_DIR=$STATE/redis
  REDIS_DATA=$REDIS_DIR/data
  REDIS_LOG=$REDIS_DIR/redis.log
  PIDS=$STATE/pids
  RMQ_PIDFILE=$PIDS/rabbitmq.pid          # beam.smp, written by RabbitMQ itself
  RMQ_LAUNCHER_PIDFILE=$PIDS/rabbitmq-launcher.pid   # the rabbitmq-server sh wrapper
  REDIS_PIDFILE=$PIDS/redis.pid           # written by redis-server itself
  EPMD_MARKER=$PIDS/epmd.started-by-us
  PORTS_FILE=$STATE/ports
  ENV_FILE=$STATE/env
  NODENAME=hookline-$INSTANCE@localhost

  # Requested ports: env override, else the instance's default.
  REQ_AMQP_PORT=${HOOKLINE_BROKERS_AMQP_PORT:-$((5672 + idx))}
  REQ_DIST_PORT=${HOOKLINE_BROKERS_DIST_PORT:-$((25672 + idx))}
  REQ_EPMD_PORT=${HOOKLINE_BROKERS_EPMD_PORT:-$((4369 + idx))}
  REQ_MGMT_PORT=${HOOKLINE_BROKERS_MGMT_PORT:-$((15672 + idx))}
  REQ_PROM_PORT=${HOOKLINE_BROKERS_PROMETHEUS_PORT:-$((15692 + idx))}
  REQ_REDIS_PORT=${HOOKLINE_BROKERS_REDIS_PORT:-$((6379 + idx))}
  if [ "$INSTANCE" = run ]; then REQ_MANAGEMENT=${HOOKLINE_BROKERS_MANAGEMENT:-1}; else REQ_MANAGEMENT=${HOOKLINE_BROKERS_MANAGEMENT:-0}; fi
  local p
  for p in "$REQ_AMQP_PORT" "$REQ_DIST_PORT" "$REQ_EPMD_PORT" "$REQ_MGMT_PORT" "$REQ_PROM_PORT" "$REQ_REDIS_PORT"; do
    is_port "$p" || die "invalid port '$p'"
  done
  if [ "$REQ_AMQP_PORT" -ge 35672 ] && [ "$REQ_AMQP_PORT" -le 35682 ]; then
    die "AMQP port $REQ_AMQP_PORT is in 35672-35682, which rabbitmqctl's own Erlang nodes use"
  fi

  AMQP_PORT=$REQ_AMQP_PORT DIST_PORT=$REQ_DIST_PORT EPMD_PORT=$REQ_EPMD_PORT
  MGMT_PORT=$REQ_MGMT_PORT PROM_PORT=$REQ_PROM_PORT REDIS_PORT=$REQ_REDIS_PORT
  MANAGEMENT=$REQ_MANAGEMENT
  # While anything of this instance is still running, its recorded ports win.
  if [ -f "$PORTS_FILE" ] && { [ -n "$(rabbit_pid)" ] || [ -n "$(rabbit_launcher_pid)" ] ||
    [ -n "$(redis_pid)" ] || [ -f "$EPMD_MARKER" ]; }; then
    local key val
    while IFS='=' read -r key val; do
      is_port "$val" || [ "$key" = MANAGEMENT ] || continue
      case $key in
        AMQP_PORT) AMQP_PORT=$val ;; DIST_PORT) DIST_PORT=$val ;; EPMD_PORT) EPMD_PORT=$val ;;
        MGMT_PORT) MGMT_PORT=$val ;; PROM_PORT) PROM_PORT=$val ;; REDIS_PORT) REDIS_PORT=$val ;;
        MANAGEMENT) MANAGEMENT=$val ;;
      esac
    done <"$PORTS_FILE"
    if [ -n "${HOOKLINE_BROKERS_AMQP_PORT:-}${HOOKLINE_BROKERS_DIST_PORT:-}${HOOKLINE_BROKERS_EPMD_PORT:-}${HOOKLINE_BROKERS_REDIS_PORT:-}" ] &&
      [ "$AMQP_PORT/$DIST_PORT/$EPMD_PORT/$REDIS_PORT" != "$REQ_AMQP_PORT/$REQ_DIST_PORT/$REQ_EPMD_PORT/$REQ_REDIS_PORT" ]; then
      log "warning: instance is running with the ports recorded in $PORTS_FILE; requested ports ignored until 'down'"
    fi
  fi
  tls_setup
}

# TLS listeners, derived from the plain ports so the ports file needs no new entries.
tls_setup() {
  local default=0
  case $INSTANCE in test | chaos) default=1 ;; esac
  TLS=${HOOKLINE_BROKERS_TLS:-$default}
  TLS_DIR=$STATE/tls
  AMQPS_PORT=$((AMQP_PORT + 20))
  REDISS_PORT=$((REDIS_PORT + 20))
}

# A throwaway CA and a server certificate for localhost / 127.0.0.1, made once per
# instance (RSA: what every client and both servers accept).
tls_prepare() {
  [ "$TLS" = 1 ] || return 0
  [ -s "$TLS_DIR/server.pem" ] && return 0
  command -v openssl >/dev/null 2>&1 || die "openssl is needed for the TLS listeners (HOOKLINE_BROKERS_TLS=0 turns them off)"
  mkdir -p "$TLS_DIR"
  (
    cd "$TLS_DIR"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=Hookline test CA ($INSTANCE)" \
      -keyout ca.key -out ca.pem 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout server.key -out server.csr 2>/dev/null
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >server.ext
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile server.ext -out server.pem 2>/dev/null
    chmod 644 ca.pem server.pem server.key
  ) || die "could not create the TLS certificates in $TLS_DIR"
}

write_ports_file() {
  mkdir -p "$STATE"
  cat >"$PORTS_FILE" <<EOF
AMQP_PORT=$AMQP_PORT
DIST_PORT=$DIST_PORT
EPMD_PORT=$EPMD_PORT
MGMT_PORT=$MGMT_PORT
PROM_PORT=$PROM_PORT
REDIS_PORT=$REDIS_PORT
MANAGEMENT=$MANAGEMENT
EOF
}

# ---------------------------------------------------------------- process helpers

read_pidfile() { # prints the pid in file $1 if it is a number
  local pid=""
  if [ -f "$1" ]; then read -r pid <"$1" 2>/dev/null || true; fi
  [[ $pid =~ ^[0-9]+$ ]] && printf '%s' "$pid"
  return 0
}

proc_state() { # single-letter state of pid $1, empty if gone
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
  stat=${stat##*) }
  printf '%s' "${stat%% *}"
}

alive() { # pid exists and is not a zombie
  local st
  st=$(proc_state "$1")
  [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}

has_env() { # pid $1 has environment entry $2 (exact)
  # (no `| grep -q`: with pipefail an early-exiting grep can turn a match into a failure)
  local envs
  envs=$(tr '\0' '\n' <"/proc/$1/environ" 2>/dev/null) || return 1
  grep -qxF -- "$2" <<<"$envs"
}

wait_gone() { # pid, seconds
  local end=$((SECONDS + $2))
  while alive "$1"; do
    [ "$SECONDS" -ge "$end" ] && return 1
    sleep 0.2
  done
  return 0
}

sigkill() { # pid, what
  if alive "$1"; then
    log "sending SIGKILL to $2 (pid $1)"
    kill -KILL "$1" 2>/dev/null || true
    wait_gone "$1" 10 || log "warning: $2 (pid $1) still present after SIGKILL"
  fi
}

descendants() { # pids of all descendants of pid $1 (children first-level order, recursive)
  local parent=$1 f stat pid ppid
  for f in /proc/[0-9]*/stat; do
    stat=$(cat "$f" 2>/dev/null) || continue
    pid=${stat%% *}
    stat=${stat##*) }
    ppid=${stat#* }
    ppid=${ppid%% *}
    if [ "$ppid" = "$parent" ]; then
      echo "$pid"
      descendants "$pid"
    fi
  done
}

kill_tree() { # pid, what: SIGKILL a process we launched and everything below it
  local pid
  for pid in $(descendants "$1"); do
    if alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
  done
  sigkill "$1" "$2"
}

resume_if_frozen() { # pid, what: a SIGSTOPped server (chaos tests) cannot stop gracefully
  if [ "$(proc_state "$1")" = T ]; then
    log "$2 (pid $1) is stopped (SIGSTOP); sending SIGCONT first"
    kill -CONT "$1" 2>/dev/null || true
  fi
}

# Start "$@" fully detached: own session, stdin from /dev/null, stdout/stderr appended to
# $1, and no other inherited descriptors, so callers (make, test harnesses) never wait on
# our pipes. Sets SPAWNED_PID (same pid as the exec'd program: setsid does not fork here).
spawn_detached() {
  local logf=$1
  shift
  (
    for fd in "/proc/$BASHPID/fd/"*; do
      fd=${fd##*/}
      case $fd in 0 | 1 | 2 | 255) ;; *) eval "exec ${fd}>&-" 2>/dev/null || true ;; esac
    done
    exec setsid "$@" </dev/null >>"$logf" 2>&1
  ) &
  SPAWNED_PID=$!
  disown "$SPAWNED_PID" 2>/dev/null || true
}

# ---------------------------------------------------------------- ports

have_ss() { command -v ss >/dev/null 2>&1; }

port_listening() { # any TCP listener on port $1?
  if have_ss; then
    [ -n "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]
  else
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
  fi
}

port_owner() { # description of whoever listens on $1
  if have_ss; then
    ss -Hltnp "sport = :$1" 2>/dev/null | awk '{print $4, $6}' | tr '\n' ' '
  else
    echo "unknown process"
  fi
}

require_port_free() { # port, description, override variable
  if port_listening "$1"; then
    die "port $1 ($2) is already in use: $(port_owner "$1")- stop that process or set $3"
  fi
}

# ---------------------------------------------------------------- rabbitmq

RMQ_ENV=()
rabbit_env() {
  RMQ_ENV=(
    HOME="$RMQ_HOME"
    LC_ALL=C.UTF-8
    RABBITMQ_NODENAME="$NODENAME"
    RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
    RABBITMQ_NODE_PORT="$AMQP_PORT"
    RABBITMQ_DIST_PORT="$DIST_PORT"
    ERL_EPMD_PORT="$EPMD_PORT"
    ERL_EPMD_ADDRESS=127.0.0.1
    RABBITMQ_MNESIA_BASE="$RMQ_MNESIA"
    RABBITMQ_LOG_BASE="$RMQ_LOGDIR"
    RABBITMQ_LOGS="$RMQ_LOGFILE"
    RABBITMQ_PID_FILE="$RMQ_PIDFILE"
    RABBITMQ_ENABLED_PLUGINS_FILE="$RMQ_PLUGINS"
    RABBITMQ_CONFIG_FILE="$RMQ_CONF"
    RABBITMQ_CONFIG_FILES="$RMQ_DIR/conf.d"
    RABBITMQ_ADVANCED_CONFIG_FILE="$RMQ_DIR/advanced.config"
    RABBITMQ_CONF_ENV_FILE=/dev/null
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
    RABBITMQ_CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
  )
}

rmqctl() { rabbit_env; env -u RABBITMQ_ALLOW_INPUT "${RMQ_ENV[@]}" "$RMQ_BIN/rabbitmqctl" "$@"; }

rabbit_pid() { # beam.smp of this instance, from RabbitMQ's own pidfile
  local pid
  pid=$(read_pidfile "$RMQ_PIDFILE")
  if [ -n "$pid" ] && alive "$pid" && has_env "$pid" "HOME=$RMQ_HOME" &&
    grep -q beam "/proc/$pid/comm" 2>/dev/null; then
    printf '%s' "$pid"
  fi
  return 0
}

rabbit_launcher_pid() { # the sh wrapper we started (parent of beam)
  local pid
  pid=$(read_pidfile "$RMQ_LAUNCHER_PIDFILE")
  if [ -n "$pid" ] && alive "$pid" && has_env "$pid" "HOME=$RMQ_HOME"; then
    printf '%s' "$pid"
  fi
  return 0
}

rabbit_prepare() {
  tls_prepare
  mkdir -p "$RMQ_HOME" "$RMQ_MNESIA" "$RMQ_LOGDIR" "$RMQ_DIR/conf.d" "$PIDS"
  if [ ! -s "$RMQ_HOME/.erlang.cookie" ]; then
    (umask 077 && head -c 20 /dev/urandom | od -An -tx1 | tr -d ' \n' | tr 'a-f' 'A-F' >"$RMQ_HOME/.erlang.cookie")
  fi
  chmod 400 "$RMQ_HOME/.erlang.cookie"
  {
    echo "# generated by scripts/brokers.sh ($INSTANCE); AMQP listener via RABBITMQ_NODE_PORT"
    if [ "$TLS" = 1 ]; then
      echo "listeners.ssl.default = 127.0.0.1:$AMQPS_PORT"
      echo "ssl_options.cacertfile = $TLS_DIR/ca.pem"
      echo "ssl_options.certfile = $TLS_DIR/server.pem"
      echo "ssl_options.keyfile = $TLS_DIR/server.key"
      echo "ssl_options.verify = verify_none"
      echo "ssl_options.fail_if_no_peer_cert = false"
    fi
    if [ "$MANAGEMENT" = 1 ]; then
      echo "management.tcp.ip = 127.0.0.1"
      echo "management.tcp.port = $MGMT_PORT"
      echo "prometheus.tcp.ip = 127.0.0.1"
      echo "prometheus.tcp.port = $PROM_PORT"
    fi
  } >"$RMQ_CONF"
  # The consistent-hash exchange spreads tenants over the delivery partitions: Hookline
  # cannot declare its topology without it.
  if [ "$MANAGEMENT" = 1 ]; then
    echo '[rabbitmq_consistent_hash_exchange,rabbitmq_management,rabbitmq_prometheus].' >"$RMQ_PLUGINS"
  else
    echo '[rabbitmq_consistent_hash_exchange].' >"$RMQ_PLUGINS"
  fi
}

epmd_is_ours_on_port() { # is the listener on EPMD_PORT an epmd?
  have_ss || return 0
  local line
  line=$(ss -Hltnp "sport = :$EPMD_PORT" 2>/dev/null || true)
  [[ $line == *'"epmd"'* ]]
}

epmd_names() { ERL_EPMD_PORT=$EPMD_PORT timeout 5 epmd -port "$EPMD_PORT" -names 2>/dev/null || true; }

ensure_epmd() {
  local short=${NODENAME%@*}
  if port_listening "$EPMD_PORT"; then
    epmd_is_ours_on_port || die "port $EPMD_PORT (epmd) is held by a non-epmd process: $(port_owner "$EPMD_PORT")- set HOOKLINE_BROKERS_EPMD_PORT"
    if grep -q "^name $short at port" <<<"$(epmd_names)"; then
      die "node $NODENAME is already registered with epmd on port $EPMD_PORT, but not by a process recorded in $PIDS; stop it first"
    fi
    return 0
  fi
  mkdir -p "$PIDS"
  ERL_EPMD_ADDRESS=127.0.0.1 epmd -port "$EPMD_PORT" -daemon </dev/null >/dev/null 2>&1 ||
    die "could not start epmd on port $EPMD_PORT"
  local end=$((SECONDS + 10))
  until port_listening "$EPMD_PORT"; do
    [ "$SECONDS" -ge "$end" ] && die "epmd did not listen on port $EPMD_PORT within 10 s"
    sleep 0.1
  done
  : >"$EPMD_MARKER"
}

rabbit_log_tail() {
  local f
  for f in "$RMQ_LOGFILE" "$RMQ_STARTLOG"; do
    [ -s "$f" ] || continue
    echo "----- tail of $f" >&2
    tail -n 40 "$f" >&2
  done
  echo "-----" >&2
}

# Launches the node if not running; sets RABBIT_LAUNCHED=1 when it did.
RABBIT_LAUNCHED=0
rabbit_launch() {
  RABBIT_LAUNCHED=0
  local pid
  pid=$(rabbit_pid)
  [ -z "$pid" ] && pid=$(rabbit_launcher_pid)
  if [ -n "$pid" ]; then
    log "rabbitmq already running (pid $pid), reusing it"
    return 0
  fi
  rm -f "$RMQ_PIDFILE" "$RMQ_LAUNCHER_PIDFILE"
  require_port_free "$AMQP_PORT" "RabbitMQ AMQP" HOOKLINE_BROKERS_AMQP_PORT
  require_port_free "$DIST_PORT" "RabbitMQ Erlang distribution" HOOKLINE_BROKERS_DIST_PORT
  if [ "$MANAGEMENT" = 1 ]; then
    require_port_free "$MGMT_PORT" "RabbitMQ management" HOOKLINE_BROKERS_MGMT_PORT
    require_port_free "$PROM_PORT" "RabbitMQ prometheus" HOOKLINE_BROKERS_PROMETHEUS_PORT
  fi
  rabbit_prepare
  write_ports_file
  ensure_epmd
  rabbit_env
  printf '\n=== %s starting %s (amqp 127.0.0.1:%s)\n' "$(date '+%F %T')" "$NODENAME" "$AMQP_PORT" >>"$RMQ_STARTLOG"
  log "starting rabbitmq $NODENAME on 127.0.0.1:$AMQP_PORT (logs: $RMQ_LOGDIR)"
  spawn_detached "$RMQ_STARTLOG" env -u RABBITMQ_ALLOW_INPUT "${RMQ_ENV[@]}" "$RMQ_BIN/rabbitmq-server"
  echo "$SPAWNED_PID" >"$RMQ_LAUNCHER_PIDFILE"
  RABBIT_LAUNCHED=1
}

# Waits until AMQP accepts and `rabbitmqctl await_startup` succeeds. Returns 1 on failure
# (after printing the log tail and, if this call launched it, killing the node).
rabbit_wait_ready() {
  local deadline=$((SECONDS + START_TIMEOUT)) launcher beam remaining
  launcher=$(read_pidfile "$RMQ_LAUNCHER_PIDFILE")
  until port_listening "$AMQP_PORT"; do
    beam=$(rabbit_pid)
    if [ -z "$beam" ] && { [ -z "$launcher" ] || ! alive "$launcher"; }; then
      log "error: rabbitmq exited during startup"
      rabbit_log_tail
      rabbit_abort
      return 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "error: rabbitmq AMQP port $AMQP_PORT not accepting after ${START_TIMEOUT}s"
      rabbit_log_tail
      rabbit_abort
      return 1
    fi
    sleep 0.25
  done
  remaining=$((deadline - SECONDS))
  [ "$remaining" -lt 5 ] && remaining=5
  rabbit_env
  if ! timeout "$((remaining + 10))" env -u RABBITMQ_ALLOW_INPUT "${RMQ_ENV[@]}" \
    "$RMQ_BIN/rabbitmqctl" await_startup --timeout "$remaining" >/dev/null 2>"$STATE/.await.err"; then
    log "error: rabbitmqctl await_startup failed for $NODENAME:"
    cat "$STATE/.await.err" >&2 || true
    rabbit_log_tail
    rabbit_abort
    return 1
  fi
  rm -f "$STATE/.await.err"
  beam=$(rabbit_pid)
  [ -n "$beam" ] || { log "error: rabbitmq ready but its pidfile $RMQ_PIDFILE is missing"; return 1; }
  log "rabbitmq ready (pid $beam, amqp 127.0.0.1:$AMQP_PORT$([ "$MANAGEMENT" = 1 ] && echo ", management http://127.0.0.1:$MGMT_PORT/"))"
}

rabbit_abort() { # kill a node this invocation launched and that failed to become ready
  [ "$RABBIT_LAUNCHED" = 1 ] || return 0
  RABBIT_LAUNCHED=0
  local pid
  pid=$(rabbit_pid)
  [ -n "$pid" ] && sigkill "$pid" "rabbitmq beam.smp"
  pid=$(rabbit_launcher_pid)
  # Before RabbitMQ writes its pidfile, beam.smp is only known as the launcher's child.
  [ -n "$pid" ] && kill_tree "$pid" "rabbitmq-server launcher and its beam.smp"
  rm -f "$RMQ_PIDFILE" "$RMQ_LAUNCHER_PIDFILE"
}

rabbit_stop() {
  local beam launcher
  beam=$(rabbit_pid)
  launcher=$(rabbit_launcher_pid)
  if [ -z "$beam" ] && [ -z "$launcher" ]; then
    log "rabbitmq not running"
    rm -f "$RMQ_PIDFILE" "$RMQ_LAUNCHER_PIDFILE"
    return 0
  fi
  if [ -n "$beam" ]; then
    resume_if_frozen "$beam" "rabbitmq"
    log "stopping rabbitmq (pid $beam)"
    rabbit_env
    if ! timeout "$STOP_TIMEOUT" env -u RABBITMQ_ALLOW_INPUT "${RMQ_ENV[@]}" \
      "$RMQ_BIN/rabbitmqctl" stop "$RMQ_PIDFILE" >/dev/null 2>"$STATE/.stop.err"; then
      log "warning: 'rabbitmqctl stop' failed or timed out after ${STOP_TIMEOUT}s: $(tail -n 3 "$STATE/.stop.err" 2>/dev/null | tr '\n' ' ')"
    fi
    rm -f "$STATE/.stop.err"
    wait_gone "$beam" 5 || sigkill "$beam" "rabbitmq beam.smp"
  else
    # Still booting (no pidfile yet): the wrapper turns SIGTERM into a clean VM stop.
    log "stopping rabbitmq launcher (pid $launcher)"
    kill -TERM "$launcher" 2>/dev/null || true
    wait_gone "$launcher" "$STOP_TIMEOUT" || kill_tree "$launcher" "rabbitmq-server launcher and its beam.smp"
    beam=$(rabbit_pid)
    [ -n "$beam" ] && sigkill "$beam" "rabbitmq beam.smp"
  fi
  if [ -n "$launcher" ]; then
    wait_gone "$launcher" 5 || sigkill "$launcher" "rabbitmq-server launcher"
  fi
  rm -f "$RMQ_PIDFILE" "$RMQ_LAUNCHER_PIDFILE"
  log "rabbitmq stopped"
}

rabbit_kill() {
  local beam launcher
  beam=$(rabbit_pid)
  launcher=$(rabbit_launcher_pid)
  if [ -z "$beam" ] && [ -z "$launcher" ]; then
    log "rabbitmq not running"
  elif [ -z "$beam" ]; then
    kill_tree "$launcher" "rabbitmq-server launcher and its beam.smp (node still booting)"
  else
    sigkill "$beam" "rabbitmq beam.smp"
    # The wrapper exits by itself once beam is gone.
    [ -n "$launcher" ] && { wait_gone "$launcher" 5 || sigkill "$launcher" "rabbitmq-server launcher"; }
  fi
  rm -f "$RMQ_PIDFILE" "$RMQ_LAUNCHER_PIDFILE"
}

epmd_stop() {
  [ -f "$EPMD_MARKER" ] || return 0
  if ! port_listening "$EPMD_PORT"; then rm -f "$EPMD_MARKER"; return 0; fi
  if ! epmd_is_ours_on_port; then rm -f "$EPMD_MARKER"; return 0; fi
  if grep -q '^name ' <<<"$(epmd_names)"; then
    log "epmd on port $EPMD_PORT still has registered nodes; leaving it running"
    return 0
  fi
  ERL_EPMD_PORT=$EPMD_PORT timeout 5 epmd -port "$EPMD_PORT" -kill >/dev/null 2>&1 || true
  local end=$((SECONDS + 5))
  while port_listening "$EPMD_PORT" && [ "$SECONDS" -lt "$end" ]; do sleep 0.1; done
  port_listening "$EPMD_PORT" && log "warning: epmd on port $EPMD_PORT did not exit"
  rm -f "$EPMD_MARKER"
  log "epmd (port $EPMD_PORT) stopped"
}

# ---------------------------------------------------------------- redis

redis_pid() { # redis-server of this instance: pidfile, and its cwd is our data dir
  local pid cwd
  pid=$(read_pidfile "$REDIS_PIDFILE")
  if [ -n "$pid" ] && alive "$pid"; then
    cwd=$(readlink "/proc/$pid/cwd" 2>/dev/null || true)
    if [ "$cwd" = "$(readlink -f "$REDIS_DATA" 2>/dev/null || echo "$REDIS_DATA")" ]; then
      printf '%s' "$pid"
    fi
  fi
  return 0
}

redis_ping() { [ "$(timeout 3 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]; }

redis_log_tail() {
  if [ -s "$REDIS_LOG" ]; then
    echo "----- tail of $REDIS_LOG" >&2
    tail -n 30 "$REDIS_LOG" >&2
    echo "-----" >&2
  fi
}

# Starts (or reuses) redis and waits for PING. Returns 1 on failure.
redis_start() {
  local pid launched=0 deadline
  pid=$(redis_pid)
  if [ -n "$pid" ]; then
    log "redis already running (pid $pid), reusing it"
  else
    rm -f "$REDIS_PIDFILE"
    require_port_free "$REDIS_PORT" "Redis" HOOKLINE_BROKERS_REDIS_PORT
    mkdir -p "$REDIS_DATA" "$PIDS"
    write_ports_file
    printf '\n=== %s starting redis on 127.0.0.1:%s\n' "$(date '+%F %T')" "$REDIS_PORT" >>"$REDIS_LOG"
    log "starting redis on 127.0.0.1:$REDIS_PORT (data: $REDIS_DATA)"
    local tls_args=()
    if [ "$TLS" = 1 ]; then
      tls_prepare
      tls_args=(--tls-port "$REDISS_PORT" --tls-cert-file "$TLS_DIR/server.pem"
        --tls-key-file "$TLS_DIR/server.key" --tls-ca-cert-file "$TLS_DIR/ca.pem"
        --tls-auth-clients no)
    fi
    spawn_detached "$REDIS_LOG" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 \
      --dir "$REDIS_DATA" --appendonly yes --appendfsync everysec --save '' \
      --daemonize no --pidfile "$REDIS_PIDFILE" --logfile "$REDIS_LOG" "${tls_args[@]}"
    pid=$SPAWNED_PID
    launched=1
    REDIS_LAUNCHED=1
  fi
  deadline=$((SECONDS + START_TIMEOUT))
  until redis_ping; do
    if ! alive "$pid" && [ -z "$(redis_pid)" ]; then
      log "error: redis exited during startup"
      redis_log_tail
      return 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "error: redis on port $REDIS_PORT not answering PING after ${START_TIMEOUT}s"
      redis_log_tail
      [ "$launched" = 1 ] && sigkill "$pid" "redis-server"
      return 1
    fi
    sleep 0.2
  done
  [ -f "$REDIS_PIDFILE" ] || echo "$pid" >"$REDIS_PIDFILE"
  log "redis ready (pid $(redis_pid), 127.0.0.1:$REDIS_PORT)"
}

redis_stop() {
  local pid
  pid=$(redis_pid)
  if [ -z "$pid" ]; then
    log "redis not running"
    rm -f "$REDIS_PIDFILE"
    return 0
  fi
  resume_if_frozen "$pid" "redis"
  log "stopping redis (pid $pid)"
  # Plain SHUTDOWN: with appendonly the AOF is fsynced before exit.
  timeout 10 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" shutdown >/dev/null 2>&1 || true
  wait_gone "$pid" 20 || sigkill "$pid" "redis-server"
  rm -f "$REDIS_PIDFILE"
  log "redis stopped"
}

redis_kill() {
  local pid
  pid=$(redis_pid)
  if [ -z "$pid" ]; then
    log "redis not running"
  else
    sigkill "$pid" "redis-server"
  fi
  rm -f "$REDIS_PIDFILE"
}

# ---------------------------------------------------------------- commands

write_env_file() {
  mkdir -p "$STATE"
  cat >"$ENV_FILE.tmp" <<EOF
export HOOKLINE__AMQP__URL=amqp://guest:guest@127.0.0.1:$AMQP_PORT/%2f
export HOOKLINE__REDIS__URL=redis://127.0.0.1:$REDIS_PORT/
export HOOKLINE_BROKERS_INSTANCE=$INSTANCE
EOF
  if [ "$TLS" = 1 ]; then
    cat >>"$ENV_FILE.tmp" <<EOF
export HOOKLINE_BROKERS_AMQPS_URL=amqps://guest:guest@localhost:$AMQPS_PORT/%2f
export HOOKLINE_BROKERS_REDISS_URL=rediss://localhost:$REDISS_PORT/
export HOOKLINE_BROKERS_TLS_CA=$TLS_DIR/ca.pem
EOF
  fi
  mv -f "$ENV_FILE.tmp" "$ENV_FILE"
}

UP_DONE=0
REDIS_LAUNCHED=0
up_exit_guard() { # a failed `up` leaves nothing behind that it started itself
  [ "$UP_DONE" = 1 ] && return 0
  if [ "$RABBIT_LAUNCHED" = 1 ]; then rabbit_abort; fi
  if [ "$REDIS_LAUNCHED" = 1 ]; then
    REDIS_LAUNCHED=0
    redis_stop || true
  fi
  if [ -z "$(rabbit_pid)" ] && [ -z "$(rabbit_launcher_pid)" ]; then epmd_stop || true; fi
}

cmd_up() {
  ensure_installed
  local t0=$SECONDS
  # Fail on a busy Redis port before anything is launched.
  if [ -z "$(redis_pid)" ]; then
    require_port_free "$REDIS_PORT" "Redis" HOOKLINE_BROKERS_REDIS_PORT
  fi
  trap up_exit_guard EXIT
  rabbit_launch # boots in the background while redis starts
  if ! redis_start; then
    die "redis failed to start for instance $INSTANCE"
  fi
  if ! rabbit_wait_ready; then
    die "rabbitmq failed to start for instance $INSTANCE"
  fi
  UP_DONE=1
  write_env_file
  log "up in $((SECONDS - t0))s"
  echo "$ENV_FILE"
}

cmd_down() {
  rm -f "$ENV_FILE"
  rabbit_env
  rabbit_stop
  redis_stop
  epmd_stop
}

# Stops the instance and deletes its broker data (queues, keys), keeping certificates
# and logs: test instances start every run from nothing, as on a fresh machine.
cmd_wipe() {
  cmd_down
  rm -rf "$RMQ_MNESIA" "$REDIS_DATA"
  log "data wiped"
}

cmd_start() {
  ensure_installed
  case $1 in
    rabbitmq) rabbit_launch; rabbit_wait_ready || die "rabbitmq failed to start for instance $INSTANCE" ;;
    redis) redis_start || die "redis failed to start for instance $INSTANCE" ;;
  esac
}

cmd_stop() {
  rabbit_env
  case $1 in
    rabbitmq) rabbit_stop ;;
    redis) redis_stop ;;
  esac
}

cmd_kill() {
  case $1 in
    rabbitmq) rabbit_kill ;;
    redis) redis_kill ;;
  esac
}

cmd_status() {
  local pid
  pid=$(rabbit_pid)
  if [ -n "$pid" ]; then
    echo "rabbitmq: running (pid $pid, amqp 127.0.0.1:$AMQP_PORT, node $NODENAME$([ "$MANAGEMENT" = 1 ] && echo ", management 127.0.0.1:$MGMT_PORT"))"
  elif [ -n "$(rabbit_launcher_pid)" ]; then
    echo "rabbitmq: starting (launcher pid $(rabbit_launcher_pid))"
  else
    echo "rabbitmq: stopped"
  fi
  pid=$(redis_pid)
  if [ -n "$pid" ]; then
    echo "redis: running (pid $pid, 127.0.0.1:$REDIS_PORT)"
  else
    echo "redis: stopped"
  fi
}

cmd_env() {
  if [ -f "$ENV_FILE" ] && [ -n "$(rabbit_pid)" ] && [ -n "$(redis_pid)" ]; then
    cat "$ENV_FILE"
  else
    log "instance $INSTANCE is not up (run: scripts/brokers.sh up $INSTANCE)"
    exit 1
  fi
}

take_lock() { # serialise mutating commands per instance (fd closed in spawned servers)
  mkdir -p "$STATE"
  if command -v flock >/dev/null 2>&1; then
    exec 9>"$STATE/.lock"
    flock -w 600 9 || die "another scripts/brokers.sh is busy with instance $INSTANCE (lock $STATE/.lock)"
  fi
}

main() {
  [ $# -ge 1 ] || usage
  local cmd=$1
  shift
  case $cmd in
    install) cmd_install; return ;;
    -h | --help | help) usage ;;
  esac
  [ $# -ge 1 ] || usage
  setup_instance "$1"
  shift
  case $cmd in
    up | down | wipe | status | env)
      [ $# -eq 0 ] || usage
      case $cmd in
        up) take_lock; cmd_up ;;
        down) take_lock; cmd_down ;;
        wipe) take_lock; cmd_wipe ;;
        status) cmd_status ;;
        env) cmd_env ;;
      esac
      ;;
    start | stop | restart | kill)
      [ $# -eq 1 ] || usage
      case $1 in rabbitmq | redis) ;; *) die "unknown service '$1' (expected rabbitmq or redis)" ;; esac
      take_lock
      case $cmd in
        start) cmd_start "$1" ;;
        stop) cmd_stop "$1" ;;
        restart) cmd_stop "$1"; cmd_start "$1" ;;
        kill) cmd_kill "$1" ;;
      esac
      ;;
    ctl)
      [ -x "$RMQ_BIN/rabbitmqctl" ] || die "rabbitmq-server is not installed"
      rmqctl "$@"
      ;;
    *) usage ;;
  esac
}

main "$@"
