#!/usr/bin/env bash
# `make test`: every test, against real brokers started here on their own ports and data
# dirs (a `make run` instance can stay up), stopped again at the end — also on failure.
#
#   - deploy lint: kustomize overlays, manifest schemas, alert rules and their tests,
#     dashboard queries (also prepares the Python the metric-name check uses)
#   - unit and end-to-end tests (instance `test`, plus Redis Cluster and Sentinel), one
#     build shared by every binary; among them the console's browser tests (Playwright
#     driving Debian's Chromium, installed by scripts/console-tools.sh)
#   - fault tests with the real binaries as processes: a deliverer SIGKILLed mid-flight,
#     RabbitMQ and Redis restarted, and the chaos scenario at a small size (CHAOS_EVENTS,
#     default 1500; `make chaos` runs 20000) — instance `chaos`, serially; each process's
#     output goes to target/fault-logs/<prefix>/ (a process that does not become ready
#     fails its test with the end of its output)
#   - the cluster proof at a small size (CLUSTER_EVENTS, default 5000; `make
#     cluster-chaos` runs 20000): three RabbitMQ nodes in network namespaces and a Redis
#     Sentinel set (scripts/cluster.sh), nodes killed and cut off (from the others and
#     from one deliverer), Redis failed over
#
# Every stage runs even if an earlier one failed; the exit status says whether all passed.
set -euo pipefail
cd "$(dirname "$0")/.."

failed=()
stage() { # name, command...
  local name=$1
  shift
  echo "==> $name" >&2
  if ! "$@"; then
    echo "==> $name FAILED" >&2
    failed+=("$name")
  fi
}

cleanup() {
  scripts/cluster.sh down || true
  scripts/redis-topologies.sh down || true
  scripts/brokers.sh down chaos || true
  scripts/brokers.sh down test || true
  scripts/brokers.sh down chaos || true
}
trap cleanup EXIT

# The machines ship cargo-nextest; install it where it is missing.
if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install cargo-nextest --locked
fi
nextest() {
  cargo nextest run --no-fail-fast --failure-output final "$@"
}

# The console's browser tests leave their screenshots here (`make screenshots` keeps
# them in docs/console instead).
export HOOKLINE_SCREENSHOTS="${HOOKLINE_SCREENSHOTS:-$PWD/target/console-screenshots}"

with_brokers() { # instance, command...
  local instance=$1
  shift
  (
    # shellcheck disable=SC1090
    source "target/brokers/$instance/env"
    export HOOKLINE_TEST_AMQP_URL="$HOOKLINE__AMQP__URL"
    export HOOKLINE_TEST_REDIS_URL="$HOOKLINE__REDIS__URL"
    export HOOKLINE_TEST_BROKERS_INSTANCE="$instance"
    export HOOKLINE_TEST_AMQPS_URL="${HOOKLINE_BROKERS_AMQPS_URL:-}"
    export HOOKLINE_TEST_REDISS_URL="${HOOKLINE_BROKERS_REDISS_URL:-}"
    export HOOKLINE_TEST_TLS_CA="${HOOKLINE_BROKERS_TLS_CA:-}"
    unset HOOKLINE__AMQP__URL HOOKLINE__REDIS__URL
    "$@"
  )
}

stage "deploy lint" scripts/lint-deploy.sh

# promtool checks the real scrapes in the metrics test.
if ! command -v promtool >/dev/null 2>&1; then
  echo "==> installing promtool (Debian package prometheus)" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

# The console's browser tests: Chromium, Node.js and the pinned playwright-core.
scripts/console-tools.sh

# Test instances start empty every run: queues and keys left by earlier runs would slow
# broker restarts (every quorum queue recovers) and make runs differ from a fresh machine.
scripts/brokers.sh wipe test
scripts/brokers.sh up test
scripts/redis-topologies.sh up
eval "$(scripts/redis-topologies.sh env)"
# One build for every test binary.
cargo build --workspace --bins --tests --quiet

stage "unit and end-to-end tests" with_brokers test nextest --workspace -E 'not binary(fault)'

# Fault tests restart brokers: their own instance, one test at a time.
rm -rf target/fault-logs
scripts/brokers.sh wipe chaos
scripts/brokers.sh up chaos
stage "fault tests" with_brokers chaos nextest -p hookline-tests --test fault --test-threads 1 \
  -E 'not test(=cluster::cluster_chaos_loses_nothing)'

cluster_fault_tests() {
  scripts/cluster.sh up || return 1
  local line
  while IFS= read -r line; do export "${line?}"; done < <(scripts/cluster.sh env)
  with_brokers chaos nextest -p hookline-tests --test fault --test-threads 1 \
    -E 'test(=cluster::cluster_chaos_loses_nothing)'
}
stage "cluster fault tests" cluster_fault_tests
scripts/cluster.sh down
scripts/brokers.sh down chaos

if ((${#failed[@]})); then
  echo "==> failed: ${failed[*]}" >&2
  exit 1
fi
echo "==> all tests passed" >&2
