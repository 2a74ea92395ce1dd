"""``torch.distributed`` plumbing shared by the training commands (launched by ``torchrun``).

:func:`dist_info` reads WORLD_SIZE/RANK/LOCAL_RANK (1, 0, 0 without torchrun);
:func:`resolve_device` maps ``--device`` to this rank's device; :func:`init_distributed`
starts the process group (NCCL on CUDA, gloo on the CPU) when there is more than one process.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from cryoconf.devices import parse_device
from cryoconf.rundir import prepare_run_dir, resolve_checkpoint

__all__ = ["dist_info", "resolve_device", "init_distributed", "start_run"]


def dist_info() -> tuple[int, int, int]:
    """(world size, rank, local rank) of this process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 1, 0, 0
    return world, int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))


def resolve_device(device, local_rank: int = 0) -> torch.device:
    """``cpu`` (default) or ``cuda`` (this rank's GPU); a clear error when CUDA is absent."""
    dev = parse_device(device)
    if dev.type == "cuda":
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    return dev


def init_distributed(world: int, device: torch.device) -> None:
    """Start the default process group when ``world`` > 1 (idempotent)."""
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def start_run(run_dir, load, device) -> tuple[int, int, torch.device, Path, Path | None]:
    """What every training command does first: this process's (world, rank, device), the
    process group, the run directory (rank 0 creates it; refused if it holds checkpoints
    and ``load`` is None) and the checkpoint ``load`` names (None for a fresh run)."""
    world, rank, local_rank = dist_info()
    dev = resolve_device(device, local_rank)
    init_distributed(world, dev)
    run_dir = Path(run_dir)
    ckpt_path = resolve_checkpoint(load, run_dir)
    if rank == 0:
        prepare_run_dir(run_dir, resume=ckpt_path is not None)
    if world > 1:
        torch.distributed.barrier()
    return world, rank, dev, run_dir, ckpt_path
