"""thermograd trainer: loss and gradient norm on /metrics.

    from trainer import TrainingMetrics, clip_and_measure_grad_norm, PrometheusCallback

`TrainingMetrics` needs only prometheus-client; `clip_and_measure_grad_norm` imports torch and
`PrometheusCallback` transformers, each only when first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from trainer.metrics import TrainingMetrics

if TYPE_CHECKING:
    from trainer.callback import PrometheusCallback
    from trainer.gradnorm import GradNorm, clip_and_measure_grad_norm

__all__ = ["TrainingMetrics", "PrometheusCallback", "clip_and_measure_grad_norm", "GradNorm"]

_LAZY = {
    "PrometheusCallback": "trainer.callback",
    "clip_and_measure_grad_norm": "trainer.gradnorm",
    "GradNorm": "trainer.gradnorm",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'trainer' has no attribute {name!r}")
