"""Writers: multi-model PDB (fixed columns) and mmCIF (via gemmi).

Both accept a :class:`Structure`, a :class:`Conformations`, a list of
Structures sharing one topology, or coordinates (M, N, 3) / (N, 3) in Å plus a
``topology``. ``bfactors`` (N,) or (M, N) fill the B-factor column (e.g. segment
labels); default 0. Coordinates are written in Å with 3 decimals.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from cryoconf.errors import InputError
from cryoconf.structure.model import Conformations, Structure
from cryoconf.atomic_write import atomic_path

__all__ = ["write_pdb", "write_mmcif"]

logger = logging.getLogger("cryoconf.structure")

_CHAIN_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def _as_models(structures_or_coords, topology, bfactors, path) -> tuple[Structure, np.ndarray, np.ndarray]:
    obj = structures_or_coords
    if isinstance(obj, Structure):
        top, coords = obj, obj.coords_A[None]
    elif isinstance(obj, Conformations):
        top, coords = obj.topology, obj.coords_A
    elif isinstance(obj, (list, tuple)) and obj and all(isinstance(s, Structure) for s in obj):
        top = obj[0]
        for k, s in enumerate(obj):
            if s.n_atoms != top.n_atoms or not np.array_equal(s.residue_index, top.residue_index):
                raise InputError(
                    f"{path}: structure {k} has a different topology ({s.n_atoms} atoms) from structure 0 "
                    f"({top.n_atoms}); a multi-model file needs one topology"
                )
        coords = np.stack([s.coords_A for s in obj])
    else:
        if topology is None:
            raise InputError(
                f"{path}: got coordinates ({type(obj).__name__}) without a topology; pass topology=<Structure>"
            )
        top = topology
        coords = np.asarray(obj, dtype=np.float32)
        if coords.ndim == 2:
            coords = coords[None]
        if coords.ndim != 3 or coords.shape[1:] != (top.n_atoms, 3):
            raise InputError(
                f"{path}: coordinates have shape {coords.shape}, expected (M, {top.n_atoms}, 3) for the topology"
            )
    coords = np.asarray(coords, dtype=np.float64)
    if not np.all(np.isfinite(coords)):
        raise InputError(f"{path}: coordinates contain NaN/inf; fix them before writing")
    m, n = coords.shape[:2]
    if bfactors is None:
        b = np.zeros((m, n))
    else:
        b = np.asarray(bfactors, dtype=np.float64)
        if b.shape == (n,):
            b = np.broadcast_to(b, (m, n))
        if b.shape != (m, n):
            raise InputError(f"{path}: bfactors have shape {b.shape}, expected ({n},) or ({m}, {n})")
    return top, coords, b


def _pdb_chain_ids(chains: np.ndarray) -> np.ndarray:
    """One-character chain IDs for PDB column 22 (longer IDs are mapped to letters in order)."""
    uniq = list(dict.fromkeys(chains.tolist()))
    if all(len(c) <= 1 for c in uniq):
        return np.array([c if c else " " for c in chains.tolist()])
    mapping = {c: _CHAIN_LETTERS[i % len(_CHAIN_LETTERS)] for i, c in enumerate(uniq)}
    logger.info("PDB chain IDs are one character; mapped %s", ", ".join(f"{k!r}→{v!r}" for k, v in mapping.items()))
    return np.array([mapping[c] for c in chains.tolist()])


def _pdb_atom_name(name: str, element: str) -> str:
    """Atom name in columns 13-16: a one-letter element starts in column 14."""
    if len(name) >= 4 or len(element) == 2:
        return f"{name:<4s}"[:4]
    return f" {name:<3s}"


def _element_of(name: str) -> str:
    n = name.strip().upper().lstrip("0123456789")
    if n in ("SC", "CA") or n.startswith("C"):
        return "C"
    return n[:1] or "C"


def _atomic_write(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_pdb(path, structures_or_coords, topology: Structure | None = None, bfactors=None) -> None:
    """Write a multi-model PDB (MODEL/ENDMDL per conformation, TER after each chain).

    Residue names, numbers and chains are kept; chain IDs longer than one
    character are mapped to single letters (the full ID goes to the segID
    columns 73-76). Coordinates must fit the fixed columns (−999.999…9999.999 Å).
    """
    path = Path(path)
    top, coords, b = _as_models(structures_or_coords, topology, bfactors, path)
    if np.abs(coords).max(initial=0) >= 9999.9995 or coords.min(initial=0) <= -999.9995:
        raise InputError(f"{path}: coordinates exceed the PDB column width (−999.999..9999.999 Å); write mmCIF instead")
    if np.abs(b).max(initial=0) >= 9999.995 or b.min(initial=0) <= -999.995:
        raise InputError(f"{path}: B-factor values exceed the PDB column width (−999.99..9999.99); rescale them")
    chains1 = _pdb_chain_ids(top.chain_ids)
    n = top.n_atoms
    elements = [_element_of(a) for a in top.atom_names.tolist()]
    names = [_pdb_atom_name(a, e) for a, e in zip(top.atom_names.tolist(), elements)]
    resn = [f"{r:>3s}"[:3] if len(r) <= 3 else r[:3] for r in top.residue_names.tolist()]
    resnum = [int(x) % 10000 if not -999 <= int(x) <= 9999 else int(x) for x in top.residue_numbers.tolist()]
    segs = [c[:4] for c in top.chain_ids.tolist()]
    prefix = [
        f"{names[i]} {resn[i]} {chains1[i]}{resnum[i]:>4d}    " for i in range(n)
    ]
    suffix = [f"      {segs[i]:<4s}{elements[i]:>2s}  \n" for i in range(n)]
    chain_end = np.r_[top.chain_ids[1:] != top.chain_ids[:-1], True] if n else np.zeros(0, bool)
    out = ["REMARK   1 written by cryoconf; coordinates in Angstrom\n"]
    for m in range(coords.shape[0]):
        out.append(f"MODEL     {m + 1:>4d}\n")
        serial = 0
        for i in range(n):
            serial += 1
            x, y, z = coords[m, i]
            out.append(f"ATOM  {serial % 100000:>5d} {prefix[i]}{x:8.3f}{y:8.3f}{z:8.3f}{1.0:6.2f}{b[m, i]:6.2f}{suffix[i]}")
            if chain_end[i]:
                serial += 1
                out.append(f"TER   {serial % 100000:>5d}      {resn[i]} {chains1[i]}{resnum[i]:>4d}\n")
        out.append("ENDMDL\n")
    out.append("END\n")
    _atomic_write(path, "".join(out))


def write_mmcif(path, structures_or_coords, topology: Structure | None = None, bfactors=None) -> None:
    """Write a multi-model mmCIF (gemmi); chain IDs of any length are kept."""
    import gemmi

    path = Path(path)
    top, coords, b = _as_models(structures_or_coords, topology, bfactors, path)
    st = gemmi.Structure()
    st.name = path.stem.split(".")[0] or "cryoconf"
    n = top.n_atoms
    res_starts = np.flatnonzero(np.r_[True, top.residue_index[1:] != top.residue_index[:-1]]) if n else []
    res_ends = np.r_[res_starts[1:], n] if n else []
    for m in range(coords.shape[0]):
        model = gemmi.Model(m + 1) if _model_takes_int() else gemmi.Model(str(m + 1))
        chain = None
        for s, e in zip(res_starts, res_ends):
            cid = str(top.chain_ids[s]) or "A"
            if chain is None or chain.name != cid:
                if chain is not None:
                    model.add_chain(chain)
                chain = gemmi.Chain(cid)
            res = gemmi.Residue()
            res.name = str(top.residue_names[s])
            res.seqid = gemmi.SeqId(int(top.residue_numbers[s]), " ")
            res.entity_type = gemmi.EntityType.Polymer
            for i in range(s, e):
                at = gemmi.Atom()
                at.name = str(top.atom_names[i])
                at.element = gemmi.Element(_element_of(str(top.atom_names[i])))
                at.pos = gemmi.Position(*coords[m, i])
                at.occ = 1.0
                at.b_iso = float(b[m, i])
                at.serial = i + 1
                res.add_atom(at)
            chain.add_residue(res)
        if chain is not None:
            model.add_chain(chain)
        st.add_model(model)
    st.setup_entities()
    for ent in st.entities:  # give polymers a sequence so that label_seq_id is filled
        if ent.entity_type == gemmi.EntityType.Polymer and ent.subchains:
            sub = st[0].get_subchain(ent.subchains[0])
            ent.full_sequence = [r.name for r in sub]
    try:
        st.assign_label_seq_id()
    except Exception:  # label_seq_id is optional; auth numbering is always written
        pass
    groups = gemmi.MmcifOutputGroups(True)
    groups.cell = False
    groups.symmetry = False
    doc = st.make_mmcif_document(groups)
    _atomic_write(path, doc.as_string())


def _model_takes_int() -> bool:
    import gemmi

    try:
        gemmi.Model(1)
        return True
    except TypeError:
        return False
