"""A stand-in for NVIDIA's dcgm-exporter or utkuozdemir's nvidia_gpu_exporter, for tests without a GPU.

    python -m testkit.standin_exporter --format dcgm|nvidia-smi --port N [--gpus K] [--collect-interval-s S]
                                       [--uuid UUID ...] [--load SPEC] [--sim-profile default|demo] [--seed N]

serves `/metrics` in the chosen exporter's exposition format, with values from simulated GPUs that evolve
(the physics are thermograd's own simulated GPU, `exporter/backends/sim.py`: a first-order thermal model
heated by `--load`, clocks dropping past 86 °C). It prints `standin: listening on http://HOST:PORT/metrics`
on stderr once it serves; SIGTERM/SIGINT stop it (exit 0); bad flags print one line and exit 2.

Flags:
  --format dcgm|nvidia-smi   which exporter to stand in for (required)
  --port N / --bind ADDR     where to listen (port 0 picks a free one; bind 127.0.0.1)
  --gpus K                   simulated GPUs (default 1)
  --uuid UUID                each GPU's NVML UUID, repeatable, in GPU order (any case, with or without the
                             `GPU-` prefix; default: a fixed UUID derived from --seed and the index). dcgm
                             writes it as NVML does (`GPU-` + lower-case hex), nvidia-smi without the prefix.
  --collect-interval-s S     seconds between collections; between two the same values are served again,
                             as the real exporters do (dcgm-exporter's `--collect-interval`, default 30 s;
                             nvidia_gpu_exporter's `--collect.interval`, default 0 = collect on every scrape)
  --load SPEC                the simulated load, as the exporter's --sim-load: a constant `0.8` (default),
                             steps `0:0.2,60:1`, `pid:FILE` (a process's CPU use) or `host`
  --sim-profile, --seed      the simulated card (exporter/backends/sim.py) and its noise
  --hostname NAME            dcgm's host label value (default: this host's name)
  --hostname-label Hostname|hostname
                             dcgm-exporter up to 4.5 writes `Hostname`; its current main writes `hostname`
  --pod GPU=NAMESPACE/POD/CONTAINER
                             dcgm with `-k` (kubelet pod-resources): that GPU's series get pod, namespace and
                             container labels; repeatable
  --power-limit              dcgm: also serve DCGM_FI_DEV_POWER_MGMT_LIMIT and the power/thermal violation
                             counters (not in dcgm-exporter's default counters; a user adds them to the CSV)
  --backend exec|nvml        nvidia-smi: exec (default: nvidia_smi_command_exit_code) or nvml (adds
                             nvidia_smi_energy_joules_total, nvidia_smi_nvml_return_code instead)
  --legacy-throttle-names    nvidia-smi: `nvidia_smi_clocks_throttle_reasons_*` (drivers before 535) instead
                             of `nvidia_smi_clocks_event_reasons_*`

What each format writes (from dcgm-exporter's etc/default-counters.csv and its text template, and
nvidia_gpu_exporter's docs/METRICS.md and scrape examples; names in docs/metrics.md, "Foreign exporters"):

* dcgm: `# HELP NAME TEXT` / `# TYPE NAME gauge|counter` per field in the counter CSV's order, then one line
  per GPU with labels in the template's order `gpu, UUID, pci_bus_id, device (nvidia<i>), modelName,
  Hostname` then the label counters (`DCGM_FI_DRIVER_VERSION`) and the pod attributes (`container,
  namespace, pod`, sorted). Integer fields print as integers (°C, MHz, %, MiB, mJ, ns), double fields with
  Go's `%f` (power: `245.123000`). Served default counters: SM/memory clock, memory/GPU temperature,
  power, total energy, PCIe replays, GPU/memory-copy/encoder/decoder utilisation, last XID, framebuffer
  free/used/reserved. Left out (what a PCIe card without NVLink, vGPU or DCP support reports as blank,
  which dcgm-exporter skips): NVLink bandwidth, vGPU licence, remapped rows, the DCGM_FI_PROF_* fields.
* nvidia-smi: Go client_golang's format: families sorted by name, labels sorted by name, values in Go's
  shortest float format (`1.98e+09`, `631.95`, `700`). Per-GPU series carry only `uuid` (lower case, no
  `GPU-`); `nvidia_smi_gpu_info` carries the identity. Units are converted as the exporter does: MHz -> Hz
  (`_hz`), % -> ratio (`_ratio`), MiB -> bytes. The Go runtime and process families are left out.

Static one-scrape fixtures of both formats, written from the same documented lists, are in
tests/data/dcgm-exporter.prom and tests/data/nvidia-gpu-exporter.prom; tests/test_analysis_sources.py checks
that this stand-in writes the same names, types and label names.
"""

