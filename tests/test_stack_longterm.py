"""Long-term storage, for real: a real Prometheus scrapes the real exporter (sim backend) and a real trainer
run, and `remote_write`s every sample — through the commented option of prometheus/prometheus.yml, enabled
here — to a real VictoriaMetrics. The analysis of that run against VictoriaMetrics's Prometheus-compatible
API then gives the same verdict, the same statistics and byte-identical figures as against Prometheus.

VictoriaMetrics serves /api/v1/targets and /api/v1/status/config empty, so the analysis takes its step from
the run's own sample spacing there, and says so. The flags that make VictoriaMetrics's query_range equal to
Prometheus's are testkit.stack.VICTORIAMETRICS_QUERY_FLAGS (see docs/stack.md, "Long-term storage").
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import free_port
from test_stack_compose import BASE, load
from test_stack_config import run_ok, tool
from test_stack_integration import require_binary

from scripts import build_longterm
from testkit import stack as sl

ROOT = Path(__file__).resolve().parents[1]

RUN_ID = "longterm-run"
TRAIN_S = 30
PERTURB = "every=8s,duration=2s,lr_mult=10"
# Twice the stack's rate (exporter at 2 Hz): enough points in a 30 s run for every test to reach a
# verdict (an effective n of 30 and more), and a step the fallback must find in the samples, not assume.
SCRAPE_INTERVAL = "500ms"
FIGURES = ("coupling.png", "crosscorr.png")
STACK_SERIES = '{__name__=~"train_.+|rle_.+"}'
# VictoriaMetrics stores a block's values as decimal mantissas with a common exponent, so a value comes
# back with 9 to 12 significant digits (Prometheus: a float64's ~16); in CI a gradient norm of
# 1.2850923538208008 came back as 1.2850923499995588 (3e-9 relative). A statistic of well-conditioned
# inputs moves by as much as its inputs do: a pair's t differed by 1.3e-9 relative in one CI run. So the
# statistics of the same samples are compared at 1e-8, three times the worst input difference seen and
# still far under any digit a report prints; nothing else may differ.
TOL = 1e-8
# The run length that would settle an inconclusive pair is n (z se / (atanh 0.3 - |z|))^2: an extrapolation
# that multiplies a difference of z by 2 / (atanh 0.3 - |z|), hundreds of times when |z| is near the
# band. Compared at 1e-6 relative.
TOL_BY_KEY = {"run_length_to_settle_s": 1e-6}
# Granger's F is the ratio of the small sum of squares the other series' lags explain to the residual one:
# on first differences of 12-digit levels it moves ~1e-9 relative (measured: up to 5e-9 over 200 short
# synthetic runs whose inputs were rounded to 12 significant digits, against 2e-10 for a lag-0 r).
# A series' own range and mean as each store returns them are compared at TOL too (see above).
TOL_BY_PREFIX = {".granger[": 1e-6}
COMPARED = ("verdict", "verdicts", "window", "series", "pairs", "events", "granger", "perturbation",
            "positive_control", "throttle_cost", "warmup")


@dataclass
class Analysed:
    prometheus: dict
    victoriametrics: dict
    out: dict[str, Path]
    samples: int


def raw_samples(api: sl.PrometheusAPI, at_s: float, span_s: int) -> int:
    """Samples of the stack's series in (at - span, at]. VictoriaMetrics also returns the staleness markers
    Prometheus wrote when the trainer went away (NaN); Prometheus's own range selection hides them."""
    series = api.query(f"{STACK_SERIES}[{span_s}s]", at_s)
    return sum(value.lower() != "nan" for one in series for _, value in one["values"])


