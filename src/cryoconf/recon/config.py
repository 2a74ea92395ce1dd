"""Typed, validated settings of ``cryoconf recon`` (one flat dataclass; units in the names)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from cryoconf.errors import InputError
from cryoconf.settings import settings_from_mapping

__all__ = ["ReconConfig", "MODELS", "RESUMABLE_CHANGES"]

MODELS = ("residues", "segments", "rbf")
# settings that may change when a run is resumed with --load
RESUMABLE_CHANGES = {"epochs", "checkpoint_every", "num_workers"}


@dataclass
class ReconConfig:
    """Everything a ``recon`` run needs besides its inputs' paths.

    Model: ``model`` residues (Prins et al.) | segments (cryoSPHERE) | rbf (Cryofold, Zhong
    et al.: the residues decoder on learned RBF centres μ with learned σ); ``latent_dim`` L;
    ``variational`` VAE (True) or deterministic autoencoder; ``encoder`` cnn | mlp on the
    image (with ``encoder_reference`` the base rendered in the same pose as a second
    channel) | backproj (an MLP on the image-loss gradient at the base structure).
    Images: ``downsample_box`` (Fourier crop; None keeps the box), ``lowpass_A`` (soft
    low-pass applied to data and prediction alike), ``mask_radius_frac`` (circular mask,
    fraction of box/2), ``image_loss`` l2 | corr, ``scale`` closed_form (per-image scale
    and offset, exact least squares) | learned (one global scale and offset, Prins).
    Priors (either model; Prins et al. use the first three with ``residues``, cryoSPHERE
    none or the last two with ``segments``): weights of the geometry-degradation, bond,
    centering, continuity and clash losses; KL weight (``auto``: 2/effective pixels) with
    a linear warm-up over ``kl_warmup_epochs``.
    Segments: ``n_segments`` per group, ``segment_groups`` whole | chain | ranges
    (``segment_ranges`` 0-based [start, stop) residue positions), temperature ``tau``.
    RBF: σ ``rbf_sigma`` shared | residue_type from ``rbf_sigma_init_A``; restraint
    constants (per Å²) of the backbone bonds and side-chain bounds; ``restraint_weight``
    (``auto``: 2/effective pixels, the image loss read as a Gaussian NLL).
    """

    model: str = "residues"
    latent_dim: int = 8
    variational: bool = True
    encoder: str = "cnn"
    encoder_reference: bool = True  # second input channel: the base structure rendered in the particle's pose and CTF
    encoder_channels: list[int] = field(default_factory=lambda: [16, 32, 64, 64])
    encoder_hidden: list[int] = field(default_factory=lambda: [256])
    decoder_hidden: list[int] = field(default_factory=lambda: [350, 350, 350, 350, 350, 350])
    displacement_scale_A: float = 10.0  # decoder outputs × this (Å): Adam's step size then suits Å-scale motions
    # images
    downsample_box: int | None = None
    lowpass_A: float | None = None
    mask_radius_frac: float = 0.9
    mask_soft_edge_px: float = 3.0
    image_loss: str = "l2"
    scale: str = "closed_form"
    projector: str = "point"
    pad_factor: int = 1
    # structural priors
    geometry_weight: float = 0.01  # Prins et al.: 0.05 (see docs/recon.md: too strong at SNR 0.01 with our normalised image loss)
    bond_weight: float = 0.005
    centering_weight: float = 0.0  # Prins et al.: 0.1 (see docs/recon.md: biased when the centroid moves)
    continuity_weight: float = 0.0
    clash_weight: float = 0.0
    geometry_cutoff_A: float = 15.0
    geometry_all_pairs_max: int = 1000
    geometry_pairs_per_step: int = 4096  # random pairs per optimiser step (≤ 0: all), see geometry.sample_pairs
    # VAE
    kl_weight: float | str = "auto"
    kl_warmup_epochs: float = 1.0
    # segments
    n_segments: int = 4
    segment_groups: str = "whole"
    segment_ranges: list | None = None
    tau: float = 20.0
    segment_kl_weight: float = 1e-4
    # rbf (Zhong et al.): learned RBF centres μ, σ; restraint energies in units of the image NLL
    rbf_sigma: str = "shared"
    rbf_sigma_init_A: float = 3.71
    rbf_bond_k: float = 0.1
    rbf_sidechain_k: float = 0.1
    restraint_weight: float | str = "auto"  # auto: 2 / effective pixels (the image loss as a Gaussian NLL)
    # optimisation
    epochs: int = 20
    batch_size: int = 128
    lr_encoder: float = 1e-4
    lr_decoder: float = 1e-4
    lr_segmentation: float = 1e-3
    lr_normalisation: float = 1e-3
    lr_rbf: float = 1e-3
    seed: int = 0
    checkpoint_every: int = 1
    num_workers: int = 0
    extra: dict = field(default_factory=dict)

    def validate(self) -> "ReconConfig":
        def check(cond: bool, msg: str) -> None:
            if not cond:
                raise InputError(msg)

        check(self.model in MODELS, f"--model must be one of {', '.join(MODELS)}, got {self.model!r}")
        check(self.latent_dim >= 1, f"--zdim must be ≥ 1, got {self.latent_dim}")
        check(self.encoder in ("cnn", "mlp", "backproj"), f"--encoder must be cnn, mlp or backproj, got {self.encoder!r}")
        check(self.downsample_box is None or (self.downsample_box >= 8 and self.downsample_box % 2 == 0),
              f"--downsample must be an even box ≥ 8 px, got {self.downsample_box}")
        check(self.lowpass_A is None or self.lowpass_A > 0, f"--lowpass must be > 0 Å, got {self.lowpass_A}")
        check(0 < self.mask_radius_frac <= 1.5, f"--mask-radius must be in (0, 1.5] of box/2, got {self.mask_radius_frac}")
        check(self.image_loss in ("l2", "corr"), f"--loss must be l2 or corr, got {self.image_loss!r}")
        check(self.scale in ("closed_form", "learned"), f"--scale must be closed_form or learned, got {self.scale!r}")
        check(self.projector in ("point", "pixel"), f"--projector must be point or pixel, got {self.projector!r}")
        check(self.pad_factor in (1, 2), f"--pad must be 1 or 2, got {self.pad_factor}")
        for name in ("geometry_weight", "bond_weight", "centering_weight", "continuity_weight", "clash_weight",
                     "segment_kl_weight", "kl_warmup_epochs"):
            v = getattr(self, name)
            check(math.isfinite(v) and v >= 0, f"{name} must be a finite number ≥ 0, got {v}")
        check(self.kl_weight == "auto" or (isinstance(self.kl_weight, (int, float)) and self.kl_weight >= 0),
              f"--kl-weight must be 'auto' or a number ≥ 0, got {self.kl_weight!r}")
        check(self.n_segments >= 1, f"--segments must be ≥ 1, got {self.n_segments}")
        check(self.segment_groups in ("whole", "chain", "ranges"),
              f"--segment-groups must be whole, chain or ranges, got {self.segment_groups!r}")
        check(self.segment_groups != "ranges" or bool(self.segment_ranges),
              "--segment-groups ranges needs --segment-ranges START-STOP,...")
        check(self.tau > 0, f"--tau must be > 0, got {self.tau}")
        check(self.rbf_sigma in ("shared", "residue_type"),
              f"--rbf-sigma must be shared or residue_type, got {self.rbf_sigma!r}")
        check(math.isfinite(self.rbf_sigma_init_A) and self.rbf_sigma_init_A > 0,
              f"--sigma-init must be > 0 Å, got {self.rbf_sigma_init_A}")
        for name in ("rbf_bond_k", "rbf_sidechain_k"):
            v = getattr(self, name)
            check(math.isfinite(v) and v >= 0, f"{name} must be a finite number ≥ 0 (per Å²), got {v}")
        check(self.restraint_weight == "auto"
              or (isinstance(self.restraint_weight, (int, float)) and self.restraint_weight >= 0),
              f"--restraint-weight must be 'auto' or a number ≥ 0, got {self.restraint_weight!r}")
        check(self.epochs >= 0, f"--epochs must be ≥ 0, got {self.epochs}")
        check(self.batch_size >= 1, f"--batch-size must be ≥ 1, got {self.batch_size}")
        for name in ("lr_encoder", "lr_decoder", "lr_segmentation", "lr_normalisation", "lr_rbf"):
            check(getattr(self, name) > 0, f"{name} must be > 0, got {getattr(self, name)}")
        check(self.checkpoint_every >= 1, f"--checkpoint-every must be ≥ 1 epoch, got {self.checkpoint_every}")
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ReconConfig":
        return settings_from_mapping(cls, d, "recon").validate()
