#!/usr/bin/env bash
# `make catalog`: registers every entry of catalog/event-types.json through the API
# (PUT /v1/event-types/{type}), so it works against any running ingest.
#   HOOKLINE_API (default http://127.0.0.1:8080), HOOKLINE__API__TOKEN (default dev-token)
set -euo pipefail
cd "$(dirname "$0")/.."

api="${HOOKLINE_API:-http://127.0.0.1:8080}"
token="${HOOKLINE__API__TOKEN:-dev-token}"
file="${1:-catalog/event-types.json}"

python3 - "$file" <<'PY' | while IFS=$'\t' read -r type body; do
import json, sys
for entry in json.load(open(sys.argv[1])):
    body = {"description": entry.get("description", ""), "example": entry.get("example")}
    print(entry["type"] + "\t" + json.dumps(body))
PY
  status=$(curl -sS -o /dev/null -w '%{http_code}' -X PUT \
    -H "authorization: Bearer $token" -H 'content-type: application/json' \
    --data "$body" "$api/v1/event-types/$type")
  case "$status" in
    200|201) echo "loaded $type" ;;
    *) echo "error: $type answered $status" >&2; exit 1 ;;
  esac
done
