"""Structural metrics between ensembles: EMD-RMSD, paired RMSD, per-residue errors, bonds, clashes.

Units: Å. Coordinates are (M, N, 3) ensembles (or (N, 3) single structures) of
pseudo-atoms sharing one topology; all RMSDs go through
:mod:`cryoconf.dynamics.alignment` (batched, reflection-safe Kabsch, float64).

**EMD-RMSD** (Prins et al., appendix G, after Rosenbaum et al. 2021): the
earth mover's distance between the two empirical distributions of structures,
with uniform weights 1/M and 1/K, and the RMSD (Å, after Kabsch superposition
of each pair when ``align``) as the ground cost — a Wasserstein-1 distance, not
a root of squared costs::

    EMD-RMSD(A, B) = min_π Σ_ij π_ij · RMSD(a_i, b_j),
    π ≥ 0,  Σ_j π_ij = 1/M,  Σ_i π_ij = 1/K.

For M = K the optimum is a one-to-one pairing (Birkhoff), so this is exactly
Prins et al.'s ``min_S (1/K) Σ s_ij RMSD(c_i, c_j)`` over permutation matrices,
solved by linear assignment (:func:`scipy.optimize.linear_sum_assignment`). For
M ≠ K the transport LP is solved exactly with HiGHS (dual simplex, so the plan
is a vertex with at most M + K − 1 non-zero entries).

**Structural checks** work on the *backbone trace*: one anchor pseudo-atom per
residue (Cα; C1′ for nucleotides; otherwise the residue's first pseudo-atom),
and residue-level segment starts (chain ends and chain breaks) taken from a
topology — in evaluation, the ground truth's, so that a stretched predicted
bond is measured and not mistaken for a break.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.optimize
import scipy.sparse
import torch
from scipy.spatial import cKDTree

from cryoconf.dynamics.alignment import as_tensor, pairwise_rmsd, rmsd, superpose
from cryoconf.errors import InputError

__all__ = [
    "EMDResult",
    "ResidueProfile",
    "emd_from_cost",
    "emd_rmsd",
    "rmsd_matrix",
    "paired_rmsd",
    "per_atom_squared_error",
    "per_residue_error",
    "backbone_trace",
    "bond_length_stats",
    "clash_counts",
    "IDEAL_CA_CA_A",
    "BOND_TOLERANCE_A",
    "CLASH_CUTOFF_A",
]

#: Ideal distance between consecutive Cα (trans peptide), Å.
IDEAL_CA_CA_A = 3.8
#: Default tolerance around the ideal Cα–Cα distance, Å: |d − 3.8| > this counts as outside.
BOND_TOLERANCE_A = 0.5
#: Two anchors of non-consecutive residues closer than this (Å) are a clash.
CLASH_CUTOFF_A = 4.0

# floats of working memory for one chunk of batched superpositions (≈ 160 MB in float64 with temporaries)
_ELEMENT_BUDGET = 4_000_000


def _coords(x, name: str) -> torch.Tensor:
    t = as_tensor(x)
    if t.ndim == 2:
        t = t[None]
    if t.ndim != 3 or t.shape[-1] != 3:
        raise InputError(f"{name} has shape {tuple(t.shape)}; expected (M, N, 3) or (N, 3) coordinates in Å")
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise InputError(f"{name} has shape {tuple(t.shape)}: it holds no structures or no atoms")
    if not bool(torch.isfinite(t).all()):
        raise InputError(f"{name} contains NaN or infinite coordinates")
    return t


def _same_atoms(a: torch.Tensor, b: torch.Tensor, names=("pred", "truth")) -> None:
    if a.shape[1] != b.shape[1]:
        raise InputError(
            f"{names[0]} has {a.shape[1]} pseudo-atoms per structure but {names[1]} has {b.shape[1]}; "
            "compare structures of the same topology (same residues and coarse-graining mode)"
        )


# ---------------------------------------------------------------------------------------------- RMSD


def rmsd_matrix(a, b, align: bool = True, chunk_size: int | None = None) -> np.ndarray:
    """RMSD matrix (M, K) in Å between every structure of ``a`` (M, N, 3) and ``b`` (K, N, 3).

    Memory bounded: rows are processed in chunks (default sized to a few million floats).
    """
    a, b = _coords(a, "a"), _coords(b, "b")
    _same_atoms(a, b, ("a", "b"))
    if chunk_size is None:
        chunk_size = max(1, _ELEMENT_BUDGET // (b.shape[0] * b.shape[1] * 3))
    return pairwise_rmsd(a, b, align=align, chunk_size=chunk_size).numpy()


def paired_rmsd(a, b, align: bool = True) -> np.ndarray:
    """Per-particle RMSD (M,) in Å between ``a[m]`` and ``b[m]`` (same order), after superposition if ``align``."""
    a, b = _coords(a, "a"), _coords(b, "b")
    _same_atoms(a, b, ("a", "b"))
    if a.shape[0] != b.shape[0]:
        raise InputError(f"paired RMSD needs the same number of structures; got {a.shape[0]} and {b.shape[0]}")
    step = max(1, _ELEMENT_BUDGET // (a.shape[1] * 3))
    return torch.cat([rmsd(a[i:i + step], b[i:i + step], align=align) for i in range(0, a.shape[0], step)]).numpy()


# ----------------------------------------------------------------------------------------------- EMD


@dataclass
class EMDResult:
    """Optimal transport between two ensembles with uniform weights.

    Attributes:
        distance: EMD = Σ_ij π_ij · cost_ij (Å when the cost is the RMSD).
        plan: (M, K) transport plan π; rows sum to 1/M, columns to 1/K.
        cost: (M, K) ground cost (RMSD, Å).
    """

    distance: float
    plan: np.ndarray
    cost: np.ndarray

    @property
    def pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Non-zero entries of the plan: (rows i, columns j, masses π_ij), row-major order."""
        i, j = np.nonzero(self.plan)
        return i, j, self.plan[i, j]

    @property
    def row_cost(self) -> np.ndarray:
        """(M,) cost of each row structure to its match(es): Σ_j π_ij d_ij / Σ_j π_ij (the RMSD to its partner when M = K)."""
        return (self.plan * self.cost).sum(1) / self.plan.sum(1)

    @property
    def col_cost(self) -> np.ndarray:
        """(K,) cost of each column structure to its match(es)."""
        return (self.plan * self.cost).sum(0) / self.plan.sum(0)


