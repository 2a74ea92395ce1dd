"""``cryoconf sbi SUBCOMMAND``: amortized template matching by simulation-based inference (cryoSBI).

Subcommands are registered from :data:`SUBCOMMANDS` (name → function adding the
subparser to the ``sbi`` group and setting ``func``); add ``infer``, ``calibrate``,
``mmd``, ``scan`` there.
"""

from __future__ import annotations

import argparse
import logging

from cryoconf.cli.command_group import add_command_group
from cryoconf.cli.help_format import DefaultsHelpFormatter

log = logging.getLogger(__name__)

DESCRIPTION = """\
Amortized template matching with simulation-based inference (Dingeldein et al.,
"cryoSBI"): particles are simulated on the fly from an ensemble of templates
indexed by θ with random pose, CTF, shift, Gaussian width and SNR; an image
embedding network and a neural spline flow posterior q(θ | image) are trained
jointly by neural posterior estimation. Inference then takes milliseconds per particle.

Run `cryoconf sbi SUBCOMMAND --help` for each subcommand.
"""

TRAIN_DESCRIPTION = """\
Train an SBI posterior from a YAML config (templates, box, pixel size, priors with
units, embedding, flow and training settings; see configs/sbi_hsp90_box64.yaml).
The run directory receives config.yaml, run.log, validation.pt (the fixed held-out
particles), checkpoint.N.pt every training.checkpoint_interval steps, loss.csv and
loss.png. `--load latest` resumes exactly from the newest checkpoint. `--init RUN2`
starts a new run from the weights of another run (its newest checkpoint, or a
checkpoint.N.pt) with the same templates, grid, embedding and flow: fine-tuning,
e.g. on particles simulated at the data's sampling (image.simulation_box,
image.simulation_apix_A) or with narrower priors; the optimiser starts afresh at step 0.
A compact CNN may also move to a finer grid over the same field of view (e.g. box 64
at 3 Å/px → box 128 at 1.5 Å/px with embedding.params.space_to_depth: 2): its stem is
adapted to the finer pixels (configs/sbi_hsp90_box128_s2d.yaml).
An optional `distillation` section also trains on draws from a teacher's posterior:
another run's checkpoint, by default its D4-pooled posterior (fitted first with
`cryoconf sbi symmetrize`), whose accuracy the flow then learns at its own cost
(configs/sbi_hsp90_box128_distill.yaml, docs/sbi.md).

Multi-GPU: torchrun --nproc-per-node G -m cryoconf sbi train CONFIG -o RUN --device cuda
"""


