"""Ensembles of structural hypotheses, each with an order parameter θ.

Every generator returns a :class:`~cryoconf.structure.Conformations`
(coordinates (M, N, 3) float32 Å, ``theta`` (M,), ``labels``, ``frame_indices``,
the pseudo-atom topology), ready for :func:`cryoconf.structure.save_conformations`
(ensemble ``.npz``) and :func:`cryoconf.structure.write_pdb` (multi-model PDB).

| generator | motion | θ |
|---|---|---|
| :func:`mode_ensemble` | walk along one ANM mode | signed RMSD to the reference (Å) |
| :func:`two_mode_ensemble` | mode i for θ < 0, mode j for θ > 0 (cryoSBI) | −RMSD / +RMSD (Å) |
| :func:`boltzmann_ensemble` | α_m ~ N(0, kT/(γ·λ_m)) over K modes | RMSD to the reference (Å) |
| :func:`trajectory_ensemble` | MD frames, Kabsch-aligned | RMSD, COM distance (Å) or frame |
| :func:`domain_rotation_ensemble` | rigid domain rotation (cryoSPHERE toy) | angle (°) |
| :func:`dihedral_ensemble` | backbone torsion at one residue (Cryofold toy) | angle (°) |

:func:`spacing_report` checks that θ is monotone and evenly spaced, as template
matching needs. The implementation is split by job: ``modes`` (ANM),
``trajectory`` (MD), ``rigid`` (domains, dihedrals), ``selection`` (selections →
pseudo-atoms) and ``spacing``.
"""

from cryoconf.dynamics.ensembles.modes import (
    RMSD_KINDS,
    boltzmann_ensemble,
    boltzmann_variances,
    mode_ensemble,
    two_mode_ensemble,
)
from cryoconf.dynamics.ensembles.trajectory import THETA_KINDS, align_conformations, com_distances, trajectory_ensemble
from cryoconf.dynamics.ensembles.rigid import (
    AngleDistribution,
    dihedral_angle,
    dihedral_ensemble,
    domain_rotation_ensemble,
    parse_angle_distribution,
    rotate_about_axis,
    rotation_matrix,
    sample_angles,
)
from cryoconf.dynamics.ensembles.selection import residue_atoms, select_pseudo_atoms
from cryoconf.dynamics.ensembles.spacing import SpacingReport, spacing_report

__all__ = [
    "mode_ensemble",
    "two_mode_ensemble",
    "boltzmann_ensemble",
    "boltzmann_variances",
    "trajectory_ensemble",
    "align_conformations",
    "com_distances",
    "domain_rotation_ensemble",
    "dihedral_ensemble",
    "dihedral_angle",
    "AngleDistribution",
    "parse_angle_distribution",
    "sample_angles",
    "rotation_matrix",
    "rotate_about_axis",
    "select_pseudo_atoms",
    "residue_atoms",
    "spacing_report",
    "SpacingReport",
    "RMSD_KINDS",
    "THETA_KINDS",
]
