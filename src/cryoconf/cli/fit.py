"""``cryoconf fit``: refine an approximate structure's RBF model (Cryofold) against particles with known poses."""

from __future__ import annotations

from cryoconf.cli.help_format import DefaultsHelpFormatter

DESCRIPTION = """\
Homogeneous fit of Cryofold's RBF model (Zhong et al.): two Gaussian RBFs per residue
(Cα and side-chain centroid; --mode ca keeps one per residue) with learned centres,
a learned σ and a learned global amplitude a0, fitted by SGD to particles with known
poses and CTF, held by harmonic Cα–Cα bonds (3.8 Å, k = 0.1/Å²) and one-sided
side-chain bounds. By default (--backbone-site centroid) each backbone RBF sits at
its backbone's electron centroid (N, Cα, C, O of the all-atom start), where an
all-atom density puts it, the bonds keep the start's spacing, and the Cα of
fitted.pdb are mapped back from the fitted sites (the residue's Cα offset turned with
its chain neighbourhood); --backbone-site ca is the paper's RBF at the Cα.
A warm-up (--warmup epochs) refines σ and a0 and then puts the centres back to the
start. A collective stage follows (--mode-epochs; --modes 20 by default, 0 skips it):
the start moves only along its lowest ANM normal modes (normal-mode flexible fitting),
which carries whole domains into their density before residues are free to settle.
Then the centres are fitted freely for --epochs.

PARTICLES: a RELION .star, a cryoSPARC .cs, or an .mrcs with cryoDRGN --poses/--ctf.
The starting structure must be in the frame of the poses (--center as in recon).

Outputs in RUN: fitted.pdb (Cα and side-chain RBFs; B-factor = displacement from the
start, Å), rbf_centres.pdb (the fitted RBF centres, with centroid backbone sites),
displacements.csv (per residue), fit.json (σ, a0, summary; with --reference the Cα
RMSD and % within 3 Å before and after), loss.csv/loss.png, config.yaml, run.log and
checkpoint.N.pt (`--load latest` resumes).

Ablations: --mode ca (no side-chain RBFs), --bond-k 0 (no bonds), --image-weight 0.
"""

# flag → (FitConfig field, type, help)
_SETTINGS = [
    ("--sigma", "sigma", str, "shared σ or one per residue_type"),
    ("--backbone-site", "backbone_site", str,
     "backbone RBF at the backbone's electron centroid (Cα mapped back) or at the ca (the paper)"),
    ("--sigma-init", "sigma_init_A", float, "initial σ (Å)"),
    ("--bond-k", "bond_k", float, "Cα–Cα bond constant per Å² (0: no bonds)"),
    ("--sidechain-k", "sidechain_k", float, "side-chain bound constant per Å² (0: none)"),
    ("--restraint-weight", "restraint_weight", str, "restraints vs image: auto (2/effective pixels) or a number"),
    ("--image-weight", "image_weight", float, "weight of the image loss (0: restraints only)"),
    ("--downsample", "downsample_box", int, "working box (Fourier crop)"),
    ("--lowpass", "lowpass_A", float, "soft low-pass (Å) of data and prediction"),
    ("--lowpass-start", "lowpass_start_A", float,
     "coarse to fine: the low-pass starts here (Å) and sharpens to --lowpass (or Nyquist) over the first "
     "--lowpass-anneal of the fit epochs"),
    ("--lowpass-anneal", "lowpass_anneal_frac", float, "fraction of the fit epochs the coarse-to-fine low-pass takes"),
    ("--mask-radius", "mask_radius_frac", float, "circular mask radius as a fraction of box/2"),
    ("--scale", "scale", str, "learned (global a0 and offset) | closed_form (per image)"),
    ("--warmup", "warmup_epochs", int, "warm-up epochs (σ, a0; then the centres are reset)"),
    ("--modes", "modes", int,
     "collective stage: first fit only the amplitudes of the start's N lowest ANM modes (0: off)"),
    ("--mode-epochs", "mode_epochs", int, "epochs of the collective stage (with --modes)"),
    ("--lr-modes", "lr_modes_A", float, "learning rate of the mode amplitudes (Å RMS per step)"),
    ("--epochs", "epochs", int, "epochs after the warm-up (and the mode stage)"),
    ("-b", "batch_size", int, "batch size"),
    ("--lr", "lr_centres_A", float, "learning rate of the centres (Å per step, Adam)"),
    ("--lr-sigma", "lr_sigma", float, "learning rate of log σ"),
    ("--seed", "seed", int, "random seed"),
    ("--checkpoint-every", "checkpoint_every", int, "epochs between checkpoints"),
]


