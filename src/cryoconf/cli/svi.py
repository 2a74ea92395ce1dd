"""``cryoconf svi SUBCOMMAND``: amortized SVI of ANM amplitudes, pose and defocus (Woollard et al.)."""

from __future__ import annotations

import argparse

from cryoconf.cli.command_group import add_command_group
from cryoconf.cli.help_format import DefaultsHelpFormatter

DESCRIPTION = """\
Amortized stochastic variational inference (Pyro) under the physical forward model of
Woollard et al.: m = m0 + Σ α_m u_m over the lowest ANM modes of a base structure,
rotated (in-plane or full 3D pose), projected, CTF with a per-particle defocus, Gaussian
noise. Three CNN–MLP encoders give q(defocus), q(α) and a mixture of projected normals
for the pose. Frequency marching (Fourier cropping to K of N frequencies, noise scaled
by K/N) and staged optimisation (pose first, then ANM) are set by --stages.

Run `cryoconf svi SUBCOMMAND --help` for each subcommand.
"""

TRAIN_DESCRIPTION = """\
Train the guide on a particle stack. The run directory receives config.yaml, run.log,
checkpoint.N.pt (every --checkpoint-interval steps, at each stage end and at the end),
loss.csv and loss.png. `--load latest` resumes exactly from the newest checkpoint.

--stages K:STEPS[:WHAT],… : each stage Fourier-crops model and data to K pixels for STEPS
steps and trains the encoders WHAT (all, or a +-joined subset of pose, anm, defocus).
Example (paper): 32:4000:pose+defocus,48:4000:pose+defocus,64:4000:anm+defocus
"""


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _register_train(sub) -> None:
    p = sub.add_parser("train", help="train the SVI guide on particles", description=TRAIN_DESCRIPTION,
                       formatter_class=DefaultsHelpFormatter)
    p.add_argument("particles", metavar="PARTICLES", help="particles: .star, .cs or .mrcs (+ --poses/--ctf pkl)")
    p.add_argument("--structure", required=True, help="base atomic model (PDB/mmCIF, or a topology with --trajectory)")
    p.add_argument("-o", "--output", required=True, metavar="RUN", help="run directory to write")
    p.add_argument("--load", default=None, metavar="latest|PATH", help="resume from a checkpoint")
    g = p.add_argument_group("particles")
    g.add_argument("--datadir", default=None, help="folder holding the image stacks")
    g.add_argument("--ind", default=None, help="indices (.npy/.pkl) of the particles to use")
    g.add_argument("--poses", default=None, help="cryoDRGN pose.pkl (only shifts are used)")
    g.add_argument("--ctf", default=None, help="cryoDRGN ctf.pkl (defocus prior and optics)")
    g.add_argument("--apix", type=float, default=None, help="pixel size (Å/px), overrides the file")
    g = p.add_argument_group("structure and ANM")
    g.add_argument("--trajectory", default=None, help="trajectory for a topology --structure")
    g.add_argument("--frame", type=int, default=0, help="frame / model of the base structure")
    g.add_argument("--selection", default=None, help="MDAnalysis selection")
    g.add_argument("--n-modes", type=int, default=1, help="number of lowest non-rigid ANM modes K")
    g.add_argument("--cutoff", type=float, default=15.0, help="ANM contact cutoff (Å)")
    g.add_argument("--sigma-alpha", type=_floats, default=None,
                   help="prior std of the amplitudes (Å along unit-norm modes; one value or one per mode); "
                   "default √(kT/λ_m)")
    g.add_argument("--kT", type=float, default=1.0, help="kT in units of γ (for σ_α = √(kT/λ))")
    g.add_argument("--atom-sigma", type=float, default=None, help="Gaussian width of every pseudo-atom (Å)")
    g = p.add_argument_group("imaging")
    g.add_argument("--defocus-mean", type=float, default=None, help="defocus prior mean (Å); default from metadata")
    g.add_argument("--defocus-std", type=float, default=None, help="defocus prior std (Å); default from metadata")
    g.add_argument("--sigma-noise", type=float, default=None, help="noise std per pixel; default: estimated")
    g.add_argument("--signal-scale", type=float, default=None, help="image units per projected density; default: matched")
    g = p.add_argument_group("pose")
    g.add_argument("--pose", choices=["inplane", "3d"], default="inplane", help="in-plane angle (S¹) or 3D (S³)")
    g.add_argument("--pose-prior-loc", type=_floats, default=None,
                   help="projected-normal prior location (2 or 4 numbers; default 0 = uniform)")
    g.add_argument("--components", type=int, default=2, help="projected normals in the pose mixture")
    g.add_argument("--align-anm", action="store_true",
                   help="in-plane: the ANM encoder reads the image rotated back by the pose encoder's estimate")
    g = p.add_argument_group("optimisation")
    g.add_argument("--stages", default="16:1000:pose+defocus,32:1000:all", help="K:STEPS[:WHAT],… (see above)")
    g.add_argument("--elbo", choices=["enum", "trace"], default="enum",
                   help="TraceEnum_ELBO (mixture component enumerated) or Trace_ELBO")
    g.add_argument("--lr", type=float, default=1e-3, help="ClippedAdam learning rate")
    g.add_argument("--lr-anm", type=float, default=None, help="learning rate of the ANM encoder (default: --lr)")
    g.add_argument("--lrd-anm", type=float, default=None,
                   help="per-step learning-rate decay factor of the ANM encoder (default: none)")
    g.add_argument("-b", "--batch-size", type=int, default=64, help="particles per step")
    g.add_argument("--seed", type=int, default=0, help="random seed")
    g.add_argument("--checkpoint-interval", type=int, default=500, help="steps between checkpoints")
    g.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="torch device")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_train)


