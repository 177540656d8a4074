"""Grafana provisioning and the generated dashboards: static checks, and every query live for every hardware source.

The live part runs one small stack: a real Prometheus (the repository's rules, `for:` shortened) scraping
thermograd's exporter (sim backend), the dcgm-exporter and nvidia_gpu_exporter stand-ins
(testkit/standin_exporter.py) and a real trainer (tiny model). All three exporters describe ONE GPU, as on a
node that runs them side by side: the stand-ins get its NVML UUID, and the sim exporter's `sim-0` is
relabelled to it at scrape time (a real NVML exporter writes the NVML UUID itself). The trainer trains on
that GPU, so the run <-> GPU join is exercised for every source.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import free_port
from test_stack_integration import NEEDS_UNTHROTTLED_WINDOW, fast_alert_rules

from scripts import build_dashboards
from testkit import stack as sl

ROOT = Path(__file__).resolve().parents[1]

PROVISIONING = ROOT / "grafana" / "provisioning"
DASHBOARDS = {name: build() for name, build in build_dashboards.DASHBOARDS.items()}
# Dummy values: enough for promtool to parse every expression.
DUMMY_VARIABLES = {"$run": "run-1", "$uuid": "sim-0", "$rank": "0", "$source": "dcgm", "$instance": ".+",
                   "$__range": "1h"}
LABEL_VALUES = re.compile(r"label_values\((.+), *(\w+)\)", flags=re.S)


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
        elif match := LABEL_VALUES.fullmatch(query):
            exprs.append(f"group by ({match.group(2)}) ({match.group(1)})")
    return exprs


def test_committed_dashboards_are_up_to_date():
    assert build_dashboards.main(["--check"]) == 0, "run: python -m scripts.build_dashboards"


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


def panel_exprs(dashboard: dict) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p["targets"]]


def test_coupling_dashboard_has_the_seed_panels_and_more():
    dashboard = DASHBOARDS["training-thermal-coupling.json"]
    exprs = " ".join(panel_exprs(dashboard))
    for metric in ("train_loss", "train_grad_norm", "rle_efficiency_smoothed", "rle_collapsed",
                   "device:gpu_temperature_celsius:max", "device:gpu_power_watts:max",
                   "device:gpu_power_limit_watts:max", "rle_sustain_seconds", "device:gpu_throttle_active:max",
                   "device:gpu_utilization_ratio:max", "device:gpu_sm_clock_hertz:max", "rank:train_steps:rate1m",
                   "rank:train_tokens_per_joule:ratio_rate1m", "ALERTS"):
        assert metric in exprs, metric
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert list(variables) == ["run", "source", "uuid", "rank"]  # each refers only to the ones before it
    # the device defaults to the run's GPU: the join through train_run_info's gpu_uuid, within the source
    assert "gpu_uuid" in variables["uuid"]["query"] and "$run" in variables["uuid"]["query"]
    assert "$source" in variables["uuid"]["query"] and "gpu_uuid" in variables["source"]["query"]
    annotations = [a["expr"] for a in dashboard["annotations"]["list"] if "expr" in a]
    assert any("rle_collapsed" in a for a in annotations)


def test_coupling_dashboard_has_the_job_row():
    """Ranks x time (compute-time ratio to the job's median rank) and the slowest rank's GPU, from any source."""
    dashboard = DASHBOARDS["training-thermal-coupling.json"]
    heatmaps = [p for p in dashboard["panels"] if p["type"] == "heatmap"]
    assert len(heatmaps) == 1 and heatmaps[0]["options"]["calculate"] is False
    assert "rank:train_step_compute_seconds:ratio_to_median1m" in heatmaps[0]["targets"][0]["expr"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert "sort_desc" in variables["rank"]["query"] and "ratio_to_median1m" in variables["rank"]["query"]
    job = [p for p in dashboard["panels"] if p["title"].startswith("Job: the selected rank")]
    exprs = " ".join(t["expr"] for p in job for t in p["targets"])
    for metric in ("device:gpu_temperature_celsius:max", "device:gpu_sm_clock_hertz:max",
                   "device:gpu_throttle_active:max"):
        assert metric + '{source="$source"}' in exprs, metric
    assert 'rank="$rank"' in exprs and "gpu_uuid" in exprs


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_hardware_panels_follow_the_source_and_rle_panels_say_they_are_thermograds(name: str):
    dashboard = DASHBOARDS[name]
    source = {v["name"]: v for v in dashboard["templating"]["list"]}["source"]
    matcher = 'source=~"$source"' if source["multi"] else 'source="$source"'
    for panel in dashboard["panels"]:
        exprs = [t["expr"] for t in panel["targets"]]
        for expr in exprs:
            # every normalised hardware series is read for the selected source(s) only
            for selector in re.findall(r"(?:device|instance):gpu_\w+:\w+(?:\{[^}]*\})?", expr):
                assert matcher in selector, f"{panel['title']}: {selector}"
        if any(re.search(r"(?<![\w:])rle_(efficiency|rolling_peak|collapse|sustain)", e) for e in exprs):
            assert "thermograd's exporter only" in panel["description"], panel["title"]


def test_fleet_dashboard_covers_every_device_and_exporter_health():
    exprs = " ".join(panel_exprs(DASHBOARDS["gpu-fleet.json"]))
    for metric in ("rle_efficiency_smoothed", "device:gpu_temperature_celsius:max", "device:gpu_power_watts:max",
                   "device:gpu_utilization_ratio:max", "device:gpu_throttle_active:max",
                   "device:rle_collapse_events:increase10m", 'up{job="exporter"', "instance:gpu_exporter:group",
                   "rle_exporter_errors_total"):
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


# ------------------------------------------------------------------------------------- live, every source
GPU_UUID = "GPU-5e8f0c2a-1b3d-4c6e-8f90-a1b2c3d4e5f6"  # NVML's spelling; nvidia-smi's stand-in drops "GPU-"
RUN_ID = "dashboards-run"
STEPS = 30
STANDIN = [sys.executable, "-m", "testkit.standin_exporter"]  # the supervisor runs it from ROOT
# dcgm-exporter collects every 30 s by default; 5 s keeps this test short and still repeats values between
# scrapes. --power-limit: the power limit and violation counters a user adds to its counters CSV.
STANDIN_FLAGS = {"dcgm": ["--power-limit", "--collect-interval-s", "5"], "nvidia-smi": []}


@dataclass
class Live:
    prom: sl.PrometheusAPI
    start_s: float
    end_s: float


def _prometheus_config(tmp: Path, ports: dict[str, int]) -> Path:
    """The repository's prometheus.yml and rules (alerts' `for:` shortened), plus a job per stand-in; the sim
    exporter's GPU relabelled to GPU_UUID (see the module docstring)."""
    loopback = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
    path = sl.render_prometheus_config(
        tmp, {"exporter": loopback["exporter"], "trainer": loopback["trainer"]}, None, interval="1s",
        evaluation_interval="1s", rule_files=[sl.RULES_DIR / "recording.yml", sl.RULES_DIR / "sources.yml",
                                              fast_alert_rules(tmp)])
    config = yaml.safe_load(path.read_text())
    for job in config["scrape_configs"]:
        if job["job_name"] == "exporter":
            job["metric_relabel_configs"] = [{"source_labels": ["uuid"], "regex": "sim-0", "target_label": "uuid",
                                              "replacement": GPU_UUID}]
    config["scrape_configs"] += [{"job_name": f"{fmt}-exporter", "scrape_interval": "1s", "scrape_timeout": "1s",
                                  "static_configs": [{"targets": [loopback[fmt]]}]} for fmt in STANDIN_FLAGS]
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("dashboards")
    ports = {name: free_port() for name in ("prometheus", "exporter", "trainer", *STANDIN_FLAGS)}
    binary = sl.find_binary("prometheus")
    if binary is None:
        pytest.fail(f"prometheus not found; install with: {sl.install_hint(['prometheus'])}")
    with sl.Supervisor() as supervisor:
        supervisor.start("prometheus", sl.prometheus_argv(binary, _prometheus_config(tmp, ports), tmp / "tsdb",
                                                          ports["prometheus"]), tmp / "prometheus.log")
        # A constant load: the default ('host') follows this machine's CPU, idle once the trainer exits, and the
        # base-unit checks read the window's last value.
        supervisor.start("exporter", [*sl.sim_exporter_argv(ports["exporter"]), "--sim-load", "0.8"],
                         tmp / "exporter.log")
        for fmt, flags in STANDIN_FLAGS.items():
            supervisor.start(fmt, [*STANDIN, "--format", fmt, "--port", str(ports[fmt]),
                                   "--uuid", GPU_UUID, *flags], tmp / f"{fmt}.log")
        prom = sl.PrometheusAPI(f"http://127.0.0.1:{ports['prometheus']}")
        sl.wait_http_ok(f"{prom.url}/-/ready", 60, supervisor=supervisor)
        sl.wait_until(lambda: prom.scalar(f'count(device:gpu_temperature_celsius:max{{uuid="{GPU_UUID}"}})') == 3,
                      90, "the GPU's temperature from all three sources", supervisor=supervisor)
        start_s = time.time()
        trainer = supervisor.start("trainer", sl.tiny_trainer_argv(ports["trainer"], tmp / "trainer", RUN_ID, STEPS,
                                                                   gpu_uuid=GPU_UUID, linger_s=3),
                                   tmp / "trainer.log")
        sl.wait_until(lambda: prom.scalar(f'max(train_steps_total{{run_id="{RUN_ID}"}})') == STEPS, 240,
                      f"Prometheus to scrape step {STEPS}", supervisor=supervisor)
        # The trainer exits after its linger: TrainerTargetDown fires, so the alerts table has a row.
        assert trainer.wait(60) == 0, trainer.tail()
        sl.wait_until(lambda: prom.query('ALERTS{alertname="TrainerTargetDown",alertstate="firing"}'), 60,
                      "TrainerTargetDown to fire", supervisor=supervisor, finished=[trainer])
        yield Live(prom, *sl.query_window(start_s))