def _register_train(sub) -> None:
    p = sub.add_parser("train", help="train an SBI posterior (NPE on on-the-fly simulations)",
                       description=TRAIN_DESCRIPTION, formatter_class=DefaultsHelpFormatter)
    p.add_argument("config", metavar="CONFIG", help="YAML config (see configs/sbi_hsp90_box64.yaml)")
    p.add_argument("-o", "--output", required=True, metavar="RUN", help="run directory to write")
    p.add_argument("--load", default=None, metavar="latest|PATH",
                   help="resume: 'latest' (newest checkpoint in RUN) or a checkpoint file")
    p.add_argument("--init", default=None, metavar="RUN2|PATH",
                   help="start a new run from the weights of another run (its newest checkpoint) or of a "
                        "checkpoint file: fine-tuning; same architecture (or a cnn moved to a finer grid), "
                        "fresh optimiser, step 0")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="training device")
    p.add_argument("--steps", type=int, default=None, help="total optimiser steps (overrides training.steps)")
    p.add_argument("--seed", type=int, default=None, help="random seed (overrides training.seed)")
    p.add_argument("--time-limit", type=float, default=None, metavar="MINUTES",
                   help="stop after this many minutes of training, with a checkpoint (a job's time limit); "
                   "--load latest continues exactly (default: no limit)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_train)


def run_train(args) -> int:
    from cryoconf.distributed import dist_info
    from cryoconf.errors import InputError
    from cryoconf.sbi.config import load_config
    from cryoconf.sbi.training import train_sbi

    if args.steps is not None and args.steps < 0:
        raise InputError(f"--steps must be ≥ 0, got {args.steps}")
    config = load_config(args.config)
    if args.time_limit is not None and not args.time_limit > 0:
        raise InputError(f"--time-limit must be > 0 minutes, got {args.time_limit}")
    result = train_sbi(config, args.output, load=args.load, init=args.init, device=args.device, steps=args.steps,
                       seed=args.seed, progress=not args.no_progress,
                       time_limit_s=None if args.time_limit is None else 60.0 * args.time_limit)
    val = f", validation loss {result.validation_losses[-1][1]:.4f}" if result.validation_losses else ""
    if dist_info()[1] == 0:  # under torchrun, one line from rank 0 (whose model the checkpoints hold)
        print(f"trained to step {result.step}{val}; run directory {result.run_dir}")
    return 0


INFER_DESCRIPTION = """\
Posterior over θ for every particle of a dataset (.star, .cs or .mrcs): particles
are recentred on the origins of their metadata (when it has any; --no-recenter
keeps them as they are), resampled to the model's box and pixel size, whitened
with a noise PSD estimated from their background pixels, and normalised as in
training. Writes OUTDIR/posterior.npz and posterior.csv (mean, median, std,
68 % and 95 % intervals, most probable template per particle), particles_sbi.star
(the input with cryoconf* columns appended), noise_psd.npz and posterior plots.

For a one-parameter posterior (θ alone) the summaries come from the flow itself by
default (--summaries auto): exact quantiles and template probabilities, mean and
std by quadrature — faster and more accurate than sampling. --summaries samples
draws --samples posterior samples per particle instead (the cryoSBI procedure, and
the only choice when nuisance parameters are inferred too).
"""


SYMMETRY_GROUPS = ("D4", "C4", "C2")  # cryoconf.sbi.symmetry.GROUPS (not imported here: it needs torch)


def _add_symmetrize_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--symmetrize", nargs="?", const="D4", default=None, choices=SYMMETRY_GROUPS,
                   metavar="GROUP",
                   help="pool the posterior over the 8 rotations and mirrors of each image (D4, the default "
                   "GROUP), its 4 rotations (C4) or the rotation by 180° (C2), at the temperature that "
                   "`cryoconf sbi symmetrize RUN [--group GROUP]` fitted (θ alone; more accurate, one "
                   "embedding per view: D4 ~10× the time of the flow, C2 ~2×)")


def _add_run_arguments(p: argparse.ArgumentParser) -> None:
    """RUN, -o/--outdir, --load and --device: shared by every subcommand that uses a trained run."""
    p.add_argument("run", metavar="RUN", help="run directory of `cryoconf sbi train`")
    p.add_argument("-o", "--outdir", required=True, help="output directory")
    p.add_argument("--load", default="latest", metavar="latest|PATH", help="checkpoint to use")
    p.add_argument("--device", default="cpu", help="torch device")


def _add_recenter_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recenter", action=argparse.BooleanOptionalAction, default=None,
                   help="move each particle's centre, at −origin by the metadata (rlnOriginX/YAngst, cryoSPARC "
                   "shifts), to the box centre first (default: when the file has non-zero origins)")


def _register_infer(sub) -> None:
    p = sub.add_parser("infer", help="posterior over θ for every particle of a dataset",
                       description=INFER_DESCRIPTION, formatter_class=DefaultsHelpFormatter)
    _add_run_arguments(p)
    p.add_argument("particles", metavar="PARTICLES", help="particles: .star, .cs or .mrcs")
    p.add_argument("--datadir", default=None, help="folder holding the image stacks")
    p.add_argument("--ind", default=None, help="indices (.npy/.pkl) of the particles to use")
    p.add_argument("--apix", type=float, default=None, help="pixel size of the particles (Å/px), overrides the file")
    p.add_argument("--summaries", choices=("auto", "flow", "samples"), default="auto",
                   help="summaries from the flow (one parameter: exact quantiles and template probabilities), "
                   "from samples, or auto: flow for one parameter, samples otherwise")
    p.add_argument("--samples", type=int, default=20_000,
                   help="posterior samples per particle for --summaries samples (and for the example plots)")
    p.add_argument("--batch-size", type=int, default=128, help="particles per batch")
    p.add_argument("--no-whiten", action="store_true", help="do not whiten with the data's noise PSD")
    p.add_argument("--mask-radius", type=float, default=None,
                   help="radius (Å) outside which pixels count as background for the PSD (default: 0.8·box/2)")
    _add_recenter_argument(p)
    _add_symmetrize_argument(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_infer)


