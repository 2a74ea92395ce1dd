"""Deterministic grids over the nuisance parameters: orientations (SO(3)), shifts, defocus.

Orientations
------------
Two near-uniform, deterministic designs on the unit quaternions (scalar first,
``w ≥ 0``; ``q`` and ``−q`` are the same rotation):

- ``"hopf"``: the Hopf-fibration grid of Yershova et al. (2010). SO(3) is the
  circle bundle S¹ → S³/± → S²; a HEALPix grid of 12·Nside² equal-area pixel
  centres on S² (the beam direction) times a uniform grid of 6·Nside in-plane
  angles ψ gives 72·8^ℓ rotations for Nside = 2^ℓ: 72, 576, 4,608, 36,864
  (ℓ = 3: the 36,864 orientations of BioEM in the cryoSBI comparison),
  294,912. Each cell has equal Haar measure.
- ``"fibonacci"``: the super-Fibonacci spiral of Alexa (2022) for any N: point i
  (s = i + ½) is ``(r sin α, r cos α, R sin β, R cos β)`` with r = √(s/N),
  R = √(1 − s/N), α = 2πs/√2, β = 2πs/ψ₀ (ψ₀⁴ = ψ₀ + 4). It samples S³ with
  uniform volume density, hence SO(3) with the Haar measure.

``"auto"`` (default) uses ``"hopf"`` when N is one of the 72·8^ℓ sizes and
``"fibonacci"`` otherwise. Uniformity is checked in ``tests/test_baseline.py``:
the rotation angle ω of the grid is distributed ∝ (1 − cos ω) on [0, π] and the
nearest-neighbour angle is close to the spacing (8π²/N)^{1/3} of N cells of
equal volume in the rotation-angle metric.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from cryoconf.errors import InputError
from cryoconf.imaging.rotations import quaternion_to_matrix

__all__ = [
    "HOPF_SIZES",
    "defocus_grid_A",
    "healpix_centres",
    "hopf_quaternions",
    "shift_grid_A",
    "so3_grid",
    "so3_grid_quaternions",
    "super_fibonacci_quaternions",
]

HOPF_SIZES = tuple(72 * 8**level for level in range(7))  # 72 … 18,874,368


def healpix_centres(nside: int) -> tuple[np.ndarray, np.ndarray]:
    """HEALPix (ring scheme) pixel centres on S²: ``(z = cos θ, φ)``, each (12·nside²,), float64.

    North cap rings i = 1…nside−1: z = 1 − i²/(3·nside²), 4i pixels at φ = π(j − ½)/(2i);
    equatorial rings i = nside…3·nside: z = 4/3 − 2i/(3·nside), 4·nside pixels at
    φ = π(j − s/2)/(2·nside), s = (i − nside + 1) mod 2; the south cap mirrors the north.
    All 12·nside² pixels have the same area.
    """
    if nside < 1:
        raise InputError(f"HEALPix nside must be ≥ 1, got {nside}")
    zs, phis = [], []
    for i in range(1, 4 * nside):
        if i < nside:
            z = 1.0 - i * i / (3.0 * nside * nside)
            j = np.arange(1, 4 * i + 1)
            phi = math.pi * (j - 0.5) / (2 * i)
        elif i <= 3 * nside:
            z = 4.0 / 3.0 - 2.0 * i / (3.0 * nside)
            s = (i - nside + 1) % 2
            j = np.arange(1, 4 * nside + 1)
            phi = math.pi * (j - 0.5 * s) / (2 * nside)
        else:
            k = 4 * nside - i
            z = -(1.0 - k * k / (3.0 * nside * nside))
            j = np.arange(1, 4 * k + 1)
            phi = math.pi * (j - 0.5) / (2 * k)
        zs.append(np.full(phi.shape, z))
        phis.append(phi)
    return np.concatenate(zs), np.concatenate(phis)


def hopf_quaternions(level: int) -> np.ndarray:
    """The Hopf-fibration grid of 72·8^level unit quaternions (N, 4), float64, w ≥ 0.

    A direction (θ, φ) on S² and an in-plane angle ψ map to
    q = (cos(θ/2)·cos(ψ/2), cos(θ/2)·sin(ψ/2), sin(θ/2)·cos(φ + ψ/2), sin(θ/2)·sin(φ + ψ/2)),
    whose rotation takes the z axis to (sin θ cos φ, sin θ sin φ, cos θ) after turning by ψ about z.
    ψ takes 6·2^level values (ψ_k = 2π(k + ½)/(6·2^level)), so ψ ∈ [0, 2π) and q/−q are not repeated.
    """
    if level < 0:
        raise InputError(f"Hopf grid level must be ≥ 0, got {level}")
    nside = 2**level
    z, phi = healpix_centres(nside)
    theta = np.arccos(np.clip(z, -1.0, 1.0))
    npsi = 6 * nside
    psi = 2.0 * math.pi * (np.arange(npsi) + 0.5) / npsi
    th, ps = theta[:, None], psi[None, :]
    ph = phi[:, None]
    q = np.stack(np.broadcast_arrays(
        np.cos(th / 2) * np.cos(ps / 2),
        np.cos(th / 2) * np.sin(ps / 2),
        np.sin(th / 2) * np.cos(ph + ps / 2),
        np.sin(th / 2) * np.sin(ph + ps / 2),
    ), axis=-1).reshape(-1, 4)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return np.where(q[:, :1] < 0, -q, q)


_PSI0 = 1.533751168755204288118041  # the real root > 1 of ψ⁴ = ψ + 4


def super_fibonacci_quaternions(n: int) -> np.ndarray:
    """``n`` unit quaternions (n, 4), float64, w ≥ 0, on the super-Fibonacci spiral (uniform on S³)."""
    if n < 1:
        raise InputError(f"the orientation grid needs ≥ 1 orientation, got {n}")
    s = np.arange(n, dtype=np.float64) + 0.5
    t = s / n
    r, big_r = np.sqrt(t), np.sqrt(1.0 - t)
    alpha = 2.0 * math.pi * s / math.sqrt(2.0)
    beta = 2.0 * math.pi * s / _PSI0
    q = np.stack([r * np.sin(alpha), r * np.cos(alpha), big_r * np.sin(beta), big_r * np.cos(beta)], axis=1)
    return np.where(q[:, :1] < 0, -q, q)


def so3_grid_quaternions(n: int, method: str = "auto") -> np.ndarray:
    """``n`` near-uniform unit quaternions (n, 4), float64 (see the module docstring for ``method``)."""
    n = int(n)
    if n < 1:
        raise InputError(f"the orientation grid needs ≥ 1 orientation, got {n}")
    if method == "auto":
        method = "hopf" if n in HOPF_SIZES else "fibonacci"
    if method == "hopf":
        if n not in HOPF_SIZES:
            raise InputError(f"a Hopf grid has 72·8^level orientations ({', '.join(map(str, HOPF_SIZES[:6]))}, …); "
                             f"got {n}: pick one of these or use the 'fibonacci' grid")
        return hopf_quaternions(HOPF_SIZES.index(n))
    if method == "fibonacci":
        return super_fibonacci_quaternions(n)
    raise InputError(f"unknown SO(3) grid {method!r}; use 'auto', 'hopf' or 'fibonacci'")


def so3_grid(n: int, method: str = "auto", dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """``n`` near-uniform rotation matrices (n, 3, 3) (pose matrices A)."""
    q = torch.from_numpy(so3_grid_quaternions(n, method))
    return quaternion_to_matrix(q).to(dtype=dtype, device=device)


def shift_grid_A(shift_range_A: float, shift_step_A: float, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """Square grid of in-plane shifts (S, 2) (x, y) in Å: every multiple of the step in [−range, range]².

    ``shift_range_A = 0`` gives the single shift (0, 0). Row-major over (y, x).
    """
    if shift_range_A < 0:
        raise InputError(f"the shift range must be ≥ 0 Å, got {shift_range_A}")
    if shift_range_A > 0 and shift_step_A <= 0:
        raise InputError(f"the shift step must be > 0 Å, got {shift_step_A}")
    k = 0 if shift_range_A == 0 else math.floor(shift_range_A / shift_step_A + 1e-9)
    v = torch.arange(-k, k + 1, dtype=torch.float64) * (shift_step_A if k else 0.0)
    yy, xx = torch.meshgrid(v, v, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1).to(dtype=dtype, device=device)


def defocus_grid_A(offsets_A=None, values_A=None) -> tuple[np.ndarray, bool]:
    """Defocus grid: ``(values (D,) Å, relative)``.

    ``offsets_A``: added to each particle's own defocus U and V (astigmatism kept): relative;
    ``values_A``: absolute defoci (U = V = value) used for every particle. Exactly one is given.
    """
    if (offsets_A is None) == (values_A is None):
        raise InputError("give either defocus offsets (relative to each particle's CTF) or absolute defocus values")
    vals = np.asarray(offsets_A if values_A is None else values_A, dtype=np.float64).reshape(-1)
    if vals.size == 0:
        raise InputError("the defocus grid is empty; give at least one value (e.g. 0 for the particle's own defocus)")
    if not np.all(np.isfinite(vals)):
        raise InputError(f"the defocus grid has non-finite values: {vals.tolist()}")
    if values_A is not None and np.any(vals < 0):
        raise InputError(f"absolute defocus values must be ≥ 0 Å (underfocus positive), got {vals.tolist()}")
    return vals, values_A is None
