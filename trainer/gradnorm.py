"""Pre-clip gradient norm and clipping in one fused pass, with no host sync of its own.

`torch.nn.utils.clip_grad_norm_(..., foreach=True)` is `get_total_norm` (one `_foreach_norm` over all
gradients) followed by `clip_grads_with_norm_` (scale them by min(1, max_norm / norm)). We make the
same two calls ourselves so that the norm we keep is the one used to clip, as a device tensor; the
caller copies it to the host once, together with the loss (`GradNorm.publish_with`), which is the
only synchronisation needed to publish both numbers.

Distributed training: every function here returns the GLOBAL norm (the whole model's) on every rank.
Under DDP the gradients are already all-reduced (averaged) when backward returns, so each rank's
local norm is the global one. Under FSDP2 (`fully_shard`) each rank holds one shard of every gradient
as a DTensor, and so is their norm: `global_value` reduces it. DeepSpeed clips inside `engine.step()`
and keeps the norm it computed there: `deepspeed_grad_norm(engine)` reads it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from typing import Any

import torch


class UnsupportedEngineError(TypeError):
    """A training engine whose gradient norm thermograd cannot read (the message says why and what to do)."""


class GradNorm:
    """The pre-clip total L2 norm of one step: a 0-d device tensor until first read."""

    __slots__ = ("tensor", "max_norm", "_value")

    def __init__(self, tensor: torch.Tensor, max_norm: float) -> None:
        self.tensor = global_value(tensor)
        self.max_norm = max_norm  # math.inf when clipping is off
        self._value: float | None = None

    def item(self) -> float:
        """The norm as a float (one host sync the first time, cached after)."""
        if self._value is None:
            self._value = float(self.tensor.item())
        return self._value

    def publish_with(self, loss: torch.Tensor) -> tuple[float, float]:
        """(loss, grad_norm) as floats with ONE host sync for both."""
        loss_value, norm_value = host_floats(loss, self.tensor)
        self._value = norm_value
        return loss_value, norm_value

    @property
    def nonfinite(self) -> bool:
        return not math.isfinite(self.item())

    @property
    def clipped(self) -> bool:
        """True when clipping scaled the gradients down (the norm exceeded max_norm)."""
        value = self.item()
        return math.isfinite(value) and value > self.max_norm


@functools.cache
def _dtensor_class() -> type | None:
    """torch's DTensor class, or None where torch.distributed (or DTensor) is absent."""
    if not torch.distributed.is_available():
        return None
    try:
        from torch.distributed.tensor import DTensor  # torch >= 2.4
    except ImportError:
        try:
            from torch.distributed._tensor import DTensor  # torch 2.1 - 2.3
        except ImportError:
            return None
    return DTensor


def _is_dtensor(tensor: Any) -> bool:
    dtensor = _dtensor_class()
    return dtensor is not None and isinstance(tensor, dtensor)


def global_value(tensor: torch.Tensor) -> torch.Tensor:
    """A plain tensor holding the value for the whole model, the same on every rank.

    A DTensor norm (FSDP2) whose placement is Partial has, on each rank, only that rank's shard's
    norm as its local value: reading it (`to_local()`, a naive per-shard norm) gives a norm about
    sqrt(shards) too small. `full_tensor()` reduces it with the one all-reduce that clipping needs
    anyway; a norm already Replicate (what `get_total_norm` returns from torch 2.13 on, having
    all-reduced while stacking) costs nothing. Plain tensors (one process, DDP) pass through.
    """
    return tensor.full_tensor() if _is_dtensor(tensor) else tensor


def host_floats(*scalars: torch.Tensor | float | None) -> list[float | None]:
    """Several scalar tensors (same device) to Python floats with a single device→host copy.

    A plain number passes through as a float and None as None: what a framework hands back is not always a
    tensor (accelerate's `clip_grad_norm_` under DeepSpeed returns the engine's norm as a float, or None
    before the engine has computed one), and publishing it must not crash the loop."""
    tensors = [s for s in scalars if isinstance(s, torch.Tensor)]
    copied = iter(torch.stack([global_value(s).detach().reshape(()).float() for s in tensors]).tolist()
                  if tensors else ())
    return [next(copied) if isinstance(s, torch.Tensor) else None if s is None else float(s) for s in scalars]


