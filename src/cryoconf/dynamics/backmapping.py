"""Backbone sites at the backbone's electron centroid, and Cα mapped back from them.

A single Gaussian that best represents a fragment's density sits at the fragment's
electron centroid (its first moment). For the backbone N, Cα, C, O of an amino acid that
point lies ~0.9 Å from the Cα (toward the carbonyl), so an RBF fitted to all-atom data
drifts there from a Cα start. :func:`backbone_centroid_offsets` gives, per backbone
pseudo-atom of a coarse-grained structure, the vector from its Cα to that centroid,
measured in an all-atom model of the same residues. After a fit moves the sites,
:func:`backmap_backbone` puts each Cα back at its offset, turned by the local rotation of
the chain around it (Kabsch over the backbone sites i−``window``..i+``window`` of its
chain segment): the residue's geometry travels with its neighbourhood.

Shapes: coordinates (N, 3) Å (float arrays); offsets (N, 3) Å, zero at every pseudo-atom
that is not a backbone site with a complete N, Cα, C, O in the all-atom model.
"""

from __future__ import annotations

import numpy as np
import torch

from cryoconf.dynamics.alignment import kabsch
from cryoconf.errors import InputError
from cryoconf.structure.model import Structure

__all__ = ["BACKBONE_CENTROID_ATOMS", "backbone_centroid_offsets", "local_rotations", "backmap_backbone"]

#: The atoms whose electron centroid the backbone site represents (heavy atoms; the
#: hydrogens of the core's coarse-graining ride on them).
BACKBONE_CENTROID_ATOMS = ("N", "CA", "C", "O")


def backbone_centroid_offsets(coarse: Structure, allatom: Structure, backbone: np.ndarray,
                              path: str = "the structure") -> np.ndarray:
    """Offsets (N, 3) Å from each backbone pseudo-atom ``backbone`` (indices into ``coarse``) to its residue's
    backbone electron centroid in ``allatom`` (weights: the atoms' electrons), zero elsewhere.

    Residues are matched by chain, number and name. A residue without all of N, CA, C, O
    (Cα-only input, nucleotides) keeps a zero offset: its site stays at the Cα.
    """
    offsets = np.zeros((coarse.n_atoms, 3))
    if allatom.n_atoms == 0:
        return offsets
    names = allatom.atom_names
    sel = np.isin(names, BACKBONE_CENTROID_ATOMS)
    keys = list(zip(allatom.chain_ids[sel], allatom.residue_numbers[sel], allatom.residue_names[sel]))
    groups: dict[tuple, list[int]] = {}
    for k, i in zip(keys, np.flatnonzero(sel)):
        groups.setdefault(k, []).append(int(i))
    x = allatom.coords_A.astype(np.float64)
    w = allatom.amplitudes_e.astype(np.float64)
    matched: list[tuple[int, int, list[int]]] = []  # (backbone pseudo-atom, all-atom Cα, backbone atoms)
    for b in np.asarray(backbone):
        idx = groups.get((coarse.chain_ids[b], coarse.residue_numbers[b], coarse.residue_names[b]))
        if idx is not None and sorted(names[idx].tolist()) == sorted(BACKBONE_CENTROID_ATOMS):
            matched.append((int(b), idx[int(np.flatnonzero(names[idx] == "CA")[0])], idx))
    if not matched:
        return offsets
    b_all = np.array([m[0] for m in matched])
    ca_all = np.array([m[1] for m in matched])
    # the coarse model may have been moved into the frame of the poses: compare up to one translation
    gap = coarse.coords_A[b_all].astype(np.float64) - x[ca_all]
    dev = np.linalg.norm(gap - np.median(gap, axis=0), axis=1)
    if dev.max() > 0.05:
        b = b_all[int(dev.argmax())]
        raise InputError(f"{path}: residue {coarse.residue_names[b]} {coarse.residue_numbers[b]} of chain "
                         f"{coarse.chain_ids[b]}: the all-atom Cα is {dev.max():.2f} Å from the coarse-grained one; "
                         "give both from the same model")
    for b, ca, idx in matched:
        offsets[b] = (w[idx, None] * x[idx]).sum(0) / w[idx].sum() - x[ca]
    return offsets


def _segment_windows(n: int, segment_starts: np.ndarray, window: int) -> np.ndarray:
    """Indices (n, 2·window+1) of each site's neighbours within its segment, −1 where there is none."""
    seg = np.cumsum(np.asarray(segment_starts, dtype=bool)) - 1 if n else np.zeros(0, int)
    seg[seg < 0] = 0
    off = np.arange(-window, window + 1)
    j = np.arange(n)[:, None] + off[None, :]
    inside = (j >= 0) & (j < n)
    jc = np.clip(j, 0, max(n - 1, 0))
    ok = inside & (seg[jc] == seg[:, None])
    return np.where(ok, jc, -1)


def local_rotations(before_A: np.ndarray, after_A: np.ndarray, segment_starts: np.ndarray,
                    window: int = 2) -> np.ndarray:
    """Per site the rotation (n, 3, 3) that best superposes its chain neighbourhood (sites i−window..i+window of
    its segment, (n, 3) Å each) from ``before_A`` onto ``after_A``; the identity for segments of < 3 sites."""
    before, after = np.asarray(before_A, np.float64), np.asarray(after_A, np.float64)
    n = before.shape[0]
    if n == 0:
        return np.zeros((0, 3, 3))
    win = _segment_windows(n, segment_starts, window)
    valid = win >= 0
    idx = np.where(valid, win, 0)
    rot, _ = kabsch(torch.as_tensor(before[idx]), torch.as_tensor(after[idx]),
                    weights=torch.as_tensor(valid.astype(np.float64)))
    rot = rot.numpy()
    rot[valid.sum(1) < 3] = np.eye(3)
    return rot


def backmap_backbone(sites_start_A: np.ndarray, sites_fit_A: np.ndarray, offsets_A: np.ndarray,
                     segment_starts: np.ndarray, window: int = 2) -> np.ndarray:
    """Cα (n, 3) Å of fitted backbone sites ``sites_fit_A`` (n, 3): site − R_i · offset_i, R_i the local rotation
    from the start's sites ``sites_start_A`` (n, 3); ``offsets_A`` (n, 3) Cα→site vectors of the start."""
    rot = local_rotations(sites_start_A, sites_fit_A, segment_starts, window)
    return np.asarray(sites_fit_A, np.float64) - np.einsum("nij,nj->ni", rot, np.asarray(offsets_A, np.float64))
