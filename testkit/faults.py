"""Helpers of the fault suite (tests/test_faults_*.py) and of bench/bench_http_servers.py: real processes, real
sockets (raw clients that scrape, drip a head or wait for the server to hang up), /proc readings."""

from __future__ import annotations

import os
import resource
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from testkit.stack import REPO_ROOT, free_port
from testkit.stack import http_get as get  # (status, body), an HTTP error status included

__all__ = ["get"]

# A library user's training process serving /metrics: TrainingMetrics only (no torch import).
TRAINER_ENDPOINT = (
    "import sys, time\n"
    "from thermograd.trainer.metrics import TrainingMetrics\n"
    "m = TrainingMetrics(port=int(sys.argv[1]), run_id='fault')\n"
    "m.observe_step(1, 2.0, 0.5, 1e-3, tokens=64)\n"
    "print('ready', flush=True)\n"
    "time.sleep(600)\n"
)


@dataclass
class Served:
    proc: subprocess.Popen
    base: str
    log: Path
    kind: str

    @property
    def port(self) -> int:
        return int(self.base.rsplit(":", 1)[1])

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")


def ignore_sigint() -> None:
    """preexec_fn: start the child with SIGINT ignored, as nohup or a CI runner without a terminal does."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextmanager
def serving(kind: str, tmp_path: Path, *args: str,
            preexec_fn: Callable[[], None] | None = None) -> Iterator[Served]:
    """The exporter (`thermograd-exporter --backend sim ...`) or a trainer endpoint, up and answering."""
    port = free_port()
    log = tmp_path / f"{kind}.log"
    if kind == "exporter":
        argv = [sys.executable, "-m", "thermograd.exporter", "--backend", "sim", "--sim-load", "0.8",
                "--port", str(port), *args]
    else:
        argv = [sys.executable, "-c", TRAINER_ENDPOINT, str(port)]
    with open(log, "w") as err:
        proc = subprocess.Popen(argv, stderr=err, stdout=subprocess.DEVNULL, cwd=REPO_ROOT, preexec_fn=preexec_fn)
    served = Served(proc, f"http://127.0.0.1:{port}", log, kind)
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, served.stderr()
            try:
                if get(served.base + "/metrics", timeout_s=2)[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "did not start: " + served.stderr()
            time.sleep(0.1)
        yield served
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def scrape_raw(port: int, timeout: float) -> bool:
    """One scrape on a fresh connection: True when a complete 200 answer came back in time."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        return data.startswith(b"HTTP/1.1 200") and b"_total" in data
    except OSError:
        return False


def drip(port: int, stop: threading.Event, every_s: float) -> socket.socket:
    """A client that sends a request line, then one header byte every `every_s`: each byte resets a
    socket timeout, so only a deadline on the whole head ends it."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(b"GET /metrics HTTP/1.1\r\n")

    def send_bytes() -> None:
        while not stop.wait(every_s):
            try:
                sock.sendall(b"x")
            except OSError:
                return

    threading.Thread(target=send_bytes, daemon=True).start()
    return sock


def closed_within(sock: socket.socket, seconds: float) -> float | None:
    """Seconds until the server closed the connection (EOF or reset), None if it stayed open."""
    started = time.monotonic()
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return None
    except OSError:
        pass
    return time.monotonic() - started


def low_fd_limit() -> None:
    """preexec_fn: start the child at RLIMIT_NOFILE 24."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (24, 24))


def proc_status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def rss_mb(pid: int) -> float:
    return proc_status(pid, "VmRSS") / 1024


def threads(pid: int) -> int:
    return proc_status(pid, "Threads")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def reset(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the peer gets a TCP RST, as when a scrape times out and is cut."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Exit 2, no traceback, one line on stderr holding every needle; returns that line."""
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def run_module(module: str, *args: str, timeout: float = 60, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO_ROOT, **kwargs)


def sample(body: bytes, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    raise KeyError(f"{name}{labels}")
