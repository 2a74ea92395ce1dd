"""The ``recon`` autoencoder: image → z → structure → rendered image, with its losses.

:class:`ReconModel` = encoder (q(z | image)) + decoder (``residues`` or ``segments``)
+ the core forward model (each particle's pose, shift and CTF) + the image
comparison (same soft low-pass and mask on data and prediction) + the structural
priors of :mod:`cryoconf.recon.geometry`. The base structure must be in the frame
of the poses (see :func:`cryoconf.recon.training.base_in_pose_frame`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from cryoconf.imaging.forward import render_images
from cryoconf.recon import geometry
from cryoconf.recon.config import ReconConfig
from cryoconf.recon.decoders import ResidueDecoder, SegmentDecoder, quaternion_angle_axis
from cryoconf.recon.encoders import build_encoder
from cryoconf.recon.images import ImageComparison
from cryoconf.recon.rbf import RBFDensity
from cryoconf.recon.segmentation import SegmentationGMM, residue_groups
from cryoconf.structure.model import Structure

__all__ = ["ReconModel", "LOSS_TERMS"]

LOSS_TERMS = ("image", "kl", "geometry", "bond", "centering", "continuity", "clash", "segment_kl", "restraint")
class ReconModel(nn.Module):
    """Encoder, decoder, renderer and losses for images of ``box`` px at ``apix_A`` Å/px."""

    def __init__(self, config: ReconConfig, base: Structure, box: int, apix_A: float) -> None:
        super().__init__()
        config.validate()
        self.config, self.box, self.apix_A = config, int(box), float(apix_A)
        coords0 = torch.tensor(base.coords_A, dtype=torch.float32)  # a copy: loading weights must not alter ``base``
        self.register_buffer("coords0_A", coords0)
        self.register_buffer("amplitudes_e", torch.as_tensor(base.amplitudes_e, dtype=torch.float32))
        self.register_buffer("sigmas_A", torch.as_tensor(base.sigmas_A, dtype=torch.float32))
        self.register_buffer("residue_index", torch.as_tensor(base.residue_index, dtype=torch.long))
        L = config.latent_dim
        enc_kwargs = {"hidden": tuple(config.encoder_hidden), "in_channels": 2 if config.encoder_reference else 1}
        if config.encoder == "cnn":
            enc_kwargs["channels"] = tuple(config.encoder_channels)
        if config.encoder == "backproj":
            enc_kwargs = {"hidden": tuple(config.encoder_hidden), "n_atoms": base.n_atoms}
        self.encoder = build_encoder(config.encoder, box, L, **enc_kwargs)
        self.rbf = None
        if config.model in ("residues", "rbf"):
            self.decoder = ResidueDecoder(coords0, L, list(config.decoder_hidden), config.displacement_scale_A)
            if config.model == "rbf":
                self.rbf = RBFDensity(base, sigma=config.rbf_sigma, sigma_init_A=config.rbf_sigma_init_A,
                                      bond_k=config.rbf_bond_k, sidechain_k=config.rbf_sidechain_k)
        else:
            first = np.unique(base.residue_index, return_index=True)[1]
            ranges = [tuple(r) for r in config.segment_ranges] if config.segment_ranges else None
            groups = residue_groups(base.chain_ids[first], config.segment_groups, ranges)
            segmentation = SegmentationGMM(groups, config.n_segments, tau=config.tau)
            self.decoder = SegmentDecoder(coords0, L, list(config.decoder_hidden), segmentation,
                                          residue_index=base.residue_index)
        radius = config.mask_radius_frac * box / 2
        self.comparison = ImageComparison(box, apix_A, lowpass_A=config.lowpass_A, mask_radius_px=radius,
                                          mask_soft_edge_px=config.mask_soft_edge_px, loss=config.image_loss,
                                          scale=config.scale)
        bb = geometry.backbone_atoms(base)
        bb_pairs = geometry.bond_pairs(bb.size, base.chain_breaks[bb])
        self.register_buffer("bond_pairs", torch.as_tensor(bb[bb_pairs.numpy()]).reshape(-1, 2))
        pairs = (geometry.geometry_pairs(base.coords_A, base.chain_breaks, cutoff_A=config.geometry_cutoff_A,
                                         all_pairs_max=config.geometry_all_pairs_max)
                 if config.geometry_weight > 0 else torch.zeros(0, 2, dtype=torch.long))
        self.register_buffer("geometry_pairs", pairs)
        if config.clash_weight > 0:
            cp = geometry.clash_pairs(base.coords_A[bb], base.chain_breaks[bb])
            self.register_buffer("clash_pairs", torch.as_tensor(bb[cp.numpy()]).reshape(-1, 2))
        else:
            self.register_buffer("clash_pairs", torch.zeros(0, 2, dtype=torch.long))
        kl, rw = config.kl_weight, config.restraint_weight
        self.kl_weight = 2.0 / self.comparison.effective_pixels() if kl == "auto" else float(kl)
        # the image loss × effective pixels / 2 is the Gaussian negative log-likelihood of a normalised image,
        # the scale in which the RBF restraint energies (k = 0.1 per Å²) are written
        self.restraint_weight = 2.0 / self.comparison.effective_pixels() if rw == "auto" else float(rw)

    # ---- the pieces -------------------------------------------------------------------------
    def prepare(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch → (filtered data (B, box, box) for the loss, encoder input (B, C, box, box)).

        The encoder sees the filtered, masked, normalised image and, with
        ``encoder_reference``, the base structure rendered in the particle's pose and CTF
        (same filter and normalisation), so that it can read the conformation as what
        differs from the base rather than having to learn the pose from the image.
        """
        filtered = self.comparison.filter(batch["images"])
        if self.config.encoder == "backproj":
            return filtered, self.loss_gradient_at_base(filtered, batch)
        channels = [self.comparison.encoder_input(filtered)]
        if self.config.encoder_reference:
            with torch.no_grad():
                ref = self.render_base(batch)
            channels.append(self.comparison.encoder_input(ref))
        return filtered, torch.stack(channels, 1)

    def render_base(self, batch: dict, coords_A: torch.Tensor | None = None) -> torch.Tensor:
        """Filtered images (B, box, box) of the base structure (or ``coords_A``, (B, N, 3)) in the batch's poses and CTF."""
        x = self.base_coords().expand(batch["rotations"].shape[0], -1, -1) if coords_A is None else coords_A
        return self.render(x, batch["rotations"], batch["shifts_A"], batch["ctf"])

    @torch.no_grad()
    def initialise_normalisation(self, batch: dict) -> None:
        """The learned global scale/offset (``scale: learned`` with ``l2``) from this batch, once."""
        if self.config.scale == "learned" and self.config.image_loss == "l2" and not bool(self.comparison.initialised):
            self.comparison.initialise_learned(self.render_base(batch), self.prepare(batch)[0])

    def loss_gradient_at_base(self, filtered: torch.Tensor, batch: dict) -> torch.Tensor:
        """∂(image loss)/∂x at the base structure (B, N, 3), each particle's scaled to unit RMS.

        The backprojection of the residual between the image and the base's rendering
        (through the known pose and CTF) onto the residues, in the molecule's frame.
        """
        with torch.enable_grad():
            x = self.base_coords().expand(filtered.shape[0], -1, -1).detach().clone().requires_grad_(True)
            loss = self.comparison(self.render_base(batch, x), filtered.detach()).sum()
            (g,) = torch.autograd.grad(loss, x)
        rms = g.square().mean((1, 2), keepdim=True).sqrt().clamp_min(1e-20)
        return (g / rms).detach()

    def encode(self, encoder_input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(μ, log σ²) of q(z | image), each (B, L); log σ² is softly bounded to (−12, 6)."""
        mu, logvar = self.encoder(encoder_input)
        return mu, -3.0 + 9.0 * torch.tanh((logvar + 3.0) / 9.0) if self.config.variational else logvar

    def base_coords(self) -> torch.Tensor:
        """The structure at z's origin (N, 3) Å: the base, or with ``rbf`` the learned RBF centres μ."""
        return self.coords0_A if self.rbf is None else self.rbf.centres_A

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Structures (B, N, 3) Å in the frame of the poses (``rbf``: μ + D(z), Zhong et al.)."""
        if self.rbf is not None:
            return self.rbf.centres_A + self.decoder.displacements(z)
        return self.decoder(z)

    def render(self, coords_A: torch.Tensor, rotations, shifts_A, ctf) -> torch.Tensor:
        """Filtered predicted images (B, box, box) of structures ``coords_A`` (B, N, 3)."""
        sigmas = self.sigmas_A if self.rbf is None else self.rbf.sigmas_A()
        images = render_images(coords_A, self.amplitudes_e, sigmas, rotations, shifts_A, ctf, self.box,
                               self.apix_A, pad_factor=self.config.pad_factor, projector=self.config.projector)
        return self.comparison.filter(images)

    # ---- the objective ----------------------------------------------------------------------
    def forward(self, batch: dict, eps: torch.Tensor | None = None, kl_scale: float = 1.0) -> dict:
        """Losses (scalars, mean over the batch) and ``mu`` (B, L) for one batch.

        ``eps`` (B, L): the reparameterisation noise (drawn here when None); ``kl_scale``
        multiplies the KL weight (warm-up).
        """
        cfg = self.config
        data, enc_in = self.prepare(batch)
        mu, logvar = self.encode(enc_in)
        if cfg.variational:
            eps = torch.randn_like(mu) if eps is None else eps.to(mu)
            z = mu + (0.5 * logvar).exp() * eps
            kl = 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar).sum(-1).mean()
        else:
            z, kl = mu, mu.new_zeros(())
        coords = self.decode(z)
        pred = self.render_base(batch, coords)
        self.initialise_normalisation(batch)
        terms = {"image": self.comparison(pred, data).mean(), "kl": kl}
        zero = coords.new_zeros(())
        pairs = (geometry.sample_pairs(self.geometry_pairs, cfg.geometry_pairs_per_step) if self.training
                 else self.geometry_pairs)
        terms["geometry"] = (geometry.geometry_degradation_loss(coords, self.coords0_A, pairs)
                             if cfg.geometry_weight > 0 else zero)
        terms["bond"] = geometry.bond_loss(coords, self.bond_pairs) if cfg.bond_weight > 0 else zero
        terms["centering"] = geometry.centering_loss(coords, self.coords0_A) if cfg.centering_weight > 0 else zero
        terms["continuity"] = (geometry.continuity_loss(coords, self.coords0_A, self.bond_pairs)
                               if cfg.continuity_weight > 0 else zero)
        terms["clash"] = geometry.clash_loss(coords, self.clash_pairs) if cfg.clash_weight > 0 else zero
        terms["segment_kl"] = self.decoder.segmentation.kl() if cfg.model == "segments" else zero
        terms["restraint"] = sum(self.rbf.restraint_energy(coords).values()) if self.rbf is not None else zero
        total = (terms["image"] + self.kl_weight * kl_scale * kl + cfg.geometry_weight * terms["geometry"]
                 + cfg.bond_weight * terms["bond"] + cfg.centering_weight * terms["centering"]
                 + cfg.continuity_weight * terms["continuity"] + cfg.clash_weight * terms["clash"]
                 + cfg.segment_kl_weight * terms["segment_kl"] + self.restraint_weight * terms["restraint"])
        terms["total"] = total
        terms["mu"] = mu
        return terms

    # ---- analysis ---------------------------------------------------------------------------
    @torch.no_grad()
    def segment_motions(self, z: torch.Tensor) -> dict:
        """Per particle and segment: rotation angle (B, M) degrees, unit axis (B, M, 3), translation (B, M, 3) Å."""
        q, t = self.decoder.transforms(z)
        angle, axis = quaternion_angle_axis(q)
        return {"angle_deg": torch.rad2deg(angle), "axis": axis, "translation_A": t}