from __future__ import annotations

import argparse
import math
import signal
import socket
import sys
import threading
import time
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

from thermograd.endpoint.server import TEXT, BoundedHTTPServer, serve_in_thread
from thermograd.exporter.backends.base import Reading
from thermograd.exporter.backends.sim import SIM_PROFILES, SimBackend, SimParams, parse_load

MIB = 1024**2
DEFAULT_INTERVAL_S = {"dcgm": 30.0, "nvidia-smi": 0.0}  # the real exporters' defaults
DCGM_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DRIVER_VERSION = "550.90.07"
CUDA_VERSION = "12.4"
MODEL = "thermograd simulated GPU"  # the sim backend's model name: 24 GiB, 250 W, 1.98 GHz
BOOT_ENERGY_J = 4.2e6  # the energy counters run since the driver loaded, not since the stand-in started


class UsageError(Exception):
    """Bad input: one line on stderr, exit 2."""


# ------------------------------------------------------------------------------------------ values
def go_float(value: float) -> str:
    """A float as Go's strconv.FormatFloat(v, 'g', -1, 64) writes it (client_golang's text format):
    the shortest digits that round-trip, in exponent form when the exponent is < -4 or >= 6 (1.98e+09)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    sign = "-" if value < 0 else ""
    digits_t, exponent = Decimal(repr(abs(value))).normalize().as_tuple()[1:]
    digits = "".join(map(str, digits_t))
    exp10 = len(digits) + int(exponent) - 1  # the exponent of the first digit
    if exp10 < -4 or exp10 >= 6:
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{sign}{mantissa}e{'-' if exp10 < 0 else '+'}{abs(exp10):02d}"
    fixed = format(Decimal(f"{digits[0]}.{digits[1:] or '0'}e{exp10}"), "f")
    return sign + (fixed.rstrip("0").rstrip(".") if "." in fixed else fixed)


def go_int(value: float) -> str:
    """An int64 DCGM field (Go's %d)."""
    return str(int(round(value)))


def go_fixed(value: float) -> str:
    """A double DCGM field (Go's %f: six decimals)."""
    return f"{value:f}"


@dataclass(frozen=True)
class Gpu:
    index: int
    uuid: str  # NVML form: "GPU-" + lower-case hex
    pci_bus_id: str
    pod: tuple[str, str, str] | None  # (namespace, pod, container) with dcgm -k


@dataclass(frozen=True)
class Family:
    name: str
    kind: str  # gauge | counter
    help: str
    value: Callable[[Reading, Gpu, SimParams], float | None]
    fmt: Callable[[float], str] = go_float


def _throttled(*reasons: str) -> Callable[[Reading, Gpu, SimParams], float]:
    return lambda r, g, p: float(any((r.throttle or {}).get(reason, False) for reason in reasons))


# ---------------------------------------------------------------------------------------- dcgm
def _util(r: Reading) -> float:
    return r.util_pct or 0.0


DCGM_FAMILIES = (
    Family("DCGM_FI_DEV_SM_CLOCK", "gauge", "SM clock frequency (in MHz).",
           lambda r, g, p: r.sm_clock_hz / 1e6, go_int),
    Family("DCGM_FI_DEV_MEM_CLOCK", "gauge", "Memory clock frequency (in MHz).",
           lambda r, g, p: r.memory_clock_hz / 1e6, go_int),
    Family("DCGM_FI_DEV_MEMORY_TEMP", "gauge", "Memory temperature (in C).", lambda r, g, p: r.temp_c + 6.0, go_int),
    Family("DCGM_FI_DEV_GPU_TEMP", "gauge", "GPU temperature (in C).", lambda r, g, p: r.temp_c, go_int),
    Family("DCGM_FI_DEV_POWER_USAGE", "gauge", "Power draw (in W).", lambda r, g, p: r.power_w, go_fixed),
    Family("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "counter", "Total energy consumption since boot (in mJ).",
           lambda r, g, p: (BOOT_ENERGY_J + r.energy_j) * 1e3, go_int),
    Family("DCGM_FI_DEV_PCIE_REPLAY_COUNTER", "counter", "Total number of PCIe retries.", lambda r, g, p: 0, go_int),
    Family("DCGM_FI_DEV_GPU_UTIL", "gauge", "GPU utilization (in %).", lambda r, g, p: _util(r), go_int),
    Family("DCGM_FI_DEV_MEM_COPY_UTIL", "gauge", "Memory utilization (in %).", lambda r, g, p: 0.4 * _util(r), go_int),
    Family("DCGM_FI_DEV_ENC_UTIL", "gauge", "Encoder utilization (in %).", lambda r, g, p: 0, go_int),
    Family("DCGM_FI_DEV_DEC_UTIL", "gauge", "Decoder utilization (in %).", lambda r, g, p: 0, go_int),
    Family("DCGM_FI_DEV_XID_ERRORS", "gauge", "Value of the last XID error encountered.", lambda r, g, p: 0, go_int),
    Family("DCGM_FI_DEV_FB_FREE", "gauge", "Framebuffer memory free (in MiB).",
           lambda r, g, p: (r.memory_total_bytes - r.memory_used_bytes) / MIB - 512, go_int),
    Family("DCGM_FI_DEV_FB_USED", "gauge", "Framebuffer memory used (in MiB).",
           lambda r, g, p: r.memory_used_bytes / MIB, go_int),
    Family("DCGM_FI_DEV_FB_RESERVED", "gauge", "Framebuffer memory reserved (in MiB).", lambda r, g, p: 512, go_int),
)
# Not in the default counters: a user who wants the power limit and throttling time adds these lines.
DCGM_EXTRA_FAMILIES = (
    Family("DCGM_FI_DEV_POWER_MGMT_LIMIT", "gauge", "Power management limit (in W).",
           lambda r, g, p: p.power_limit_w, go_fixed),
    Family("DCGM_FI_DEV_POWER_VIOLATION", "counter", "Throttling duration due to power constraints (in ns).",
           lambda r, g, p: None, go_int),
    Family("DCGM_FI_DEV_THERMAL_VIOLATION", "counter", "Throttling duration due to thermal constraints (in ns).",
           lambda r, g, p: None, go_int),
)
VIOLATION_REASONS = {"DCGM_FI_DEV_POWER_VIOLATION": ("sw_power_cap", "hw_power_brake"),
                     "DCGM_FI_DEV_THERMAL_VIOLATION": ("sw_thermal", "hw_thermal", "hw_slowdown")}
XID_ATTRIBUTES = {"err_code": "0", "err_msg": "No Error"}  # what dcgm-exporter adds to the last-XID gauge


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _labels(pairs: list[tuple[str, str]]) -> str:
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs) + "}"


