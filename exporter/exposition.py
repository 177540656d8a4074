"""A lean Prometheus text-format (0.0.4) writer for the exporter's own metric families.

prometheus_client's generate_latest re-validates every label name with regular expressions on every
sample (~5 µs a line); our names are constants, so this writer skips that and caches each label set's
text within a render. Its output is byte-identical to generate_latest for gauges, counters and
histograms (a test checks it), and `/metrics` serves it.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import Metric
from prometheus_client.utils import floatToGoString

_TYPES = {"gauge", "counter", "histogram"}


def _escape_value(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def render(metrics: Iterable[Metric]) -> bytes:
    lines: list[str] = []
    label_text: dict[tuple[tuple[str, str], ...], str] = {}
    for metric in metrics:
        if metric.type not in _TYPES:
            raise ValueError(f"exposition: unsupported metric type {metric.type!r} of {metric.name}")
        name = metric.name + "_total" if metric.type == "counter" else metric.name
        doc = metric.documentation.replace("\\", r"\\").replace("\n", r"\n")
        lines.append(f"# HELP {name} {doc}\n# TYPE {name} {metric.type}\n")
        for sample in metric.samples:
            if sample.labels:
                key = tuple(sorted(sample.labels.items()))
                text = label_text.get(key)
                if text is None:
                    text = label_text[key] = "{" + ",".join(f'{k}="{_escape_value(v)}"' for k, v in key) + "}"
            else:
                text = ""
            lines.append(f"{sample.name}{text} {floatToGoString(sample.value)}\n")
    return "".join(lines).encode("utf-8")