def _grafana_text(metric: dict[str, str]) -> str:
    """A query_result() line as Grafana matches the variable's regex against it."""
    return json.dumps(metric).replace('": "', '="')


def variable_options(live: Live, variable: dict, values: dict[str, str]) -> list[str]:
    """What Grafana offers: the variable's query (earlier variables substituted) run against Prometheus."""
    query = substitute(variable["query"], {f"${name}": value for name, value in values.items()})
    if match := re.fullmatch(r"query_result\((.*)\)", query, flags=re.S):
        pattern = variable["regex"].strip("/")
        lines = [_grafana_text(r["metric"]) for r in live.prom.query(match.group(1), live.end_s)]
        return [found.group(1) for line in lines if (found := re.search(pattern, line))]
    selector, label = LABEL_VALUES.fullmatch(query).groups()
    series = live.prom.get("/api/v1/series", **{"match[]": selector, "start": live.start_s, "end": live.end_s})
    return sorted({s[label] for s in series if label in s})


def variable_settings(live: Live, dashboard: dict) -> list[dict[str, str]]:
    """Every value of `source` (and All, where it is multi), each with the defaults Grafana then picks for
    the other variables: the first option, or All."""
    settings = [{"__range": f"{int(live.end_s - live.start_s)}s"}]
    for variable in dashboard["templating"]["list"]:
        expanded = []
        for values in settings:
            options = variable_options(live, variable, values)
            assert options, f"{dashboard['title']}: variable {variable['name']} has no options with {values}"
            every = [variable["allValue"]] if variable["includeAll"] else []
            choices = options + every if variable["name"] == "source" else every or options[:1]
            expanded += [{**values, variable["name"]: choice} for choice in choices]
        settings = expanded
    return settings



