"""Structural priors of the ``recon`` models: pair lists and the losses over them.

Every loss takes predicted coordinates ``coords_A`` (B, N, 3) in Å and index
tensors built once from the base structure, so memory is O(B·P) for P pairs:

- :func:`geometry_pairs`: all residue pairs for small proteins, otherwise the pairs
  within ``cutoff_A`` in the base structure plus sequence neighbours (a k-d tree,
  never an N×N matrix). :func:`sample_pairs` draws a random subset per optimiser
  step, an unbiased estimate of the mean over all pairs at a fraction of the cost.
- :func:`geometry_degradation_loss` (Prins et al., eq. 1): mean over pairs of
  log²(|r_ab|² / |r0_ab|²) — zero at the base structure, invariant to rigid motion.
- :func:`bond_pairs` / :func:`bond_loss`: consecutive Cα within a chain segment
  (no pair across a chain break), mean (|r| − 3.8 Å)².
- :func:`centering_loss`: |mean(X) − mean(X0)|² (Å²), removing global translations.
- :func:`continuity_loss` (cryoSPHERE eq. 9): mean (|r| − |r0|)² over consecutive pairs.
- :func:`clash_pairs` / :func:`clash_loss` (cryoSPHERE eq. 10): non-consecutive pairs
  closer than ``clash_A`` (4 Å), mean (|r| − 4)² over the clashing pairs; exactly 0
  when nothing clashes.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.spatial import cKDTree

__all__ = [
    "IDEAL_CA_CA_A", "BACKBONE_NAMES", "backbone_atoms", "geometry_pairs", "sample_pairs", "bond_pairs", "clash_pairs", "pair_distances_sq",
    "geometry_degradation_loss", "bond_loss", "centering_loss", "continuity_loss", "clash_loss",
]

IDEAL_CA_CA_A = 3.8
BACKBONE_NAMES = ("CA", "C1'")  # the backbone pseudo-atom of an amino acid, of a nucleotide
ALL_PAIRS_MAX_RESIDUES = 1000  # above this, neighbour lists (P = N(N−1)/2 ≈ 5·10⁵ pairs at the limit)


def _segment_ids(chain_breaks: np.ndarray | None, n: int) -> np.ndarray:
    """Segment number of every pseudo-atom: a new segment starts at each True of ``chain_breaks``."""
    if chain_breaks is None:
        return np.zeros(n, dtype=np.int64)
    breaks = np.asarray(chain_breaks, dtype=bool).copy()
    if n:
        breaks[0] = True
    return np.cumsum(breaks) - 1


def geometry_pairs(coords0_A, chain_breaks=None, *, cutoff_A: float = 15.0, sequence_neighbours: int = 3,
                   all_pairs_max: int = ALL_PAIRS_MAX_RESIDUES) -> torch.Tensor:
    """Residue pairs (P, 2) long for the geometry-degradation loss.

    All pairs i < j when N ≤ ``all_pairs_max``; otherwise the pairs closer than
    ``cutoff_A`` in the base structure ``coords0_A`` (N, 3) plus the pairs at most
    ``sequence_neighbours`` apart in sequence within one chain segment.
    """
    x = np.asarray(coords0_A, dtype=np.float64).reshape(-1, 3)
    n = x.shape[0]
    if n <= all_pairs_max:
        i, j = np.triu_indices(n, k=1)
        return torch.from_numpy(np.stack([i, j], 1).astype(np.int64))
    close = cKDTree(x).query_pairs(cutoff_A, output_type="ndarray").astype(np.int64)
    seg = _segment_ids(chain_breaks, n)
    seq = []
    for k in range(1, sequence_neighbours + 1):
        i = np.arange(n - k)
        keep = seg[i] == seg[i + k]
        seq.append(np.stack([i[keep], i[keep] + k], 1))
    pairs = np.concatenate([close.reshape(-1, 2)] + seq, 0)
    pairs = np.sort(pairs, axis=1)
    pairs = np.unique(pairs, axis=0)
    return torch.from_numpy(pairs)


def backbone_atoms(base) -> np.ndarray:
    """Index of the one backbone pseudo-atom (Cα, or C1′) of every residue of a Structure, in order."""
    idx = np.flatnonzero(np.isin(base.atom_names, BACKBONE_NAMES))
    if idx.size != base.n_residues:  # all-atom or unusual input: first pseudo-atom of each residue
        _, idx = np.unique(base.residue_index, return_index=True)
    return idx


def bond_pairs(n: int, chain_breaks=None) -> torch.Tensor:
    """Consecutive pairs (P, 2) (i, i+1) within a chain segment (none across a break)."""
    seg = _segment_ids(chain_breaks, n)
    i = np.arange(max(n - 1, 0))
    i = i[seg[i] == seg[i + 1]]
    return torch.from_numpy(np.stack([i, i + 1], 1).astype(np.int64))


def clash_pairs(coords0_A, chain_breaks=None, *, search_A: float = 10.0, all_pairs_max: int = ALL_PAIRS_MAX_RESIDUES
                ) -> torch.Tensor:
    """Candidate pairs (P, 2) for the clash loss: non-consecutive pairs (|i − j| > 1 or other segment).

    All of them when N ≤ ``all_pairs_max``; otherwise those closer than ``search_A``
    in the base structure (cryoSPHERE's restriction for large proteins).
    """
    x = np.asarray(coords0_A, dtype=np.float64).reshape(-1, 3)
    n = x.shape[0]
    if n <= all_pairs_max:
        i, j = np.triu_indices(n, k=1)
        pairs = np.stack([i, j], 1)
    else:
        pairs = np.sort(cKDTree(x).query_pairs(search_A, output_type="ndarray").reshape(-1, 2), axis=1)
    seg = _segment_ids(chain_breaks, n)
    consecutive = (pairs[:, 1] - pairs[:, 0] == 1) & (seg[pairs[:, 0]] == seg[pairs[:, 1]])
    return torch.from_numpy(pairs[~consecutive].astype(np.int64))


def pair_distances_sq(coords_A: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """|x_a − x_b|² (B, P) Å² of ``coords_A`` (B, N, 3) for ``pairs`` (P, 2)."""
    pairs = pairs.to(coords_A.device)
    d = coords_A[:, pairs[:, 0]] - coords_A[:, pairs[:, 1]]
    return d.square().sum(-1)


def geometry_degradation_loss(coords_A: torch.Tensor, coords0_A: torch.Tensor, pairs: torch.Tensor,
                              eps_A2: float = 1e-4) -> torch.Tensor:
    """Mean over ``pairs`` (P, 2) and batch of log²(|r_ab|²/|r0_ab|²) (Prins et al. eq. 1, normalised by P).

    Distances come from direct coordinate differences, so float32 is exact enough
    for proteins of any size (a Gram-matrix form |a|² + |b|² − 2a·b would not be).
    """
    if pairs.numel() == 0:
        return coords_A.new_zeros(())
    x0 = coords0_A.reshape(1, -1, 3).to(coords_A)
    d2 = pair_distances_sq(coords_A, pairs).clamp_min(eps_A2)
    d02 = pair_distances_sq(x0, pairs).clamp_min(eps_A2)
    return torch.log(d2 / d02).square().mean()


def sample_pairs(pairs: torch.Tensor, n_pairs: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n_pairs`` rows of ``pairs`` (P, 2) drawn uniformly with replacement, or all of them when P ≤ n_pairs.

    The mean of a pair loss over the sample is an unbiased estimate of its mean over
    all pairs, so a fresh sample every optimiser step gives unbiased gradients at
    O(B·n_pairs) cost instead of O(B·P) (for ADK, 22,791 pairs: 4,096 cut the
    geometry term's step time about 8×). ``n_pairs`` ≤ 0 means all pairs.
    """
    if n_pairs <= 0 or pairs.shape[0] <= n_pairs:
        return pairs
    idx = torch.randint(pairs.shape[0], (n_pairs,), generator=generator, device="cpu")
    return pairs[idx.to(pairs.device)]


def bond_loss(coords_A: torch.Tensor, pairs: torch.Tensor, ideal_A: float = IDEAL_CA_CA_A) -> torch.Tensor:
    """Mean (|r_i,i+1| − ``ideal_A``)² Å² over the bonded pairs and the batch."""
    if pairs.numel() == 0:
        return coords_A.new_zeros(())
    d = pair_distances_sq(coords_A, pairs).clamp_min(1e-8).sqrt()
    return (d - ideal_A).square().mean()


def centering_loss(coords_A: torch.Tensor, coords0_A: torch.Tensor) -> torch.Tensor:
    """|mean(X) − mean(X0)|² Å², averaged over the batch (the base centroid is the reference)."""
    c0 = coords0_A.reshape(-1, 3).to(coords_A).mean(0)
    return (coords_A.mean(1) - c0).square().sum(-1).mean()


def continuity_loss(coords_A: torch.Tensor, coords0_A: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """Mean (|r| − |r0|)² Å² over the consecutive ``pairs`` and the batch."""
    if pairs.numel() == 0:
        return coords_A.new_zeros(())
    d = pair_distances_sq(coords_A, pairs).clamp_min(1e-8).sqrt()
    d0 = pair_distances_sq(coords0_A.reshape(1, -1, 3).to(coords_A), pairs).sqrt()
    return (d - d0).square().mean()


def clash_loss(coords_A: torch.Tensor, pairs: torch.Tensor, clash_A: float = 4.0) -> torch.Tensor:
    """Mean (|r| − ``clash_A``)² Å² over the pairs closer than ``clash_A``; exactly 0 when none clash."""
    if pairs.numel() == 0:
        return coords_A.new_zeros(())
    d2 = pair_distances_sq(coords_A, pairs)
    clashing = d2 < clash_A ** 2
    n = clashing.sum()
    if int(n) == 0:
        return (d2 * 0.0).sum()
    d = d2.clamp_min(1e-8).sqrt()
    return torch.where(clashing, (d - clash_A).square(), torch.zeros_like(d)).sum() / n
