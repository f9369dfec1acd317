#!/usr/bin/env python3
"""Every hookline_* metric that the alert rules, the dashboard and the KEDA trigger query
must be one the binaries export.

    check_metric_names.py --scrape ingest.prom --scrape deliverer.prom
    check_metric_names.py --declared-in-source

With --scrape, the names are checked against real /metrics output (Prometheus text
format). A histogram family X counts as exporting X_bucket, X_sum and X_count (and a
summary X_sum and X_count), even before it has samples; a query of a histogram's bare
name is an error. With --declared-in-source they are checked against the metric names
declared as string literals in the Rust sources: weaker (a declared metric may never be
registered), but it needs no running binaries, so scripts/lint-deploy.sh uses it.

Exit status: 0 all found, 1 some missing (each named with its expression), 2 bad input.
Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "components" / "monitoring"
DEFAULT_RULES = MONITORING / "rules" / "hookline.rules.yml"
DEFAULT_DASHBOARD = MONITORING / "dashboards" / "hookline.json"
DEFAULT_KEDA = ROOT / "deploy" / "components" / "keda" / "scaledobject.yaml"
# scripts/lint-deploy.sh installs PyYAML here; used when the running python lacks it.
TOOLS_PYTHON = ROOT / "target" / "deploy-tools" / "venv" / "bin" / "python"

HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
SUMMARY_SUFFIXES = ("_sum", "_count")

STRING_LITERAL = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
METRIC_NAME = re.compile(r"(?<![A-Za-z0-9_:$])hookline_[A-Za-z0-9_:]*")


def load_yaml_module():
    try:
        import yaml  # noqa: PLC0415

        return yaml
    except ImportError:
        if TOOLS_PYTHON.exists() and Path(sys.executable).resolve() != TOOLS_PYTHON.resolve():
            os.execv(str(TOOLS_PYTHON), [str(TOOLS_PYTHON), *sys.argv])
        sys.exit(
            "check_metric_names.py: PyYAML is missing. Run scripts/lint-deploy.sh once "
            f"(it creates {TOOLS_PYTHON.relative_to(ROOT)}), or `pip install pyyaml`."
        )


@dataclass(frozen=True)
class Query:
    where: str  # e.g. "alert HooklineDeadLettersIncreasing"
    expr: str


def metric_names(expr: str) -> set[str]:
    """hookline_* metric names in a PromQL expression; label values are not names."""
    return set(METRIC_NAME.findall(STRING_LITERAL.sub('""', expr)))


def rule_queries(path: Path) -> list[Query]:
    yaml = load_yaml_module()
    document = yaml.safe_load(path.read_text())
    queries = []
    for group in document.get("groups") or []:
        for rule in group.get("rules") or []:
            name = rule.get("alert") or rule.get("record") or "?"
            kind = "alert" if "alert" in rule else "recording rule"
            queries.append(Query(f"{path.name}: {kind} {name}", str(rule.get("expr", ""))))
    return queries


def dashboard_panels(panels: list[dict]) -> list[dict]:
    """Every panel, including those nested in (collapsed) rows."""
    found = []
    for panel in panels:
        found.append(panel)
        found.extend(dashboard_panels(panel.get("panels") or []))
    return found


def dashboard_queries(path: Path) -> list[Query]:
    dashboard = json.loads(path.read_text())
    queries = []
    for panel in dashboard_panels(dashboard.get("panels") or []):
        for target in panel.get("targets") or []:
            if target.get("expr"):
                where = f"{path.name}: panel {panel.get('title')!r} query {target.get('refId', '?')}"
                queries.append(Query(where, target["expr"]))
    # Template variables: label_values(metric, label) is not PromQL, but its metric must
    # exist too or the variable is empty.
    for variable in (dashboard.get("templating") or {}).get("list") or []:
        query = variable.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        if variable.get("type") == "query" and isinstance(query, str):
            queries.append(Query(f"{path.name}: variable ${variable.get('name')}", query))
    return queries


def keda_queries(path: Path) -> list[Query]:
    yaml = load_yaml_module()
    queries = []
    for document in yaml.safe_load_all(path.read_text()):
        if not document or document.get("kind") != "ScaledObject":
            continue
        for trigger in (document.get("spec") or {}).get("triggers") or []:
            if trigger.get("type") == "prometheus":
                query = (trigger.get("metadata") or {}).get("query", "")
                name = document["metadata"]["name"]
                queries.append(Query(f"{path.name}: ScaledObject {name} prometheus trigger", query))
    return queries


class Exported:
    """Metric names a set of scrapes (or the sources) makes available to queries."""

    def __init__(self) -> None:
        self.samples: set[str] = set()
        self.families: dict[str, str] = {}  # name -> type

    def add_scrape(self, text: str) -> None:
        for line in text.splitlines():
            line = line.strip()
            if not line:
                continue
            if line.startswith("#"):
                parts = line.split()
                if len(parts) >= 4 and parts[1] == "TYPE":
                    self.families[parts[2]] = parts[3]
                continue
            name = re.split(r"[{\s]", line, maxsplit=1)[0]
            self.samples.add(name)

    def add_declared(self, name: str) -> None:
        # The type is not known from a string literal: allow the histogram suffixes.
        self.families.setdefault(name, "declared")

    def problem(self, name: str) -> str | None:
        """None if `name` can be queried, else why not."""
        family_type = self.families.get(name)
        if family_type in ("histogram", "summary"):
            suffixes = HISTOGRAM_SUFFIXES if family_type == "histogram" else SUMMARY_SUFFIXES
            return f"{name} is a {family_type}: query {' / '.join(name + s for s in suffixes)}"
        if name in self.samples or family_type is not None:
            return None
        for suffix in HISTOGRAM_SUFFIXES:
            if name.endswith(suffix):
                base = name[: -len(suffix)]
                base_type = self.families.get(base)
                if base_type == "histogram" or base_type == "declared":
                    return None
                if base_type == "summary" and suffix in SUMMARY_SUFFIXES:
                    return None
        return f"{name} is not exported"

    def hookline_count(self) -> int:
        names = self.samples | set(self.families)
        return sum(1 for n in names if n.startswith("hookline_"))


def declared_in_source(root: Path) -> Exported:
    exported = Exported()
    literal = re.compile(r'"(hookline_[a-z0-9_]+)"')
    for crate in ("shared", "ingest", "deliverer"):
        for source in sorted((root / crate / "src").rglob("*.rs")):
            for name in literal.findall(source.read_text()):
                exported.add_declared(name)
    return exported


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--scrape", action="append", type=Path, metavar="FILE",
                        help="a /metrics scrape in Prometheus text format (repeatable)")
    source.add_argument("--declared-in-source", action="store_true",
                        help="check against metric names declared in shared/, ingest/, deliverer/")
    parser.add_argument("--rules", type=Path, default=DEFAULT_RULES)
    parser.add_argument("--dashboard", type=Path, default=DEFAULT_DASHBOARD)
    parser.add_argument("--keda", type=Path, default=DEFAULT_KEDA,
                        help="ScaledObject manifest whose prometheus trigger query is checked too")
    args = parser.parse_args(argv)

    for path in [args.rules, args.dashboard, args.keda, *(args.scrape or [])]:
        if not path.is_file():
            print(f"check_metric_names.py: no such file: {path}", file=sys.stderr)
            return 2

    if args.scrape:
        exported = Exported()
        for path in args.scrape:
            exported.add_scrape(path.read_text())
        against = f"{len(args.scrape)} scrape(s)"
    else:
        exported = declared_in_source(ROOT)
        against = "the metric names declared in the Rust sources"
    if exported.hookline_count() == 0:
        print(f"check_metric_names.py: no hookline_* metric in {against}", file=sys.stderr)
        return 2

    queries = rule_queries(args.rules) + dashboard_queries(args.dashboard) + keda_queries(args.keda)
    used = sorted({name for q in queries for name in metric_names(q.expr)})
    print(
        f"check_metric_names.py: {len(queries)} queries use {len(used)} hookline_* names; "
        f"checking them against {against} ({exported.hookline_count()} hookline_* names)",
        file=sys.stderr,
    )

    failures = 0
    for query in queries:
        for name in sorted(metric_names(query.expr)):
            problem = exported.problem(name)
            if problem:
                failures += 1
                expr = " ".join(query.expr.split())
                print(f"FAIL {query.where}: {problem}\n     expr: {expr}", file=sys.stderr)
    if failures:
        print(f"check_metric_names.py: {failures} use(s) of metrics not exported", file=sys.stderr)
        return 1
    print("check_metric_names.py: every queried metric is exported", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