def run_infer(args) -> int:
    from cryoconf.sbi.inference import infer_dataset, load_run

    model, _ = load_run(args.run, args.load, args.device, args.symmetrize)
    result = infer_dataset(model, args.particles, args.outdir, datadir=args.datadir, ind=args.ind, apix=args.apix,
                           n_samples=args.samples, batch_size=args.batch_size, whiten=not args.no_whiten,
                           mask_radius_A=args.mask_radius, summaries=args.summaries, recenter=args.recenter,
                           progress=not args.no_progress)
    how = " (recentred on their origins)" if result.recentered else ""
    print(f"posterior of {len(result.indices)} particles{how} written to {args.outdir}")
    return 0


def _register_calibrate(sub) -> None:
    p = sub.add_parser("calibrate", help="accuracy, coverage and SBC on held-out simulated particles",
                       description="Simulate fresh particles with the run's own simulator and priors (a seed "
                       "distinct from training and validation), optionally at one SNR, and report the fraction "
                       "of posterior samples within --tolerance of the true θ, the mean posterior std, the "
                       "coverage of the 68 % and 95 % intervals and simulation-based calibration. Writes "
                       "OUTDIR/calibration.json and calibration.png.",
                       formatter_class=DefaultsHelpFormatter)
    _add_run_arguments(p)
    p.add_argument("-n", "--n-particles", type=int, default=2000, help="held-out particles")
    p.add_argument("--snr", type=float, default=None,
                   help="fix every particle's SNR, defined on the particles' own pixels (default: drawn from the prior)")
    p.add_argument("--samples", type=int, default=1000, help="posterior samples per particle")
    p.add_argument("--tolerance", type=float, default=1.0, help="|θ − θ_true| counted as correct (θ's unit, e.g. Å)")
    p.add_argument("--particles-config", metavar="CONFIG", default=None,
                   help="simulate the particles with this sbi config instead of the run's (same templates; its box, "
                   "pixel size, SNR definition and priors), then resample them to the model's grid as `sbi infer` "
                   "does, e.g. the paper's box 128 at 1.5 Å/px for a model trained at box 64 and 3 Å/px")
    _add_symmetrize_argument(p)
    p.set_defaults(func=run_calibrate)


def run_calibrate(args) -> int:
    import json
    from pathlib import Path

    from cryoconf.sbi.calibration import plot_calibration
    from cryoconf.sbi.config import load_config
    from cryoconf.sbi.evaluation import evaluate_posterior
    from cryoconf.sbi.inference import load_run
    from cryoconf.sbi.simulator import SBISimulator

    model, _ = load_run(args.run, args.load, args.device, args.symmetrize)
    simulator = SBISimulator.from_config(load_config(Path(args.run) / "config.yaml"), device=args.device)
    particles = None
    if args.particles_config is not None:
        particles = SBISimulator.from_config(load_config(args.particles_config), device=args.device)
    metrics, calib = evaluate_posterior(model, simulator, args.n_particles, snr=args.snr, n_samples=args.samples,
                                        tolerance=args.tolerance, particle_simulator=particles)
    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "calibration.json").write_text(json.dumps({**metrics, "sbc": calib.to_dict()}, indent=2, default=float))
    plot_calibration(calib, out / "calibration.png")
    print(json.dumps(metrics, indent=2))
    return 0


def _register_scan(sub) -> None:
    p = sub.add_parser("scan", help="posterior mean and width over a micrograph (sliding windows)",
                       description="Cut windows covering the model's field of view every --stride pixels, "
                       "resample, whiten (noise PSD from the micrograph) and normalise them as in training, and "
                       "map the posterior mean and width of θ over the micrograph. Writes "
                       "OUTDIR/posterior_mean_map.npy, posterior_width_map.npy, scan_grid.npz and scan.png.",
                       formatter_class=DefaultsHelpFormatter)
    _add_run_arguments(p)
    p.add_argument("micrograph", metavar="MICROGRAPH.mrc", help="a 2D micrograph")
    p.add_argument("--apix", type=float, default=None, help="micrograph pixel size (Å/px; default: its header)")
    p.add_argument("--window", type=int, default=None,
                   help="window size (micrograph px; default: the model's box × pixel size)")
    p.add_argument("--stride", type=int, default=16, help="step between windows (micrograph px)")
    p.add_argument("--samples", type=int, default=500,
                   help="posterior samples per window when the posterior has nuisance parameters too "
                   "(θ alone: summaries from the flow, no sampling)")
    p.add_argument("--batch-size", type=int, default=256, help="windows per batch")
    _add_symmetrize_argument(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_scan)


