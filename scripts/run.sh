#!/usr/bin/env bash
# `make run`: RabbitMQ and Redis (instance `run`), then ingest, deliverer and the example
# receiver; registers a demo endpoint, sends an event and shows it arriving, then keeps
# everything running until ctrl-c (or exits after the demo when RUN_ONCE=1 / CI=true).
set -euo pipefail
cd "$(dirname "$0")/.."

TOKEN="${HOOKLINE__API__TOKEN:-dev-token}"
DEMO_SECRET="whsec_aG9va2xpbmUtbWFrZS1ydW4tZGVtby1zZWNyZXQtMzJi"
RECEIVER="127.0.0.1:9000"
API="http://127.0.0.1:8080"
LOGS=target/run
mkdir -p "$LOGS"

scripts/brokers.sh up run
# shellcheck disable=SC1091
source target/brokers/run/env

echo "==> building (release)"
cargo build --release --quiet --bin hookline-ingest --bin hookline-deliverer --bin hookline-example-receiver

export HOOKLINE__API__TOKEN="$TOKEN"
# The demo receiver lives on loopback, which the SSRF guard refuses by default.
export HOOKLINE__DELIVERY__ALLOW_PRIVATE_NETWORKS=true

pids=()
cleanup() {
  trap - EXIT INT TERM
  echo
  echo "==> stopping ingest, deliverer and receiver"
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  scripts/brokers.sh down run
}
trap cleanup EXIT INT TERM

target/release/hookline-example-receiver --listen "$RECEIVER" --secret "$DEMO_SECRET" >"$LOGS/receiver.log" 2>&1 &
pids+=($!)
target/release/hookline-ingest >"$LOGS/ingest.log" 2>&1 &
pids+=($!)
target/release/hookline-deliverer >"$LOGS/deliverer.log" 2>&1 &
pids+=($!)

wait_for() { # url, what
  for _ in $(seq 1 150); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.2
  done
  echo "error: $2 did not become ready; see $LOGS/" >&2
  exit 1
}
wait_for http://127.0.0.1:9090/readyz "ingest"
wait_for http://127.0.0.1:9091/readyz "deliverer"

echo "==> loading the event-type catalog"
HOOKLINE__API__TOKEN="$TOKEN" HOOKLINE_API="$API" scripts/load-catalog.sh >/dev/null

auth=(-H "authorization: Bearer $TOKEN" -H "content-type: application/json")
if ! curl -fsS "${auth[@]}" "$API/v1/tenants/demo/endpoints" | grep -q "\"url\":\"http://$RECEIVER/hooks\""; then
  echo "==> registering the demo endpoint"
  curl -fsS "${auth[@]}" -X POST "$API/v1/tenants/demo/endpoints" \
    -d "{\"url\":\"http://$RECEIVER/hooks\",\"event_types\":[\"profile.*.success\",\"application.#\"],\"secret\":\"$DEMO_SECRET\"}" >/dev/null
fi

echo "==> sending an event"
curl -fsS "${auth[@]}" -X POST "$API/v1/tenants/demo/events" \
  -d '{"type":"profile.parsing.success","data":{"profile":{"key":"demo-profile"},"message":"hello from make run"}}'
echo
for _ in $(seq 1 100); do
  grep -q "verified" "$LOGS/receiver.log" && break
  sleep 0.1
done
echo "==> the example receiver got it:"
grep "verified" "$LOGS/receiver.log" | tail -n 1

cat <<MSG

Hookline is running:
  API      $API        (token: $TOKEN)
  console  $API/console/  (sign in with the token)
  metrics  http://127.0.0.1:9090/metrics (ingest), http://127.0.0.1:9091/metrics (deliverer)
  RabbitMQ management  http://127.0.0.1:15672 (guest/guest)
  logs     $LOGS/{ingest,deliverer,receiver}.log

Send another event:
  curl -H 'authorization: Bearer $TOKEN' -H 'content-type: application/json' \\
    -X POST $API/v1/tenants/demo/events \\
    -d '{"type":"application.status.updated","data":{"application":1},"changes":{"status":{"from":"new","to":"hired"}}}'

Press ctrl-c to stop.
MSG

if [[ "${RUN_ONCE:-}" == 1 || "${CI:-}" == true ]]; then
  exit 0
fi
tail -n 0 -f "$LOGS/receiver.log" &
pids+=($!)
wait "${pids[0]}"
