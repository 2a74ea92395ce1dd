"""Readers: one conformation (:func:`read_structure`) or many (:func:`read_conformations`).

Sources:
- PDB / mmCIF (``.pdb``, ``.ent``, ``.cif``, ``.mmcif``, optionally ``.gz``), read
  with gemmi; every MODEL is one conformation; alternative locations: first kept.
- MD topology + trajectory (PSF+DCD, GRO/PDB+XTC/TRR, …), read with MDAnalysis;
  a topology with coordinates (GRO, PDB) may also be given alone.
- An ensemble ``.npz`` written by :func:`~cryoconf.structure.ensemble_io.save_conformations`.

Selections use MDAnalysis selection syntax for every source; for gemmi-read
files an in-memory MDAnalysis universe is built from the parsed atoms.
Coordinates are in Å as the files store them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cryoconf.errors import InputError
from cryoconf.structure.atoms import file_kind, load_atom_table, select
from cryoconf.structure.coarse_grain import build_plan, check_options
from cryoconf.structure.ensemble_io import load_conformations_npz
from cryoconf.structure.model import Conformations, Structure

__all__ = ["read_structure", "read_conformations", "parse_frames"]


def parse_frames(frames, n_frames: int, source: str = "") -> np.ndarray:
    """Frame indices (int array) for ``frames`` in a source of ``n_frames`` frames.

    ``frames``: None (all), an int, a slice, a sequence of ints, or a string
    ``"start:stop:step"`` (any part may be empty) or ``"0,5,7"``. Negative
    indices count from the end.
    """
    where = f"{source}: " if source else ""
    if frames is None:
        return np.arange(n_frames)
    if isinstance(frames, str):
        s = frames.strip()
        try:
            if ":" in s:
                parts = [p.strip() for p in s.split(":")]
                if len(parts) > 3:
                    raise ValueError
                frames = slice(*[int(p) if p else None for p in parts])
            else:
                frames = [int(p) for p in s.split(",") if p.strip()]
        except ValueError:
            raise InputError(
                f"{where}frames={s!r} is not understood; use 'start:stop:step' (e.g. '0:100:10') or a list like '0,5,7'"
            ) from None
    if isinstance(frames, slice):
        idx = np.arange(n_frames)[frames]
    else:
        idx = np.atleast_1d(np.asarray(frames))
        if idx.dtype.kind not in "iu":
            raise InputError(f"{where}frames={frames!r}: give integer frame indices")
        idx = idx.astype(np.int64)
        bad = (idx >= n_frames) | (idx < -n_frames)
        if bad.any():
            raise InputError(
                f"{where}frame index {int(idx[bad][0])} is out of range: the source has {n_frames} frame(s) "
                f"(valid 0..{n_frames - 1})"
            )
        idx = np.where(idx < 0, idx + n_frames, idx)
    if idx.size == 0:
        raise InputError(f"{where}frames={frames!r} selects no frames out of {n_frames}")
    return idx


def read_conformations(
    path,
    trajectory=None,
    *,
    frames=None,
    selection: str | None = None,
    mode: str = "ca",
    nucleic: bool = False,
    sigma="residue",
    missing_ca: str = "error",
) -> Conformations:
    """Read many conformations sharing one topology.

    Args:
        path: PDB/mmCIF (every model a conformation), an MD topology
            (PSF/GRO/PDB/…; with ``trajectory``), or an ensemble ``.npz``.
        trajectory: MD trajectory (DCD/XTC/TRR/…) for the topology ``path``.
        frames: which frames: None (all), slice, list of ints, ``"start:stop:step"`` or ``"0,5,7"``.
        selection: MDAnalysis selection string (e.g. ``"protein and resid 1-100"``);
            an empty selection is an :class:`InputError`. Not supported for ``.npz``.
        mode: ``"ca"`` (one Cα pseudo-atom per residue), ``"ca+sc"`` (plus a
            side-chain centroid ``"SC"``), ``"allatom"`` (every heavy atom, amplitude Z).
        nucleic: keep nucleotides (one ``"C1'"`` pseudo-atom each).
        sigma: ``"residue"`` (per-residue table; all-atom: 0.5 Å) or a uniform width in Å.
        missing_ca: ``"error"`` or ``"drop"`` for residues without Cα (C1′).

    Returns:
        :class:`Conformations` with coordinates (M, N, 3) float32 Å; the
        topology carries the first selected frame's coordinates, and chain
        breaks are detected on it.
    """
    p = Path(path)
    if file_kind(p) == ".npz" and trajectory is None:
        if not p.exists():
            raise InputError(f"{p}: file not found; check the path")
        if selection is not None:
            raise InputError(f"{p}: selection is not supported for .npz ensembles; select when creating the ensemble")
        conf = load_conformations_npz(p)
        idx = parse_frames(frames, len(conf), str(p))
        if idx.size == len(conf) and np.array_equal(idx, np.arange(len(conf))):
            return conf
        return Conformations(
            topology=conf.topology.with_coords(conf.coords_A[idx[0]]),
            coords_A=conf.coords_A[idx],
            theta=None if conf.theta is None else conf.theta[idx],
            labels=None if conf.labels is None else conf.labels[idx],
            frame_indices=conf.frame_indices[idx],
        )
    check_options(mode, sigma, missing_ca)
    table = load_atom_table(p, trajectory)
    idx = parse_frames(frames, table.n_frames, str(p) if trajectory is None else f"{trajectory}")
    table = select(table, selection)
    plan = build_plan(table, mode=mode, nucleic=nucleic, sigma=sigma, missing_ca=missing_ca)
    coords = np.empty((idx.size, plan.n_atoms, 3), dtype=np.float32)
    if table.universe is None:
        for i, f in enumerate(idx):
            coords[i] = plan.apply(table.coords[f, plan.columns])
    else:
        u = table.universe
        ag = u.atoms[table.atom_indices[plan.columns]]
        for i, _ts in enumerate(u.trajectory[idx]):
            coords[i] = plan.apply(ag.positions)
    if not np.all(np.isfinite(coords)):
        m = int(np.flatnonzero(~np.isfinite(coords).all(axis=(1, 2)))[0])
        raise InputError(f"{p}: frame {int(idx[m])} has non-finite coordinates; check the file")
    topology = Structure(
        coords_A=coords[0], atom_names=plan.atom_names, residue_names=plan.residue_names,
        residue_numbers=plan.residue_numbers, chain_ids=plan.chain_ids, amplitudes_e=plan.amplitudes_e,
        sigmas_A=plan.sigmas_A, residue_index=plan.residue_index, chain_breaks=plan.chain_breaks(coords[0]),
    )
    return Conformations(topology=topology, coords_A=coords, theta=None, labels=None, frame_indices=idx)


def read_structure(
    path,
    *,
    mode: str = "ca",
    nucleic: bool = False,
    sigma="residue",
    missing_ca: str = "error",
    selection: str | None = None,
    trajectory=None,
    frame: int = 0,
) -> Structure:
    """Read one conformation (the first model / frame by default; ``frame`` picks another).

    Same options as :func:`read_conformations`.
    """
    conf = read_conformations(
        path, trajectory, frames=[frame], selection=selection, mode=mode, nucleic=nucleic,
        sigma=sigma, missing_ca=missing_ca,
    )
    return conf.topology
