"""Typed, validated settings of ``cryoconf fit`` (units in the names)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from cryoconf.errors import InputError
from cryoconf.settings import settings_from_mapping

__all__ = ["FitConfig", "RESUMABLE_CHANGES"]

RESUMABLE_CHANGES = {"epochs", "checkpoint_every"}


@dataclass
class FitConfig:
    """Everything a homogeneous RBF fit needs besides its inputs.

    Model (Zhong et al.): ``sigma`` shared | residue_type, initial σ ``sigma_init_A``
    (the paper's 3.71 Å); restraint constants per Å² (``bond_k`` backbone bonds,
    ``sidechain_k`` side-chain bounds; 0 = off); ``restraint_weight`` (``auto``: 2 /
    effective pixels, i.e. the restraints against the image loss read as a Gaussian
    negative log-likelihood per image); ``image_weight`` (0: the no-image ablation).
    Images: ``downsample_box``, ``lowpass_A``, ``mask_radius_frac``, ``scale`` learned
    (one global scale = a0 and offset, the paper) | closed_form (per image).
    Optimisation: Adam; ``warmup_epochs`` train everything, then the centres are put
    back to the start (the paper's warm-up that sets σ and a0); then ``epochs`` more
    with the centres' learning rate decaying by a cosine to ``lr_final_frac`` of it.
    Coarse to fine (``lowpass_start_A``): over the first ``lowpass_anneal_frac`` of those
    epochs the low-pass of data and prediction sharpens geometrically from
    ``lowpass_start_A`` to ``lowpass_A`` (or Nyquist), which widens the basin of the right
    fit for a start several Å away; the warm-up and the rest use ``lowpass_A``.
    """

    sigma: str = "shared"
    sigma_init_A: float = 3.71
    bond_k: float = 0.1
    sidechain_k: float = 0.1
    restraint_weight: float | str = "auto"
    image_weight: float = 1.0
    downsample_box: int | None = None
    lowpass_A: float | None = None
    lowpass_start_A: float | None = None
    lowpass_anneal_frac: float = 0.5
    mask_radius_frac: float = 0.9
    mask_soft_edge_px: float = 3.0
    scale: str = "learned"
    projector: str = "point"
    warmup_epochs: int = 1
    epochs: int = 10
    batch_size: int = 64
    lr_centres_A: float = 0.05
    lr_sigma: float = 0.01
    lr_scale: float = 0.01
    lr_final_frac: float = 0.02
    seed: int = 0
    checkpoint_every: int = 1

    def validate(self) -> "FitConfig":
        def check(ok: bool, message: str) -> None:
            if not ok:
                raise InputError(message)

        check(self.sigma in ("shared", "residue_type"), f"--sigma must be shared or residue_type, got {self.sigma!r}")
        check(math.isfinite(self.sigma_init_A) and self.sigma_init_A > 0, f"--sigma-init must be > 0 Å, got {self.sigma_init_A}")
        for name in ("bond_k", "sidechain_k", "image_weight"):
            v = getattr(self, name)
            check(math.isfinite(v) and v >= 0, f"{name} must be a finite number ≥ 0, got {v}")
        check(self.restraint_weight == "auto"
              or (isinstance(self.restraint_weight, (int, float)) and self.restraint_weight >= 0),
              f"--restraint-weight must be 'auto' or a number ≥ 0, got {self.restraint_weight!r}")
        check(self.image_weight > 0 or self.bond_k > 0 or self.sidechain_k > 0,
              "nothing to fit: the image weight and both restraint constants are 0")
        check(self.downsample_box is None or (self.downsample_box >= 8 and self.downsample_box % 2 == 0),
              f"--downsample must be an even box ≥ 8, got {self.downsample_box}")
        check(self.lowpass_A is None or self.lowpass_A > 0, f"--lowpass must be > 0 Å, got {self.lowpass_A}")
        check(self.lowpass_start_A is None or self.lowpass_start_A > 0,
              f"--lowpass-start must be > 0 Å, got {self.lowpass_start_A}")
        check(self.lowpass_start_A is None or self.lowpass_A is None or self.lowpass_start_A >= self.lowpass_A,
              f"--lowpass-start ({self.lowpass_start_A} Å) must be at least --lowpass ({self.lowpass_A} Å): "
              "the schedule goes from coarse to fine")
        check(0 < self.lowpass_anneal_frac <= 1,
              f"--lowpass-anneal must be in (0, 1], got {self.lowpass_anneal_frac}")
        check(0 < self.mask_radius_frac <= 1.5, f"--mask-radius must be in (0, 1.5], got {self.mask_radius_frac}")
        check(self.scale in ("learned", "closed_form"), f"--scale must be learned or closed_form, got {self.scale!r}")
        check(self.projector in ("point", "pixel"), f"--projector must be point or pixel, got {self.projector!r}")
        check(self.warmup_epochs >= 0 and self.epochs >= 0, "--warmup and --epochs must be ≥ 0")
        check(self.batch_size >= 1, f"--batch-size must be ≥ 1, got {self.batch_size}")
        for name in ("lr_centres_A", "lr_sigma", "lr_scale"):
            check(getattr(self, name) > 0, f"{name} must be > 0, got {getattr(self, name)}")
        check(0 < self.lr_final_frac <= 1, f"lr_final_frac must be in (0, 1], got {self.lr_final_frac}")
        check(self.checkpoint_every >= 1, f"--checkpoint-every must be ≥ 1, got {self.checkpoint_every}")
        return self

    @property
    def total_epochs(self) -> int:
        return self.warmup_epochs + self.epochs

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FitConfig":
        return settings_from_mapping(cls, d, "fit").validate()
