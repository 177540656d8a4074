"""Grafana provisioning and the generated dashboards (static checks; live queries are in the integration test)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import build_dashboards  # noqa: E402

PROVISIONING = ROOT / "grafana" / "provisioning"
DASHBOARDS = {name: build() for name, build in build_dashboards.DASHBOARDS.items()}
# Dummy values: enough for promtool to parse every expression.
DUMMY_VARIABLES = {"$run": "run-1", "$uuid": "sim-0", "$instance": ".+", "$__range": "1h"}


def substitute(expr: str, values: dict[str, str]) -> str:
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace(name, values[name])
    return expr


def all_expressions(dashboard: dict) -> list[str]:
    """Panel targets, annotations and variable queries (query_result(...) unwrapped)."""
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    exprs += [a["expr"] for a in dashboard["annotations"]["list"] if "expr" in a]
    for variable in dashboard["templating"]["list"]:
        query = variable["query"]
        if match := re.fullmatch(r"query_result\((.*)\)", query, flags=re.S):
            exprs.append(match.group(1))
        elif match := re.fullmatch(r"label_values\((\w+), *(\w+)\)", query):
            exprs.append(f"group by ({match.group(2)}) ({match.group(1)})")
    return exprs


def test_committed_dashboards_are_up_to_date():
    assert build_dashboards.main(["--check"]) == 0, "run: python scripts/build_dashboards.py"


def test_check_mode_detects_a_stale_dashboard(tmp_path: Path):
    build_dashboards.main(["--out", str(tmp_path)])
    stale = tmp_path / "gpu-fleet.json"
    stale.write_text(stale.read_text().replace("GPU fleet", "GPU flet"))
    assert build_dashboards.main(["--check", "--out", str(tmp_path)]) == 1


def test_datasource_uid_is_fixed_and_used_by_every_panel():
    datasources = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())["datasources"]
    prometheus = next(d for d in datasources if d["type"] == "prometheus")
    assert prometheus["uid"] == build_dashboards.DATASOURCE["uid"]
    for dashboard in DASHBOARDS.values():
        for panel in dashboard["panels"]:
            assert panel["datasource"]["uid"] == prometheus["uid"]
            assert all(t["datasource"]["uid"] == prometheus["uid"] for t in panel["targets"])


def test_dashboard_provider_points_at_the_mounted_dashboards():
    provider = yaml.safe_load((PROVISIONING / "dashboards" / "thermograd.yml").read_text())["providers"][0]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text().replace("!reset", ""))
    mounts = dict(v.split(":")[:2][::-1] for v in compose["services"]["grafana"]["volumes"])
    assert mounts[provider["options"]["path"]] == "./grafana/dashboards"
    for name in DASHBOARDS:
        assert (ROOT / "grafana" / "dashboards" / name).is_file()


def test_dashboard_titles_and_unique_uids():
    titles = {d["title"] for d in DASHBOARDS.values()}
    assert titles == {"Training ↔ thermal coupling", "GPU fleet"}
    assert len({d["uid"] for d in DASHBOARDS.values()}) == len(DASHBOARDS)


def test_coupling_dashboard_has_the_seed_panels_and_more():
    dashboard = DASHBOARDS["training-thermal-coupling.json"]
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    for metric in ("train_loss", "train_grad_norm", "rle_efficiency_smoothed", "rle_collapsed",
                   "rle_temperature_celsius", "rle_power_watts", "rle_load_ratio", "rle_sustain_seconds",
                   "rle_throttle_active", "rank:train_steps:rate1m", "rank:train_tokens_per_joule:ratio_rate1m",
                   "ALERTS"):
        assert metric in exprs, metric
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert set(variables) == {"run", "uuid"}
    # the device defaults to the run's GPU: the join through train_run_info's gpu_uuid
    assert "gpu_uuid" in variables["uuid"]["query"] and "$run" in variables["uuid"]["query"]
    annotations = [a["expr"] for a in dashboard["annotations"]["list"] if "expr" in a]
    assert any("rle_collapsed" in a for a in annotations)


def test_fleet_dashboard_covers_every_device_and_exporter_health():
    exprs = " ".join(t["expr"] for p in DASHBOARDS["gpu-fleet.json"]["panels"] for t in p["targets"])
    for metric in ("rle_efficiency_smoothed", "rle_temperature_celsius", "rle_power_watts",
                   "device:rle_collapse_events:increase10m", 'up{job="exporter"', "rle_exporter_errors_total"):
        assert metric in exprs, metric
    assert "uuid=" not in exprs and "run_id" not in exprs  # every device, not one run's


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_panels_fit_the_grid_without_overlap(name: str):
    cells: set[tuple[int, int]] = set()
    for panel in DASHBOARDS[name]["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24
        area = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not cells & area, f"{panel['title']} overlaps another panel"
        cells |= area


def test_every_dashboard_expression_parses(tmp_path: Path):
    """promtool parses PromQL: every expression becomes a recording rule of a throwaway rule file."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found: run `make system-deps`")
    exprs = [substitute(e, DUMMY_VARIABLES) for d in DASHBOARDS.values() for e in all_expressions(d)]
    rules = {"groups": [{"name": "dashboards", "rules": [{"record": f"dashboard_expression_{i}", "expr": e}
                                                         for i, e in enumerate(exprs)]}]}
    path = tmp_path / "dashboard-exprs.yml"
    path.write_text(yaml.safe_dump(rules))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(exprs)} rules found" in result.stdout
