"""The analysis on the hardware exporters users already run: a real Prometheus scrapes the dcgm-exporter and
nvidia_gpu_exporter stand-ins (testkit/standin_exporter.py, two GPUs each) and a real trainer (tiny model) on one
1 s clock, then `thermograd-analysis --hardware-source dcgm|nvidia-smi|auto` reads it back.

The trainer reports its GPU's UUID upper case and without `GPU-` (neither exporter's spelling), so the right
GPU is found only through the UUID normalisation; dcgm collects every 3 s, so it repeats its values between
the 1 s scrapes. A second job scrapes the same trainer as a Kubernetes PodMonitor would (pod/namespace target
labels) with its run_id suffixed and its gpu_uuid removed: that run is joined to its GPU by dcgm's pod labels.
One module-scoped stack (about a minute on a loaded 2-core machine).
"""

from __future__ import annotations

import copy
import json
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import free_port
from test_stack_integration import require_binary

from testkit import stack as sl

ROOT = Path(__file__).resolve().parents[1]


pytestmark = [pytest.mark.integration, pytest.mark.slow]

RUN_ID = "sources-run"
K8S_RUN_ID = f"{RUN_ID}-k8s"
RUN_S = 40  # seconds of training scraped before the trainer is stopped (steps take 0.05-0.5 s on a shared machine)
TRAINER_GPU = "A9E1C0D4-83B2-4F57-B6E8-2D4C9F0A1357"  # as the trainer reports it: upper case, no GPU- prefix
DCGM_GPUS = ("GPU-5fd4b3a2-1c6e-4b0f-9e2d-7a8c3f1e6b90", "GPU-a9e1c0d4-83b2-4f57-b6e8-2d4c9f0a1357")
NVSMI_GPUS = ("GPU-0b7d2e44-9a1f-4c3e-8d5b-6f2a1c9e0d37", "GPU-a9e1c0d4-83b2-4f57-b6e8-2d4c9f0a1357")
DCGM_INTERVAL_S = 3
POD = ("ml-team", "gpt2-run-0", "trainer")  # the trainer's pod: dcgm-exporter -k labels GPU 1 with it
STANDIN = [sys.executable, "-m", "testkit.standin_exporter"]  # the supervisor runs it from ROOT


@dataclass
class Stack:
    prom_url: str
    prom: sl.PrometheusAPI
    tmp: Path


