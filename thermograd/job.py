"""The user's job under `thermograd run`: its process group, the terminal it may read, and its stops.

- CMD runs in a process group of its own, so one signal reaches every process of it (torchrun and its ranks, a
  shell and its python) and none of thermograd's.
- It gets SIGTERM when thermograd dies, even by SIGKILL (processes.die_with_parent): never an orphan that trains on.
- The terminal: when stdin is thermograd's controlling terminal and thermograd runs in its foreground, CMD's
  group is made the terminal's foreground while it runs, as a shell makes a job it starts: input(), pdb and
  login prompts read the terminal, and Ctrl-C, Ctrl-\\ and Ctrl-Z reach CMD as they would without thermograd.
  thermograd's own group gets the terminal back when CMD ends and on every way out (`Terminal.take_back`).
- A CMD stopped by Ctrl-Z (SIGTSTP), or by reading or setting the terminal from the background (SIGTTIN,
  SIGTTOU: thermograd was started with `&`, or sent on with `bg`), stops thermograd's group with the same signal,
  as the terminal would have stopped it: the shell sees its job stopped, and `fg` continues both, CMD holding
  the terminal. A CMD stopped where thermograd cannot do that (stdin no terminal, no shell with job control,
  SIGSTOP from elsewhere) is said to be stopped; a signal passed on to a stopped CMD is followed by SIGCONT, so
  that it is handled.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from thermograd.processes import die_with_parent

# Stops that a terminal causes: mirrored on thermograd's group when it holds the terminal.
TERMINAL_STOPS = (signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU)


def _parent_of(pid: int) -> int:
    if pid == os.getpid():
        return os.getppid()
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def _watched(pgrp: int) -> bool:
    """Whether a process of this session outside our group `pgrp` is the parent of this process or of an ancestor
    in our group (`make` running us): POSIX then calls the group not orphaned, so a stop signal stops it, and that
    parent (the shell, with job control) sees the stop and can continue it."""
    session, pid = os.getsid(0), os.getpid()
    for _ in range(64):
        parent = _parent_of(pid)
        if parent <= 1:
            return False
        try:
            if os.getpgid(parent) != pgrp:
                return os.getsid(parent) == session
        except OSError:
            return False
        pid = parent
    return False


def _group_exists(pgid: int) -> bool:
    if pgid <= 0:
        return False
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Terminal:
    """stdin's terminal, thermograd's controlling terminal; lent to the job while it runs when thermograd's group
    is its foreground.

    SIGTTOU is ignored while the job holds it: a background group that sets the terminal's foreground (taking it
    back) or writes to a terminal with `stty tostop` is otherwise stopped. Every method is for the main thread."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.own = os.getpgrp()
        self.job: int | None = None  # the job's group, from give() to take_back()
        self._sigttou: object = None

    def can_stop(self) -> bool:
        """Whether stopping thermograd's group stops it, with a shell to continue it (not an orphaned group)."""
        return _watched(self.own)

    @classmethod
    def of(cls, fd: int = 0) -> Terminal | None:
        """The terminal on `fd` when it is this process's controlling terminal (None: no terminal, or another
        session's)."""
        try:
            if os.isatty(fd):
                os.tcgetpgrp(fd)  # ENOTTY unless it is our controlling terminal
                return cls(fd)
        except OSError:
            pass
        return None

    def ours(self) -> bool:
        """thermograd's group is the terminal's foreground (false after the shell's `bg`)."""
        try:
            return os.tcgetpgrp(self.fd) == self.own
        except OSError:
            return False

    def _set(self, pgid: int) -> bool:
        try:
            os.tcsetpgrp(self.fd, pgid)
        except OSError:
            return False
        return True

    def give(self, pgid: int) -> bool:
        """The job's group `pgid` becomes the foreground, if thermograd's group holds the terminal now."""
        if self._sigttou is None:
            previous = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
            self._sigttou = signal.SIG_DFL if previous is None else previous
        self.job = pgid
        return self.ours() and self._set(pgid)

    def follow(self) -> None:
        """thermograd's group was given the terminal while the job runs (the shell's `fg` after a start with `&`):
        on to the job, which would otherwise be stopped by its next read."""
        if self.job is not None and self.ours():
            self._set(self.job)

    def take_back(self) -> None:
        """thermograd's group the foreground again, unless the shell took the terminal meanwhile (after `bg`):
        only from the job's group, or from a group no longer there. Idempotent."""
        if self.job is None:
            return
        with contextlib.suppress(OSError):
            current = os.tcgetpgrp(self.fd)
            if current != self.own and (current == self.job or not _group_exists(current)):
                self._set(self.own)
        self.job = None
        if self._sigttou is not None:
            signal.signal(signal.SIGTTOU, self._sigttou)
            self._sigttou = None

    def stop_with(self, signum: int) -> float:
        """Stop thermograd's whole group with `signum`, as the terminal would have stopped it had the job not held
        it, and return once it is continued: the seconds spent stopped. The terminal goes back to thermograd's
        group first, so that the shell's `fg` gives it to the group it knows, and to the job again after `fg`.
        For a group that `can_stop`."""
        pgid = self.job
        self.take_back()
        started_s = time.monotonic()
        previous = signal.signal(signum, signal.SIG_DFL)  # an inherited SIG_IGN must not make this a no-op
        try:
            os.killpg(self.own, signum)
        finally:
            signal.signal(signum, signal.SIG_DFL if previous is None else previous)
        stopped_s = time.monotonic() - started_s
        if pgid is not None:
            self.give(pgid)  # after `fg` (thermograd's group in the foreground again); after `bg` it stays away
        return stopped_s


