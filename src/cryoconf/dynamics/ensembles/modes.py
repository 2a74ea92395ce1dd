"""Ensembles along anisotropic-network-model (ANM) normal modes.

All three generators take an :class:`~cryoconf.dynamics.anm.ANMModes`
(``modes`` (K, N, 3) unit-norm 3N-vectors u_k, ``eigenvalues`` λ_k,
reference ``coords_A`` x₀) and build conformations x = x₀ + Σ α_k u_k
(α in Å, since ‖u_k‖ = 1).

Order parameter θ = signed RMSD (Å) to the reference x₀. Which RMSD:

- ``rmsd="unaligned"`` (default): the plain RMSD without superposition. For a
  single-mode displacement α·u it is exactly |α|/√N, so α = θ·√N gives a grid
  that is evenly spaced in this RMSD to floating-point precision.
- ``rmsd="aligned"``: the RMSD after optimal (Kabsch) superposition onto x₀,
  as a template-matching user would measure it on the structures. ANM modes
  are orthogonal to rigid-body motion, so it equals the unaligned one to first
  order; the amplitudes are solved numerically (batched bisection) so the
  requested spacing holds for the aligned RMSD, too.

Mode indices are 0-based into ``modes.modes`` (0 = the lowest non-trivial mode
that :func:`~cryoconf.dynamics.anm.compute_anm_modes` returns). Positive θ on
a single-mode walk means +α along u_k as stored (the sign of an eigenvector is
arbitrary).
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

from cryoconf.dynamics.alignment import rmsd
from cryoconf.errors import InputError
from cryoconf.structure.model import Conformations, Structure

__all__ = ["mode_ensemble", "two_mode_ensemble", "boltzmann_ensemble", "boltzmann_variances", "RMSD_KINDS"]

log = logging.getLogger("cryoconf.dynamics")

RMSD_KINDS = ("unaligned", "aligned")
_EPS = 1e-9


# --------------------------------------------------------------------------- helpers

def _topology(modes, structure: Structure | None) -> Structure:
    ref = np.asarray(modes.coords_A, dtype=np.float32)
    top = structure if structure is not None else getattr(modes, "topology", None)
    if top is None:
        raise InputError("the ANM modes carry no topology (residue names/numbers); pass the structure they were "
                         "computed from (structure=... in Python, STRUCTURE on the command line)")
    if top.n_atoms != ref.shape[0]:
        raise InputError(f"the structure has {top.n_atoms} pseudo-atoms but the modes were computed for "
                         f"{ref.shape[0]}; use the same structure, selection and --mode as for 'cryoconf anm'")
    return top.with_coords(ref)


def _mode_vector(modes, k: int, what: str) -> np.ndarray:
    arr = np.asarray(modes.modes, dtype=np.float64)
    n_modes = arr.shape[0]
    if not (isinstance(k, (int, np.integer)) and -n_modes <= k < n_modes):
        raise InputError(f"{what} {k!r} is out of range: the modes file has {n_modes} modes (0-based: 0..{n_modes - 1}); "
                         "pick one of those or compute more with --n-modes")
    u = arr[int(k)]
    norm = float(np.linalg.norm(u))
    if not np.isfinite(norm) or norm < 1e-12:
        raise InputError(f"{what} {k}: the mode vector is zero or not finite; recompute the modes")
    return u / norm


def _check_kind(kind: str) -> str:
    if kind not in RMSD_KINDS:
        raise InputError(f"--rmsd {kind!r}: use 'unaligned' (plain RMSD) or 'aligned' (after Kabsch superposition)")
    return kind


def _rmsd_of_amplitudes(ref: np.ndarray, u: np.ndarray, alphas: np.ndarray, kind: str) -> np.ndarray:
    """RMSD (Å) to ``ref`` of ref + α·u for each α (batched)."""
    ref_t = torch.as_tensor(ref, dtype=torch.float64)
    x = ref_t + torch.as_tensor(alphas, dtype=torch.float64)[:, None, None] * torch.as_tensor(u)[None]
    return rmsd(x, ref_t[None], align=(kind == "aligned")).numpy()


def _amplitudes_for_rmsd(ref: np.ndarray, u: np.ndarray, targets, kind: str, what: str) -> np.ndarray:
    """Amplitudes α ≥ 0 (Å) with RMSD(ref + α·u, ref) = target, for each target ≥ 0."""
    t = np.abs(np.asarray(targets, dtype=np.float64))
    n = ref.shape[0]
    linear = t * math.sqrt(n)
    if kind == "unaligned" or t.size == 0:
        return linear
    # aligned RMSD ≤ unaligned: bracket [0, hi] with hi ≥ the linear guess, then bisect (batched)
    hi = np.maximum(linear, 1e-12)
    for _ in range(30):
        short = _rmsd_of_amplitudes(ref, u, hi, kind) < t
        if not short.any():
            break
        hi = np.where(short, 2.0 * hi, hi)
    else:
        raise InputError(f"{what}: the aligned RMSD along this mode does not reach {t.max():.3g} Å; use a smaller "
                         "extent or --rmsd unaligned")
    amax = float(hi.max())
    grid = np.linspace(0.0, amax, 257)
    f = _rmsd_of_amplitudes(ref, u, grid, kind)
    if np.any(np.diff(f) <= 0):
        raise InputError(f"{what}: the aligned RMSD is not monotone in the amplitude up to {amax:.3g} Å; use a "
                         "smaller extent or --rmsd unaligned")
    lo = np.zeros_like(hi)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        below = _rmsd_of_amplitudes(ref, u, mid, kind) < t
        lo = np.where(below, mid, lo)
        hi = np.where(below, hi, mid)
    out = 0.5 * (lo + hi)
    out[t == 0] = 0.0
    return out


def _extent_rmsd(ref, u, max_rmsd_A, max_displacement_A, kind, what) -> float | None:
    """Largest RMSD (Å) of a walk along u, from an RMSD or a max per-atom displacement (Å)."""
    if max_rmsd_A is not None and max_displacement_A is not None:
        raise InputError("give either --max-rmsd or --max-displacement, not both")
    if max_rmsd_A is not None:
        if not (max_rmsd_A > 0 and math.isfinite(max_rmsd_A)):
            raise InputError(f"--max-rmsd must be a positive number of Å, got {max_rmsd_A}")
        return float(max_rmsd_A)
    if max_displacement_A is not None:
        if not (max_displacement_A > 0 and math.isfinite(max_displacement_A)):
            raise InputError(f"--max-displacement must be a positive number of Å, got {max_displacement_A}")
        alpha = float(max_displacement_A) / float(np.linalg.norm(u, axis=-1).max())
        return float(_rmsd_of_amplitudes(ref, u, np.array([alpha]), kind)[0])
    return None


def _grid(extent: float | None, n_steps: int | None, spacing: float | None, two_sided: bool) -> np.ndarray:
    """θ values (signed RMSD, Å) of a single-mode walk."""
    if spacing is not None and not (spacing > 0 and math.isfinite(spacing)):
        raise InputError(f"--spacing must be a positive number of Å, got {spacing}")
    if n_steps is not None and int(n_steps) < (3 if two_sided else 2):
        raise InputError(f"--n-steps must be ≥ {3 if two_sided else 2}, got {n_steps}")
    if extent is not None and n_steps is not None and spacing is not None:
        raise InputError("give two of --max-rmsd/--max-displacement, --n-steps and --spacing, not all three")
    if extent is None and spacing is None:
        raise InputError("give the extent of the walk: --max-rmsd or --max-displacement (Å), or --spacing with --n-steps")
    if spacing is None:
        n = int(n_steps or 21)
        return np.linspace(-extent, extent, n) if two_sided else np.linspace(0.0, extent, n)
    if extent is None:
        n = int(n_steps or 21)
        if two_sided:
            if n % 2 == 0:
                raise InputError(f"--n-steps {n} with --spacing on both sides needs an odd number (θ = 0 in the middle)")
            k = np.arange(-(n // 2), n // 2 + 1)
        else:
            k = np.arange(n)
        return k * spacing
    kmax = int(math.floor(extent / spacing + _EPS))
    if kmax < 1:
        raise InputError(f"--spacing {spacing} Å is larger than the extent {extent:.4g} Å; use a smaller spacing")
    k = np.arange(-kmax, kmax + 1) if two_sided else np.arange(kmax + 1)
    return k * spacing


def _walk(ref: np.ndarray, u: np.ndarray, theta_targets: np.ndarray, kind: str, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates (M, N, 3) float64 and measured signed θ for targets (signed RMSD)."""
    alphas = _amplitudes_for_rmsd(ref, u, theta_targets, kind, what) * np.sign(theta_targets)
    coords = ref[None] + alphas[:, None, None] * u[None]
    measured = _rmsd_of_amplitudes(ref, u, alphas, kind) * np.sign(theta_targets)
    return coords, measured


