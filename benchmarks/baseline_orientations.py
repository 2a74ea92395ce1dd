"""Is the explicit-likelihood baseline converged in its orientation grid? Prints JSON.

At box 128 and 1.5 Å/px (the cryoSBI Hsp90 particles) the likelihood of a particle
is much narrower in orientation than the paper's 36,864-point grid (7.4° apart), so
the posterior over templates depends on where the grid points fall. This script
scores the first ``--n`` of ``benchmarks/sbi_hsp90.py``'s 200 baseline particles
(same simulation, seed and SNR; σ grid {1.5, 3.5} Å, defocus ±500 Å, as the benchmark)
with

- ``true pose``: each particle's own rotation only (what no grid can beat; the
  likelihood then also has the true defocus at offset 0);
- ``true pose, exact forward model``: the true rotation, σ and CTF rendered by the
  particles' own simulator (zero-padded CTF), i.e. every nuisance known;
- every ``--settings`` entry ``R0:L:K``: the R0-point grid refined L levels on the K
  best cells per particle (``cryoconf baseline --orientations R0 --refine-levels L
  --refine-cells K``; L = 0: the grid alone),

and reports for each the RMSE of the posterior mean θ against the truth, the mean
posterior std, the posterior mass within ``--tolerance`` of the truth and the seconds
per particle::

    python benchmarks/baseline_orientations.py --n 40 --settings 4608:0:16 36864:0:16 36864:2:16

Cost on 2 CPU threads, 40 particles: 36,864 orientations about 10 s per particle, each
refinement level about 1.5 s per particle with K = 16.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time

import numpy as np
import torch

from cryoconf.baseline import (
    BaselineConfig,
    TemplateSet,
    log_marginal_likelihood,
    log_mean_likelihood,
    score_particles,
    template_posterior,
    theta_moments,
)
from cryoconf.sbi.simulator import SBISimulator

from hsp90_comparison import add_particle_arguments, comparison_particles  # benchmarks/ (the script's folder)
from json_report import emit

SIGMAS_A = (1.5, 3.5)


def summary(ll: np.ndarray, theta: np.ndarray, truth: np.ndarray, tolerance: float, seconds: float) -> dict:
    post = template_posterior(ll, np.full(theta.size, -math.log(theta.size)))
    mean, std = theta_moments(post, theta)
    within = (post * (np.abs(theta[None] - truth[:, None]) <= tolerance)).sum(1)
    return {"mean_rmse_vs_truth_A": round(float(np.sqrt(np.mean((mean - truth) ** 2))), 4),
            "mean_std_A": round(float(std.mean()), 4), "mass_within_tolerance": round(float(within.mean()), 4),
            "seconds_per_particle": round(seconds / truth.size, 3)}


def exact_model_ll(sim: SBISimulator, params: dict, images: torch.Tensor) -> np.ndarray:
    """ln p(x | m) with every nuisance at its true value: template m rendered noise-free by the simulator."""
    x = images.double()
    n = x.shape[-1] ** 2
    sx, sxx = x.sum((-2, -1)), (x * x).sum((-2, -1))
    out = np.empty((x.shape[0], len(sim.template_prior.theta)))
    g = torch.Generator().manual_seed(0)  # unused: no noise
    for m in range(out.shape[1]):
        c = sim.render({**params, "template": torch.full_like(params["template"], m)}, g, noise=False).double()
        out[:, m] = log_marginal_likelihood(sx, sxx, c.sum((-2, -1)), (c * c).sum((-2, -1)), (c * x).sum((-2, -1)),
                                            n).numpy()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_particle_arguments(ap)
    ap.add_argument("--settings", nargs="*", default=["4608:0:16", "36864:0:16", "4608:3:16", "36864:2:16"],
                    help="R0:L:K = grid size, refinement levels, cells refined per level")
    ap.add_argument("--tolerance", type=float, default=1.0, help="Å")
    ap.add_argument("--json", default=None, help="also write the JSON here")
    args = ap.parse_args()
    settings = []
    for s in args.settings:
        try:
            r0, levels, cells = (int(v) for v in s.split(":"))
        except ValueError:
            ap.error(f"--settings {s!r}: expected R0:L:K, e.g. 36864:2:16")
        settings.append((r0, levels, cells))

    sim, params, images = comparison_particles(ap, args)
    truth = params["theta"].numpy()
    ctf = sim.ctf_params(params)
    theta = np.asarray(sim.template_prior.theta, dtype=np.float64)
    out = {"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
           "particles": args.n, "snr": args.snr, "box": sim.box, "apix_A": sim.apix_A, "baseline_sigmas_A": SIGMAS_A,
           "defocus_offsets_A": [-500.0, 0.0, 500.0], "tolerance_A": args.tolerance}

    def baseline(rotations=None, r0=72, levels=0, cells=16):
        cfg = BaselineConfig(n_orientations=r0, shift_range_A=0.0, shift_step_A=sim.apix_A,
                             defocus_offsets_A=(-500.0, 0.0, 500.0), particle_batch=args.n,
                             cache_bytes=0, refine_levels=levels, refine_cells=cells)
        t0 = time.perf_counter()
        per_sigma = []
        for s in SIGMAS_A:
            tm = TemplateSet(sim.coords, sim.amplitudes, torch.full_like(sim.amplitudes, s), theta)
            if rotations is None:
                per_sigma.append(score_particles(tm, images, sim.apix_A, cfg, ctf=ctf, progress=True).log_likelihood)
            else:  # each particle at its own rotation
                per_sigma.append(np.concatenate([
                    score_particles(tm, images[i:i + 1], sim.apix_A, cfg, ctf=ctf[i:i + 1],
                                    rotations=rotations[i:i + 1]).log_likelihood for i in range(args.n)]))
        return log_mean_likelihood(per_sigma), time.perf_counter() - t0

    rows = []
    ll, sec = baseline(rotations=params["rotations"].float())
    rows.append({"orientations": "true pose", **summary(ll, theta, truth, args.tolerance, sec)})
    t0 = time.perf_counter()
    ll = exact_model_ll(sim, params, images)
    rows.append({"orientations": "true pose, exact forward model (true σ and CTF)",
                 **summary(ll, theta, truth, args.tolerance, time.perf_counter() - t0)})
    for r0, levels, cells in settings:
        ll, sec = baseline(r0=r0, levels=levels, cells=cells)
        rows.append({"orientations": r0, "refine_levels": levels, "refine_cells": cells,
                     **summary(ll, theta, truth, args.tolerance, sec)})
        print(json.dumps(rows[-1]), flush=True)
    out["rows"] = rows
    emit(out, args.json)


if __name__ == "__main__":
    main()
