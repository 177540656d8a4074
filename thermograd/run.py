"""`thermograd run -- CMD`: measure the hardware, run the user's own job, then always analyse what was recorded.

The seed's one command (a monitor writing a CSV beside a training script writing its log, then alignment,
correlation and the figure), for any job:

1. the exporter's sampler runs in this process: NVML when a GPU answers, else a simulated GPU heated by the
   CPU use of CMD's own processes (never the whole machine's); every sample goes to OUT/hardware.csv;
2. CMD runs with THERMOGRAD_* variables (trainer/environment.py) that make the instrumentation inside it log
   to OUT/steps.jsonl under this run's id, register its /metrics URL and take pause bursts (the positive
   control); SIGINT and SIGTERM are passed on to CMD's process group, as a terminal's Ctrl-C would be;
3. whatever way CMD ends, the analysis runs on what was recorded (offline files, or with --prometheus a
   local Prometheus that scraped both at 1 s) and writes OUT/report.json and the figures.

The exit status is CMD's (an analysis that fails after a clean CMD gives its own); bad input to `run` itself
is one line and exit 2.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from thermograd.commandline import UsageError
from thermograd.exporter.backends import BackendUnavailable
from thermograd.exporter.backends.sim import ProcessLoad
from thermograd.exporter.monitor import HardwareMonitor, MonitorSpec
from thermograd.processes import ProcessError
from thermograd.trainer.environment import PAUSES_OFF, RunEnvironment, read_registrations
from thermograd.trainer.identity import new_run_id
from thermograd.trainer.metrics import pause_schedule

# The default positive control: 2 s idle every ~120 s (jittered 20 %), the first 40 s after the first step.
# Any 10-minute run gets 4 to 6 bursts (at most 12 s, 2 % of it). The test is a t test across the bursts: 3 s
# every 180 s gave 3 or 4, and with 3 (two degrees of freedom) a whole-core drop in utilisation only just passed
# Holm's threshold (p = 0.049); more, shorter bursts at the same cost test with twice the degrees of freedom. The
# first comes 40 s in, after the steepest part of a start-up, with a before-window clear of the first step.
DEFAULT_PAUSES = "kind=pause,every=120s,duration=2s,jitter=0.2,start=40s"
RUNS_DIR = Path("thermograd-runs")
PROMETHEUS_LINGER_S = 2.0  # each rank's /metrics stays up two 1 s scrapes after its last step
POLL_S = 0.5
KILL_AFTER_SIGNALS = 3  # the third Ctrl-C kills CMD's process group outright
SIGNAL_REPEAT_S = 1.0
INSTRUMENT_HINT = ("add two lines to its training loop: `from thermograd import TrainingMetrics`, then inside "
                   "`with TrainingMetrics() as metrics:` call `metrics.observe_step(step, loss, grad_norm, lr)` "
                   "once per optimizer step (or pass PrometheusCallback() / PrometheusLightningCallback() to your "
                   "Trainer's callbacks): docs/instrumentation.md")

log = logging.getLogger("thermograd.run")


class RunError(UsageError, ValueError):
    """Bad input to `thermograd run` itself: one line, exit 2 (a UsageError, which the command line reports)."""


@dataclass
class RunOptions:
    command: list[str]
    out: Path | None = None
    backend: str = "auto"
    gpu_uuid: str | None = None
    sample_hz: float = 1.0
    pauses: str | None = DEFAULT_PAUSES  # None: no pause bursts
    prometheus: bool = False
    duration_s: float | None = None
    sim_profile: str = "default"
    devices: int = 1
    sim_cooling: dict[int, float] = field(default_factory=dict)  # device index -> fraction of its cooling
    emulate_clock: bool = False
    quiet: bool = False
    analysis_args: list[str] = field(default_factory=list)


def say(text: str) -> None:
    print(f"thermograd: {text}", file=sys.stderr, flush=True)


def _check_command(command: list[str]) -> None:
    if not command:
        raise RunError("no command to run: thermograd run [options] -- CMD [ARG...] (e.g. -- python train.py)")
    program = command[0]
    if os.sep in program:
        if not (os.path.isfile(program) and os.access(program, os.X_OK)):
            raise RunError(f"{program}: not an executable file")
    elif shutil.which(program) is None:
        raise RunError(f"{program}: command not found on PATH")


def _out_dir(out: Path | None, run_id: str) -> Path:
    """A new folder per run: a given folder must be absent or empty (a run's data are never overwritten)."""
    path = out if out is not None else RUNS_DIR / run_id
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise RunError(f"--out {path}: already holds files, and a run's data are never overwritten; "
                       "choose a new folder (or leave out --out: each run gets its own)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunError(f"--out {path}: cannot create it: {exc.strerror or exc}") from None
    return path.resolve()


def exit_status(returncode: int) -> int:
    """Popen's returncode as a shell reports it: -N (killed by signal N) is 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


class Session:
    """One run: the monitor, the job, the optional Prometheus and the analysis, in that order."""

    def __init__(self, opts: RunOptions) -> None:
        self.opts = opts
        self.run_id = new_run_id()
        self.child: subprocess.Popen | None = None
        self.signals: list[int] = []
        self._last_signal_s = 0.0
        self._ranks_read_s = -1e9
        self._rank_pids: dict[int, int | None] = {}
        self.stopped_by: str | None = None
        _check_command(opts.command)
        if opts.pauses is not None:
            try:
                pause_schedule(opts.pauses, RunEnvironment())
            except ValueError as exc:
                raise RunError(f"--pauses {opts.pauses!r}: {str(exc).split(': ', 1)[-1]}") from None
        if opts.prometheus:
            from thermograd.local_prometheus import missing_prometheus

            if (why := missing_prometheus()) is not None:
                raise RunError(f"--prometheus: {why}")
        self.out = _out_dir(opts.out, self.run_id)

    # ---- the hardware ---------------------------------------------------------------------------
    def _child_pid(self) -> int | None:
        child = self.child
        return child.pid if child is not None and child.poll() is None else None

    def _rank_pid(self, local_rank: int) -> int | None:
        """The process id the rank of `local_rank` registered (read at most twice a second for all cards)."""
        now_s = time.monotonic()
        if now_s - self._ranks_read_s > POLL_S:
            self._ranks_read_s = now_s
            self._rank_pids = {int(r.get("local_rank", rank)): r.get("pid")
                               for rank, r in read_registrations(self.out).items()}
        return self._rank_pids.get(local_rank) if self._child_pid() is not None else None

    def open_monitor(self) -> HardwareMonitor:
        if self.opts.devices == 1:
            load = ProcessLoad(self._child_pid, "the CPU use of the job's own processes (CMD and every process it "
                                                "starts)")
        else:  # card k heated by the rank that trains on it, as it registers (trainer/environment.py)
            load = [ProcessLoad(lambda k=k: self._rank_pid(k), f"the CPU use of the job's rank with local rank {k} "
                                "(and the processes it starts)") for k in range(self.opts.devices)]
        # The endpoint serves Prometheus and the emulated clock path's reading of the card's clock.
        serve = self.opts.prometheus or self.opts.emulate_clock
        spec = MonitorSpec(backend=self.opts.backend, sim_load=load, sim_profile=self.opts.sim_profile,
                           devices=self.opts.devices, sim_cooling=self.opts.sim_cooling, sample_hz=self.opts.sample_hz,
                           port=0 if serve else None, record=self.out / "hardware.csv")
        try:
            monitor = HardwareMonitor(spec)
        except BackendUnavailable as exc:
            raise RunError(f"--backend {self.opts.backend}: {exc}") from None
        simulated = any(d.backend == "sim" for d in monitor.devices)
        for flag, asked in (("--emulate-clock", self.opts.emulate_clock), ("--sim-cooling", bool(self.opts.sim_cooling)),
                            ("--devices", self.opts.devices > 1)):
            if asked and not simulated:
                monitor.close()
                raise RunError(f"{flag}: the hardware is real ({monitor.backend.name}); {flag} is for a simulated "
                               "GPU only (a real GPU's cooling and clocks act on a job that runs on it already)")
        return monitor

    def gpu_uuid(self, monitor: HardwareMonitor) -> str | None:
        """The GPU the job is tied to when it cannot tell itself: --gpu-uuid, else a simulated GPU."""
        if self.opts.gpu_uuid:
            if self.opts.gpu_uuid not in {d.uuid for d in monitor.devices}:
                raise RunError(f"--gpu-uuid {self.opts.gpu_uuid}: not a device of backend {monitor.backend.name} "
                               f"({', '.join(d.uuid for d in monitor.devices)})")
            return self.opts.gpu_uuid
        simulated = [d.uuid for d in monitor.devices if d.backend == "sim"]
        if len(simulated) > 1:
            return "sim-{local_rank}"  # each rank its own card (TrainingMetrics fills in its local rank)
        return simulated[0] if simulated else None

    @staticmethod
    def describe(monitor: HardwareMonitor) -> str:
        lines = []
        for d in monitor.devices:
            if d.backend == "sim":
                lines.append(f"{d.uuid}: a SIMULATED GPU (no NVIDIA GPU answered or --backend sim), heated by "
                             f"{d.heat_source}")
            else:
                lines.append(f"{d.uuid}: {d.model} ({d.kind}, measured with {d.backend})")
        return "; ".join(lines)

    # ---- the job --------------------------------------------------------------------------------
    def environment(self, gpu_uuid: str | None, monitor_url: str | None) -> dict[str, str]:
        env = RunEnvironment(run_dir=self.out, run_id=self.run_id, pauses=self.opts.pauses or PAUSES_OFF,
                             gpu_uuid=gpu_uuid, port=0,
                             linger_s=PROMETHEUS_LINGER_S if self.opts.prometheus else None,
                             emulate_clock=monitor_url if self.opts.emulate_clock else None)
        return {**os.environ, **env.as_variables()}

    def _on_signal(self, signum: int, _frame: object) -> None:
        now_s = time.monotonic()
        # One Ctrl-C often arrives twice (a terminal signals the whole foreground group, and `timeout` or `make`
        # pass theirs on): signals within a second of the last one count once.
        if self.signals and now_s - self._last_signal_s < SIGNAL_REPEAT_S:
            return
        self._last_signal_s = now_s
        self.signals.append(signum)
        self.stopped_by = self.stopped_by or signal.Signals(signum).name
        child = self.child
        if child is None or child.poll() is not None:
            return
        forward = signal.SIGKILL if len(self.signals) >= KILL_AFTER_SIGNALS else signum
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, forward)

    def start_child(self, env: dict[str, str]) -> None:
        # CMD gets its own process group: a terminal's Ctrl-C reaches this process only, which passes it on
        # once to the whole group (torchrun and its ranks, a shell and its python), as the terminal would have.
        # Our handlers are Python functions, which exec resets to the default: CMD starts with SIGINT and
        # SIGTERM at their defaults even when this process was started with SIGINT ignored (nohup, CI).
        try:
            self.child = subprocess.Popen(self.opts.command, env=env, process_group=0)
        except OSError as exc:
            raise RunError(f"{self.opts.command[0]}: cannot start it: {exc.strerror or exc}") from None

    def supervise(self, prometheus) -> int:
        deadline = None if self.opts.duration_s is None else time.monotonic() + self.opts.duration_s
        assert self.child is not None
        while (code := self.child.poll()) is None:
            if deadline is not None and time.monotonic() > deadline and not self.signals:
                say(f"--duration {self.opts.duration_s:g} s reached: stopping the job as Ctrl-C would")
                self.stopped_by = "--duration"
                self._on_signal(signal.SIGINT, None)
                self.signals.clear()  # --duration is not the user's first Ctrl-C
            if prometheus is not None:
                prometheus.scrape_trainers([r["address"] for r in read_registrations(self.out).values()
                                            if r.get("address")])
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.child.wait(POLL_S)
        return code

    # ---- the analysis ---------------------------------------------------------------------------
    def step_log(self) -> tuple[Path | None, dict | None]:
        """The lowest rank's step log and registration (the JSON Lines file it wrote), if any step was logged."""
        registrations = read_registrations(self.out)
        rank = min(registrations) if registrations else None
        record = registrations.get(rank) if rank is not None else None
        path = Path(record["steps_jsonl"]) if record and record.get("steps_jsonl") else self.out / "steps.jsonl"
        try:
            has_steps = path.stat().st_size > 0
        except OSError:
            has_steps = False
        return (path if has_steps else None), record

    def device_for(self, record: dict | None, monitor_devices: list) -> str:
        uuid = (record or {}).get("gpu_uuid") or self.opts.gpu_uuid
        if uuid:
            return uuid
        gpus = [d.uuid for d in monitor_devices if d.kind == "gpu"]
        candidates = gpus or [d.uuid for d in monitor_devices]  # --backend cpu: the CPU is the device
        if len(candidates) == 1:
            return candidates[0]
        raise RunError(f"the job did not say which GPU it trained on and this machine has {len(gpus)} "
                       f"({', '.join(gpus)}): run again with --gpu-uuid UUID, or analyse {self.out} with "
                       "thermograd-analysis --device")

    def analysis_argv(self, steps: Path, device: str, prometheus_url: str | None) -> list[str]:
        if prometheus_url is not None:
            source = ["--prometheus", prometheus_url, "--run", self.run_id, "--device", device]
        else:
            source = ["--grad-log", str(steps), "--rle-csv", str(self.out / "hardware.csv"), "--device", device]
        return [*source, "--out", str(self.out), *(["--quiet"] if self.opts.quiet else []),
                *self.opts.analysis_args]

    def write_summary(self, record: dict) -> None:
        with contextlib.suppress(OSError):
            (self.out / "run.json").write_text(json.dumps(record, indent=2) + "\n")


def _install_handlers(session: Session) -> dict[int, object]:
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    for signum in before:
        signal.signal(signum, session._on_signal)
    return before


def run(opts: RunOptions) -> int:
    session = Session(opts)
    before = _install_handlers(session)  # first: a Ctrl-C from here on is passed on to the job, never lost
    try:
        say(f"run {session.run_id}: data, report and figures in {session.out}")
        with session.open_monitor() as monitor, contextlib.ExitStack() as stack:
            say(f"hardware: {session.describe(monitor)}")
            if opts.emulate_clock:
                say("EMULATED clock path: the job's steps are stretched by the simulated card's clock deficit, so "
                    "hardware -> training has a path by construction (said in the report)")
            gpu_uuid = session.gpu_uuid(monitor)
            prometheus = None
            if opts.prometheus:
                from thermograd.local_prometheus import LocalPrometheus

                prometheus = LocalPrometheus(session.out / "prometheus", monitor.address)
                stack.callback(prometheus.stop)
                prometheus.wait_ready()
                say(f"Prometheus {prometheus.url} scrapes the hardware and the job every second "
                    f"(its TSDB stays in {prometheus.folder / 'data'})")
            if session.signals:
                say("interrupted before the job started: nothing to analyse")
                return 130
            say(f"running: {' '.join(opts.command)}"
                + (f" (pause bursts: {opts.pauses.removeprefix('kind=pause,')})" if opts.pauses else " (no pauses)"))
            started_s = time.time()
            session.start_child(session.environment(gpu_uuid, monitor.url))
            code = exit_status(session.supervise(prometheus))
            if prometheus is not None:
                time.sleep(PROMETHEUS_LINGER_S)  # the exporter's last samples get scraped too
            else:
                monitor.close()  # the recording is complete: no sampling during the analysis
            for signum, handler in before.items():  # from here a Ctrl-C stops the analysis, not a job
                signal.signal(signum, handler)
            return finish(session, monitor, prometheus, code, started_s)
    except ProcessError as exc:
        raise RunError(str(exc)) from None
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


def finish(session: Session, monitor: HardwareMonitor, prometheus, code: int, started_s: float) -> int:
    """After the job: say how it ended, find its step log, analyse. Returns the exit status."""
    from thermograd.analysis.cli import main as analysis_main

    opts = session.opts
    how = f"interrupted ({session.stopped_by})" if session.stopped_by else "finished"
    say(f"the job {how} with exit status {code} after {time.time() - started_s:.0f} s; "
        f"{monitor.recorder.rows if monitor.recorder else 0} hardware samples in {session.out / 'hardware.csv'}")
    steps, record = session.step_log()
    session.write_summary({"run_id": session.run_id, "command": opts.command, "exit_status": code,
                           "stopped_by": session.stopped_by, "started_unix": started_s, "ended_unix": time.time(),
                           "hardware": [d.__dict__ for d in monitor.devices], "step_log": str(steps) if steps else None,
                           "prometheus": prometheus.url if prometheus is not None else None})
    if steps is None:
        if code != 0:
            say(f"the job exited with status {code} before logging any training step: nothing to analyse")
            return code
        say(f"error: {' '.join(opts.command)} logged no training step, so there is nothing to analyse: "
            f"{INSTRUMENT_HINT}")
        return 2
    device = session.device_for(record, monitor.devices)
    argv = session.analysis_argv(steps, device, prometheus.url if prometheus is not None else None)
    say(f"analysing: thermograd-analysis {' '.join(argv)}")
    analysed = analysis_main(argv)
    if analysed == 0:
        say(f"report: {session.out / 'report.json'}; figures: {session.out / 'coupling.png'}, "
            f"{session.out / 'crosscorr.png'}")
    if len(read_registrations(session.out)) > 1:  # many ranks: the job's stragglers too
        source = ["--prometheus", prometheus.url, "--job", session.run_id] if prometheus is not None else \
            ["--job-dir", str(session.out)]
        job_argv = [*source, "--out", str(session.out / "job"), *(["--quiet"] if opts.quiet else [])]
        say(f"analysing the job's ranks: thermograd-analysis {' '.join(job_argv)}")
        analysed = analysis_main(job_argv) or analysed
    return code if code != 0 else analysed
