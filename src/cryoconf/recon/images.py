"""What ``recon`` compares: the same soft low-pass and circular mask on data and prediction, and the losses.

:class:`ImageComparison` holds the filter and the mask for one (box, pixel size) and
gives per-image losses (B,):

- ``l2`` + ``closed_form``: the prediction p is fitted to the data y by the exact
  per-image least-squares scale a and offset b inside the (soft) mask w, and the loss
  is the weighted mean squared residual over the data's weighted variance, which
  equals 1 − ρ_w(p, y)² (weighted Pearson correlation): independent of the data's
  scale and offset.
- ``l2`` + ``learned``: one global scale s and offset o (Prins et al.'s learnable output
  normalisation, a 2-parameter affine map initialised by least squares on the first
  batch); the data are normalised by dataset statistics; loss = weighted mean of
  (y − s·p − o)².
- ``corr``: −ρ_w(p, y) (cryoSPHERE).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from cryoconf.imaging.filters import circular_mask, lowpass, radial_frequency_inv_A

__all__ = ["ImageComparison", "weighted_stats"]


def weighted_stats(x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted mean and variance (B,) of images (B, D, D) under weights w (D, D)."""
    sw = w.sum()
    mean = (x * w).sum((-2, -1)) / sw
    var = ((x - mean[:, None, None]).square() * w).sum((-2, -1)) / sw
    return mean, var


class ImageComparison(nn.Module):
    """Filter, mask and loss for images of ``box`` px at ``apix_A`` Å/px."""

    def __init__(self, box: int, apix_A: float, *, lowpass_A: float | None, mask_radius_px: float,
                 mask_soft_edge_px: float = 3.0, loss: str = "l2", scale: str = "closed_form") -> None:
        super().__init__()
        self.box, self.apix_A, self.lowpass_A = int(box), float(apix_A), lowpass_A
        self.loss_kind, self.scale_kind = loss, scale
        self.register_buffer("mask", circular_mask(box, mask_radius_px, mask_soft_edge_px))
        self.log_scale = nn.Parameter(torch.zeros(()))
        self.offset = nn.Parameter(torch.zeros(()))
        self.register_buffer("data_mean", torch.zeros(()))
        self.register_buffer("data_std", torch.ones(()))
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))
        if not (loss == "l2" and scale == "learned"):
            self.log_scale.requires_grad_(False)
            self.offset.requires_grad_(False)

    def filter(self, images: torch.Tensor) -> torch.Tensor:
        """The soft low-pass (identity when ``lowpass_A`` is None)."""
        if self.lowpass_A is None:
            return images
        return lowpass(images, self.apix_A, self.lowpass_A)

    def encoder_input(self, filtered: torch.Tensor) -> torch.Tensor:
        """Masked, per-image normalised (weighted zero mean, unit variance) filtered data."""
        mean, var = weighted_stats(filtered, self.mask)
        return (filtered - mean[:, None, None]) / var.clamp_min(1e-20).sqrt()[:, None, None] * self.mask

    def effective_pixels(self) -> float:
        """Independent measurements per image: Fourier pixels passed by the filter × mask area fraction."""
        if self.lowpass_A is None:
            passed = self.box * self.box
        else:
            s = radial_frequency_inv_A(self.box, self.apix_A, rfft=False)
            passed = int((s <= 1.0 / self.lowpass_A).sum())
        return max(1.0, passed * float(self.mask.mean()))

    @torch.no_grad()
    def initialise_learned(self, prediction: torch.Tensor, data: torch.Tensor) -> None:
        """Dataset statistics and the least-squares global scale/offset (filtered images; once)."""
        m = self.mask
        dm, dv = weighted_stats(data, m)
        self.data_mean.fill_(float(dm.mean()))
        self.data_std.fill_(float((dv.mean() + dm.var(unbiased=False)).clamp_min(1e-20).sqrt()))
        y = (data - self.data_mean) / self.data_std
        pm, pv = weighted_stats(prediction, m)
        ym, _ = weighted_stats(y, m)
        cov = (((prediction - pm[:, None, None]) * (y - ym[:, None, None]) * m).sum((-2, -1)) / m.sum()).mean()
        s = float(cov / pv.mean().clamp_min(1e-20))
        s = s if s > 0 else float((_weighted_std(y, m) / pv.mean().clamp_min(1e-20).sqrt()))
        self.log_scale.fill_(math.log(s))
        self.offset.fill_(float(ym.mean() - s * pm.mean()))
        self.initialised.fill_(True)

    def forward(self, prediction: torch.Tensor, data: torch.Tensor) -> torch.Tensor:
        """Per-image loss (B,) between filtered ``prediction`` and filtered ``data`` (B, D, D)."""
        w = self.mask
        if self.loss_kind == "l2" and self.scale_kind == "learned":
            y = (data - self.data_mean) / self.data_std
            r = y - (self.log_scale.exp() * prediction + self.offset)
            return (r.square() * w).sum((-2, -1)) / w.sum()
        pm, pv = weighted_stats(prediction, w)
        ym, yv = weighted_stats(data, w)
        cov = ((prediction - pm[:, None, None]) * (data - ym[:, None, None]) * w).sum((-2, -1)) / w.sum()
        rho = cov / (pv * yv).clamp_min(1e-30).sqrt()
        if self.loss_kind == "corr":
            return -rho
        return 1.0 - rho.square()


def _weighted_std(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return weighted_stats(x, w)[1].mean().sqrt()
