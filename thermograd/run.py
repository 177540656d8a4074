"""`thermograd run -- CMD`: measure the hardware, run the user's own job, then always analyse what was recorded.

The seed's one command (a monitor writing a CSV beside a training script writing its log, then alignment,
correlation and the figure), for any job:

1. the exporter's sampler runs in this process: NVML when a GPU answers, else a simulated GPU heated by the
   CPU use of CMD's own processes (never the whole machine's); every sample goes to OUT/hardware.csv;
2. CMD runs with THERMOGRAD_* variables (trainer/environment.py) that make the instrumentation inside it log
   to OUT/steps.jsonl under this run's id, register its /metrics URL and take pause bursts (the positive
   control); it runs in its own process group, holds the terminal while it runs (thermograd/job.py), and
   SIGINT, SIGTERM and SIGHUP sent to thermograd are passed on to that group;
3. whatever way CMD ends, the analysis runs on what was recorded (offline files, or with --prometheus a
   local Prometheus that scraped both at 1 s) and writes OUT/report.json and the figures.

Every check that can fail runs before anything is created, and a start that fails anyway (or is interrupted)
removes what it created: the same command can be run again as it was. A stop thermograd makes (--duration, a
SIGTERM or SIGHUP passed on) escalates, each step a grace period after the one before: SIGINT, SIGTERM, SIGKILL.
Our own messages never end the run: a closed stdout or stderr (a pipe into `head`, a closed terminal) is
written to /dev/null from its first failed write on (`_SurvivingStream`).

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
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from thermograd.commandline import UsageError
from thermograd.exporter.backends import BackendUnavailable
from thermograd.exporter.backends.sim import ProcessLoad
from thermograd.exporter.monitor import HardwareMonitor, MonitorSpec
from thermograd.exporter.record import HardwareRecorder, RecordError
from thermograd.job import TERMINAL_STOPS, Job, Terminal
from thermograd.processes import ChildExited, ProcessError
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
# A stop thermograd makes escalates along this ladder: --duration starts it at SIGINT (as Ctrl-C would), a SIGTERM
# or SIGHUP passed on at SIGTERM; each next signal goes to CMD's group when it still runs STOP_GRACE_S after the
# last one (--grace). 30 s: a checkpoint that Ctrl-C's handler saves gets its time, a job that ignores SIGINT
# or hangs in its cleanup is still ended within a minute.
STOP_LADDER = (signal.SIGINT, signal.SIGTERM, signal.SIGKILL)
STOP_GRACE_S = 30.0
# Signals that stop the run: passed on to the job. SIGHUP (the terminal closed) is handled as SIGTERM is, except
# when thermograd was started with it ignored (nohup): then a hang-up goes unheeded by thermograd and the job alike.
HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
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
    grace_s: float = STOP_GRACE_S
    sim_profile: str = "default"
    devices: int = 1
    sim_cooling: dict[int, float] = field(default_factory=dict)  # device index -> fraction of its cooling
    emulate_clock: bool = False
    quiet: bool = False
    analysis_args: list[str] = field(default_factory=list)


def say(text: str) -> None:
    print(f"thermograd: {text}", file=sys.stderr, flush=True)


class _SurvivingStream:
    """sys.stdout or sys.stderr whose reader may go away (a pipe into `head` that exits, a terminal that
    closes): the first write that fails points its file descriptor at /dev/null, so that everything after it
    (our messages, the analysis's summary, the interpreter's last flush) goes nowhere instead of raising, and the
    run goes on to write its files."""

    def __init__(self, stream) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except OSError:
            self._to_devnull()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError:
            self._to_devnull()

    def _to_devnull(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, self._stream.fileno())
            os.close(null)
        with contextlib.suppress(OSError, ValueError):
            self._stream.flush()  # what failed is still buffered: it goes to /dev/null now

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


@contextlib.contextmanager
def _surviving_output() -> Iterator[None]:
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _SurvivingStream(sys.stdout), _SurvivingStream(sys.stderr)
    try:
        yield
    finally:
        for wrapped in (sys.stdout, sys.stderr):
            wrapped.flush()  # a pipe closed after the last write fails here, not in the interpreter's exit
        sys.stdout, sys.stderr = streams


def _check_command(command: list[str]) -> None:
    if not command:
        raise RunError("no command to run: thermograd run [options] -- CMD [ARG...] (e.g. -- python train.py)")
    program = command[0]
    if os.sep in program:
        if not (os.path.isfile(program) and os.access(program, os.X_OK)):
            raise RunError(f"{program}: not an executable file")
    elif shutil.which(program) is None:
        raise RunError(f"{program}: command not found on PATH")


def _check_out_dir(out: Path | None, run_id: str) -> Path:
    """The run's folder, checked but not created: a given folder must be absent or empty (a run's data are
    never overwritten), and the nearest folder that exists must let us create it."""
    path = (out if out is not None else RUNS_DIR / run_id).absolute()
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise RunError(f"--out {path}: already holds files, and a run's data are never overwritten; "
                       "choose a new folder (or leave out --out: each run gets its own)")
    anchor = next(p for p in (path, *path.parents) if p.exists())
    if not anchor.is_dir():
        raise RunError(f"--out {path}: cannot create it: {anchor} is a file, not a folder")
    if not os.access(anchor, os.W_OK | os.X_OK):
        raise RunError(f"--out {path}: cannot create it: {anchor} is not writable")
    return path.resolve()


def exit_status(returncode: int) -> int:
    """Popen's returncode as a shell reports it: -N (killed by signal N) is 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class Session:
    """One run: the checks, the monitor, the job, the optional Prometheus and the analysis, in that order."""

    def __init__(self, opts: RunOptions) -> None:
        self.opts = opts
        self.run_id = new_run_id()
        self.job: Job | None = None
        self.signals: list[int] = []  # signals sent to thermograd (each repeat within SIGNAL_REPEAT_S counted once)
        self._last_signal_s = 0.0
        self.sent: list[str] = []  # signals thermograd sent to the job's group, in order
        self._level = 0  # the highest STOP_LADDER step sent (1: SIGINT, 2: SIGTERM, 3: SIGKILL) ...
        self._level_s = 0.0  # ... and when
        self._escalating = False  # a stop of thermograd's own: the next step follows after opts.grace_s
        self._deadline_s: float | None = None
        self._ranks_read_s = -1e9
        self._rank_pids: dict[int, int | None] = {}
        self.stopped_by: str | None = None
        self._created: list[Path] | None = None  # the folders this run created (None: nothing yet)
        self._handlers_before: dict[int, object] = {}
        self._notes: list[str] = []  # what the signal handler has to say
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
        self.out = _check_out_dir(opts.out, self.run_id)

    # ---- the run's folder -----------------------------------------------------------------------
    def create_folder(self, monitor: HardwareMonitor) -> None:
        """Every check passed: the run's folder, and the monitor's recording in it (before sampling starts)."""
        missing = [p for p in (self.out, *self.out.parents) if not p.exists()]
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunError(f"--out {self.out}: cannot create it: {exc.strerror or exc}") from None
        self._created = missing[::-1]  # outermost first
        try:
            monitor.recorder = HardwareRecorder(self.out / "hardware.csv", monitor.sampler.count_error)
        except RecordError as exc:
            raise RunError(str(exc)) from None

    def remove_created(self) -> None:
        """A start that failed or was interrupted before the job ran: what this run created goes again (the same
        command can then be run as it was); a folder that existed (empty) stays, emptied of what we put in it."""
        if self._created is None:
            return
        if self._created:
            shutil.rmtree(self.out, ignore_errors=True)
            for folder in reversed(self._created[:-1]):  # parents we made (thermograd-runs/), if left empty
                with contextlib.suppress(OSError):
                    folder.rmdir()
        else:
            for entry in self.out.iterdir():
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        entry.unlink()
        self._created = None

    # ---- the hardware ---------------------------------------------------------------------------
    def _child_pid(self) -> int | None:
        job = self.job
        return job.pid if job is not None and job.poll() is None else None

    def _rank_pid(self, local_rank: int) -> int | None:
        """The process id the rank of `local_rank` registered (read at most twice a second for all cards)."""
        now_s = time.monotonic()
        if now_s - self._ranks_read_s > POLL_S:
            self._ranks_read_s = now_s
            self._rank_pids = {int(r.get("local_rank", rank)): r.get("pid")
                               for rank, r in read_registrations(self.out).items()}
        return self._rank_pids.get(local_rank) if self._child_pid() is not None else None

    def open_monitor(self) -> HardwareMonitor:
        """The backend opened and every check on it made (the flags for a simulated GPU, --gpu-uuid); nothing
        created yet: the recording is attached by create_folder."""
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
                           port=0 if serve else None, record=None)
        try:
            monitor = HardwareMonitor(spec)
        except BackendUnavailable as exc:
            raise RunError(f"--backend {self.opts.backend}: {exc}") from None
        try:
            simulated = any(d.backend == "sim" for d in monitor.devices)
            for flag, asked in (("--emulate-clock", self.opts.emulate_clock),
                                ("--sim-cooling", bool(self.opts.sim_cooling)), ("--devices", self.opts.devices > 1)):
                if asked and not simulated:
                    raise RunError(f"{flag}: the hardware is real ({monitor.backend.name}); {flag} is for a "
                                   "simulated GPU only (a real GPU's cooling and clocks act on a job that runs on it "
                                   "already)")
            self.gpu_uuid(monitor)
        except BaseException:
            monitor.close()
            raise
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

    def _send(self, signum: int, *, escalate: bool = False) -> None:
        """`signum` to the job's process group, recorded; with `escalate` the ladder goes on by itself from it."""
        job = self.job
        if job is None or job.poll() is not None:
            return
        job.send(signum)
        self.sent.append(_signal_name(signum))
        level = STOP_LADDER.index(signum) + 1 if signum in STOP_LADDER else 0
        if level >= self._level:
            self._level, self._level_s = level, time.monotonic()
        self._escalating = self._escalating or escalate

    def _on_signal(self, signum: int, _frame: object) -> None:
        now_s = time.monotonic()
        # One Ctrl-C often arrives twice (a terminal signals the whole foreground group, and `timeout` or `make`
        # pass theirs on): signals within a second of the last one count once.
        if self.signals and now_s - self._last_signal_s < SIGNAL_REPEAT_S:
            return
        self._last_signal_s = now_s
        self.signals.append(signum)
        self.stopped_by = self.stopped_by or _signal_name(signum)
        if self.job is None or self.job.poll() is not None:
            return  # before the job started: run() sees self.signals
        # Said by the supervising loop, not here: a handler that prints while the main thread is inside a write
        # to stderr (a full pipe) would make a reentrant call into the same buffer.
        if len(self.signals) >= KILL_AFTER_SIGNALS:
            self._notes.append(f"{_signal_name(signum)} again: SIGKILL to the job's process group")
            self._send(signal.SIGKILL)
        elif signum == signal.SIGINT:  # the user's Ctrl-C, passed on as the terminal would; a second one too
            self._send(signal.SIGINT)
        else:  # SIGTERM, SIGHUP: the job is stopped (with SIGTERM: a clean exit under TrainingMetrics), for sure
            self._notes.append(f"{_signal_name(signum)}: SIGTERM to the job's process group (SIGKILL if it still "
                               f"runs {self.opts.grace_s:g} s later)")
            self._send(signal.SIGTERM, escalate=True)

    def start_job(self, env: dict[str, str]) -> None:
        try:  # the job's stdin is ours (file descriptor 0): when it is our terminal, the job holds it while it runs
            self.job = Job(self.opts.command, env, Terminal.of(0))
        except OSError as exc:
            raise RunError(f"{self.opts.command[0]}: cannot start it: {exc.strerror or exc}") from None
        if self.signals and not self.sent:  # a signal that came while the job was being started
            self._send(signal.SIGINT if self.signals[0] == signal.SIGINT else signal.SIGTERM,
                       escalate=self.signals[0] != signal.SIGINT)

    def _job_stopped(self, signum: int) -> None:
        """The job stopped (Ctrl-Z, reading the terminal from the background, SIGSTOP): stop with it when we hold
        the terminal, as the terminal would have stopped us; else say so, once per stop."""
        job = self.job
        assert job is not None
        name = _signal_name(signum)
        terminal = job.terminal
        if terminal is not None and signum in TERMINAL_STOPS and terminal.can_stop():
            say(f"the job stopped ({name}): thermograd stops with it; `fg` continues both")
            stopped_s = terminal.stop_with(signum)
            # time stopped does not count: --duration and the grace periods are the job's running time
            if self._deadline_s is not None:
                self._deadline_s += stopped_s
            self._level_s += stopped_s
            job.resume()
            return
        if terminal is not None and signum == signal.SIGTSTP:  # Ctrl-Z with no shell to continue us: ignored
            say("the job stopped (SIGTSTP), but no shell with job control runs thermograd to continue it: the job "
                "goes on")
            job.resume()
            return
        why = {signal.SIGTTIN: "it read from the terminal, which thermograd cannot give it (stdin is not thermograd's "
                               "terminal, or no shell with job control runs thermograd)",
               signal.SIGTTOU: "it set or wrote to the terminal, which thermograd cannot give it",
               signal.SIGTSTP: "Ctrl-Z or `kill -TSTP`, and thermograd has no terminal to stop with it",
               }.get(signum, f"`kill -{name.removeprefix('SIG')}`")
        say(f"the job (process group {job.pgid}) is stopped by {name} ({why}): it waits until "
            f"`kill -CONT -{job.pgid}`, or until SIGINT or SIGTERM to thermograd (pid {os.getpid()}) stops it")

    def _stop_step(self) -> None:
        """Once a stop of thermograd's own is under way: the next signal of the ladder when the last one has had
        its grace period."""
        if not self._escalating or self._level >= len(STOP_LADDER):
            return
        if time.monotonic() - self._level_s < self.opts.grace_s:
            return
        last, nxt = STOP_LADDER[self._level - 1], STOP_LADDER[self._level]
        later = f" (SIGKILL if it still runs {self.opts.grace_s:g} s later)" if nxt != signal.SIGKILL else ""
        say(f"the job still runs {self.opts.grace_s:g} s after {last.name}: {nxt.name} to its process group{later}")
        self._send(nxt)

    def _duration(self) -> None:
        if self._deadline_s is None or time.monotonic() < self._deadline_s:
            return
        self._deadline_s = None  # once
        self.stopped_by = self.stopped_by or "--duration"
        grace = self.opts.grace_s
        if self._level == 0:
            say(f"--duration {self.opts.duration_s:g} s reached: SIGINT to the job, as Ctrl-C would (SIGTERM if it "
                f"still runs {grace:g} s later, then SIGKILL after {grace:g} s more)")
            self._send(signal.SIGINT, escalate=True)
        else:  # the job is being stopped already: no second SIGINT into its cleanup, but it does end
            say(f"--duration {self.opts.duration_s:g} s reached while the job is stopping: the next signal goes "
                f"{grace:g} s after the last one ({self.sent[-1] if self.sent else 'none'})")
            self._escalating = True

    def supervise(self, prometheus) -> int:
        job = self.job
        assert job is not None
        if self.opts.duration_s is not None:
            self._deadline_s = time.monotonic() + self.opts.duration_s
        try:
            while (code := job.poll()) is None:
                self._say_notes()
                if (stopped := job.watch()) is not None:
                    self._job_stopped(stopped)
                job.follow_terminal()
                self._duration()
                self._stop_step()
                if prometheus is not None:
                    prometheus.scrape_trainers([r["address"] for r in read_registrations(self.out).values()
                                                if r.get("address")])
                job.wait(POLL_S)
        finally:
            job.end()  # the terminal back to thermograd
            self._say_notes()
        return code

    def _say_notes(self) -> None:
        while self._notes:
            say(self._notes.pop(0))

    def how_it_ended(self, returncode: int) -> str:
        if self.stopped_by == "--duration":
            return f"was stopped by --duration {self.opts.duration_s:g} s"
        if self.stopped_by:
            return f"was interrupted ({self.stopped_by})"
        if returncode < 0:  # a signal we did not send: the terminal's Ctrl-C, which the job holds, or a kill
            name = _signal_name(-returncode)
            return f"was ended by {name}" + (" (Ctrl-C in the terminal, or a kill)" if name == "SIGINT" else "")
        return "finished"

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

    # ---- signals to thermograd ------------------------------------------------------------------
    def install_handlers(self) -> None:
        """Our handler for HANDLED_SIGNALS, whatever we inherited (SIGINT ignored by nohup or a CI runner
        included), except a SIGHUP inherited ignored (nohup: the run is to outlive its terminal)."""
        for signum in HANDLED_SIGNALS:
            previous = signal.getsignal(signum)
            if signum == signal.SIGHUP and previous is signal.SIG_IGN:
                continue
            self._handlers_before[signum] = signal.SIG_DFL if previous is None else previous
            signal.signal(signum, self._on_signal)

    def restore_handlers(self, *, analysing: bool = False) -> None:
        """What we inherited again: once the job has ended a Ctrl-C or SIGTERM stops the analysis, not a job; a
        hang-up while `analysing` is ignored (the terminal is gone, the report is still written)."""
        for signum, handler in self._handlers_before.items():
            signal.signal(signum, signal.SIG_IGN if analysing and signum == signal.SIGHUP else handler)


