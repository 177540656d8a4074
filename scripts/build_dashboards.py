#!/usr/bin/env python3
"""Dashboards as code: generates grafana/dashboards/*.json (committed; Grafana provisions them).

    python scripts/build_dashboards.py           # rewrite the JSON files
    python scripts/build_dashboards.py --check   # exit 1 when the committed JSON is out of date

Edit this file, not the JSON. Every panel queries the provisioned datasource by its fixed uid, and
every metric name must be in docs/metrics.md (tests/test_metric_names.py checks it).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from generated import write_or_check  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
DASHBOARD_DIR = REPO_ROOT / "grafana" / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "thermograd-prometheus"}
GRID_WIDTH = 24
SCHEMA_VERSION = 39

# The run's GPU first (value 1, via train_run_info's gpu_uuid), then every other device (value 0):
# sort_desc keeps that order, so the variable defaults to the GPU the selected run trains on.
# Over the dashboard's whole time range ($__range), so a finished run and its GPU stay selectable.
RUN_GPU_FIRST = (
    "sort_desc(max by (uuid) (label_replace(max_over_time(train_run_info{run_id=\"$run\"}[$__range]),"
    ' "uuid", "$1", "gpu_uuid", "(.+)")) or on (uuid) 0 * max by (uuid) (max_over_time(rle_device_info[$__range])))'
)
# Most recent run first, so the dashboard opens on the run in progress (or the last one).
RUNS_NEWEST_FIRST = "sort_desc(max by (run_id) (max_over_time(train_run_start_time_seconds[$__range])))"


def target(expr: str, legend: str = "", ref: str = "A", *, instant: bool = False, table: bool = False) -> dict:
    out: dict[str, Any] = {"datasource": DATASOURCE, "refId": ref, "expr": expr, "legendFormat": legend,
                           "range": not instant, "instant": instant}
    if table:
        out["format"] = "table"
    return out


def targets(*pairs: tuple[str, str]) -> list[dict]:
    """(expr, legend) pairs -> targets with refIds A, B, C, ..."""
    return [target(expr, legend, chr(ord("A") + i)) for i, (expr, legend) in enumerate(pairs)]


def right_axis(series_regex: str, unit: str, *, bars: bool = False) -> dict:
    """Field override: the matching series on a right-hand axis (optionally drawn as filled bars)."""
    props: list[dict] = [{"id": "custom.axisPlacement", "value": "right"}, {"id": "unit", "value": unit}]
    if bars:
        props += [{"id": "custom.drawStyle", "value": "bars"}, {"id": "custom.fillOpacity", "value": 40},
                  {"id": "color", "value": {"mode": "fixed", "fixedColor": "red"}}]
    return {"matcher": {"id": "byRegexp", "options": series_regex}, "properties": props}


@dataclass
class Panel:
    title: str
    targets: list[dict]
    width: int = 12
    height: int = 8
    kind: str = "timeseries"
    unit: str = "short"
    description: str = ""
    overrides: list[dict] = field(default_factory=list)
    options: dict = field(default_factory=dict)
    custom: dict = field(default_factory=dict)

    def render(self, panel_id: int, x: int, y: int) -> dict:
        defaults: dict[str, Any] = {"unit": self.unit}
        if self.kind == "timeseries":
            defaults["custom"] = {"lineWidth": 1, "fillOpacity": 0, "spanNulls": False,
                                  "showPoints": "never", **self.custom}
        elif self.custom:
            defaults["custom"] = self.custom
        return {
            "id": panel_id, "type": self.kind, "title": self.title, "description": self.description,
            "datasource": DATASOURCE, "gridPos": {"x": x, "y": y, "w": self.width, "h": self.height},
            "targets": self.targets,
            "fieldConfig": {"defaults": defaults, "overrides": self.overrides},
            "options": self.options or {"legend": {"displayMode": "list", "placement": "bottom"},
                                        "tooltip": {"mode": "multi", "sort": "none"}},
        }


def layout(panels: list[Panel]) -> list[dict]:
    """Flow layout: left to right, wrapping at the grid width; each row as tall as its tallest panel."""
    rendered, x, y, row_height = [], 0, 0, 0
    for panel_id, panel in enumerate(panels, start=1):
        if x + panel.width > GRID_WIDTH:
            x, y, row_height = 0, y + row_height, 0
        rendered.append(panel.render(panel_id, x, y))
        x += panel.width
        row_height = max(row_height, panel.height)
    return rendered


def query_variable(name: str, label: str, query: str, regex: str = "", *, multi: bool = False) -> dict:
    return {
        "name": name, "label": label, "type": "query", "datasource": DATASOURCE,
        # The classic string form: Grafana runs label_values()/query_result() exactly as written.
        "query": query, "definition": query, "regex": regex, "refresh": 2, "sort": 0,
        "multi": multi, "includeAll": multi, "allValue": ".+" if multi else None,
        "current": {}, "options": [], "hide": 0,
    }


def annotation(name: str, expr: str, color: str, title: str) -> dict:
    return {"name": name, "datasource": DATASOURCE, "enable": True, "iconColor": color, "expr": expr,
            "step": "1s", "titleFormat": title, "textFormat": "", "useValueForTime": False}


def dashboard(uid: str, title: str, description: str, panels: list[Panel], variables: list[dict],
              annotations: list[dict], tags: list[str]) -> dict:
    builtin = {"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True,
               "hide": True, "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts", "type": "dashboard"}
    return {
        "uid": uid, "title": title, "description": description, "tags": tags,
        "editable": False, "graphTooltip": 1, "timezone": "browser", "refresh": "5s",
        "time": {"from": "now-15m", "to": "now"}, "schemaVersion": SCHEMA_VERSION, "version": 1,
        "annotations": {"list": [builtin, *annotations]},
        "templating": {"list": variables},
        "panels": layout(panels),
    }


def coupling_dashboard() -> dict:
    run, dev = 'run_id="$run"', 'uuid="$uuid"'
    panels = [
        Panel("Training loss", targets((f"train_loss{{{run}}}", "loss, rank {{rank}}")),
              description="Loss of the last optimizer step, per rank."),
        Panel("Gradient norm (pre-clip)", targets(
            (f"train_grad_norm{{{run}}}", "last step, rank {{rank}}"),
            (f"rank:train_step_grad_norm:mean_interval{{{run}}}", "mean of the steps in each scrape interval, rank {{rank}}"),
            (f"rank:train_grad_norm:median10m{{{run}}}", "10-min median, rank {{rank}}")),
            description="Shaded regions: collapse of the selected device; perturbation bursts are annotated too."),
        Panel("RLE with collapse markers", targets(
            (f"rle_efficiency_smoothed{{{dev}}}", "RLE (5 s mean)"),
            (f"rle_efficiency{{{dev}}}", "RLE raw"),
            (f"rle_rolling_peak{{{dev}}}", "rolling peak"),
            (f"rle_collapsed{{{dev}}}", "collapsed")),
            overrides=[right_axis("collapsed", "bool_yes_no", bars=True)],
            description="RLE = util x stability / (A_load x (1 + 1/T_sustain)); red bars mark collapse."),
        Panel("Temperature", targets((f"rle_temperature_celsius{{{dev}}}", "temperature")), unit="celsius"),
        Panel("Power and A_load", targets(
            (f"rle_power_watts{{{dev}}}", "power"),
            (f"rle_power_limit_watts{{{dev}}}", "rated power"),
            (f"rle_load_ratio{{{dev}}}", "A_load")),
            unit="watt", overrides=[right_axis("A_load", "percentunit")]),
        Panel("T_sustain (s to the temperature limit)", targets((f"rle_sustain_seconds{{{dev}}}", "T_sustain")),
              unit="s", width=6),
        Panel("Throttle reasons", targets((f"rle_throttle_active{{{dev}}}", "{{reason}}")),
              kind="state-timeline", unit="bool_on_off", width=6,
              options={"showValue": "never", "mergeValues": True, "rowHeight": 0.8,
                       "legend": {"displayMode": "list", "placement": "bottom"}}),
        Panel("Steps per second", targets((f"rank:train_steps:rate1m{{{run}}}", "rank {{rank}}")),
              unit="short", width=8),
        Panel("Training energy efficiency (tokens per joule)", targets(
            (f"rank:train_tokens_per_joule:ratio_rate1m{{{run}}}", "rank {{rank}} on {{uuid}}")),
            unit="short", width=8,
            description="Tokens processed per joule the run's GPU drew (1-min rates; energy counter, so nothing "
                        "between samples is missed). Empty for a CPU run: it has no GPU energy to divide by."),
        Panel("Throttle cost (tokens/s lost to throttling)", targets(
            (f"rank:train_tokens_lost_to_throttling:rate10s{{{run}}}", "lost, rank {{rank}} on {{uuid}}"),
            (f"rank:train_tokens:rate10s{{{run}}}", "tokens/s now, rank {{rank}}"),
            (f"avg_over_time(rank:train_tokens:rate10s_unthrottled{{{run}}}[10m])", "unthrottled tokens/s, rank {{rank}}")),
            unit="short", width=12,
            description="The run's own unthrottled speed (10-s windows of the last 10 min with the GPU not throttled "
                        "by a thermal or power reason and no pause burst) minus its speed now, while its GPU is "
                        "throttled; 0 while it is not. Negative: not slower while throttled."),
        Panel("SM clock", targets((f"rle_sm_clock_hertz{{{dev}}}", "SM clock")), unit="hertz", width=12,
              description="Thermal and power throttling show as clock drops (see Throttle reasons)."),
        Panel("Firing alerts", [target('ALERTS{alertstate="firing"}', "", instant=True, table=True)],
              kind="table", width=8,
              options={"showHeader": True, "footer": {"show": False}}),
    ]
    variables = [
        query_variable("run", "Run", f"query_result({RUNS_NEWEST_FIRST})", '/run_id="([^"]+)"/'),
        query_variable("uuid", "Device (default: the run's GPU)", f"query_result({RUN_GPU_FIRST})",
                       '/uuid="([^"]+)"/'),
    ]
    annotations = [
        annotation("Collapse", f"rle_collapsed{{{dev}}} == 1", "red", "collapse on {{device}}"),
        annotation("Perturbation burst", f"train_perturbation_active{{{run}}} == 1", "orange",
                   "{{kind}} perturbation, rank {{rank}}"),
    ]
    return dashboard("thermograd-coupling", "Training ↔ thermal coupling",
                     "The seed's four panels on Prometheus's one clock, plus what explains them: power, A_load, "
                     "T_sustain, throttling, throughput, energy efficiency and alerts.",
                     panels, variables, annotations, ["thermograd", "training"])


def fleet_dashboard() -> dict:
    node = 'instance=~"$instance"'
    per_device = "{{instance}} {{device}}"
    panels = [
        Panel("RLE per device (5 s mean)", targets((f"rle_efficiency_smoothed{{{node}}}", per_device))),
        Panel("Temperature", targets((f"rle_temperature_celsius{{{node}}}", per_device)), unit="celsius"),
        Panel("Power", targets((f"rle_power_watts{{{node}}}", per_device)), unit="watt"),
        Panel("Collapse onsets in the last 10 min", targets(
            (f"device:rle_collapse_events:increase10m{{{node}}}", per_device))),
        Panel("Exporter up", targets((f'up{{job="exporter",{node}}}', "{{instance}}")),
              kind="state-timeline", unit="bool_yes_no", width=8,
              options={"showValue": "never", "mergeValues": True,
                       "legend": {"displayMode": "list", "placement": "bottom"}}),
        Panel("Exporter sampling rate and errors", targets(
            (f"instance:rle_exporter_samples:rate1m{{{node}}}", "samples/s {{instance}}"),
            (f"sum by (instance) (rate(rle_exporter_errors_total{{{node}}}[5m]))"
             f' or on (instance) 0 * up{{job="exporter",{node}}}', "errors/s {{instance}}")),
            unit="hertz", width=8),
        Panel("Sampling round duration (p99)", targets(
            ("histogram_quantile(0.99, sum by (le, instance) "
             f"(rate(rle_exporter_sample_duration_seconds_bucket{{{node}}}[5m])))", "{{instance}}")),
            unit="s", width=8),
        Panel("Devices", [target(f"rle_device_info{{{node}}}", "", instant=True, table=True)],
              kind="table", width=24, height=6, options={"showHeader": True, "footer": {"show": False}}),
    ]
    variables = [query_variable("instance", "Node", "label_values(rle_device_info, instance)", multi=True)]
    annotations = [annotation("Collapse", f"rle_collapsed{{{node}}} == 1", "red", "collapse on {{instance}} {{device}}")]
    return dashboard("thermograd-fleet", "GPU fleet",
                     "Every device every exporter reports: efficiency, heat, power, collapses, exporter health.",
                     panels, variables, annotations, ["thermograd", "fleet"])


DASHBOARDS = {"training-thermal-coupling.json": coupling_dashboard, "gpu-fleet.json": fleet_dashboard}


def render(build) -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a committed dashboard differs")
    parser.add_argument("--out", type=Path, default=DASHBOARD_DIR)
    args = parser.parse_args(argv)
    outputs = {args.out / name: render(build) for name, build in DASHBOARDS.items()}
    return write_or_check(outputs, check=args.check, script="scripts/build_dashboards.py")


if __name__ == "__main__":
    sys.exit(main())
