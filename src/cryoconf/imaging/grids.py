"""Real-space and Fourier-space sampling grids.

Image grid convention (DESIGN.md): arrays are ``[..., row=y, col=x]`` and pixel
``(i, j)`` sits at ``((j − N//2)·apix, (i − N//2)·apix)`` Å. Fourier grids are
in FFT order (unshifted) in 1/Å; ``rfft=True`` gives the half-plane layout of
``torch.fft.rfft2`` (last axis ``N//2 + 1``).
"""

from __future__ import annotations

import torch


def pixel_centres_A(
    box: int, apix_A: float, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> torch.Tensor:
    """1D pixel-centre coordinates (box,) in Å: ``(k − box//2)·apix_A``."""
    return (torch.arange(box, dtype=dtype, device=device) - box // 2) * apix_A


def fourier_grid_inv_A(
    box: int,
    apix_A: float,
    rfft: bool = True,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Spatial-frequency grids ``(freq_x, freq_y)`` in 1/Å, each (box, box//2+1) or (box, box).

    FFT (unshifted) order, matching ``torch.fft.rfft2``/``fft2`` of a (box, box) image.
    """
    fy = torch.fft.fftfreq(box, d=apix_A, dtype=dtype, device=device)
    fx = torch.fft.rfftfreq(box, d=apix_A, dtype=dtype, device=device) if rfft else fy
    freq_y, freq_x = torch.meshgrid(fy, fx, indexing="ij")
    return freq_x, freq_y
