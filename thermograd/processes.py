"""Starting the system's Prometheus (and other daemons) as supervised children on loopback.

`thermograd run --prometheus` starts a Prometheus here; `make demo` and the integration tests
(scripts/stacklib.py) start theirs with the same pieces: find the binary, render its argv, run it as a
`Child` that dies with its parent and logs to a file.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

LOOPBACK = "127.0.0.1"
# Debian names the Alertmanager binary prometheus-alertmanager; upstream tarballs call it alertmanager.
BINARY_NAMES = {"prometheus": ("prometheus",), "alertmanager": ("prometheus-alertmanager", "alertmanager")}
# Long-term storage (the longterm test only, not the demo): Debian's victoria-metrics, upstream's -prod.
LONGTERM_BINARY_NAMES = {"victoriametrics": ("victoria-metrics", "victoria-metrics-prod")}
APT_PACKAGES = {"prometheus": "prometheus", "promtool": "prometheus",
                "alertmanager": "prometheus-alertmanager", "amtool": "prometheus-alertmanager",
                "victoriametrics": "victoria-metrics"}


class ProcessError(RuntimeError):
    """A failure to report in one line."""


class ChildExited(ProcessError):
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


def prometheus_argv(binary: str, config: Path, tsdb: Path, port: int) -> list[str]:
    return [binary, f"--config.file={config}", f"--storage.tsdb.path={tsdb}",
            f"--web.listen-address={LOOPBACK}:{port}", "--storage.tsdb.retention.time=15d",
            "--log.level=warn"]


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


def die_with_parent(signum: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A `preexec_fn` for Popen: the child gets `signum` when this process dies, even by SIGKILL, so it is never
    left running without its supervisor (None where there is no prctl: not Linux).

    The kernel signals the child when the *thread* that started it ends: start the child from the thread that
    outlives it (the main thread). When the whole process dies, the child is handed from thread to thread as
    they end and signalled at each: it may get `signum` more than once, in quick succession. A parent that died
    between fork and the prctl call would never signal: the child then exits before exec, as told to."""
    if _PRCTL is None:
        return None
    prctl, parent = _PRCTL, os.getpid()

    def in_child() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signum))
        if os.getppid() != parent:
            os._exit(128 + int(signum))

    return in_child


class Child:
    """One supervised process: own session (so a terminal's Ctrl-C reaches only the supervisor, which
    then stops children in order), output to a log file, stop = TERM then KILL after a grace period."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, *, env: dict[str, str] | None = None,
                 cwd: Path | None = None):
        self.name, self.argv, self.log_path = name, list(argv), log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                    **(env or {})}
        self.proc = subprocess.Popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     cwd=cwd, env=full_env, start_new_session=True, preexec_fn=die_with_parent())

    @property
    def pid(self) -> int:
        return self.proc.pid

    def poll(self) -> int | None:
        return self.proc.poll()

    def check(self) -> None:
        if (code := self.proc.poll()) is not None:
            raise ChildExited(self, code)

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
