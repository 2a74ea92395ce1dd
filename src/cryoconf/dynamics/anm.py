"""Anisotropic network model (ANM): Hessian, normal modes, mode files and animations.

Units: coordinates and lengths in Å; spring constants γ in energy/Å² (whatever
unit γ is given in, e.g. kcal/mol/Å²); eigenvalues in the units of γ.

The network: pseudo-atoms i ≠ j closer than the cutoff r_c (d_ij ≤ r_c) are
joined by a harmonic spring of constant γ_ij. The Hessian is the textbook
super-element form (3×3 blocks)::

    H_ij = −γ_ij · r_ij r_ijᵀ / |r_ij|²      (i ≠ j, d_ij ≤ r_c),    H_ii = −Σ_{j≠i} H_ij

with r_ij = x_j − x_i. γ_ij is ``gamma`` (a number), ``gamma(d_ij)`` (a
callable of the distance array in Å), times ``(D0_A / d_ij) ** distance_power``
with D0_A = 3.8 Å (the Cα–Cα virtual bond) when ``distance_power`` ≠ 0.

Eigen-solvers (``method``):

- ``"dense"``: ``scipy.linalg.eigh`` on the dense (3N, 3N) Hessian, only the
  lowest n_modes + 6 eigenpairs (LAPACK ``evr``). Memory 8·(3N)² bytes.
- ``"sparse"``: the Hessian as ``scipy.sparse`` CSC built vectorised from a
  k-d-tree neighbour list; Lanczos (ARPACK ``eigsh``) in shift-invert mode
  around σ = −s, slightly below zero, so that H − σI = H + sI is positive
  definite; it is factorised once with SuperLU (symmetric minimum-degree
  ordering, diagonal pivots). s = ``SHIFT_REL`` × mean diagonal of H.
  A 14,500-residue complex takes ~8 s and < 1 GB on 2 cores
  (``benchmarks/anm_scaling.py``); the dense solver takes 3.5 s for 1207
  residues and > 1 min for 2414 (O(N³) tridiagonalisation).
- ``"auto"``: dense for N ≤ ``DENSE_MAX_ATOMS`` (300) pseudo-atoms, sparse above
  (measured cross-over on 2 cores: equal at ~300, sparse 2× faster at 500, 6× at 1000).

Rigid-body check: the sorted eigenvalues λ_1 ≤ λ_2 ≤ … must have exactly six
(near-)zero values, i.e. max(|λ_1|, …, |λ_6|) ≤ ``ZERO_MODE_RTOL`` · λ_7
(relative to the first non-zero eigenvalue; ``ZERO_MODE_RTOL`` = 1e-6;
numerical zeros are ~1e-13 in units of γ, genuine soft modes ≥ 1e-5).
The contact graph is first checked for connectivity
(``scipy.sparse.csgraph.connected_components``): a network in several pieces
has six zero modes per piece and is an :class:`InputError` that says how many
components there are and the smallest cutoff that connects them.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import scipy.linalg
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from scipy.sparse.csgraph import connected_components, minimum_spanning_tree
from scipy.spatial import cKDTree

from cryoconf.errors import InputError
from cryoconf.structure.model import Conformations, Structure
from cryoconf.atomic_write import atomic_path

__all__ = [
    "ANMModes",
    "anm_hessian",
    "compute_anm_modes",
    "write_mode_animation",
    "mode_trajectory",
    "contact_components",
    "D0_A",
    "DENSE_MAX_ATOMS",
    "ZERO_MODE_RTOL",
    "SHIFT_REL",
]

logger = logging.getLogger("cryoconf.dynamics")

#: Reference distance (Å) of the distance-dependent spring constant γ·(D0_A/d)^p.
D0_A = 3.8
#: ``method="auto"`` uses the dense solver up to this many pseudo-atoms (measured cross-over).
DENSE_MAX_ATOMS = 300
#: Six eigenvalues count as the rigid-body (zero) modes when max |λ_1..6| ≤ ZERO_MODE_RTOL · λ_7.
ZERO_MODE_RTOL = 1e-6
#: Shift-invert: σ = −SHIFT_REL × (mean diagonal element of H).
SHIFT_REL = 1e-6
#: Largest number of components for which the connecting cutoff is computed exactly.
_MAX_COMPONENTS_FOR_CUTOFF = 200
#: Pairs closer than this (Å) are duplicated atoms.
_MIN_DISTANCE_A = 1e-3

# --------------------------------------------------------------------------- input checks


def _atom_label(topology: Structure | None, i: int) -> str:
    if topology is None:
        return f"pseudo-atom {i}"
    chain = topology.chain_ids[i] or "_"
    return f"pseudo-atom {i} ({chain}:{topology.residue_names[i]}{int(topology.residue_numbers[i])} {topology.atom_names[i]})"


def _as_coords(coords_or_structure, topology: Structure | None = None) -> tuple[np.ndarray, Structure | None]:
    """(N, 3) float64 coordinates and the topology (a Structure, or None)."""
    obj = coords_or_structure
    if isinstance(obj, Conformations):
        if len(obj) != 1:
            raise InputError(
                f"ANM needs one conformation, got a Conformations with {len(obj)}; pass conf.structure(m) "
                "for the reference conformation m"
            )
        obj = obj.structure(0)
    if isinstance(obj, Structure):
        if topology is None:
            topology = obj
        coords = obj.coords_A
    else:
        coords = obj
    try:
        x = np.asarray(coords, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"ANM coordinates must be an (N, 3) array in Å or a Structure, got {type(coords).__name__}") from exc
    if x.ndim != 2 or x.shape[1] != 3:
        raise InputError(f"ANM coordinates have shape {x.shape}, expected (N, 3) in Å (one row per pseudo-atom)")
    if x.shape[0] < 3:
        raise InputError(f"ANM needs at least 3 pseudo-atoms, got {x.shape[0]}")
    if not np.all(np.isfinite(x)):
        i = int(np.flatnonzero(~np.isfinite(x).all(axis=1))[0])
        raise InputError(f"ANM coordinates: {_atom_label(topology, i)} is NaN/inf; fix the structure")
    if topology is not None and topology.n_atoms != x.shape[0]:
        raise InputError(
            f"ANM topology has {topology.n_atoms} pseudo-atoms but the coordinates have {x.shape[0]}; "
            "pass the Structure the coordinates belong to"
        )
    return x, topology


def _check_parameters(cutoff_A, gamma, distance_power) -> tuple[float, float]:
    try:
        cutoff = float(cutoff_A)
    except (TypeError, ValueError):
        raise InputError(f"ANM cutoff must be a distance in Å, got {cutoff_A!r}") from None
    if not (np.isfinite(cutoff) and cutoff > 0):
        raise InputError(f"ANM cutoff must be a positive distance in Å (typical Cα: 12–15 Å), got {cutoff_A!r}")
    if not callable(gamma):
        try:
            g = float(gamma)
        except (TypeError, ValueError):
            raise InputError(f"ANM gamma must be a positive number or a callable of the distance (Å), got {gamma!r}") from None
        if not (np.isfinite(g) and g > 0):
            raise InputError(f"ANM gamma (spring constant) must be positive, got {gamma!r}")
    try:
        p = float(distance_power)
    except (TypeError, ValueError):
        raise InputError(f"ANM distance_power must be a number (0 = constant springs), got {distance_power!r}") from None
    if not np.isfinite(p):
        raise InputError(f"ANM distance_power must be finite, got {distance_power!r}")
    return cutoff, p


def _gamma_description(gamma, distance_power: float) -> str:
    base = getattr(gamma, "__name__", repr(gamma)) if callable(gamma) else repr(float(gamma))
    base = f"callable {base}(d)" if callable(gamma) else f"constant {base}"
    if distance_power:
        base += f" * ({D0_A}/d)^{distance_power:g}"
    return base


# --------------------------------------------------------------------------- network


def _contacts(x: np.ndarray, cutoff: float, topology: Structure | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs i < j with d_ij ≤ cutoff: (i (P,), j (P,), r_ij = x_j − x_i (P, 3))."""
    pairs = cKDTree(x).query_pairs(cutoff, output_type="ndarray")
    if pairs.size == 0:
        pairs = np.zeros((0, 2), dtype=np.int64)
    i, j = pairs[:, 0].astype(np.int64), pairs[:, 1].astype(np.int64)
    r = x[j] - x[i]
    d2 = np.einsum("pk,pk->p", r, r)
    close = d2 < _MIN_DISTANCE_A ** 2
    if np.any(close):
        k = int(np.flatnonzero(close)[0])
        raise InputError(
            f"ANM: {_atom_label(topology, int(i[k]))} and {_atom_label(topology, int(j[k]))} have the same "
            f"coordinates ({int(close.sum())} such pair(s)); remove duplicated atoms/alternate locations"
        )
    return i, j, r


