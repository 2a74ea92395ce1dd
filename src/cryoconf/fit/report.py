"""What ``cryoconf fit`` reports: per-residue displacements (and errors against a known structure)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from cryoconf.errors import InputError
from cryoconf.recon.geometry import backbone_atoms
from cryoconf.structure.model import Structure

__all__ = ["displacement_report", "write_displacements", "match_reference"]


def match_reference(start: Structure, reference: Structure, path="--reference") -> np.ndarray:
    """Cα coordinates (R, 3) of ``reference`` in the residue order of ``start``; residues must match."""
    a, b = backbone_atoms(start), backbone_atoms(reference)
    if a.size != b.size:
        raise InputError(f"{path}: {b.size} residues, the fitted structure has {a.size}; give the same residues "
                         "(--selection)")
    for i, (x, y) in enumerate(zip(a, b)):
        if (start.residue_names[x] != reference.residue_names[y]
                or start.residue_numbers[x] != reference.residue_numbers[y]):
            raise InputError(f"{path}: residue {i} is {reference.residue_names[y]} {reference.residue_numbers[y]}, "
                             f"the fitted structure has {start.residue_names[x]} {start.residue_numbers[x]}")
    return np.asarray(reference.coords_A[b], np.float64)


def displacement_report(start: Structure, fitted_A: np.ndarray, reference_ca_A: np.ndarray | None = None,
                        within_A: float = 3.0) -> tuple[list[dict], dict]:
    """Per-residue rows and a summary of the fit from ``start`` to ``fitted_A`` (N, 3) Å.

    Rows: chain, residue number and name, the Cα and side-chain-RBF displacements (Å); with
    ``reference_ca_A`` (R, 3) also the Cα error (Å) at the start and after the fit. The
    frame is the poses', so nothing is superposed. Summary: the RMS Cα displacement and,
    with a reference, the Cα RMSD and the percentage within ``within_A`` before and after.
    """
    x0, x1 = np.asarray(start.coords_A, np.float64), np.asarray(fitted_A, np.float64).reshape(-1, 3)
    bb = backbone_atoms(start)
    disp = np.linalg.norm(x1 - x0, axis=1)
    sc_disp = np.full(bb.size, np.nan)
    sc = np.flatnonzero(start.atom_names == "SC")
    res_pos = {int(r): k for k, r in enumerate(start.residue_index[bb])}
    for i in sc:
        sc_disp[res_pos[int(start.residue_index[i])]] = disp[i]
    rows = []
    err0 = err1 = None
    if reference_ca_A is not None:
        err0 = np.linalg.norm(x0[bb] - reference_ca_A, axis=1)
        err1 = np.linalg.norm(x1[bb] - reference_ca_A, axis=1)
    for k, i in enumerate(bb):
        row = {"chain": str(start.chain_ids[i]), "residue_number": int(start.residue_numbers[i]),
               "residue_name": str(start.residue_names[i]), "ca_displacement_A": round(float(disp[i]), 4),
               "sidechain_displacement_A": "" if np.isnan(sc_disp[k]) else round(float(sc_disp[k]), 4)}
        if err0 is not None:
            row["ca_error_start_A"] = round(float(err0[k]), 4)
            row["ca_error_fit_A"] = round(float(err1[k]), 4)
        rows.append(row)
    summary = {"n_residues": int(bb.size), "rms_ca_displacement_A": float(np.sqrt((disp[bb] ** 2).mean())),
               "max_ca_displacement_A": float(disp[bb].max(initial=0.0))}
    if err0 is not None:
        summary.update({
            "ca_rmsd_start_A": float(np.sqrt((err0 ** 2).mean())), "ca_rmsd_fit_A": float(np.sqrt((err1 ** 2).mean())),
            f"pct_within_{within_A:g}A_start": float(100 * (err0 <= within_A).mean()),
            f"pct_within_{within_A:g}A_fit": float(100 * (err1 <= within_A).mean()),
        })
    return rows, summary


def write_displacements(path, rows: list[dict]) -> Path:
    """The per-residue rows as CSV."""
    path = Path(path)
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["chain"])
        w.writeheader()
        w.writerows(rows)
    return path
