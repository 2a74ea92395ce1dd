"""Sub-pixel image shifts as Fourier phase ramps.

Shifting an image's content by t = (t_x, t_y) Å (content at p moves to p + t)
multiplies its Fourier transform by exp(−2πi(k_x·t_x + k_y·t_y)). An
integer-pixel shift equals ``torch.roll`` (periodic), a sub-pixel one is the
band-limited (periodic sinc) interpolation.
"""

from __future__ import annotations

import torch

__all__ = ["phase_ramp", "shift_images_ft", "shift_images"]


def _axis_ramps(shifts_A: torch.Tensor, box: int, apix_A: float, rfft: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The phase factors along y (B, box, 1) and x (B, 1, W): the ramp is their product (it separates)."""
    fy = torch.fft.fftfreq(box, d=apix_A, dtype=shifts_A.dtype, device=shifts_A.device)
    fx = torch.fft.rfftfreq(box, d=apix_A, dtype=shifts_A.dtype, device=shifts_A.device) if rfft else fy
    phase_y = -2.0 * torch.pi * fy[None] * shifts_A[:, 1, None]
    phase_x = -2.0 * torch.pi * fx[None] * shifts_A[:, 0, None]
    ramp_y = torch.polar(torch.ones_like(phase_y), phase_y)
    ramp_x = torch.polar(torch.ones_like(phase_x), phase_x)
    return ramp_y[:, :, None], ramp_x[:, None, :]


def phase_ramp(shifts_A: torch.Tensor, box: int, apix_A: float, rfft: bool = True) -> torch.Tensor:
    """Complex phase factors (B, box, box//2+1) (or (B, box, box)) for shifts (B,2) (x, y) in Å."""
    ramp_y, ramp_x = _axis_ramps(shifts_A, box, apix_A, rfft)
    return ramp_y * ramp_x


def shift_images_ft(images_ft: torch.Tensor, shifts_A: torch.Tensor, apix_A: float, box: int | None = None) -> torch.Tensor:
    """Shift Fourier-space images (B, box, box//2+1) (rfft2 layout; full layout when square) by (B,2) Å."""
    h, w = images_ft.shape[-2:]
    rfft = w != h
    if box is None:
        box = h
    ramp_y, ramp_x = _axis_ramps(shifts_A.to(images_ft.real.dtype), box, apix_A, rfft)
    return images_ft * ramp_y * ramp_x


def shift_images(images: torch.Tensor, shifts_A: torch.Tensor, apix_A: float) -> torch.Tensor:
    """Shift real images (B, box, box) by (B,2) Å (x, y) with a Fourier phase ramp (periodic)."""
    box = images.shape[-1]
    ft = torch.fft.rfft2(images)
    return torch.fft.irfft2(shift_images_ft(ft, shifts_A, apix_A, box), s=(box, box))