def _spring_constants(d: np.ndarray, gamma, distance_power: float) -> np.ndarray:
    if callable(gamma):
        try:
            g = np.asarray(gamma(d.copy()), dtype=np.float64)
        except Exception as exc:  # a user callable: report what failed
            raise InputError(f"ANM gamma callable failed on a distance array (Å): {exc}") from exc
        try:
            g = np.broadcast_to(g, d.shape).astype(np.float64)
        except ValueError:
            raise InputError(
                f"ANM gamma callable returned shape {g.shape} for {d.shape[0]} distances; return one value per distance"
            ) from None
        if not np.all(np.isfinite(g)) or np.any(g < 0):
            raise InputError("ANM gamma callable returned negative or non-finite spring constants; return γ(d) ≥ 0")
    else:
        g = np.full(d.shape, float(gamma))
    if distance_power:
        g = g * (D0_A / d) ** distance_power
    return g


def contact_components(coords_A, cutoff_A: float = 15.0) -> tuple[int, np.ndarray]:
    """Connected components of the contact graph: (number, label per pseudo-atom (N,))."""
    x, _ = _as_coords(coords_A)
    i, j, _ = _contacts(x, float(cutoff_A))
    return _components(x.shape[0], i, j)


def _components(n: int, i: np.ndarray, j: np.ndarray) -> tuple[int, np.ndarray]:
    graph = sp.coo_matrix((np.ones(i.size, dtype=np.int8), (i, j)), shape=(n, n)).tocsr()
    n_comp, labels = connected_components(graph, directed=False)
    return int(n_comp), labels


