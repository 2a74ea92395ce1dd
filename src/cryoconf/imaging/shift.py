"""Sub-pixel image shifts as Fourier phase ramps.

Shifting an image's content by t = (t_x, t_y) Å (content at p moves to p + t)
multiplies its Fourier transform by exp(−2πi(k_x·t_x + k_y·t_y)). An
integer-pixel shift equals ``torch.roll`` (periodic), a sub-pixel one is the
band-limited (periodic sinc) interpolation.
"""

from __future__ import annotations

import torch

from cryoconf.imaging.grids import fourier_grid_inv_A

__all__ = ["phase_ramp", "shift_images_ft", "shift_images"]


def phase_ramp(shifts_A: torch.Tensor, box: int, apix_A: float, rfft: bool = True) -> torch.Tensor:
    """Complex phase factors (B, box, box//2+1) (or (B, box, box)) for shifts (B,2) (x, y) in Å."""
    fx, fy = fourier_grid_inv_A(box, apix_A, rfft=rfft, dtype=shifts_A.dtype, device=shifts_A.device)
    phase = -2.0 * torch.pi * (fx[None] * shifts_A[:, 0, None, None] + fy[None] * shifts_A[:, 1, None, None])
    return torch.polar(torch.ones_like(phase), phase)


def shift_images_ft(images_ft: torch.Tensor, shifts_A: torch.Tensor, apix_A: float, box: int | None = None) -> torch.Tensor:
    """Shift Fourier-space images (B, box, box//2+1) (rfft2 layout; full layout when square) by (B,2) Å."""
    h, w = images_ft.shape[-2:]
    rfft = w != h
    if box is None:
        box = h
    return images_ft * phase_ramp(shifts_A.to(images_ft.real.dtype), box, apix_A, rfft=rfft)


def shift_images(images: torch.Tensor, shifts_A: torch.Tensor, apix_A: float) -> torch.Tensor:
    """Shift real images (B, box, box) by (B,2) Å (x, y) with a Fourier phase ramp (periodic)."""
    box = images.shape[-1]
    ft = torch.fft.rfft2(images)
    return torch.fft.irfft2(shift_images_ft(ft, shifts_A, apix_A, box), s=(box, box))