def run_scan(args) -> int:
    from cryoconf.sbi.inference import load_run
    from cryoconf.sbi.scan import read_micrograph, save_scan, scan_micrograph

    model, _ = load_run(args.run, args.load, args.device, args.symmetrize)
    micrograph, apix = read_micrograph(args.micrograph, args.apix)
    result = scan_micrograph(model, micrograph, apix, stride=args.stride, window_px=args.window,
                             n_samples=args.samples, batch_size=args.batch_size, progress=not args.no_progress)
    save_scan(result, micrograph, args.outdir)
    print(f"scanned {result.mean.size} windows; maps in {args.outdir}")
    return 0


def _register_mmd(sub) -> None:
    p = sub.add_parser("mmd", help="MMD test between two sets of particles in the embedding space",
                       description="Compare the embeddings of two particle sets with the maximum mean "
                       "discrepancy (Gaussian kernel, median-heuristic bandwidth, bootstrapped subsets and a "
                       "permutation p-value). A set is a particle file (.star/.cs/.mrcs; read, resampled, "
                       "whitened and normalised as `sbi infer` does), or `sim:SEED` (fresh simulations from the "
                       "run's priors) or `sim-noctf:SEED` (the same without CTF), or `sim:SEED:STRUCTURE` "
                       "(another structure, a PDB/mmCIF or ensemble .npz, rendered with the run's imaging settings "
                       "and priors). Writes OUTDIR/mmd.json and an embedding plot (UMAP with the optional "
                       "umap-learn, else PCA).",
                       formatter_class=DefaultsHelpFormatter)
    _add_run_arguments(p)
    p.add_argument("set_a", metavar="A", help="particles file, sim:SEED, sim-noctf:SEED or sim:SEED:STRUCTURE")
    p.add_argument("set_b", metavar="B", help="particles file, sim:SEED, sim-noctf:SEED or sim:SEED:STRUCTURE")
    p.add_argument("-n", "--n-per-set", type=int, default=10_000, help="particles per set (bootstrap subset size)")
    p.add_argument("--trials", type=int, default=100, help="bootstrap trials")
    p.add_argument("--permutations", type=int, default=100, help="permutations for the p-value")
    p.add_argument("--datadir", default=None, help="folder holding the image stacks")
    p.add_argument("--apix", type=float, default=None, help="pixel size of particle files (Å/px), overrides the file")
    p.add_argument("--no-whiten", action="store_true", help="do not whiten particle files (as `sbi infer --no-whiten`)")
    _add_recenter_argument(p)
    p.add_argument("--plot", choices=["umap", "pca", "none"], default="umap", help="embedding plot")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.set_defaults(func=run_mmd)


def _embeddings(spec: str, model, run: str, n: int, args):
    from pathlib import Path

    from cryoconf.errors import InputError
    from cryoconf.sbi.config import load_config
    from cryoconf.sbi.latent import (
        embed_particles,
        embed_simulated,
        simulator_for_structure,
    )
    from cryoconf.sbi.simulator import SBISimulator

    if spec.startswith(("sim:", "sim-noctf:")):
        kind, _, rest = spec.partition(":")
        seed, _, structure = rest.partition(":")
        try:
            seed = int(seed)
        except ValueError:
            raise InputError(f"{spec}: write sim:SEED, sim-noctf:SEED or sim:SEED:STRUCTURE with an integer seed") from None
        config = load_config(Path(run) / "config.yaml")
        if structure:
            if not Path(structure).exists():
                raise InputError(f"{spec}: structure file {structure} not found")
            simulator = simulator_for_structure(config, structure, device=args.device)
        else:
            simulator = SBISimulator.from_config(config, device=args.device)
        return embed_simulated(model, simulator, n, seed=seed, ctf=kind == "sim")
    return embed_particles(model, spec, datadir=args.datadir, apix=args.apix, max_particles=n,
                           whiten=not args.no_whiten, recenter=args.recenter)


