#!/usr/bin/env python3
"""Checks of deploy/ that no off-the-shelf tool makes; scripts/lint-deploy.sh runs them.

    deploy_checks.py manifests BUILD.yaml... --builtin-out FILE
        Splits `kustomize build` outputs: built-in kinds go to FILE, each distinct
        resource once (for kubernetes-validate); custom resources get a shape check
        (crd_types.py checks KEDA's and the Prometheus Operator's against their types;
        RabbitmqCluster has only this).
        Then checks references inside the build (selectors, ports, ConfigMaps, Secret
        keys, scale targets) and the pod rules Hookline's workloads must keep.
    deploy_checks.py sync-rules [--write]
        The PrometheusRule is the plain rules file wrapped in a custom resource: fails if
        it differs from what the rules file generates (--write regenerates it).
    deploy_checks.py runbooks
        Every alert has severity, summary, description and a runbook_url whose anchor is
        a heading of docs/operations.md, and every runbook heading there has an alert.
    deploy_checks.py dashboard --rules-out FILE
        Structural checks of the Grafana dashboard, and every query written to FILE as a
        recording rule (Grafana variables replaced) for `promtool check rules`.

Needs PyYAML. Exit status 0 when clean, 1 with each problem on stderr.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from check_metric_names import (  # noqa: E402
    DEFAULT_DASHBOARD,
    DEFAULT_KEDA,
    DEFAULT_RULES,
    ROOT,
    dashboard_panels,
    keda_queries,
)

# libyaml's loader where PyYAML has it: ten times faster on the builds.
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

PROMETHEUS_RULE = ROOT / "deploy" / "components" / "monitoring" / "prometheusrule.yaml"
OPERATIONS = ROOT / "docs" / "operations.md"
RECOMMENDED_LABELS = ("name", "instance", "component", "part-of", "version")
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet")


class Problems:
    def __init__(self, context: str) -> None:
        self.context = context
        self.items: list[str] = []

    def add(self, message: str) -> None:
        self.items.append(message)

    def report(self) -> int:
        for item in self.items:
            print(f"FAIL {self.context}: {item}", file=sys.stderr)
        return 1 if self.items else 0


# --- manifests -------------------------------------------------------------------------


def is_builtin(api_version: str) -> bool:
    """Core and *.k8s.io groups have schemas in kubernetes-validate; others are CRDs."""
    group = api_version.rpartition("/")[0]
    return group == "" or "." not in group or group.endswith(".k8s.io")


def ident(doc: dict) -> str:
    return f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"


def selector_matches(selector: dict | None, labels: dict) -> bool:
    """Kubernetes label-selector semantics (matchLabels and matchExpressions)."""
    if not selector:
        return True
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator = expression["key"], expression["operator"]
        values = expression.get("values") or []
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and labels.get(key) in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def duration_seconds(text: str) -> float:
    """humantime-style durations as the binaries accept them: "25s", "1m 30s", "500ms"."""
    units = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
    total = 0.0
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]+)", text)
    if not parts or "".join(n + u for n, u in parts) != re.sub(r"\s", "", text):
        raise ValueError(f"not a duration: {text!r}")
    for number, unit in parts:
        if unit not in units:
            raise ValueError(f"unknown unit in {text!r}")
        total += float(number) * units[unit]
    return total


class Build:
    def __init__(self, docs: list[dict]) -> None:
        self.docs = docs

    def of_kind(self, *kinds: str) -> list[dict]:
        return [d for d in self.docs if d.get("kind") in kinds]

    def named(self, kind: str, name: str) -> dict | None:
        for doc in self.of_kind(kind):
            if doc["metadata"]["name"] == name:
                return doc
        return None

    def pod_templates(self) -> list[tuple[dict, dict]]:
        return [(w, w["spec"]["template"]) for w in self.of_kind(*WORKLOAD_KINDS)]


def check_shape(doc: dict, problems: Problems) -> None:
    for field in ("apiVersion", "kind"):
        if not isinstance(doc.get(field), str) or not doc.get(field):
            problems.add(f"{ident(doc)}: {field} missing")
    if not ((doc.get("metadata") or {}).get("name")):
        problems.add(f"{ident(doc)}: metadata.name missing")
    if not isinstance(doc.get("spec"), dict) or not doc["spec"]:
        problems.add(f"{ident(doc)}: spec missing or empty")


def check_references(build: Build, problems: Problems) -> None:
    configmaps = {d["metadata"]["name"]: d for d in build.of_kind("ConfigMap")}
    secrets = {d["metadata"]["name"]: d for d in build.of_kind("Secret")}

    def pods_matching(selector: dict | None) -> list[tuple[dict, dict]]:
        return [
            (w, t)
            for w, t in build.pod_templates()
            if selector_matches(selector, (t.get("metadata") or {}).get("labels") or {})
        ]

    def port_names(template: dict) -> set[str]:
        return {
            p.get("name")
            for c in template["spec"].get("containers") or []
            for p in c.get("ports") or []
        }

    for workload, template in build.pod_templates():
        name = ident(workload)
        if not selector_matches(workload["spec"].get("selector"), template["metadata"].get("labels") or {}):
            problems.add(f"{name}: selector does not match its own pod template")
        spec = template["spec"]
        for container in spec.get("containers") or []:
            for source in container.get("envFrom") or []:
                ref = (source.get("configMapRef") or {}).get("name")
                if ref and ref not in configmaps and not (source["configMapRef"].get("optional")):
                    problems.add(f"{name}: envFrom ConfigMap {ref} is not in the build")
            for env in container.get("env") or []:
                ref = ((env.get("valueFrom") or {}).get("secretKeyRef")) or None
                if ref and ref["name"] in secrets and not ref.get("optional"):
                    secret = secrets[ref["name"]]
                    keys = set(secret.get("data") or {}) | set(secret.get("stringData") or {})
                    if ref["key"] not in keys:
                        problems.add(f"{name}: env {env['name']} wants key {ref['key']} of Secret {ref['name']}, which has {sorted(keys)}")
        for volume in spec.get("volumes") or []:
            ref = (volume.get("configMap") or {}).get("name")
            if ref and ref not in configmaps:
                problems.add(f"{name}: volume ConfigMap {ref} is not in the build")

    for service in build.of_kind("Service"):
        selector = service["spec"].get("selector")
        if not selector:
            continue
        matched = pods_matching({"matchLabels": selector})
        if not matched:
            problems.add(f"{ident(service)}: selector {selector} matches no pod template")
        for port in service["spec"].get("ports") or []:
            target = port.get("targetPort")
            if isinstance(target, str) and not all(target in port_names(t) for _, t in matched):
                problems.add(f"{ident(service)}: targetPort {target} is not a named port of every selected pod")

    for doc in build.of_kind("PodDisruptionBudget", "NetworkPolicy"):
        selector = doc["spec"].get("selector" if doc["kind"] == "PodDisruptionBudget" else "podSelector")
        if not pods_matching(selector):
            problems.add(f"{ident(doc)}: selector matches no pod template")

    for doc in build.of_kind("PodMonitor"):
        matched = pods_matching(doc["spec"].get("selector"))
        if not matched:
            problems.add(f"{ident(doc)}: selector matches no pod template")
        for endpoint in doc["spec"].get("podMetricsEndpoints") or []:
            for workload, template in matched:
                if endpoint.get("port") not in port_names(template):
                    problems.add(f"{ident(doc)}: {ident(workload)} has no port named {endpoint.get('port')}")

    for doc in build.of_kind("HorizontalPodAutoscaler", "ScaledObject"):
        target = doc["spec"].get("scaleTargetRef") or {}
        if not build.named(target.get("kind", "Deployment"), target.get("name", "")):
            problems.add(f"{ident(doc)}: scale target {target.get('kind', 'Deployment')}/{target.get('name')} is not in the build")
        for trigger in doc["spec"].get("triggers") or []:
            auth = (trigger.get("authenticationRef") or {}).get("name")
            if auth and not build.named("TriggerAuthentication", auth):
                problems.add(f"{ident(doc)}: TriggerAuthentication {auth} is not in the build")


def check_hookline_pods(build: Build, problems: Problems) -> None:
    """The pod rules of docs/operations.md, for Hookline's own workloads."""
    configmaps = {d["metadata"]["name"]: d.get("data") or {} for d in build.of_kind("ConfigMap")}
    for workload, template in build.pod_templates():
        labels = workload["metadata"].get("labels") or {}
        if not str(labels.get("app.kubernetes.io/name", "")).startswith("hookline-"):
            continue
        name = ident(workload)
        pod_labels = template["metadata"].get("labels") or {}
        for key in RECOMMENDED_LABELS:
            for where, present in (("", labels), (" pod template", pod_labels)):
                if f"app.kubernetes.io/{key}" not in present:
                    problems.add(f"{name}{where}: label app.kubernetes.io/{key} missing")
        spec = template["spec"]
        pod_security = spec.get("securityContext") or {}
        if pod_security.get("runAsNonRoot") is not True or pod_security.get("runAsUser") != 65532:
            problems.add(f"{name}: pod securityContext needs runAsNonRoot: true and runAsUser: 65532")
        if (pod_security.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
            problems.add(f"{name}: pod seccompProfile must be RuntimeDefault")
        if spec.get("automountServiceAccountToken") is not False:
            problems.add(f"{name}: automountServiceAccountToken must be false")
        env: dict[str, str] = {}
        for container in spec.get("containers") or []:
            cname = f"{name} container {container.get('name')}"
            security = container.get("securityContext") or {}
            if security.get("allowPrivilegeEscalation") is not False:
                problems.add(f"{cname}: allowPrivilegeEscalation must be false")
            if security.get("readOnlyRootFilesystem") is not True:
                problems.add(f"{cname}: readOnlyRootFilesystem must be true")
            if "ALL" not in ((security.get("capabilities") or {}).get("drop") or []):
                problems.add(f"{cname}: capabilities must drop ALL")
            resources = container.get("resources") or {}
            for path in ("requests.cpu", "requests.memory", "limits.memory"):
                section, key = path.split(".")
                if key not in (resources.get(section) or {}):
                    problems.add(f"{cname}: resources.{path} missing")
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                if probe not in container:
                    problems.add(f"{cname}: {probe} missing")
            for source in container.get("envFrom") or []:
                env.update(configmaps.get((source.get("configMapRef") or {}).get("name"), {}))
            for variable in container.get("env") or []:
                if "value" in variable:
                    env[variable["name"]] = variable["value"]
            grace = env.get("HOOKLINE__SHUTDOWN__GRACE")
            if grace is None:
                problems.add(f"{cname}: HOOKLINE__SHUTDOWN__GRACE not set (the pod budget depends on it)")
                continue
            pre_stop = ((container.get("lifecycle") or {}).get("preStop") or {}).get("sleep") or {}
            needed = duration_seconds(grace) + float(pre_stop.get("seconds", 0)) + 5
            budget = spec.get("terminationGracePeriodSeconds", 30)
            if budget < needed:
                problems.add(
                    f"{cname}: terminationGracePeriodSeconds {budget} leaves under 5s after preStop "
                    f"and HOOKLINE__SHUTDOWN__GRACE={grace}"
                )


def cmd_manifests(args: argparse.Namespace) -> int:
    failed = 0
    builtin: list[dict] = []
    seen: set[str] = set()
    for path in args.builds:
        problems = Problems(path.name)
        docs = [d for d in yaml.load_all(path.read_text(), Loader=LOADER) if d]
        if not docs:
            problems.add("the build is empty")
        custom = [d for d in docs if not is_builtin(str(d.get("apiVersion", "")))]
        for doc in custom:
            check_shape(doc, problems)
        build = Build(docs)
        check_references(build, problems)
        check_hookline_pods(build, problems)
        # The builds share most resources; validate each distinct one once.
        for doc in docs:
            key = json.dumps(doc, sort_keys=True)
            if doc not in custom and key not in seen:
                seen.add(key)
                builtin.append(doc)
        kinds = sorted({d["kind"] for d in custom})
        print(
            f"  {path.name}: {len(docs) - len(custom)} built-in resources, {len(custom)} custom"
            + (f" ({', '.join(kinds)})" if kinds else ""),
            file=sys.stderr,
        )
        failed |= problems.report()
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    args.builtin_out.write_text(yaml.dump_all(builtin, Dumper=dumper, sort_keys=False))
    return failed


# --- alert rules ---------------------------------------------------------------------

RULE_HEADER = """\
# GENERATED from rules/hookline.rules.yml: edit that file, then run
#   python3 tests/deploy/deploy_checks.py sync-rules --write
# The Prometheus Operator's ruleSelector may need a label added here (e.g. `release`
# for kube-prometheus-stack): add it in an overlay, not in this file.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: hookline
  labels:
    app.kubernetes.io/name: hookline
    app.kubernetes.io/instance: hookline
    app.kubernetes.io/component: monitoring
spec:
"""


def generated_prometheus_rule(rules_text: str) -> str:
    lines = rules_text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("groups:")), None)
    if start is None:
        raise SystemExit(f"{DEFAULT_RULES}: no top-level `groups:`")
    body = [("  " + line) if line.strip() else "" for line in lines[start:]]
    return RULE_HEADER + "\n".join(body) + "\n"