def emd_from_cost(cost) -> EMDResult:
    """Exact earth mover's distance for a cost matrix (M, K) between uniform distributions.

    M = K: linear assignment (the optimal plan is a permutation / M). M ≠ K: the
    transport LP solved by HiGHS dual simplex (a vertex solution). Returns an
    :class:`EMDResult` with ``distance = Σ π_ij cost_ij``.
    """
    c = np.asarray(cost, dtype=np.float64)
    if c.ndim != 2 or c.size == 0:
        raise InputError(f"cost matrix has shape {c.shape}; expected (M, K) with M, K ≥ 1")
    if not np.isfinite(c).all():
        raise InputError("cost matrix contains NaN or infinite entries")
    m, k = c.shape
    if m == k:
        rows, cols = scipy.optimize.linear_sum_assignment(c)
        plan = np.zeros_like(c)
        plan[rows, cols] = 1.0 / m
    elif m == 1 or k == 1:
        plan = np.full_like(c, 1.0 / (m * k))
    else:
        # variables π_ij, row-major; equality constraints: row sums 1/M, column sums 1/K
        idx = np.arange(m * k)
        a_rows = scipy.sparse.csr_matrix((np.ones(m * k), (idx // k, idx)), shape=(m, m * k))
        a_cols = scipy.sparse.csr_matrix((np.ones(m * k), (idx % k, idx)), shape=(k, m * k))
        a_eq = scipy.sparse.vstack([a_rows, a_cols]).tocsr()
        b_eq = np.concatenate([np.full(m, 1.0 / m), np.full(k, 1.0 / k)])
        res = scipy.optimize.linprog(c.ravel(), A_eq=a_eq, b_eq=b_eq, bounds=(0, None), method="highs-ds")
        if res.status != 0:  # pragma: no cover - the transport LP is always feasible and bounded
            raise RuntimeError(f"optimal transport LP failed: {res.message}")
        plan = res.x.reshape(m, k)
        plan[plan < 1e-15] = 0.0
    return EMDResult(distance=float((plan * c).sum()), plan=plan, cost=c)


def emd_rmsd(a, b, align: bool = True, chunk_size: int | None = None) -> EMDResult:
    """EMD-RMSD (Prins et al.) between ensembles ``a`` (M, N, 3) and ``b`` (K, N, 3).

    Ground cost: RMSD (Å) of each pair after Kabsch superposition (when ``align``);
    uniform weights; the distance is Σ π_ij RMSD_ij (Wasserstein-1), which for
    M = K equals the minimum over one-to-one pairings of the mean RMSD.
    """
    return emd_from_cost(rmsd_matrix(a, b, align=align, chunk_size=chunk_size))


# ----------------------------------------------------------------------------------- per-residue error


@dataclass
class ResidueProfile:
    """Per-residue errors (R,) in Å over a set of weighted pairs of structures.

    Attributes:
        rms_A: √(Σ_p w_p · mean over the residue's pseudo-atoms of d²) — the RMS deviation.
        mean_A: Σ_p w_p · mean over the residue's pseudo-atoms of d — the mean distance
            (the quantity Prins et al. plot per residue).
    """

    rms_A: np.ndarray
    mean_A: np.ndarray


def per_atom_squared_error(pred, truth, i=None, j=None, weights=None, align: bool = True,
                           return_distance: bool = False):
    """Weighted mean over pairs of the squared deviation of every pseudo-atom, (N,) in Å².

    Pairs ``(pred[i[p]], truth[j[p]])`` with weights ``weights[p]`` (default: uniform;
    normalised to sum 1); ``i``/``j`` default to ``arange(M)`` (paired ensembles).
    Each predicted structure is superposed onto its partner first when ``align``.
    With ``return_distance`` also the weighted mean distance (N,) in Å.
    """
    pred, truth = _coords(pred, "pred"), _coords(truth, "truth")
    _same_atoms(pred, truth)
    if i is None and j is None:
        if pred.shape[0] != truth.shape[0]:
            raise InputError(f"pairs default to the same order, but there are {pred.shape[0]} and "
                             f"{truth.shape[0]} structures; give i and j")
        i = j = np.arange(pred.shape[0])
    i, j = np.asarray(i, dtype=np.int64), np.asarray(j, dtype=np.int64)
    if i.shape != j.shape or i.ndim != 1 or i.size == 0:
        raise InputError(f"pair indices i {i.shape} and j {j.shape} must be equal-length non-empty 1D arrays")
    w = np.full(i.size, 1.0 / i.size) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != i.shape or (w < 0).any() or w.sum() <= 0:
        raise InputError(f"pair weights must be {i.shape} non-negative values with a positive sum")
    w = torch.as_tensor(w / w.sum(), dtype=torch.float64)
    n = pred.shape[1]
    sq = torch.zeros(n, dtype=torch.float64)
    dist = torch.zeros(n, dtype=torch.float64)
    step = max(1, _ELEMENT_BUDGET // (n * 3))
    for s in range(0, i.size, step):
        x, y = pred[i[s:s + step]], truth[j[s:s + step]]
        if align:
            x = superpose(x, y)
        d2 = ((x - y) ** 2).sum(-1)  # (P, N)
        sq += (w[s:s + step, None] * d2).sum(0)
        dist += (w[s:s + step, None] * d2.sqrt()).sum(0)
    if return_distance:
        return sq.numpy(), dist.numpy()
    return sq.numpy()


def per_residue_error(pred, truth, i=None, j=None, weights=None, residue_index=None, align: bool = True) -> ResidueProfile:
    """Per-residue error profile (R,) over weighted pairs (see :func:`per_atom_squared_error`).

    ``residue_index`` (N,) maps pseudo-atoms to residues 0..R−1 (default: one residue per
    pseudo-atom); a residue's value averages its pseudo-atoms. For an EMD matching pass
    ``*EMDResult.pairs``; for a known pairing leave ``i``, ``j`` unset (RMS over the ensemble).
    """
    sq, dist = per_atom_squared_error(pred, truth, i, j, weights, align, return_distance=True)
    n = sq.shape[0]
    res = np.arange(n) if residue_index is None else np.asarray(residue_index, dtype=np.int64)
    if res.shape != (n,) or (res < 0).any():
        raise InputError(f"residue_index has shape {res.shape}; expected ({n},) non-negative residue indices")
    r = int(res.max()) + 1
    count = np.bincount(res, minlength=r).astype(np.float64)
    count[count == 0] = np.nan
    return ResidueProfile(rms_A=np.sqrt(np.bincount(res, sq, minlength=r) / count),
                          mean_A=np.bincount(res, dist, minlength=r) / count)


# ----------------------------------------------------------------------------------- geometry checks


def backbone_trace(topology) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One anchor pseudo-atom per residue of a :class:`~cryoconf.structure.Structure`.

    Returns ``(anchors (R,), segment_start (R,) bool, is_ca (R,) bool)``: the index of
    each residue's Cα (C1′ for nucleotides; else its first pseudo-atom), whether the
    residue starts a segment (first residue, new chain or chain break, from
    ``topology.chain_breaks``), and whether its anchor is a Cα.
    """
    names = np.asarray(topology.atom_names)
    res = np.asarray(topology.residue_index)
    n = res.size
    if n == 0:
        raise InputError("the topology has no pseudo-atoms")
    priority = np.where(np.isin(names, ["CA", "C1'"]), 0, 1)
    order = np.lexsort((np.arange(n), priority, res))
    first = np.r_[True, res[order][1:] != res[order][:-1]]
    anchors = order[first]
    r = anchors.size
    start = np.zeros(r, dtype=bool)
    breaks = np.asarray(topology.chain_breaks, dtype=bool)
    start[res[breaks]] = True
    start[0] = True
    return anchors, start, names[anchors] == "CA"


def _segment_start(segment_start, r: int) -> np.ndarray:
    if segment_start is None:
        s = np.zeros(r, dtype=bool)
    else:
        s = np.asarray(segment_start, dtype=bool)
        if s.shape != (r,):
            raise InputError(f"segment_start has shape {s.shape}; expected ({r},): one flag per residue")
        s = s.copy()
    if r:
        s[0] = True
    return s


def bond_length_stats(coords, segment_start=None, bond_mask=None, ideal_A: float = IDEAL_CA_CA_A,
                      tolerance_A: float = BOND_TOLERANCE_A) -> dict:
    """Statistics of consecutive-anchor (Cα–Cα) distances, pooled over conformations.

    ``coords`` (M, R, 3) or (R, 3): one anchor per residue, in chain order.
    The bond r−1 → r is skipped where ``segment_start[r]`` (chain ends, chain breaks)
    and where ``bond_mask[r]`` is False (e.g. non-protein residues).
    Returns ``mean_A, std_A, min_A, max_A, fraction_outside`` (|d − ideal| > tolerance),
    ``n_bonds`` (per conformation), ``ideal_A`` and ``tolerance_A``; NaN statistics when no bond.
    """
    x = np.asarray(coords, dtype=np.float64)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3 or x.shape[-1] != 3:
        raise InputError(f"coords have shape {x.shape}; expected (M, R, 3) or (R, 3) anchor coordinates in Å")
    r = x.shape[1]
    valid = ~_segment_start(segment_start, r)
    if bond_mask is not None:
        bm = np.asarray(bond_mask, dtype=bool)
        if bm.shape != (r,):
            raise InputError(f"bond_mask has shape {bm.shape}; expected ({r},)")
        valid &= bm
    sel = np.flatnonzero(valid)  # bonds (sel−1, sel)
    out = {"ideal_A": float(ideal_A), "tolerance_A": float(tolerance_A), "n_bonds": int(sel.size)}
    if sel.size == 0:
        out.update(mean_A=math.nan, std_A=math.nan, min_A=math.nan, max_A=math.nan, fraction_outside=math.nan)
        return out
    d = np.linalg.norm(x[:, sel] - x[:, sel - 1], axis=-1)
    out.update(mean_A=float(d.mean()), std_A=float(d.std()), min_A=float(d.min()), max_A=float(d.max()),
               fraction_outside=float((np.abs(d - ideal_A) > tolerance_A).mean()))
    return out


def clash_counts(coords, residue_index=None, segment_start=None, cutoff_A: float = CLASH_CUTOFF_A) -> np.ndarray:
    """Number of clashing pairs per conformation, (M,) int.

    A clash is a pair of pseudo-atoms closer than ``cutoff_A`` (strictly) whose residues are
    neither the same nor chain neighbours (consecutive residues in one segment).
    ``coords`` (M, N, 3) or (N, 3); ``residue_index`` (N,) residue of each pseudo-atom
    (default: one residue per pseudo-atom, i.e. a backbone trace); ``segment_start`` (R,)
    flags residues that start a segment (no bond to the previous residue).
    Neighbour search with a k-d tree per conformation: O(N log N) each.
    """
    x = np.asarray(coords, dtype=np.float64)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3 or x.shape[-1] != 3:
        raise InputError(f"coords have shape {x.shape}; expected (M, N, 3) or (N, 3) coordinates in Å")
    n = x.shape[1]
    res = np.arange(n) if residue_index is None else np.asarray(residue_index, dtype=np.int64)
    if res.shape != (n,):
        raise InputError(f"residue_index has shape {res.shape}; expected ({n},)")
    start = _segment_start(segment_start, int(res.max()) + 1 if n else 0)
    counts = np.zeros(x.shape[0], dtype=np.int64)
    for m in range(x.shape[0]):
        pairs = cKDTree(x[m]).query_pairs(cutoff_A, output_type="ndarray")
        if pairs.size == 0:
            continue
        p, q = pairs[:, 0], pairs[:, 1]
        rp, rq = res[p], res[q]
        lo, hi = np.minimum(rp, rq), np.maximum(rp, rq)
        bonded = (hi == lo) | ((hi - lo == 1) & ~start[hi])
        close = np.linalg.norm(x[m, p] - x[m, q], axis=-1) < cutoff_A
        counts[m] = int((close & ~bonded).sum())
    return counts
