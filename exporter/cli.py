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

from thermograd.exporter import __version__
from thermograd.exporter.backends import BackendUnavailable, open_backend
from thermograd.exporter.engine import RleConfig
from thermograd.exporter.labcsv import LabCsvError

log = logging.getLogger("thermograd.exporter")

DEFAULT_PORT = 9842  # not 9835 / 9400: nvidia_gpu_exporter and dcgm-exporter often run beside us
MAX_SAMPLE_HZ = 10.0
MAX_SIM_DEVICES = 64  # more GPUs than any node holds; 10**9 would exhaust memory building the devices
# RleConfig fields of the collapse detector get --collapse-*, the index's windows and floors --rle-*.
_DETECTOR_FIELDS = {"warmup_s", "peak_decay_per_s", "gate_util_pct", "gate_load_ratio", "gate_heating_c",
                    "gate_heating_window_s",
                    "drop_frac", "hold_s", "evidence_sustain_s", "evidence_temp_margin_c",
                    "evidence_power_cap_ratio"}


class UsageError(Exception):
    """Bad input: reported as one line, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of usage + message
        raise UsageError(message)


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


def resolve_device_values(values: dict[str | None, float], labels: list[str], flag: str) -> dict[str, float]:
    unknown = [d for d in values if d is not None and d not in labels]
    if unknown:
        raise UsageError(f"{flag}: unknown device {unknown[0]!r} (devices: {', '.join(labels)})")
    resolved = {label: values[None] for label in labels if None in values}
    resolved.update({d: v for d, v in values.items() if d is not None})
    return resolved


def build_serve_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="thermograd-exporter", description="RLE exporter: GPU/CPU hardware and the RLE index "
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
    p.add_argument("--sim-load", default="host",
                   help="sim: 'host' (host CPU utilization), 'pid:FILE' (CPU use of the process whose id FILE "
                   "holds, relative to its usual busy rate), a constant load 0-1, or steps 't:load,t:load'")
    p.add_argument("--sim-profile", choices=["default", "demo"], default="default",
                   help="sim: the simulated card's physics; 'demo' (40 C ambient, half the heat capacity) heats "
                   "through the 83 C limit and throttles within a demo-length run (default: default)")
    p.add_argument("--replay-csv", type=Path, help="replay: an RLE-lab recording")
    p.add_argument("--speed", type=float, default=1.0, help="replay: recording seconds per wall second")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--version", action="version", version=f"thermograd exporter {__version__}")
    add_rle_config_flags(p)
    return p


def build_recompute_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="thermograd-exporter recompute",
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


def serve(args: argparse.Namespace) -> int:
    from prometheus_client import CollectorRegistry

    from thermograd.exporter.backends.sim import parse_load
    from thermograd.exporter.collector import SnapshotCollector
    from thermograd.exporter.sampler import Sampler
    from thermograd.exporter.server import make_server, serve_in_thread

    _validate_serve(args)
    config = rle_config_from(args)
    power_specs = parse_device_values(args.rated_power, "--rated-power", positive=True)
    limit_specs = parse_device_values(args.temp_limit, "--temp-limit", positive=False)
    try:
        sim_load = parse_load(args.sim_load)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.backend == "replay" and args.replay_csv is None:
        raise UsageError("--backend replay needs --replay-csv PATH")

    backend = open_backend(args.backend, devices=args.devices, seed=args.seed, sim_load=sim_load,
                           replay_csv=args.replay_csv, speed=args.speed, sim_profile=args.sim_profile)
    try:
        labels = [d.device for d in backend.devices()]
        sampler = Sampler(backend, args.sample_hz, resolve_device_values(power_specs, labels, "--rated-power"),
                          resolve_device_values(limit_specs, labels, "--temp-limit"), config)
        registry = CollectorRegistry()
        try:
            server = make_server(args.bind, args.port, registry, sampler.healthy)
        except OSError as exc:
            raise UsageError(f"cannot listen on {args.bind}:{args.port}: {exc.strerror or exc}") from None
        registry.register(SnapshotCollector(lambda: sampler.snapshot, server.stats.snapshot))
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, frame: stop.set())
        sampler.start()
        serve_in_thread(server)
        host, port = server.server_address[:2]
        host = f"[{host}]" if ":" in host else host  # an IPv6 address in a URL
        log.info("backend %s, %d device(s): %s", backend.name, len(labels),
                 ", ".join(f"{d.device} ({d.kind}, {d.uuid})" for d in sampler.devices))
        print(f"exporter: listening on http://{host}:{port}/metrics (backend {backend.name}, "
              f"{args.sample_hz:g} Hz)", file=sys.stderr, flush=True)
        stop.wait()
        log.info("shutting down")
        server.shutdown()
        server.server_close()
        sampler.stop()
    finally:
        backend.close()
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
    except (UsageError, BackendUnavailable, LabCsvError, ValueError) as exc:
        print(f"exporter: error: {exc}", file=sys.stderr)
        return 2
