"""`make demo`: the whole thermograd pipeline natively, on loopback, in about three minutes.

Starts Alertmanager and Prometheus from the system binaries (fresh TSDB), the exporter with
`--backend auto` (NVML when a GPU is visible, otherwise a simulated GPU heated by this machine's own
load, with the `demo` profile: a small, warm card that heats through its limit and throttles within the
run), and the reference trainer (tiny model, ~2 minutes, learning-rate and pause bursts); prints every
collapse onset and every alert Alertmanager delivers to the demo's own webhook receiver; runs the
analysis against Prometheus; prints where report.json and the figures are and the verdict. `--keep` leaves
Prometheus (and the exporter) running to explore until Ctrl-C.

Ctrl-C stops every child and frees every port. A busy port is replaced by a free one (printed); a
child that dies stops the demo, naming it and showing the end of its log.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from testkit import stack as sl

DEFAULT_PORTS = {"prometheus": 9090, "alertmanager": 9093, "exporter": 9842, "trainer": 9843}
PERTURB = "every=20s,duration=4s,lr_mult=10,jitter=0.3"
# The positive control: the loop idles, the host's CPU load (which heats the simulated GPU) drops with it,
# and each resume of a hot card is another collapse onset.
PAUSE = "kind=pause,every=15s,duration=3s,jitter=0.3"
COLLAPSE_ALERTS = ("RLEDeviceCollapsed", "RLECollapseRateHigh")
STRAGGLER_ALERTS = ("ThermalStraggler",)
# --ranks: the last rank's simulated GPU has a clogged heat sink (a third of its cooling): it throttles under the
# load its neighbours survive, and with the emulated clock path its rank falls behind and the others wait.
POOR_COOLING = 0.3
STRAGGLER_FOR = "30s"  # ThermalStraggler's `for:` in the demo's copy of the rules (5m in the stack)
ALERT_WAIT_S = 30  # after the run: Prometheus evaluates every 5 s, Alertmanager's demo group_wait is 1 s
STARTUP_TIMEOUT_S = 300


def say(message: str) -> None:
    print(f"demo: {message}", flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m scripts.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="leave Prometheus up after the analysis (Ctrl-C stops)")
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of training (default 120)")
    parser.add_argument("--steps", type=int, default=1_000_000,
                        help="step limit of the trainer (default: unbounded; --duration ends the run)")
    parser.add_argument("--out", type=Path, default=sl.REPO_ROOT / "demo-out", help="output folder (default demo-out/)")
    parser.add_argument("--ranks", type=int, default=1,
                        help="training ranks under torchrun (gloo), each on its own simulated GPU, the last poorly "
                        "cooled, with the emulated clock path: its rank becomes the job's thermal straggler "
                        "(default 1)")
    parser.add_argument("--no-install", action="store_true",
                        help="never install missing Prometheus/Alertmanager packages, only print the command")
    for name, port in DEFAULT_PORTS.items():
        parser.add_argument(f"--{name}-port", type=int, default=port, help=f"preferred port (default {port})")
    args = parser.parse_args(argv)
    if args.duration <= 0:
        parser.error("--duration must be > 0")
    if not 1 <= args.ranks <= 8:
        parser.error("--ranks must be 1-8")
    return args


def ensure_binaries(allow_install: bool) -> dict[str, str]:
    """Paths of prometheus and alertmanager; as root with apt, installs what is missing."""
    found = {kind: sl.find_binary(kind) for kind in sl.BINARY_NAMES}
    missing = [kind for kind, path in found.items() if path is None]
    if missing and allow_install and os.geteuid() == 0 and shutil.which("apt-get"):
        say(f"installing {', '.join(missing)} with apt (running as root)")
        subprocess.run(["bash", str(sl.REPO_ROOT / "scripts" / "system-deps.sh")], check=False)
        found = {kind: sl.find_binary(kind) for kind in sl.BINARY_NAMES}
        missing = [kind for kind, path in found.items() if path is None]
    if missing:
        raise sl.StackError(f"{' and '.join(missing)} not found; install with: {sl.install_hint(missing)}")
    return {kind: str(path) for kind, path in found.items()}


def choose_ports(preferred: dict[str, int]) -> dict[str, int]:
    ports: dict[str, int] = {}
    for name, port in preferred.items():
        ports[name] = sl.pick_port(port, set(ports.values()))
        if ports[name] != port:
            say(f"port {port} is busy; {name} uses 127.0.0.1:{ports[name]} instead")
    return ports


@dataclass
class Demo:
    args: argparse.Namespace
    out: Path
    ports: dict[str, int]
    binaries: dict[str, str]
    supervisor: sl.Supervisor
    webhook: sl.WebhookReceiver
    printed: int = 0  # webhook alerts printed so far

    @property
    def trainer_pidfile(self) -> Path:
        return self.out / "trainer.pid"

    def rank_pidfile(self, local_rank: int) -> Path:
        return self.out / f"rank-{local_rank}.pid"

    @property
    def trainer_targets(self) -> list[str]:
        """One /metrics per rank: the trainer's port + its local rank."""
        return [f"127.0.0.1:{self.ports['trainer'] + k}" for k in range(self.args.ranks)]

    def rules(self) -> list[Path]:
        """The repository's rules; with --ranks, ThermalStraggler's `for:` shortened so a demo-length run shows it."""
        rules = sorted(sl.RULES_DIR.glob("*.yml"))
        if self.args.ranks == 1:
            return rules
        import yaml

        config = self.out / "config"
        config.mkdir(parents=True, exist_ok=True)
        out = []
        for path in rules:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
            for group in data["groups"]:
                for rule in group["rules"]:
                    if rule.get("alert") == "ThermalStraggler":
                        rule["for"] = STRAGGLER_FOR
            (config / path.name).write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
            out.append(config / path.name)
        return out

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def start_monitoring(self) -> sl.PrometheusAPI:
        am_config = sl.render_alertmanager_config(self.out / "config", self.webhook.url, fast=True)
        self.supervisor.start("alertmanager", sl.alertmanager_argv(
            self.binaries["alertmanager"], am_config, self.out / "alertmanager-data", self.ports["alertmanager"]),
            self.out / "logs" / "alertmanager.log")
        loopback = {name: f"127.0.0.1:{port}" for name, port in self.ports.items()}
        prom_config = sl.render_prometheus_config(
            self.out / "config", {"exporter": loopback["exporter"], "trainer": self.trainer_targets},
            loopback["alertmanager"], self_address=loopback["prometheus"], rule_files=self.rules())
        self.supervisor.start("prometheus", sl.prometheus_argv(
            self.binaries["prometheus"], prom_config, self.out / "prometheus-data", self.ports["prometheus"]),
            self.out / "logs" / "prometheus.log")
        sl.wait_http_ok(f"{self.url('alertmanager')}/-/ready", 60, supervisor=self.supervisor)
        sl.wait_http_ok(f"{self.url('prometheus')}/-/ready", 60, supervisor=self.supervisor)
        say(f"Prometheus {self.url('prometheus')}  Alertmanager {self.url('alertmanager')}")
        return sl.PrometheusAPI(self.url("prometheus"))

    def start_exporter(self, prom: sl.PrometheusAPI) -> str | None:
        """Start the exporter; return the uuid to attribute the run to when it fell back to a simulated GPU."""
        if self.args.ranks == 1:
            sim = ["--sim-load", f"pid:{self.trainer_pidfile}"]
        else:  # card k heated by rank k alone; the last card poorly cooled
            sim = ["--devices", str(self.args.ranks), "--sim-cooling", f"{self.args.ranks - 1}={POOR_COOLING:g}",
                   *(arg for k in range(self.args.ranks) for arg in ("--sim-load", f"{k}=pid:{self.rank_pidfile(k)}"))]
        self.supervisor.start("exporter", sl.python_module_argv(
            "thermograd.exporter", "--backend", "auto", "--sim-profile", "demo", *sim,
            "--port", str(self.ports["exporter"])), self.out / "logs" / "exporter.log")
        metrics_url = f"{self.url('exporter')}/metrics"
        sl.wait_http_ok(metrics_url, 60, supervisor=self.supervisor)
        devices = sl.device_info(sl.http_get(metrics_url)[1].decode())
        sl.wait_until(lambda: prom.query("rle_efficiency"), 60, "the first RLE sample in Prometheus",
                      supervisor=self.supervisor)
        backends = sorted({d["backend"] for d in devices})
        say(f"exporter {metrics_url}: backend {', '.join(backends)}, "
            + ", ".join(f"{d['device']} ({d['kind']}, {d['uuid']})" for d in devices))
        if "nvml" in backends:
            return None  # the trainer finds its GPU's NVML UUID itself
        gpu = next((d["uuid"] for d in devices if d["kind"] == "gpu"), None)
        if gpu and self.args.ranks > 1:
            say(f"no NVIDIA GPU: {self.args.ranks} simulated GPUs, rank k on sim-k (--gpu-uuid sim-{{local_rank}}), "
                f"each heated by its own rank's CPU use; sim-{self.args.ranks - 1} has {100 * POOR_COOLING:.0f} % of "
                "its cooling (a clogged heat sink). EMULATED clock path: each rank's steps stretch by its card's "
                "clock deficit (THERMOGRAD_EMULATE_CLOCK), so a throttling card makes its rank a straggler the "
                "others wait for; said as emulation in the analysis")
            return "sim-{local_rank}"
        if gpu:
            say(f"no NVIDIA GPU: the run is attributed to the simulated GPU {gpu} (--gpu-uuid), "
                "which the trainer's own CPU use heats (--sim-load pid:, so other work on this machine does not; "
                "sim profile 'demo': 40 °C ambient, half the heat capacity)")
            say("note: the simulated clocks cannot slow a CPU trainer, so on this machine the hardware -> "
                "training direction has no physical path; only training -> hardware (pauses) is real here")
        return gpu

    def run_trainer(self, run_id: str, gpu_uuid: str | None, prom: sl.PrometheusAPI) -> None:
        # A small batch keeps a step about a second on a laptop CPU: enough steps in two minutes to compare.
        argv = ["--model", "tiny", "--steps", str(self.args.steps), "--batch-size", "4", "--seq-len", "64",
                "--device", "auto", "--perturb", PERTURB, "--perturb", PAUSE,
                "--port", str(self.ports["trainer"]), "--log-dir", str(self.out / "trainer"), "--linger", "3",
                "--run-id", run_id, "--quiet"]
        if gpu_uuid:
            argv += ["--gpu-uuid", gpu_uuid]
        env = {"OMP_NUM_THREADS": "1"}
        if self.args.ranks == 1:
            command = sl.python_module_argv("thermograd.trainer", *argv)
        else:  # torchrun, gloo; ranks register in the log folder (their pids heat their cards)
            command = sl.python_module_argv("torch.distributed.run", "--nproc-per-node", str(self.args.ranks),
                                            "--master-port", str(sl.free_port()), "-m", "thermograd.trainer", *argv)
            env |= {"THERMOGRAD_RUN_DIR": str(self.out / "trainer")}
            if gpu_uuid and gpu_uuid.startswith("sim"):
                env |= {"THERMOGRAD_EMULATE_CLOCK": f"{self.url('exporter')}/metrics"}
        trainer = self.supervisor.start("trainer", command, self.out / "logs" / "trainer.log", env=env)
        self.trainer_pidfile.write_text(str(trainer.pid))  # the simulated GPU's load from now on
        say(f"trainer run {run_id}: tiny GPT-2, {self.args.duration:.0f} s with LR bursts ({PERTURB}) "
            f"and pause bursts ({PAUSE})")
        # The clock starts at the first scraped step, so a slow start (loading torch on a busy laptop)
        # does not eat into the training time the analysis needs.
        launched, start = time.monotonic(), None
        while trainer.poll() is None:
            self.supervisor.check(except_for=[trainer])  # the trainer may end right here; it is waited for below
            self.write_rank_pidfiles()
            now = time.monotonic()
            if start is None:
                if (prom.scalar(f'max(train_steps_total{{run_id="{run_id}"}})') or 0) >= 1:
                    start, next_report = now, now + 10
                    say(f"first step scraped after {now - launched:.0f} s; training for {self.args.duration:.0f} s")
                elif now - launched > STARTUP_TIMEOUT_S:
                    raise sl.StackError(f"the trainer took no step within {STARTUP_TIMEOUT_S} s "
                                        f"(log: {trainer.log_path})")
            elif now - start >= self.args.duration:
                break
            elif now >= next_report:
                next_report += 10
                self.progress(prom, run_id, now - start)
            self.print_deliveries()
            time.sleep(0.5)
        if trainer.poll() is None:
            self.stop_training(trainer)
        code = trainer.wait(120)
        if code is None:
            raise sl.StackError(f"trainer did not stop within 120 s of SIGINT (log: {trainer.log_path})")
        if code != 0:
            raise sl.ChildDied(trainer, code)
        self.supervisor.check(except_for=[trainer])

    def stop_training(self, trainer: sl.Child) -> None:
        """SIGINT: each rank finishes its step, flushes its logs, lingers and exits 0.

        Under torchrun the ranks are told directly: torchrun itself turns a SIGINT into a SignalException and
        exit status 1 even when every rank stops cleanly; told nothing, it exits 0 once its ranks have.
        """
        if self.args.ranks == 1:
            trainer.signal(signal.SIGINT)
            return
        from thermograd.trainer.environment import read_registrations

        for record in read_registrations(self.out / "trainer").values():
            # a rank that has already ended: its peers' agreement stops the rest
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(record["pid"]), signal.SIGINT)

    def write_rank_pidfiles(self) -> None:
        """Each rank's pid, as it registers, for the exporter's --sim-load k=pid:FILE (card k heated by rank k)."""
        if self.args.ranks == 1:
            return
        from thermograd.trainer.environment import read_registrations

        for record in read_registrations(self.out / "trainer").values():
            path = self.rank_pidfile(int(record.get("local_rank", record["rank"])))
            if not path.exists():
                path.write_text(str(record["pid"]))

    def progress(self, prom: sl.PrometheusAPI, run_id: str, elapsed_s: float) -> None:
        def value(expr: str, spec: str = ".3g") -> str:
            number = prom.scalar(expr)
            return "–" if number is None or number != number else format(number, spec)  # absent or NaN

        run = f'{{run_id="{run_id}"}}'
        say(f"t+{elapsed_s:3.0f}s step {value(f'max(train_step{run})', '.0f')} loss {value(f'max(train_loss{run})')} "
            f"grad_norm {value(f'max(train_grad_norm{run})')} | GPU {value('max(rle_temperature_celsius)')} °C "
            f"RLE {value('max(rle_efficiency_smoothed)')} collapsed {value('max(rle_collapsed)')}")

    def run_analysis(self, selection: list[str], out: Path, what: str) -> dict | None:
        """thermograd-analysis through the demo's Prometheus into `out`: its summary printed, its report
        returned (None, said in one line, when it failed)."""
        result = subprocess.run(sl.python_module_argv("thermograd.analysis", "--prometheus", self.url("prometheus"),
                                                      *selection, "--out", str(out)),
                                cwd=sl.REPO_ROOT, capture_output=True, text=True)
        sys.stdout.write(result.stdout)
        if result.returncode != 0:
            say(f"{what} failed (exit {result.returncode}): {result.stderr.strip().splitlines()[-1:]}")
            return None
        return json.loads((out / "report.json").read_text())

    def analyse(self, run_id: str) -> int:
        out = self.out / "analysis"
        say(f"analysing run {run_id} from {self.url('prometheus')} ...")
        report = self.run_analysis(["--run", run_id], out, "the analysis")
        if report is None:
            return 1
        say(f"report:  {out / 'report.json'}")
        say(f"figures: {out / 'coupling.png'}  {out / 'crosscorr.png'}")
        verdict = report["verdict"]  # optimizer -> hardware, then the other direction
        say(f"verdict: {verdict['strength']} — {verdict['summary']}")
        other = (report.get("verdicts") or {}).get("hardware_to_training")
        if other:
            say(f"verdict, hardware -> training: {other['strength']} — {other['summary']}")
        control = report.get("positive_control") or {}
        say("positive control: " + ("detected" if control.get("detected") else "NOT detected")
            + (f" ({control['metric']} {control['effect']:+.3g})" if control.get("metric") else ""))
        return 0

    def analyse_job(self, run_id: str) -> int:
        """--ranks: the job's analysis — its straggler, the cause, the tokens it cost — through Prometheus."""
        out = self.out / "job"
        say(f"analysing the job's {self.args.ranks} ranks from {self.url('prometheus')} ...")
        report = self.run_analysis(["--job", run_id], out, "the job's analysis")
        if report is None:
            return 1
        job = report["job"]
        for rank in job["ranks"]:
            if rank["straggler"]:
                lost = rank["tokens_lost"]
                cost = (f"; the job lost {lost:.3g} tokens [95 % CI {rank['tokens_lost_ci'][0]:.3g}, "
                        f"{rank['tokens_lost_ci'][1]:.3g}] to its throttling" if lost is not None else "")
                say(f"straggler: rank {rank['rank']} on {rank['gpu_uuid']}, cause: {rank['cause']}{cost}")
        if not job["stragglers"]:
            say("straggler: none named (the poorly cooled card did not throttle long enough in this run)")
        say(f"job report: {out / 'report.json'}; figure: {out / 'job.png'}")
        return 0

    def wait_for_straggler_alert(self) -> None:
        deadline = time.monotonic() + ALERT_WAIT_S
        trainer = [c for c in self.supervisor.children if c.name == "trainer"]
        while time.monotonic() < deadline and not self.delivered(STRAGGLER_ALERTS):
            self.supervisor.check(except_for=trainer)
            time.sleep(0.5)
        self.print_deliveries()
        if not self.delivered(STRAGGLER_ALERTS):
            say(f"no ThermalStraggler alert was delivered (its `for:` is {STRAGGLER_FOR} here): the poorly cooled card "
                "did not keep its rank 10 % behind for that long in this run")

    def print_deliveries(self) -> None:
        """Print each alert the webhook receiver got that was not printed yet, as it arrives."""
        alerts = self.webhook.alerts()
        for alert in alerts[self.printed:]:
            labels = alert["labels"]
            where = f" device {labels['device']} ({labels.get('uuid', '')})" if "device" in labels else ""
            say(f"webhook received: {labels.get('alertname', '?')} {alert['status']}{where}: "
                f"{alert.get('annotations', {}).get('summary', '')}")
        self.printed = len(alerts)

    def report_collapses(self, prom: sl.PrometheusAPI, uuid: str | None) -> int:
        """Print every collapse onset of the run's device (from Prometheus) and the pauses' effect on it."""
        sel = f'{{uuid="{uuid}"}}' if uuid else ""
        end = time.time()
        start = end - self.args.duration - STARTUP_TIMEOUT_S
        collapsed = prom.series_range(f"rle_collapsed{sel}", start, end, 1)
        temps = {float(t): float(v) for r in prom.series_range(f"rle_temperature_celsius{sel}", start, end, 1)
                 for t, v in r["values"]}
        onsets = []
        for series in collapsed:
            previous = 0.0
            for t, v in series["values"]:
                if float(v) == 1 and previous == 0:
                    onsets.append((float(t), series["metric"].get("device", "?")))
                previous = float(v)
        t0 = min((float(r["values"][0][0]) for r in collapsed if r["values"]), default=end)
        for t, device in sorted(onsets):
            temp = temps.get(t)
            say(f"collapse onset: device {device} at t+{t - t0:.0f} s (exporter clock)"
                + (f", {temp:.1f} °C" if temp is not None else ""))
        say(f"collapse onsets in this run: {len(onsets)}")
        throttled = prom.scalar(f'max(max_over_time(rle_throttle_active{{reason=~"sw_thermal|hw_thermal|hw_slowdown|'
                                f'sw_power_cap|hw_power_brake"{"," + sel[1:-1] if sel else ""}}}[10m]))')
        clock = prom.scalar(f"min(min_over_time(rle_sm_clock_hertz{sel}[10m])) / "
                            f"max(max_over_time(rle_sm_clock_hertz{sel}[10m]))")
        if throttled is not None and clock is not None:
            say(f"thermal/power throttling: {'seen' if throttled == 1 else 'not seen'}; lowest SM clock "
                f"{100 * clock:.0f} % of the highest")
        self.report_pauses(prom, sel, start, end)
        return len(onsets)

    def report_pauses(self, prom: sl.PrometheusAPI, sel: str, start: float, end: float) -> None:
        """Does the simulated GPU see the trainer's pauses? Mean utilisation and power during vs outside them."""
        pause = {float(t): float(v) for r in prom.series_range('max(train_perturbation_active{kind="pause"})',
                                                               start, end, 1) for t, v in r["values"]}
        for name, expr, scale, unit in (("utilisation", f"max(rle_utilization_ratio{sel})", 100, "%"),
                                        ("power", f"max(rle_power_watts{sel})", 1, "W")):
            values = {float(t): float(v) for r in prom.series_range(expr, start, end, 1) for t, v in r["values"]}
            during = [v for t, v in values.items() if pause.get(t) == 1]
            outside = [v for t, v in values.items() if pause.get(t) == 0]
            if during and outside:
                say(f"pause bursts: mean {name} {scale * sum(during) / len(during):.0f} {unit} during pauses, "
                    f"{scale * sum(outside) / len(outside):.0f} {unit} outside")

    def wait_for_collapse_alert(self) -> None:
        deadline = time.monotonic() + ALERT_WAIT_S
        trainer = [c for c in self.supervisor.children if c.name == "trainer"]  # it has ended
        while time.monotonic() < deadline and not self.delivered(COLLAPSE_ALERTS):
            self.supervisor.check(except_for=trainer)
            time.sleep(0.5)
        self.print_deliveries()
        if not self.delivered(COLLAPSE_ALERTS):
            say(f"no collapse alert ({' or '.join(COLLAPSE_ALERTS)}) was delivered: the card did not collapse often "
                "enough in this run (a busy machine leaves the trainer too little CPU to heat it)")

    def delivered(self, names: tuple[str, ...]) -> list[str]:
        return sorted({a["labels"].get("alertname", "?") for a in self.webhook.alerts()
                       if a["status"] == "firing" and a["labels"].get("alertname") in names})

    def report_alerts(self) -> None:
        self.print_deliveries()
        names = sorted({a["labels"].get("alertname", "?") for a in self.webhook.alerts() if a["status"] == "firing"})
        say(f"alerts delivered to the webhook: {', '.join(names) if names else 'none'}")

    def keep(self) -> None:
        say(f"--keep: Prometheus stays up at {self.url('prometheus')} (try rle_efficiency, train_grad_norm, ALERTS); "
            "Ctrl-C stops everything")
        trainer = next(c for c in self.supervisor.children if c.name == "trainer")
        while True:
            self.supervisor.check(except_for=[trainer])
            time.sleep(1)


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM; the exit status is 128 + the signal's number, as a shell reports it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.exit_code = 128 + signum


