"""Fourier cropping of images and the frequency-marching schedule of SVI training.

Fourier cropping to K of N frequencies keeps the K×K lowest frequencies of an N×N
image (rows 0…K/2−1 and N−K/2…N−1 of the ``rfft2`` half-plane, columns 0…K/2) and
transforms them back to a K×K image, multiplied by (K/N)² so that pixel values keep
their amplitude (a K×K image of pixel size apix·N/K whose values are local means).

Noise: white noise of standard deviation σ per N-grid pixel has variance N²σ² per
unnormalised Fourier coefficient; the K-point inverse transform (1/K² per coefficient)
gives (N/K)²σ² per K-grid pixel, and the (K/N)² amplitude factor scales its standard
deviation to σ·(N/K)·(K/N)² = σ·K/N. The likelihood on cropped images therefore uses
σ_K = σ·K/N: the signal is unchanged while the noise falls, as if neighbouring pixels were
summed (Woollard et al., App. A.3.2). One detail makes this exact: the K-grid Nyquist bins
(column K/2 of the half-plane, and row K/2 of column 0) reach a real K×K image only through
their real part (a Hermitian average), which halves their noise power; they are multiplied
by √2 (in model and data alike, an invertible reweighting), so that the cropped noise is
exactly white with standard deviation σ·K/N (tested).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from cryoconf.errors import InputError
from cryoconf.imaging.grids import fourier_grid_inv_A

__all__ = ["crop_spectrum", "fourier_crop", "cropped_noise_sigma", "cropped_frequency_grid", "Stage",
           "parse_stages", "LATENT_GROUPS"]

#: Encoder groups that a stage can train: pose, anm (amplitudes α), defocus.
LATENT_GROUPS = ("pose", "anm", "defocus")


_SQRT2 = 2.0 ** 0.5


def _check_crop(n: int, k: int) -> None:
    if not (isinstance(k, int) and 2 <= k <= n and k % 2 == 0):
        raise InputError(f"Fourier crop K={k!r} must be an even integer in 2…{n} (the box)")


def crop_spectrum(spectrum: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """The K×K low-frequency part (…, K, K//2+1) of an ``rfft2`` spectrum (…, N, N//2+1) of N×N images."""
    _check_crop(n, k)
    if k == n:
        return spectrum
    h = k // 2
    out = torch.cat([spectrum[..., :h, : h + 1], spectrum[..., n - h:, : h + 1]], dim=-2)
    # the K-grid Nyquist bins (column K/2, and row K/2 of column 0) enter a real K×K image only through
    # their real part / Hermitian average, which would halve their noise power: × √2 keeps the noise white
    weight = out.new_ones(k, h + 1, dtype=out.real.dtype)
    weight[:, h] = _SQRT2
    weight[h, 0] = _SQRT2
    return out * weight


def fourier_crop(images: torch.Tensor, k: int) -> torch.Tensor:
    """Fourier-crop real images (…, N, N) to (…, K, K), amplitudes kept (× (K/N)²); K = N returns the input.

    Not :func:`cryoconf.imaging.filters.fourier_crop` (the general resampler, which folds the
    N-grid Nyquist bin onto the K-grid one): this one weights the K-grid Nyquist bins by √2, as
    :func:`crop_spectrum` does for the model's projections, so that cropped noise stays exactly
    white with σ·K/N, which the SVI likelihood assumes.
    """
    n = images.shape[-1]
    _check_crop(n, k)
    if k == n:
        return images
    spec = crop_spectrum(torch.fft.rfft2(images), n, k)
    return torch.fft.irfft2(spec, s=(k, k)) * (k / n) ** 2


def cropped_noise_sigma(sigma, n: int, k: int):
    """Noise standard deviation σ·K/N of white noise σ after :func:`fourier_crop` from N to K."""
    return sigma * (k / n)


def cropped_frequency_grid(n: int, k: int, apix_A: float, dtype=torch.float32, device=None):
    """(fx, fy) (K, K//2+1) in 1/Å of the cropped spectrum: the K-grid at pixel size apix·N/K."""
    return fourier_grid_inv_A(k, apix_A * n / k, rfft=True, dtype=dtype, device=device)


@dataclass(frozen=True)
class Stage:
    """One stage of training: Fourier crop ``crop`` (px), ``steps`` optimiser steps, encoders ``train``."""

    crop: int
    steps: int
    train: tuple[str, ...] = field(default=LATENT_GROUPS)

    def to_text(self) -> str:
        what = "all" if set(self.train) == set(LATENT_GROUPS) else "+".join(self.train)
        return f"{self.crop}:{self.steps}:{what}"


_STAGE_RE = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*(?::\s*([a-z+]+)\s*)?$")


def parse_stages(text: str, box: int) -> list[Stage]:
    """Parse ``K:STEPS[:WHAT],…`` (WHAT = all, or a ``+``-joined subset of pose, anm, defocus).

    Example (frequency marching, pose first, then ANM): ``16:2000:pose+defocus,32:2000:pose+defocus,32:2000:anm``.
    """
    stages = []
    for i, part in enumerate(str(text).split(",")):
        m = _STAGE_RE.match(part)
        if not m:
            raise InputError(f"--stages item {i + 1} {part.strip()!r}: write K:STEPS or K:STEPS:WHAT, e.g. 16:1000:pose+defocus")
        crop, steps, what = int(m.group(1)), int(m.group(2)), m.group(3) or "all"
        if crop > box or crop < 2 or crop % 2:
            raise InputError(f"--stages item {i + 1}: crop K={crop} must be an even number of pixels in 2…{box} (the box)")
        if what == "all":
            train = LATENT_GROUPS
        else:
            train = tuple(what.split("+"))
            bad = [t for t in train if t not in LATENT_GROUPS]
            if bad or not train:
                raise InputError(f"--stages item {i + 1}: unknown encoder(s) {bad}; use all or a +-joined subset of "
                                 f"{', '.join(LATENT_GROUPS)}")
        stages.append(Stage(crop, steps, train))
    if not stages:
        raise InputError("--stages is empty; give at least one K:STEPS")
    return stages
