"""torchrun / DDP support: one process per device (or per CPU process with gloo).

``torchrun --nproc_per_node N -m distill train-student ...`` sets RANK, WORLD_SIZE and
LOCAL_RANK; without them training runs in a single process. Only rank 0 writes checkpoints,
logs and the final student; every rank samples its own patches (seeded by rank).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """DDP wrapper when several processes train together, else the model itself."""
        if self.world_size == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)


def init_distributed(device: str) -> DistInfo:
    """Join the process group torchrun describes (gloo on CPU, nccl on CUDA), or run alone."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return DistInfo(0, 1, torch.device(device))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    on_cuda = device.startswith("cuda")
    if not torch_dist.is_initialized():
        torch_dist.init_process_group(backend="nccl" if on_cuda else "gloo")
    target = torch.device("cuda", local_rank) if on_cuda else torch.device("cpu")
    if on_cuda:
        torch.cuda.set_device(target)
    return DistInfo(torch_dist.get_rank(), torch_dist.get_world_size(), target)


def barrier(dist: DistInfo) -> None:
    if dist.world_size > 1:
        torch_dist.barrier()


def all_reduce_grads(parameters, dist: DistInfo) -> None:
    """Average gradients of parameters DDP does not own (e.g. graph-flow translators in the loss)."""
    if dist.world_size == 1:
        return
    for p in parameters:
        if p.grad is not None:
            torch_dist.all_reduce(p.grad)
            p.grad /= dist.world_size


def shutdown(dist: DistInfo) -> None:
    if dist.world_size > 1 and torch_dist.is_initialized():
        torch_dist.destroy_process_group()
