"""The foreign exporters' exposition: the static fixtures parse, and the stand-in process writes the same
names, types and labels (in the same order) as the fixtures, repeating its values between collections."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import free_port
from prometheus_client.parser import text_string_to_metric_families
from test_metric_names import DOCUMENTED

from testkit import stack as sl
from testkit.standin_exporter import go_float, nvml_uuid, nvsmi_uuid

DATA = Path(__file__).resolve().parent / "data"
ROOT = Path(__file__).resolve().parents[1]
STANDIN = [sys.executable, "-m", "testkit.standin_exporter"]  # run from ROOT
FIXTURES = {"dcgm": DATA / "dcgm-exporter.prom", "nvidia-smi": DATA / "nvidia-gpu-exporter.prom"}
# The stand-in flags that reproduce each fixture's setup: dcgm with -k and GPU 1 given to a pod.
FIXTURE_FLAGS = {"dcgm": ["--gpus", "2", "--pod", "1=ml-team/gpt2-run-0/trainer"], "nvidia-smi": []}
SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})? (\S+)$")
LABEL_NAME = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="(?:\\.|[^"\\])*"')


def layout(text: str) -> dict[str, object]:
    """Per family: its TYPE and HELP lines; per sample name: every label-name sequence, in order."""
    assert list(text_string_to_metric_families(text))  # prometheus_client's parser reads it
    labels: dict[str, set[tuple[str, ...]]] = {}
    types: dict[str, str] = {}
    helps = set()
    for line in text.splitlines():
        if line.startswith("# HELP "):
            helps.add(line.split()[2])
        elif line.startswith("# TYPE "):
            types[line.split()[2]] = line.split()[3]
        elif line and not line.startswith("#"):
            match = SAMPLE.match(line)
            assert match, f"not a sample line: {line!r}"
            labels.setdefault(match.group(1), set()).add(tuple(LABEL_NAME.findall(match.group(2) or "")))
    return {"types": types, "labels": labels, "helps": helps}


def scrape(port: int) -> str:
    return sl.http_get(f"http://127.0.0.1:{port}/metrics")[1].decode()


def start_standin(tmp_path: Path, fmt: str, *flags: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    log = open(tmp_path / f"standin-{fmt}.log", "wb")  # noqa: SIM115 - the process holds it
    proc = subprocess.Popen([*STANDIN, "--format", fmt, "--port", str(port), *flags], cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT)
    sl.wait_until(lambda: sl.http_get(f"http://127.0.0.1:{port}/metrics", 1.0)[0] == 200, 30, "the stand-in")
    return proc, port


@pytest.fixture
def standin(tmp_path: Path):
    procs: list[subprocess.Popen] = []

    def start(fmt: str, *flags: str) -> int:
        proc, port = start_standin(tmp_path, fmt, *flags)
        procs.append(proc)
        return port

    yield start
    for proc in procs:
        proc.terminate()
        assert proc.wait(10) == 0


@pytest.mark.parametrize("fmt", sorted(FIXTURES))
def test_fixture_parses_and_its_names_are_documented(fmt: str):
    text = FIXTURES[fmt].read_text()
    found = layout(text)
    names = set(found["labels"])
    assert found["helps"] == set(found["types"]) == names  # every family: HELP, TYPE and samples
    assert sorted(names - DOCUMENTED) == []
    if fmt == "dcgm":
        assert {"DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_DEV_POWER_USAGE", "DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_SM_CLOCK",
                "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"} <= names
        assert found["types"]["DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"] == "counter"
        first = next(iter(sorted(found["labels"]["DCGM_FI_DEV_GPU_TEMP"])))
        assert first[:6] == ("gpu", "UUID", "pci_bus_id", "device", "modelName", "Hostname")
    else:
        assert {"nvidia_smi_temperature_gpu", "nvidia_smi_power_draw_watts", "nvidia_smi_utilization_gpu_ratio",
                "nvidia_smi_clocks_current_sm_clock_hz", "nvidia_smi_gpu_info"} <= names
        assert found["labels"]["nvidia_smi_power_draw_watts"] == {("uuid",)}
        uuids = set(re.findall(r'uuid="([^"]+)"', text))
        assert uuids and all(u == u.lower() and not u.startswith("gpu-") for u in uuids)


@pytest.mark.parametrize("fmt", sorted(FIXTURES))
def test_standin_writes_the_fixtures_names_types_and_labels(fmt: str, standin):
    port = standin(fmt, *FIXTURE_FLAGS[fmt])
    served, fixture = layout(scrape(port)), layout(FIXTURES[fmt].read_text())
    assert served["types"] == fixture["types"]
    assert served["labels"] == fixture["labels"]  # names and order of every label set


def test_standin_value_formats(standin):
    port = standin("dcgm", "--power-limit")
    lines = {m.group(1): m.group(3) for line in scrape(port).splitlines() if (m := SAMPLE.match(line))}
    assert re.fullmatch(r"\d+\.\d{6}", lines["DCGM_FI_DEV_POWER_USAGE"])  # a double field: Go's %f
    assert re.fullmatch(r"\d+", lines["DCGM_FI_DEV_GPU_TEMP"]) and re.fullmatch(r"\d+", lines["DCGM_FI_DEV_SM_CLOCK"])
    assert lines["DCGM_FI_DEV_POWER_MGMT_LIMIT"] == "250.000000"
    assert go_float(1.98e9) == "1.98e+09" and go_float(700.0) == "700" and go_float(631.95) == "631.95"
    assert go_float(0.055694458) == "0.055694458" and go_float(1e6) == "1e+06" and go_float(1e-05) == "1e-05"


def test_uuid_spellings():
    assert nvml_uuid("gpu-AB12") == nvml_uuid("AB12") == "GPU-ab12"
    assert nvsmi_uuid("GPU-ab12") == "ab12"


def test_dcgm_repeats_its_values_between_collections(standin):
    port = standin("dcgm", "--collect-interval-s", "1.5")
    first, again = scrape(port), scrape(port)
    assert first == again  # scraped twice within one collection: the same text
    time.sleep(1.6)
    assert scrape(port) != first  # the energy counter moved at the next collection


def test_nvidia_smi_collects_on_every_scrape_by_default(standin):
    port = standin("nvidia-smi", "--backend", "nvml")
    energy = [float(re.search(r"^nvidia_smi_energy_joules_total\{.*\} (\S+)$", scrape(port), re.M).group(1))
              for _ in range(2) if time.sleep(0.3) is None]
    assert energy[1] > energy[0]


def test_bad_flags_one_line_exit_2(tmp_path):
    for flags in (["--format", "dcgm", "--port", "1", "--collect-interval-s", "0"],
                  ["--format", "dcgm", "--port", "1", "--gpus", "1", "--uuid", "a", "--uuid", "b"],
                  ["--format", "dcgm", "--port", "1", "--pod", "3=a/b/c"],
                  ["--format", "x", "--port", "1"]):
        proc = subprocess.run([*STANDIN, *flags], cwd=ROOT, capture_output=True, text=True, timeout=30)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
