"""``cryoconf demo -o OUTDIR``: the main job on built-in example data.

Runs on the ADK closed→open DIMS trajectory that ships in the PyPI package
``MDAnalysisTests`` (``pip install cryoconf[examples]``):

1. Simulation: a small dataset from the trajectory's frames in OUTDIR/
   (particles.star, particles.mrcs, truth.npz, montage.png of clean and noisy particles).
2. Amortized template matching (cryoSBI), in OUTDIR/sbi/ (skip with --no-sbi):
   ensemble.npz  15 templates from the first frame's Cα atoms along two ANM modes
                 (θ < 0: mode 0, θ > 0: mode 1, |θ| = RMSD to the frame in Å; cryoSBI's recipe)
   config.yaml   a small `cryoconf sbi train` config (box 32 at 2.5 Å/px, compact CNN, small flow)
   run/          `cryoconf sbi train` for --sbi-steps steps (checkpoints, loss.csv, loss.png)
   particles/    --sbi-particles particles simulated from ensemble.npz with known θ (truth.npz)
   posterior/    `cryoconf sbi infer` on them: posterior.npz/.csv, particles_sbi.star,
                 posterior_examples.png, posterior_means.png, and posterior_vs_truth.png
   calibration/  `cryoconf sbi calibrate` on --sbi-calibration fresh particles:
                 calibration.json, calibration.png (SBC ranks, expected coverage)
   summary.json  the key figures: steps, validation loss, calibration, posterior mean vs true θ

3. Structure-based heterogeneous reconstruction (`cryoconf recon`), in OUTDIR/recon/
   (skip with --no-recon): the `residues` model (Prins et al.) trained for --recon-epochs
   epochs on the particles of step 1, with frame 0 (closed) as the base structure:
   base_frame0.pdb  the base structure (Cα), centred as the simulation centred the frames
   run/             `cryoconf recon train` (checkpoints, z.N.npy, loss.csv, loss.png)
   analyze/         `cryoconf recon analyze`: pc1_traversal.pdb (structures along PC1),
                    pc2_traversal.pdb, kmeans/centres.pdb, latent_pca.png, loss.png
   summary.json     correlation of each particle's latent PC1 with its true frame index

The default 2,000 training steps (about 90 s on 2 CPU cores) give calibrated but
broad posteriors; a real run trains for 10⁴–10⁵ steps (configs/sbi_hsp90_box64.yaml). On a busy machine, --threads 1
is often much faster than several competing threads.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from cryoconf.cli.help_format import DefaultsHelpFormatter
from cryoconf.errors import InputError

# the SBI part of the demo: templates and imaging (kept small so training takes about a minute on 2 CPU cores)
SBI_MODES = (0, 1)  # ANM modes for θ < 0 and θ > 0
SBI_MAX_RMSD_A = 5.0  # |θ| at the ends of the ensemble (Å)
SBI_PER_SIDE = 7  # templates per side: 2·7 + 1 = 15
SBI_SIGMA_A = 2.0  # Gaussian width of the pseudo-atoms of the simulated particles (inside the prior)
SBI_BOX, SBI_APIX_A = 32, 2.5  # 80 Å field of view; ADK spans about 40–50 Å
SBI_SNR = (0.3, 3.0)  # log-uniform prior, and the range the demo particles are drawn from
SBI_DEFOCUS_A = (8000.0, 20000.0)
SBI_STEPS = 2000
RECON_EPOCHS = 10

SBI_CONFIG = """\
# cryoconf sbi train — written by `cryoconf demo`: ADK, two ANM modes, CPU-sized for a short demo.
# A real run trains longer (10⁴–10⁵ steps), at lower SNR and a larger box; see configs/sbi_hsp90_box64.yaml.
# Units are in the key names; relative paths are relative to this file.

templates:
  path: ensemble.npz         # 15 templates, θ = signed RMSD (Å) along ANM mode 0 (θ < 0) / mode 1 (θ > 0)
  mode: ca
  center: first
  amplitudes: topology

