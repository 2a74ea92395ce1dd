"""Gaussian noise: white at a given SNR, or coloured from a radial PSD.

SNR definitions (``definition``):
- ``"box"``: variance of the noise-free image over the whole box ÷ noise variance;
- ``"mask"``: variance of the noise-free image inside a circle of radius
  ``mask_radius_px`` (centred on pixel (box//2, box//2)) ÷ noise variance.
SNR = inf adds no noise. PSD convention as in :mod:`cryoconf.imaging.filters`.
"""

from __future__ import annotations

import torch

from cryoconf.errors import InputError
from cryoconf.imaging.filters import PSD, circular_mask, evaluate_psd, radial_frequency_inv_A

__all__ = ["signal_variance", "noise_std_for_snr", "add_white_noise", "coloured_noise", "add_coloured_noise"]


def signal_variance(images: torch.Tensor, definition: str = "box", mask_radius_px: float | None = None) -> torch.Tensor:
    """Per-image signal variance (B,) under the SNR ``definition``."""
    if definition == "box":
        return images.var(dim=(-2, -1), unbiased=False)
    if definition == "mask":
        if mask_radius_px is None:
            raise InputError("SNR definition 'mask' needs mask_radius_px")
        m = circular_mask(images.shape[-1], mask_radius_px, dtype=images.dtype, device=images.device) > 0
        return images[..., m].var(dim=-1, unbiased=False)
    raise InputError(f"SNR definition {definition!r} is unknown; use 'box' or 'mask'")


def noise_std_for_snr(images, snr, definition: str = "box", mask_radius_px: float | None = None) -> torch.Tensor:
    """Noise standard deviation (B,) that gives ``snr`` (scalar or (B,)); 0 where snr is inf."""
    snr = torch.as_tensor(snr, dtype=images.dtype, device=images.device)
    if bool((snr <= 0).any()) or bool(torch.isnan(snr).any()):
        raise InputError("snr must be > 0 (use inf for no noise)")
    var = signal_variance(images, definition, mask_radius_px)
    return torch.sqrt(var / snr)  # snr = inf → 0


def add_white_noise(
    images: torch.Tensor,
    snr,
    definition: str = "box",
    mask_radius_px: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Add white Gaussian noise at ``snr`` (scalar or (B,)) under ``definition``."""
    std = noise_std_for_snr(images, snr, definition, mask_radius_px)
    noise = torch.randn(images.shape, generator=generator, dtype=images.dtype, device=images.device)
    return noise.mul_(std.reshape(*std.shape, *([1] * (images.ndim - std.ndim)))).add_(images)


def coloured_noise(
    shape, apix_A: float, psd: PSD, generator: torch.Generator | None = None, dtype=torch.float32, device=None
) -> torch.Tensor:
    """Gaussian noise (…, box, box) with radial PSD ``psd`` (callable or (freq_inv_A, values) table)."""
    shape = tuple(shape)
    if len(shape) < 2 or shape[-1] != shape[-2]:
        raise InputError(f"coloured_noise: shape {shape} must end in (box, box)")
    box = shape[-1]
    white = torch.randn(shape, generator=generator, dtype=dtype, device=device)
    amp = torch.sqrt(evaluate_psd(psd, radial_frequency_inv_A(box, apix_A, dtype=dtype, device=device)).clamp_min(0))
    return torch.fft.irfft2(torch.fft.rfft2(white) * amp, s=(box, box))


def add_coloured_noise(images: torch.Tensor, apix_A: float, psd: PSD, generator: torch.Generator | None = None) -> torch.Tensor:
    """``images`` plus coloured Gaussian noise with radial PSD ``psd``."""
    return images + coloured_noise(images.shape, apix_A, psd, generator, images.dtype, images.device)
