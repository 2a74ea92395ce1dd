"""``torch.distributed`` plumbing shared by the training commands (launched by ``torchrun``).

:func:`dist_info` reads WORLD_SIZE/RANK/LOCAL_RANK (1, 0, 0 without torchrun);
:func:`resolve_device` maps ``--device`` to this rank's device; :func:`init_distributed`
starts the process group (NCCL on CUDA, gloo on the CPU) when there is more than one process.
"""

from __future__ import annotations

import os

import torch

from cryoconf.errors import InputError

__all__ = ["dist_info", "resolve_device", "init_distributed"]


def dist_info() -> tuple[int, int, int]:
    """(world size, rank, local rank) of this process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 1, 0, 0
    return world, int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))


def resolve_device(device, local_rank: int = 0) -> torch.device:
    """``cpu`` (default) or ``cuda`` (this rank's GPU); a clear error when CUDA is absent."""
    name = device or "cpu"
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError("--device cuda: no CUDA device is available; use --device cpu")
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    elif dev.type != "cpu":
        raise InputError(f"--device {name}: use cpu or cuda")
    return dev


def init_distributed(world: int, device: torch.device) -> None:
    """Start the default process group when ``world`` > 1 (idempotent)."""
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
