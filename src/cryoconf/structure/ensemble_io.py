"""Ensemble ``.npz`` files: many conformations plus the pseudo-atom topology.

Keys (all plain arrays, no pickles): ``coordinates`` (M, N, 3) float32 Å,
``theta`` (M,) float (NaN-filled with ``has_theta=False`` when absent),
``labels`` (M,) str (``has_labels``), ``frame_indices`` (M,) int, and the
topology: ``residue_names``, ``residue_numbers``, ``chain_ids``, ``atom_names``,
``amplitudes_e`` (electrons), ``sigmas_A`` (Å), ``residue_index``,
``chain_breaks``, plus ``format_version``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cryoconf.errors import InputError
from cryoconf.structure.model import Conformations, Structure
from cryoconf.atomic_write import atomic_path

__all__ = ["save_conformations", "load_conformations_npz"]

FORMAT_VERSION = 1
_TOPOLOGY_KEYS = ("atom_names", "residue_names", "residue_numbers", "chain_ids", "amplitudes_e", "sigmas_A",
                  "residue_index", "chain_breaks")


def save_conformations(path, conf: Conformations) -> None:
    """Write ``conf`` to an ``.npz`` at ``path`` (atomically: temp file + rename)."""
    if not isinstance(conf, Conformations):
        raise InputError(f"save_conformations({path}): expected a Conformations, got {type(conf).__name__}")
    path = Path(path)
    m = len(conf)
    top = conf.topology
    arrays = {
        "format_version": np.array(FORMAT_VERSION),
        "coordinates": conf.coords_A.astype(np.float32),
        "theta": np.full(m, np.nan) if conf.theta is None else np.asarray(conf.theta, dtype=np.float64),
        "has_theta": np.array(conf.theta is not None),
        "labels": np.full(m, "", dtype=str) if conf.labels is None else np.asarray(conf.labels, dtype=str),
        "has_labels": np.array(conf.labels is not None),
        "frame_indices": np.asarray(conf.frame_indices, dtype=np.int64),
    }
    for k in _TOPOLOGY_KEYS:
        arrays[k] = np.asarray(getattr(top, k))
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)


def load_conformations_npz(path) -> Conformations:
    """Read an ensemble ``.npz`` written by :func:`save_conformations`."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception as exc:
        raise InputError(f"{path}: cannot be read as an ensemble .npz ({exc}); write it with save_conformations") from exc
    missing = [k for k in ("coordinates", *_TOPOLOGY_KEYS) if k not in data]
    if missing:
        raise InputError(
            f"{path}: not a cryoconf ensemble .npz (missing {', '.join(missing)}); write it with save_conformations"
        )
    coords = np.asarray(data["coordinates"], dtype=np.float32)
    if coords.ndim != 3 or coords.shape[-1] != 3 or coords.shape[0] == 0:
        raise InputError(f"{path}: 'coordinates' has shape {coords.shape}, expected (M, N, 3) with M ≥ 1")
    top = Structure(coords_A=coords[0], **{k: data[k] for k in _TOPOLOGY_KEYS})
    m = coords.shape[0]
    theta = data.get("theta")
    if theta is not None and not bool(data.get("has_theta", np.array(True))):
        theta = None
    labels = data.get("labels")
    if labels is not None and not bool(data.get("has_labels", np.array(True))):
        labels = None
    frames = data.get("frame_indices", np.arange(m))
    return Conformations(topology=top, coords_A=coords, theta=theta, labels=labels, frame_indices=frames)
