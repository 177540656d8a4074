"""A rank's time waiting on its collectives, per optimizer step, so its compute time can be told from it.

Under DDP and FSDP2 the ranks wait for each other at every step: every rank's *wall* step time is the same, and
a rank whose GPU computes slower cannot be seen in it. What differs is where the time goes. The slowest rank
reaches each collective last and hardly waits; the others wait for it. So each rank measures the time it spends
waiting, and its compute time is the step's time less that wait:

* **end of backward** (DDP's all-reduce, FSDP2's reduce-scatter): from the last gradient this rank produced
  (the last post-accumulate-grad hook of the backward) to the end of the backward's final callbacks — DDP's
  finalize and FSDP2's root post-backward, which wait for those collectives. Our final callback is queued from
  the first gradient hook and re-queues itself, so it runs after every callback queued during the backward
  (the same ordering `huggingface.py` relies on for the norm).
* **FSDP2's forward**: each FSDP module's pre-forward hook waits for that module's all-gather (the wait for a
  slower rank's parameters). A pre-hook placed before FSDP's own and one after it bracket that wait.

On CPU the marks are `time.perf_counter()`: the process blocks while it waits. On CUDA the marks are CUDA
events recorded on the current stream at the same points — the waits are the compute stream idling for the
NCCL stream — and are read only once complete (`Event.query()`), at the step's own host sync or a step
later: never a synchronisation of their own. Without collectives — one process, no process group of several
ranks (checked at each backward, so a group initialised after `watch` counts) — there is nothing to wait for:
no span is counted and the wait is 0, the whole step compute (the end of backward's callbacks included, such as
the Hugging Face callback's own norm).

References: the straggler detectors this stands beside — Megatron-LM's `StragglerDetector` (per-rank timers,
no attribution) and NVIDIA's nvidia-resiliency-ext straggler detection (per-rank CUDA kernel timings).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch


def _fsdp2_module_class() -> type | None:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch without FSDP2
        return None
    return FSDPModule


def collectives_running() -> bool:
    """Whether this process trains beside others: a process group of more than one rank is initialised."""
    dist = torch.distributed
    return bool(dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1)


class _Clock:
    """Marks and spans of time on the host (CPU training) or on the current CUDA stream."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self._pending: list[tuple[Any, Any]] = []  # CUDA (start, end) events not read yet
        self._free: list[Any] = []

    def mark(self) -> Any:
        if not self.cuda:
            return time.perf_counter()
        event = self._free.pop() if self._free else torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def span_s(self, start: Any, end: Any) -> float | None:
        """The span's seconds now (host), or None: a CUDA span is read later (`read_spans_s`)."""
        if not self.cuda:
            return max(end - start, 0.0)
        self._pending.append((start, end))
        return None

    def read_spans_s(self) -> float:
        """The CUDA spans that have completed (their events reached), in seconds; the rest wait for later."""
        total, keep = 0.0, []
        for start, end in self._pending:
            if end.query():  # complete: elapsed_time reads two timestamps, it does not synchronise
                total += max(start.elapsed_time(end), 0.0) / 1e3
                self._free += [start, end]
            else:
                keep.append((start, end))
        self._pending = keep
        return total


class CollectiveWaits:
    """Hooks on a model that sum its waits on collectives; `take_s()` returns the sum since the last take.

    `model` is what trains: a DDP-wrapped module, a module sharded with FSDP2's `fully_shard`, or a plain one.
    `on_local_done` (optional) is called at the end of each backward's local compute, before the wait: the
    emulated clock path stretches a rank's compute there (trainer/emulation.py). `remove()` takes the hooks off.
    """

    def __init__(self, model: torch.nn.Module, on_local_done: Callable[[], None] | None = None) -> None:
        params = [p for p in model.parameters() if p.requires_grad]
        device = params[0].device if params else torch.device("cpu")
        self._clock = _Clock(device)
        self._on_local_done = on_local_done
        self._host_s = 0.0
        self._queued = False
        self._counting = False  # this backward has collectives to wait for (a process group of several ranks)
        self._local: Any = None
        self._last_grad: Any = None
        self._handles = [p.register_post_accumulate_grad_hook(self._grad_ready) for p in params]
        fsdp2 = _fsdp2_module_class()
        for module in model.modules():
            if fsdp2 is not None and isinstance(module, fsdp2):
                self._handles.append(module.register_forward_pre_hook(self._before_unshard, prepend=True))
                self._handles.append(module.register_forward_pre_hook(self._after_unshard))
        self._unshard_start: dict[int, Any] = {}

    # ---- the end of backward ----------------------------------------------------------------------
    def _grad_ready(self, _param: torch.Tensor) -> None:
        self._last_grad = self._clock.mark() if not self._clock.cuda else None
        if not self._queued:
            self._queued = True
            self._counting = collectives_running()
            torch.autograd.Variable._execution_engine.queue_callback(self._local_done)

    def _local_done(self) -> None:
        # Runs when the backward graph is done, before the callbacks that wait for its collectives (queued
        # later in this backward); re-queued, `_synced` runs after them. One process: nothing is waited for.
        counting = self._counting
        local = (self._clock.mark() if self._clock.cuda else self._last_grad) if counting else None
        if self._on_local_done is not None:
            self._on_local_done()
            local = self._clock.mark() if counting else None  # an emulated stretch is compute, not a wait
        self._local = local
        torch.autograd.Variable._execution_engine.queue_callback(self._synced)

    def _synced(self) -> None:
        self._queued = False
        if self._counting:
            self._add(self._local, self._clock.mark())

    # ---- FSDP2's forward all-gathers ----------------------------------------------------------------
    def _before_unshard(self, module: torch.nn.Module, _args: Any) -> None:
        if collectives_running():  # FSDP2 on one rank gathers from no one: nothing to wait for
            self._unshard_start[id(module)] = self._clock.mark()

    def _after_unshard(self, module: torch.nn.Module, _args: Any) -> None:
        start = self._unshard_start.pop(id(module), None)
        if start is not None:
            self._add(start, self._clock.mark())

    def _add(self, start: Any, end: Any) -> None:
        span = self._clock.span_s(start, end)
        if span is not None:
            self._host_s += span

    # ---- reading --------------------------------------------------------------------------------
    @property
    def waited_so_far_s(self) -> float:
        """Host-measured seconds waited since the last take (CUDA spans are not known before they complete)."""
        return self._host_s

    def take_s(self) -> float:
        """Seconds waited since the last take (CUDA spans not complete yet count at a later take)."""
        total = self._host_s + (self._clock.read_spans_s() if self._clock.cuda else 0.0)
        self._host_s = 0.0
        return total

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