# --------------------------------------------------------------------------- generators

def mode_ensemble(
    modes,
    mode: int = 0,
    *,
    max_rmsd_A: float | None = None,
    max_displacement_A: float | None = None,
    n_steps: int | None = None,
    spacing_A: float | None = None,
    two_sided: bool = True,
    rmsd: str = "unaligned",
    structure: Structure | None = None,
) -> Conformations:
    """Walk along one ANM mode: θ = signed RMSD (Å) to the reference, evenly spaced.

    The extent is ``max_rmsd_A`` (largest |θ|) or ``max_displacement_A`` (largest
    per-atom displacement, Å, converted to the RMSD it gives). The grid is
    ``n_steps`` values from −extent to +extent (``two_sided``; 0 to +extent
    otherwise), or multiples of ``spacing_A`` up to the extent; any two of extent,
    ``n_steps`` and ``spacing_A`` define it (``n_steps`` defaults to 21).

    Returns :class:`Conformations` (θ in Å, labels ``"mode3:+1.200A"``).
    """
    kind = _check_kind(rmsd)
    what = f"mode {mode}"
    u = _mode_vector(modes, mode, "--mode-index")
    top = _topology(modes, structure)
    ref = top.coords_A.astype(np.float64)
    extent = _extent_rmsd(ref, u, max_rmsd_A, max_displacement_A, kind, what)
    targets = _grid(extent, n_steps, spacing_A, two_sided)
    coords, theta = _walk(ref, u, targets, kind, what)
    labels = np.array([f"mode{int(mode)}:{t:+.3f}A" for t in targets])
    return Conformations(topology=top, coords_A=coords.astype(np.float32), theta=theta, labels=labels,
                         frame_indices=np.arange(theta.size))


