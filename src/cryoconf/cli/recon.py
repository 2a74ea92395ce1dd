"""``cryoconf recon``: structure-based heterogeneous reconstruction (``train``, ``analyze``).

``cryoconf recon PARTICLES --structure PDB -o RUN`` is short for ``cryoconf recon train …``.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from cryoconf.cli.help_format import DefaultsHelpFormatter

if TYPE_CHECKING:
    from cryoconf.recon.config import ReconConfig

DESCRIPTION = """\
Structure-based heterogeneous reconstruction from particles with known poses and
CTF: an encoder maps each image to a latent z, a decoder turns z into a whole
structure (the base model deformed), and the core forward model renders it with the
particle's pose, shift and CTF for comparison with the image.

  --model residues  per-residue displacements with the geometry-degradation,
                    bond and centering priors (Prins et al.)
  --model segments  a learned soft segmentation of the chain, one rigid motion per
                    segment (cryoSPHERE)
  --model rbf       Cryofold's RBF model (use --mode ca+sc): learned centres and σ,
                    z-dependent offsets, backbone bonds and side-chain bounds

Run `cryoconf recon train --help` and `cryoconf recon analyze --help`.
"""

TRAIN_DESCRIPTION = """\
Train a recon model. PARTICLES: a RELION .star, a cryoSPARC .cs, or an .mrcs with
cryoDRGN --poses/--ctf pickles. The base structure (PDB/mmCIF, coarse-grained to one
Cα pseudo-atom per residue by default) must be in the frame of the poses: --center
centroid moves its centroid to the origin, --center box moves the origin from the
corner of the consensus map (box × pixel size of the particles) to its centre.

The run directory receives config.yaml, run.log, checkpoint.N.pt and z.N.npy every
epoch, loss.csv and loss.png. `--load latest` resumes exactly where the last
checkpoint stopped (give a larger --epochs to train further).

