"""The homogeneous RBF model of ``cryoconf fit``: one structure's RBFs rendered into every particle.

Objective per batch (Zhong et al. eq. 3): the mean image loss over the batch × ``image_weight``
+ ``restraint_weight`` × (bond + side-chain restraint energies). The image loss is the
``recon`` comparison (same low-pass and mask on data and prediction); with ``scale:
learned`` its global scale is the paper's a0 (the rendering is linear in the amplitudes).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from cryoconf.dynamics.anm import compute_anm_modes
from cryoconf.errors import InputError
from cryoconf.fit.config import FitConfig
from cryoconf.imaging.forward import render_images
from cryoconf.recon.geometry import backbone_atoms
from cryoconf.recon.images import ImageComparison
from cryoconf.recon.rbf import RBFDensity
from cryoconf.structure.model import Structure

__all__ = ["HomogeneousRBF", "FIT_TERMS", "collective_basis"]

FIT_TERMS = ("image", "rbf_bonds", "rbf_sidechains")


def collective_basis(sites: Structure, n_modes: int) -> np.ndarray:
    """The ``n_modes`` lowest ANM modes of the backbone sites of ``sites`` as displacements (K, N, 3) of every
    RBF (side-chain RBFs move with their residue's backbone site), scaled so amplitude 1 = 1 Å RMS over the
    backbone sites."""
    bb = backbone_atoms(sites)
    if bb.size < 3:
        raise InputError(f"--modes needs at least 3 residues for normal modes, the start has {bb.size}")
    k = min(int(n_modes), 3 * bb.size - 6)
    modes = compute_anm_modes(sites.coords_A[bb].astype(np.float64), n_modes=k).modes  # (K, R, 3), unit 3R norm
    site_of_residue = np.full(sites.n_residues, -1, dtype=np.int64)
    site_of_residue[sites.residue_index[bb]] = np.arange(bb.size)
    return modes[:, site_of_residue[sites.residue_index]] * np.sqrt(bb.size)


class HomogeneousRBF(nn.Module):
    """RBF centres, σ and the image comparison for particles of ``box`` px at ``apix_A`` Å/px.

    ``start``: the RBF sites (``ca+sc`` or ``ca`` layout); ``bond_lengths``: ``ideal`` (3.8 Å,
    sites at the Cα) or ``base`` (the start's spacing, backbone sites at the centroid);
    ``mode_basis``: :func:`collective_basis` of ``start`` when already computed.
    """

    def __init__(self, config: FitConfig, start: Structure, box: int, apix_A: float, *,
                 bond_lengths: str = "ideal", mode_basis: np.ndarray | None = None) -> None:
        super().__init__()
        config.validate()
        self.config, self.box, self.apix_A = config, int(box), float(apix_A)
        self.rbf = RBFDensity(start, sigma=config.sigma, sigma_init_A=config.sigma_init_A, bond_k=config.bond_k,
                              sidechain_k=config.sidechain_k, bond_lengths=bond_lengths)
        self.comparison = ImageComparison(box, apix_A, lowpass_A=config.lowpass_A,
                                          mask_radius_px=config.mask_radius_frac * box / 2,
                                          mask_soft_edge_px=config.mask_soft_edge_px, loss="l2", scale=config.scale)
        rw = config.restraint_weight
        self.restraint_weight = 2.0 / self.comparison.effective_pixels() if rw == "auto" else float(rw)
        self.has_modes = config.modes > 0
        if self.has_modes:
            basis = collective_basis(start, config.modes) if mode_basis is None else mode_basis
            self.register_buffer("mode_basis", torch.as_tensor(basis, dtype=torch.float32))
            self.mode_amplitudes_A = nn.Parameter(torch.zeros(self.mode_basis.shape[0]))

    def centres(self) -> torch.Tensor:
        """The RBF centres (N, 3) Å: the free centres plus, in the mode stage, the collective displacement."""
        if not self.has_modes:
            return self.rbf.centres_A
        return self.rbf.centres_A + torch.einsum("k,kni->ni", self.mode_amplitudes_A, self.mode_basis)

    @torch.no_grad()
    def fold_modes(self) -> np.ndarray:
        """End of the mode stage: the collective displacement moved into the free centres; returns the amplitudes
        (K,) Å RMS, which are then reset to 0."""
        amplitudes = self.mode_amplitudes_A.detach().cpu().numpy().copy()
        self.rbf.centres_A.copy_(self.centres())
        self.mode_amplitudes_A.zero_()
        return amplitudes

    def render(self, batch: dict) -> torch.Tensor:
        """Filtered images (B, box, box) of the current centres in the batch's poses, shifts and CTF."""
        b = batch["rotations"].shape[0]
        images = render_images(self.centres().expand(b, -1, -1), self.rbf.electrons, self.rbf.sigmas_A(),
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
        terms = {"image": image, **self.rbf.restraint_energy(self.centres()[None])}
        terms["total"] = (self.config.image_weight * image
                          + self.restraint_weight * (terms["rbf_bonds"] + terms["rbf_sidechains"]))
        return terms