def run_mmd(args) -> int:
    import json
    from pathlib import Path

    from cryoconf.sbi.inference import load_run
    from cryoconf.sbi.mmd import mmd_test, plot_embeddings

    model, _ = load_run(args.run, args.load, args.device)
    a = _embeddings(args.set_a, model, args.run, args.n_per_set, args)
    b = _embeddings(args.set_b, model, args.run, args.n_per_set, args)
    result = mmd_test(a, b, n_per_set=min(args.n_per_set, len(a), len(b)), n_trials=args.trials,
                      n_permutations=args.permutations, seed=args.seed, device=model.device)
    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    report = {"a": args.set_a, "b": args.set_b, **result.to_dict()}
    (out / "mmd.json").write_text(json.dumps(report, indent=2, default=float))
    if args.plot != "none":
        plot_embeddings(a, b, out / f"embeddings_{args.plot}.png", labels=(args.set_a, args.set_b),
                        method=args.plot, fallback_pca=True)
    print(json.dumps({k: report[k] for k in ("mmd2_mean", "mmd2_std", "p_value")}, default=float))
    return 0


SYMMETRIZE_DESCRIPTION = """\
Fit the temperature of the symmetry-pooled posterior of a trained run and write it to
RUN/symmetry.json (--group D4) or RUN/symmetry_<GROUP>.json (then `sbi infer|calibrate|scan
--symmetrize [GROUP]` use it).

Under the cryoSBI priors (pose uniform on SO(3), white noise, symmetric shift and
astigmatism priors) the true posterior of an image equals that of its 8 rotations by
90° and mirrors about the centre pixel. The pooled posterior is the normalised
geometric mean of the flow's 8 posteriors raised to a temperature τ: the flow's
errors differ between the 8 views and average out, and τ, fitted here by maximum
likelihood of the true θ on particles simulated from the run's priors (a seed of
their own), narrows the pool to match. A subgroup pools fewer views for less time:
C4 (the 4 rotations) or C2 (the identity and the rotation by 180°), each with its own
τ. One-parameter (θ) models only.
"""


def _register_symmetrize(sub) -> None:
    p = sub.add_parser("symmetrize", help="fit the temperature of the symmetry-pooled posterior (RUN/symmetry.json)",
                       description=SYMMETRIZE_DESCRIPTION, formatter_class=DefaultsHelpFormatter)
    p.add_argument("run", metavar="RUN", help="run directory of `cryoconf sbi train`")
    p.add_argument("--load", default="latest", metavar="latest|PATH", help="checkpoint to fit for")
    p.add_argument("--device", default="cpu", help="torch device")
    p.add_argument("--group", choices=SYMMETRY_GROUPS, default="D4",
                   help="the views pooled: 8 rotations and mirrors, 4 rotations, or the identity and the 180° rotation")
    p.add_argument("-n", "--n-particles", type=int, default=4000, help="simulated particles of the fit")
    p.add_argument("--seed", type=int, default=None, help="their seed (default: cryoconf's own for this fit)")
    p.add_argument("--batch-size", type=int, default=256, help="particles per batch")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_symmetrize)


def run_symmetrize(args) -> int:
    import json
    from pathlib import Path

    from cryoconf.atomic_write import atomic_path
    from cryoconf.sbi.config import load_config
    from cryoconf.sbi.inference import load_run
    from cryoconf.sbi.simulator import SBISimulator
    from cryoconf.sbi.symmetry import SYMMETRY_SEED, fit_symmetry, symmetry_file

    model, ckpt = load_run(args.run, args.load, args.device)
    simulator = SBISimulator.from_config(load_config(Path(args.run) / "config.yaml"), device=args.device)
    record = {"checkpoint": ckpt.name,
              **fit_symmetry(model, simulator, args.n_particles, group=args.group, batch_size=args.batch_size,
                             seed=SYMMETRY_SEED if args.seed is None else args.seed, progress=not args.no_progress)}
    path = Path(args.run) / symmetry_file(args.group)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: record[k] for k in ("checkpoint", "group", "temperature", "nll_plain_flow",
                                             "nll_pooled_temperature_1", "nll_pooled")}, indent=2))
    print(f"written to {path}")
    return 0


SUBCOMMANDS = {
    "train": _register_train,
    "infer": _register_infer,
    "calibrate": _register_calibrate,
    "symmetrize": _register_symmetrize,
    "scan": _register_scan,
    "mmd": _register_mmd,
}


def register(sub) -> None:
    add_command_group(sub, "sbi", "amortized template matching by simulation-based inference (cryoSBI)", DESCRIPTION, SUBCOMMANDS)
