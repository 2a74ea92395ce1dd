"""Typed, validated configuration of a simulated particle dataset (units in the names)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from cryoconf.errors import InputError


@dataclass
class SimulationConfig:
    """What ``cryoconf simulate`` renders.

    Ranges are ``(min, max)`` pairs drawn uniformly per particle, except the SNR,
    drawn log-uniformly. ``snr = (inf, inf)`` renders noise-free images.
    """

    n_particles: int = 1000
    box: int = 128
    apix_A: float = 1.5
    seed: int = 0
    # conformations: None = uniform over conformations; else one weight per conformation
    weights: list[float] | None = None
    # imaging
    defocus_A: tuple[float, float] = (10000.0, 25000.0)
    astigmatism_A: tuple[float, float] = (0.0, 0.0)  # |U − V|, angle uniform in [0, 180)°
    bfactor_A2: float = 0.0
    voltage_kV: float = 300.0
    cs_mm: float = 2.7
    amplitude_contrast: float = 0.1
    phase_shift_deg: float = 0.0
    shift_A: float = 0.0  # shifts uniform in [−shift_A, shift_A]² Å
    snr: tuple[float, float] = (0.1, 0.1)
    snr_definition: str = "box"  # "box" | "mask"
    snr_mask_radius_px: float | None = None  # for "mask"; default box/2·0.8
    pad_factor: int = 2
    projector: str = "point"  # "point" | "pixel"
    # structure → pseudo-atoms
    center: str = "first"  # "first" | "each" | "none"
    batch_size: int = 256
    save_clean: bool = False
    extra: dict = field(default_factory=dict)

    def validate(self) -> "SimulationConfig":
        def check(cond: bool, msg: str) -> None:
            if not cond:
                raise InputError(msg)

        check(self.n_particles > 0, f"--n must be positive, got {self.n_particles}")
        check(self.box >= 8 and self.box % 2 == 0, f"--box must be an even number ≥ 8, got {self.box}")
        check(self.apix_A > 0, f"--apix must be positive (Å/px), got {self.apix_A}")
        lo, hi = self.defocus_A
        check(0 <= lo <= hi, f"--defocus MIN MAX must satisfy 0 ≤ MIN ≤ MAX (Å), got {lo} {hi}")
        lo, hi = self.astigmatism_A
        check(0 <= lo <= hi, f"--astigmatism MIN MAX must satisfy 0 ≤ MIN ≤ MAX (Å), got {lo} {hi}")
        check(self.bfactor_A2 >= 0, f"--bfactor must be ≥ 0 Å², got {self.bfactor_A2}")
        check(self.voltage_kV > 0, f"--voltage must be positive (kV), got {self.voltage_kV}")
        check(0 <= self.amplitude_contrast < 1, f"--amp-contrast must be in [0, 1), got {self.amplitude_contrast}")
        check(self.shift_A >= 0, f"--shift must be ≥ 0 Å, got {self.shift_A}")
        lo, hi = self.snr
        check(0 < lo <= hi, f"--snr must be positive (use inf for noise-free), got {lo} {hi}")
        check(math.isinf(lo) == math.isinf(hi), "--snr: a range cannot mix a finite value and inf")
        check(self.snr_definition in ("box", "mask"), f"--snr-definition must be box or mask, got {self.snr_definition}")
        check(self.pad_factor in (1, 2, 3, 4), f"--pad must be 1, 2, 3 or 4, got {self.pad_factor}")
        check(self.projector in ("point", "pixel"), f"--projector must be point or pixel, got {self.projector}")
        check(self.center in ("first", "each", "none"), f"--center must be first, each or none, got {self.center}")
        check(self.batch_size > 0, f"--batch-size must be positive, got {self.batch_size}")
        if self.weights is not None:
            check(all(w >= 0 and math.isfinite(w) for w in self.weights) and sum(self.weights) > 0,
                  "--weights must be finite, non-negative and not all zero")
        return self

    def to_dict(self) -> dict:
        d = asdict(self)
        for key, value in d.items():
            if isinstance(value, tuple):
                d[key] = list(value)
        return d