def render_dcgm(readings: list[tuple[Gpu, Reading, dict[str, float]]], params: SimParams, opts: argparse.Namespace,
                ) -> str:
    """One scrape in dcgm-exporter's text template (gpu, UUID, pci_bus_id, device, modelName, host label, the
    label counters, then the attributes in sorted order)."""
    out: list[str] = []
    for fam in DCGM_FAMILIES + (DCGM_EXTRA_FAMILIES if opts.power_limit else ()):
        out.append(f"# HELP {fam.name} {fam.help}\n# TYPE {fam.name} {fam.kind}\n")
        for gpu, reading, violation_ns in readings:
            value = violation_ns[fam.name] if fam.name in violation_ns else fam.value(reading, gpu, params)
            pairs = [("gpu", str(gpu.index)), ("UUID", gpu.uuid), ("pci_bus_id", gpu.pci_bus_id),
                     ("device", f"nvidia{gpu.index}"), ("modelName", MODEL), (opts.hostname_label, opts.hostname),
                     ("DCGM_FI_DRIVER_VERSION", DRIVER_VERSION)]
            attributes = dict(XID_ATTRIBUTES) if fam.name == "DCGM_FI_DEV_XID_ERRORS" else {}
            if gpu.pod:
                attributes.update(zip(("namespace", "pod", "container"), gpu.pod, strict=True))
            pairs += sorted(attributes.items())
            out.append(f"{fam.name}{_labels(pairs)} {fam.fmt(value)}\n")
    return "".join(out)


