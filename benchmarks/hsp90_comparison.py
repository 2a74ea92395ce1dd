"""The particles that ``benchmarks/sbi_hsp90.py`` compares with the explicit-likelihood baseline,
for the benchmarks that study that baseline on the first N of them (``baseline_orientations.py``,
``baseline_sigma_grid.py``): the same simulator, seed and SNR."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from cryoconf.sbi.config import load_config
from cryoconf.sbi.evaluation import BASELINE_COMPARISON_SEED, simulate_held_out
from cryoconf.sbi.simulator import SBISimulator

REPO = Path(__file__).resolve().parents[1]
COMPARISON_PARTICLES = 200  # sbi_hsp90.py --baseline-particles


def add_particle_arguments(ap: argparse.ArgumentParser) -> None:
    """--config, --n, --snr and --threads."""
    ap.add_argument("--config", default=str(REPO / "configs" / "sbi_hsp90_box128.yaml"),
                    help="the particles' simulator (the benchmark's --paper-config)")
    ap.add_argument("--n", type=int, default=40,
                    help=f"particles: the first N of the benchmark's {COMPARISON_PARTICLES}")
    ap.add_argument("--snr", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=None)


def comparison_particles(ap: argparse.ArgumentParser, args) -> tuple[SBISimulator, dict, torch.Tensor]:
    """(simulator, parameters, images) of the first ``args.n`` comparison particles (``ap`` reports
    a bad --n); sets the thread count first."""
    if args.threads:
        torch.set_num_threads(args.threads)
    if not 1 <= args.n <= COMPARISON_PARTICLES:
        ap.error(f"--n must be between 1 and {COMPARISON_PARTICLES} (the benchmark's comparison particles), "
                 f"got {args.n}")
    sim = SBISimulator.from_config(load_config(args.config))
    params, images = simulate_held_out(sim, COMPARISON_PARTICLES, snr=args.snr, seed=BASELINE_COMPARISON_SEED)
    return sim, {k: v[:args.n] for k, v in params.items()}, images[:args.n]
