#!/usr/bin/env bash
# `make chaos`: the chaos scenario at full size (CHAOS_EVENTS, default 20000): mixed HTTP
# and direct AMQP load over several tenants and endpoints while a deliverer is SIGKILLed
# twice, RabbitMQ and Redis restart once each; then every (event, endpoint) pair is
# reconciled and the report printed (lost = 0, duplicate rate, time to drain).
# `make test` runs the same scenario at a small size.
set -euo pipefail
cd "$(dirname "$0")/.."

export CHAOS_EVENTS="${CHAOS_EVENTS:-20000}"
cargo build --quiet --bin hookline-ingest --bin hookline-deliverer
scripts/brokers.sh wipe chaos
scripts/brokers.sh up chaos
trap 'scripts/brokers.sh down chaos' EXIT
# shellcheck disable=SC1091
source target/brokers/chaos/env
export HOOKLINE_TEST_AMQP_URL="$HOOKLINE__AMQP__URL"
export HOOKLINE_TEST_REDIS_URL="$HOOKLINE__REDIS__URL"
export HOOKLINE_TEST_BROKERS_INSTANCE=chaos
unset HOOKLINE__AMQP__URL HOOKLINE__REDIS__URL
cargo nextest run -p hookline-tests --test fault --no-capture -E 'test(=chaos_loses_nothing)'
