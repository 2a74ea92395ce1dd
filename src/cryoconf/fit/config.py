"""Typed, validated settings of ``cryoconf fit`` (units in the names)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from cryoconf.errors import InputError
from cryoconf.settings import settings_from_mapping

__all__ = ["FitConfig", "RESUMABLE_CHANGES", "stored_settings"]

RESUMABLE_CHANGES = {"epochs", "checkpoint_every"}

#: Settings added with a default other than the behaviour before them: a checkpoint that
#: lacks them was trained with these values (Cα sites, no collective stage).
LEGACY_SETTINGS = {"backbone_site": "ca", "modes": 0}


def stored_settings(stored: dict | None) -> dict:
    """A checkpoint's stored fit settings, with the values it was trained with for settings it predates."""
    return {**LEGACY_SETTINGS, **(stored or {})}


@dataclass
class FitConfig:
    """Everything a homogeneous RBF fit needs besides its inputs.

    Model (Zhong et al.): ``sigma`` shared | residue_type, initial σ ``sigma_init_A``
    (the paper's 3.71 Å); restraint constants per Å² (``bond_k`` backbone bonds,
    ``sidechain_k`` side-chain bounds; 0 = off); ``restraint_weight`` (``auto``: 2 /
    effective pixels, i.e. the restraints against the image loss read as a Gaussian
    negative log-likelihood per image); ``image_weight`` (0: the no-image ablation);
    ``backbone_site``: ``centroid`` (default) puts each backbone RBF at its backbone's
    electron centroid (N, Cα, C, O of the all-atom start; the best single Gaussian of
    that density), with bonds restrained to the start's spacing, and maps the Cα back
    from the fitted sites; ``ca`` is the paper's RBF at the Cα (also used wherever the
    start has no backbone atoms).
    Images: ``downsample_box``, ``lowpass_A``, ``mask_radius_frac``, ``scale`` learned
    (one global scale = a0 and offset, the paper) | closed_form (per image).
    Optimisation: Adam; ``warmup_epochs`` train everything, then the centres are put
    back to the start (the paper's warm-up that sets σ and a0); then ``epochs`` more
    with the centres' learning rate decaying by a cosine to ``lr_final_frac`` of it.
    Collective stage (``modes`` > 0; 20 by default, 0 is the paper's procedure): after the warm-up, ``mode_epochs``
    epochs move the start only along its ``modes`` lowest ANM normal modes (computed on
    the backbone sites, side chains riding with their residue; amplitudes in Å RMS,
    learning rate ``lr_modes_A``), the classic normal-mode flexible fitting, whose few
    collective coordinates cannot fall into one residue's local minimum; the free fit
    then starts from there.
    Coarse to fine (``lowpass_start_A``): over the first ``lowpass_anneal_frac`` of those
    epochs the low-pass of data and prediction sharpens geometrically from
    ``lowpass_start_A`` to ``lowpass_A`` (or Nyquist), which widens the basin of the right
    fit for a start several Å away; the warm-up and the rest use ``lowpass_A``.
    """

    sigma: str = "shared"
    backbone_site: str = "centroid"
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
    modes: int = 20
    mode_epochs: int = 2
    lr_modes_A: float = 0.05
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
        check(self.backbone_site in ("centroid", "ca"),
              f"--backbone-site must be centroid or ca, got {self.backbone_site!r}")
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
        check(self.modes >= 0 and self.mode_epochs >= 0, "--modes and --mode-epochs must be ≥ 0")
        check(self.lr_modes_A > 0, f"--lr-modes must be > 0, got {self.lr_modes_A}")
        check(self.batch_size >= 1, f"--batch-size must be ≥ 1, got {self.batch_size}")
        for name in ("lr_centres_A", "lr_sigma", "lr_scale"):
            check(getattr(self, name) > 0, f"{name} must be > 0, got {getattr(self, name)}")
        check(0 < self.lr_final_frac <= 1, f"lr_final_frac must be in (0, 1], got {self.lr_final_frac}")
        check(self.checkpoint_every >= 1, f"--checkpoint-every must be ≥ 1, got {self.checkpoint_every}")
        return self

    @property
    def mode_stage_epochs(self) -> int:
        """Epochs of the collective (normal-mode) stage: ``mode_epochs`` when ``modes`` > 0, else 0."""
        return self.mode_epochs if self.modes > 0 else 0

    @property
    def free_start_epoch(self) -> int:
        """The epoch where the free fit of the centres begins (after the warm-up and the mode stage)."""
        return self.warmup_epochs + self.mode_stage_epochs

    @property
    def total_epochs(self) -> int:
        return self.free_start_epoch + self.epochs

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FitConfig":
        return settings_from_mapping(cls, d, "fit").validate()
