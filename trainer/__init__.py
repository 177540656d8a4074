"""thermograd trainer: loss and gradient norm on /metrics.

    from trainer import TrainingMetrics, clip_and_measure_grad_norm, PrometheusCallback
    from trainer import PrometheusLightningCallback, host_floats, deepspeed_grad_norm

`TrainingMetrics` needs only prometheus-client; `clip_and_measure_grad_norm`, `host_floats` and
`deepspeed_grad_norm` import torch, `PrometheusCallback` transformers and `PrometheusLightningCallback`
Lightning, each only when first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from trainer.metrics import TrainingMetrics

if TYPE_CHECKING:
    from trainer.callback import PrometheusCallback
    from trainer.gradnorm import GradNorm, clip_and_measure_grad_norm, deepspeed_grad_norm, host_floats
    from trainer.lightning import PrometheusLightningCallback

__all__ = [
    "TrainingMetrics", "PrometheusCallback", "PrometheusLightningCallback", "clip_and_measure_grad_norm",
    "GradNorm", "host_floats", "deepspeed_grad_norm",
]

_LAZY = {
    "PrometheusCallback": "trainer.callback",
    "PrometheusLightningCallback": "trainer.lightning",
    "clip_and_measure_grad_norm": "trainer.gradnorm",
    "GradNorm": "trainer.gradnorm",
    "host_floats": "trainer.gradnorm",
    "deepspeed_grad_norm": "trainer.gradnorm",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'trainer' has no attribute {name!r}")
