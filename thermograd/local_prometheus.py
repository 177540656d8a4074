"""A Prometheus of the system's, for one run: a fresh TSDB in the run's folder, the exporter and the job's
ranks scraped at the same 1 s interval (one clock), the ranks found through file_sd as they register."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

from thermograd.processes import Child, ProcessError, find_binary, free_port, install_hint, prometheus_argv

SCRAPE_INTERVAL = "1s"
READY_TIMEOUT_S = 60.0


def missing_prometheus() -> str | None:
    """Why `thermograd run --prometheus` cannot run here (None: it can)."""
    if find_binary("prometheus"):
        return None
    return (f"no prometheus binary on PATH (install it: {install_hint(['prometheus'])}; or leave out --prometheus: "
            "the run is recorded to files and analysed from them)")


def config(exporter_address: str, targets_dir: Path) -> dict:
    """Two jobs on one interval, named as the stack names them (the analysis reads their scrape interval)."""
    clock = {"scrape_interval": SCRAPE_INTERVAL, "scrape_timeout": SCRAPE_INTERVAL}
    return {
        "global": clock,
        "scrape_configs": [
            {"job_name": "exporter", **clock, "static_configs": [{"targets": [exporter_address]}]},
            {"job_name": "trainer", **clock,
             "file_sd_configs": [{"files": [str(targets_dir / "*.json")], "refresh_interval": "5s"}]},
        ],
    }


class LocalPrometheus:
    """Started at construction (raises ProcessError with a one-line reason); `stop()` ends it and keeps its
    TSDB, which any Prometheus can open again (`prometheus --storage.tsdb.path=DIR`)."""

    def __init__(self, folder: Path, exporter_address: str) -> None:
        binary = find_binary("prometheus")
        if binary is None:
            raise ProcessError(missing_prometheus())
        self.folder = folder
        self.targets_dir = folder / "targets"
        self.targets_dir.mkdir(parents=True, exist_ok=True)
        config_path = folder / "prometheus.yml"
        # JSON is YAML: no YAML library needed to write Prometheus's configuration.
        config_path.write_text(json.dumps(config(exporter_address, self.targets_dir), indent=2) + "\n")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._targets: list[str] = []
        self.child = Child("prometheus", prometheus_argv(binary, config_path, folder / "data", self.port),
                           folder / "prometheus.log")

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            self.child.check()
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2.0) as response:
                    if response.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            if time.monotonic() > deadline:
                raise ProcessError(f"Prometheus did not become ready within {timeout_s:.0f} s "
                                   f"(log: {self.child.log_path})")
            time.sleep(0.2)

    def scrape_trainers(self, addresses: list[str]) -> None:
        """Point the trainer job at these host:port targets (a file_sd file, replaced atomically)."""
        addresses = sorted(set(addresses))
        if addresses == self._targets:
            return
        self._targets = addresses
        path = self.targets_dir / "trainers.json"
        tmp = path.with_name(".trainers.json.tmp")
        tmp.write_text(json.dumps([{"targets": addresses}]) + "\n")
        os.replace(tmp, path)

    def stop(self) -> None:
        self.child.stop()