class Job:
    """CMD started in its own process group (and given the terminal, if any); `send` signals the whole group."""

    def __init__(self, argv: Sequence[str], env: dict[str, str], terminal: Terminal | None) -> None:
        # Our handlers are Python functions, which exec resets to the default: CMD starts with SIGINT and SIGTERM
        # at their defaults even when this process was started with SIGINT ignored (nohup, CI). SIGHUP ignored
        # by nohup stays ignored, as nohup intends.
        self.proc = subprocess.Popen(list(argv), env=env, process_group=0,
                                     preexec_fn=die_with_parent(signal.SIGTERM))
        self.pgid = self.proc.pid
        self.terminal = terminal
        self.stopped_by: int | None = None  # the signal that stopped it, while it is stopped
        # It may have read the terminal in the moment before it held it: stopped by SIGTTIN then.
        if terminal is not None and terminal.give(self.pgid) and self.watch() in TERMINAL_STOPS:
            self.resume()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def poll(self) -> int | None:
        return self.proc.poll()

    def wait(self, timeout_s: float) -> int | None:
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def send(self, signum: int) -> None:
        """`signum` to every process of the job; a stopped job is continued after it, so that it handles it."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pgid, signum)
            if self.stopped_by is not None and signum != signal.SIGKILL:
                self.resume()

    def resume(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pgid, signal.SIGCONT)
        self.stopped_by = None

    def watch(self) -> int | None:
        """The signal that stopped the job's first process, when it has stopped since the last call (None
        otherwise); keeps `stopped_by` current (a continue clears it). Never reaps: Popen does that."""
        try:
            info = os.waitid(os.P_PID, self.pid, os.WSTOPPED | os.WCONTINUED | os.WNOHANG)
        except ChildProcessError:  # already reaped
            return None
        if info is None:
            return None
        if info.si_code == os.CLD_STOPPED:
            self.stopped_by = info.si_status
            return info.si_status
        if info.si_code == os.CLD_CONTINUED:
            self.stopped_by = None
        return None

    def follow_terminal(self) -> None:
        if self.terminal is not None:
            self.terminal.follow()

    def end(self) -> None:
        """After the job's first process ended: the terminal back to thermograd's group."""
        if self.terminal is not None:
            self.terminal.take_back()
