"""Ensembles from an MD trajectory (or any multi-model file): frames, alignment and an order parameter θ.

Frames are read as pseudo-atoms with :func:`cryoconf.structure.read_conformations`
(``frames``, ``selection``, ``mode`` as everywhere in cryoconf), superposed onto a
reference frame by Kabsch on the pseudo-atoms of an alignment selection (the
rotation and translation are applied to every pseudo-atom), and given θ:

- ``"rmsd"``: RMSD (Å) of the ``rmsd_selection`` pseudo-atoms (default: all) to
  the reference frame **after** the alignment above, with no further fitting —
  with the default alignment on all pseudo-atoms this is the usual
  superposed RMSD;
- ``"com-distance"``: the distance (Å) between the centres of mass of two
  MDAnalysis selections, computed on the **all-atom** topology/trajectory with
  the real atomic masses MDAnalysis reads (or guesses from the atom types) —
  not on the Cα pseudo-atoms, whose "masses" would be one per residue. For ADK
  ``("resid 122-159", "resid 1-29 or resid 60-121 or resid 160-214")`` is LID–CORE;
  ``("resid 122-159", "resid 30-59")`` is LID–NMP;
- ``"frame"``: the frame index in the source.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from cryoconf.dynamics.alignment import as_tensor, kabsch, rmsd
from cryoconf.dynamics.ensembles.selection import select_pseudo_atoms
from cryoconf.errors import InputError
from cryoconf.structure.atoms import file_kind
from cryoconf.structure.model import Conformations
from cryoconf.structure.readers import read_conformations

__all__ = ["trajectory_ensemble", "align_conformations", "com_distances", "THETA_KINDS"]

log = logging.getLogger("cryoconf.dynamics")

THETA_KINDS = ("rmsd", "com-distance", "frame")


def align_conformations(coords, reference, indices=None) -> np.ndarray:
    """Superpose every conformation (M, N, 3) onto ``reference`` (N, 3) by Kabsch on the atoms
    ``indices`` (default all); the transform is applied to all atoms. Returns float64 (M, N, 3)."""
    x = as_tensor(coords)
    ref = as_tensor(reference)
    n = x.shape[-2]
    w = torch.zeros(n, dtype=x.dtype)
    w[torch.as_tensor(np.arange(n) if indices is None else np.asarray(indices), dtype=torch.long)] = 1.0
    rot, trans = kabsch(x, ref[None], weights=w)
    return (x @ rot.transpose(-1, -2) + trans[..., None, :]).numpy()


def com_distances(path, trajectory, selections, frames) -> np.ndarray:
    """Distance (Å) between the mass-weighted centres of two MDAnalysis selections, per frame.

    Computed on the all-atom system read by MDAnalysis (real atomic masses), for
    the frame indices ``frames`` (ints) of ``path`` (+ ``trajectory``).
    """
    import MDAnalysis as mda

    if len(selections) != 2:
        raise InputError(f"--com takes two selections, got {len(selections)}; e.g. --com 'resid 122-159' 'resid 30-59'")
    p = Path(path)
    if file_kind(p) == ".npz":
        raise InputError(f"{p}: θ = com-distance needs the all-atom topology/trajectory (atomic masses), not an "
                         "ensemble .npz; give the PSF/PDB (+ trajectory) instead")
    args = [str(p)] + ([str(trajectory)] if trajectory is not None else [])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            u = mda.Universe(*args)
    except Exception as exc:
        raise InputError(f"{' + '.join(args)}: MDAnalysis cannot read this for the centre-of-mass θ "
                         f"({type(exc).__name__}: {exc}); give a topology MDAnalysis reads (PSF, PDB, GRO)") from exc
    groups = []
    for sel in selections:
        try:
            ag = u.select_atoms(sel)
        except Exception as exc:
            raise InputError(f"--com selection {sel!r} is invalid ({exc}); use MDAnalysis selection syntax") from exc
        if len(ag) == 0:
            raise InputError(f"--com selection {sel!r} matches no atoms of {p}; check residue numbers and syntax")
        masses = ag.masses
        if not np.all(np.isfinite(masses)) or masses.sum() <= 0:
            raise InputError(f"--com selection {sel!r}: atoms have no usable masses in {p}; give a topology with "
                             "masses or element/type information (PSF, PDB with elements)")
        groups.append(ag)
    idx = np.asarray(frames, dtype=np.int64)
    out = np.empty(idx.size, dtype=np.float64)
    for k, _ts in enumerate(u.trajectory[idx]):
        out[k] = float(np.linalg.norm(groups[0].center_of_mass() - groups[1].center_of_mass()))
    return out


def trajectory_ensemble(
    path,
    trajectory=None,
    *,
    frames=None,
    stride: int | None = None,
    selection: str | None = None,
    mode: str = "ca",
    nucleic: bool = False,
    sigma="residue",
    missing_ca: str = "error",
    theta: str = "rmsd",
    reference_frame: int = 0,
    align_selection: str | None = None,
    rmsd_selection: str | None = None,
    com_selections=None,
) -> Conformations:
    """Frames of a trajectory as an ensemble with an order parameter θ.

    Args:
        path, trajectory: topology (+ trajectory), a multi-model PDB/mmCIF or an ensemble ``.npz``.
        frames: ``None`` (all), ``"start:stop:step"``, ``"0,5,9"``, a slice or a list of indices
            (as in :func:`~cryoconf.structure.read_conformations`).
        stride: every k-th frame (instead of ``frames``).
        selection, mode, nucleic, sigma, missing_ca: pseudo-atoms, as in
            :func:`~cryoconf.structure.read_conformations`.
        theta: ``"rmsd"`` (Å), ``"com-distance"`` (Å) or ``"frame"`` (see the module doc).
        reference_frame: frame index in the source (not among the selected frames) that the
            frames are aligned to and the RMSD is measured from; negative counts from the end.
        align_selection: residue ranges or an MDAnalysis selection on the pseudo-atoms for the
            Kabsch fit (default: all pseudo-atoms); ``"none"`` keeps the coordinates as read.
        rmsd_selection: pseudo-atoms whose RMSD is θ (default: all).
        com_selections: two MDAnalysis selections (all-atom) for ``theta="com-distance"``.

    Returns:
        :class:`Conformations` (aligned coordinates, θ, labels ``"frame17"``, frame_indices
        into the source).
    """
    if theta not in THETA_KINDS:
        raise InputError(f"--theta {theta!r}: use one of {', '.join(THETA_KINDS)}")
    if stride is not None:
        if frames is not None:
            raise InputError("give either --frames or --stride, not both")
        if int(stride) < 1:
            raise InputError(f"--stride must be ≥ 1, got {stride}")
        frames = slice(None, None, int(stride))
    conf = read_conformations(path, trajectory, frames=frames, selection=selection, mode=mode, nucleic=nucleic,
                              sigma=sigma, missing_ca=missing_ca)
    ref_conf = read_conformations(path, trajectory, frames=[reference_frame], selection=selection, mode=mode,
                                  nucleic=nucleic, sigma=sigma, missing_ca=missing_ca)
    ref_index = int(ref_conf.frame_indices[0])
    reference = ref_conf.coords_A[0]
    top = conf.topology
    if align_selection is not None and str(align_selection).strip().lower() == "none":
        coords = conf.coords_A.astype(np.float64)
    else:
        idx = None if align_selection is None else select_pseudo_atoms(top, align_selection, what="--align")
        if idx is not None and idx.size < 3:
            raise InputError(f"--align {align_selection!r} selects {idx.size} pseudo-atom(s); a superposition needs ≥ 3")
        coords = align_conformations(conf.coords_A, reference, idx)
    if theta == "rmsd":
        w = np.zeros(top.n_atoms)
        rsel = np.arange(top.n_atoms) if rmsd_selection is None else select_pseudo_atoms(
            top, rmsd_selection, what="--rmsd-selection")
        w[rsel] = 1.0
        values = rmsd(coords, reference.astype(np.float64)[None], align=False, weights=w).numpy()
    elif theta == "com-distance":
        if com_selections is None:
            raise InputError("θ = com-distance needs two selections: --com 'resid 122-159' 'resid 30-59'")
        values = com_distances(path, trajectory, list(com_selections), conf.frame_indices)
    else:
        values = conf.frame_indices.astype(np.float64)
    log.info("trajectory ensemble: %d frames, θ=%s (reference frame %d)", len(conf), theta, ref_index)
    coords32 = coords.astype(np.float32)
    return Conformations(
        topology=top.with_coords(coords32[0]), coords_A=coords32, theta=np.asarray(values, dtype=np.float64),
        labels=np.array([f"frame{int(i)}" for i in conf.frame_indices]), frame_indices=conf.frame_indices,
    )

