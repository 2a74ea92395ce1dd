"""Is the explicit-likelihood baseline converged in the pseudo-atom width σ? Prints JSON.

The cryoSBI Hsp90 particles draw σ uniformly from the prior ([0.5, 5] Å); the baseline
of ``benchmarks/sbi_hsp90.py`` marginalises it over a coarse grid (``--baseline-sigmas``,
default {1.5, 3.5} Å) with a uniform prior. The likelihood in σ is sharp (at SNR 0.1 the
log-evidence of one particle changes by hundreds of nats across [0.5, 5] Å), so this
script checks whether the posterior over templates depends on the grid: it scores the
first ``--n`` of the benchmark's baseline particles (the same simulation, seed and SNR)
once per σ of ``--sigmas`` (36,864 orientations, defocus ±500 Å around each particle's
CTF, as the benchmark), then marginalises over sub-grids and reports, per sub-grid, the
RMS difference of the posterior means from the full grid's, their RMSE against the true
θ, the mean posterior std and the posterior mass within ``--tolerance`` of the truth::

    python benchmarks/baseline_sigma_grid.py --n 40 --json runs/baseline_sigma_grid.json

Cost: one baseline pass per σ; with 40 particles in one batch the template projections
(rendered once per batch) dominate: 3–6 minutes per σ value on 2 CPU threads.
"""

from __future__ import annotations

import argparse
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch

from cryoconf.baseline import (
    BaselineConfig,
    TemplateSet,
    log_mean_likelihood,
    score_particles,
    template_posterior,
    theta_moments,
)

from hsp90_comparison import add_particle_arguments, comparison_particles  # benchmarks/ (the script's folder)
from json_report import emit



def _key(s: float) -> str:
    return f"ll_{s:g}"


def load_scores(path, args, truth: np.ndarray) -> tuple[dict, dict]:
    """Per-σ log-likelihoods (P, M) and seconds saved by an earlier run with the same particles."""
    if not path or not Path(path).is_file():
        return {}, {}
    saved = np.load(path)
    same = (int(saved["orientations"]) == args.orientations and float(saved["snr"]) == args.snr
            and float(saved["defocus_step"]) == args.defocus_step and saved["truth"].shape == truth.shape
            and np.allclose(saved["truth"], truth))
    if not same:
        raise SystemExit(f"{path} holds scores of other particles or settings; give another --scores file")
    per_sigma = {float(s): saved[_key(s)] for s in saved["sigmas"]}
    return per_sigma, dict(zip(map(float, saved["sigmas"]), map(float, saved["seconds"])))


def save_scores(path, args, truth: np.ndarray, per_sigma: dict, seconds: dict) -> None:
    sig = sorted(per_sigma)
    np.savez(path, sigmas=np.array(sig), seconds=np.array([seconds.get(s, np.nan) for s in sig]), truth=truth,
             orientations=args.orientations, snr=args.snr, defocus_step=args.defocus_step,
             **{_key(s): per_sigma[s] for s in sig})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_particle_arguments(ap)
    ap.add_argument("--sigmas", type=float, nargs="+", default=[0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0],
                    help="the full σ grid (Å); sub-grids are taken from it")
    ap.add_argument("--subgrids", default="1.5,3.5;1.0,2.0,3.0,4.0,5.0;0.5,1.5,2.5,3.5,4.5;2.5",
                    help="sub-grids to compare with the full grid: ';'-separated, σ values ','-separated")
    ap.add_argument("--orientations", type=int, default=36864)
    ap.add_argument("--defocus-step", type=float, default=500.0, help="Å")
    ap.add_argument("--tolerance", type=float, default=1.0, help="Å")
    ap.add_argument("--scores", default=None,
                    help="npz file of the per-σ log-likelihoods: those already in it are reused, new ones added "
                    "after each σ (re-analysing other --subgrids then costs nothing)")
    ap.add_argument("--json", default=None, help="also write the JSON here")
    args = ap.parse_args()
    subgrids = [[float(s) for s in g.split(",")] for g in args.subgrids.split(";") if g.strip()]
    for g in subgrids:
        missing = [s for s in g if s not in args.sigmas]
        if missing:
            ap.error(f"sub-grid {g} has σ values outside --sigmas: {missing}")

    sim, params, images = comparison_particles(ap, args)
    truth = params["theta"].numpy()
    ctf = sim.ctf_params(params)
    theta = np.asarray(sim.template_prior.theta, dtype=np.float64)
    log_prior = np.full(theta.size, -math.log(theta.size))  # uniform over templates, as the benchmark
    step = args.defocus_step
    cfg = BaselineConfig(n_orientations=args.orientations, shift_range_A=0.0, shift_step_A=sim.apix_A,
                         defocus_offsets_A=(-step, 0.0, step) if step > 0 else (0.0,),
                         particle_batch=args.n, cache_bytes=0)
    per_sigma, seconds = load_scores(args.scores, args, truth)
    for s in args.sigmas:
        if s in per_sigma:
            continue
        t0 = time.perf_counter()
        tm = TemplateSet(sim.coords, sim.amplitudes, torch.full_like(sim.amplitudes, s), theta)
        per_sigma[s] = score_particles(tm, images, sim.apix_A, cfg, ctf=ctf, progress=True).log_likelihood
        seconds[s] = round(time.perf_counter() - t0, 1)
        if args.scores:
            save_scores(args.scores, args, truth, per_sigma, seconds)

    def figures(grid: list[float], reference: np.ndarray | None) -> dict:
        post = template_posterior(log_mean_likelihood([per_sigma[s] for s in grid]), log_prior)
        mean, std = theta_moments(post, theta)
        within = (post * (np.abs(theta[None] - truth[:, None]) <= args.tolerance)).sum(1)
        out = {"sigmas_A": grid, "mean_rmse_vs_truth_A": round(float(np.sqrt(np.mean((mean - truth) ** 2))), 4),
               "mean_std_A": round(float(std.mean()), 4), "mass_within_tolerance": round(float(within.mean()), 4)}
        if reference is not None:
            out["rms_difference_of_means_from_full_grid_A"] = round(float(np.sqrt(np.mean((mean - reference) ** 2))), 4)
            out["max_difference_of_means_from_full_grid_A"] = round(float(np.abs(mean - reference).max()), 4)
        return out, mean

    full, full_mean = figures(list(args.sigmas), None)
    # which σ of the grid carries each particle's evidence, against the σ it was rendered with
    evidence = np.stack([np.logaddexp.reduce(per_sigma[s], axis=1) for s in args.sigmas])  # (S, P)
    best_sigma = np.asarray(args.sigmas)[evidence.argmax(0)]
    sigma_true = params["sigma_A"].numpy()
    out = {
        "machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
        "particles": args.n, "snr": args.snr, "orientations": args.orientations,
        "defocus_offsets_A": list(cfg.defocus_offsets_A), "seconds_per_sigma": seconds,
        "full_grid": full,
        "subgrids": [figures(g, full_mean)[0] for g in subgrids],
        "evidence_range_over_sigma_nats_median": round(float(np.median(evidence.max(0) - evidence.min(0))), 1),
        "rms_true_sigma_minus_best_grid_sigma_A": round(float(np.sqrt(np.mean((sigma_true - best_sigma) ** 2))), 3),
    }
    emit(out, args.json)


if __name__ == "__main__":
    main()