# ----------------------------------------------------------------------------------------- nvidia-smi
EVENT_REASONS = {  # nvidia-smi's clocks_event_reasons.* field -> the simulated GPU's NVML reason
    "applications_clocks_setting": "applications_clocks", "gpu_idle": "gpu_idle",
    "hw_power_brake_slowdown": "hw_power_brake", "hw_slowdown": "hw_slowdown",
    "hw_thermal_slowdown": "hw_thermal", "sw_power_cap": "sw_power_cap",
    "sw_thermal_slowdown": "sw_thermal", "sync_boost": "sync_boost",
}


def nvidia_smi_families(opts: argparse.Namespace) -> list[Family]:
    """The per-GPU families (label `uuid`), with the units the exporter converts to."""
    events = "clocks_throttle_reasons" if opts.legacy_throttle_names else "clocks_event_reasons"
    fams = [
        Family("nvidia_smi_clocks_current_memory_clock_hz", "gauge", "clocks.current.memory [MHz]",
               lambda r, g, p: round(r.memory_clock_hz / 1e6) * 1e6),
        Family("nvidia_smi_clocks_current_sm_clock_hz", "gauge", "clocks.current.sm [MHz]",
               lambda r, g, p: round(r.sm_clock_hz / 1e6) * 1e6),
        Family("nvidia_smi_clocks_max_sm_clock_hz", "gauge", "clocks.max.sm [MHz]",
               lambda r, g, p: round(p.max_sm_clock_hz / 1e6) * 1e6),
        Family("nvidia_smi_enforced_power_limit_watts", "gauge", "enforced.power.limit [W]",
               lambda r, g, p: p.power_limit_w),
        Family("nvidia_smi_index", "gauge", "index", lambda r, g, p: g.index),
        Family("nvidia_smi_memory_total_bytes", "gauge", "memory.total [MiB]",
               lambda r, g, p: round(r.memory_total_bytes / MIB) * MIB),
        Family("nvidia_smi_memory_used_bytes", "gauge", "memory.used [MiB]",
               lambda r, g, p: round(r.memory_used_bytes / MIB) * MIB),
        Family("nvidia_smi_power_draw_watts", "gauge", "power.draw [W]", lambda r, g, p: round(r.power_w, 2)),
        Family("nvidia_smi_power_limit_watts", "gauge", "power.limit [W]", lambda r, g, p: p.power_limit_w),
        Family("nvidia_smi_temperature_gpu", "gauge", "temperature.gpu", lambda r, g, p: round(r.temp_c)),
        Family("nvidia_smi_utilization_gpu_ratio", "gauge", "utilization.gpu [%]",
               lambda r, g, p: round(_util(r)) / 100),
        Family("nvidia_smi_utilization_memory_ratio", "gauge", "utilization.memory [%]",
               lambda r, g, p: round(0.4 * _util(r)) / 100),
    ]
    fams += [Family(f"nvidia_smi_{events}_{field}", "gauge", f"{events}.{field}", _throttled(reason))
             for field, reason in EVENT_REASONS.items()]
    if opts.backend == "nvml":
        fams.append(Family("nvidia_smi_energy_joules_total", "counter",
                           "Total energy consumed by the GPU in joules since the driver was last loaded. "
                           "Resets on a driver reload; absent on GPUs that cannot report it.",
                           lambda r, g, p: round(BOOT_ENERGY_J + r.energy_j, 3)))
    return fams


