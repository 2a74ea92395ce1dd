"""Structural hypotheses and structural metrics: ANM modes, ensembles, alignment, metrics, maps.

- ``alignment``: batched Kabsch superposition, RMSD, pairwise RMSD matrices.
- ``anm``: anisotropic-network-model Hessian and normal modes (dense or sparse).
- ``ensembles``: template ensembles with an order parameter θ (ANM, MD, rigid motions).
- ``metrics``: EMD-RMSD, paired RMSD, per-residue errors, bond and clash checks.
- ``maps``: Gaussian density maps, MRC I/O, FSC, NMSE.
"""

from cryoconf.dynamics.alignment import kabsch, pairwise_rmsd, rmsd, superpose
from cryoconf.dynamics.anm import ANMModes, anm_hessian, compute_anm_modes, write_mode_animation
from cryoconf.dynamics.maps import density_map, fsc, nmse, read_mrc, write_mrc
from cryoconf.dynamics.metrics import clash_counts, emd_rmsd, paired_rmsd, per_residue_error

__all__ = [
    "ANMModes", "anm_hessian", "clash_counts", "compute_anm_modes", "density_map", "emd_rmsd", "fsc",
    "kabsch", "nmse", "paired_rmsd", "pairwise_rmsd", "per_residue_error", "read_mrc", "rmsd", "superpose",
    "write_mode_animation", "write_mrc",
]