image:
  box: {box}                    # px
  apix_A: {apix}               # Å/px (field of view {fov:g} Å)
  voltage_kV: 300.0
  cs_mm: 2.7
  pad_factor: 1
  projector: point
  snr_definition: box        # the definition `cryoconf simulate` uses by default

priors:
  sigma_A: [1.5, 2.5]        # Å; the demo particles use {sigma} Å
  defocus_A: [{dmin:g}, {dmax:g}]   # Å
  astigmatism_A: 0
  bfactor_A2: [0, 50]        # Å²
  amplitude_contrast: 0.1
  snr: [{smin:g}, {smax:g}]          # log-uniform; high for a demo (experimental particles: ~0.01–0.1)
  shift_A: 0.0

posterior:
  parameters: [theta]

embedding:
  name: cnn
  params: {{channels: [16, 32, 64], hidden: 128, out_features: 64}}

flow:
  transforms: 3
  hidden_features: [64, 64]
  bins: 8

training:
  optimizer: adamw
  lr: 1.0e-3
  weight_decay: 0.01
  clip_grad_norm: 5.0
  batch_size: 128
  steps: {steps}
  validation_size: 512
  validation_interval: 50
  checkpoint_interval: 100
  seed: {seed}
"""


def adk_example_files() -> tuple[str, str]:
    """Paths of the ADK topology (PSF) and DIMS trajectory (DCD, 102 frames) from MDAnalysisTests."""
    try:
        from MDAnalysisTests.datafiles import DCD2, PSF
    except ImportError:
        raise InputError(
            "the demo uses the ADK trajectory from the package MDAnalysisTests; "
            "install it with `pip install 'cryoconf[examples]'` (or `make demo`)"
        ) from None
    return PSF, DCD2


def register(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="run cryoconf on built-in example data (ADK, from MDAnalysisTests)",
        description=__doc__,
        formatter_class=DefaultsHelpFormatter,
    )
    p.add_argument("-o", "--outdir", default="demo_out", help="output directory")
    p.add_argument("-n", "--n-particles", type=int, default=512, help="particles to simulate from the trajectory")
    p.add_argument("--box", type=int, default=64, help="box size of the trajectory dataset (px)")
    p.add_argument("--apix", type=float, default=2.0, help="pixel size of the trajectory dataset (Å/px)")
    p.add_argument("--snr", type=float, default=0.1,
                   help="signal-to-noise ratio of the trajectory dataset (box definition)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    g = p.add_argument_group("SBI (amortized template matching)")
    g.add_argument("--no-sbi", action="store_true", help="skip the SBI part (ensemble, training, inference)")
    g.add_argument("--sbi-steps", type=int, default=SBI_STEPS, help="training steps (batches of 128 particles)")
    g.add_argument("--sbi-particles", type=int, default=300, help="particles with known θ to run `sbi infer` on")
    g.add_argument("--sbi-calibration", type=int, default=200, help="fresh simulated particles for `sbi calibrate`")
    g = p.add_argument_group("recon (structure-based heterogeneous reconstruction)")
    g.add_argument("--no-recon", action="store_true", help="skip the recon part")
    g.add_argument("--recon-epochs", type=int, default=RECON_EPOCHS, help="training epochs over the particles")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice); on a busy machine 1 is often fastest")
    p.set_defaults(func=run)


def _check_args(args) -> None:
    for name, flag, minimum in (("n_particles", "-n/--n-particles", 1), ("sbi_steps", "--sbi-steps", 1),
                                ("recon_epochs", "--recon-epochs", 1),
                                ("sbi_particles", "--sbi-particles", 2), ("sbi_calibration", "--sbi-calibration", 2)):
        value = getattr(args, name)
        if value < minimum:
            raise InputError(f"{flag} must be ≥ {minimum}, got {value}")
    if args.threads is not None and args.threads < 1:
        raise InputError(f"--threads must be ≥ 1, got {args.threads}")
    if args.seed < 0:
        raise InputError(f"--seed must be ≥ 0, got {args.seed}")


def run(args) -> int:
    import torch

    _check_args(args)
    previous_threads = torch.get_num_threads()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        t0 = time.perf_counter()
        psf, dcd = adk_example_files()
        print(f"ADK closed→open trajectory: {psf} + {dcd}")
        code = _simulate_trajectory(args, psf, dcd)
        if code == 0 and not args.no_sbi:
            code = run_sbi_demo(args, psf, dcd)
        if code == 0 and not args.no_recon:
            code = run_recon_demo(args, psf, dcd)
        if code == 0:
            print(f"demo finished in {time.perf_counter() - t0:.0f} s; outputs in {args.outdir}")
        return code
    finally:
        torch.set_num_threads(previous_threads)


def _simulate_trajectory(args, psf: str, dcd: str) -> int:
    from cryoconf.cli.main import main

    return main([
        "simulate", psf, dcd, "-o", args.outdir, "-n", str(args.n_particles), "--box", str(args.box),
        "--apix", str(args.apix), "--snr", str(args.snr), "--defocus", "8000", "20000",
        "--astigmatism", "0", "500", "--shift", "4", "--seed", str(args.seed), "--montage", "16",
    ])


def run_recon_demo(args, psf: str, dcd: str) -> int:
    """``cryoconf recon`` (residues) on the simulated trajectory particles, then ``recon analyze``."""
    import numpy as np

    from cryoconf.cli.main import main
    from cryoconf.structure.readers import read_structure
    from cryoconf.structure.writers import write_pdb

    out = Path(args.outdir) / "recon"
    out.mkdir(parents=True, exist_ok=True)
    base = read_structure(psf, trajectory=dcd, frame=0)
    write_pdb(out / "base_frame0.pdb", base)
    run_dir, analysis = out / "run", out / "analyze"
    t0 = time.perf_counter()
    load = ["--load", "latest"] if list(run_dir.glob("checkpoint.*.pt")) else []
    code = main(["recon", "train", str(Path(args.outdir) / "particles.star"), "--structure", str(out / "base_frame0.pdb"),
                 "--center", "centroid", "-o", str(run_dir), "--encoder", "backproj", "--decoder-hidden", "256", "256",
                 "--downsample", str(min(32, args.box)), "--epochs", str(args.recon_epochs), "--lr", "1e-3",
                 "-b", "64", "--seed", str(args.seed), *load])
    if code:
        return code
    train_s = time.perf_counter() - t0
    code = main(["recon", "analyze", str(run_dir), "-o", str(analysis), "--ksample", str(min(5, args.n_particles))])
    if code:
        return code
    with np.load(Path(args.outdir) / "truth.npz") as t:
        frame = t["frame_index"]
    pc1 = np.load(analysis / "pca.npz")["projections"][:, 0]
    r = float(np.corrcoef(pc1, frame)[0, 1]) if pc1.std() > 0 and frame.std() > 0 else 0.0
    summary = {"epochs": args.recon_epochs, "particles": int(len(pc1)), "train_seconds": train_s,
               "pc1_vs_frame_index_abs_pearson_r": abs(r)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"recon: {args.recon_epochs} epochs in {train_s:.0f} s; |Pearson r| of latent PC1 with the true frame index "
          f"{abs(r):.2f}; PC1 traversal in {analysis / 'pc1_traversal.pdb'}")
    return 0


def build_demo_ensemble(psf: str, dcd: str, path):
    """Two-mode ANM ensemble (:class:`Conformations`) of the trajectory's first frame (Cα, σ = SBI_SIGMA_A),
    saved to ``path``."""
    from cryoconf.dynamics.anm import compute_anm_modes
    from cryoconf.dynamics.ensembles import two_mode_ensemble
    from cryoconf.structure import read_structure, save_conformations

    structure = read_structure(psf, trajectory=dcd, frame=0, mode="ca", sigma=SBI_SIGMA_A)
    modes = compute_anm_modes(structure, n_modes=max(SBI_MODES) + 1, cutoff_A=15.0)
    conf = two_mode_ensemble(modes, *SBI_MODES, max_rmsd_A=SBI_MAX_RMSD_A, n_per_side=SBI_PER_SIDE,
                             structure=structure)
    save_conformations(path, conf)
    return conf


def write_demo_config(path, steps: int, seed: int) -> Path:
    """The demo's ``sbi train`` config (YAML with comments), validated by reading it back."""
    from cryoconf.sbi.config import load_config

    path = Path(path)
    path.write_text(SBI_CONFIG.format(box=SBI_BOX, apix=SBI_APIX_A, fov=SBI_BOX * SBI_APIX_A, sigma=SBI_SIGMA_A,
                                      dmin=SBI_DEFOCUS_A[0], dmax=SBI_DEFOCUS_A[1], smin=SBI_SNR[0],
                                      smax=SBI_SNR[1], steps=steps, seed=seed), encoding="utf-8")
    load_config(path)
    return path


