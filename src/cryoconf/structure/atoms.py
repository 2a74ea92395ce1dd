"""Atom tables read from files (internal): gemmi for PDB/mmCIF, MDAnalysis for MD.

An :class:`AtomTable` holds per-atom topology (names, residues, chains,
elements) plus either all coordinates (gemmi: every model in memory) or an
MDAnalysis ``Universe`` whose trajectory is read frame by frame later.
Coordinates are in Å, as the files store them.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cryoconf.errors import InputError
from cryoconf.structure.residues import element_from_name, normalise_residue_name

__all__ = ["AtomTable", "GEMMI_SUFFIXES", "MDA_TOPOLOGY_SUFFIXES", "MDA_TRAJECTORY_SUFFIXES", "load_atom_table", "file_kind"]

logger = logging.getLogger("cryoconf.structure")

GEMMI_SUFFIXES = (".pdb", ".ent", ".cif", ".mmcif", ".pdb.gz", ".ent.gz", ".cif.gz", ".mmcif.gz")
MDA_TOPOLOGY_SUFFIXES = (".psf", ".gro", ".prmtop", ".parm7", ".tpr", ".pqr", ".crd", ".mol2", ".xyz", ".data")
MDA_TRAJECTORY_SUFFIXES = (
    ".dcd", ".xtc", ".trr", ".nc", ".ncdf", ".netcdf", ".mdcrd", ".crd", ".pdb", ".gro", ".xyz",
    ".lammpstrj", ".trj", ".h5md", ".tng", ".dtr", ".ent",
)


def file_kind(path: Path) -> str:
    """Lower-case suffix, with a trailing ``.gz`` kept (``"x.pdb.gz"`` → ``".pdb.gz"``)."""
    suffixes = [s.lower() for s in path.suffixes]
    if not suffixes:
        return ""
    if suffixes[-1] == ".gz" and len(suffixes) >= 2:
        return suffixes[-2] + ".gz"
    return suffixes[-1]


@dataclass
class AtomTable:
    """Per-atom topology of a file, and its coordinates.

    ``res_key`` groups atoms into residues (same key = same residue).
    Either ``coords`` (M, A, 3) float32 Å is set, or ``universe`` (MDAnalysis)
    with ``atom_indices`` (A,) mapping table rows to universe atom indices.
    """

    path: str
    names: np.ndarray
    resnames: np.ndarray
    resids: np.ndarray
    icodes: np.ndarray
    chains: np.ndarray
    elements: np.ndarray
    res_key: np.ndarray
    coords: np.ndarray | None = None
    universe: Any = None
    atom_indices: np.ndarray | None = None
    n_frames: int = 1
    extra: dict = field(default_factory=dict)

    @property
    def n_atoms(self) -> int:
        return int(self.names.shape[0])

    def subset(self, keep: np.ndarray) -> "AtomTable":
        """Rows ``keep`` (bool mask or index array) of this table."""
        keep = np.asarray(keep)
        return AtomTable(
            path=self.path,
            names=self.names[keep], resnames=self.resnames[keep], resids=self.resids[keep],
            icodes=self.icodes[keep], chains=self.chains[keep], elements=self.elements[keep],
            res_key=self.res_key[keep],
            coords=None if self.coords is None else self.coords[:, keep],
            universe=self.universe,
            atom_indices=None if self.atom_indices is None else self.atom_indices[keep],
            n_frames=self.n_frames,
        )


def _fill_elements(names: np.ndarray, resnames: np.ndarray, elements: np.ndarray) -> np.ndarray:
    out = np.array([e.strip().upper() for e in elements], dtype=object)
    missing = np.flatnonzero(out == "")
    for i in missing:
        out[i] = element_from_name(names[i], normalise_residue_name(resnames[i]) is not None)
    return out.astype(str)


def _read_gemmi(path: Path) -> AtomTable:
    import gemmi

    try:
        st = gemmi.read_structure(str(path))
    except Exception as exc:  # gemmi raises RuntimeError/ValueError on malformed files
        raise InputError(f"{path}: cannot be read as PDB/mmCIF ({exc}); check the file format and extension") from exc
    st.remove_alternative_conformations()
    if len(st) == 0:
        raise InputError(f"{path}: contains no models/atoms; give a PDB/mmCIF file with coordinates")
    names, resnames, resids, icodes, chains, elements, res_key = [], [], [], [], [], [], []
    model0 = st[0]
    rk = 0
    for ch in model0:
        for res in ch:
            for at in res:
                names.append(at.name)
                resnames.append(res.name)
                resids.append(res.seqid.num)
                icodes.append(res.seqid.icode.strip())
                chains.append(ch.name if ch.name.strip() else res.segment.strip())
                elements.append(at.element.name if at.element.name not in ("X", "") else "")
                res_key.append(rk)
            rk += 1
    n = len(names)
    if n == 0:
        raise InputError(f"{path}: model 1 has no atoms; give a PDB/mmCIF file with coordinates")
    coords = np.empty((len(st), n, 3), dtype=np.float32)
    for mi, model in enumerate(st):
        pos = [(a.pos.x, a.pos.y, a.pos.z) for ch in model for res in ch for a in res]
        if len(pos) != n:
            raise InputError(
                f"{path}: model {mi + 1} has {len(pos)} atoms but model 1 has {n}; all models of a multi-model "
                "file must share one topology (same atoms in the same order)"
            )
        coords[mi] = np.asarray(pos, dtype=np.float32)
    names_a = np.asarray(names, dtype=str)
    resnames_a = np.asarray(resnames, dtype=str)
    return AtomTable(
        path=str(path), names=names_a, resnames=resnames_a, resids=np.asarray(resids, dtype=np.int64),
        icodes=np.asarray(icodes, dtype=str), chains=np.asarray(chains, dtype=str),
        elements=_fill_elements(names_a, resnames_a, np.asarray(elements, dtype=str)),
        res_key=np.asarray(res_key, dtype=np.int64), coords=coords, n_frames=len(st),
    )


def _read_mdanalysis(path: Path, trajectory: Path | None) -> AtomTable:
    import MDAnalysis as mda

    args = [str(path)] + ([str(trajectory)] if trajectory is not None else [])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            u = mda.Universe(*args)
    except Exception as exc:
        what = f"{path}" + (f" + {trajectory}" if trajectory is not None else "")
        raise InputError(
            f"{what}: MDAnalysis cannot read this topology/trajectory ({type(exc).__name__}: {exc}); "
            "check that the files match (same atoms) and the extensions name their formats"
        ) from exc
    atoms = u.atoms
    n = len(atoms)
    if n == 0:
        raise InputError(f"{path}: contains no atoms")
    if not hasattr(u, "trajectory") or u.trajectory is None or len(u.trajectory) == 0:
        raise InputError(f"{path}: has no coordinates; give a trajectory file (DCD, XTC, ...) as well")
    top = u._topology
    chains = None
    if hasattr(top, "chainIDs"):
        chains = np.asarray(atoms.chainIDs, dtype=str)
        if np.all(np.char.strip(chains) == ""):
            chains = None
    if chains is None:
        chains = np.asarray(atoms.segids, dtype=str) if hasattr(top, "segids") else np.full(n, "", dtype=str)
    icodes = np.asarray(atoms.icodes, dtype=str) if hasattr(top, "icodes") else np.full(n, "", dtype=str)
    elements = np.asarray(atoms.elements, dtype=str) if hasattr(top, "elements") else np.full(n, "", dtype=str)
    names = np.asarray(atoms.names, dtype=str)
    resnames = np.asarray(atoms.resnames, dtype=str)
    keep = np.ones(n, dtype=bool)
    if hasattr(top, "altLocs"):
        alt = np.char.strip(np.asarray(atoms.altLocs, dtype=str))
        keep = np.isin(alt, ["", "A", "1"])
    table = AtomTable(
        path=str(path), names=names, resnames=resnames, resids=np.asarray(atoms.resids, dtype=np.int64),
        icodes=np.char.strip(icodes), chains=np.char.strip(chains),
        elements=_fill_elements(names, resnames, elements),
        res_key=np.asarray(atoms.resindices, dtype=np.int64), universe=u,
        atom_indices=np.arange(n), n_frames=len(u.trajectory),
    )
    return table if keep.all() else table.subset(keep)


def load_atom_table(path: str | Path, trajectory: str | Path | None = None) -> AtomTable:
    """Read ``path`` (and ``trajectory``) into an :class:`AtomTable`.

    PDB/mmCIF without a trajectory are read with gemmi (all models);
    everything else with MDAnalysis.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: file not found; check the path")
    if p.is_dir():
        raise InputError(f"{p}: is a directory; give a structure file (PDB, mmCIF, PSF/GRO + trajectory)")
    kind = file_kind(p)
    if trajectory is not None:
        t = Path(trajectory)
        if not t.exists():
            raise InputError(f"{t}: trajectory file not found; check the path")
        if file_kind(t) not in MDA_TRAJECTORY_SUFFIXES:
            raise InputError(
                f"{t}: unknown trajectory extension {file_kind(t)!r}; use one of {', '.join(MDA_TRAJECTORY_SUFFIXES)}"
            )
        if kind not in MDA_TOPOLOGY_SUFFIXES + (".pdb", ".ent", ".cif", ".mmcif"):
            raise InputError(
                f"{p}: unknown topology extension {kind!r}; use PSF, GRO, PDB, PRMTOP, TPR ... with a trajectory"
            )
        return _read_mdanalysis(p, t)
    if kind in GEMMI_SUFFIXES:
        return _read_gemmi(p)
    if kind == ".psf":
        raise InputError(f"{p}: a PSF topology has no coordinates; pass a trajectory (e.g. DCD) as well")
    if kind in MDA_TOPOLOGY_SUFFIXES:
        return _read_mdanalysis(p, None)
    raise InputError(
        f"{p}: unknown file extension {kind!r}; give PDB (.pdb/.ent), mmCIF (.cif/.mmcif), an ensemble .npz, "
        "or a topology (.psf/.gro/...) plus a trajectory (.dcd/.xtc/...)"
    )


