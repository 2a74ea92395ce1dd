"""Synthetic particle datasets with ground truth (``cryoconf simulate``)."""

from cryoconf.simulation.config import SimulationConfig
from cryoconf.simulation.parameters import (
    ParticleTruth,
    conformation_probabilities,
    gaussian_frame_weights,
    sample_truth,
    truth_from_metadata,
)
from cryoconf.simulation.run import SimulationResult, simulate_dataset

__all__ = [
    "SimulationConfig",
    "ParticleTruth",
    "SimulationResult",
    "conformation_probabilities",
    "gaussian_frame_weights",
    "sample_truth",
    "simulate_dataset",
    "truth_from_metadata",
]