def analyse(url: str, start_s: int, end_s: int, out: Path) -> dict:
    result = subprocess.run(sl.python_module_argv(
        "thermograd.analysis", "--prometheus", url, "--run", RUN_ID, "--start", str(start_s), "--end", str(end_s),
        "--surrogates", "200", "--max-lag", "5s", "--out", str(out), "--quiet"),
                            capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert result.returncode == 0, f"analysis against {url} failed:\n{result.stderr[-3000:]}"
    return json.loads((out / "report.json").read_text())


@pytest.fixture(scope="module")
def analysed(tmp_path_factory: pytest.TempPathFactory) -> Analysed:
    tmp = tmp_path_factory.mktemp("longterm")
    ports = {name: free_port() for name in ("prometheus", "victoriametrics", "exporter", "trainer")}
    loopback = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
    urls = {name: f"http://{loopback[name]}" for name in ("prometheus", "victoriametrics")}
    logs = tmp / "logs"
    prom_config = sl.render_prometheus_config(
        tmp / "prometheus", {"exporter": loopback["exporter"], "trainer": loopback["trainer"]}, None,
        interval=SCRAPE_INTERVAL, rule_files=[], remote_write_url=f"{urls['victoriametrics']}/api/v1/write")
    with sl.Supervisor() as supervisor:
        # All at once: the trainer's start-up (importing torch) overlaps the others'. Whatever of the run
        # Prometheus scrapes is the run, for both backends alike.
        supervisor.start("victoriametrics", sl.victoriametrics_argv(
            require_binary("victoriametrics"), tmp / "vm-data", ports["victoriametrics"]), logs / "victoriametrics.log")
        supervisor.start("prometheus", sl.prometheus_argv(require_binary("prometheus"), prom_config,
                                                          tmp / "tsdb", ports["prometheus"]), logs / "prometheus.log")
        supervisor.start("exporter", sl.sim_exporter_argv(ports["exporter"], sample_hz=2), logs / "exporter.log")
        start_s = int(time.time())
        trainer = supervisor.start("trainer", sl.tiny_trainer_argv(
            ports["trainer"], tmp / "trainer", RUN_ID, 1_000_000, linger_s=3, perturb=PERTURB), logs / "trainer.log")
        prom, vm = sl.PrometheusAPI(urls["prometheus"]), sl.PrometheusAPI(urls["victoriametrics"])
        # A run of TRAIN_S seconds whatever the machine's pace (as `make demo` does): from the first
        # scraped step, then SIGINT (the trainer finishes its step, lingers, exits 0).
        sl.wait_until(lambda: prom.query(f'train_steps_total{{run_id="{RUN_ID}"}} > 0'), 120,
                      "the first scraped training step", supervisor=supervisor)
        first_step_s = time.monotonic()
        sl.wait_until(lambda: time.monotonic() - first_step_s > TRAIN_S, TRAIN_S + 5, "the run",
                      supervisor=supervisor, interval_s=1)
        trainer.signal(signal.SIGINT)
        assert trainer.wait(60) == 0, f"trainer failed:\n{trainer.tail()}"
        end_s = int(time.time())
        supervisor.check(except_for=[trainer])
        # Everything Prometheus holds for the window must have arrived in VictoriaMetrics (remote_write
        # sends a batch at least every batch_send_deadline, 5 s).
        at_s, span_s = end_s, end_s - start_s + 60
        expected = raw_samples(prom, at_s, span_s)
        sl.wait_until(lambda: raw_samples(vm, at_s, span_s) == expected, 60,
                      f"VictoriaMetrics to hold Prometheus's {expected} raw samples", supervisor=supervisor,
                      finished=[trainer])
        out = {name: tmp / f"analysis-{name}" for name in urls}
        reports = {name: analyse(url, start_s, end_s, out[name]) for name, url in urls.items()}
    return Analysed(reports["prometheus"], reports["victoriametrics"], out, expected)


@pytest.mark.integration
@pytest.mark.slow
def test_victoriametrics_holds_every_sample_prometheus_scraped(analysed: Analysed):
    assert analysed.samples > 1000  # trainer and exporter series for the whole run, 1 s apart


def differences(prom: object, vm: object, path: str = "") -> tuple[list[str], float]:
    """Where two reports differ other than by a float's last digits, and the largest difference of an r."""
    if isinstance(prom, dict) and isinstance(vm, dict):
        if set(prom) != set(vm):
            return [f"{path}: keys {sorted(set(prom) ^ set(vm))}"], 0.0
        parts = [differences(prom[k], vm[k], f"{path}.{k}") for k in prom]
    elif isinstance(prom, list) and isinstance(vm, list) and len(prom) == len(vm):
        parts = [differences(p, v, f"{path}[{i}]") for i, (p, v) in enumerate(zip(prom, vm, strict=True))]
    elif isinstance(prom, float) and isinstance(vm, float):
        r_diff = abs(prom - vm) if path.endswith((".r", "_r", "rho")) else 0.0
        tol = TOL_BY_KEY.get(path.rsplit(".", 1)[-1],
                             next((t for prefix, t in TOL_BY_PREFIX.items() if path.startswith(prefix)), TOL))
        return ([] if math.isclose(prom, vm, rel_tol=tol, abs_tol=TOL) else [f"{path}: {prom!r} != {vm!r}"]), r_diff
    else:
        return ([] if prom == vm else [f"{path}: {prom!r} != {vm!r}"]), 0.0
    return [d for found, _ in parts for d in found], max((diff for _, diff in parts), default=0.0)


@pytest.mark.integration
@pytest.mark.slow
def test_same_verdict_and_statistics(analysed: Analysed):
    prom, vm = analysed.prometheus, analysed.victoriametrics
    assert prom["verdict"]["strength"] != "insufficient data"  # every test ran: a comparison of real numbers
    assert vm["verdict"] == prom["verdict"]
    assert vm["window"] == prom["window"]
    # r, p and CI of every pair with enough data (loss <-> RLE always: a gauge at every scrape; the
    # gradient-norm pairs when the machine trains faster than two steps a second).
    assert any(p["primary"]["status"] == "ok" and p["primary"]["r"] is not None for p in prom["pairs"])
    found, worst_r = differences({k: prom[k] for k in COMPARED}, {k: vm[k] for k in COMPARED})
    assert found == []
    print(f"largest difference of an r between the backends: {worst_r:.1e}")


@pytest.mark.integration
@pytest.mark.slow
def test_same_figures_byte_for_byte(analysed: Analysed):
    """Same grid (Prometheus's evaluation timestamps at whole steps: VictoriaMetrics evaluates the same
    query_range at the same instants), values within 1e-11: under a 1/256 pixel, so the same pixels."""
    for figure in FIGURES:
        prom = (analysed.out["prometheus"] / figure).read_bytes()
        assert (analysed.out["victoriametrics"] / figure).read_bytes() == prom, figure


@pytest.mark.integration
@pytest.mark.slow
def test_victoriametrics_step_comes_from_the_samples_and_the_report_says_so(analysed: Analysed):
    prom, vm = analysed.prometheus["step"], analysed.victoriametrics["step"]
    assert prom["seconds"] == vm["seconds"] == 0.5
    assert "/api/v1/targets" in prom["source"]
    assert vm["source"] == "median spacing of the run's raw samples"
    assert any("serves no scrape interval" in note for note in analysed.victoriametrics["notes"])
    assert not any("serves no scrape interval" in note for note in analysed.prometheus["notes"])


# ------------------------------------------------------------------ the same setup, for compose (static)
def test_the_compose_config_is_prometheus_yml_with_the_tested_option_enabled():
    assert build_longterm.OUT.read_text() == build_longterm.render(), "stale: run python -m scripts.build_longterm"
    config = yaml.safe_load(build_longterm.OUT.read_text())
    assert config["remote_write"][0]["url"] == "http://victoriametrics:8428/api/v1/write"
    assert "remote_write" not in yaml.safe_load(sl.PROMETHEUS_CONFIG.read_text())  # off by default
    run_ok(tool("promtool"), "check", "config", build_longterm.OUT)


def test_the_compose_victoriametrics_runs_with_the_tested_query_flags():
    service = load(BASE)["services"]["victoriametrics"]
    assert service["profiles"] == ["longterm"]
    assert set(sl.VICTORIAMETRICS_QUERY_FLAGS) <= set(service["command"])
