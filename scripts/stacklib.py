"""Running the thermograd stack natively: config rendering, supervised child processes, HTTP helpers.

Used by `scripts/demo.py` (`make demo`) and by the integration tests, so both start Prometheus,
Alertmanager, the exporter and the trainer exactly the same way: on 127.0.0.1, on free ports, from the
repository's own prometheus.yml / rules / alertmanager.yml rendered into a scratch directory.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS_CONFIG = REPO_ROOT / "prometheus" / "prometheus.yml"
RULES_DIR = REPO_ROOT / "prometheus" / "rules"
ALERTMANAGER_CONFIG = REPO_ROOT / "alertmanager" / "alertmanager.yml"
LOOPBACK = "127.0.0.1"
APT_PACKAGES = {"prometheus": "prometheus", "promtool": "prometheus",
                "alertmanager": "prometheus-alertmanager", "amtool": "prometheus-alertmanager",
                "victoriametrics": "victoria-metrics"}
# Debian names the Alertmanager binary prometheus-alertmanager; upstream tarballs call it alertmanager.
BINARY_NAMES = {"prometheus": ("prometheus",), "alertmanager": ("prometheus-alertmanager", "alertmanager")}
# Long-term storage (the longterm test only, not the demo): Debian's victoria-metrics, upstream's -prod.
LONGTERM_BINARY_NAMES = {"victoriametrics": ("victoria-metrics", "victoria-metrics-prod")}
# The commented remote_write option in prometheus.yml sits between these two comment lines.
REMOTE_WRITE_BEGIN = "# >>> long-term storage"
REMOTE_WRITE_END = "# <<< long-term storage"


class StackError(RuntimeError):
    """A failure to report in one line (the demo prints it and exits non-zero)."""


class ChildDied(StackError):
    def __init__(self, child: Child, returncode: int):
        self.child, self.returncode = child, returncode
        super().__init__(f"{child.name} exited with code {returncode} (log: {child.log_path})")


# --------------------------------------------------------------------------------------------- ports
def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """Nothing listens on it. SO_REUSEADDR as the servers themselves use it: a port whose last
    connections linger in TIME_WAIT after a previous run is free for them, so it is free here."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = LOOPBACK) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def pick_port(preferred: int, taken: set[int] | None = None) -> int:
    """`preferred` when it is free, otherwise any free loopback port (never one already in `taken`)."""
    taken = taken or set()
    if preferred not in taken and port_is_free(preferred):
        return preferred
    while (port := free_port()) in taken:
        pass
    return port


# ------------------------------------------------------------------------------------------ binaries
def find_binary(kind: str) -> str | None:
    for name in {**BINARY_NAMES, **LONGTERM_BINARY_NAMES}[kind]:
        if path := shutil.which(name):
            return path
    return None


def install_hint(missing: Sequence[str]) -> str:
    packages = sorted({APT_PACKAGES[name] for name in missing})
    return f"sudo apt-get install -y --no-install-recommends {' '.join(packages)}"


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


def render_prometheus_config(out_dir: Path, targets: dict[str, str], alertmanager: str | None, *,
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
                       static_configs=[{"targets": [targets[name]]}])
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


# ------------------------------------------------------------------------------------------ children
def _load_prctl() -> Callable[..., int] | None:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


# Resolved once in the parent: the function run between fork and exec must not import or dlopen
# anything (another thread of the parent, e.g. the webhook server, may hold a lock at fork time).
_PRCTL = _load_prctl() if sys.platform.startswith("linux") else None
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM if the parent dies (even by SIGKILL) — no orphans."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGTERM))