def register(subparsers) -> None:
    from cryoconf.cli.recon import add_particle_and_structure_arguments, add_run_arguments
    from cryoconf.fit.config import FitConfig

    defaults = FitConfig()
    p = subparsers.add_parser("fit", help="fit an RBF atomic model to particles with known poses (Cryofold)",
                              description=DESCRIPTION, formatter_class=DefaultsHelpFormatter)
    p.add_argument("particles", metavar="PARTICLES", help=".star, .cs or .mrcs")
    p.add_argument("--structure", required=True, help="starting structure (PDB/mmCIF), all-atom for side-chain RBFs")
    p.add_argument("-o", "--output", required=True, metavar="RUN", help="run directory")
    p.add_argument("--reference", default=None, help="known structure (same residues) to report Cα errors against")
    add_particle_and_structure_arguments(p, default_mode="ca+sc",
                                         mode_help="RBFs per residue: Cα + side chain, or ca (the ablation)")
    g = p.add_argument_group("model and optimisation (defaults from FitConfig)")
    for flag, name, typ, text in _SETTINGS:
        g.add_argument(flag, dest=name, type=typ, default=None, help=f"{text} (default: {getattr(defaults, name)})")
    add_run_arguments(p)
    p.set_defaults(func=run)


def build_config(args):
    """FitConfig from the defaults, the checkpoint when resuming, and the flags."""
    import torch

    from cryoconf.errors import InputError
    from cryoconf.fit.config import FitConfig, stored_settings
    from cryoconf.rundir import resolve_checkpoint

    settings: dict = {}
    if args.load is not None:
        settings.update(stored_settings(torch.load(resolve_checkpoint(args.load, args.output), map_location="cpu",
                                                   weights_only=False)["config"]))
    for _, name, *_ in _SETTINGS:
        value = getattr(args, name)
        if value is not None:
            settings[name] = value
    rw = settings.get("restraint_weight")
    if isinstance(rw, str) and rw != "auto":
        try:
            settings["restraint_weight"] = float(rw)
        except ValueError as exc:
            raise InputError(f"--restraint-weight must be 'auto' or a number, got {rw!r}") from exc
    return FitConfig.from_dict(settings)


def run(args) -> int:
    import torch

    from cryoconf.cli.recon import read_particles_and_structure
    from cryoconf.fit import fit_structure
    from cryoconf.recon import base_in_pose_frame
    from cryoconf.structure.readers import read_structure

    if args.threads:
        torch.set_num_threads(args.threads)
    config = build_config(args)
    particles, start = read_particles_and_structure(args, config.downsample_box)
    reference = None
    if args.reference:
        reference = read_structure(args.reference, mode=args.mode, selection=args.selection)
        reference = base_in_pose_frame(reference, args.center, particles.original_box, particles.original_apix_A)
    inputs = {k: getattr(args, k) for k in ("particles", "structure", "reference", "datadir", "poses", "ctf", "ind",
                                             "mode", "center", "selection")}
    offsets = None
    if config.backbone_site == "centroid":
        from cryoconf.recon.geometry import backbone_atoms
        from cryoconf.dynamics.backmapping import backbone_centroid_offsets

        allatom = read_structure(args.structure, mode="allatom", selection=args.selection)
        offsets = backbone_centroid_offsets(start, allatom, backbone_atoms(start), path=args.structure)
    result = fit_structure(config, particles, start, args.output, load=args.load, device=args.device,
                           progress=not args.no_progress, inputs=inputs, reference=reference,
                           backbone_offsets_A=offsets)
    s = result.summary
    extra = (f"; Cα RMSD to the reference {s['ca_rmsd_start_A']:.2f} → {s['ca_rmsd_fit_A']:.2f} Å, "
             f"{s['pct_within_3A_fit']:.1f} % within 3 Å" if "ca_rmsd_fit_A" in s else "")
    print(f"fitted to epoch {result.epoch}: σ {s['mean_sigma_A']:.2f} Å, RMS Cα displacement "
          f"{s['rms_ca_displacement_A']:.2f} Å{extra}; run directory {result.run_dir}")
    return 0