def render_nvidia_smi(readings: list[tuple[Gpu, Reading, dict[str, float]]], params: SimParams,
                      opts: argparse.Namespace, collected_at_s: float, took_s: float) -> str:
    """One scrape as client_golang writes it: families by name, labels by name, Go float format."""
    blocks: dict[str, str] = {}
    for fam in nvidia_smi_families(opts):
        lines = [f'{fam.name}{{uuid="{nvsmi_uuid(g.uuid)}"}} {fam.fmt(fam.value(r, g, params))}\n'
                 for g, r, _ in readings]
        blocks[fam.name] = f"# HELP {fam.name} {fam.help}\n# TYPE {fam.name} {fam.kind}\n" + "".join(lines)
    info_help = ("A metric with a constant '1' value labeled by gpu uuid, name, driver_model_current, "
                 "driver_model_pending, vbios_version, driver_version, pci_bus_id, serial, compute_cap, "
                 "pci_sub_device_id, index, cuda_version.")
    info = [_labels(sorted({"uuid": nvsmi_uuid(g.uuid), "name": MODEL, "driver_model_current": "[N/A]",
                            "driver_model_pending": "[N/A]", "vbios_version": "94.02.5C.00.01",
                            "driver_version": DRIVER_VERSION, "pci_bus_id": g.pci_bus_id,
                            "serial": f"132232{g.index:07d}", "compute_cap": "8.6",
                            "pci_sub_device_id": "0x153110DE", "index": str(g.index),
                            "cuda_version": CUDA_VERSION}.items())) for g, _, _ in readings]
    blocks["nvidia_smi_gpu_info"] = (f"# HELP nvidia_smi_gpu_info {info_help}\n# TYPE nvidia_smi_gpu_info gauge\n"
                                     + "".join(f"nvidia_smi_gpu_info{labels} 1\n" for labels in info))
    status = ("nvidia_smi_nvml_return_code", "NVML return code of the most recent collection (0 = success)") \
        if opts.backend == "nvml" else ("nvidia_smi_command_exit_code", "Exit code of the most recent nvidia-smi run")
    health = [(*status, "gauge", 0.0),
              ("nvidia_smi_failed_scrapes_total", "Number of failed collections", "counter", 0.0),
              ("nvidia_smi_last_collect_success", "Whether the most recent collection succeeded (1) or not (0)",
               "gauge", 1.0),
              ("nvidia_smi_last_collect_success_timestamp_seconds",
               "Unix timestamp of the most recent successful collection", "gauge", round(collected_at_s, 3)),
              ("nvidia_smi_last_collect_duration_seconds", "Duration of the most recent collection", "gauge", took_s)]
    for name, text, kind, value in health:
        blocks[name] = f"# HELP {name} {text}\n# TYPE {name} {kind}\n{name} {go_float(value)}\n"
    return "".join(blocks[name] for name in sorted(blocks))


# ------------------------------------------------------------------------------------------ identity
def nvml_uuid(text: str) -> str:
    """Any spelling of a GPU UUID -> NVML's: 'GPU-' + lower-case."""
    bare = text.strip()
    if bare[:4].upper() == "GPU-":
        bare = bare[4:]
    if not bare:
        raise UsageError(f"--uuid {text!r}: empty")
    return "GPU-" + bare.lower()


def nvsmi_uuid(nvml: str) -> str:
    """nvidia_gpu_exporter's `uuid` label: lower case, without NVML's 'GPU-' prefix."""
    return nvml[4:].lower() if nvml[:4].upper() == "GPU-" else nvml.lower()


def default_uuid(seed: int, index: int) -> str:
    return "GPU-" + str(uuidlib.uuid5(uuidlib.NAMESPACE_URL, f"thermograd-standin/{seed}/{index}"))


def parse_pods(specs: list[str], gpus: int) -> dict[int, tuple[str, str, str]]:
    pods = {}
    for spec in specs:
        index, sep, rest = spec.partition("=")
        parts = rest.split("/")
        if not sep or not index.isdigit() or int(index) >= gpus or len(parts) != 3 or not all(parts):
            raise UsageError(f"--pod expects GPU=NAMESPACE/POD/CONTAINER with GPU < {gpus}, got {spec!r}")
        pods[int(index)] = (parts[0], parts[1], parts[2])
    return pods


# ------------------------------------------------------------------------------------------ serving
class StandIn:
    """Simulated GPUs read once per collection; /metrics serves the text of the latest collection."""

    def __init__(self, opts: argparse.Namespace) -> None:
        self.opts = opts
        self.params = SIM_PROFILES[opts.sim_profile]
        self.backend = SimBackend(opts.gpus, seed=opts.seed, load=parse_load(opts.load), params=self.params)
        uuids = ([nvml_uuid(u) for u in opts.uuid]
                 + [default_uuid(opts.seed, i) for i in range(len(opts.uuid), opts.gpus)])
        pods = parse_pods(opts.pod, opts.gpus)
        self.gpus = [Gpu(i, uuids[i], f"00000000:{0x17 + 0x20 * i:02X}:00.0", pods.get(i)) for i in range(opts.gpus)]
        self.violation_ns = [dict.fromkeys(VIOLATION_REASONS, 0.0) for _ in self.gpus]
        self._last_s: float | None = None
        self._lock = threading.Lock()
        self.text = b""
        self.collections = 0

    def collect(self) -> None:
        start = time.time()
        readings = []
        with self._lock:
            dt_s = 0.0 if self._last_s is None else start - self._last_s
            self._last_s = start
            for gpu, violations in zip(self.gpus, self.violation_ns, strict=True):
                reading = self.backend.read(gpu.index, time.monotonic())
                for name, reasons in VIOLATION_REASONS.items():  # ns spent throttled, like DCGM's counters
                    if any((reading.throttle or {}).get(r, False) for r in reasons):
                        violations[name] += dt_s * 1e9
                readings.append((gpu, reading, dict(violations)))
            if self.opts.format == "dcgm":
                text = render_dcgm(readings, self.params, self.opts)
            else:
                text = render_nvidia_smi(readings, self.params, self.opts, start, time.time() - start)
            self.text = text.encode()
            self.collections += 1

    def metrics(self) -> tuple[int, bytes, str]:
        if self.opts.collect_interval_s == 0:  # nvidia_gpu_exporter's default: collect on every scrape
            self.collect()
        content_type = DCGM_CONTENT_TYPE if self.opts.format == "dcgm" else "text/plain; version=0.0.4; charset=utf-8"
        return 200, self.text, content_type

    def run_collections(self, stop: threading.Event) -> None:
        while not stop.wait(self.opts.collect_interval_s):
            self.collect()


