#!/usr/bin/env bash
# `make bench`: release build, brokers of the `bench` instance, then the benchmark.
# Extra arguments go to hookline-bench (e.g. BENCH_ARGS="--events 20000").
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --quiet --bin hookline-ingest --bin hookline-deliverer --bin hookline-bench
# Every run on an empty broker: queues left by earlier runs cost RabbitMQ CPU.
scripts/brokers.sh wipe bench
scripts/brokers.sh up bench
trap 'scripts/brokers.sh down bench' EXIT
# shellcheck disable=SC1091
source target/brokers/bench/env
# shellcheck disable=SC2086
target/release/hookline-bench ${BENCH_ARGS:-}