def prometheus_config(tmp: Path, ports: dict[str, int]) -> Path:
    """The repository's config for the trainer job, plus the two exporters and a Kubernetes-style second job
    for the same trainer (its run_id suffixed, its gpu_uuid dropped, pod/namespace target labels added)."""
    path = sl.render_prometheus_config(tmp / "prometheus", {"trainer": f"127.0.0.1:{ports['trainer']}"}, None,
                                       interval="1s", rule_files=[])
    config = yaml.safe_load(path.read_text())
    trainer = next(job for job in config["scrape_configs"] if job["job_name"] == "trainer")
    k8s = copy.deepcopy(trainer)
    k8s["job_name"] = "trainer-k8s"
    k8s["static_configs"][0]["labels"] = {"namespace": POD[0], "pod": POD[1]}
    k8s["metric_relabel_configs"] = [
        {"source_labels": ["run_id"], "target_label": "run_id", "regex": "(.+)", "replacement": "${1}-k8s"},
        {"target_label": "gpu_uuid", "replacement": ""}]
    config["scrape_configs"] += [k8s] + [
        {"job_name": job, "scrape_interval": "1s", "scrape_timeout": "1s",
         "static_configs": [{"targets": [f"127.0.0.1:{ports[job]}"]}]} for job in ("dcgm", "nvidia-smi")]
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("sources")
    ports = {name: free_port() for name in ("prometheus", "trainer", "dcgm", "nvidia-smi")}
    logs = tmp / "logs"
    with sl.Supervisor() as supervisor:
        supervisor.start("prometheus", sl.prometheus_argv(require_binary("prometheus"), prometheus_config(tmp, ports),
                                                          tmp / "tsdb", ports["prometheus"]), logs / "prometheus.log")
        supervisor.start("dcgm", [*STANDIN, "--format", "dcgm", "--port", str(ports["dcgm"]),
                                  "--gpus", "2", *(f for u in DCGM_GPUS for f in ("--uuid", u)), "--power-limit",
                                  "--collect-interval-s", str(DCGM_INTERVAL_S), "--pod", f"1={'/'.join(POD)}"],
                         logs / "dcgm.log")
        supervisor.start("nvidia-smi", [*STANDIN, "--format", "nvidia-smi", "--backend", "nvml",
                                        "--port", str(ports["nvidia-smi"]), "--gpus", "2", "--seed", "1",
                                        *(f for u in NVSMI_GPUS for f in ("--uuid", u))], logs / "nvidia-smi.log")
        prom_url = f"http://127.0.0.1:{ports['prometheus']}"
        sl.wait_http_ok(f"{prom_url}/-/ready", 60, supervisor=supervisor)
        prom = sl.PrometheusAPI(prom_url)
        sl.wait_until(lambda: prom.query("DCGM_FI_DEV_GPU_TEMP") and prom.query("nvidia_smi_gpu_info"), 60,
                      "both stand-ins scraped", supervisor=supervisor)
        trainer = supervisor.start("trainer", sl.tiny_trainer_argv(ports["trainer"], tmp / "trainer", RUN_ID, 100_000,
                                                                   gpu_uuid=TRAINER_GPU, linger_s=4),
                                   logs / "trainer.log")
        # A run of a fixed length, however fast the machine: stop the trainer (SIGTERM: it finishes its step,
        # lingers for a last scrape and exits 0) once Prometheus holds RUN_S seconds of its steps.
        sl.wait_until(lambda: (prom.scalar(f'count_over_time(train_loss{{run_id="{RUN_ID}"}}[10m])') or 0) >= RUN_S,
                      300, f"{RUN_S} s of training in Prometheus", supervisor=supervisor)
        trainer.signal(signal.SIGTERM)
        assert trainer.wait(60) == 0, trainer.tail()
        last = [prom.scalar(f'max(last_over_time(train_steps_total{{run_id="{r}"}}[1m]))')
                for r in (RUN_ID, K8S_RUN_ID)]
        assert last[0] and last[0] == last[1], last  # both jobs scraped the run to its last step
        yield Stack(prom_url, prom, tmp)


def analyse(stack: Stack, name: str, *flags: str) -> tuple[dict, subprocess.CompletedProcess]:
    out = stack.tmp / name
    proc = subprocess.run([sys.executable, "-m", "thermograd.analysis", "--prometheus", stack.prom_url,
                           "--out", str(out), "--surrogates", "200", *flags],
                          capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "report.json").read_text()), proc


def assert_base_units(report: dict) -> None:
    """Every hardware column in its base unit (°C, W, ratio, Hz) with the RLE engine's columns present."""
    series = report["series"]
    for name in ("temperature", "power", "utilization", "sm_clock", "energy_power", "rle", "a_load", "collapsed"):
        assert series[name]["n"] > 0, name
    assert series["temperature"]["min"] >= 20 and series["temperature"]["max"] <= 110
    assert series["power"]["min"] >= 20 and series["power"]["max"] <= 260
    assert series["utilization"]["mean"] >= 0.5 and series["utilization"]["max"] <= 1.0  # % -> ratio
    assert series["sm_clock"]["min"] >= 1e9 and series["sm_clock"]["max"] <= 2e9  # MHz -> Hz
    # the energy counter's rate (mJ -> J, or J) is the mean power: it agrees with the power gauge
    assert abs(series["energy_power"]["mean"] / series["power"]["mean"] - 1) < 0.1
    assert series["collapsed"]["min"] >= 0 and series["collapsed"]["max"] <= 1
    assert abs(series["a_load"]["mean"] * report["inputs"]["hardware"]["rle"]["rated_power_w"]
               / series["power"]["mean"] - 1) < 1e-6  # A_load = power / rated power, row by row
    assert series["rle"]["min"] > 0 and series["rle"]["max"] < 2


