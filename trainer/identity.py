"""Who is training where: run id, rank, world size and the NVML UUID of the rank's GPU.

The GPU UUID is what lets PromQL join a trainer rank to its GPU's `rle_*` series (the exporter labels
devices with the same NVML UUID). Everything here degrades to "" / defaults rather than failing: a
missing label must never stop training.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
import time


def new_run_id() -> str:
    """Sortable and unique enough for one team: UTC start time plus 24 random bits."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    try:
        return int(raw) if raw else default
    except ValueError:
        return default


def default_rank() -> int:
    """The torchrun / Slurm-style RANK environment variable, or 0 for a single process."""
    return _int_env("RANK", 0)


def default_local_rank() -> int:
    """The process's rank on its host (torchrun's and accelerate's LOCAL_RANK), or 0 for a single process."""
    return max(0, _int_env("LOCAL_RANK", 0))


def default_world_size() -> int:
    return max(1, _int_env("WORLD_SIZE", 1))


def _cuda_index(device: str) -> int:
    """'cuda:3' → 3; bare 'cuda' → torch's current device if torch is loaded, else LOCAL_RANK."""
    _, _, index = device.partition(":")
    if index.isdigit():
        return int(index)
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        return int(torch.cuda.current_device())
    return _int_env("LOCAL_RANK", 0)


def _uuid_from_torch(index: int) -> str:
    """torch knows the exact device behind a CUDA index (CUDA's ordering may differ from NVML's)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return ""
    try:
        uuid = str(torch.cuda.get_device_properties(index).uuid)
    except (AttributeError, RuntimeError, AssertionError):
        return ""
    if not uuid:
        return ""
    return uuid if uuid.startswith(("GPU-", "MIG-")) else "GPU-" + uuid


def _uuid_from_nvml(index: int) -> str:
    """Map the CUDA index through CUDA_VISIBLE_DEVICES to an NVML index (assumes PCI bus order)."""
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    nvml_index = index
    if visible and index < len(visible):
        entry = visible[index]
        if entry.startswith(("GPU-", "MIG-")):
            return entry
        if not entry.isdigit():
            return ""
        nvml_index = int(entry)
    try:
        import pynvml
    except ImportError:
        return ""
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return ""
    try:
        uuid = pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(nvml_index))
        return uuid.decode() if isinstance(uuid, bytes) else str(uuid)
    except pynvml.NVMLError:
        return ""
    finally:
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()


def detect_gpu_uuid(device: str) -> str:
    """NVML UUID ('GPU-…') of the CUDA device a rank trains on; '' on CPU or when unknown."""
    if not device.startswith("cuda"):
        return ""
    index = _cuda_index(device)
    return _uuid_from_torch(index) or _uuid_from_nvml(index)
