"""The pure parts of reading hardware from dcgm-exporter and nvidia_gpu_exporter: the sources' metric set (data),
the run <-> GPU join (UUID spellings, pods, fallbacks), the collection-interval detector, the RLE computed with
the exporter's own engine, and the PromQL built for each source."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_metric_names import DOCUMENTED

from thermograd.analysis import table as T
from thermograd.analysis.catalog import SERIES, SOURCES
from thermograd.analysis.errors import InputError
from thermograd.analysis.sources.devices import RunIdentity, choose, gpus, matches, normalise_uuid
from thermograd.analysis.sources.fetch import series_exprs
from thermograd.analysis.sources.foreign import engine_columns
from thermograd.analysis.sources.intervals import change_spacing_s, collection_interval_s, grid_step_s
from thermograd.exporter.backends.sim import SIM_PROFILES, SimGpu
from thermograd.exporter.engine import RleEngine
from thermograd.exporter.labcsv import LabRow
from thermograd.exporter.recompute import score

DATA = Path(__file__).resolve().parent / "data"
FIXTURES = {"dcgm": DATA / "dcgm-exporter.prom", "nvidia-smi": DATA / "nvidia-gpu-exporter.prom"}
OPT_IN = {"DCGM_FI_DEV_POWER_MGMT_LIMIT", "DCGM_FI_DEV_POWER_VIOLATION", "DCGM_FI_DEV_THERMAL_VIOLATION",
          "nvidia_smi_energy_joules_total"}  # not in the default counters / the default (exec) backend


def fixture_label_sets(fmt: str) -> dict[str, list[dict[str, str]]]:
    """Label sets by series name as Prometheus stores them (prometheus_client's parser appends `_total` to a
    counter's samples that lack it, e.g. DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION: undone here)."""
    text = FIXTURES[fmt].read_text()
    written = set(re.findall(r"^([A-Za-z_:][A-Za-z0-9_:]*)[{ ]", text, flags=re.M))
    out: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = sample.name if sample.name in written else sample.name.removesuffix("_total")
            out.setdefault(name, []).append(dict(sample.labels))
    return out


def run(gpu_uuid: str = "", pod: str = "", namespace: str = "") -> RunIdentity:
    return RunIdentity("r1", "0", gpu_uuid, pod, namespace)


# --- the metric set is data ------------------------------------------------------------------------------------
def test_sources_are_data_in_auto_order_and_every_name_is_documented():
    assert list(SOURCES) == ["thermograd", "dcgm", "nvidia-smi"]
    assert not SOURCES["thermograd"].engine and SOURCES["dcgm"].engine and SOURCES["nvidia-smi"].engine
    names = {m for s in SOURCES.values() for r in s.rows for m in r.metrics}
    names |= {m for s in SOURCES.values() for m in (s.identity, *s.power_limits)}
    assert sorted(names - DOCUMENTED) == []
    device_columns = {s.column for s in SERIES if s.source == "device"}
    for name in ("dcgm", "nvidia-smi"):
        columns = {r.column for r in SOURCES[name].rows}
        # the engine's columns are computed, never read; everything else the analysis uses is mapped
        assert columns == device_columns - {T.RLE, T.A_LOAD, T.COLLAPSED}
    scales = {(s, r.column): r.scale for s in ("dcgm", "nvidia-smi") for r in SOURCES[s].rows}
    assert scales[("dcgm", "utilization")] == 0.01 and scales[("dcgm", "sm_clock")] == 1e6
    assert scales[("dcgm", "energy_power")] == 1e-3 and scales[("nvidia-smi", "utilization")] == 1


@pytest.mark.parametrize("fmt", sorted(FIXTURES))
def test_the_fixture_holds_every_default_metric_the_analysis_reads(fmt: str):
    present = set(fixture_label_sets(fmt))
    source = SOURCES[fmt]
    read = {r.metrics[0] for r in source.rows if len(r.metrics) == 1} | {source.identity}
    assert sorted(read - OPT_IN - present) == []
    # the throttle reasons: the fixture carries the current names of the alternatives
    assert fmt == "dcgm" or present & set(source.row("throttled").metrics)


# --- the run <-> GPU join ----------------------------------------------------------------------------------------
def test_uuid_normalisation():
    assert normalise_uuid("GPU-A9E1c0d4-83b2") == normalise_uuid("a9e1c0d4-83b2") == "a9e1c0d4-83b2"
    assert normalise_uuid(" gpu-ab ") == "ab" and normalise_uuid("sim-0") == "sim-0"


def test_fixtures_join_by_the_nvml_uuid_whatever_the_spelling():
    trainer = run("GPU-a9e1c0d4-83b2-4f57-b6e8-2d4c9f0a1357")  # NVML's spelling, as the trainer reports it
    dcgm, nvsmi = SOURCES["dcgm"], SOURCES["nvidia-smi"]
    dcgm_sets = fixture_label_sets("dcgm")[dcgm.identity]
    nvsmi_sets = fixture_label_sets("nvidia-smi")[nvsmi.identity]
    assert len(gpus(dcgm, dcgm_sets)) == 2 and len(gpus(nvsmi, nvsmi_sets)) == 1
    found, how = matches(dcgm, dcgm_sets, trainer, None)
    assert how == "gpu_uuid" and [(d.uuid_label, d.uuid, d.names) for d in found] == [
        ("UUID", "GPU-a9e1c0d4-83b2-4f57-b6e8-2d4c9f0a1357", ("1", "nvidia1"))]
    found, _ = matches(nvsmi, nvsmi_sets, trainer, None)
    assert [(d.uuid_label, d.uuid, d.device) for d in found] == [("uuid", "a9e1c0d4-83b2-4f57-b6e8-2d4c9f0a1357", "0")]
    # auto: thermograd absent, dcgm before nvidia-smi
    choice = choose([(SOURCES["thermograd"], []), (dcgm, dcgm_sets), (nvsmi, nvsmi_sets)], trainer, None)
    assert choice.source.name == "dcgm" and choice.joined_by == "gpu_uuid" and choice.notes == ()


def test_pod_join_when_gpu_uuid_is_empty():
    dcgm = SOURCES["dcgm"]
    sets = fixture_label_sets("dcgm")[dcgm.identity]
    choice = choose([(dcgm, sets)], run(pod="gpt2-run-0", namespace="ml-team"), None)
    assert choice.joined_by == "pod" and choice.device.uuid.startswith("GPU-a9e1")
    assert "pod ml-team/gpt2-run-0" in choice.notes[0]
    # the same pod name in another namespace is another pod: no join, and two GPUs leave no fallback
    with pytest.raises(InputError, match="cannot tell which device"):
        choose([(dcgm, sets)], run(pod="gpt2-run-0", namespace="other"), None)
    # Prometheus's rename (the target had its own pod label), then the example ServiceMonitor's relabelling
    renamed = [{("exported_" + k if k in ("pod", "namespace") else k): v for k, v in s.items()} for s in sets]
    relabelled = [{"uuid": s["UUID"], "device": s["gpu"],
                   **{"workload_" + k: s[k] for k in ("pod", "namespace") if k in s}} for s in sets]
    for label_sets in (renamed, relabelled):
        choice = choose([(dcgm, label_sets)], run(pod="gpt2-run-0", namespace="ml-team"), None)
        assert choice.device.uuid.startswith("GPU-a9e1") and choice.device.device == "1"


def test_device_flag_fallback_and_ambiguity():
    thermograd, nvsmi = SOURCES["thermograd"], SOURCES["nvidia-smi"]
    rle = [{"uuid": "sim-0", "device": "0", "kind": "gpu"}, {"uuid": "cpu-host", "device": "cpu", "kind": "cpu"}]
    nv = [{"uuid": "ab12", "index": "0"}, {"uuid": "cd34", "index": "1"}]
    # --device by any UUID spelling or by a device label
    assert choose([(thermograd, rle), (nvsmi, nv)], run(), "GPU-CD34").device.uuid == "cd34"
    assert choose([(nvsmi, nv)], run(), "1").device.uuid == "cd34"
    with pytest.raises(InputError, match="device 'GPU-x' not found"):
        choose([(thermograd, rle), (nvsmi, nv)], run(), "GPU-x")
    # no gpu_uuid: the only GPU (CPU devices do not count), first source first
    choice = choose([(thermograd, rle), (nvsmi, nv)], run(gpu_uuid=""), None)
    assert choice.device.uuid == "sim-0" and "only GPU" in choice.notes[0]
    with pytest.raises(InputError, match="thermograd: 0, nvidia-smi: 2"):
        choose([(thermograd, []), (nvsmi, nv)], run(gpu_uuid=""), None)
    # a gpu_uuid no source reports: never another GPU in its place, even the only one
    with pytest.raises(InputError, match="which no .* series reports .*is its node scraped"):
        choose([(thermograd, rle), (nvsmi, [])], run(gpu_uuid="GPU-unknown"), None)
    # one GPU in several series (its pod changed; a relabelling added uuid beside UUID): one device
    twice = [{"UUID": "GPU-ab", "gpu": "0", "pod": "a"}, {"UUID": "GPU-ab", "gpu": "0", "pod": "b"},
             {"uuid": "GPU-AB", "gpu": "0"}]
    assert choose([(SOURCES["dcgm"], twice)], run(gpu_uuid="ab"), None).device.uuid == "GPU-ab"
    # two GPUs matching (index 0 on two hosts; a pod holding two GPUs): ambiguous, never a guess
    hosts = [{"UUID": "GPU-ab", "gpu": "0", "pod": "p"}, {"UUID": "GPU-cd", "gpu": "0", "pod": "p"}]
    with pytest.raises(InputError, match="ambiguous: dcgm has 2 GPUs matching by --device"):
        choose([(SOURCES["dcgm"], hosts)], run(), "0")
    with pytest.raises(InputError, match="ambiguous: dcgm has 2 GPUs matching by pod"):
        choose([(SOURCES["dcgm"], hosts)], run(pod="p"), None)


# --- repeated values ---------------------------------------------------------------------------------------------
def scraped(collect_s: float, scrape_s: float = 1.0, n: int = 300, jitter_s: float = 0.05, seed: int = 0):
    """Raw samples of a source collected every collect_s and scraped every scrape_s (with scrape jitter)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) * scrape_s + rng.uniform(0, jitter_s, n)
    collections = np.floor(t / collect_s) if collect_s else np.arange(n)
    return t, 100 + rng.normal(0, 1, int(collections.max()) + 1)[collections.astype(int)]


def test_collection_interval_from_value_changes():
    for collect_s in (3.0, 5.0, 30.0):
        assert abs(change_spacing_s(*scraped(collect_s, n=600)) - collect_s) < 0.1
    assert abs(change_spacing_s(*scraped(0)) - 1.0) < 0.1  # collected on every scrape
    integer_temperature = (np.arange(300.0), np.floor(np.arange(300) / 20.0))  # changes every 20 s
    power = scraped(5.0)
    assert abs(collection_interval_s([integer_temperature, power]) - 5.0) < 0.1  # the fastest series tells
    assert change_spacing_s(np.arange(10.0), np.ones(10)) is None  # constant: no evidence
    assert collection_interval_s([]) is None
    assert grid_step_s(30.2, 1.0) == 30.0 and grid_step_s(3.0, 1.0) == 3.0 and grid_step_s(20.0, 15.0) is None
    assert grid_step_s(1.2, 1.0) is None and grid_step_s(None, 1.0) is None
    assert grid_step_s(2.5, 1.0) == 3.0  # never a step shorter than the interval: no reading held twice


# --- the RLE with the exporter's engine ---------------------------------------------------------------------------
def test_engine_columns_are_the_exporters_engine_row_for_row():
    gpu = SimGpu(SIM_PROFILES["demo"], seed=3)
    readings = [gpu.step(1.0, 1.0 if k < 400 else 0.2) for k in range(500)]  # heats through 83 C, then cools
    t = 1_000.0 + np.arange(500.0)
    util = np.array([r.util_pct for r in readings]) / 100
    power = np.array([r.power_w for r in readings])
    temp = np.array([r.temp_c for r in readings])
    done = engine_columns(t, util, power, temp, 250.0, 83.0, 1.0)
    rows = [LabRow(k + 2, {}, t[k], "gpu", util[k] * 100, power[k], temp[k], None) for k in range(500)]
    reference = [res for _, res in score(rows, RleEngine(250.0, 83.0, 1.0))]  # `thermograd-exporter recompute`
    assert done.onsets >= 1 and done.onsets == sum(r.onset for r in reference)
    np.testing.assert_array_equal(done.columns[T.RLE], [r.rle_smoothed for r in reference])
    np.testing.assert_array_equal(done.columns[T.A_LOAD], [r.load_ratio for r in reference])
    np.testing.assert_array_equal(done.columns[T.COLLAPSED], [float(r.collapsed) for r in reference])


def test_engine_columns_skip_missing_rows_and_restart_after_a_gap():
    t = np.arange(100.0)
    util, power, temp = np.full(100, 0.9), np.full(100, 200.0), np.full(100, 60.0)
    power[10] = np.nan  # one missing reading: that row has no RLE
    util[40:50] = np.nan  # ten missing rows: more than 3 intervals, the engine starts over
    temp[70] = np.nan  # no temperature: the engine still scores the row
    done = engine_columns(t, util, power, temp, 250.0, 83.0, 1.0)
    rle = done.columns[T.RLE]
    assert np.isnan(rle[10]) and np.isnan(rle[40:50]).all() and np.isfinite(rle[70])
    assert done.segments == 2 and np.isfinite(rle[:10]).all()


# --- PromQL per source ---------------------------------------------------------------------------------------------
def test_foreign_exprs_select_by_the_sources_uuid_label_and_parse(tmp_path: Path):
    exprs = series_exprs("r1", "0", "GPU-ab", 30.0, 1.0, SOURCES["dcgm"], "UUID")
    assert T.RLE not in exprs and T.COLLAPSED not in exprs  # computed, not read
    assert exprs["utilization"] == 'max(last_over_time(DCGM_FI_DEV_GPU_UTIL{UUID="GPU-ab"}[30s])) * 0.01'
    assert exprs["energy_power"] == 'max(rate(DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{UUID="GPU-ab"}[31s])) * 0.001'
    assert exprs["loss"] == series_exprs("r1", "0", "GPU-ab", 30.0, 1.0)["loss"]  # the trainer's side unchanged
    # On a grid coarser than the scrapes the trainer's side is aggregated over each step: a 3-s pause burst
    # (a flag) is seen at any of the step's scrapes, the loss is the step's mean; at one scrape per step, its sample.
    assert exprs["pause"].startswith("max(max_over_time(train_perturbation_active{")
    assert exprs["perturbation"].startswith("max(max_over_time(") and exprs["loss"].startswith("max(avg_over_time(")
    # A step spanning several of the source's readings (a month-plus run widened by --max-rows) averages them
    wide = series_exprs("r1", "0", "GPU-ab", 120.0, 1.0, SOURCES["dcgm"], "UUID", source_readings_s=30.0)
    assert wide["utilization"] == 'max(avg_over_time(DCGM_FI_DEV_GPU_UTIL{UUID="GPU-ab"}[120s])) * 0.01'
    assert series_exprs("r1", "0", "GPU-ab", 30.0, 1.0, SOURCES["dcgm"], "UUID", source_readings_s=30.0) == exprs
    fine = series_exprs("r1", "0", "sim-0", 1.0, 1.0)
    assert fine["pause"].startswith("max(last_over_time(") and fine["loss"].startswith("max(last_over_time(")
    nv = series_exprs("r1", "0", "ab", 1.0, 1.0, SOURCES["nvidia-smi"])
    assert nv["throttled"].count("label_replace(last_over_time(nvidia_smi_clocks_") == 10
    rules = "groups:\n- name: g\n  rules:\n" + "".join(
        f"  - record: r:{source}_{name}\n    expr: {json.dumps(expr)}\n"
        for source, e in (("dcgm", exprs), ("nvsmi", nv)) for name, expr in e.items())
    path = tmp_path / "rules.yml"
    path.write_text(rules)
    proc = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("flags, message", [
    (["--hardware-source", "nope"], "--hardware-source"),
    (["--rated-power", "0"], "--rated-power 0"),
    (["--rated-power", "nan"], "--rated-power nan"),
    (["--temp-limit", "500"], "--temp-limit 500"),
])
def test_bad_hardware_flags_one_line_exit_2(flags: list[str], message: str, tmp_path: Path):
    proc = subprocess.run([sys.executable, "-m", "thermograd.analysis", "--prometheus", "http://127.0.0.1:1", "--out",
                           str(tmp_path / "o"), *flags], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert message in proc.stderr and re.search(r"^analysis: error: ", proc.stderr)
    assert not (tmp_path / "o").exists()


def test_without_a_rated_power_the_analysis_goes_on_without_the_rle(monkeypatch):
    """dcgm-exporter's default counters have no power limit: the RLE cannot be computed, but the coupling
    tests of temperature, power and the training speed do not need it (the run was refused before)."""
    from thermograd.analysis import run
    from thermograd.analysis.requests import ClientOptions, StoreRun
    from thermograd.analysis.sources.devices import Choice, Device

    monkeypatch.setattr(run, "power_limit_w", lambda *a: (float("nan"), "", ["no power-limit series"]))
    n = 50
    table = T.Table(0.0, 1.0, n, {T.UTILIZATION: np.full(n, 0.9), T.POWER: np.full(n, 200.0),
                                  T.TEMPERATURE: np.linspace(60, 70, n)})
    dcgm = SOURCES["dcgm"]
    choice = Choice(dcgm, Device("dcgm", "UUID", "GPU-ab", ("0",), "gpu"), "gpu_uuid", ())
    notes: list[str] = []
    request = StoreRun(ClientOptions("http://unused"))  # no --rated-power, no --temp-limit
    used = run.engine_rle(None, request, choice, table, {}, float(n), float(n), notes)
    assert used["computed_by"] is None and "pass --rated-power W" in used["reason"]
    assert not table.has(T.RLE) and not table.has(T.COLLAPSED)
    assert notes[-1].startswith("RLE, A_load and collapses not computed") and "other tests run" in notes[-1]