def run_train(args) -> int:
    from cryoconf.distributed import resolve_device
    from cryoconf.errors import InputError
    from cryoconf.svi.config import SVIConfig
    from cryoconf.svi.setup import build_model, load_svi_data
    from cryoconf.svi.training import train_svi

    device = resolve_device(args.device)
    if args.load is None:
        from cryoconf.rundir import list_checkpoints

        if list_checkpoints(args.output):
            raise InputError(f"{args.output}: already holds checkpoints; resume with --load latest, or choose another -o")
    config = SVIConfig(
        structure=args.structure, trajectory=args.trajectory, frame=args.frame, selection=args.selection,
        n_modes=args.n_modes, cutoff_A=args.cutoff, sigma_alpha_A=args.sigma_alpha, kT=args.kT,
        atom_sigma_A=args.atom_sigma, defocus_mean_A=args.defocus_mean, defocus_std_A=args.defocus_std,
        noise_sigma=args.sigma_noise, signal_scale=args.signal_scale, pose=args.pose,
        pose_prior_loc=args.pose_prior_loc, n_components=args.components, align_anm=args.align_anm,
        elbo=args.elbo, lr=args.lr, lr_anm=args.lr_anm, lrd_anm=args.lrd_anm,
        batch_size=args.batch_size, stages=args.stages, seed=args.seed, checkpoint_interval=args.checkpoint_interval,
    )
    data = load_svi_data(args.particles, datadir=args.datadir, ind=args.ind, poses=args.poses, ctf=args.ctf,
                         apix=args.apix)
    model, info = build_model(config, data, device=device)
    result = train_svi(model, data, config, args.output, load=args.load, progress=not args.no_progress,
                       extra_config={"particles": str(args.particles), "derived": info})
    print(f"trained to step {result.step}; final −ELBO/particle {result.losses[-1] if result.losses else float('nan'):.4g}; "
          f"run directory {result.run_dir}")
    return 0


ANALYZE_DESCRIPTION = """\
Posterior of every particle under a trained guide: OUTDIR/posterior.npz (samples of α,
defocus and pose, mixture parameters, summaries) and posterior.csv (per particle: α mean/std
in Å, defocus mean/std in Å, pose: in-plane angle in degrees (mode of the most probable
component, circular mean and std) or quaternion and RELION Euler angles). With --truth (an
.npz with any of alpha (P,M), defocus_A (P,), angle_deg (P,), rotations (P,3,3)) or with
poses/CTF in the particle metadata, also residuals (residuals.json) and predicted-vs-true
joint and marginal plots (predicted_vs_true.png).
"""


def _register_analyze(sub) -> None:
    p = sub.add_parser("analyze", help="posterior samples and summaries per particle; residuals vs truth",
                       description=ANALYZE_DESCRIPTION, formatter_class=DefaultsHelpFormatter)
    p.add_argument("run", metavar="RUN", help="run directory of `cryoconf svi train`")
    p.add_argument("particles", metavar="PARTICLES", nargs="?", default=None,
                   help="particles to analyse (default: the training particles)")
    p.add_argument("-o", "--outdir", required=True, help="output directory")
    p.add_argument("--load", default="latest", metavar="latest|PATH", help="checkpoint to use")
    p.add_argument("--datadir", default=None, help="folder holding the image stacks")
    p.add_argument("--ind", default=None, help="indices (.npy/.pkl) of the particles to use")
    p.add_argument("--poses", default=None, help="cryoDRGN pose.pkl")
    p.add_argument("--ctf", default=None, help="cryoDRGN ctf.pkl")
    p.add_argument("--apix", type=float, default=None, help="pixel size (Å/px), overrides the file")
    p.add_argument("--truth", default=None, help="ground-truth .npz (simulated data)")
    p.add_argument("--samples", type=int, default=100, help="posterior samples per particle")
    p.add_argument("--seed", type=int, default=0, help="random seed of the samples")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="torch device")
    p.set_defaults(func=run_analyze)


