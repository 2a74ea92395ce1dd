"""Image filters: Fourier crop/pad, low-pass, masks, normalisation, noise PSD, whitening.

PSD convention: for a (H, W) image x, PSD(k) = E|DFT(x)(k)|² / (H·W), so white
noise of variance v has PSD ≡ v. Radial PSDs are functions of |k| in 1/Å,
given as a callable ``psd(freq_inv_A) -> tensor`` or a table
``(freq_inv_A (K,), psd (K,))`` (linear interpolation, constant beyond the ends).
"""

from __future__ import annotations

import math
from typing import Callable, Union

import torch

from cryoconf.errors import InputError
from cryoconf.imaging.grids import fourier_grid_inv_A

__all__ = [
    "crop_rfft", "fourier_crop", "fourier_pad", "lowpass", "circular_mask", "normalize_images",
    "radial_frequency_inv_A", "evaluate_psd", "estimate_noise_psd", "whiten",
]

PSD = Union[Callable[[torch.Tensor], torch.Tensor], tuple]


def _crop_axis(x: torch.Tensor, n: int, dim: int) -> torch.Tensor:
    big = x.shape[dim]
    if n % 2 == 0:
        pos = x.narrow(dim, 0, n // 2)
        neg = x.narrow(dim, big - n // 2, n // 2).clone()
        nyq = x.narrow(dim, n // 2, 1)  # +n/2 of the big grid folds onto −n/2 of the small one
        neg.narrow(dim, 0, 1).add_(nyq)
        return torch.cat([pos, neg], dim)
    h = (n - 1) // 2
    return torch.cat([x.narrow(dim, 0, h + 1), x.narrow(dim, big - h, h)], dim)


def _pad_axis(x: torch.Tensor, big: int, dim: int) -> torch.Tensor:
    n = x.shape[dim]
    shape = list(x.shape)
    shape[dim] = big
    out = x.new_zeros(shape)
    if n % 2 == 0:
        out.narrow(dim, 0, n // 2).copy_(x.narrow(dim, 0, n // 2))
        out.narrow(dim, big - n // 2 + 1, n // 2 - 1).copy_(x.narrow(dim, n // 2 + 1, n // 2 - 1))
        half = 0.5 * x.narrow(dim, n // 2, 1)  # split the Nyquist term between ±n/2
        out.narrow(dim, n // 2, 1).copy_(half)
        out.narrow(dim, big - n // 2, 1).copy_(half)
    else:
        h = (n - 1) // 2
        out.narrow(dim, 0, h + 1).copy_(x.narrow(dim, 0, h + 1))
        out.narrow(dim, big - h, h).copy_(x.narrow(dim, n - h, h))
    return out


def fourier_crop(images: torch.Tensor, new_box: int) -> torch.Tensor:
    """Downsample (…, box, box) → (…, new_box, new_box) by cropping the spectrum.

    The field of view apix·box stays fixed (new apix = apix·box/new_box); values
    keep their units (per Å²), so ``image.sum()·apix²`` is preserved.
    """
    box = images.shape[-1]
    if not 1 <= new_box <= box:
        raise InputError(f"fourier_crop: new_box ({new_box}) must be in [1, {box}]")
    if new_box == box:
        return images.clone()
    # real input: the half spectrum (6× faster than the full complex one at box 128)
    return torch.fft.irfft2(crop_rfft(torch.fft.rfft2(images), box, new_box), s=(new_box, new_box))


def crop_rfft(images_ft: torch.Tensor, box: int, new_box: int) -> torch.Tensor:
    """Half spectrum (…, box, box//2+1) of a real (box, box) image → that of its Fourier crop to new_box.

    ``irfft2(crop_rfft(rfft2(x), box, n), s=(n, n))`` is :func:`fourier_crop` (x, n), scale included, so
    other Fourier-space steps (a phase shift) can share the one transform.
    """
    if not 1 <= new_box <= box or images_ft.shape[-2:] != (box, box // 2 + 1):
        raise InputError(f"crop_rfft: a ({box}, {box // 2 + 1}) half spectrum cropped to 1 ≤ new_box ≤ {box}; "
                         f"got shape {tuple(images_ft.shape[-2:])} and new_box {new_box}")
    if new_box == box:
        return images_ft
    ft = _crop_axis(images_ft, new_box, -2)[..., : new_box // 2 + 1]
    if new_box % 2 == 0:
        # the small grid's Nyquist column is the sum of the big grid's ±new_box/2 columns; the
        # half spectrum holds only +new_box/2, and the −new_box/2 one is its Hermitian mirror,
        # which is what irfft2 sees when the column is doubled
        ft = torch.cat([ft[..., : new_box // 2], 2 * ft[..., new_box // 2:]], dim=-1)
    return ft * ((new_box * new_box) / (box * box))


def fourier_pad(images: torch.Tensor, new_box: int) -> torch.Tensor:
    """Upsample (…, box, box) → (…, new_box, new_box) by zero-padding the spectrum (band-limited interpolation)."""
    box = images.shape[-1]
    if new_box < box:
        raise InputError(f"fourier_pad: new_box ({new_box}) must be ≥ {box}")
    ft = torch.fft.fft2(images)
    ft = _pad_axis(_pad_axis(ft, new_box, -1), new_box, -2)
    return torch.fft.ifft2(ft).real * (new_box * new_box) / (box * box)


def radial_frequency_inv_A(box: int, apix_A: float, rfft: bool = True, dtype=torch.float32, device=None) -> torch.Tensor:
    """|k| (1/Å) on the (r)fft2 grid of a (box, box) image."""
    fx, fy = fourier_grid_inv_A(box, apix_A, rfft=rfft, dtype=dtype, device=device)
    return torch.sqrt(fx * fx + fy * fy)


def lowpass(images: torch.Tensor, apix_A: float, resolution_A: float, edge_width_inv_A: float | None = None) -> torch.Tensor:
    """Soft low-pass: pass |k| ≤ 1/resolution, cosine fall-off to 0 over ``edge_width_inv_A``.

    Default edge width: 2 Fourier pixels, 2/(box·apix).
    """
    box = images.shape[-1]
    if resolution_A <= 0:
        raise InputError(f"lowpass: resolution_A ({resolution_A}) must be > 0")
    width = 2.0 / (box * apix_A) if edge_width_inv_A is None else edge_width_inv_A
    s = radial_frequency_inv_A(box, apix_A, dtype=images.dtype, device=images.device)
    kc = 1.0 / resolution_A
    t = ((s - kc) / max(width, 1e-12)).clamp(0.0, 1.0)
    filt = 0.5 * (1.0 + torch.cos(math.pi * t))
    return torch.fft.irfft2(torch.fft.rfft2(images) * filt, s=images.shape[-2:])


def circular_mask(box: int, radius_px: float, soft_edge_px: float = 0.0, dtype=torch.float32, device=None) -> torch.Tensor:
    """(box, box) mask centred on pixel (box//2, box//2): 1 inside ``radius_px``.

    Hard (r ≤ radius) when ``soft_edge_px`` = 0, else a cosine fall-off from 1 at
    ``radius_px`` to 0 at ``radius_px + soft_edge_px``.
    """
    c = torch.arange(box, dtype=dtype, device=device) - box // 2
    r = torch.sqrt(c[:, None] ** 2 + c[None, :] ** 2)
    if soft_edge_px <= 0:
        return (r <= radius_px).to(dtype)
    t = ((r - radius_px) / soft_edge_px).clamp(0.0, 1.0)
    return 0.5 * (1.0 + torch.cos(math.pi * t))


def normalize_images(images: torch.Tensor, background_radius_px: float | None = None, eps: float = 1e-12) -> torch.Tensor:
    """Per-image zero mean, unit std; with ``background_radius_px`` the statistics come from pixels outside it."""
    if background_radius_px is None:
        mean = images.mean(dim=(-2, -1), keepdim=True)
        std = images.std(dim=(-2, -1), keepdim=True)
    else:
        bg = circular_mask(images.shape[-1], background_radius_px, dtype=images.dtype, device=images.device) == 0
        if not bool(bg.any()):
            raise InputError(f"normalize_images: no pixel lies outside radius {background_radius_px} px")
        vals = images[..., bg]
        mean = vals.mean(-1)[..., None, None]
        std = vals.std(-1)[..., None, None]
    return (images - mean) / std.clamp_min(eps)


def evaluate_psd(psd: PSD, freq_inv_A: torch.Tensor) -> torch.Tensor:
    """Evaluate a radial PSD (callable or (freq, value) table) at ``freq_inv_A``."""
    if callable(psd):
        return torch.as_tensor(psd(freq_inv_A), dtype=freq_inv_A.dtype, device=freq_inv_A.device)
    try:
        f, v = psd
    except (TypeError, ValueError):
        raise InputError("psd must be a callable or a (frequencies_inv_A, values) pair") from None
    f = torch.as_tensor(f, dtype=freq_inv_A.dtype, device=freq_inv_A.device)
    v = torch.as_tensor(v, dtype=freq_inv_A.dtype, device=freq_inv_A.device)
    if f.ndim != 1 or f.shape != v.shape or f.numel() < 1:
        raise InputError("psd table: frequencies and values must be 1D of equal length")
    x = freq_inv_A.clamp(f[0], f[-1])
    i = torch.searchsorted(f, x.contiguous()).clamp(1, max(1, f.numel() - 1))
    if f.numel() == 1:
        return v.expand_as(x).clone()
    f0, f1, v0, v1 = f[i - 1], f[i], v[i - 1], v[i]
    t = ((x - f0) / (f1 - f0).clamp_min(1e-30)).clamp(0, 1)
    return v0 + t * (v1 - v0)


def estimate_noise_psd(
    images: torch.Tensor, apix_A: float, mask_radius_px: float | None = None, per_image: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Radially averaged noise PSD from background pixels (outside ``mask_radius_px``, or all pixels).

    Returns ``(freq_inv_A (K,), psd)`` with K = box//2 + 1 shells of width
    1/(box·apix), psd (K,) averaged over images or (B, K) if ``per_image``. The
    background is mean-subtracted and the mask's energy Σm² normalises the power
    (exact for white noise; coloured noise is seen through the mask's transform).
    """
    box = images.shape[-1]
    x = images.reshape(-1, images.shape[-2], box)
    if mask_radius_px is None:
        w = torch.ones(box, box, dtype=x.dtype, device=x.device)
    else:
        w = 1.0 - circular_mask(box, mask_radius_px, dtype=x.dtype, device=x.device)
    mean = (x * w).sum((-2, -1), keepdim=True) / w.sum()
    power = torch.fft.fft2((x - mean) * w).abs() ** 2 / (w * w).sum()
    s = radial_frequency_inv_A(box, apix_A, rfft=False, dtype=x.dtype, device=x.device)
    shell = torch.round(s * box * apix_A).long()
    k = box // 2 + 1
    keep = shell < k
    idx = shell[keep]
    counts = torch.zeros(k, dtype=x.dtype, device=x.device).index_add_(0, idx, torch.ones_like(idx, dtype=x.dtype))
    sums = torch.zeros(x.shape[0], k, dtype=x.dtype, device=x.device).index_add_(1, idx, power[:, keep])
    psd = sums / counts.clamp_min(1)
    freqs = torch.arange(k, dtype=x.dtype, device=x.device) / (box * apix_A)
    return freqs, (psd if per_image else psd.mean(0))


def whiten(images: torch.Tensor, apix_A: float, psd: PSD, eps: float = 1e-12) -> torch.Tensor:
    """Divide the spectrum by √PSD(|k|): noise with that PSD becomes white with unit variance."""
    box = images.shape[-1]
    s = radial_frequency_inv_A(box, apix_A, dtype=images.dtype, device=images.device)
    p = evaluate_psd(psd, s).clamp_min(eps)
    return torch.fft.irfft2(torch.fft.rfft2(images) / torch.sqrt(p), s=images.shape[-2:])
