"""thermograd: a training job and the GPU it runs on, measured on one Prometheus clock and compared honestly.

    from thermograd import TrainingMetrics, clip_and_measure_grad_norm   # a plain loop (two lines)
    from thermograd import PrometheusCallback                            # transformers.Trainer
    from thermograd import PrometheusLightningCallback                   # PyTorch Lightning

The subpackages are `thermograd.exporter` (hardware + RLE on /metrics), `thermograd.trainer` (the
instrumentation and a reference job) and `thermograd.analysis` (the coupling statistics); the repository
keeps them as its top-level folders exporter/, trainer/ and analysis/. Importing this package imports
nothing heavy: the instrumentation's names load from `thermograd.trainer` on first use (torch, transformers
or Lightning only for the names that need them), so the exporter's image needs none of them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from thermograd.trainer import (
        GradNorm,
        PrometheusCallback,
        PrometheusLightningCallback,
        TrainingMetrics,
        clip_and_measure_grad_norm,
        deepspeed_grad_norm,
        host_floats,
    )

__all__ = [
    "GradNorm", "PrometheusCallback", "PrometheusLightningCallback", "TrainingMetrics",
    "clip_and_measure_grad_norm", "deepspeed_grad_norm", "host_floats", "__version__",
]


def __getattr__(name: str) -> Any:
    if name in __all__:  # the instrumentation: thermograd.trainer's names (it loads each module lazily)
        return getattr(importlib.import_module("thermograd.trainer"), name)
    raise AttributeError(f"module 'thermograd' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
