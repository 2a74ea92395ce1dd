"""Data classes: one conformation (:class:`Structure`) and many (:class:`Conformations`).

Pure data, numpy only. Coordinates in Å, amplitudes in electrons, widths in Å.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np

from cryoconf.errors import InputError

__all__ = ["Structure", "Conformations"]


@dataclass
class Structure:
    """One conformation of N pseudo-atoms.

    Attributes:
        coords_A: (N, 3) float32 coordinates, Å.
        atom_names: (N,) str: ``"CA"``, ``"SC"`` (side-chain centroid), ``"C1'"``,
            or the atom name in all-atom mode.
        residue_names: (N,) str, normalised 3-letter (nucleotides: 1–2 letter) names.
        residue_numbers: (N,) int, residue numbers from the file.
        chain_ids: (N,) str.
        amplitudes_e: (N,) float32, electrons.
        sigmas_A: (N,) float32, Gaussian standard deviation, Å.
        residue_index: (N,) int, 0..R−1 index of each pseudo-atom's residue.
        chain_breaks: (N,) bool, True where the residue of atom i starts a new
            segment (new chain, or Cα gap > 4.2 Å from the previous residue);
            True at 0. Only the first pseudo-atom of such a residue is True.
    """

    coords_A: np.ndarray
    atom_names: np.ndarray
    residue_names: np.ndarray
    residue_numbers: np.ndarray
    chain_ids: np.ndarray
    amplitudes_e: np.ndarray
    sigmas_A: np.ndarray
    residue_index: np.ndarray
    chain_breaks: np.ndarray

    def __post_init__(self) -> None:
        self.coords_A = np.asarray(self.coords_A, dtype=np.float32).reshape(-1, 3)
        n = self.coords_A.shape[0]
        self.atom_names = np.asarray(self.atom_names, dtype=str)
        self.residue_names = np.asarray(self.residue_names, dtype=str)
        self.residue_numbers = np.asarray(self.residue_numbers, dtype=np.int64)
        self.chain_ids = np.asarray(self.chain_ids, dtype=str)
        self.amplitudes_e = np.asarray(self.amplitudes_e, dtype=np.float32)
        self.sigmas_A = np.asarray(self.sigmas_A, dtype=np.float32)
        self.residue_index = np.asarray(self.residue_index, dtype=np.int64)
        self.chain_breaks = np.asarray(self.chain_breaks, dtype=bool)
        for f in fields(self):
            if f.name == "coords_A":
                continue
            arr = getattr(self, f.name)
            if arr.shape != (n,):
                raise InputError(
                    f"Structure.{f.name} has shape {arr.shape}, expected ({n},) to match coords_A {self.coords_A.shape}; "
                    "give one value per pseudo-atom"
                )

    @property
    def n_atoms(self) -> int:
        """Number of pseudo-atoms N."""
        return int(self.coords_A.shape[0])

    @property
    def n_residues(self) -> int:
        """Number of residues R."""
        return int(self.residue_index.max()) + 1 if self.n_atoms else 0

    def with_coords(self, coords_A: np.ndarray) -> "Structure":
        """Copy with new (N, 3) coordinates in Å; metadata shared."""
        coords = np.asarray(coords_A, dtype=np.float32)
        if coords.shape != (self.n_atoms, 3):
            raise InputError(
                f"with_coords: coordinates have shape {coords.shape}, expected ({self.n_atoms}, 3) for this structure"
            )
        return replace(self, coords_A=coords)


@dataclass
class Conformations:
    """M conformations sharing one topology.

    Attributes:
        topology: metadata; ``topology.coords_A`` is the first conformation.
        coords_A: (M, N, 3) float32, Å.
        theta: (M,) float order parameter, or None.
        labels: (M,) str, or None.
        frame_indices: (M,) int, index of each conformation in its source.
    """

    topology: Structure
    coords_A: np.ndarray
    theta: np.ndarray | None = None
    labels: np.ndarray | None = None
    frame_indices: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.coords_A = np.asarray(self.coords_A, dtype=np.float32)
        if self.coords_A.ndim == 2:
            self.coords_A = self.coords_A[None]
        m = self.coords_A.shape[0]
        if self.coords_A.ndim != 3 or self.coords_A.shape[1:] != (self.topology.n_atoms, 3):
            raise InputError(
                f"Conformations: coordinates have shape {self.coords_A.shape}, expected (M, {self.topology.n_atoms}, 3) "
                "to match the topology"
            )
        if self.frame_indices is None:
            self.frame_indices = np.arange(m)
        self.frame_indices = np.asarray(self.frame_indices, dtype=np.int64)
        if self.theta is not None:
            self.theta = np.asarray(self.theta, dtype=np.float64)
        if self.labels is not None:
            self.labels = np.asarray(self.labels, dtype=str)
        for name in ("theta", "labels", "frame_indices"):
            arr = getattr(self, name)
            if arr is not None and arr.shape != (m,):
                raise InputError(f"Conformations.{name} has shape {arr.shape}, expected ({m},): one per conformation")

    def __len__(self) -> int:
        return int(self.coords_A.shape[0])

    def structure(self, m: int) -> Structure:
        """Conformation ``m`` as a :class:`Structure`."""
        return self.topology.with_coords(self.coords_A[m])

    def centered_coords(self, center: str = "first") -> np.ndarray:
        """Coordinates (M, N, 3) float32 Å, translated as ``center`` says.

        ``first``: one translation for all conformations, putting the mean pseudo-atom
        of the first at the origin (relative motion kept); ``each``: every
        conformation centred on its own mean; ``none``: as stored (the model is
        already in the frame of the poses).
        """
        coords = np.asarray(self.coords_A, dtype=np.float32)
        if center == "first":
            return coords - coords[0].mean(axis=0, keepdims=True)[None]
        if center == "each":
            return coords - coords.mean(axis=1, keepdims=True)
        if center == "none":
            return coords.copy()
        raise InputError(f"center must be first, each or none, got {center!r}")
