"""Settings of an SVI run (:class:`SVIConfig`), a plain dataclass written to ``config.yaml``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from cryoconf.errors import InputError
from cryoconf.settings import settings_from_mapping

__all__ = ["SVIConfig"]


@dataclass
class SVIConfig:
    """Everything that defines an SVI run (units in the names; defaults as in Woollard et al. where they apply).

    Structure and ANM: ``structure`` (PDB/mmCIF/PSF), ``trajectory``/``frame``/``selection`` to pick the
    base conformation, ``n_modes`` K lowest non-rigid ANM modes (Cα network, ``cutoff_A``, ``gamma``),
    prior std ``sigma_alpha_A`` (K values, Å along unit-norm modes) or, when None, √(kT/λ_m) with ``kT``
    in the units of γ. ``atom_sigma_A``: Gaussian width of every pseudo-atom (None: per-residue widths).
    Imaging: ``defocus_mean_A``/``defocus_std_A`` (None: from the particles' CTF metadata, else 15000/1000),
    ``voltage_kV``/``cs_mm``/``amplitude_contrast`` (None: from metadata, else 300/2.7/0.1),
    ``noise_sigma`` (None: estimated from the background outside ``mask_radius_frac``·box/2),
    ``signal_scale`` (None: matched to the data's variance).
    Pose: ``pose`` "inplane" | "3d", ``pose_prior_loc`` (zeros: uniform), ``n_components`` of the mixture.
    Optimisation: ``elbo`` "enum" (TraceEnum_ELBO, mixture component enumerated) | "trace" (Trace_ELBO),
    ClippedAdam ``lr``/``clip_norm``/``lrd`` (``lr_anm``/``lrd_anm``: the ANM encoder's own
    learning rate and per-step decay, None = ``lr``/``lrd``),
    ``batch_size``, ``stages`` (``K:STEPS[:WHAT],…``, see
    :func:`cryoconf.svi.fourier.parse_stages`), ``seed``, ``checkpoint_interval`` (steps), ``keep_checkpoints``.
    Guide: ``channels``, ``hidden``, ``pose_scale``, ``align_anm`` (in-plane: the ANM encoder reads the image
    rotated back by the pose encoder's estimate).
    """

    structure: str = ""
    trajectory: str | None = None
    frame: int = 0
    selection: str | None = None
    n_modes: int = 1
    cutoff_A: float = 15.0
    gamma: float = 1.0
    sigma_alpha_A: list[float] | None = None
    kT: float = 1.0
    atom_sigma_A: float | None = None
    defocus_mean_A: float | None = None
    defocus_std_A: float | None = None
    voltage_kV: float | None = None
    cs_mm: float | None = None
    amplitude_contrast: float | None = None
    noise_sigma: float | None = None
    mask_radius_frac: float = 0.9
    signal_scale: float | None = None
    pose: str = "inplane"
    pose_prior_loc: list[float] | None = None
    n_components: int = 2
    elbo: str = "enum"
    lr: float = 1e-3
    lr_anm: float | None = None
    lrd_anm: float | None = None
    clip_norm: float = 10.0
    lrd: float = 1.0
    batch_size: int = 64
    stages: str = "16:1000,32:1000"
    seed: int = 0
    checkpoint_interval: int = 500
    keep_checkpoints: int = 3
    channels: list[int] = field(default_factory=lambda: [16, 32, 64])
    hidden: int = 256
    pose_scale: float = 10.0
    align_anm: bool = False

    def __post_init__(self) -> None:
        if self.pose not in ("inplane", "3d"):
            raise InputError(f"--pose {self.pose!r}: use inplane or 3d")
        if self.elbo not in ("enum", "trace"):
            raise InputError(f"--elbo {self.elbo!r}: use enum (TraceEnum_ELBO) or trace (Trace_ELBO)")
        if self.n_modes < 1:
            raise InputError(f"--n-modes must be ≥ 1, got {self.n_modes}")
        if self.sigma_alpha_A is not None and len(self.sigma_alpha_A) not in (1, self.n_modes):
            raise InputError(f"--sigma-alpha has {len(self.sigma_alpha_A)} values for {self.n_modes} modes; give 1 "
                             f"(shared) or {self.n_modes}")
        if self.n_components < 1:
            raise InputError(f"--components must be ≥ 1, got {self.n_components}")
        if self.batch_size < 1:
            raise InputError(f"--batch-size must be ≥ 1, got {self.batch_size}")
        if not self.lr > 0:
            raise InputError(f"--lr must be > 0, got {self.lr}")
        if self.lr_anm is not None and not self.lr_anm > 0:
            raise InputError(f"--lr-anm must be > 0, got {self.lr_anm}")
        if self.align_anm and self.pose != "inplane":
            raise InputError("--align-anm needs --pose inplane (a 3D pose cannot be undone in the image plane)")
        d = 2 if self.pose == "inplane" else 4
        if self.pose_prior_loc is not None and len(self.pose_prior_loc) != d:
            raise InputError(f"--pose-prior-loc needs {d} numbers for --pose {self.pose}, got {len(self.pose_prior_loc)}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "SVIConfig":
        return settings_from_mapping(cls, data, "SVI")
