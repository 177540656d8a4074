"""Writing series as OpenMetrics, backfilling them with promtool, serving them with a real Prometheus.

Used by the end-to-end tests and the benchmark; also handy to try the analysis without hardware.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import requests

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


@dataclass
class Series:
    family: str  # metric family (a histogram's base name for its _sum and _count)
    kind: str  # gauge, counter, histogram, info-like gauge
    name: str  # the sample name as stored
    labels: dict[str, str]
    t_s: np.ndarray  # integer Unix seconds
    values: np.ndarray


def _label_text(labels: dict[str, str]) -> str:
    return ",".join(f'{k}="{v}"' for k, v in labels.items())


def write_openmetrics(series: list[Series], path: Path) -> None:
    """Families contiguous, each with its TYPE line; samples in time order; ends with # EOF."""
    families: dict[str, list[Series]] = {}
    for s in series:
        families.setdefault(s.family, []).append(s)
    with path.open("w") as out:
        for family, members in families.items():
            out.write(f"# TYPE {family} {members[0].kind}\n")
            for s in members:
                prefix = f"{s.name}{{{_label_text(s.labels)}}} "
                stamps = s.t_s.astype(np.int64)
                out.write("".join(f"{prefix}{v:.10g} {ts}\n" for v, ts in zip(s.values.tolist(), stamps.tolist(),
                                                                              strict=True)))
        out.write("# EOF\n")


def create_blocks(openmetrics: Path, tsdb_dir: Path) -> None:
    tsdb_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run([PROMTOOL, "tsdb", "create-blocks-from", "openmetrics", str(openmetrics), str(tsdb_dir)],
                   check=True, capture_output=True, text=True)


BLOCK_S = 7200  # promtool's block length (2h, aligned to the epoch; this promtool has no flag to change it)


def _window(s: Series, lo: int, hi: int) -> Series:
    """The samples of `s` with lo <= t < hi (t sorted)."""
    a, b = np.searchsorted(s.t_s, [lo, hi])
    return Series(s.family, s.kind, s.name, s.labels, s.t_s[a:b], s.values[a:b])


def backfill_blockwise(series: list[Series], tsdb_dir: Path, work_dir: Path) -> None:
    """promtool once per 2 h block, each on its own small OpenMetrics file.

    promtool re-parses its whole input for every 2 h block it writes, so one file of a month (360 blocks)
    costs 360 passes over gigabytes; one file per block costs one pass in all."""
    lo = min(int(s.t_s[0]) for s in series if s.t_s.size)
    hi = max(int(s.t_s[-1]) for s in series if s.t_s.size)
    om = work_dir / "block.om"
    for t in range(lo // BLOCK_S * BLOCK_S, hi + 1, BLOCK_S):
        part = [w for w in (_window(s, t, t + BLOCK_S) for s in series) if w.t_s.size]
        write_openmetrics(part, om)
        create_blocks(om, tsdb_dir)
    om.unlink(missing_ok=True)


@contextmanager
def serve_prometheus(tsdb_dir: Path, port: int, scrape_interval: str = "1s",
                     ready_timeout_s: float = 60.0) -> Iterator[str]:
    """A real Prometheus on the backfilled TSDB (no scrape targets); yields its URL; stopped on exit."""
    config = tsdb_dir.parent / f"prometheus-{port}.yml"
    config.write_text(f"global:\n  scrape_interval: {scrape_interval}\n  evaluation_interval: {scrape_interval}\n")
    log = (tsdb_dir.parent / f"prometheus-{port}.log").open("w")
    proc = subprocess.Popen(
        [PROMETHEUS, f"--storage.tsdb.path={tsdb_dir}", f"--config.file={config}",
         f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=3650d", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {proc.returncode}; see {log.name}")
            try:
                if requests.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"prometheus not ready after {ready_timeout_s} s; see {log.name}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


TRAIN_LABELS = {"job": "trainer", "instance": "127.0.0.1:9843", "rank": "0"}
DEVICE_LABELS = {"job": "exporter", "instance": "127.0.0.1:9842"}


def train_series(columns: dict[str, np.ndarray], start_s: int, run_id: str, gpu_uuid: str,
                 info_every_s: int = 1, with_loss: bool = True) -> list[Series]:
    """The trainer's series of one run (rank 0) from per-second columns starting at start_s."""
    grad = columns["grad_norm"]
    n = grad.size
    t = start_s + np.arange(n)
    info_t = t[::info_every_s]
    labels = {**TRAIN_LABELS, "run_id": run_id}
    out = [
        Series("train_grad_norm", "gauge", "train_grad_norm", labels, t, grad),
        # one optimizer step per second: the histogram's per-interval mean is exactly grad_norm
        Series("train_step_grad_norm", "histogram", "train_step_grad_norm_sum", labels, t, np.cumsum(grad)),
        Series("train_step_grad_norm", "histogram", "train_step_grad_norm_count", labels, t, np.arange(1.0, n + 1)),
        Series("train_perturbation_active", "gauge", "train_perturbation_active", labels, t, columns["perturbation"]),
        Series("train_run_info", "gauge", "train_run_info",
               {**labels, "model": "tiny", "device": "cuda", "gpu_uuid": gpu_uuid, "world_size": "1"},
               info_t, np.ones(info_t.size)),
        Series("train_run_start_time_seconds", "gauge", "train_run_start_time_seconds", labels, info_t,
               np.full(info_t.size, float(start_s))),
    ]
    if with_loss:
        out.append(Series("train_loss", "gauge", "train_loss", labels, t, columns["loss"]))
    return out


DEVICE_METRICS = (("rle", "rle_efficiency_smoothed"), ("temperature", "rle_temperature_celsius"),
                  ("power", "rle_power_watts"), ("a_load", "rle_load_ratio"), ("collapsed", "rle_collapsed"))


def device_series(columns: dict[str, np.ndarray], start_s: int, uuid: str, device: str, kind: str = "gpu",
                  info_every_s: int = 1) -> list[Series]:
    """The exporter's series of one device from per-second columns starting at start_s."""
    n = columns["rle"].size
    t = start_s + np.arange(n)
    info_t = t[::info_every_s]
    labels = {**DEVICE_LABELS, "device": device, "uuid": uuid}
    out = [Series("rle_device_info", "gauge", "rle_device_info",
                  {**labels, "model": "simulated", "backend": "sim", "kind": kind}, info_t, np.ones(info_t.size))]
    out += [Series(metric, "gauge", metric, labels, t, columns[col]) for col, metric in DEVICE_METRICS]
    return out