RETRY_S = 0.5
_pending: int | None = None  # a stop signal not yet taken by main's clean-up


def _raise_interrupt(signum: int, frame: object) -> None:
    # An exception raised in a signal handler can be swallowed: the signal may arrive while Python runs a
    # callback whose exceptions it ignores (logging's at-fork lock release, as the demo forks a child; a
    # __del__). A SIGTERM was lost so, and the demo ran on until its caller's minute was up. Until the clean-up
    # has taken it (_taken), the alarm raises it again every RETRY_S.
    global _pending
    _pending = signum
    signal.setitimer(signal.ITIMER_REAL, RETRY_S)
    raise Interrupted(signum)


def _raise_pending(signum: int, frame: object) -> None:
    if _pending is not None:
        _raise_interrupt(_pending, frame)


def _taken() -> None:
    """The stop signal reached the clean-up: no more retries."""
    global _pending
    _pending = None
    signal.setitimer(signal.ITIMER_REAL, 0)


def main(argv: list[str] | None = None) -> int:
    # First of all, SIGINT too: a demo started with SIGINT ignored (nohup, a CI runner, a background job)
    # inherits SIG_IGN, and Python then never installs its KeyboardInterrupt handler; and installing the
    # system packages can take minutes, during which Ctrl-C must work (without a traceback).
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _raise_interrupt)
    signal.signal(signal.SIGALRM, _raise_pending)
    try:
        return _main(argv)
    except Interrupted as stop:  # before any child was started: nothing to clean up
        _taken()
        say("interrupted")
        return stop.exit_code