Multi-GPU: torchrun --nproc-per-node G -m cryoconf recon train … --device cuda
"""

# flag → (ReconConfig field, type, help); defaults come from ReconConfig
_SETTINGS = [
    ("--model", "model", str, "residues | segments | rbf"),
    ("--zdim", "latent_dim", int, "latent dimension L"),
    ("--encoder", "encoder", str, "cnn | mlp | backproj"),
    ("--encoder-channels", "encoder_channels", int, "CNN channels per block", "+"),
    ("--decoder-hidden", "decoder_hidden", int, "decoder MLP hidden sizes", "+"),
    ("--downsample", "downsample_box", int, "working box (Fourier crop of the particles; faster)"),
    ("--lowpass", "lowpass_A", float, "soft low-pass (Å) applied to data and prediction"),
    ("--mask-radius", "mask_radius_frac", float, "circular mask radius as a fraction of box/2"),
    ("--loss", "image_loss", str, "image loss: l2 | corr (negative correlation)"),
    ("--scale", "scale", str, "l2 scale/offset: closed_form (per image) | learned (global)"),
    ("--projector", "projector", str, "point | pixel"),
    ("--pad", "pad_factor", int, "zero padding factor before the CTF (1 or 2)"),
    ("--geometry-weight", "geometry_weight", float, "weight of the geometry-degradation loss"),
    ("--bond-weight", "bond_weight", float, "weight of the Cα bond loss (3.8 Å)"),
    ("--centering-weight", "centering_weight", float, "weight of the centering loss"),
    ("--continuity-weight", "continuity_weight", float, "weight of the continuity loss"),
    ("--clash-weight", "clash_weight", float, "weight of the clash loss (pairs closer than 4 Å)"),
    ("--geometry-cutoff", "geometry_cutoff_A", float, "neighbour-list cutoff (Å) for large proteins"),
    ("--geometry-pairs", "geometry_pairs_per_step", int,
     "random residue pairs of the geometry loss per step (0: all pairs, exact but slow)"),
    ("--kl-weight", "kl_weight", str, "KL weight: auto (2/effective pixels) or a number"),
    ("--kl-warmup", "kl_warmup_epochs", float, "epochs of linear KL warm-up"),
    ("--segments", "n_segments", int, "segments per group (model segments)"),
    ("--segment-groups", "segment_groups", str, "whole | chain | ranges"),
    ("--tau", "tau", float, "segmentation temperature τ"),
    ("--rbf-sigma", "rbf_sigma", str, "model rbf: shared σ or one per residue_type"),
    ("--sigma-init", "rbf_sigma_init_A", float, "model rbf: initial σ (Å)"),
    ("--bond-k", "rbf_bond_k", float, "model rbf: backbone bond constant (per Å²; 0: no bonds)"),
    ("--sidechain-k", "rbf_sidechain_k", float, "model rbf: side-chain bound constant (per Å²; 0: none)"),
    ("--restraint-weight", "restraint_weight", str, "model rbf: weight of the restraints: auto or a number"),
    ("--lr-rbf", "lr_rbf", float, "model rbf: learning rate of the RBF centres and σ"),
    ("--epochs", "epochs", int, "total number of epochs"),
    ("-b", "batch_size", int, "batch size"),
    ("--lr", "lr_decoder", float, "learning rate of the encoder and decoder"),
    ("--lr-segmentation", "lr_segmentation", float, "learning rate of the segmentation"),
    ("--seed", "seed", int, "random seed"),
    ("--checkpoint-every", "checkpoint_every", int, "epochs between checkpoints"),
]


def add_run_arguments(p) -> None:
    """The run group shared by ``recon train`` and ``fit``: --load, --device, --threads, --no-progress."""
    g = p.add_argument_group("run")
    g.add_argument("--load", default=None, metavar="latest|PATH", help="resume from a checkpoint")
    g.add_argument("--device", default="cpu", help="cpu or cuda")
    g.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_particle_and_structure_arguments(p, *, default_mode: str, mode_help: str) -> None:
    """The particle flags (cryoDRGN habits) and structure flags that ``recon train`` and ``fit`` share;
    :func:`read_particles_and_structure` reads what they name."""
    g = p.add_argument_group("particles")
    g.add_argument("--datadir", default=None, help="folder of the image stacks named in the metadata")
    g.add_argument("--poses", default=None, help="cryoDRGN pose.pkl (for an .mrcs)")
    g.add_argument("--ctf", default=None, help="cryoDRGN ctf.pkl (for an .mrcs)")
    g.add_argument("--ind", default=None, help="subset of particles: a .pkl/.npy/.txt of row indices")
    g.add_argument("--apix", type=float, default=None, help="pixel size (Å/px) when the metadata lacks it")
    g.add_argument("--lazy", action="store_true", help="read each batch from disk instead of holding the stack in memory")
    g = p.add_argument_group("structure")
    g.add_argument("--mode", choices=["ca", "ca+sc"], default=default_mode, help=mode_help)
    g.add_argument("--center", choices=["none", "centroid", "box"], default="none",
                   help="move the structure into the frame of the poses (see above)")
    g.add_argument("--selection", default=None, help="MDAnalysis selection of the atoms to keep")


def _register_train(sub) -> None:
    from cryoconf.recon.config import ReconConfig

    defaults = ReconConfig()
    p = sub.add_parser("train", help="train a recon model", description=TRAIN_DESCRIPTION,
                       formatter_class=DefaultsHelpFormatter)
    p.add_argument("particles", metavar="PARTICLES", help=".star, .cs or .mrcs")
    p.add_argument("--structure", required=True, help="base structure (PDB/mmCIF) in the frame of the poses")
    p.add_argument("-o", "--output", required=True, metavar="RUN", help="run directory")
    add_particle_and_structure_arguments(p, default_mode="ca", mode_help="pseudo-atoms per residue")
    g = p.add_argument_group("model and training (defaults from ReconConfig)")
    g.add_argument("--config", default=None, help="YAML file of ReconConfig settings (flags override it)")
    for flag, name, typ, text, *nargs in _SETTINGS:
        default = getattr(defaults, name)
        g.add_argument(flag, dest=name, type=typ, default=None, nargs=nargs[0] if nargs else None,
                       help=f"{text} (default: {' '.join(map(str, default)) if isinstance(default, list) else default})")
    g.add_argument("--ae", dest="variational", action="store_const", const=False, default=None,
                   help="deterministic autoencoder instead of a VAE")
    g.add_argument("--segment-ranges", default=None,
                   help="with --segment-groups ranges: START-STOP,… residue positions (0-based, stop exclusive)")
    add_run_arguments(p)
    p.set_defaults(func=run_train)


def _parse_ranges(text: str) -> list[list[int]]:
    from cryoconf.errors import InputError

    out = []
    for part in text.split(","):
        try:
            a, b = part.split("-")
            out.append([int(a), int(b)])
        except ValueError as exc:
            raise InputError(f"--segment-ranges {text!r}: write START-STOP,START-STOP (integers)") from exc
    return out


def build_config(args) -> "ReconConfig":
    """ReconConfig from (in increasing priority) defaults, the checkpoint when resuming, --config, the flags."""
    from pathlib import Path

    import yaml

    from cryoconf.errors import InputError
    from cryoconf.recon.config import ReconConfig
    from cryoconf.rundir import resolve_checkpoint

    settings: dict = {}
    if args.load is not None:
        import torch

        state = torch.load(resolve_checkpoint(args.load, args.output), map_location="cpu", weights_only=False)
        settings.update(state["config"])
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            raise InputError(f"--config {path}: no such file")
        data = yaml.safe_load(path.read_text()) or {}
        settings.update(data.get("recon", data))
    for _, name, *_ in _SETTINGS:
        value = getattr(args, name)
        if value is not None:
            settings[name] = value
    if args.variational is not None:
        settings["variational"] = args.variational
    if getattr(args, "lr_decoder", None) is not None:
        settings["lr_encoder"] = args.lr_decoder
    for name, flag in (("kl_weight", "--kl-weight"), ("restraint_weight", "--restraint-weight")):
        if isinstance(settings.get(name), str) and settings[name] != "auto":
            try:
                settings[name] = float(settings[name])
            except ValueError as exc:
                raise InputError(f"{flag} must be 'auto' or a number, got {settings[name]!r}") from exc
    if args.segment_ranges:
        settings["segment_ranges"] = _parse_ranges(args.segment_ranges)
    return ReconConfig.from_dict(settings)


def read_particles_and_structure(args, downsample_box, structure=None):
    """The particles (ReconParticles at ``downsample_box``) and ``structure`` (default ``args.structure``) in
    the frame of the poses, from the shared particle and structure flags of ``recon train`` and ``fit``."""
    from cryoconf.data.dataset import load_particles
    from cryoconf.recon import ReconParticles, base_in_pose_frame
    from cryoconf.structure.readers import read_structure

    dataset = load_particles(args.particles, datadir=args.datadir, ind=args.ind, poses=args.poses, ctf=args.ctf,
                             apix=args.apix, require_poses=True)
    particles = ReconParticles(dataset, downsample_box, lazy=args.lazy, progress=not args.no_progress)
    base = read_structure(structure or args.structure, mode=args.mode, selection=args.selection)
    return particles, base_in_pose_frame(base, args.center, particles.original_box, particles.original_apix_A)


def run_train(args) -> int:
    import torch

    from cryoconf.distributed import dist_info
    from cryoconf.recon import train_recon

    if args.threads:
        torch.set_num_threads(args.threads)
    config = build_config(args)
    particles, base = read_particles_and_structure(args, config.downsample_box)
    inputs = {k: getattr(args, k) for k in ("particles", "structure", "datadir", "poses", "ctf", "ind", "apix",
                                             "mode", "center", "selection")}
    result = train_recon(config, particles, base, args.output, load=args.load, device=args.device,
                         progress=not args.no_progress, inputs=inputs)
    last = f", final loss {result.losses[-1][1]:.5g}" if result.losses else ""
    if dist_info()[1] == 0:  # under torchrun, one line from rank 0
        print(f"trained to epoch {result.epoch}{last}; run directory {result.run_dir}")
    return 0


def _register_analyze(sub) -> None:
    p = sub.add_parser("analyze", help="latent space, PC traversals, k-means structures, maps, plots",
                       description="Analyse a trained recon run: z per particle, PCA of z with structures along "
                       "PC1 and PC2 (multi-model PDB), k-means centres as structures, plots of the latent space "
                       "and losses; for --model segments the segment labels (PDB B-factors) and each particle's "
                       "segment rotations and translations. Optional: every particle's structure, density maps "
                       "(MRC), UMAP.", formatter_class=DefaultsHelpFormatter)
    p.add_argument("run", metavar="RUN", help="run directory of `cryoconf recon train`")
    p.add_argument("-o", "--outdir", default=None, help="output folder (default: RUN/analyze.EPOCH)")
    p.add_argument("--epoch", type=int, default=None, help="epoch to analyse (default: the last checkpoint)")
    p.add_argument("--steps", type=int, default=10, help="structures along each PC traversal")
    p.add_argument("--ksample", type=int, default=10, help="k-means clusters (0: none)")
    p.add_argument("--structures", action="store_true", help="write every particle's structure to structures.npy")
    p.add_argument("--maps", action="store_true", help="MRC maps of the traversal ends and k-means centres")
    p.add_argument("--umap", action="store_true", help="UMAP plot (needs the umap extra)")
    p.add_argument("--seed", type=int, default=0, help="k-means/UMAP seed")
    g = p.add_argument_group("latent refinement")
    g.add_argument("--refine-z", type=int, default=0, metavar="STEPS",
                   help="refine each particle's z for STEPS Adam steps from the encoder's mean: its MAP with the "
                        "decoder fixed, which closes the encoder's amortisation gap (20 is usually enough; "
                        "reads the particles again)")
    g.add_argument("--refine-lr", type=float, default=0.05, help="Adam step size of the refinement")
    g.add_argument("--particles", default=None, help="particles of the run (default: as recorded in RUN/config.yaml)")
    g.add_argument("--datadir", default=None, help="folder of the image stacks (default: as recorded)")
    g.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run_analyze)


def run_analyze(args) -> int:
    import torch

    from cryoconf.recon.analysis import analyze_run

    if args.threads:
        torch.set_num_threads(args.threads)
    res = analyze_run(args.run, args.outdir, epoch=args.epoch, n_steps=args.steps, kmeans=args.ksample,
                      structures=args.structures, maps=args.maps, umap=args.umap, seed=args.seed,
                      refine_steps=args.refine_z, refine_lr=args.refine_lr,
                      inputs={"particles": args.particles, "datadir": args.datadir}, progress=not args.no_progress)
    evr = ", ".join(f"{100 * v:.0f} %" for v in res.explained_variance_ratio[:3])
    print(f"analysis of epoch {res.epoch} written to {res.outdir} (PC variance: {evr})")
    return 0


SUBCOMMANDS = {"train": _register_train, "analyze": _register_analyze}


def register(subparsers) -> None:
    p = subparsers.add_parser("recon", help="structure-based heterogeneous reconstruction (residues | segments)",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="recon_command", metavar="SUBCOMMAND")
    for add in SUBCOMMANDS.values():
        add(sub)


def default_subcommand(argv: list[str]) -> list[str]:
    """``recon PARTICLES …`` → ``recon train PARTICLES …`` (also after global options: ``-v recon …``)."""
    i = 0
    while i < len(argv) and argv[i].startswith("-"):  # cryoconf's own options take no values
        i += 1
    if i + 1 < len(argv) and argv[i] == "recon" and argv[i + 1] not in (*SUBCOMMANDS, "-h", "--help"):
        return [*argv[:i + 1], "train", *argv[i + 1:]]
    return argv
