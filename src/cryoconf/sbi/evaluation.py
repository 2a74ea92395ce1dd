"""Accuracy and calibration of a trained SBI posterior on fresh simulated particles.

The particles come from the run's own simulator and priors (optionally at one
fixed SNR), with a seed distinct from training and validation, so they are
held out. They can also be simulated at another sampling (box, pixel size and
SNR definition of another config, e.g. the cryoSBI paper's box 128 at 1.5 Å/px
for a model trained at box 64 and 3 Å/px) and resampled to the model's grid
as ``sbi infer`` resamples experimental particles
(:func:`~cryoconf.data.preprocess.resample_particles`): the SNR is then the
one defined on the particles' own grid, as for data. Reported: the fraction of
posterior samples within ``tolerance`` of the true θ (the cryoSBI paper's figure, 1 Å of RMSD), the mean posterior std,
the coverage of the central 68 % and 95 % intervals, and simulation-based
calibration (rank histogram, coverage curve).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from cryoconf.data.preprocess import plan_resampling, resample_particles
from cryoconf.errors import InputError
from cryoconf.sbi.calibration import calibrate_samples
from cryoconf.sbi.model import SBIModel
from cryoconf.sbi.simulator import SBISimulator

EVALUATION_SEED = 987_654_321
# the particles that benchmarks/sbi_hsp90.py compares with the explicit-likelihood baseline
BASELINE_COMPARISON_SEED = EVALUATION_SEED + 1


def simulate_held_out(simulator: SBISimulator, n: int, *, snr: float | None = None, seed: int = EVALUATION_SEED,
                      batch_size: int = 256):
    """(params, images) of ``n`` fresh particles; ``snr`` fixes every particle's SNR."""
    g = torch.Generator().manual_seed(seed)
    params_all, images = [], []
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        params = simulator.sample_parameters(b, g)
        if snr is not None:
            if not snr > 0:
                raise InputError(f"--snr must be positive, got {snr}")
            params["snr"] = torch.full_like(params["snr"], float(snr))
        images.append(simulator.render(params, g).cpu())
        params_all.append(params)
    params = {k: torch.cat([p[k] for p in params_all]) for k in params_all[0]}
    return params, torch.cat(images)


def to_model_grid(model: SBIModel, simulator: SBISimulator, images: torch.Tensor) -> torch.Tensor:
    """Images (B, D, D) simulated by ``simulator`` → the model's box and pixel size (unchanged
    when they already match). Raises when the simulator's templates are not the model's."""
    theta_model = np.asarray(model.spec["template_theta"], dtype=np.float64)
    theta_sim = np.asarray(simulator.template_prior.theta, dtype=np.float64)
    if theta_model.shape != theta_sim.shape or not np.allclose(theta_model, theta_sim, rtol=1e-6, atol=1e-6):
        raise InputError(f"the particle simulator's templates (θ {theta_sim.min():.4g}…{theta_sim.max():.4g}, "
                         f"{theta_sim.size} templates) are not the model's ({theta_model.size} templates); "
                         "simulate the particles from the ensemble the model was trained on")
    plan = plan_resampling(simulator.box, simulator.apix_A, model.box, model.spec["apix_A"])
    return images if plan.identity else resample_particles(images, simulator.apix_A, model.box, model.spec["apix_A"],
                                                           plan=plan)[0]


def evaluate_posterior(model: SBIModel, simulator: SBISimulator, n: int = 2000, *, snr: float | None = None,
                       n_samples: int = 1000, tolerance: float = 1.0, seed: int = EVALUATION_SEED,
                       batch_size: int = 256, return_samples: bool = False,
                       particle_simulator: SBISimulator | None = None):
    """Metrics (dict) and the calibration of θ on ``n`` held-out simulated particles; with
    ``return_samples`` also the θ samples (n_samples, n) and the true θ (n,).

    ``particle_simulator``: simulate the particles with it instead (same templates, its own
    box, pixel size, SNR definition and priors) and resample them to the model's grid."""
    source = simulator if particle_simulator is None else particle_simulator
    params, images = simulate_held_out(source, n, snr=snr, seed=seed, batch_size=batch_size)
    images = to_model_grid(model, source, images)
    truth = params["theta"].double()
    t0 = time.perf_counter()
    samples = torch.cat([model.sample(images[s:s + batch_size], n_samples)[..., 0].double().cpu()
                         for s in range(0, n, batch_size)], dim=1)  # (S, n)
    seconds = time.perf_counter() - t0
    within = (samples - truth[None]).abs() <= tolerance
    calib = calibrate_samples(samples, truth, seed=seed)
    metrics = {
        "n_particles": n,
        "snr": snr if snr is not None else "prior",
        "particles_box": source.render_box,
        "particles_apix_A": source.render_apix_A,
        "snr_definition": source.image.snr_definition,
        "n_samples": n_samples,
        "fraction_within_tolerance": float(within.double().mean()),
        "tolerance": tolerance,
        "mean_posterior_std": float(samples.std(dim=0).mean()),
        "coverage_68": float(np.asarray(calib.coverage68).reshape(-1)[0]),
        "coverage_95": float(np.asarray(calib.coverage95).reshape(-1)[0]),
        "sbc_chi2_p": float(np.asarray(calib.chi2_p).reshape(-1)[0]),
        "posterior_mean_rmse": float(((samples.mean(0) - truth) ** 2).mean().sqrt()),
        "seconds_per_particle": seconds / n,
    }
    return (metrics, calib, samples, truth) if return_samples else (metrics, calib)
