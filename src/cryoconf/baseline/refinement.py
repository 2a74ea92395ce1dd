r"""Adaptive refinement of the orientation integral: finer cells where the likelihood is.

The baseline's SO(3) integral is a mean over a uniform grid of R₀ cells of equal
Haar measure, spacing h = (8π²/R₀)^{1/3} rad (8π² is the volume of SO(3) in the
rotation-vector metric; the paper's 36,864 orientations give h ≈ 7.4°). At high
resolution and SNR the likelihood of a particle is far narrower than a cell, so
the grid average is dominated by whichever grid point falls nearest the true
pose, and the posterior over templates can favour a template that compensates
for the pose error. Refinement replaces the cells that hold the likelihood by
finer ones, as an adaptive quadrature:

- a cell of spacing h centred on R is treated as the cube [−h/2, h/2]³ of
  rotation vectors δ around it, R·exp(δ) (right perturbation; the Haar measure
  is bi-invariant and ≈ d³δ at this scale); its 8 children are the centres of
  the cube's octants, R·exp(δ) with δ ∈ {±h/4}³, each with spacing h/2 and an
  eighth of the weight;
- level 1: the ``cells`` coarse cells of largest orientation posterior
  (Σ over templates of prior × likelihood, the defocus and shift grids
  averaged) are replaced by their children; level ℓ + 1 does the same to the
  best ``cells`` of level ℓ's children;
- the integral is the weighted sum over the cells that were not refined, every
  level included: coarse cells weigh 1/R₀, level-ℓ cells 1/(8^ℓ·R₀).

Each particle gets its own rotations (the same for every template, so templates
are compared on the same quadrature). The cube cells tile SO(3) only
approximately (the grid's cells are not cubes), so refinement is an
approximation that converges as the cells shrink: on the cryoSBI Hsp90
particles at SNR 0.1 (box 128, 1.5 Å/px) the error of the posterior mean θ falls
from 1.05 Å on the 36,864-point grid towards the 0.3 Å reached with the true
pose (docs/baseline.md).
"""

from __future__ import annotations

import math

import torch

from cryoconf.imaging.rotations import rotvec_to_matrix

__all__ = ["cell_children", "grid_spacing_rad", "log_subtract_exp"]

SO3_VOLUME = 8.0 * math.pi**2  # the volume of SO(3) in the rotation-vector metric


def grid_spacing_rad(n_orientations: int) -> float:
    """Side h (radians) of each of ``n_orientations`` equal cells of SO(3): (8π²/n)^{1/3}."""
    return (SO3_VOLUME / n_orientations) ** (1.0 / 3.0)


def cell_children(rotations: torch.Tensor, spacing_rad: float) -> torch.Tensor:
    """The 8 children (K·8, 3, 3) of cells of side ``spacing_rad`` centred on ``rotations`` (K, 3, 3).

    Child j of cell k is ``rotations[k] @ exp(δ_j)``, δ_j ∈ {±h/4}³ (the centres of the cube's
    octants); row k·8 + j.
    """
    q = spacing_rad / 4.0
    signs = torch.tensor([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)],
                         dtype=rotations.dtype, device=rotations.device)
    offsets = rotvec_to_matrix(signs * q)  # (8, 3, 3)
    return (rotations[:, None] @ offsets[None]).reshape(-1, 3, 3)


def log_subtract_exp(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """ln(eᵃ − eᵇ) elementwise; −inf where b ≥ a (the difference is lost to rounding)."""
    diff = b - a
    out = a + torch.log1p(-torch.exp(torch.clamp(diff, max=0.0)))
    return torch.where(diff < 0, out, torch.full_like(a, -math.inf))
