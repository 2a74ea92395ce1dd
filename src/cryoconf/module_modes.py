"""Temporary mode switches of a ``torch.nn.Module``, the previous mode restored afterwards."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def evaluating(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Eval mode for the block: batch-norm layers use their running statistics (an embedding,
    posterior or latent must not depend on which particles share its batch, nor update those
    statistics) and dropout is off; the module's previous train/eval mode is restored
    afterwards, also on an error."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)
