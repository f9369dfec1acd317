#!/usr/bin/env bash
# `make test`: every test, against real brokers started here on their own ports and data
# dirs (a `make run` instance can stay up), stopped again at the end — also on failure.
#
#   1. deploy lint: kustomize overlays, manifest schemas, alert rules, dashboard queries
#      (also installs promtool, which the metrics test uses)
#   2. unit and end-to-end tests (instance `test`), one build shared by every binary
#   3. fault tests, serially (instance `chaos`: they restart the brokers)
#   4. a small chaos run: kills and restarts under load, then reconciles (lost = 0)
#   5. console browser tests in headless Chromium
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

with_brokers() { # instance, command...
  local instance=$1
  shift
  (
    # shellcheck disable=SC1090
    source "target/brokers/$instance/env"
    export HOOKLINE_TEST_AMQP_URL="$HOOKLINE__AMQP__URL"
    export HOOKLINE_TEST_REDIS_URL="$HOOKLINE__REDIS__URL"
    export HOOKLINE_TEST_BROKERS_INSTANCE="$instance"
    unset HOOKLINE__AMQP__URL HOOKLINE__REDIS__URL
    "$@"
  )
}

stage "deploy lint" scripts/lint-deploy.sh

scripts/brokers.sh up test
# One build for every test binary and the binaries the fault tests and console run.
cargo build --workspace --bins --tests --quiet

stage "unit and end-to-end tests" with_brokers test \
  nextest --workspace -E 'not binary(fault)'

scripts/brokers.sh up chaos
stage "fault tests" with_brokers chaos \
  nextest -p hookline-tests --test fault --test-threads 1
scripts/brokers.sh down chaos

stage "chaos (small)" env CHAOS_EVENTS="${CHAOS_EVENTS:-3000}" scripts/chaos.sh

stage "console browser tests" scripts/console-tests.sh

if ((${#failed[@]})); then
  echo "==> failed: ${failed[*]}" >&2
  exit 1
fi
echo "==> all tests passed" >&2
