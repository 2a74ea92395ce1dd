"""Helpers for the structure tests: tiny synthetic PDB files and a Kabsch RMSD."""

from __future__ import annotations

import numpy as np


def pdb_line(serial, name, resname, chain, resnum, xyz, element, record="ATOM"):
    """One fixed-column PDB ATOM/HETATM record."""
    nm = f" {name:<3s}" if len(name) < 4 and len(element) == 1 else f"{name:<4s}"
    x, y, z = xyz
    return (f"{record:<6s}{serial:>5d} {nm} {resname:>3s} {chain}{resnum:>4d}    "
            f"{x:8.3f}{y:8.3f}{z:8.3f}{1.0:6.2f}{0.0:6.2f}          {element:>2s}\n")


def write_synthetic_pdb(path, residues):
    """residues: list of (resname, chain, resnum, [(atom_name, element, (x, y, z)), ...])."""
    lines, serial = [], 0
    for resname, chain, resnum, atoms in residues:
        for name, elem, xyz in atoms:
            serial += 1
            rec = "HETATM" if resname in ("HOH", "ZN", "ADP") else "ATOM"
            lines.append(pdb_line(serial, name, resname, chain, resnum, xyz, elem, rec))
    lines.append("END\n")
    with open(path, "w") as fh:
        fh.write("".join(lines))
    return path


def ala(chain, resnum, x, y=0.0, name="ALA"):
    """An alanine-like residue with N, CA, C, O, CB and one H around (x, y, 0)."""
    return (name, chain, resnum, [
        ("N", "N", (x - 1.2, y + 0.5, 0.0)), ("H", "H", (x - 1.9, y + 0.9, 0.1)),
        ("CA", "C", (x, y, 0.0)), ("C", "C", (x + 1.2, y + 0.5, 0.0)), ("O", "O", (x + 1.3, y + 1.7, 0.0)),
        ("CB", "C", (x, y - 1.0, 1.2)),
    ])


def kabsch_rmsd(a, b):
    """RMSD (Å) of (N, 3) a and b after optimal superposition."""
    a = np.asarray(a, float) - np.mean(a, axis=0)
    b = np.asarray(b, float) - np.mean(b, axis=0)
    u, s, vt = np.linalg.svd(a.T @ b)
    d = np.sign(np.linalg.det(u @ vt))
    s[-1] *= d
    e = (a ** 2).sum() + (b ** 2).sum() - 2 * s.sum()
    return float(np.sqrt(max(e, 0.0) / a.shape[0]))