def _main(argv: list[str] | None) -> int:
    args = parse_args(argv)
    try:
        binaries = ensure_binaries(not args.no_install)
    except sl.StackError as err:
        print(f"demo: {err}", file=sys.stderr)
        return 2
    run_id = "demo-" + datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.out.resolve() / run_id
    out.mkdir(parents=True)  # a fresh folder, so a fresh TSDB
    ports = choose_ports({name: getattr(args, f"{name}_port") for name in DEFAULT_PORTS})
    say(f"output in {out}")
    supervisor = sl.Supervisor()
    keeping = False
    try:
        with sl.WebhookReceiver() as webhook:
            demo = Demo(args, out, ports, binaries, supervisor, webhook)
            prom = demo.start_monitoring()
            gpu_uuid = demo.start_exporter(prom)
            demo.run_trainer(run_id, gpu_uuid, prom)
            if demo.report_collapses(prom, gpu_uuid if args.ranks == 1 else None):
                demo.wait_for_collapse_alert()
            if args.ranks > 1:
                demo.wait_for_straggler_alert()
            code = demo.analyse(run_id)
            if args.ranks > 1:
                code = demo.analyse_job(run_id) or code
            demo.report_alerts()
            if args.keep and code == 0:
                keeping = True
                demo.keep()
            return code
    except KeyboardInterrupt as stop:
        _taken()
        say("stopping every child" if keeping else "interrupted: stopping every child")
        return 0 if keeping else getattr(stop, "exit_code", 130)
    except sl.ChildDied as err:
        say(f"{err.child.name} died (exit code {err.returncode}); the last lines of {err.child.log_path}:")
        print(err.child.tail(), file=sys.stderr)
        return 1
    except sl.StackError as err:
        say(str(err))
        return 1
    finally:
        _taken()
        for signum in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not cut the clean-up short
            signal.signal(signum, signal.SIG_IGN)
        supervisor.stop_all()
        say("all children stopped")


if __name__ == "__main__":
    sys.exit(main())
