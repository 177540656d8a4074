"""thermograd trainer: loss and gradient norm on /metrics.

    from thermograd.trainer import TrainingMetrics, clip_and_measure_grad_norm, PrometheusCallback
    from thermograd.trainer import PrometheusLightningCallback, host_floats, deepspeed_grad_norm

`TrainingMetrics` needs only prometheus-client; `clip_and_measure_grad_norm`, `host_floats` and
`deepspeed_grad_norm` import torch, `PrometheusCallback` transformers and `PrometheusLightningCallback`
Lightning, each only when first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from thermograd.trainer.metrics import TrainingMetrics

if TYPE_CHECKING:
    from thermograd.trainer.gradnorm import (
        GradNorm,
        clip_and_measure_grad_norm,
        deepspeed_grad_norm,
        host_floats,
    )
    from thermograd.trainer.huggingface import PrometheusCallback
    from thermograd.trainer.lightning import PrometheusLightningCallback

__all__ = [
    "TrainingMetrics", "PrometheusCallback", "PrometheusLightningCallback", "clip_and_measure_grad_norm",
    "GradNorm", "host_floats", "deepspeed_grad_norm",
]

_LAZY = {
    "PrometheusCallback": "thermograd.trainer.huggingface",
    "PrometheusLightningCallback": "thermograd.trainer.lightning",
    "clip_and_measure_grad_norm": "thermograd.trainer.gradnorm",
    "GradNorm": "thermograd.trainer.gradnorm",
    "host_floats": "thermograd.trainer.gradnorm",
    "deepspeed_grad_norm": "thermograd.trainer.gradnorm",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'trainer' has no attribute {name!r}")