def two_mode_ensemble(
    modes,
    mode_i: int = 0,
    mode_j: int = 1,
    *,
    max_rmsd_A: float | None = None,
    max_displacement_A: float | None = None,
    spacing_A: float | None = None,
    n_per_side: int | None = None,
    rmsd: str = "unaligned",
    structure: Structure | None = None,
) -> Conformations:
    """Two modes concatenated into one signed order parameter (cryoSBI's apoferritin/hemagglutinin recipe).

    θ < 0: displacement +α·u_i with θ = −RMSD; θ = 0: the reference; θ > 0:
    displacement +α·u_j with θ = +RMSD. All θ are multiples of one spacing
    (``spacing_A``, or the extent / ``n_per_side``, default 25 per side), so the
    grid is monotone and evenly spaced across both sides.

    The extent is ``max_rmsd_A`` (both sides) or ``max_displacement_A`` (largest
    per-atom displacement on each side; the two sides may then reach different
    |θ|). Returns :class:`Conformations` (θ in Å, sorted increasing; labels
    ``"mode0:-1.200A"``, ``"reference"``, ``"mode9:+0.400A"``).
    """
    kind = _check_kind(rmsd)
    if int(mode_i) == int(mode_j):
        raise InputError(f"two-mode ensemble: mode i and mode j are both {mode_i}; give two different modes")
    u_i = _mode_vector(modes, mode_i, "--mode-i")
    u_j = _mode_vector(modes, mode_j, "--mode-j")
    top = _topology(modes, structure)
    ref = top.coords_A.astype(np.float64)
    ext_i = _extent_rmsd(ref, u_i, max_rmsd_A, max_displacement_A, kind, f"mode {mode_i}")
    ext_j = _extent_rmsd(ref, u_j, max_rmsd_A, max_displacement_A, kind, f"mode {mode_j}")
    if spacing_A is not None and not (spacing_A > 0 and math.isfinite(spacing_A)):
        raise InputError(f"--spacing must be a positive number of Å, got {spacing_A}")
    if n_per_side is not None and int(n_per_side) < 1:
        raise InputError(f"--n-per-side must be ≥ 1, got {n_per_side}")
    if ext_i is None:
        if spacing_A is None or n_per_side is None:
            raise InputError("give the extent (--max-rmsd or --max-displacement, Å) or both --spacing and --n-per-side")
        k_i = k_j = int(n_per_side)
        s = float(spacing_A)
    else:
        if spacing_A is not None and n_per_side is not None:
            raise InputError("give --spacing or --n-per-side with an extent, not both")
        s = float(spacing_A) if spacing_A is not None else max(ext_i, ext_j) / int(n_per_side or 25)
        k_i = int(math.floor(ext_i / s + _EPS))
        k_j = int(math.floor(ext_j / s + _EPS))
        if k_i < 1 or k_j < 1:
            raise InputError(f"--spacing {s:.4g} Å exceeds the extent ({ext_i:.4g} Å along mode {mode_i}, "
                             f"{ext_j:.4g} Å along mode {mode_j}); use a smaller spacing")
    neg_t = -s * np.arange(k_i, 0, -1)
    pos_t = s * np.arange(1, k_j + 1)
    c_i, th_i = _walk(ref, u_i, -neg_t, kind, f"mode {mode_i}")  # positive amplitudes along u_i
    c_j, th_j = _walk(ref, u_j, pos_t, kind, f"mode {mode_j}")
    coords = np.concatenate([c_i, ref[None], c_j])
    theta = np.concatenate([-th_i, [0.0], th_j])
    labels = np.array([f"mode{int(mode_i)}:{t:+.3f}A" for t in neg_t] + ["reference"]
                      + [f"mode{int(mode_j)}:{t:+.3f}A" for t in pos_t])
    log.info("two-mode ensemble: %d conformations, θ from %.3f to %.3f Å, spacing %.4g Å (%s RMSD)",
             theta.size, theta[0], theta[-1], s, kind)
    return Conformations(topology=top, coords_A=coords.astype(np.float32), theta=theta, labels=labels,
                         frame_indices=np.arange(theta.size))