def _connecting_cutoff(x: np.ndarray, labels: np.ndarray, n_comp: int) -> float | None:
    """Smallest cutoff (Å) that joins all components: the longest edge of the minimum spanning
    tree over components weighted by their closest approach (exact; None for very many components)."""
    if n_comp > _MAX_COMPONENTS_FOR_CUTOFF:
        return None
    order = np.argsort(labels, kind="stable")
    bounds = np.r_[0, np.cumsum(np.bincount(labels, minlength=n_comp))]
    groups = [x[order[bounds[c]:bounds[c + 1]]] for c in range(n_comp)]
    trees = [cKDTree(g) for g in groups]
    dist = np.zeros((n_comp, n_comp))
    for a in range(n_comp):
        for b in range(a + 1, n_comp):
            small, big = (a, b) if len(groups[a]) <= len(groups[b]) else (b, a)
            dist[a, b] = trees[big].query(groups[small], k=1)[0].min()
    mst = minimum_spanning_tree(sp.csr_matrix(dist))
    return float(mst.data.max()) if mst.nnz else 0.0


def _check_connected(x, i, j, cutoff, topology) -> None:
    n_comp, labels = _components(x.shape[0], i, j)
    if n_comp == 1:
        return
    sizes = np.bincount(labels)
    firsts = [_atom_label(topology, int(np.flatnonzero(labels == c)[0])) for c in range(min(n_comp, 5))]
    need = _connecting_cutoff(x, labels, n_comp)
    hint = (f"the smallest cutoff that connects it is {need:.2f} Å (a rigid network needs several springs "
            f"between the parts, so use a few Å more, e.g. cutoff_A / --cutoff {np.ceil(need) + 3:.0f})"
            if need is not None else "use a larger cutoff")
    size_list = ", ".join(str(int(s)) for s in sizes[:10]) + (", …" if n_comp > 10 else "")
    raise InputError(
        f"ANM: the contact network at cutoff {cutoff:g} Å has {n_comp} disconnected components "
        f"(sizes {size_list}; first atoms: {'; '.join(firsts)}{'; …' if n_comp > 5 else ''}), so it has "
        f"{6 * n_comp} zero modes instead of 6; {hint}, or compute the modes of each part separately"
    )


