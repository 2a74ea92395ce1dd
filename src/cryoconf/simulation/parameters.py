"""Per-particle ground truth of a simulated dataset: conformation, SNR, and the particle metadata."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from cryoconf.data import ParticleMetadata
from cryoconf.errors import InputError
from cryoconf.imaging.rotations import random_rotations
from cryoconf.simulation.config import SimulationConfig

STACK_NAME = "particles.mrcs"


@dataclass
class ParticleTruth:
    """Ground truth, one row per particle: what the STAR says (pose, shift, CTF, optics) plus
    the conformation index and the SNR (inf = noise-free) that only the simulator knows."""

    metadata: ParticleMetadata
    conformation: np.ndarray  # (P,) int, index into the conformations
    snr: np.ndarray  # (P,) float64

    def __len__(self) -> int:
        return len(self.conformation)


def conformation_probabilities(n_conformations: int, weights: list[float] | None) -> np.ndarray:
    """Probabilities (M,) of drawing each conformation: uniform, or ``weights`` normalised."""
    if weights is None:
        return np.full(n_conformations, 1.0 / n_conformations)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n_conformations,):
        raise InputError(
            f"--weights has {w.size} values but there are {n_conformations} conformations; "
            "give one weight per conformation (frame)"
        )
    return w / w.sum()


def gaussian_frame_weights(n_conformations: int, mean: float, std: float) -> list[float]:
    """Weights ∝ exp(−(m − mean)²/2std²) over conformation index m (a distribution over frames)."""
    if std <= 0:
        raise InputError(f"--frame-gaussian MEAN,STD needs STD > 0, got {std}")
    m = np.arange(n_conformations, dtype=np.float64)
    w = np.exp(-0.5 * ((m - mean) / std) ** 2)
    if w.sum() <= 0:
        raise InputError(f"--frame-gaussian {mean},{std} puts no weight on frames 0..{n_conformations - 1}")
    return w.tolist()


def _log_uniform(rng: np.random.Generator, lo: float, hi: float, n: int) -> np.ndarray:
    if np.isinf(lo):
        return np.full(n, np.inf)
    if lo == hi:
        return np.full(n, float(lo))
    return np.exp(rng.uniform(np.log(lo), np.log(hi), n))


def _stack_names(n: int) -> np.ndarray:
    return np.array([f"{k + 1:06d}@{STACK_NAME}" for k in range(n)])


def sample_truth(config: SimulationConfig, n_conformations: int) -> ParticleTruth:
    """Draw conformations, uniform SO(3) poses, shifts, CTFs and SNRs for ``config.n_particles``."""
    rng = np.random.default_rng(config.seed)
    n = config.n_particles
    conf = rng.choice(n_conformations, size=n, p=conformation_probabilities(n_conformations, config.weights))
    generator = torch.Generator().manual_seed(config.seed)
    rotations = random_rotations(n, generator=generator, dtype=torch.float64).numpy()
    shifts = rng.uniform(-config.shift_A, config.shift_A, size=(n, 2)) if config.shift_A > 0 else np.zeros((n, 2))
    mean_defocus = rng.uniform(*config.defocus_A, n)
    astig = rng.uniform(*config.astigmatism_A, n)
    metadata = ParticleMetadata(
        image_names=_stack_names(n), rotations=rotations, shifts_A=shifts,
        defocus_u_A=mean_defocus + astig / 2, defocus_v_A=mean_defocus - astig / 2,
        defocus_angle_deg=rng.uniform(0.0, 180.0, n), voltage_kV=config.voltage_kV, cs_mm=config.cs_mm,
        amplitude_contrast=config.amplitude_contrast, phase_shift_deg=config.phase_shift_deg,
        bfactor_A2=config.bfactor_A2, ctf_scale=1.0, apix_A=config.apix_A, box=config.box, optics_group=1,
        source=STACK_NAME,
    )
    return ParticleTruth(metadata, conf.astype(np.int64), _log_uniform(rng, *config.snr, n))


def truth_from_metadata(metadata: ParticleMetadata, config: SimulationConfig, n_conformations: int,
                        conformation: np.ndarray | None = None) -> ParticleTruth:
    """Ground truth whose poses, shifts, CTFs and optics are those of existing metadata (row order kept)."""
    if metadata.rotations is None or metadata.shifts_A is None:
        raise InputError(f"{metadata.source}: --from-star needs 3D poses (rlnAngleRot/Tilt/Psi) and origins")
    if not metadata.has_ctf:
        raise InputError(f"{metadata.source}: --from-star needs CTF parameters (defocus, voltage, Cs)")
    rng = np.random.default_rng(config.seed)
    n = len(metadata)
    if conformation is None:
        conformation = rng.choice(n_conformations, size=n, p=conformation_probabilities(n_conformations, config.weights))
    elif conformation.min() < 0 or conformation.max() >= n_conformations:
        raise InputError(
            f"{metadata.source}: conformation indices must lie in 0..{n_conformations - 1}, "
            f"found {conformation.min()}..{conformation.max()}"
        )
    rendered = replace(metadata, image_names=_stack_names(n), extra=None, source=STACK_NAME, base_dir=None)
    return ParticleTruth(rendered, np.asarray(conformation, dtype=np.int64), _log_uniform(rng, *config.snr, n))