def _by_mesh(params: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    """The parameters grouped by their gradients' device mesh (plain tensors: one group of their own).

    One norm call cannot span DTensors on different meshes (FSDP2 next to tensor parallelism, or a
    model sharded only in part), so each group is reduced over its own mesh and the group norms are
    combined after.
    """
    groups: dict[Any, list[torch.Tensor]] = {}
    for param in params:
        mesh = param.grad.device_mesh if _is_dtensor(param.grad) else None
        groups.setdefault(mesh, []).append(param)  # DeviceMesh hashes and compares by its ranks and shape
    return list(groups.values())


def _group_norm(params: list[torch.Tensor], norm_type: float) -> torch.Tensor:
    if hasattr(torch.nn.utils, "get_total_norm"):
        return torch.nn.utils.get_total_norm([p.grad for p in params], norm_type=norm_type, foreach=True)
    # torch < 2.6: clip_grad_norm_ with max_norm=inf computes the same norm (and scales by exactly 1).
    return torch.nn.utils.clip_grad_norm_(params, math.inf, norm_type=norm_type, foreach=True)


def _combine(norms: list[torch.Tensor], norm_type: float) -> torch.Tensor:
    if len(norms) == 1:
        return norms[0]
    return torch.linalg.vector_norm(torch.stack([n.to(norms[0].device) for n in norms]), norm_type)


def total_grad_norm(parameters: Iterable[torch.Tensor], norm_type: float = 2.0) -> torch.Tensor:
    """Total norm of the parameters' gradients over the whole model (a plain device tensor, the same on
    every rank; one fused foreach pass per device mesh, no clipping, no host sync)."""
    params = [p for p in parameters if p.grad is not None]
    if not params:
        return torch.zeros(())
    return _combine([global_value(_group_norm(group, norm_type)) for group in _by_mesh(params)], norm_type)


def _clip_with_norm(params: list[torch.Tensor], max_norm: float, total: torch.Tensor) -> None:
    """Scale the gradients by min(1, max_norm / total), as clip_grad_norm_ does (same epsilon)."""
    if hasattr(torch.nn.utils, "clip_grads_with_norm_"):
        for group in _by_mesh(params):
            torch.nn.utils.clip_grads_with_norm_(group, max_norm, total, foreach=True)
        return
    coefficient = torch.clamp(max_norm / (total + 1e-6), max=1.0)  # torch < 2.6
    for param in params:
        param.grad.mul_(coefficient.to(param.grad.device))


def clip_and_measure_grad_norm(
    parameters: Iterable[torch.Tensor] | torch.Tensor, max_norm: float | None, norm_type: float = 2.0
) -> GradNorm:
    """Clip gradients to `max_norm` (None, 0 or inf: no clipping) and return the PRE-clip total norm.

    One fused foreach pass computes the norm (the global one under DDP and FSDP2); when clipping is on,
    the gradients are scaled by min(1, max_norm / norm) with that very norm, exactly as
    `clip_grad_norm_` would. Under FSDP2 this costs the one all-reduce `clip_grad_norm_` itself does,
    no more. A non-finite norm is returned as is (the caller decides to skip the step).
    """
    params = [parameters] if isinstance(parameters, torch.Tensor) else list(parameters)
    params = [p for p in params if p.grad is not None]
    clip = max_norm is not None and 0 < max_norm < math.inf
    total = total_grad_norm(params, norm_type=norm_type)
    if clip and params:
        _clip_with_norm(params, max_norm, total)
    return GradNorm(total.detach(), max_norm if clip else math.inf)


def fsdp1_unsupported(module: torch.nn.Module, instead: str) -> str | None:
    """Why no gradient norm can be published for `module`, when it holds FSDP1 wrappers; else None.

    FSDP1 (`FullyShardedDataParallel`) keeps each rank's slice of flat parameters as plain tensors, not
    DTensors: nothing tells a norm of them from the whole model's, and publishing it would understate
    the norm by about sqrt(ranks). FSDP2 (`fully_shard`, DTensor gradients) is supported.
    """
    if not (isinstance(module, torch.nn.Module) and torch.distributed.is_available()):
        return None
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel
    except ImportError:
        return None
    if not any(isinstance(m, FullyShardedDataParallel) for m in module.modules()):
        return None
    return ("FSDP1 (FullyShardedDataParallel) is not supported for the gradient norm: each rank holds a slice "
            f"of flat parameters, whose norm is not the model's; train_grad_norm is not published ({instead})")


def deepspeed_grad_norm(engine: Any) -> float | None:
    """The pre-clip global gradient norm DeepSpeed computed in the engine's last `step()`, as a float.

    DeepSpeed reduces and clips inside `engine.step()` (under ZeRO the gradients are partitioned and
    `p.grad` is empty), so the norm cannot be measured from the parameters; the engine caches the one it
    computed (unscaled, over all ranks) until the next step. Call this after `engine.step()`. None when
    the engine has not computed one (before the first step, or configurations that skip it). A tensor
    norm is copied to the host here: DeepSpeed's step has synchronised already (its overflow check).
    """
    getter = getattr(engine, "get_global_grad_norm", None)
    if not callable(getter):
        raise UnsupportedEngineError(
            f"{type(engine).__name__} has no get_global_grad_norm(): thermograd cannot read this DeepSpeed "
            "engine's gradient norm (upgrade DeepSpeed, or publish grad_norm=None)"
        )
    value = getter()
    if value is None:
        return None
    return float(value.item()) if isinstance(value, torch.Tensor) else float(value)