def run_sbi_demo(args, psf: str, dcd: str) -> int:
    """Ensemble → config → train → simulate particles with known θ → infer → calibrate → summary."""
    from cryoconf.cli.main import main
    from cryoconf.rundir import LossCurve

    out = Path(args.outdir) / "sbi"
    out.mkdir(parents=True, exist_ok=True)
    ensemble, config, run_dir = out / "ensemble.npz", out / "config.yaml", out / "run"
    particles, posterior, calibration = out / "particles", out / "posterior", out / "calibration"

    conf = build_demo_ensemble(psf, dcd, ensemble)
    print(f"SBI templates: {ensemble} ({len(conf)} conformations, θ from {conf.theta.min():+.2f} to "
          f"{conf.theta.max():+.2f} Å: ANM mode {SBI_MODES[0]} for θ < 0, mode {SBI_MODES[1]} for θ > 0)")
    write_demo_config(config, args.sbi_steps, args.seed)

    t0 = time.perf_counter()
    load = ["--load", "latest"] if list(run_dir.glob("checkpoint.*.pt")) else []  # an interrupted demo resumes
    code = main(["sbi", "train", str(config), "-o", str(run_dir), "--steps", str(args.sbi_steps), *load])
    if code:
        return code
    train_s = time.perf_counter() - t0
    code = main([
        "simulate", str(ensemble), "-o", str(particles), "-n", str(args.sbi_particles), "--box", str(SBI_BOX),
        "--apix", str(SBI_APIX_A), "--snr", str(SBI_SNR[0]), str(SBI_SNR[1]), "--snr-definition", "box",
        "--defocus", str(SBI_DEFOCUS_A[0]), str(SBI_DEFOCUS_A[1]), "--pad", "1", "--seed", str(args.seed + 1),
        "--montage", "8",
    ])
    if code:
        return code
    code = main(["sbi", "infer", str(run_dir), str(particles / "particles.star"), "-o", str(posterior),
                 "--samples", "5000"])
    if code:
        return code
    code = main(["sbi", "calibrate", str(run_dir), "-o", str(calibration), "-n", str(args.sbi_calibration),
                 "--samples", "500"])
    if code:
        return code

    val = [(r["step"], r["val_loss"]) for r in LossCurve(run_dir, ["train_loss", "val_loss"]).read()
           if r.get("val_loss") is not None]
    truth = compare_with_truth(posterior / "posterior.npz", particles / "truth.npz",
                               posterior / "posterior_vs_truth.png")
    metrics = json.loads((calibration / "calibration.json").read_text())
    summary = {
        "templates": len(conf),
        "theta_range_A": [float(conf.theta.min()), float(conf.theta.max())],
        "training_steps": args.sbi_steps,
        "training_seconds": train_s,
        "validation_loss_first": val[0][1] if val else None,
        "validation_loss_final": val[-1][1] if val else None,
        "prior_entropy": _prior_entropy(conf.theta),
        "calibration": {k: metrics[k] for k in ("n_particles", "fraction_within_tolerance", "tolerance",
                                                "mean_posterior_std", "coverage_68", "coverage_95", "sbc_chi2_p",
                                                "posterior_mean_rmse")},
        "particles": truth,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")

    c = summary["calibration"]
    print(f"SBI training: {args.sbi_steps} steps in {train_s:.0f} s; validation loss "
          f"{summary['validation_loss_first']:.3f} → {summary['validation_loss_final']:.3f} "
          f"(prior: {summary['prior_entropy']:.3f})")
    print(f"SBI posterior on {truth['n']} particles with known θ: correlation of posterior mean and true θ "
          f"{_fmt(truth['pearson_r'])}, RMSE {truth['rmse_A']:.2f} Å, 68 % / 95 % intervals cover "
          f"{truth['coverage_68']:.2f} / {truth['coverage_95']:.2f}")
    print(f"SBI calibration on {c['n_particles']} fresh particles: coverage 68 % → {c['coverage_68']:.2f}, "
          f"95 % → {c['coverage_95']:.2f}, SBC χ² p = {c['sbc_chi2_p']:.3g}, mean posterior std "
          f"{c['mean_posterior_std']:.2f} Å")
    print("SBI plots:")
    for path in (run_dir / "loss.png", posterior / "posterior_examples.png", posterior / "posterior_means.png",
                 posterior / "posterior_vs_truth.png", calibration / "calibration.png"):
        print(f"  {path}")
    print(f"SBI summary: {out / 'summary.json'}")
    return 0


def _prior_entropy(theta) -> float:
    """Entropy (nats) of the uniform θ prior of ``sbi train``: the log of its width."""
    from cryoconf.sbi.prior import TemplatePrior

    prior = TemplatePrior(theta)
    return float(math.log(prior.high - prior.low))


def _fmt(value: float) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.2f}"