def boltzmann_variances(modes, n_modes: int | None = None, kT: float = 1.0, gamma: float | None = None) -> np.ndarray:
    """Per-mode amplitude variances kT / (γ·λ_m) (Å²) for the first ``n_modes`` modes.

    λ_m are the eigenvalues of the unit-spring Hessian. :class:`ANMModes` stores
    eigenvalues that already include the spring constant it was computed with
    (``modes.gamma``), so λ_m = ``modes.eigenvalues / modes.gamma``. ``gamma=None``
    keeps that spring constant (variance kT / eigenvalue); a number re-scales the
    network stiffness. kT and γ share one energy unit (γ per Å²).
    """
    lam_stored = np.asarray(modes.eigenvalues, dtype=np.float64)
    k = lam_stored.size if n_modes is None else int(n_modes)
    if not 1 <= k <= lam_stored.size:
        raise InputError(f"--n-modes {n_modes}: the modes file has {lam_stored.size} modes; use 1..{lam_stored.size}")
    if not (kT > 0 and math.isfinite(kT)):
        raise InputError(f"--kT must be positive, got {kT}")
    lam_stored = lam_stored[:k]
    if np.any(lam_stored <= 1e-10):
        bad = int(np.flatnonzero(lam_stored <= 1e-10)[0])
        raise InputError(f"mode {bad} has eigenvalue {lam_stored[bad]:.3g} (a rigid-body/zero mode): its Boltzmann "
                         "amplitude is unbounded; recompute the modes without trivial modes or use fewer modes")
    if gamma is None:
        return kT / lam_stored
    g = float(gamma)
    if not (g > 0 and math.isfinite(g)):
        raise InputError(f"--gamma must be a positive spring constant, got {gamma}")
    g_modes = float(getattr(modes, "gamma", 1.0))
    if not (g_modes > 0 and math.isfinite(g_modes)):
        raise InputError("--gamma: these modes were computed with distance-dependent springs (a callable γ); their "
                         "eigenvalues already contain γ, so leave --gamma out")
    return kT / (g * lam_stored / g_modes)


def boltzmann_ensemble(
    modes,
    n_samples: int = 100,
    *,
    n_modes: int | None = None,
    kT: float = 1.0,
    gamma: float | None = None,
    seed: int = 0,
    structure: Structure | None = None,
    return_amplitudes: bool = False,
):
    """Thermal samples of the ANM: α_m ~ N(0, kT/(γ·λ_m)) independently over the first ``n_modes`` modes.

    θ = unaligned RMSD (Å) to the reference, i.e. √(Σ α_m²/N) (unsigned).
    Returns :class:`Conformations` (labels ``"boltzmann17"``), and with
    ``return_amplitudes`` also the amplitudes (M, K) in Å.
    """
    if int(n_samples) < 1:
        raise InputError(f"-n/--n-samples must be ≥ 1, got {n_samples}")
    var = boltzmann_variances(modes, n_modes, kT, gamma)
    top = _topology(modes, structure)
    rng = np.random.default_rng(seed)
    amps = rng.standard_normal((int(n_samples), var.size)) * np.sqrt(var)
    ref = np.asarray(modes.coords_A, dtype=np.float64)
    coords = np.asarray(modes.displace(amps), dtype=np.float64)
    theta = np.sqrt(((coords - ref[None]) ** 2).sum(axis=(1, 2)) / ref.shape[0])
    conf = Conformations(topology=top, coords_A=coords.astype(np.float32), theta=theta,
                         labels=np.array([f"boltzmann{m}" for m in range(int(n_samples))]),
                         frame_indices=np.arange(int(n_samples)))
    return (conf, amps) if return_amplitudes else conf