def _start_prometheus(session: Session, address: str | None, stack: contextlib.ExitStack):
    """A local Prometheus, ready; a failure is one line with its log's last line (the folder goes, and the log
    with it, when the run does not start)."""
    from thermograd.local_prometheus import LocalPrometheus

    prometheus = None
    try:
        prometheus = LocalPrometheus(session.out / "prometheus", address)
        stack.callback(prometheus.stop)
        prometheus.wait_ready()
    except ProcessError as exc:
        last = prometheus.child.tail(1).strip() if prometheus is not None else ""
        if isinstance(exc, ChildExited):
            why = f"Prometheus exited with code {exc.returncode} as it started"
        else:
            why = str(exc).split(" (log: ", 1)[0]
        raise RunError(f"--prometheus: {why}" + (f": {last}" if last else "")) from None
    return prometheus


def run(opts: RunOptions) -> int:
    with _surviving_output():
        session = Session(opts)  # every check that needs no hardware; nothing created
        session.install_handlers()  # first: a Ctrl-C from here on is passed on to the job, never lost
        try:
            return _run(session)
        finally:
            session.restore_handlers()


def _run(session: Session) -> int:
    opts = session.opts
    try:
        monitor = session.open_monitor()  # the backend and every check on it: nothing created yet
        try:
            session.create_folder(monitor)
        except BaseException:
            monitor.close()
            raise
        with monitor, contextlib.ExitStack() as stack:
            gpu_uuid = session.gpu_uuid(monitor)
            say(f"hardware: {session.describe(monitor)}")
            if opts.emulate_clock:
                say("EMULATED clock path: the job's steps are stretched by the simulated card's clock deficit, so "
                    "hardware -> training has a path by construction (said in the report)")
            prometheus = _start_prometheus(session, monitor.address, stack) if opts.prometheus else None
            if prometheus is not None:
                say(f"Prometheus {prometheus.url} scrapes the hardware and the job every second "
                    f"(its TSDB stays in {prometheus.folder / 'data'})")
            if session.signals:
                say(f"interrupted ({_signal_name(session.signals[0])}) before the job started: nothing to keep "
                    f"(what this run created in {session.out} is removed)")
                return 128 + session.signals[0]
            started_s = time.time()
            session.start_job(session.environment(gpu_uuid, monitor.url))
            # said once the run has really started: a start that fails leaves no folder to name
            say(f"run {session.run_id}: data, report and figures in {session.out}")
            say(f"running: {' '.join(opts.command)}"
                + (f" (pause bursts: {opts.pauses.removeprefix('kind=pause,')})" if opts.pauses else " (no pauses)"))
            code = exit_status(session.supervise(prometheus))
            if prometheus is not None:
                time.sleep(PROMETHEUS_LINGER_S)  # the exporter's last samples get scraped too
            else:
                monitor.close()  # the recording is complete: no sampling during the analysis
            return finish(session, monitor, prometheus, code, started_s)
    except ProcessError as exc:
        raise RunError(str(exc)) from None
    finally:
        if session.job is None:  # the run never started: the same command can be run again as it was
            session.remove_created()
        else:
            session.job.end()  # the terminal back to thermograd's group, whatever way we leave


def finish(session: Session, monitor: HardwareMonitor, prometheus, code: int, started_s: float) -> int:
    """After the job: say how it ended, find its step log, analyse. Returns the exit status."""
    from thermograd.analysis.cli import main as analysis_main

    opts = session.opts
    job = session.job
    assert job is not None
    session.restore_handlers(analysing=True)
    sent = f" (thermograd sent it {', '.join(session.sent)})" if session.sent else ""
    say(f"the job {session.how_it_ended(job.proc.returncode)} with exit status {code} after "
        f"{time.time() - started_s:.0f} s{sent}; {monitor.recorder.rows if monitor.recorder else 0} hardware samples "
        f"in {session.out / 'hardware.csv'}")
    steps, record = session.step_log()
    session.write_summary({"run_id": session.run_id, "command": opts.command, "exit_status": code,
                           "stopped_by": session.stopped_by, "signals_sent": session.sent,
                           "started_unix": started_s, "ended_unix": time.time(),
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