def build_parser() -> argparse.ArgumentParser:
    class Parser(argparse.ArgumentParser):
        def error(self, message: str) -> None:
            raise UsageError(message)

    p = Parser(prog="python -m testkit.standin_exporter", description=__doc__.split("\n\n")[0])
    p.add_argument("--format", required=True, choices=("dcgm", "nvidia-smi"))
    p.add_argument("--port", required=True, type=int)
    p.add_argument("--bind", default="127.0.0.1")
    p.add_argument("--gpus", type=int, default=1)
    p.add_argument("--collect-interval-s", type=float, default=None)
    p.add_argument("--uuid", action="append", default=[])
    p.add_argument("--load", default="0.8")
    p.add_argument("--sim-profile", choices=sorted(SIM_PROFILES), default="default")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hostname", default=socket.gethostname())
    p.add_argument("--hostname-label", choices=("Hostname", "hostname"), default="Hostname")
    p.add_argument("--pod", action="append", default=[])
    p.add_argument("--power-limit", action="store_true")
    p.add_argument("--backend", choices=("exec", "nvml"), default="exec")
    p.add_argument("--legacy-throttle-names", action="store_true")
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    opts = build_parser().parse_args(argv)
    if not 1 <= opts.gpus <= 64:
        raise UsageError(f"--gpus must be 1-64, got {opts.gpus}")
    if len(opts.uuid) > opts.gpus:
        raise UsageError(f"{len(opts.uuid)} --uuid values for {opts.gpus} GPU(s)")
    if opts.collect_interval_s is None:
        opts.collect_interval_s = DEFAULT_INTERVAL_S[opts.format]
    if not (math.isfinite(opts.collect_interval_s) and opts.collect_interval_s >= 0):
        raise UsageError(f"--collect-interval-s must be >= 0, got {opts.collect_interval_s:g}")
    if opts.format == "dcgm" and opts.collect_interval_s == 0:
        raise UsageError("dcgm-exporter always collects on an interval: --collect-interval-s must be > 0")
    try:
        parse_load(opts.load)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return opts


def main(argv: list[str] | None = None) -> int:
    try:
        opts = parse_args(argv)
        standin = StandIn(opts)
        standin.collect()
        routes = {"/metrics": standin.metrics, "/health": lambda: (200, b"OK\n", TEXT),
                  "/": lambda: (200, f"thermograd stand-in for {opts.format}: /metrics\n".encode(), TEXT)}
        try:
            server = BoundedHTTPServer((opts.bind, opts.port), routes, name="standin")
        except OSError as exc:
            raise UsageError(f"cannot listen on {opts.bind}:{opts.port}: {exc.strerror or exc}") from None
    except UsageError as exc:
        print(f"standin: error: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.set())
    if opts.collect_interval_s > 0:
        threading.Thread(target=standin.run_collections, args=(stop,), name="collect", daemon=True).start()
    serve_in_thread(server)
    host, port = server.server_address[:2]
    print(f"standin: listening on http://{host}:{port}/metrics ({opts.format}, {opts.gpus} GPU(s), "
          f"collect every {opts.collect_interval_s:g} s; UUIDs {', '.join(g.uuid for g in standin.gpus)})",
          file=sys.stderr, flush=True)
    stop.wait()
    server.shutdown()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
