#!/usr/bin/env python3
"""Custom resources against the API types of pinned operator releases, for `make lint-deploy`.

The API server rejects a misspelt field of a built-in kind (strict field validation) and
kubernetes-validate --strict catches it offline; for KEDA's and the Prometheus Operator's
resources this does the same. Their types come from npm packages generated from the
operators' own Go API types (tests/deploy/crd-types/package.json, pinned with integrity
hashes in its package-lock.json):

  - @kubernetes-models/keda 2.0.0: keda.sh/v1alpha1 (KEDA 2.19's API)
  - @kubernetes-models/prometheus-operator 6.0.0: monitoring.coreos.com/v1 (0.91's API)

Each resource becomes an object literal assigned to its kind's TypeScript interface, and
`tsc --strict` checks it: a field the type does not declare ("Object literal may only
specify known properties"), a wrong type, a value outside an enum and a missing required
field each fail, at the line of the field (mapped back to its path). tsc reports one
excess field per object, so a second misspelling in the same object shows after the first
is fixed. Then each resource goes through the package's compiled OpenAPI validator
(patterns, formats, bounds).

RabbitmqCluster has no such package on a registry this project installs from (npm, PyPI,
crates.io, Debian): it keeps the shape check of deploy_checks.py. Any other custom kind
fails, so a new one cannot go unchecked.

  crd_types.py check --tools DIR BUILD...   every custom resource of every build
  crd_types.py self-test --tools DIR BUILD  the resources of BUILD pass as they are, and
                                            each planted mistake fails at its path
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from deploy_checks import is_builtin  # noqa: E402

# (apiVersion, kind) -> (module, TypeScript interface, model class)
KINDS: dict[tuple[str, str], tuple[str, str, str]] = {
    ("keda.sh/v1alpha1", "ScaledObject"): (
        "@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject",
        "IScaledObject",
        "ScaledObject",
    ),
    ("keda.sh/v1alpha1", "TriggerAuthentication"): (
        "@kubernetes-models/keda/keda.sh/v1alpha1/TriggerAuthentication",
        "ITriggerAuthentication",
        "TriggerAuthentication",
    ),
    ("monitoring.coreos.com/v1", "PodMonitor"): (
        "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PodMonitor",
        "IPodMonitor",
        "PodMonitor",
    ),
    ("monitoring.coreos.com/v1", "PrometheusRule"): (
        "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule",
        "IPrometheusRule",
        "PrometheusRule",
    ),
}
SHAPE_ONLY = {("rabbitmq.com/v1beta1", "RabbitmqCluster")}


@dataclass
class Resource:
    label: str  # where it came from, for messages
    doc: dict


def key(doc: dict) -> tuple[str, str]:
    return (str(doc.get("apiVersion", "")), str(doc.get("kind", "")))


def custom_resources(builds: list[Path]) -> Iterator[Resource]:
    for build in builds:
        for doc in yaml.safe_load_all(build.read_text()):
            if doc and not is_builtin(str(doc.get("apiVersion", ""))):
                name = doc.get("metadata", {}).get("name", "?")
                yield Resource(f"{build.stem}: {doc.get('kind')} {name}", doc)


def literal_lines(value: Any, path: str, prefix: str, suffix: str, depth: int):
    """The value as an indented TypeScript literal, each line with the path it belongs to."""
    pad = "  " * depth
    if isinstance(value, dict) and value:
        yield pad + prefix + "{", path
        for i, (name, item) in enumerate(value.items()):
            comma = "," if i < len(value) - 1 else ""
            yield from literal_lines(item, f"{path}.{name}", json.dumps(name) + ": ", comma, depth + 1)
        yield pad + "}" + suffix, path
    elif isinstance(value, list) and value:
        yield pad + prefix + "[", path
        for i, item in enumerate(value):
            comma = "," if i < len(value) - 1 else ""
            yield from literal_lines(item, f"{path}[{i}]", "", comma, depth + 1)
        yield pad + "]" + suffix, path
    else:
        yield pad + prefix + json.dumps(value) + suffix, path


TSC_ERROR = re.compile(r"^check\.mts\((\d+),(\d+)\): error (TS\d+): (.*)$")


def type_check(tools: Path, resources: list[Resource]) -> dict[int, list[str]]:
    """Problems by index into `resources`: tsc against the types, then the validators."""
    work = tools / "work"
    work.mkdir(exist_ok=True)
    imports = sorted({KINDS[key(r.doc)] for r in resources})
    lines = [f'import type {{ {iface} }} from "{module}";' for module, iface, _ in imports]
    origin: list[tuple[int, str] | None] = [None] * len(lines)
    for index, resource in enumerate(resources):
        iface = KINDS[key(resource.doc)][1]
        for text, path in literal_lines(resource.doc, "", f"export const r{index}: {iface} = ", ";", 0):
            lines.append(text)
            origin.append((index, path or "."))
    (work / "check.mts").write_text("\n".join(lines) + "\n")
    tsc = subprocess.run(
        ["node", "node_modules/typescript/bin/tsc", "--noEmit", "--strict", "--skipLibCheck",
         "--module", "nodenext", "--moduleResolution", "nodenext", "--target", "es2022",
         "work/check.mts"],
        cwd=tools, capture_output=True, text=True,
    )
    problems: dict[int, list[str]] = {}
    for line in tsc.stdout.splitlines():
        match = TSC_ERROR.match(line.replace("work/check.mts", "check.mts"))
        if not match:
            continue
        where = origin[int(match[1]) - 1]
        if where is None:
            problems.setdefault(-1, []).append(line)
            continue
        index, path = where
        problems.setdefault(index, []).append(f"{path}: {match[4]}")
    if tsc.returncode != 0 and not problems:
        problems[-1] = [tsc.stdout + tsc.stderr]

    # The compiled OpenAPI validators (patterns, formats, bounds), one model per resource.
    script = ["const results = [];"]
    for index, resource in enumerate(resources):
        module, _, model = KINDS[key(resource.doc)]
        script.append(f'{{ const {{ {model} }} = await import("{module}");')
        script.append(f"  try {{ new {model}({json.dumps(resource.doc)}).validate(); }}")
        script.append(f"  catch (e) {{ results.push([{index}, String(e.message ?? e)]); }} }}")
    script.append("console.log(JSON.stringify(results));")
    (work / "validate.mjs").write_text("\n".join(script) + "\n")
    node = subprocess.run(["node", "work/validate.mjs"], cwd=tools, capture_output=True, text=True)
    if node.returncode != 0:
        problems.setdefault(-1, []).append(node.stderr.strip())
    else:
        for index, message in json.loads(node.stdout or "[]"):
            problems.setdefault(index, []).append(f"schema: {message}")
    return problems


def cmd_check(args: argparse.Namespace) -> int:
    seen: set[str] = set()
    checked: list[Resource] = []
    failures = 0
    for resource in custom_resources(args.builds):
        k = key(resource.doc)
        if k in SHAPE_ONLY:
            continue
        if k not in KINDS:
            print(f"{resource.label}: {k[0]} {k[1]} has no pinned API types", file=sys.stderr)
            failures += 1
            continue
        fingerprint = json.dumps(resource.doc, sort_keys=True)
        if fingerprint not in seen:
            seen.add(fingerprint)
            checked.append(resource)
    problems = type_check(args.tools, checked)
    for index, messages in sorted(problems.items()):
        label = checked[index].label if index >= 0 else "type check"
        for message in messages:
            print(f"{label}: {message}", file=sys.stderr)
            failures += 1
    kinds = sorted({r.doc["kind"] for r in checked})
    print(f"  {len(checked)} custom resources checked against their types ({', '.join(kinds)})",
          file=sys.stderr)
    return 1 if failures else 0


def at(doc: dict, path: list) -> Any:
    for step in path:
        doc = doc[step]
    return doc


def rename(path: list, old: str, new: str) -> Callable[[dict], None]:
    def plant(doc: dict) -> None:
        target = at(doc, path)
        target[new] = target.pop(old)
    return plant


def put(path: list, name: str, value: Any) -> Callable[[dict], None]:
    def plant(doc: dict) -> None:
        at(doc, path)[name] = value
    return plant


def drop(path: list, name: str) -> Callable[[dict], None]:
    def plant(doc: dict) -> None:
        del at(doc, path)[name]
    return plant


# (kind, what the message must name, mistake)
MISTAKES: list[tuple[str, str, Callable[[dict], None]]] = [
    ("ScaledObject", "minReplicaCont", rename(["spec"], "minReplicaCount", "minReplicaCont")),
    ("ScaledObject", "pollingIntervall", rename(["spec"], "pollingInterval", "pollingIntervall")),
    ("ScaledObject", "metricTyp", rename(["spec", "triggers", 0], "metricType", "metricTyp")),
    ("ScaledObject", "label", put(["metadata"], "label", {"a": "b"})),
    ("ScaledObject", "spec.maxReplicaCount", put(["spec"], "maxReplicaCount", "20")),
    ("ScaledObject", "scaleTargetRef", drop(["spec"], "scaleTargetRef")),
    ("ScaledObject", "stabilizationWindowSecond",
     rename(["spec", "advanced", "horizontalPodAutoscalerConfig", "behavior", "scaleUp"],
            "stabilizationWindowSeconds", "stabilizationWindowSecond")),
    ("PodMonitor", "scrapeTimout", put(["spec", "podMetricsEndpoints", 0], "scrapeTimout", "5s")),
    ("PodMonitor", "spec.podMetricsEndpoints[0].scheme", put(["spec", "podMetricsEndpoints", 0], "scheme", "htp")),
    ("PodMonitor", "namespaceSelecter", put(["spec"], "namespaceSelecter", {"any": True})),
    ("PrometheusRule", "severity", put(["spec", "groups", 0, "rules", 0], "severity", "page")),
    # Only the compiled validator sees this one (the type says string; the pattern, no).
    ("PrometheusRule", "interval", put(["spec", "groups", 0], "interval", "1 minute")),
    ("PrometheusRule", '"group"', rename(["spec"], "groups", "group")),
]


def cmd_self_test(args: argparse.Namespace) -> int:
    originals = {r.doc["kind"]: r for r in custom_resources([args.build]) if key(r.doc) in KINDS}
    resources = list(originals.values())
    planted: list[tuple[int, str, str]] = []
    for kind, named, plant in MISTAKES:
        if kind not in originals:
            print(f"self-test: {args.build.name} has no {kind}", file=sys.stderr)
            return 1
        doc = copy.deepcopy(originals[kind].doc)
        plant(doc)
        planted.append((len(resources), kind, named))
        resources.append(Resource(f"{kind} with {named} planted", doc))
    problems = type_check(args.tools, resources)
    failures = []
    if -1 in problems:
        failures.append(f"the check itself failed: {problems[-1]}")
    for index in range(len(originals)):
        if index in problems:
            failures.append(f"{resources[index].label} should pass as built: {problems[index]}")
    for index, kind, named in planted:
        found = problems.get(index, [])
        if not any(named in message for message in found):
            failures.append(f"{kind}: the mistake at {named} was not reported ({found or 'passed'})")
    for failure in failures:
        print(f"self-test: {failure}", file=sys.stderr)
    print(f"  self-test: {len(originals)} resources pass as built, "
          f"{len(planted) - sum(1 for f in failures if 'not reported' in f)} of {len(planted)} "
          "planted mistakes fail at their path", file=sys.stderr)
    return 1 if failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check")
    check.add_argument("--tools", type=Path, required=True)
    check.add_argument("builds", type=Path, nargs="+")
    check.set_defaults(run=cmd_check)
    self_test = commands.add_parser("self-test")
    self_test.add_argument("--tools", type=Path, required=True)
    self_test.add_argument("build", type=Path)
    self_test.set_defaults(run=cmd_self_test)
    args = parser.parse_args()
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
