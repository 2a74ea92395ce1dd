"""Coarse-graining: from an atom table to pseudo-atoms (Cα, side-chain centroid, C1′, or all heavy atoms).

The result is a :class:`CoarsePlan`: the pseudo-atoms' metadata (names,
residues, chains, amplitudes in electrons, widths in Å) and a sparse
(N × K) averaging matrix ``weights`` over the K table rows ``columns`` that
maps atom coordinates (Å) to pseudo-atom coordinates (Å) for any frame:
``pseudo = weights @ atoms[columns]``. Built once per topology; applying it
to a frame is one sparse product, with no loop over residues.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from cryoconf.errors import InputError
from cryoconf.structure.atoms import AtomTable
from cryoconf.structure.residues import (
    ALLATOM_SIGMA_A,
    ATOMIC_NUMBER,
    BACKBONE_ATOMS,
    BACKBONE_ELECTRONS,
    CAPPING_GROUPS,
    NUCLEOTIDES,
    RESIDUE_ELECTRONS,
    RESIDUE_SIGMA_A,
    SIDECHAIN_ELECTRONS,
    normalise_residue_name,
)

__all__ = ["CoarsePlan", "build_plan", "detect_chain_breaks", "MAX_CA_GAP_A", "MAX_C1_GAP_A", "MODES"]

logger = logging.getLogger("cryoconf.structure")

#: Consecutive Cα farther apart than this (Å) start a new segment.
MAX_CA_GAP_A = 4.2
#: Consecutive C1′ farther apart than this (Å) start a new segment (typical C1′–C1′ ≈ 5.5 Å).
MAX_C1_GAP_A = 7.5

MODES = ("ca", "ca+sc", "allatom")

_WATERS = {"HOH", "WAT", "H2O", "DOD", "SOL", "TIP", "TIP3", "TIP4", "TIP5", "TIP3P", "TP3", "T3P", "T4P", "T5P", "SPC", "SPCE", "OH2"}
_IONS = {"NA", "CL", "K", "MG", "ZN", "CA", "MN", "FE", "FE2", "CU", "CU1", "NI", "CO", "CD", "HG", "LI", "RB", "CS",
         "BR", "IOD", "I", "F", "SOD", "CLA", "POT", "CAL", "CES", "NA+", "CL-", "K+", "MG2", "ZN2", "NIO"}
_HYDROGEN = {"H", "D"}


@dataclass
class CoarsePlan:
    """Pseudo-atom metadata plus the sparse map from atom rows to pseudo-atoms."""

    atom_names: np.ndarray
    residue_names: np.ndarray
    residue_numbers: np.ndarray
    chain_ids: np.ndarray
    amplitudes_e: np.ndarray
    sigmas_A: np.ndarray
    residue_index: np.ndarray
    columns: np.ndarray          # (K,) rows of the atom table used
    weights: sp.csr_matrix       # (N, K)
    anchor: np.ndarray           # (R,) pseudo-atom index of each residue's Cα / C1′ (allatom: its row)
    is_nucleic: np.ndarray       # (R,) bool

    @property
    def n_atoms(self) -> int:
        return int(self.atom_names.shape[0])

    def apply(self, atom_coords_A: np.ndarray) -> np.ndarray:
        """Pseudo-atom coordinates (N, 3) float32 Å from the (K, 3) coordinates of ``columns``."""
        return np.asarray(self.weights @ np.asarray(atom_coords_A, dtype=np.float64), dtype=np.float32)

    def chain_breaks(self, coords_A: np.ndarray) -> np.ndarray:
        """(N,) bool chain-break flags for pseudo-atom coordinates ``coords_A`` (Å)."""
        return detect_chain_breaks(
            coords_A, self.chain_ids, self.residue_index, anchor=self.anchor, is_nucleic=self.is_nucleic
        )


def detect_chain_breaks(
    coords_A: np.ndarray,
    chain_ids: np.ndarray,
    residue_index: np.ndarray,
    *,
    anchor: np.ndarray | None = None,
    is_nucleic: np.ndarray | None = None,
    max_gap_A: float = MAX_CA_GAP_A,
    max_gap_nucleic_A: float = MAX_C1_GAP_A,
) -> np.ndarray:
    """Per-pseudo-atom segment starts (N,) bool.

    Residue r starts a segment when it is the first residue, its chain differs
    from residue r−1's, it switches between protein and nucleic acid, or its
    anchor atom (Cα; C1′ for nucleotides) is farther than ``max_gap_A`` (Å;
    ``max_gap_nucleic_A`` between nucleotides) from residue r−1's. Only the
    first pseudo-atom of a starting residue is flagged. ``anchor`` defaults to
    each residue's first pseudo-atom.
    """
    coords = np.asarray(coords_A, dtype=np.float64).reshape(-1, 3)
    res = np.asarray(residue_index)
    n = coords.shape[0]
    if n == 0:
        return np.zeros(0, dtype=bool)
    first_atom = np.flatnonzero(np.r_[True, res[1:] != res[:-1]])
    anchor = first_atom if anchor is None else np.asarray(anchor)
    r = anchor.size
    nuc = np.zeros(r, dtype=bool) if is_nucleic is None else np.asarray(is_nucleic, dtype=bool)
    chains = np.asarray(chain_ids)[anchor]
    brk = np.ones(r, dtype=bool)
    if r > 1:
        d = np.linalg.norm(coords[anchor[1:]] - coords[anchor[:-1]], axis=1)
        limit = np.where(nuc[1:] & nuc[:-1], max_gap_nucleic_A, max_gap_A)
        brk[1:] = (chains[1:] != chains[:-1]) | (nuc[1:] != nuc[:-1]) | (d > limit)
    out = np.zeros(n, dtype=bool)
    out[first_atom] = brk
    return out


def _residue_sigma(resname: str, sigma) -> float:
    return RESIDUE_SIGMA_A[resname] if sigma == "residue" else float(sigma)


def check_options(mode: str, sigma, missing_ca: str) -> None:
    """Raise :class:`InputError` for an unknown mode, a bad σ or a bad ``missing_ca``."""
    if mode not in MODES:
        raise InputError(f"mode={mode!r} is not one of {MODES}; choose 'ca', 'ca+sc' or 'allatom'")
    if missing_ca not in ("error", "drop"):
        raise InputError(f"missing_ca={missing_ca!r} is not 'error' or 'drop'")
    if isinstance(sigma, str):
        if sigma != "residue":
            raise InputError(f"sigma={sigma!r}: give 'residue' (per-residue table) or a positive number in Å")
    else:
        try:
            s = float(sigma)
        except (TypeError, ValueError):
            raise InputError(f"sigma={sigma!r}: give 'residue' (per-residue table) or a positive number in Å") from None
        if not (math.isfinite(s) and s > 0):
            raise InputError(f"sigma={sigma!r}: the Gaussian width must be a positive finite number of Å")


def _classify_skipped(resname: str, n_atoms: int) -> str:
    name = resname.strip().upper()
    if name in _WATERS:
        return "water"
    if name in CAPPING_GROUPS:
        return "capping-group"
    if name in _IONS or (n_atoms == 1 and len(name) <= 3):
        return "ion"
    return "ligand/other"


def build_plan(table: AtomTable, *, mode: str = "ca", nucleic: bool = False, sigma="residue", missing_ca: str = "error") -> CoarsePlan:
    """Coarse-grain ``table`` into pseudo-atoms (see the module docstring).

    Standard amino acids (after :func:`normalise_residue_name`) are kept, and
    nucleotides when ``nucleic``; waters, ions, caps and ligands are skipped
    with a logged count. A kept residue without Cα (C1′) raises
    :class:`InputError`, or is dropped with a warning when ``missing_ca="drop"``.
    """
    check_options(mode, sigma, missing_ca)
    path = table.path
    keys, first, inverse = np.unique(table.res_key, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")           # residues in file order
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    res_of_row = rank[inverse]
    rows_sorted = np.argsort(res_of_row, kind="stable")
    bounds = np.searchsorted(res_of_row[rows_sorted], np.arange(order.size + 1))

    names_u = np.char.strip(np.char.upper(table.names.astype(str)))
    elems = np.char.upper(table.elements.astype(str))

    p_name, p_res, p_num, p_chain, p_amp, p_sig, p_ridx = [], [], [], [], [], [], []
    w_rows, w_cols, w_vals = [], [], []
    anchors, nuc_flags = [], []
    skipped: Counter = Counter()
    skipped_names: Counter = Counter()
    dropped, no_sidechain = [], 0
    n_out = 0
    r_out = 0
    for r in range(order.size):
        rows = rows_sorted[bounds[r]:bounds[r + 1]]
        raw = str(table.resnames[rows[0]])
        std = normalise_residue_name(raw)
        if std is None or (std in NUCLEOTIDES and not nucleic):
            cat = _classify_skipped(raw, rows.size)
            if std is not None:
                cat = "nucleic-acid (pass nucleic=True to keep)"
            skipped[cat] += 1
            if cat == "ligand/other":
                skipped_names[raw.strip()] += 1
            continue
        is_nuc = std in NUCLEOTIDES
        rnames = names_u[rows]
        chain = str(table.chains[rows[0]])
        resid = int(table.resids[rows[0]])
        icode = str(table.icodes[rows[0]])
        anchor_names = ("C1'", "C1*") if is_nuc else ("CA",)
        hit = np.flatnonzero(np.isin(rnames, anchor_names))
        if hit.size == 0:
            where = f"{path}: chain {chain!r} residue {raw} {resid}{icode}"
            what = "C1'" if is_nuc else "CA"
            if missing_ca == "error":
                raise InputError(
                    f"{where} has no {what} atom; complete the model (e.g. rebuild the residue) or pass "
                    f"missing_ca='drop' to skip such residues"
                )
            dropped.append(f"{chain}:{raw}{resid}{icode}")
            continue
        a_row = int(rows[hit[0]])
        heavy = ~np.isin(elems[rows], list(_HYDROGEN))
        if mode == "allatom":
            sel = rows[heavy]
            for row in sel:
                e = str(elems[row])
                if e not in ATOMIC_NUMBER:
                    raise InputError(
                        f"{path}: chain {chain!r} residue {raw} {resid}{icode} atom {table.names[row]!r} has unknown "
                        f"element {e!r}; fix the element column (cols 77-78 in PDB)"
                    )
                if row == a_row:
                    anchors.append(n_out)
                p_name.append(str(table.names[row]).strip())
                p_amp.append(ATOMIC_NUMBER[e])
                p_sig.append(ALLATOM_SIGMA_A if sigma == "residue" else float(sigma))
                w_rows.append(n_out); w_cols.append(int(row)); w_vals.append(1.0)
                p_res.append(std); p_num.append(resid); p_chain.append(chain); p_ridx.append(r_out)
                n_out += 1
        else:
            anchors.append(n_out)
            sc_rows = np.empty(0, dtype=np.int64)
            if mode == "ca+sc" and not is_nuc and std != "GLY":
                sc_mask = heavy & ~np.isin(rnames, list(BACKBONE_ATOMS))
                sc_rows = rows[sc_mask]
                if sc_rows.size == 0:
                    no_sidechain += 1
            split = sc_rows.size > 0
            p_name.append("C1'" if is_nuc else "CA")
            p_amp.append(BACKBONE_ELECTRONS[std] if split else RESIDUE_ELECTRONS[std])
            p_sig.append(RESIDUE_SIGMA_A["GLY"] if (split and sigma == "residue") else _residue_sigma(std, sigma))
            w_rows.append(n_out); w_cols.append(a_row); w_vals.append(1.0)
            p_res.append(std); p_num.append(resid); p_chain.append(chain); p_ridx.append(r_out)
            n_out += 1
            if split:
                p_name.append("SC")
                p_amp.append(SIDECHAIN_ELECTRONS[std])
                p_sig.append(_residue_sigma(std, sigma))
                w_rows.extend([n_out] * sc_rows.size)
                w_cols.extend(int(c) for c in sc_rows)
                w_vals.extend([1.0 / sc_rows.size] * sc_rows.size)
                p_res.append(std); p_num.append(resid); p_chain.append(chain); p_ridx.append(r_out)
                n_out += 1
        nuc_flags.append(is_nuc)
        r_out += 1

    if skipped:
        detail = ", ".join(f"{n} {cat}" for cat, n in sorted(skipped.items()))
        names = ", ".join(f"{k}×{v}" for k, v in skipped_names.most_common(10))
        logger.info("%s: skipped %d non-standard residues (%s)%s", path, sum(skipped.values()), detail,
                    f"; ligands/other: {names}" if names else "")
    if dropped:
        logger.warning("%s: dropped %d residue(s) without %s (missing_ca='drop'): %s", path, len(dropped),
                       "CA/C1'", ", ".join(dropped[:20]) + (" ..." if len(dropped) > 20 else ""))
    if no_sidechain:
        logger.info("%s: %d residue(s) have no side-chain heavy atoms; their electrons stay on CA", path, no_sidechain)
    if n_out == 0:
        raise InputError(
            f"{path}: no standard residues found (amino acids{' or nucleotides' if nucleic else ''}); "
            "check the file, the selection, or pass nucleic=True for nucleic acids"
        )
    used, col_idx = np.unique(np.asarray(w_cols, dtype=np.int64), return_inverse=True)
    weights = sp.csr_matrix((np.asarray(w_vals), (np.asarray(w_rows), col_idx)), shape=(n_out, used.size))
    return CoarsePlan(
        atom_names=np.asarray(p_name, dtype=str), residue_names=np.asarray(p_res, dtype=str),
        residue_numbers=np.asarray(p_num, dtype=np.int64), chain_ids=np.asarray(p_chain, dtype=str),
        amplitudes_e=np.asarray(p_amp, dtype=np.float32), sigmas_A=np.asarray(p_sig, dtype=np.float32),
        residue_index=np.asarray(p_ridx, dtype=np.int64), columns=used, weights=weights,
        anchor=np.asarray(anchors, dtype=np.int64), is_nucleic=np.asarray(nuc_flags, dtype=bool),
    )
