"""The homogeneous RBF model of ``cryoconf fit``: one structure's RBFs rendered into every particle.

Objective per batch (Zhong et al. eq. 3): the mean image loss over the batch × ``image_weight``
+ ``restraint_weight`` × (bond + side-chain restraint energies). The image loss is the
``recon`` comparison (same low-pass and mask on data and prediction); with ``scale:
learned`` its global scale is the paper's a0 (the rendering is linear in the amplitudes).
"""

from __future__ import annotations

import torch
from torch import nn

from cryoconf.fit.config import FitConfig
from cryoconf.imaging.forward import render_images
from cryoconf.recon.images import ImageComparison
from cryoconf.recon.rbf import RBFDensity
from cryoconf.structure.model import Structure

__all__ = ["HomogeneousRBF", "FIT_TERMS"]

FIT_TERMS = ("image", "rbf_bonds", "rbf_sidechains")


class HomogeneousRBF(nn.Module):
    """RBF centres, σ and the image comparison for particles of ``box`` px at ``apix_A`` Å/px."""

    def __init__(self, config: FitConfig, start: Structure, box: int, apix_A: float) -> None:
        super().__init__()
        config.validate()
        self.config, self.box, self.apix_A = config, int(box), float(apix_A)
        self.rbf = RBFDensity(start, sigma=config.sigma, sigma_init_A=config.sigma_init_A, bond_k=config.bond_k,
                              sidechain_k=config.sidechain_k)
        self.comparison = ImageComparison(box, apix_A, lowpass_A=config.lowpass_A,
                                          mask_radius_px=config.mask_radius_frac * box / 2,
                                          mask_soft_edge_px=config.mask_soft_edge_px, loss="l2", scale=config.scale)
        rw = config.restraint_weight
        self.restraint_weight = 2.0 / self.comparison.effective_pixels() if rw == "auto" else float(rw)

    def render(self, batch: dict) -> torch.Tensor:
        """Filtered images (B, box, box) of the current centres in the batch's poses, shifts and CTF."""
        b = batch["rotations"].shape[0]
        images = render_images(self.rbf.centres_A.expand(b, -1, -1), self.rbf.electrons, self.rbf.sigmas_A(),
                               batch["rotations"], batch["shifts_A"], batch["ctf"], self.box, self.apix_A,
                               projector=self.config.projector)
        return self.comparison.filter(images)

    @torch.no_grad()
    def initialise_scale(self, batch: dict) -> None:
        """The global scale (a0) and offset by least squares on one batch (``scale: learned``)."""
        if self.config.scale == "learned":
            self.comparison.initialise_learned(self.render(batch), self.comparison.filter(batch["images"]))

    def a0(self) -> float:
        """The learned global amplitude (image units per rendered unit); NaN with per-image scales."""
        return float(self.comparison.log_scale.detach().exp()) if self.config.scale == "learned" else float("nan")

    def forward(self, batch: dict) -> dict:
        """Loss terms (scalars) and ``total`` for one batch."""
        data = self.comparison.filter(batch["images"])
        zero = data.new_zeros(())
        image = self.comparison(self.render(batch), data).mean() if self.config.image_weight > 0 else zero
        terms = {"image": image, **self.rbf.restraint_energy(self.rbf.centres_A[None])}
        terms["total"] = (self.config.image_weight * image
                          + self.restraint_weight * (terms["rbf_bonds"] + terms["rbf_sidechains"]))
        return terms