def select(table: AtomTable, selection: str | None) -> AtomTable:
    """Apply an MDAnalysis selection string; returns the selected rows.

    For gemmi-read files an in-memory MDAnalysis universe is built from the
    table (names, resnames, resids, icodes, chainIDs/segids, elements and the
    first model's coordinates), so the same selection language works.
    """
    if selection is None:
        return table
    sel = str(selection)
    if table.universe is not None:
        try:
            ag = table.universe.atoms[table.atom_indices].select_atoms(sel)
        except Exception as exc:
            raise InputError(f"{table.path}: invalid selection {sel!r} ({exc}); use MDAnalysis selection syntax") from exc
        pos = {int(i): k for k, i in enumerate(table.atom_indices)}
        rows = np.array([pos[int(i)] for i in ag.indices if int(i) in pos], dtype=np.int64)
    else:
        u = _empty_universe(table)
        try:
            ag = u.select_atoms(sel)
        except Exception as exc:
            raise InputError(f"{table.path}: invalid selection {sel!r} ({exc}); use MDAnalysis selection syntax") from exc
        rows = np.asarray(ag.indices, dtype=np.int64)
    if rows.size == 0:
        raise InputError(f"{table.path}: selection {sel!r} matches no atoms; check residue numbers/chains and the syntax")
    return table.subset(np.sort(rows))


def _empty_universe(table: AtomTable):
    import MDAnalysis as mda

    _, res_first, res_of_atom = np.unique(table.res_key, return_index=True, return_inverse=True)
    chains = table.chains
    seg_names, seg_first, seg_of_atom = np.unique(chains, return_index=True, return_inverse=True)
    n_res = res_first.size
    res_seg = seg_of_atom[res_first]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        u = mda.Universe.empty(
            table.n_atoms, n_residues=n_res, n_segments=seg_names.size,
            atom_resindex=res_of_atom, residue_segindex=res_seg, trajectory=True,
        )
        u.add_TopologyAttr("names", table.names)
        u.add_TopologyAttr("elements", table.elements)
        u.add_TopologyAttr("chainIDs", chains)
        u.add_TopologyAttr("resnames", table.resnames[res_first])
        u.add_TopologyAttr("resids", table.resids[res_first])
        u.add_TopologyAttr("icodes", table.icodes[res_first])
        u.add_TopologyAttr("segids", seg_names)
    u.atoms.positions = table.coords[0]
    return u
