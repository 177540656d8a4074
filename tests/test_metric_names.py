"""Every metric name used anywhere must be listed in docs/metrics.md.

Sources checked: every dashboard expression (panels, annotations, variables), every recording and
alert rule, the promtool rule tests, the analysis package's PromQL, and the strings of the tests and
scripts. Reference: the first backticked cell of each table row of docs/metrics.md; a histogram's base
name also covers its `_bucket`, `_sum` and `_count` series.

Python sources are not PromQL, so only strings that clearly name a series are checked: a
`rle_*`/`train_*` name followed by a label selector `{` or a range `[`, one alone in parentheses
(`rate(x)`), one standing alone with a Prometheus unit/type suffix (`..._total`, `..._seconds`, ...),
and any `level:metric:operation` name. The foreign exporters' names (`DCGM_FI_DEV_*`/`DCGM_FI_PROF_*` of
dcgm-exporter, `nvidia_smi_*` of nvidia_gpu_exporter) are unambiguous: every occurrence counts. This file
itself is not scanned (it holds deliberate bad names).
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
import yaml

from scripts import build_dashboards

ROOT = Path(__file__).resolve().parents[1]

METRICS_DOC = ROOT / "docs" / "metrics.md"
RULE_FILES = sorted((ROOT / "prometheus" / "rules").glob("*.yml"))
RULE_TESTS = sorted((ROOT / "prometheus" / "tests").glob("*.yml"))
SELF = Path(__file__).resolve()

PROMQL_WORDS = {
    # keywords and modifiers
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset",
    "inf", "nan", "Inf", "NaN", "start", "end",
    # aggregations
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk",
    "quantile",
}
SUFFIXES = ("_total", "_seconds", "_bytes", "_watts", "_celsius", "_joules", "_hertz", "_ratio", "_info",
            "_bucket", "_sum", "_count")
NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
PY_CANDIDATE = re.compile(r"(?<![\w:])((?:rle|train)_[A-Za-z0-9_]*[A-Za-z0-9]"
                          r"|[a-z_]+:[a-z][a-z0-9_]*:[a-z0-9_]+)(?![\w:])")
# dcgm-exporter's field names (not its DCGM_FI_DRIVER_VERSION-style label counters) and nvidia_gpu_exporter's
FOREIGN_CANDIDATE = re.compile(r"(?<![\w:])(DCGM_FI_(?:DEV|PROF)_[A-Z0-9_]*[A-Z0-9]"
                               r"|nvidia_smi_[a-z0-9_]*[a-z0-9])(?![\w:])")


def documented_names(text: str) -> set[str]:
    names: set[str] = set()
    for line in text.splitlines():
        match = re.match(r"\|\s*`([^`]+)`\s*\|\s*([^|]*)\|", line)
        if not match:
            continue
        name, kind = match.group(1), match.group(2)
        names.add(name)
        if "histogram" in kind:
            names.update(f"{name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
    return names


DOCUMENTED = documented_names(METRICS_DOC.read_text(encoding="utf-8"))


def promql_metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not keywords, functions (followed
    by '('), label names (inside {...} or by/on(...) lists), strings, durations or numbers."""
    expr = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`', '""', expr)
    names: set[str] = set()
    expr = re.sub(r"\{[^}]*\}", "{}", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", r"\1()", expr)
    expr = re.sub(r"\[[^\]]*\]", "[]", expr)
    for match in re.finditer(rf"(?<![\w:.$]){NAME}", expr):
        token = match.group(0)
        if token in PROMQL_WORDS or expr[match.end():].lstrip().startswith("("):
            continue
        names.add(token)
    return names


def python_metric_names(source: str) -> list[tuple[int, str]]:
    """(line, name) for every string constant of a Python source that clearly names a series."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
            continue
        text = node.value
        for match in PY_CANDIDATE.finditer(text):
            token, before, after = match.group(1), text[:match.start()].rstrip(), text[match.end():].lstrip()
            is_recording = ":" in token
            in_selector = after.startswith(("{", "["))
            in_parens = before.endswith("(") and after.startswith(")")
            alone_with_suffix = text.strip() == token and token.endswith(SUFFIXES)
            if is_recording or in_selector or in_parens or alone_with_suffix:
                found.append((node.lineno, token))
        found += [(node.lineno, match.group(1)) for match in FOREIGN_CANDIDATE.finditer(text)]
    return found


def dashboard_exprs() -> list[tuple[str, str]]:
    exprs = []
    for name, build in build_dashboards.DASHBOARDS.items():
        dashboard = build()
        committed = json.loads((ROOT / "grafana" / "dashboards" / name).read_text(encoding="utf-8"))
        for source in (dashboard, committed):
            exprs += [(f"{name}: {p['title']}", t["expr"]) for p in source["panels"] for t in p["targets"]]
            exprs += [(f"{name}: annotation {a['name']}", a["expr"]) for a in source["annotations"]["list"]
                      if "expr" in a]
            for variable in source["templating"]["list"]:
                query = re.sub(r"^(query_result|label_values)\((.*)\)$", r"\2", variable["query"], flags=re.S)
                if variable["query"].startswith("label_values("):
                    query = query.split(",")[0]
                exprs.append((f"{name}: variable {variable['name']}", query))
    return exprs


def rule_exprs() -> list[tuple[str, str]]:
    exprs = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                label = rule.get("record") or rule.get("alert")
                exprs.append((f"{path.name}: {label}", rule["expr"]))
                if "record" in rule:
                    exprs.append((f"{path.name}: record", rule["record"]))
    for path in RULE_TESTS:
        for test in yaml.safe_load(path.read_text())["tests"]:
            for series in test.get("input_series", []):
                exprs.append((f"{path.name}: input series", series["series"]))
            for case in test.get("promql_expr_test", []):
                exprs.append((f"{path.name}: expr", case["expr"]))
    return exprs


def python_sources() -> list[Path]:
    files = [*(ROOT / "analysis").rglob("*.py"), *(ROOT / "tests").rglob("*.py"), *(ROOT / "scripts").glob("*.py")]
    return sorted(p for p in files if p.resolve() != SELF)


def undocumented(exprs: list[tuple[str, str]]) -> list[str]:
    return [f"{where}: {name}" for where, expr in exprs for name in sorted(promql_metric_names(expr))
            if name not in DOCUMENTED]


def test_the_reference_lists_names():
    assert {"rle_efficiency", "train_grad_norm", "up", "ALERTS"} <= DOCUMENTED
    assert "train_step_grad_norm_bucket" in DOCUMENTED and "train_loss_bucket" not in DOCUMENTED


def test_dashboards_use_only_documented_names():
    exprs = dashboard_exprs()
    assert len(exprs) > 20
    assert undocumented(exprs) == []


def test_rules_and_rule_tests_use_only_documented_names():
    exprs = rule_exprs()
    assert len(exprs) > 20
    assert undocumented(exprs) == []


def test_every_recording_rule_is_documented_and_every_documented_one_exists():
    records = {rule["record"] for path in RULE_FILES for group in yaml.safe_load(path.read_text())["groups"]
               for rule in group["rules"] if "record" in rule}
    documented_records = {name for name in DOCUMENTED if name.count(":") == 2}
    assert records == documented_records


@pytest.mark.parametrize("path", python_sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_python_strings_use_only_documented_names(path: Path):
    # prometheus_client's parser names a counter's family without `_total`: that spelling is fine too.
    bad = [f"{path.relative_to(ROOT)}:{line}: {name}" for line, name in python_metric_names(path.read_text())
           if name not in DOCUMENTED and f"{name}_total" not in DOCUMENTED]
    assert bad == []


def test_the_scanners_catch_an_undocumented_name():
    assert promql_metric_names('sum by (uuid) (rate(rle_energy_joule_total{uuid="$u"}[1m])) / ignoring (job) up') == {
        "rle_energy_joule_total", "up"}
    assert promql_metric_names('label_replace(train_run_info, "uuid", "$1", "gpu_uuid", "(.+)") > 1e-3') == {
        "train_run_info"}
    source = 'Q = "rate(train_stepz_total[1m])"\nCOL = "rle_smoothed"\nN = "train_lost_total"\nX = "rank:a_b:rate1m"\n'
    assert python_metric_names(source) == [(1, "train_stepz_total"), (3, "train_lost_total"), (4, "rank:a_b:rate1m")]
    foreign = ('A = "DCGM_FI_DEV_GPU_TEMPZ"\nB = "DCGM_FI_DRIVER_VERSION"\n'
               'C = f"nvidia_smi_{x}"\nD = "x nvidia_smi_tempz y"\n')
    assert python_metric_names(foreign) == [(1, "DCGM_FI_DEV_GPU_TEMPZ"), (4, "nvidia_smi_tempz")]
