#!/usr/bin/env bash
# `make screenshots`: runs the console's browser tests alone, on the `test` brokers
# instance, and keeps the pictures they take in docs/console for the README.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/console-tools.sh
scripts/brokers.sh wipe test
scripts/brokers.sh up test
trap 'scripts/brokers.sh down test' EXIT
# shellcheck disable=SC1091
source target/brokers/test/env
export HOOKLINE_TEST_AMQP_URL="$HOOKLINE__AMQP__URL" HOOKLINE_TEST_REDIS_URL="$HOOKLINE__REDIS__URL"
export HOOKLINE_TEST_BROKERS_INSTANCE=test HOOKLINE_SCREENSHOTS="$PWD/docs/console"
unset HOOKLINE__AMQP__URL HOOKLINE__REDIS__URL
cargo nextest run -p hookline-tests --test it -E 'test(console_in_a_real_browser)'
echo "screenshots: $(ls docs/console)" >&2