@pytest.mark.integration
@pytest.mark.slow
def test_source_defaults_to_one_reporting_the_run_gpu_and_the_device_to_that_gpu(live: Live):
    coupling = DASHBOARDS["training-thermal-coupling.json"]
    run, source, uuid, _rank = coupling["templating"]["list"]
    assert variable_options(live, run, {"__range": "1h"})[0] == RUN_ID
    values = {"__range": "1h", "run": RUN_ID}
    # all three report the run's GPU: thermograd's exporter first (the RLE panels share its series)
    options = variable_options(live, source, values)
    assert options[0] == "thermograd" and sorted(options) == sorted(build_dashboards.SOURCES)
    # the run <-> GPU join (train_run_info's gpu_uuid) works for every source's own uuid spelling
    for name in build_dashboards.SOURCES:
        assert variable_options(live, uuid, {**values, "source": name}) == [GPU_UUID], name


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_every_panel_returns_data_for_every_source(live: Live, name: str):
    dashboard = DASHBOARDS[name]
    settings = variable_settings(live, dashboard)
    assert {values["source"] for values in settings} >= set(build_dashboards.SOURCES)
    empty, checked = [], set()
    for values in settings:
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                expr = substitute(target["expr"], {f"${k}": v for k, v in values.items()})
                if expr in checked:
                    continue
                checked.add(expr)
                if not live.prom.series_range(expr, live.start_s, live.end_s, 1) and not any(
                        rule in expr for rule in NEEDS_UNTHROTTLED_WINDOW):
                    empty.append(f"source={values['source']} / {panel['title']}: {expr}")
    assert empty == []


# (expression, lowest, highest) in base units: a unit slip (MHz for Hz, % for ratio, mJ for J) falls outside.
BASE_UNIT_RANGES = [
    ("device:gpu_temperature_celsius:max", 10, 110),
    ("device:gpu_power_watts:max", 1, 400),
    ("device:gpu_power_limit_watts:max", 250, 250),
    ("device:gpu_utilization_ratio:max", 0.01, 1),
    ("device:gpu_sm_clock_hertz:max", 1e8, 3e9),
    ("device:gpu_energy_joules:rate1m", 1, 400),
    (f'rank:train_tokens_per_joule:ratio_rate1m{{run_id="{RUN_ID}"}}', 1e-3, 1e6),
]


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize(("expr", "lowest", "highest"), BASE_UNIT_RANGES, ids=[r[0] for r in BASE_UNIT_RANGES])
def test_every_source_lands_in_base_units(live: Live, expr: str, lowest: float, highest: float):
    """The last value of each source in the window (the run's series end when its trainer exits)."""
    result = live.prom.series_range(expr, live.start_s, live.end_s, 1)
    by_source = {r["metric"]["source"]: float(r["values"][-1][1]) for r in result}
    assert sorted(by_source) == sorted(build_dashboards.SOURCES)
    assert all(lowest <= value <= highest for value in by_source.values()), by_source
