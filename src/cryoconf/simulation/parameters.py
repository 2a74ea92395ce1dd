"""Per-particle ground truth of a simulated dataset: conformation, pose, shift, CTF, SNR."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cryoconf.data import ParticleMetadata
from cryoconf.errors import InputError
from cryoconf.imaging.ctf import CTFParams
from cryoconf.imaging.rotations import random_rotations
from cryoconf.simulation.config import SimulationConfig


@dataclass
class ParticleTruth:
    """Ground truth, one row per particle (numpy; degrees only in ``defocus_angle_deg``)."""

    conformation: np.ndarray  # (P,) int, index into the conformations
    rotations: np.ndarray  # (P, 3, 3) float64 pose matrices A
    shifts_A: np.ndarray  # (P, 2) float64, particle centre t in the image (Å)
    defocus_u_A: np.ndarray
    defocus_v_A: np.ndarray
    defocus_angle_deg: np.ndarray
    voltage_kV: np.ndarray
    cs_mm: np.ndarray
    amplitude_contrast: np.ndarray
    phase_shift_deg: np.ndarray
    bfactor_A2: np.ndarray
    snr: np.ndarray  # (P,) float64, inf = noise-free

    def __len__(self) -> int:
        return len(self.conformation)

    def ctf_params(self, rows: slice | np.ndarray, dtype=torch.float32, device=None) -> CTFParams:
        """CTF parameters of ``rows`` in internal units (radians)."""
        return CTFParams.create(
            defocus_u_A=self.defocus_u_A[rows],
            defocus_v_A=self.defocus_v_A[rows],
            defocus_angle_rad=np.deg2rad(self.defocus_angle_deg[rows]),
            voltage_kV=self.voltage_kV[rows],
            cs_mm=self.cs_mm[rows],
            amplitude_contrast=self.amplitude_contrast[rows],
            phase_shift_rad=np.deg2rad(self.phase_shift_deg[rows]),
            bfactor_A2=self.bfactor_A2[rows],
            dtype=dtype,
            device=device,
        )


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
    return ParticleTruth(
        conformation=conf.astype(np.int64),
        rotations=rotations,
        shifts_A=shifts,
        defocus_u_A=mean_defocus + astig / 2,
        defocus_v_A=mean_defocus - astig / 2,
        defocus_angle_deg=rng.uniform(0.0, 180.0, n),
        voltage_kV=np.full(n, config.voltage_kV),
        cs_mm=np.full(n, config.cs_mm),
        amplitude_contrast=np.full(n, config.amplitude_contrast),
        phase_shift_deg=np.full(n, config.phase_shift_deg),
        bfactor_A2=np.full(n, config.bfactor_A2),
        snr=_log_uniform(rng, *config.snr, n),
    )


def truth_from_metadata(metadata: ParticleMetadata, config: SimulationConfig, n_conformations: int,
                        conformation: np.ndarray | None = None) -> ParticleTruth:
    """Ground truth whose poses, shifts and CTFs are those of existing particle metadata (row order kept)."""
    if metadata.rotations is None or metadata.shifts_A is None:
        raise InputError(f"{metadata.source}: --from-star needs 3D poses (rlnAngleRot/Tilt/Psi) and origins")
    rng = np.random.default_rng(config.seed)
    n = len(metadata)
    if conformation is None:
        conformation = rng.choice(n_conformations, size=n, p=conformation_probabilities(n_conformations, config.weights))
    elif conformation.min() < 0 or conformation.max() >= n_conformations:
        raise InputError(
            f"{metadata.source}: conformation indices must lie in 0..{n_conformations - 1}, "
            f"found {conformation.min()}..{conformation.max()}"
        )
    return ParticleTruth(
        conformation=np.asarray(conformation, dtype=np.int64),
        rotations=np.asarray(metadata.rotations, dtype=np.float64),
        shifts_A=np.asarray(metadata.shifts_A, dtype=np.float64),
        defocus_u_A=np.asarray(metadata.defocus_u_A, dtype=np.float64),
        defocus_v_A=np.asarray(metadata.defocus_v_A, dtype=np.float64),
        defocus_angle_deg=np.asarray(metadata.defocus_angle_deg, dtype=np.float64),
        voltage_kV=np.asarray(metadata.voltage_kV, dtype=np.float64),
        cs_mm=np.asarray(metadata.cs_mm, dtype=np.float64),
        amplitude_contrast=np.asarray(metadata.amplitude_contrast, dtype=np.float64),
        phase_shift_deg=np.asarray(metadata.phase_shift_deg, dtype=np.float64),
        bfactor_A2=np.asarray(metadata.bfactor_A2, dtype=np.float64),
        snr=_log_uniform(rng, *config.snr, n),
    )
