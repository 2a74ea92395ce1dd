"""The torch device a ``--device`` option names, checked once at the command line's edge; and
waiting for a device's queued work (for timings)."""

from __future__ import annotations

import torch

from cryoconf.errors import InputError

__all__ = ["parse_device", "synchronize"]


def parse_device(name) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N`` as a :class:`torch.device`; an :class:`InputError` that says
    what to do when the name is not a device, CUDA is absent or the GPU index does not exist
    (instead of torch's errors from deep inside checkpoint loading or rendering)."""
    label = "cpu" if name is None else str(name)
    try:
        dev = torch.device(label)
    except (RuntimeError, ValueError):
        raise InputError(f"--device {label!r} is not a torch device; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"--device {label}: CUDA is not available on this machine; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"--device {label}: this machine has {torch.cuda.device_count()} GPU(s), "
                             f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    elif dev.type != "cpu":
        raise InputError(f"--device {label}: cryoconf runs on cpu or cuda")
    return dev


def synchronize(device) -> None:
    """Wait until the work queued on ``device`` is done (a GPU runs kernels asynchronously, so a
    timing must wait for them: the time is then the work's, not its launch's); nothing on a CPU."""
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
