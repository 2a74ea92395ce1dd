"""The ADK benchmark of ``cryoconf recon`` (Prins et al.'s setting at CPU size). Prints one JSON object.

Data: the 102-frame ADK closed→open trajectory (Cα), conformations uniform, poses
uniform on SO(3), shifts uniform in ±3 Å, defocus 0.5–1.5 µm, box 64 at 1.5 Å/px,
``--n`` (20,000) particles simulated by the core at each ``--snr`` (whole-box variance
definition; cached under ``--workdir``). Base structure = frame 0 (closed), in the
frame of the poses. The models train on the first n − ``--eval`` particles and are
evaluated on the last ``--eval`` (2,000) held-out ones: z = μ of q(z | image), structure
= decoder(z). Reported per model and SNR: the EMD-RMSD (Å) between the predicted and
the true structures, the mean per-particle Cα RMSD, the Pearson correlation of the
progress coordinate RMSD(·, frame 0) − RMSD(·, frame 101), and the CPU time; beside
them the constant predictors (every particle = frame 0; = the best single frame).

    python benchmarks/recon_adk.py --json runs/recon_adk/benchmark.json
    python benchmarks/recon_adk.py --snr 0.1 --models residues --epochs 5   # quicker
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path

import numpy as np
import torch

from cryoconf.data.dataset import load_particles
from cryoconf.recon import ReconConfig, ReconParticles, encode_particles, train_recon
from cryoconf.recon.evaluation import constant_predictors, structure_accuracy
from cryoconf.simulation.config import SimulationConfig
from cryoconf.simulation.parameters import sample_truth
from cryoconf.simulation.run import simulate_dataset
from cryoconf.structure.readers import read_conformations

from json_report import emit  # benchmarks/ (the script's folder); fit_adk and recon_domains take it from here

REPO = Path(__file__).resolve().parents[1]
ADK = REPO.parent / "shared" / "data" / "adk"

# settings every variant shares (CPU-sized: the backprojection encoder learns the latent space in a
# few epochs where the image CNN needs far more; a 32-px working box at 3 Å/px)
COMMON = {"encoder": "backproj", "encoder_hidden": [256, 128], "lr_encoder": 1e-3, "lr_decoder": 1e-3}
# model name → settings different from ReconConfig's defaults
VARIANTS = {
    "residues": {"model": "residues"},
    "residues_no_geometry": {"model": "residues", "geometry_weight": 0.0},
    # cryoSPHERE's objective: correlation loss, no geometry or bond prior
    "segments": {"model": "segments", "n_segments": 4, "image_loss": "corr", "geometry_weight": 0.0, "bond_weight": 0.0},
    # Cryofold's objective on the Cα data: one RBF per residue (learned centres and σ), bonds k = 0.1
    "rbf": {"model": "rbf", "geometry_weight": 0.0, "bond_weight": 0.0},
}


def adk_conformations(mode: str = "ca", frames=None):
    """The ADK closed→open trajectory (MDAnalysisTests' copy when installed, else ../shared/data/adk)."""
    try:
        from MDAnalysisTests.datafiles import DCD2, PSF  # the same trajectory, pip-installable
        top, traj = PSF, DCD2
    except ImportError:
        top, traj = ADK / "adk4ake.psf", ADK / "dims0001_fit-core.dcd"
    return read_conformations(top, traj, mode=mode, frames=frames)


def simulate(conf, snr: float, n: int, workdir: Path, seed: int, tag: str = "") -> Path:
    """The benchmark's particles of ``conf`` (cached in ``workdir``/data_{tag}snr…)."""
    out = workdir / f"data_{tag}snr{snr:g}_n{n}_seed{seed}"
    if (out / "truth.npz").exists():
        return out
    cfg = SimulationConfig(n_particles=n, box=64, apix_A=1.5, seed=seed, defocus_A=(5000.0, 15000.0),
                           shift_A=3.0, snr=(snr, snr), snr_definition="box", center="first", pad_factor=2)
    simulate_dataset(conf, sample_truth(cfg, len(conf)), cfg, out, progress=False)
    return out


def _value(text: str):
    """A --set value: a number where it reads as one (YAML leaves '1e-3' a string), else YAML."""
    import yaml

    try:
        return float(text) if any(c in text for c in ".eE") else int(text)
    except ValueError:
        return yaml.safe_load(text)


def parse_common(ap: argparse.ArgumentParser, argv, name: str, refine_steps: int = 0) -> argparse.Namespace:
    """Add the options both recon benchmarks share (``refine_steps``: the default of --refine-steps),
    parse ``argv`` and apply --threads."""
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="other ReconConfig settings (YAML values)")
    ap.add_argument("--workdir", default=str(REPO / "runs" / name))
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--refine-steps", type=int, default=refine_steps,
                    help="refine each held-out particle's z for this many Adam steps from the encoder's μ "
                         "(the MAP with the decoder fixed; 0: μ as it is)")
    ap.add_argument("--refine-lr", type=float, default=0.05)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def train_and_encode(config, data: Path, train_pos, eval_pos, base, run: Path, progress: bool,
                     refine_steps: int = 0, refine_lr: float = 0.05):
    """Train ``config`` on ``train_pos`` of ``data``/particles.star (resuming ``run`` if it has
    checkpoints), then encode ``eval_pos`` (refining z per particle with ``refine_steps``):
    (model in eval mode, training result, held-out particles, z (E, L) tensor, CPU s of training
    and of encoding, wall s of training)."""
    train = ReconParticles(load_particles(data / "particles.star", ind=train_pos), config.downsample_box,
                           progress=False)
    held = ReconParticles(load_particles(data / "particles.star", ind=eval_pos), config.downsample_box,
                          progress=False)
    c0, w0 = cpu_seconds(), time.perf_counter()
    res = train_recon(config, train, base, run, load="latest" if list(run.glob("checkpoint.*.pt")) else None,
                      progress=progress)
    cpu, wall = cpu_seconds() - c0, time.perf_counter() - w0
    model = res.model.eval()
    c1 = cpu_seconds()
    z = encode_particles(model, held, refine_steps=refine_steps, refine_lr=refine_lr, progress=progress)
    return model, res, held, torch.from_numpy(z), (cpu, cpu_seconds() - c1), wall


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--snr", type=float, nargs="+", default=[0.1, 0.01])
    ap.add_argument("--models", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--n", type=int, default=20000, help="particles simulated per SNR")
    ap.add_argument("--eval", type=int, default=2000, help="held-out particles evaluated")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--downsample", type=int, default=32, help="working box (Fourier crop)")
    ap.add_argument("--lowpass", type=float, default=None, help="low-pass (Å) of data and prediction")
    args = parse_common(ap, argv, "recon_adk")
    workdir = Path(args.workdir)
    conf = adk_conformations()
    coords = conf.centered_coords("first")
    base = conf.structure(0).with_coords(coords[0])
    report = {"benchmark": "recon_adk", "n_particles": args.n, "n_eval": args.eval, "box": 64, "apix_A": 1.5,
              "epochs": args.epochs, "machine": platform.processor() or platform.machine(),
              "threads": torch.get_num_threads(), "results": {}}
    overrides = dict(kv.split("=", 1) for kv in args.set)
    overrides = {k: _value(v) for k, v in overrides.items()}
    for snr in args.snr:
        t0 = time.perf_counter()
        data = simulate(conf, snr, args.n, workdir, args.seed)
        truth = np.load(data / "truth.npz")
        train_pos = np.arange(args.n - args.eval)
        eval_pos = np.arange(args.n - args.eval, args.n)
        true_eval = coords[truth["conformation"][eval_pos]]
        entry = {"simulation_s": time.perf_counter() - t0,
                 "constant": constant_predictors(true_eval, coords, base_index=0)}
        for name in args.models:
            settings = {**COMMON, **VARIANTS[name], "epochs": args.epochs, "seed": args.seed, "downsample_box": args.downsample,
                        "lowpass_A": args.lowpass, **overrides}
            config = ReconConfig(**settings).validate()
            model, res, _, z, (cpu, enc_cpu), wall = train_and_encode(
                config, data, train_pos, eval_pos, base, workdir / f"run_{name}_snr{snr:g}", args.progress,
                args.refine_steps, args.refine_lr)
            with torch.no_grad():
                pred = model.decode(z).numpy()
            acc = structure_accuracy(pred, true_eval, coords[0], coords[-1])
            acc.update({"train_cpu_s": cpu, "train_wall_s": wall, "epochs_trained": res.epoch,
                        "encode_cpu_s": enc_cpu, "refine_steps": args.refine_steps,
                        "settings": {k: v for k, v in settings.items() if v is not None}})
            if config.model == "segments":
                acc["segment_sizes"] = np.bincount(model.decoder.segmentation.labels(),
                                                   minlength=model.decoder.n_segments).tolist()
            entry[name] = acc
            print(json.dumps({f"snr {snr:g} {name}": acc}), flush=True)
        report["results"][f"snr_{snr:g}"] = entry
    return emit(report, args.json)


if __name__ == "__main__":
    main()
