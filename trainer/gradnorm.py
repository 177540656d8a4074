"""Pre-clip gradient norm and clipping in one fused pass, with no host sync of its own.

`torch.nn.utils.clip_grad_norm_(..., foreach=True)` already computes the total norm (one
`_foreach_norm` over all gradients) before it scales them, and returns that pre-clip norm as a
device tensor. We keep it on the device; the caller copies it to the host once, together with the
loss (`GradNorm.publish_with`), which is the only synchronisation needed to publish both numbers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch


class GradNorm:
    """The pre-clip total L2 norm of one step: a 0-d device tensor until first read."""

    __slots__ = ("tensor", "max_norm", "_value")

    def __init__(self, tensor: torch.Tensor, max_norm: float) -> None:
        self.tensor = tensor
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


def host_floats(*scalars: torch.Tensor) -> list[float]:
    """Several scalar tensors (same device) to Python floats with a single device→host copy."""
    return torch.stack([s.detach().reshape(()).float() for s in scalars]).tolist()


def clip_and_measure_grad_norm(
    parameters: Iterable[torch.Tensor] | torch.Tensor, max_norm: float | None, norm_type: float = 2.0
) -> GradNorm:
    """Clip gradients to `max_norm` (None, 0 or inf: no clipping) and return the PRE-clip total norm.

    One fused foreach pass computes the norm; when clipping is on the same call scales the gradients
    by min(1, max_norm / norm). When it is off we compute the norm alone (`get_total_norm`, the very
    function clip_grad_norm_ uses), which equals clip_grad_norm_(…, max_norm=inf) minus a useless ×1
    pass. A non-finite norm is returned as is (the caller decides to skip the step).
    """
    params = [parameters] if isinstance(parameters, torch.Tensor) else list(parameters)
    grads = [p.grad for p in params if p.grad is not None]
    clip = max_norm is not None and 0 < max_norm < math.inf
    if not grads:
        return GradNorm(torch.zeros(()), max_norm if clip else math.inf)
    if clip:
        total = torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type=norm_type, foreach=True)
    else:
        total = total_grad_norm(params, norm_type=norm_type)
    return GradNorm(total.detach(), max_norm if clip else math.inf)


def total_grad_norm(parameters: Iterable[torch.Tensor], norm_type: float = 2.0) -> torch.Tensor:
    """Total norm of the parameters' gradients (one fused foreach pass, a device tensor, no clipping).

    `torch.nn.utils.get_total_norm` exists from torch 2.6; before that, `clip_grad_norm_` with
    max_norm=inf computes the same norm (and scales the gradients by exactly 1).
    """
    params = list(parameters)
    grads = [p.grad for p in params if p.grad is not None]
    if hasattr(torch.nn.utils, "get_total_norm"):
        return torch.nn.utils.get_total_norm(grads, norm_type=norm_type, foreach=True)
    return torch.nn.utils.clip_grad_norm_(params, math.inf, norm_type=norm_type, foreach=True)  # torch < 2.6
