"""Running the thermograd stack natively: config rendering, supervised child processes, HTTP helpers.

Used by `scripts/demo.py` (`make demo`), the integration tests and the benches, so all start Prometheus,
Alertmanager, the exporter and the trainer exactly the same way: on 127.0.0.1, on free ports, from the
repository's own prometheus.yml / rules / alertmanager.yml rendered into a scratch directory.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from thermograd.analysis.errors import InputError
from thermograd.analysis.sources.client import BackendUnreachable, PromClient
from thermograd.processes import (  # noqa: F401 (re-exported: the demo and the tests use them from here)
    APT_PACKAGES,
    BINARY_NAMES,
    LONGTERM_BINARY_NAMES,
    LOOPBACK,
    Child,
    find_binary,
    free_port,
    install_hint,
    pick_port,
    port_is_free,
    prometheus_argv,
)
from thermograd.processes import ChildExited as ChildDied  # noqa: F401
from thermograd.processes import ProcessError as StackError

REPO_ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS_CONFIG = REPO_ROOT / "prometheus" / "prometheus.yml"
RULES_DIR = REPO_ROOT / "prometheus" / "rules"
ALERTMANAGER_CONFIG = REPO_ROOT / "alertmanager" / "alertmanager.yml"
# The commented remote_write option in prometheus.yml sits between these two comment lines.
REMOTE_WRITE_BEGIN = "# >>> long-term storage"
REMOTE_WRITE_END = "# <<< long-term storage"


# ---------------------------------------------------------------------------------- config rendering
def with_remote_write(config_text: str) -> str:
    """prometheus.yml's text with its commented long-term storage option (remote_write) uncommented."""
    lines = config_text.splitlines(keepends=True)
    begin = next(i for i, line in enumerate(lines) if line.startswith(REMOTE_WRITE_BEGIN))
    end = next(i for i, line in enumerate(lines) if line.startswith(REMOTE_WRITE_END))
    body = [line[2:] if line.startswith("# ") else line for line in lines[begin + 1:end]]
    if not any(line.startswith("remote_write:") for line in body):
        raise StackError(f"{PROMETHEUS_CONFIG}: no commented remote_write block between "
                         f"{REMOTE_WRITE_BEGIN!r} and {REMOTE_WRITE_END!r}")
    return "".join([*lines[:begin + 1], *body, *lines[end:]])