def run_analyze(args) -> int:
    import json
    from pathlib import Path

    import numpy as np
    import torch
    import yaml

    from cryoconf.errors import InputError
    from cryoconf.svi.outputs import (
        anm_residual,
        plot_predicted_vs_true,
        pose_residual_deg,
        sample_posterior,
        summarise_posterior,
        write_posterior,
    )
    from cryoconf.svi.setup import load_svi_data, true_inplane_angle
    from cryoconf.svi.training import load_run

    model, guide, config, _ = load_run(args.run, args.load, args.device)
    particles = args.particles
    if particles is None:
        cfg = yaml.safe_load((Path(args.run) / "config.yaml").read_text())
        particles = cfg.get("particles")
        if not particles:
            raise InputError(f"{args.run}/config.yaml names no particles; give PARTICLES")
    data = load_svi_data(particles, datadir=args.datadir, ind=args.ind, poses=args.poses, ctf=args.ctf, apix=args.apix)
    if data.box != model.physics.box:
        raise InputError(f"{particles}: box {data.box} but the run was trained on box {model.physics.box}")
    if args.samples < 1:
        raise InputError(f"--samples must be ≥ 1, got {args.samples}")
    samples = sample_posterior(guide, data.images, n_samples=args.samples,
                               generator=torch.Generator().manual_seed(args.seed))
    summary = summarise_posterior(samples)
    out = Path(args.outdir)
    write_posterior(out, data.indices, samples, summary)

    truth: dict = {}
    if args.truth:
        if not Path(args.truth).is_file():
            raise InputError(f"--truth {args.truth}: no such file")
        top = int(np.max(data.indices))
        with np.load(args.truth) as z:  # per-particle arrays (first axis = dataset rows), picked by --ind
            truth = {k: z[k][data.indices] for k in z.files if z[k].ndim >= 1 and z[k].shape[0] > top}
    if "rotations" not in truth and "angle_deg" not in truth and data.rotations is not None:
        truth["rotations"] = data.rotations
    if "defocus_A" not in truth and data.defocus_A is not None:
        truth["defocus_A"] = data.defocus_A
    report: dict = {"n_particles": len(data)}
    pairs: dict = {}
    kind = model.priors.pose
    if "alpha" in truth:
        ta = np.asarray(truth["alpha"], dtype=float).reshape(len(data), -1)[:, :guide.n_modes]
        report["anm_residual"] = anm_residual(summary["alpha_mean"][:, :ta.shape[1]], ta,
                                              model.priors.sigma_alpha.numpy()[:ta.shape[1]],
                                              model.physics.coords0_A.shape[0])
        for j in range(ta.shape[1]):
            pairs[f"alpha{j} (Å)"] = (ta[:, j], samples["alpha"][:, :, j])
    if kind == "inplane" and ("angle_deg" in truth or "rotations" in truth):
        th = np.radians(truth["angle_deg"]) if "angle_deg" in truth else true_inplane_angle(truth["rotations"])
        res = pose_residual_deg(np.radians(summary["angle_deg"]), th, kind)
        report["pose_residual_deg"] = float(res.mean())
        pairs["angle (°)"] = (np.degrees(th), np.degrees(samples["pose"]))
    elif kind == "3d" and "rotations" in truth:
        from cryoconf.imaging.rotations import matrix_to_quaternion

        tq = matrix_to_quaternion(torch.as_tensor(truth["rotations"], dtype=torch.float64)).numpy()
        report["pose_residual_deg"] = float(pose_residual_deg(summary["quaternion"], tq, kind).mean())
    if "defocus_A" in truth:
        td = np.asarray(truth["defocus_A"], dtype=float)
        report["defocus_residual_A"] = float(np.abs(summary["defocus_mean_A"] - td).mean())
        pairs["defocus (Å)"] = (td, samples["defocus_A"])
    if len(report) > 1:
        (out / "residuals.json").write_text(json.dumps(report, indent=2))
        plot_predicted_vs_true(out / "predicted_vs_true.png", pairs)
        print(json.dumps(report))
    print(f"posterior of {len(data)} particles written to {out}")
    return 0


SUBCOMMANDS = {"train": _register_train, "analyze": _register_analyze}


def register(sub) -> None:
    add_command_group(sub, "svi", "amortized SVI of ANM amplitudes, pose and defocus (Woollard et al.)", DESCRIPTION, SUBCOMMANDS)