# --------------------------------------------------------------------------- Hessian


def _hessian_blocks(x, i, j, r, gamma, distance_power):
    """Off-diagonal blocks B_p = −γ_p r rᵀ/|r|² (P, 3, 3) and diagonal blocks (N, 3, 3)."""
    n = x.shape[0]
    d2 = np.einsum("pk,pk->p", r, r)
    g = _spring_constants(np.sqrt(d2), gamma, distance_power)
    blocks = -(g / d2)[:, None, None] * r[:, :, None] * r[:, None, :]
    # H_ii = −Σ_j H_ij: accumulate −B over both ends of each pair (vectorised with bincount)
    flat = -blocks.reshape(-1, 9)
    idx = np.concatenate([i, j])[:, None] * 9 + np.arange(9)
    diag = np.bincount(idx.ravel(), weights=np.concatenate([flat, flat]).ravel(), minlength=9 * n).reshape(n, 3, 3)
    return blocks, diag


def _assemble(n, i, j, blocks, diag, sparse: bool):
    if not sparse:
        h = np.zeros((n, 3, n, 3))
        h[i, :, j, :] = blocks
        h[j, :, i, :] = blocks  # blocks are symmetric
        ar = np.arange(n)
        h[ar, :, ar, :] = diag
        return h.reshape(3 * n, 3 * n)
    a = np.arange(3)
    bi = np.concatenate([i, j, np.arange(n)])
    bj = np.concatenate([j, i, np.arange(n)])
    rows = (3 * bi[:, None, None] + a[None, :, None]) + np.zeros((1, 1, 3), dtype=np.int64)
    cols = (3 * bj[:, None, None] + a[None, None, :]) + np.zeros((1, 3, 1), dtype=np.int64)
    vals = np.concatenate([blocks, blocks, diag])
    h = sp.csr_matrix((vals.ravel(), (rows.ravel(), cols.ravel())), shape=(3 * n, 3 * n))
    h.sum_duplicates()
    return h


def anm_hessian(coords_A, cutoff_A: float = 15.0, gamma=1.0, distance_power: float = 0.0, sparse: bool = False):
    """The ANM Hessian (3N, 3N) of pseudo-atoms at ``coords_A`` (N, 3) Å.

    Args:
        coords_A: (N, 3) coordinates (Å) or a :class:`Structure`.
        cutoff_A: contact cutoff r_c (Å); pairs with d ≤ r_c are springs.
        gamma: spring constant γ (energy/Å²), or a callable γ(d) of the distance array (Å).
        distance_power: p ≠ 0 multiplies γ by (3.8 Å / d)^p.
        sparse: return a ``scipy.sparse.csr_matrix`` instead of a dense ndarray.

    Returns:
        float64 (3N, 3N): row/column 3i+k is coordinate k (x, y, z) of pseudo-atom i.
        The network is not checked for connectivity here (see :func:`compute_anm_modes`).
    """
    x, top = _as_coords(coords_A)
    cutoff, p = _check_parameters(cutoff_A, gamma, distance_power)
    i, j, r = _contacts(x, cutoff, top)
    blocks, diag = _hessian_blocks(x, i, j, r, gamma, p)
    return _assemble(x.shape[0], i, j, blocks, diag, sparse)


# --------------------------------------------------------------------------- eigen-solvers


