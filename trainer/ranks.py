"""The reference job as one rank of many: under `torchrun` (WORLD_SIZE > 1) it joins the process group (gloo
on CPU, NCCL on CUDA), trains a DDP-wrapped model on its own share of the data, and agrees with the other
ranks, once per step, on two things that must happen to all of them at the same step boundary or to none:
stopping (a signal that reached some ranks first) and a pause burst (each rank's clock says "due" a few
milliseconds apart). One tiny all-reduce of two integers carries both."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Ranks:
    rank: int
    world_size: int
    local_rank: int
    device: str  # where the agreement's tensor lives: "cpu" for gloo, "cuda:N" for NCCL

    def agree(self, stop: bool, pause: bool) -> tuple[bool, bool]:
        """(any rank stops, any rank's pause is due): the same answer on every rank."""
        import torch
        import torch.distributed as dist

        flags = torch.tensor([int(stop), int(pause)], device=self.device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        stop_all, pause_all = flags.tolist()
        return bool(stop_all), bool(pause_all)

    def wrap(self, model: Any) -> Any:
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[self.local_rank] if self.device != "cpu" else None)

    def leave(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def join(device: str) -> Ranks | None:
    """Join the job's process group when started as one of several ranks (torchrun's WORLD_SIZE > 1); None for a
    job of one process. `device` is the job's ("cpu" or "cuda"): NCCL and this rank's GPU on CUDA, else gloo."""
    world_size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world_size <= 1:
        return None
    import torch
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return Ranks(dist.get_rank(), dist.get_world_size(), local_rank, f"cuda:{local_rank}" if cuda else "cpu")
