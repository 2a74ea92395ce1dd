"""Resolve residue selections to pseudo-atom indices of a :class:`~cryoconf.structure.Structure`.

Two forms are accepted wherever an ensemble generator takes a selection:

- residue-number ranges: ``"122-159"``, ``"30-59,122-159"``, ``"42"``, optionally
  with a chain prefix ``"B:600-755"`` (chain = the structure's ``chain_ids``,
  i.e. the chain ID, or the segment ID when the file has no chain IDs);
- any MDAnalysis selection string (``"resid 122:159 and segid 4AKE"``,
  ``"name CA and resname GLY"``), evaluated on the *pseudo-atoms* themselves
  (their names, residue names/numbers, chains and coordinates), so it works for
  a structure read from any file and for one built in memory.
"""

from __future__ import annotations

import re

import numpy as np

from cryoconf.errors import InputError
from cryoconf.structure.model import Structure

__all__ = ["select_pseudo_atoms", "residue_atoms"]

_RANGE_ITEM = r"\s*(?:[A-Za-z0-9]+\s*:\s*)?-?\d+(?:\s*-\s*-?\d+)?\s*"
_RANGE_RE = re.compile(rf"^{_RANGE_ITEM}(?:,{_RANGE_ITEM})*$")


def _parse_ranges(text: str) -> list[tuple[str | None, int, int]]:
    out = []
    for item in text.split(","):
        item = item.strip()
        chain = None
        if ":" in item:
            chain, item = (s.strip() for s in item.split(":", 1))
        m = re.fullmatch(r"(-?\d+)(?:\s*-\s*(-?\d+))?", item)
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if hi < lo:
            raise InputError(f"selection {text!r}: range {lo}-{hi} is empty; write the lower residue number first")
        out.append((chain, lo, hi))
    return out


def select_pseudo_atoms(structure: Structure, selection: str, *, what: str = "selection") -> np.ndarray:
    """Sorted indices (int64) of the pseudo-atoms of ``structure`` matching ``selection``.

    ``what`` names the option in error messages (e.g. ``"--domain"``).
    Raises :class:`InputError` when the selection is invalid or empty.
    """
    if not isinstance(structure, Structure):
        raise InputError(f"{what}: expected a Structure, got {type(structure).__name__}")
    text = str(selection).strip()
    if not text:
        raise InputError(f"{what}: empty selection; give residue ranges like '122-159' or an MDAnalysis selection")
    if _RANGE_RE.fullmatch(text):
        mask = np.zeros(structure.n_atoms, dtype=bool)
        chains = np.char.strip(structure.chain_ids.astype(str))
        for chain, lo, hi in _parse_ranges(text):
            m = (structure.residue_numbers >= lo) & (structure.residue_numbers <= hi)
            if chain is not None:
                if chain not in set(chains.tolist()):
                    raise InputError(
                        f"{what} {text!r}: chain {chain!r} not in the structure (chains: "
                        f"{', '.join(sorted(set(chains.tolist())))}); use one of those or drop the 'CHAIN:' prefix"
                    )
                m &= chains == chain
            mask |= m
        idx = np.flatnonzero(mask)
    else:
        idx = _mdanalysis_select(structure, text, what)
    if idx.size == 0:
        nums = structure.residue_numbers
        raise InputError(
            f"{what} {text!r} matches no pseudo-atoms (residues {int(nums.min())}–{int(nums.max())}, "
            f"pseudo-atoms {sorted(set(structure.atom_names.tolist()))}); check residue numbers, chains and syntax"
        )
    return idx.astype(np.int64)


def _mdanalysis_select(structure: Structure, text: str, what: str) -> np.ndarray:
    from cryoconf.structure.atoms import AtomTable, select
    from cryoconf.structure.residues import element_from_name

    names = structure.atom_names.astype(str)
    table = AtomTable(
        path=what, names=names, resnames=structure.residue_names.astype(str),
        resids=structure.residue_numbers, icodes=np.full(structure.n_atoms, "", dtype=str),
        chains=np.char.strip(structure.chain_ids.astype(str)),
        elements=np.array([element_from_name(n, True) if n not in ("SC", "C1'") else "C" for n in names], dtype=str),
        res_key=structure.residue_index, coords=structure.coords_A[None].astype(np.float32),
        atom_indices=np.arange(structure.n_atoms),
    )
    sub = select(table, text)  # InputError messages start with ``what``
    return np.sort(np.asarray(sub.atom_indices, dtype=np.int64))


def residue_atoms(structure: Structure, residue: int, chain: str | None = None, *, what: str = "residue") -> np.ndarray:
    """Indices of the pseudo-atoms of residue number ``residue`` (in ``chain`` if given).

    Raises :class:`InputError` if the residue is absent or ambiguous (in several chains without ``chain``).
    """
    chains = np.char.strip(structure.chain_ids.astype(str))
    mask = structure.residue_numbers == int(residue)
    if chain is not None:
        mask &= chains == str(chain).strip()
    idx = np.flatnonzero(mask)
    if idx.size == 0:
        where = f" in chain {chain!r}" if chain is not None else ""
        raise InputError(
            f"{what} {residue}{where} is not in the structure (residues {int(structure.residue_numbers.min())}–"
            f"{int(structure.residue_numbers.max())}, chains {sorted(set(chains.tolist()))}); pick an existing residue"
        )
    found = sorted(set(chains[idx].tolist()))
    if len(found) > 1:
        raise InputError(f"{what} {residue} exists in chains {found}; name the chain (e.g. '{found[0]}:{residue}')")
    res_idx = np.unique(structure.residue_index[idx])
    if res_idx.size > 1:
        raise InputError(f"{what} {residue}: several residues share this number (insertion codes?); pick another residue")
    return idx