def render_prometheus_config(out_dir: Path, targets: dict[str, str | list[str]], alertmanager: str | None, *,
                             self_address: str | None = None, interval: str = "1s",
                             evaluation_interval: str | None = None,
                             rule_files: Sequence[Path] | None = None,
                             remote_write_url: str | None = None) -> Path:
    """The repository's prometheus.yml with each job's static targets replaced by `targets[job]`.

    file_sd is dropped (nothing to discover on one machine), rule files become absolute paths, and the
    exporter and trainer jobs keep one shared interval — the point of the configuration. With
    `remote_write_url`, the file's commented remote_write option is enabled, sending to that URL.
    """
    text = PROMETHEUS_CONFIG.read_text(encoding="utf-8")
    config = yaml.safe_load(with_remote_write(text) if remote_write_url else text)
    for remote in config.get("remote_write", []):
        remote["url"] = remote_write_url
    config["global"].update(scrape_interval=interval, scrape_timeout=interval)
    if evaluation_interval:
        config["global"]["evaluation_interval"] = evaluation_interval
    rules = rule_files if rule_files is not None else sorted(RULES_DIR.glob("*.yml"))
    config["rule_files"] = [str(Path(path).resolve()) for path in rules]
    if alertmanager:
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
    else:
        config.pop("alerting", None)
    jobs = []
    for job in config["scrape_configs"]:
        name = job["job_name"]
        job.pop("file_sd_configs", None)
        if name in targets:
            job.update(scrape_interval=interval, scrape_timeout=interval,
                       static_configs=[{"targets": [targets[name]] if isinstance(targets[name], str)
                                        else list(targets[name])}])
        elif name == "prometheus" and self_address:
            job["static_configs"] = [{"targets": [self_address]}]
        else:
            continue
        jobs.append(job)
    config["scrape_configs"] = jobs
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def render_alertmanager_config(out_dir: Path, webhook_url: str, *, fast: bool = False) -> Path:
    """alertmanager.yml with the placeholder webhook replaced; `fast` shortens the grouping waits."""
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text(encoding="utf-8"))
    for receiver in config["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = webhook_url
    if fast:
        for route in [config["route"], *config["route"].get("routes", [])]:
            route.update(group_wait="1s", group_interval="1s")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


class Supervisor:
    """The set of children of one stack: started in order, checked together, stopped in reverse."""

    def __init__(self) -> None:
        self.children: list[Child] = []

    def start(self, name: str, argv: Sequence[str], log_path: Path, **kwargs: Any) -> Child:
        kwargs.setdefault("cwd", REPO_ROOT)  # the stack's children run from the repository, as its paths assume
        child = Child(name, argv, log_path, **kwargs)
        self.children.append(child)
        return child

    def check(self, *, except_for: Sequence[Child] = ()) -> None:
        for child in self.children:
            if child not in except_for:
                child.check()

    def stop_all(self, grace_s: float = 10.0) -> None:
        """SIGTERM every child (the last started first), then wait for them together: one grace period for all,
        then SIGKILL for any still running. Stopped one after another, four children slow to stop on a loaded
        machine took up to 4 x 15 s, the whole of a caller's minute."""
        children = list(reversed(self.children))
        for child in children:
            child.signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for child in children:
            child.wait(max(0.0, deadline - time.monotonic()))
        for child in children:
            child.stop(grace_s=0.0)  # SIGKILL what is left; closes each log

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()


# ---------------------------------------------------------------------------------------------- HTTP
def http_get(url: str, timeout_s: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def wait_until(condition: Callable[[], Any], timeout_s: float, what: str, *, supervisor: Supervisor | None = None,
               finished: Sequence[Child] = (), interval_s: float = 0.25) -> Any:
    """Poll `condition` until it returns something truthy; a dead child (other than those in
    `finished`, which may have exited) or the deadline raises."""
    deadline = time.monotonic() + timeout_s
    while True:
        if supervisor is not None:
            supervisor.check(except_for=finished)
        with contextlib.suppress(OSError, ValueError):
            if result := condition():
                return result
        if time.monotonic() > deadline:
            raise StackError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(interval_s)


def query_window(start_s: float) -> tuple[float, float]:
    """Whole seconds from `start_s` to now, rounded outwards. Rounding the end down would end a range query
    before what the caller has just seen happen (an alert that fired 0.4 s ago) and miss it."""
    return float(math.floor(start_s)), float(math.ceil(time.time()))


def wait_http_ok(url: str, timeout_s: float, *, supervisor: Supervisor | None = None) -> None:
    wait_until(lambda: http_get(url, 2.0)[0] == 200, timeout_s, url, supervisor=supervisor)


@dataclass
class PrometheusAPI(PromClient):
    """The analysis's Prometheus client (analysis.sources.client.PromClient: retries with back-off, a deadline for each
    answer, answers checked) with the raw calls the demo and the tests need. A Prometheus not (yet) reachable is
    a ConnectionError, which wait_until keeps polling through; any other failure is a StackError. Polled, a
    check must not outlast its caller's deadline: one retry, 10 s an answer."""

    timeout_s: float = 10.0
    retries: int = 1

    def get(self, path: str, **params: Any) -> Any:
        """The `data` of a successful answer to GET `path` (parameters that are None are left out): a list from
        the series and label APIs, else an object."""
        expect = list if path.startswith(("/api/v1/series", "/api/v1/label")) else dict
        try:
            return self._get(path, {k: v for k, v in params.items() if v is not None}, expect)
        except BackendUnreachable as err:
            raise ConnectionError(str(err)) from None
        except InputError as err:
            raise StackError(f"Prometheus {path} {params}: {err}") from None

    def _series(self, path: str, **params: Any) -> list[dict]:
        try:
            return self._result(self.get(path, **params), path)
        except InputError as err:
            raise StackError(str(err)) from None

    def query(self, expr: str, time_s: float | None = None) -> list[dict]:
        return self._series("/api/v1/query", query=expr, time=time_s)

    def series_range(self, expr: str, start_s: float, end_s: float, step_s: float) -> list[dict]:
        """The matrix of a range query as served (PromClient.query_range places named series on a grid)."""
        return self._series("/api/v1/query_range", query=expr, start=start_s, end=end_s, step=step_s)

    def scalar(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def targets_up(self) -> dict[str, bool]:
        return {r["metric"]["job"]: r["value"][1] == "1" for r in self.query("up")}


# ------------------------------------------------------------------------------------------- webhook
class WebhookReceiver:
    """A local Alertmanager webhook receiver: records every JSON payload POSTed to it."""

    def __init__(self, host: str = LOOPBACK, port: int = 0):
        self.payloads: list[dict] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length", "0"))
                with contextlib.suppress(ValueError), receiver._lock:
                    receiver.payloads.append(json.loads(self.rfile.read(length)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:  # quiet
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.url = f"http://{host}:{self.server.server_address[1]}/alerts"
        self._thread = threading.Thread(target=self.server.serve_forever, name="webhook", daemon=True)

    def alerts(self) -> list[dict]:
        with self._lock:
            return [alert for payload in self.payloads for alert in payload.get("alerts", [])]

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


# -------------------------------------------------------------------------------------- stack pieces
# Query semantics equal to Prometheus's for the analysis's query_range (docs/stack.md, "Long-term storage"):
# recommended for a store you run, not required (tests/test_analysis_default_stores.py analyses a VictoriaMetrics
# with its defaults). -search.latencyOffset=0s serves the newest points at once: with the default 30 s,
# VictoriaMetrics answers a range query's points of the last 30 s before "now" with copies of an older one, and
# the analysis of a run that has just ended waits for them (analysis/sources/fetch.py wait_for_newest_points). The other
# two pin Prometheus's semantics explicitly: no deduplication (every scrape kept) and Prometheus's 5 min lookback
# (for dashboards: the analysis's expressions all have explicit windows).
VICTORIAMETRICS_QUERY_FLAGS = ("-search.latencyOffset=0s", "-dedup.minScrapeInterval=0s",
                               "-search.maxStalenessInterval=5m")


def victoriametrics_argv(binary: str, storage: Path, port: int) -> list[str]:
    return [binary, f"-storageDataPath={storage}", f"-httpListenAddr={LOOPBACK}:{port}", "-retentionPeriod=1y",
            "-loggerLevel=WARN", *VICTORIAMETRICS_QUERY_FLAGS]


def alertmanager_argv(binary: str, config: Path, storage: Path, port: int) -> list[str]:
    # An empty cluster address turns gossip off: otherwise Alertmanager listens on 0.0.0.0:9094.
    return [binary, f"--config.file={config}", f"--storage.path={storage}",
            f"--web.listen-address={LOOPBACK}:{port}", "--cluster.listen-address=", "--log.level=warn"]


def python_module_argv(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def sim_exporter_argv(port: int, *, devices: int = 1, seed: int = 0, sample_hz: float = 1) -> list[str]:
    """The exporter with simulated GPUs (uuid sim-0...), as the integration tests run it."""
    return python_module_argv("thermograd.exporter", "--backend", "sim", "--devices", str(devices), "--seed", str(seed),
                              "--sample-hz", f"{sample_hz:g}", "--port", str(port))


def tiny_trainer_argv(port: int, log_dir: Path, run_id: str, steps: int, *, gpu_uuid: str = "sim-0",
                      linger_s: float = 8, perturb: str = "steps=10-14,lr_mult=10",
                      extra: Sequence[str] = ()) -> list[str]:
    """The reference trainer on CPU with the tiny model: a short, seeded run tied to `gpu_uuid`."""
    return python_module_argv(
        "thermograd.trainer", "--model", "tiny", "--steps", str(steps), "--batch-size", "2", "--seq-len", "32",
        "--seed", "0", "--device", "cpu", "--perturb", perturb, "--port", str(port), "--log-dir", str(log_dir),
        "--linger", f"{linger_s:g}", "--run-id", run_id, "--gpu-uuid", gpu_uuid, "--quiet", *extra)


def device_info(metrics_text: str) -> list[dict[str, str]]:
    """Labels of every rle_device_info series in an exposition text (the exporter's /metrics)."""
    from prometheus_client.parser import text_string_to_metric_families

    return [dict(sample.labels) for family in text_string_to_metric_families(metrics_text)
            for sample in family.samples if sample.name == "rle_device_info"]
