"""Command line: `thermograd-exporter [serve flags]` and `thermograd-exporter recompute ...`.

Bad input ends with one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import math
import signal
import sys
import threading
from dataclasses import fields
from pathlib import Path

from thermograd.commandline import OneLineParser, UsageError
from thermograd.endpoint.webconfig import load as load_web_config
from thermograd.exporter import __version__
from thermograd.exporter.backends import BackendUnavailable
from thermograd.exporter.engine import RleConfig
from thermograd.exporter.labcsv import LabCsvError
from thermograd.exporter.monitor import HardwareMonitor, MonitorSpec, UnknownDevice, per_device
from thermograd.exporter.record import RecordError

log = logging.getLogger("thermograd.exporter")

DEFAULT_PORT = 9842  # not 9835 / 9400: nvidia_gpu_exporter and dcgm-exporter often run beside us
MAX_SAMPLE_HZ = 10.0
MAX_SIM_DEVICES = 64  # more GPUs than any node holds; 10**9 would exhaust memory building the devices
# RleConfig fields of the collapse detector get --collapse-*, the index's windows and floors --rle-*.
_DETECTOR_FIELDS = {"warmup_s", "peak_decay_per_s", "gate_util_pct", "gate_load_ratio", "gate_heating_c",
                    "gate_heating_window_s",
                    "drop_frac", "hold_s", "evidence_sustain_s", "evidence_temp_margin_c",
                    "evidence_power_cap_ratio"}


def _flag(field_name: str) -> str:
    prefix = "collapse" if field_name in _DETECTOR_FIELDS else "rle"
    return f"--{prefix}-{field_name.replace('_', '-')}"


def add_rle_config_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("RLE engine and collapse detector (defaults: the RLE lab's)")
    for f in fields(RleConfig):
        group.add_argument(_flag(f.name), dest=f"rle_{f.name}", type=float, default=f.default, metavar="X",
                           help=f"default {f.default}")


def rle_config_from(args: argparse.Namespace) -> RleConfig:
    try:
        return RleConfig(**{f.name: getattr(args, f"rle_{f.name}") for f in fields(RleConfig)})
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def parse_device_values(specs: list[str], flag: str, positive: bool) -> dict[str | None, float]:
    """['250', '1=300'] -> {None: 250, '1': 300}; None is the value for every other device."""
    values: dict[str | None, float] = {}
    for spec in specs:
        device, _, text = spec.rpartition("=")
        try:
            value = float(text)
        except ValueError:
            raise UsageError(f"{flag} expects [DEV=]NUMBER, got {spec!r}") from None
        if not math.isfinite(value) or (positive and value <= 0):
            raise UsageError(f"{flag} must be {'> 0' if positive else 'finite'}, got {spec!r}")
        values[device or None] = value
    return values


def build_serve_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="thermograd-exporter", description="RLE exporter: GPU/CPU hardware and the RLE index "
                "on a Prometheus endpoint. `thermograd-exporter recompute --help` re-scores a recording.")
    p.add_argument("--backend", choices=["auto", "nvml", "cpu", "sim", "replay"], default="auto")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--bind", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--sample-hz", type=float, default=1.0, help=f"sampling rate, up to {MAX_SAMPLE_HZ:g} (default 1)")
    p.add_argument("--rated-power", action="append", default=[], metavar="[DEV=]W",
                   help="rated power for A_load (default: the device's power limit); repeatable")
    p.add_argument("--temp-limit", action="append", default=[], metavar="[DEV=]C",
                   help="temperature limit for T_sustain (default 83 GPU, 80 CPU); repeatable")
    p.add_argument("--devices", type=int, default=1, help=f"sim: number of simulated GPUs (1-{MAX_SIM_DEVICES})")
    p.add_argument("--seed", type=int, default=0, help="sim: random seed")
    p.add_argument("--sim-load", action="append", default=[], metavar="[DEV=]SPEC",
                   help="sim: 'host' (host CPU utilization, the default), 'pid:FILE' (CPU use of the process whose "
                   "id FILE holds and of its children, relative to its usual busy rate), a constant load 0-1, or "
                   "steps 't:load,t:load'; repeatable, DEV= for one card (e.g. one rank's process per card)")
    p.add_argument("--sim-profile", choices=["default", "demo"], default="default",
                   help="sim: the simulated card's physics; 'demo' (40 C ambient, half the heat capacity) heats "
                   "through the 83 C limit and throttles within a demo-length run (default: default)")
    p.add_argument("--sim-cooling", action="append", default=[], metavar="[DEV=]F",
                   help="sim: the fraction of its cooling a card has (1 as built; 0.5 a clogged heat sink: twice as "
                   "hot above ambient for the same power, throttling under a load its neighbours survive); "
                   "repeatable, e.g. --sim-cooling 1=0.5")
    p.add_argument("--replay-csv", type=Path, help="replay: an RLE-lab recording")
    p.add_argument("--speed", type=float, default=1.0, help="replay: recording seconds per wall second")
    p.add_argument("--record", type=Path, metavar="FILE.csv",
                   help="also write every sample of every device to this CSV as it is taken (a new file: an "
                   "existing one is never overwritten), in the format thermograd-analysis --rle-csv reads "
                   "(docs/offline-files.md)")
    p.add_argument("--duration", type=float, metavar="S", help="stop after S seconds (default: until stopped)")
    p.add_argument("--web.config.file", dest="web_config_file", type=Path, metavar="FILE",
                   help="TLS, client certificates and basic auth for the endpoint, in the Prometheus "
                   "exporter-toolkit's format (docs/web-config.md)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--version", action="version", version=f"thermograd exporter {__version__}")
    add_rle_config_flags(p)
    return p


def build_recompute_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="thermograd-exporter recompute",
                description="Re-score an RLE-lab recording with thermograd's RLE engine (adds tg_* columns).")
    p.add_argument("--csv", required=True, type=Path)
    p.add_argument("--device", required=True, help="the device column value to score, e.g. gpu or cpu")
    p.add_argument("--rated-power", required=True, type=float, metavar="W")
    p.add_argument("--temp-limit", required=True, type=float, metavar="C")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--interval-s", type=float, default=1.0, help="nominal sample interval (default 1 s)")
    add_rle_config_flags(p)
    return p


def _validate_serve(args: argparse.Namespace) -> None:
    if not (math.isfinite(args.sample_hz) and 0 < args.sample_hz <= MAX_SAMPLE_HZ):
        raise UsageError(f"--sample-hz must be > 0 and <= {MAX_SAMPLE_HZ:g}, got {args.sample_hz:g}")
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be 0-65535, got {args.port}")
    if not 1 <= args.devices <= MAX_SIM_DEVICES:
        raise UsageError(f"--devices must be 1-{MAX_SIM_DEVICES}, got {args.devices}")
    if not (math.isfinite(args.speed) and args.speed > 0):
        raise UsageError(f"--speed must be > 0, got {args.speed:g}")
    if args.duration is not None and not (math.isfinite(args.duration) and args.duration > 0):
        raise UsageError(f"--duration must be a number of seconds > 0, got {args.duration:g}")


def sim_loads(args: argparse.Namespace, parse_load):
    """--sim-load: one load for every card, or (with DEV=) one per card, the rest heated by the host."""
    specs: dict[int | None, str] = {}
    for text in args.sim_load or ["host"]:
        device, sep, spec = text.partition("=")
        if sep and device.strip().isdigit():
            index = int(device)
            if index >= args.devices:
                raise UsageError(f"--sim-load: unknown device {device!r} (devices: 0-{args.devices - 1})")
            specs[index] = spec
        else:
            specs[None] = text
    try:
        if set(specs) <= {None}:
            return parse_load(specs.get(None, "host"))
        return [parse_load(specs.get(i, specs.get(None, "host"))) for i in range(args.devices)]
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def monitor_spec(args: argparse.Namespace) -> MonitorSpec:
    """The serve flags, checked (UsageError) and gathered."""
    from thermograd.exporter.backends.sim import parse_load

    _validate_serve(args)
    sim_load = sim_loads(args, parse_load)
    if args.backend == "replay" and args.replay_csv is None:
        raise UsageError("--backend replay needs --replay-csv PATH")
    return MonitorSpec(sim_cooling=sim_cooling(args),
        backend=args.backend, devices=args.devices, seed=args.seed, sim_load=sim_load, sim_profile=args.sim_profile,
        replay_csv=args.replay_csv, speed=args.speed, sample_hz=args.sample_hz,
        rated_power_w=parse_device_values(args.rated_power, "--rated-power", positive=True),
        temp_limit_c=parse_device_values(args.temp_limit, "--temp-limit", positive=False),
        rle=rle_config_from(args), bind=args.bind, port=args.port, record=args.record,
        web_config=load_web_config(args.web_config_file) if args.web_config_file else None)


def sim_cooling(args: argparse.Namespace) -> dict[int, float]:
    """--sim-cooling by simulated device index (a plain value: every device)."""
    values = parse_device_values(args.sim_cooling, "--sim-cooling", positive=True)
    labels = [str(i) for i in range(args.devices)]
    try:
        return {int(label): value for label, value in per_device(values, labels, "--sim-cooling").items()}
    except UnknownDevice as exc:
        raise UsageError(str(exc)) from None


def open_monitor(spec: MonitorSpec) -> HardwareMonitor:
    """The monitor, with a taken port said as the one-line error it is."""
    try:
        return HardwareMonitor(spec)
    except UnknownDevice as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"cannot listen on {spec.bind}:{spec.port}: {exc.strerror or exc}") from None


def serve(args: argparse.Namespace) -> int:
    spec = monitor_spec(args)
    monitor = open_monitor(spec)
    try:
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, frame: stop.set())
        monitor.start()
        heated = {d.heat_source for d in monitor.devices if d.backend == "sim"}
        for source in heated:
            log.warning("these GPUs are SIMULATED, heated by %s; their numbers are no measurement of real "
                        "hardware (--sim-load picks what heats them)", source)
        recording = f", recording to {spec.record}" if spec.record else ""
        print(f"exporter: listening on {monitor.url} (backend {monitor.backend.name}, "
              f"{args.sample_hz:g} Hz{recording})", file=sys.stderr, flush=True)
        stop.wait(args.duration)
        log.info("shutting down")
    finally:
        monitor.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv[:1] == ["recompute"]:
            from thermograd.exporter import recompute

            args = build_recompute_parser().parse_args(argv[1:])
            if not (math.isfinite(args.rated_power) and args.rated_power > 0):
                raise UsageError(f"--rated-power must be > 0 W, got {args.rated_power:g}")
            if not (math.isfinite(args.interval_s) and args.interval_s > 0):
                raise UsageError(f"--interval-s must be > 0, got {args.interval_s:g}")
            return recompute.run(args, rle_config_from(args))
        args = build_serve_parser().parse_args(argv)
        logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                            format="%(asctime)s exporter %(levelname)s %(message)s")
        return serve(args)
    except (UsageError, BackendUnavailable, LabCsvError, RecordError, ValueError) as exc:
        print(f"exporter: error: {exc}", file=sys.stderr)
        return 2
