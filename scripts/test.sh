#!/usr/bin/env bash
# `make test`: brokers of the `test` instance (own ports and data dirs, so a `make run`
# instance can stay up), then every test, then the brokers stop — also when tests fail.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/brokers.sh up test
trap 'scripts/brokers.sh down test' EXIT
# shellcheck disable=SC1091
source target/brokers/test/env
export HOOKLINE_TEST_AMQP_URL="$HOOKLINE__AMQP__URL"
export HOOKLINE_TEST_REDIS_URL="$HOOKLINE__REDIS__URL"
export HOOKLINE_TEST_BROKERS_INSTANCE=test
unset HOOKLINE__AMQP__URL HOOKLINE__REDIS__URL

# One build serves every test binary.
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast --failure-output final
else
  cargo test --workspace --no-fail-fast
fi
