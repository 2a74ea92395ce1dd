"""Structural hypotheses and structural metrics: ANM modes, ensembles, alignment, metrics, maps."""

from cryoconf.dynamics.alignment import kabsch, pairwise_rmsd, rmsd, superpose

__all__ = ["kabsch", "pairwise_rmsd", "rmsd", "superpose"]
