"""Atomic models: reading (PDB/mmCIF/MD trajectories), coarse-graining, writing.

Pure data plus functions (numpy only). Units: Å for lengths, electrons for amplitudes.
"""

from cryoconf.structure.coarse_grain import MAX_CA_GAP_A, detect_chain_breaks
from cryoconf.structure.ensemble_io import save_conformations
from cryoconf.structure.model import Conformations, Structure
from cryoconf.structure.readers import parse_frames, read_conformations, read_structure
from cryoconf.structure.residues import (
    ATOMIC_NUMBER,
    RESIDUE_ELECTRONS,
    RESIDUE_SIGMA_A,
    normalise_residue_name,
)
from cryoconf.structure.writers import write_mmcif, write_pdb

__all__ = [
    "Structure",
    "Conformations",
    "read_structure",
    "read_conformations",
    "save_conformations",
    "write_pdb",
    "write_mmcif",
    "parse_frames",
    "detect_chain_breaks",
    "MAX_CA_GAP_A",
    "normalise_residue_name",
    "RESIDUE_ELECTRONS",
    "RESIDUE_SIGMA_A",
    "ATOMIC_NUMBER",
]
