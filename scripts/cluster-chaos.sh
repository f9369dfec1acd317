#!/usr/bin/env bash
# `make cluster-chaos`: the cluster proof at full size (CLUSTER_EVENTS, default 20000):
# three RabbitMQ nodes in network namespaces and a Redis master, replica and three
# sentinels (scripts/cluster.sh), two ingest and three deliverers, mixed HTTP and direct
# AMQP load over several tenants while the leading node is SIGKILLed, a node is cut off
# for CLUSTER_CUT_SECONDS (30), the node one deliverer uses is cut off from that deliverer
# only (its side link goes down), a deliverer is stopped past its leases, the Redis master
# is SIGKILLed, and a disk alarm holds for CLUSTER_ALARM_SECONDS (20); then every event
# is reconciled and the report printed (lost = 0, duplicates, dead letters by reason,
# the longest 503 window, p99 send→receipt by phase). `make test` runs a short version.
# Needs root (network namespaces); everything it starts is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

export CLUSTER_EVENTS="${CLUSTER_EVENTS:-20000}"
export CLUSTER_CUT_SECONDS="${CLUSTER_CUT_SECONDS:-30}"
export CLUSTER_ALARM_SECONDS="${CLUSTER_ALARM_SECONDS:-20}"
cargo build --quiet --bin hookline-ingest --bin hookline-deliverer
# The chaos instance only provides the defaults the test harness starts from.
scripts/brokers.sh wipe chaos
scripts/brokers.sh up chaos
trap 'scripts/cluster.sh down; scripts/brokers.sh down chaos' EXIT
scripts/cluster.sh up
# shellcheck disable=SC1091
source target/brokers/chaos/env
export HOOKLINE_TEST_AMQP_URL="$HOOKLINE__AMQP__URL"
export HOOKLINE_TEST_REDIS_URL="$HOOKLINE__REDIS__URL"
export HOOKLINE_TEST_BROKERS_INSTANCE=chaos
unset HOOKLINE__AMQP__URL HOOKLINE__REDIS__URL
while IFS= read -r line; do export "${line?}"; done < <(scripts/cluster.sh env)
cargo nextest run -p hookline-tests --test fault --no-capture -E 'test(=cluster::cluster_chaos_loses_nothing)'