def _dense_eigh(h: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    k = min(k, h.shape[0])
    w, v = scipy.linalg.eigh(h, subset_by_index=[0, k - 1], overwrite_a=True, check_finite=False)
    return w, v


def _sparse_eigsh(h: sp.spmatrix, k: int) -> tuple[np.ndarray, np.ndarray]:
    n3 = h.shape[0]
    shift = SHIFT_REL * float(h.diagonal().mean())
    a = (h + shift * sp.identity(n3, format="csr")).tocsc()
    # H + sI is symmetric positive definite: symmetric ordering, no pivoting needed
    lu = spla.splu(a, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0, options={"SymmetricMode": True})
    del a
    op = spla.LinearOperator((n3, n3), matvec=lu.solve, dtype=np.float64)
    v0 = np.random.default_rng(0).standard_normal(n3)
    ncv = min(n3, max(2 * k + 1, k + 20))
    try:
        w, v = spla.eigsh(h, k=k, sigma=-shift, which="LM", OPinv=op, v0=v0, ncv=ncv, tol=0)
    except spla.ArpackNoConvergence:
        ncv = min(n3, 2 * ncv + 20)
        logger.info("ANM: Lanczos did not converge; retrying with %d Lanczos vectors", ncv)
        try:
            w, v = spla.eigsh(h, k=k, sigma=-shift, which="LM", OPinv=op, v0=v0, ncv=ncv, tol=0, maxiter=100 * n3)
        except spla.ArpackNoConvergence as exc:
            raise RuntimeError(
                f"ANM: the sparse eigen-solver did not converge for {k} eigenpairs of {n3 // 3} pseudo-atoms; "
                "try method='dense' (small structures) or fewer modes"
            ) from exc
    order = np.argsort(w)
    return w[order], v[:, order]


def _fix_signs(v: np.ndarray) -> np.ndarray:
    """Deterministic sign: the largest-magnitude component of each eigenvector is positive."""
    idx = np.argmax(np.abs(v), axis=0)
    s = np.sign(v[idx, np.arange(v.shape[1])])
    s[s == 0] = 1.0
    return v * s


def _check_zero_modes(w: np.ndarray, cutoff: float, n: int, h_scale: float) -> None:
    """Exactly six eigenvalues with |λ| ≤ ZERO_MODE_RTOL · λ_7 (see the module docstring).

    ``h_scale`` (mean diagonal element of H) only sizes the error message: eigenvalues
    below 1e-9·h_scale are reported as zero modes.
    """
    if w.size < 7:
        return
    lam7 = w[6]
    if lam7 > 0 and np.max(np.abs(w[:6])) <= ZERO_MODE_RTOL * lam7:
        return
    n_zero = int(np.sum(np.abs(w) <= 1e-9 * h_scale))
    shown = np.array2string(w[:8], precision=3, max_line_width=1000)[:-1] + (" …]" if w.size > 8 else "]")
    if n_zero > 6:
        more = "at least " if n_zero == w.size else ""
        raise InputError(
            f"ANM: the network of {n} pseudo-atoms at cutoff {cutoff:g} Å has {more}{n_zero} zero modes instead of "
            f"6 (lowest eigenvalues {shown}): some atoms are held by too few springs to be rigid. Use a larger "
            "cutoff (Cα networks: 12–15 Å) or remove loosely attached atoms"
        )
    raise InputError(
        f"ANM: expected six rigid-body zero modes but the lowest eigenvalues are {shown} "
        f"(|λ_1..6| must be ≤ {ZERO_MODE_RTOL:g}·λ_7); are the {n} pseudo-atoms collinear or degenerate?"
    )


def _dense_memory_ok(n: int) -> None:
    need = 3 * (3 * n) ** 2 * 8
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    if need > total:
        raise InputError(
            f"ANM method='dense' for {n} pseudo-atoms needs ~{need / 2**30:.0f} GiB (this machine has "
            f"{total / 2**30:.0f} GiB); use method='sparse' (--method sparse) or 'auto'"
        )


# --------------------------------------------------------------------------- modes


@dataclass
class ANMModes:
    """Non-rigid ANM normal modes of one reference structure.

    Attributes:
        eigenvalues: (K,) float64, ascending, in the units of γ (e.g. kcal/mol/Å²).
        modes: (K, N, 3) float64; mode m as a 3N vector has unit norm (Σ modes[m]² = 1).
        coords_A: (N, 3) float64 reference coordinates (Å).
        cutoff_A: contact cutoff (Å).
        gamma: base spring constant (NaN when γ was a callable).
        topology: the pseudo-atoms' Structure, or None.
        distance_power: p of γ·(3.8 Å/d)^p (0 = constant springs).
        gamma_spec: human-readable description of the spring constants.
        method: the eigen-solver used (``"dense"`` or ``"sparse"``; informational).
    """

    eigenvalues: np.ndarray
    modes: np.ndarray
    coords_A: np.ndarray
    cutoff_A: float
    gamma: float
    topology: Structure | None = None
    distance_power: float = 0.0
    gamma_spec: str = field(default="")
    method: str = ""

    def __post_init__(self) -> None:
        self.eigenvalues = np.asarray(self.eigenvalues, dtype=np.float64).reshape(-1)
        self.modes = np.asarray(self.modes, dtype=np.float64)
        self.coords_A = np.asarray(self.coords_A, dtype=np.float64)
        self.cutoff_A = float(self.cutoff_A)
        self.gamma = float(self.gamma)
        self.distance_power = float(self.distance_power)
        k = self.eigenvalues.shape[0]
        if self.coords_A.ndim != 2 or self.coords_A.shape[1] != 3:
            raise InputError(f"ANMModes.coords_A has shape {self.coords_A.shape}, expected (N, 3) in Å")
        n = self.coords_A.shape[0]
        if self.modes.shape != (k, n, 3):
            raise InputError(f"ANMModes.modes has shape {self.modes.shape}, expected ({k}, {n}, 3) (K modes, N atoms)")
        if self.topology is not None and self.topology.n_atoms != n:
            raise InputError(f"ANMModes.topology has {self.topology.n_atoms} pseudo-atoms, the modes {n}")
        if not self.gamma_spec:
            self.gamma_spec = _gamma_description(self.gamma, self.distance_power)

    def __len__(self) -> int:
        return int(self.eigenvalues.shape[0])

    @property
    def n_atoms(self) -> int:
        """Number of pseudo-atoms N."""
        return int(self.coords_A.shape[0])

    def displace(self, amplitudes) -> np.ndarray:
        """Coordinates (..., N, 3) Å = coords_A + Σ_m α_m · modes[m] for amplitudes α (..., K'), K' ≤ K.

        α is in Å along the unit-norm 3N mode vector: one mode at amplitude α moves
        the structure by an RMSD (no superposition) of |α|/√N Å.
        """
        a = np.asarray(amplitudes, dtype=np.float64)
        if a.ndim == 0:
            a = a[None]
        kk = a.shape[-1]
        if kk > len(self):
            raise InputError(f"ANMModes.displace: got {kk} amplitudes but only {len(self)} modes were computed; "
                             "compute more modes (n_modes) or pass fewer amplitudes")
        return self.coords_A + np.einsum("...k,kni->...ni", a, self.modes[:kk])

    def amplitude_for(self, k: int, *, rmsd_A: float | None = None, max_displacement_A: float | None = None) -> float:
        """Amplitude α (Å) of mode ``k`` that gives this RMSD to the reference (no superposition)
        or this largest per-atom displacement."""
        k = self._check_k(k)
        if (rmsd_A is None) == (max_displacement_A is None):
            raise InputError("give exactly one of rmsd_A or max_displacement_A (Å)")
        value = rmsd_A if rmsd_A is not None else max_displacement_A
        name = "rmsd_A" if rmsd_A is not None else "max_displacement_A"
        if not (np.isfinite(value) and value > 0):
            raise InputError(f"{name} must be a positive distance in Å, got {value!r}")
        if rmsd_A is not None:
            return float(rmsd_A) * np.sqrt(self.n_atoms)
        return float(max_displacement_A) / float(np.linalg.norm(self.modes[k], axis=1).max())

    def _check_k(self, k) -> int:
        if int(k) != k or not 0 <= int(k) < len(self):
            raise InputError(f"mode index {k!r} out of range: {len(self)} non-rigid modes, indices 0..{len(self) - 1}")
        return int(k)

    # ---- files

    def save(self, path) -> None:
        """Write an ``.npz`` (atomically): eigenvalues, modes (K, N, 3), coords_A, cutoff, γ spec,
        the topology's residue metadata (if any) and the cryoconf version."""
        from cryoconf import __version__

        path = Path(path)
        arrays = {
            "format": np.array("cryoconf.anm"),
            "format_version": np.array(1),
            "cryoconf_version": np.array(__version__),
            "eigenvalues": self.eigenvalues,
            "modes": self.modes,
            "coords_A": self.coords_A,
            "cutoff_A": np.array(self.cutoff_A),
            "gamma": np.array(self.gamma),
            "distance_power": np.array(self.distance_power),
            "d0_A": np.array(D0_A),
            "gamma_spec": np.array(self.gamma_spec),
            "method": np.array(self.method),
            "has_topology": np.array(self.topology is not None),
        }
        if self.topology is not None:
            for f in fields(Structure):
                if f.name != "coords_A":
                    arrays[f"topology_{f.name}"] = np.asarray(getattr(self.topology, f.name))
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)

    @classmethod
    def load(cls, path) -> "ANMModes":
        """Read an ``.npz`` written by :meth:`save`."""
        path = Path(path)
        if not path.exists():
            raise InputError(f"{path}: file not found; check the path")
        try:
            with np.load(path, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
        except Exception as exc:
            raise InputError(f"{path}: cannot be read as an ANM modes .npz ({exc}); write it with ANMModes.save "
                             "or `cryoconf anm`") from exc
        missing = [k for k in ("eigenvalues", "modes", "coords_A", "cutoff_A", "gamma") if k not in data]
        if missing:
            raise InputError(f"{path}: not a cryoconf ANM modes file (missing {', '.join(missing)}); "
                             "write it with ANMModes.save or `cryoconf anm`")
        topology = None
        if bool(data.get("has_topology", np.array(False))):
            kw = {f.name: data[f"topology_{f.name}"] for f in fields(Structure) if f.name != "coords_A"}
            topology = Structure(coords_A=data["coords_A"], **kw)
        return cls(
            eigenvalues=data["eigenvalues"], modes=data["modes"], coords_A=data["coords_A"],
            cutoff_A=float(data["cutoff_A"]), gamma=float(data["gamma"]), topology=topology,
            distance_power=float(data.get("distance_power", 0.0)), gamma_spec=str(data.get("gamma_spec", "")),
            method=str(data.get("method", "")),
        )


def compute_anm_modes(
    coords_A_or_structure,
    n_modes: int | None = 20,
    cutoff_A: float = 15.0,
    gamma=1.0,
    distance_power: float = 0.0,
    method: str = "auto",
    topology: Structure | None = None,
) -> ANMModes:
    """The ``n_modes`` lowest non-rigid ANM modes of a structure.

    Args:
        coords_A_or_structure: (N, 3) coordinates (Å), a :class:`Structure`, or a
            single-conformation :class:`Conformations`.
        n_modes: number of non-rigid modes K (≤ 3N − 6); None = all (dense only).
        cutoff_A: contact cutoff (Å); d ≤ cutoff are springs.
        gamma: spring constant γ (energy/Å²) or a callable γ(d) of the distance array (Å).
        distance_power: p ≠ 0 multiplies γ by (3.8 Å / d)^p.
        method: ``"auto"`` (dense up to ``DENSE_MAX_ATOMS`` pseudo-atoms), ``"dense"`` or ``"sparse"``.
        topology: the pseudo-atoms' Structure (kept with the modes for PDB output); taken from
            the input when that is a Structure.

    Returns:
        :class:`ANMModes` (the six rigid-body modes dropped).

    Raises:
        InputError: bad parameters; a disconnected contact network (with the number of components
        and the smallest connecting cutoff); not exactly six zero modes.
    """
    x, top = _as_coords(coords_A_or_structure, topology)
    cutoff, p = _check_parameters(cutoff_A, gamma, distance_power)
    n = x.shape[0]
    max_modes = 3 * n - 6
    if n_modes is None:
        n_modes = max_modes
    if int(n_modes) != n_modes or not 1 <= int(n_modes) <= max_modes:
        raise InputError(f"ANM n_modes must be 1..{max_modes} (3N − 6 for N = {n} pseudo-atoms), got {n_modes!r}")
    n_modes = int(n_modes)
    if method not in ("auto", "dense", "sparse"):
        raise InputError(f"ANM method must be 'auto', 'dense' or 'sparse', got {method!r}")
    k = n_modes + 6
    if method == "auto":
        method = "dense" if n <= DENSE_MAX_ATOMS or k >= 3 * n // 2 else "sparse"
    if method == "sparse" and k >= 3 * n - 1:
        logger.info("ANM: %d modes of %d pseudo-atoms need the dense solver", n_modes, n)
        method = "dense"
    if method == "dense":
        _dense_memory_ok(n)

    i, j, r = _contacts(x, cutoff, top)
    blocks, diag = _hessian_blocks(x, i, j, r, gamma, p)
    positive = np.abs(blocks).reshape(len(blocks), -1).max(axis=1) > 0 if len(blocks) else np.zeros(0, bool)
    _check_connected(x, i[positive], j[positive], cutoff, top)
    h_scale = float(np.einsum("nii->", diag)) / (3 * n)
    h = _assemble(n, i, j, blocks, diag, sparse=(method == "sparse"))
    del blocks, diag
    logger.info("ANM: %d pseudo-atoms, %d contacts within %g Å, %s solver, %d modes", n, len(i), cutoff, method, n_modes)
    w, v = _dense_eigh(h, k) if method == "dense" else _sparse_eigsh(h, k)
    del h
    _check_zero_modes(w, cutoff, n, h_scale)
    v = _fix_signs(v[:, 6:k])
    return ANMModes(
        eigenvalues=w[6:k].copy(), modes=v.T.reshape(n_modes, n, 3).copy(), coords_A=x, cutoff_A=cutoff,
        gamma=float("nan") if callable(gamma) else float(gamma), topology=top, distance_power=p,
        gamma_spec=_gamma_description(gamma, p), method=method,
    )


# --------------------------------------------------------------------------- animation


def _generic_topology(n: int) -> Structure:
    return Structure(
        coords_A=np.zeros((n, 3)), atom_names=np.full(n, "CA"), residue_names=np.full(n, "ALA"),
        residue_numbers=np.arange(1, n + 1), chain_ids=np.full(n, "A"), amplitudes_e=np.ones(n),
        sigmas_A=np.ones(n), residue_index=np.arange(n), chain_breaks=np.arange(n) == 0,
    )


def mode_trajectory(modes: ANMModes, k: int, *, rmsd_A: float | None = None, max_displacement_A: float | None = None,
                    n_frames: int = 20) -> np.ndarray:
    """Coordinates (n_frames, N, 3) Å of an oscillation along mode ``k``: α_f = −A·cos(2πf/n_frames).

    Frame 0 is at −A, frame n_frames/2 (even n_frames) at +A; the cycle loops smoothly.
    A is set by ``rmsd_A`` (RMSD to the reference without superposition, Å) or by
    ``max_displacement_A`` (largest per-atom displacement, Å); default RMSD 2 Å.
    """
    if rmsd_A is None and max_displacement_A is None:
        rmsd_A = 2.0
    amp = modes.amplitude_for(k, rmsd_A=rmsd_A, max_displacement_A=max_displacement_A)
    if int(n_frames) != n_frames or n_frames < 2:
        raise InputError(f"animation n_frames must be an integer ≥ 2, got {n_frames!r}")
    alpha = -amp * np.cos(2 * np.pi * np.arange(int(n_frames)) / int(n_frames))
    return modes.coords_A + alpha[:, None, None] * modes.modes[k][None]


def write_mode_animation(path, modes: ANMModes, k: int, *, rmsd_A: float | None = None,
                         max_displacement_A: float | None = None, n_frames: int = 20) -> None:
    """Write mode ``k`` (0-based among the non-rigid modes) as a multi-model PDB oscillation.

    See :func:`mode_trajectory` for the frames and amplitude (``rmsd_A`` or
    ``max_displacement_A`` in Å; default RMSD 2 Å). Uses the modes' topology for
    residue names and chains, or a generic poly-ALA Cα trace (chain A, residues 1..N) when there is none.
    """
    from cryoconf.structure.writers import write_pdb

    coords = mode_trajectory(modes, k, rmsd_A=rmsd_A, max_displacement_A=max_displacement_A, n_frames=n_frames)
    top = modes.topology if modes.topology is not None else _generic_topology(modes.n_atoms)
    write_pdb(path, coords, topology=top)
