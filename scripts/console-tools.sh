#!/usr/bin/env bash
# What the console's browser tests need, installed on first use and reused: Debian's
# Chromium (Playwright drives it; no browser download), Node.js and npm, and the pinned
# playwright-core from tests/console/package-lock.json.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "console-tools: $*" >&2; }

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

lock=tests/console/package-lock.json
stamp=tests/console/node_modules/.installed-from-lock
if [[ ! -f $stamp ]] || ! cmp -s "$lock" "$stamp"; then
  log "installing tests/console dependencies (npm ci)"
  (cd tests/console && npm ci --no-audit --no-fund --loglevel=error)
  cp "$lock" "$stamp"
fi
log "chromium $(chromium --version 2>/dev/null | awk '{print $2}'), node $(node --version), playwright-core $(node -p 'require("./tests/console/node_modules/playwright-core/package.json").version')"