def test_auto_picks_dcgm_by_the_normalised_uuid_and_uses_its_real_interval(stack: Stack):
    report, proc = analyse(stack, "auto", "--run", RUN_ID)
    hw = report["inputs"]["hardware"]
    assert hw["source"] == "dcgm" and hw["requested"] == "auto" and hw["joined_by"] == "gpu_uuid"
    assert report["inputs"]["device"] == {"uuid": DCGM_GPUS[1], "device": "1"}  # GPU 1, not the decoy GPU 0
    assert hw["uuid_label"] == "UUID" and hw["repeats_between_scrapes"] is True
    assert abs(hw["collection_interval_s"] - DCGM_INTERVAL_S) <= 0.5
    assert report["step"]["seconds"] == DCGM_INTERVAL_S and "collection interval" in report["step"]["source"]
    assert any("repeats its values between scrapes" in n for n in report["notes"])
    assert "hardware: hardware source dcgm repeats its values" in proc.stdout
    rle = hw["rle"]
    assert rle["rated_power_w"] == 250 and rle["rated_power_from"] == "DCGM_FI_DEV_POWER_MGMT_LIMIT"
    assert rle["temp_limit_c"] == 83 and rle["interval_s"] == DCGM_INTERVAL_S and "RleEngine" in rle["computed_by"]
    assert any("computed here with the exporter's engine" in n for n in report["notes"])
    assert_base_units(report)
    # one clock: every range query on the dcgm grid, and the device selected by dcgm's own UUID label
    ranges = [q for q in report["queries"] if q["type"] == "range" and q["purpose"] != "runs"]
    assert {q["step"] for q in ranges} == {DCGM_INTERVAL_S}
    assert any(f'DCGM_FI_DEV_POWER_USAGE{{UUID="{DCGM_GPUS[1]}"}}' in q["query"] for q in ranges)


def test_nvidia_smi_source_lowercase_uuid_without_prefix(stack: Stack):
    report, proc = analyse(stack, "nvsmi", "--run", RUN_ID, "--hardware-source", "nvidia-smi",
                           "--temp-limit", "80", "--quiet")
    hw = report["inputs"]["hardware"]
    assert hw["source"] == "nvidia-smi" and hw["joined_by"] == "gpu_uuid"
    assert report["inputs"]["device"] == {"uuid": NVSMI_GPUS[1][4:], "device": "1"}
    assert hw["repeats_between_scrapes"] is False and report["step"]["seconds"] == 1.0  # collects on every scrape
    assert not any("repeats its values" in n for n in report["notes"]) and proc.stdout == ""
    assert hw["rle"]["rated_power_from"] == "nvidia_smi_enforced_power_limit_watts"
    assert hw["rle"]["temp_limit_c"] == 80 and hw["rle"]["temp_limit_from"] == "--temp-limit"
    assert_base_units(report)


def test_kubernetes_run_without_gpu_uuid_joins_by_pod(stack: Stack):
    report, _ = analyse(stack, "k8s", "--run", K8S_RUN_ID, "--rated-power", "300", "--quiet")
    hw = report["inputs"]["hardware"]
    assert report["inputs"]["gpu_uuid"] == ""
    assert hw["source"] == "dcgm" and hw["joined_by"] == "pod"
    assert report["inputs"]["device"]["uuid"] == DCGM_GPUS[1]
    assert hw["rle"]["rated_power_w"] == 300 and hw["rle"]["rated_power_from"] == "--rated-power"
    assert any("pod ml-team/gpt2-run-0" in n for n in report["notes"])
    assert_base_units(report)


def test_thermograd_source_absent_is_one_line_exit_2(stack: Stack):
    proc = subprocess.run([sys.executable, "-m", "thermograd.analysis", "--prometheus", stack.prom_url, "--run", RUN_ID,
                           "--hardware-source", "thermograd", "--out", str(stack.tmp / "none")],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "which no rle_device_info series reports" in proc.stderr and "is its node scraped" in proc.stderr