def cmd_sync_rules(args: argparse.Namespace) -> int:
    problems = Problems(str(PROMETHEUS_RULE.relative_to(ROOT)))
    rules_text = DEFAULT_RULES.read_text()
    wanted = generated_prometheus_rule(rules_text)
    if yaml.safe_load(wanted)["spec"]["groups"] != yaml.safe_load(rules_text)["groups"]:
        problems.add("generating it changed the rules (indentation inside a block scalar?)")
        return problems.report()
    if args.write:
        if not PROMETHEUS_RULE.exists() or PROMETHEUS_RULE.read_text() != wanted:
            PROMETHEUS_RULE.write_text(wanted)
            print(f"wrote {PROMETHEUS_RULE.relative_to(ROOT)}", file=sys.stderr)
        return 0
    if not PROMETHEUS_RULE.exists() or PROMETHEUS_RULE.read_text() != wanted:
        problems.add(
            "out of date with rules/hookline.rules.yml; run "
            "`python3 tests/deploy/deploy_checks.py sync-rules --write`"
        )
    return problems.report()


def github_anchor(heading: str) -> str:
    """The id GitHub gives a Markdown heading."""
    text = re.sub(r"<[^>]+>", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def cmd_runbooks(_: argparse.Namespace) -> int:
    problems = Problems("alerts and runbooks")
    document = yaml.safe_load(DEFAULT_RULES.read_text())
    runbooks = {}
    in_code = in_runbooks = False
    for line in OPERATIONS.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and (match := re.match(r"(#{1,6})\s+(.*)", line)):
            level, text = len(match.group(1)), match.group(2)
            if level <= 2:
                in_runbooks = text.strip().lower() == "runbooks"
            elif level == 3 and in_runbooks:
                runbooks[github_anchor(text)] = text
    alerts = set()
    for group in document["groups"]:
        for rule in group["rules"]:
            if "alert" not in rule:
                continue
            name = rule["alert"]
            alerts.add(name.lower())
            labels, annotations = rule.get("labels") or {}, rule.get("annotations") or {}
            if labels.get("severity") not in ("critical", "warning", "info"):
                problems.add(f"{name}: severity must be critical, warning or info")
            for key in ("summary", "description", "runbook_url"):
                if not annotations.get(key):
                    problems.add(f"{name}: annotation {key} missing")
            url = annotations.get("runbook_url", "")
            match = re.fullmatch(r"https://[^#\s]+/docs/operations\.md#([a-z0-9-]+)", url)
            if not match:
                problems.add(f"{name}: runbook_url {url!r} is not …/docs/operations.md#anchor")
            elif match.group(1) not in runbooks:
                problems.add(f"{name}: docs/operations.md has no runbook heading (### under ## Runbooks) with anchor #{match.group(1)}")
            elif match.group(1) != name.lower():
                problems.add(f"{name}: runbook anchor should be #{name.lower()}")
    if not runbooks:
        problems.add("docs/operations.md: no `## Runbooks` section with a `###` heading per alert")
    for anchor, heading in runbooks.items():
        if anchor not in alerts:
            problems.add(f"docs/operations.md: runbook {heading!r} has no alert of that name")
    print(f"  {len(alerts)} alerts, each with a runbook", file=sys.stderr)
    return problems.report()


# --- dashboard -----------------------------------------------------------------------

GRAFANA_INTERVALS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


def promql_for_promtool(expr: str) -> str:
    for variable, value in GRAFANA_INTERVALS.items():
        expr = expr.replace(variable, value)
    # Other variables only ever stand inside label-matcher strings here.
    return re.sub(r"\$\{?[A-Za-z_][A-Za-z0-9_]*(?::[a-z]+)?\}?", "x", expr)


def cmd_dashboard(args: argparse.Namespace) -> int:
    problems = Problems(str(DEFAULT_DASHBOARD.relative_to(ROOT)))
    dashboard = json.loads(DEFAULT_DASHBOARD.read_text())
    if dashboard.get("uid") != "hookline-overview":
        problems.add(f"uid must stay hookline-overview (links and provisioning use it), is {dashboard.get('uid')!r}")
    variables = {v.get("name"): v for v in (dashboard.get("templating") or {}).get("list") or []}
    source = variables.get("datasource") or {}
    if source.get("type") != "datasource" or source.get("query") != "prometheus":
        problems.add("needs a template variable `datasource` of type datasource (prometheus)")
    if "namespace" not in variables:
        problems.add("needs a template variable `namespace`")
    rules = []
    ids = set()
    for panel in dashboard_panels(dashboard.get("panels") or []):
        title = panel.get("title")
        if panel.get("id") in ids:
            problems.add(f"panel {title!r}: duplicate id {panel.get('id')}")
        ids.add(panel.get("id"))
        grid = panel.get("gridPos") or {}
        if grid.get("x", 0) + grid.get("w", 0) > 24:
            problems.add(f"panel {title!r}: wider than the 24-column grid")
        if panel.get("type") == "row":
            continue
        if (panel.get("datasource") or {}).get("uid") != "${datasource}":
            problems.add(f"panel {title!r}: datasource must be ${{datasource}}")
        if not ((panel.get("fieldConfig") or {}).get("defaults") or {}).get("unit"):
            problems.add(f"panel {title!r}: no unit set")
        if not panel.get("description"):
            problems.add(f"panel {title!r}: no description")
        targets = panel.get("targets") or []
        if not targets:
            problems.add(f"panel {title!r}: no query")
        for target in targets:
            expr = target.get("expr", "")
            where = f"panel {title!r} query {target.get('refId')}"
            if (target.get("datasource") or {}).get("uid") != "${datasource}":
                problems.add(f"{where}: datasource must be ${{datasource}}")
            if '$namespace' not in expr:
                problems.add(f"{where}: does not filter on namespace=~\"$namespace\"")
            for function, window in re.findall(r"\b(rate|irate)\s*\([^\[]*\[([^\]]+)\]", expr):
                if window != "$__rate_interval":
                    problems.add(f"{where}: {function}() over [{window}], use [$__rate_interval]")
            slug = re.sub(r"[^a-z0-9]+", "_", str(title).lower()).strip("_")
            rules.append({"record": f"dashboard:panel_{panel.get('id')}_{slug}:{target.get('refId')}",
                          "expr": promql_for_promtool(expr)})
    for query in keda_queries(DEFAULT_KEDA):
        rules.append({"record": "keda:prometheus_trigger", "expr": query.expr})
    args.rules_out.write_text(yaml.safe_dump({"groups": [{"name": "dashboard-and-keda-queries", "rules": rules}]}, sort_keys=False))
    print(f"  {len(ids)} panels and rows, {len(rules)} queries to parse", file=sys.stderr)
    return problems.report()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    manifests = commands.add_parser("manifests")
    manifests.add_argument("builds", type=Path, nargs="+")
    manifests.add_argument("--builtin-out", type=Path, required=True)
    manifests.set_defaults(run=cmd_manifests)
    sync = commands.add_parser("sync-rules")
    sync.add_argument("--write", action="store_true")
    sync.set_defaults(run=cmd_sync_rules)
    commands.add_parser("runbooks").set_defaults(run=cmd_runbooks)
    dashboard = commands.add_parser("dashboard")
    dashboard.add_argument("--rules-out", type=Path, required=True)
    dashboard.set_defaults(run=cmd_dashboard)
    args = parser.parse_args()
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