def compare_with_truth(posterior_npz, truth_npz, png) -> dict:
    """Posterior means of `sbi infer` against the θ the particles were simulated with; scatter plot to ``png``."""
    import numpy as np

    with np.load(posterior_npz) as p, np.load(truth_npz) as t:
        index = np.asarray(p["index"], dtype=np.int64)
        mean = np.asarray(p["cryoconfThetaMean"], dtype=np.float64)
        lo68, hi68 = p["cryoconfThetaQ16"], p["cryoconfThetaQ84"]
        lo95, hi95 = p["cryoconfThetaQ2p5"], p["cryoconfThetaQ97p5"]
        true = np.asarray(t["theta"], dtype=np.float64)[index]
    r = float(np.corrcoef(mean, true)[0, 1]) if mean.std() > 0 and true.std() > 0 else float("nan")
    result = {
        "n": int(mean.size),
        "pearson_r": r,
        "rmse_A": float(np.sqrt(np.mean((mean - true) ** 2))),
        "coverage_68": float(np.mean((true >= lo68) & (true <= hi68))),
        "coverage_95": float(np.mean((true >= lo95) & (true <= hi95))),
    }

    from cryoconf.plots import new_figure, save_figure

    fig, ax = new_figure(figsize=(4.2, 4.0))
    lo, hi = float(min(true.min(), lo68.min())), float(max(true.max(), hi68.max()))
    ax.plot([lo, hi], [lo, hi], color="0.6", lw=1, ls="--")
    ax.errorbar(true, mean, yerr=[mean - lo68, hi68 - mean], fmt="o", ms=3, lw=0.6, alpha=0.6, color="#4477aa")
    ax.set_xlabel("true θ (Å)")
    ax.set_ylabel("posterior mean of θ (Å), 68 % interval")
    ax.set_title(f"r = {_fmt(r)}, RMSE {result['rmse_A']:.2f} Å", fontsize=9)
    save_figure(fig, png)
    return result