class Child:
    """One supervised process: own session (so a terminal's Ctrl-C reaches only the supervisor, which
    then stops children in order), output to a log file, stop = TERM then KILL after a grace period."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, *, env: dict[str, str] | None = None,
                 cwd: Path = REPO_ROOT):
        self.name, self.argv, self.log_path = name, list(argv), log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                    **(env or {})}
        preexec = _die_with_parent if _PRCTL is not None else None
        self.proc = subprocess.Popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     cwd=cwd, env=full_env, start_new_session=True, preexec_fn=preexec)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def poll(self) -> int | None:
        return self.proc.poll()

    def check(self) -> None:
        if (code := self.proc.poll()) is not None:
            raise ChildDied(self, code)

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.rstrip().splitlines()[-lines:])

    def signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signum)

    def wait(self, timeout_s: float) -> int | None:
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, grace_s: float = 10.0) -> int | None:
        """SIGTERM the child's process group, SIGKILL it after `grace_s`; idempotent."""
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            if self.wait(grace_s) is None:
                self.signal(signal.SIGKILL)
                self.wait(5.0)
        self._log.close()
        return self.proc.poll()


class Supervisor:
    """The set of children of one stack: started in order, checked together, stopped in reverse."""

    def __init__(self) -> None:
        self.children: list[Child] = []

    def start(self, name: str, argv: Sequence[str], log_path: Path, **kwargs: Any) -> Child:
        child = Child(name, argv, log_path, **kwargs)
        self.children.append(child)
        return child

    def check(self, *, except_for: Sequence[Child] = ()) -> None:
        for child in self.children:
            if child not in except_for:
                child.check()

    def stop_all(self) -> None:
        for child in reversed(self.children):
            child.stop()

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


class PrometheusAPI:
    """The few calls of the Prometheus HTTP API the demo and the tests need."""

    def __init__(self, base_url: str):
        self.base_url = base_url.rstrip("/")

    def get(self, path: str, **params: Any) -> Any:
        query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        status, body = http_get(f"{self.base_url}{path}?{query}", 30.0)
        payload = json.loads(body)
        if status != 200 or payload.get("status") != "success":
            raise StackError(f"Prometheus {path} {params}: HTTP {status}: {payload.get('error', body[:200])}")
        return payload["data"]

    def query(self, expr: str, time_s: float | None = None) -> list[dict]:
        return self.get("/api/v1/query", query=expr, time=time_s)["result"]

    def query_range(self, expr: str, start_s: float, end_s: float, step_s: float) -> list[dict]:
        return self.get("/api/v1/query_range", query=expr, start=start_s, end=end_s, step=step_s)["result"]

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
def prometheus_argv(binary: str, config: Path, tsdb: Path, port: int) -> list[str]:
    return [binary, f"--config.file={config}", f"--storage.tsdb.path={tsdb}",
            f"--web.listen-address={LOOPBACK}:{port}", "--storage.tsdb.retention.time=15d",
            "--log.level=warn"]


# Query semantics equal to Prometheus's for the analysis's query_range (README "Long-term storage").
# -search.latencyOffset=0s is required: with the default 30 s, VictoriaMetrics adjusts the points of the
# last 30 s before "now", so an analysis run right after the run ends gets another window end (and, in
# tests/test_stack_longterm.py, another verdict). The other two pin Prometheus's semantics explicitly:
# no deduplication (every scrape kept) and Prometheus's 5 min lookback.
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
        "thermograd.trainer", "--model", "tiny", "--steps", str(steps), "--batch-size", "2", "--seq-len", "32", "--seed", "0",
        "--device", "cpu", "--perturb", perturb, "--port", str(port), "--log-dir", str(log_dir),
        "--linger", f"{linger_s:g}", "--run-id", run_id, "--gpu-uuid", gpu_uuid, "--quiet", *extra)


def device_info(metrics_text: str) -> list[dict[str, str]]:
    """Labels of every rle_device_info series in an exposition text (the exporter's /metrics)."""
    from prometheus_client.parser import text_string_to_metric_families

    return [dict(sample.labels) for family in text_string_to_metric_families(metrics_text)
            for sample in family.samples if sample.name == "rle_device_info"]
