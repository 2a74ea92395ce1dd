"""``cryoconf simulate STRUCTURE [TRAJECTORY] -o OUTDIR``: a synthetic dataset with ground truth."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from cryoconf.cli.help_format import DefaultsHelpFormatter
from cryoconf.devices import parse_device
from cryoconf.errors import InputError


def _positive_or_inf(text: str) -> float:
    value = float(text)
    if not (value > 0 or math.isinf(value)):
        raise argparse.ArgumentTypeError(f"must be positive or inf, got {text}")
    return value


def add_structure_arguments(p: argparse.ArgumentParser) -> None:
    """Options that turn an atomic model or trajectory into pseudo-atoms."""
    g = p.add_argument_group("structure")
    g.add_argument("--frames", default=None,
                   help="frames of a trajectory/multi-model file: 'start:stop:step' or '0,5,9' (default: all)")
    g.add_argument("--selection", default=None, help="MDAnalysis selection, e.g. 'protein and segid A'")
    g.add_argument("--mode", choices=["ca", "ca+sc", "allatom"], default="ca",
                   help="pseudo-atoms: one per residue at Cα (ca), plus side-chain centroids (ca+sc), "
                        "or every heavy atom (allatom) (default: ca)")
    g.add_argument("--nucleic", action="store_true", help="also keep nucleic acids, one pseudo-atom at C1′")
    g.add_argument("--sigma", default="residue",
                   help="Gaussian width: 'residue' (per-residue-type table) or a number in Å (default: residue)")
    g.add_argument("--drop-missing-ca", action="store_true",
                   help="drop residues without a Cα (with a warning) instead of stopping")


def read_structure_input(args) -> "Conformations":  # noqa: F821
    from cryoconf.structure import read_conformations

    sigma: str | float = args.sigma
    if sigma != "residue":
        try:
            sigma = float(sigma)
        except ValueError:
            raise InputError(f"--sigma must be 'residue' or a width in Å, got {args.sigma!r}") from None
    return read_conformations(
        args.structure, args.trajectory, frames=args.frames, selection=args.selection, mode=args.mode,
        nucleic=args.nucleic, sigma=sigma, missing_ca="drop" if args.drop_missing_ca else "error",
    )


def _weights(args, n_conformations: int) -> list[float] | None:
    from cryoconf.simulation import gaussian_frame_weights

    if args.weights and args.frame_gaussian:
        raise InputError("give either --weights or --frame-gaussian, not both")
    if args.frame_gaussian:
        try:
            mean, std = (float(v) for v in args.frame_gaussian.split(","))
        except ValueError:
            raise InputError(f"--frame-gaussian takes MEAN,STD (frame indices), got {args.frame_gaussian!r}") from None
        return gaussian_frame_weights(n_conformations, mean, std)
    if args.weights:
        path = Path(args.weights)
        if path.suffix in (".npy", ".txt", ".csv") or path.exists():
            if not path.exists():
                raise InputError(f"--weights file {path} does not exist")
            values = np.load(path) if path.suffix == ".npy" else np.loadtxt(path, delimiter="," if path.suffix == ".csv" else None)
        else:
            try:
                values = [float(v) for v in args.weights.split(",")]
            except ValueError:
                raise InputError(f"--weights takes a comma list or a .npy/.txt file, got {args.weights!r}") from None
        return [float(v) for v in np.ravel(values)]
    return None


def register(sub) -> None:
    p = sub.add_parser(
        "simulate",
        help="simulate particle images with ground truth",
        description="Render particles from a structure, a trajectory or an ensemble file: conformations "
        "drawn uniformly or with weights, uniform SO(3) poses, shifts, astigmatic CTFs and Gaussian noise. "
        "Writes OUTDIR/particles.mrcs, OUTDIR/particles.star (RELION 3.1), OUTDIR/truth.npz, "
        "config.yaml and run.log.",
        formatter_class=DefaultsHelpFormatter,
    )
    p.add_argument("structure", help="PDB/mmCIF, a topology (PSF/GRO/PDB) with TRAJECTORY, or an ensemble .npz")
    p.add_argument("trajectory", nargs="?", default=None, help="trajectory (DCD/XTC/TRR…) for the topology")
    p.add_argument("-o", "--outdir", required=True, help="output directory")
    add_structure_arguments(p)
    g = p.add_argument_group("particles")
    g.add_argument("-n", "--n-particles", type=int, default=1000, help="number of particles")
    g.add_argument("--weights", default=None,
                   help="conformation weights: comma list or .npy/.txt file, one per conformation (default: uniform)")
    g.add_argument("--frame-gaussian", default=None, metavar="MEAN,STD",
                   help="weights ∝ a Gaussian over conformation index")
    g.add_argument("--from-star", default=None, metavar="STAR",
                   help="take poses, shifts, CTF and optics from this STAR and render its rows in order "
                        "(box and pixel size from its optics)")
    g.add_argument("--box", type=int, default=128, help="box size (px)")
    g.add_argument("--apix", type=float, default=1.5, help="pixel size (Å/px)")
    g.add_argument("--shift", type=float, default=0.0, help="shifts uniform in [−S, S]² (Å)")
    g.add_argument("--seed", type=int, default=0, help="random seed")
    g = p.add_argument_group("microscope")
    g.add_argument("--defocus", type=float, nargs=2, default=[10000.0, 25000.0], metavar=("MIN", "MAX"),
                   help="mean defocus range (Å, positive = underfocus)")
    g.add_argument("--astigmatism", type=float, nargs=2, default=[0.0, 0.0], metavar=("MIN", "MAX"),
                   help="|DefocusU − DefocusV| range (Å); angle uniform in [0, 180)°")
    g.add_argument("--bfactor", type=float, default=0.0, help="CTF B-factor envelope (Å²)")
    g.add_argument("--voltage", type=float, default=300.0, help="acceleration voltage (kV)")
    g.add_argument("--cs", type=float, default=2.7, help="spherical aberration (mm)")
    g.add_argument("--amp-contrast", type=float, default=0.1, help="amplitude contrast")
    g.add_argument("--phase-shift", type=float, default=0.0, help="phase shift (degrees)")
    g = p.add_argument_group("noise and rendering")
    g.add_argument("--snr", type=_positive_or_inf, nargs="+", default=[0.1], metavar="SNR",
                   help="signal-to-noise ratio, or MIN MAX drawn log-uniformly; inf = noise-free")
    g.add_argument("--snr-definition", choices=["box", "mask"], default="box",
                   help="box: var(clean image over the box)/σ²; mask: var inside a circle of --snr-mask-radius")
    g.add_argument("--snr-mask-radius", type=float, default=None, help="radius for --snr-definition mask (px; default 0.4·box)")
    g.add_argument("--pad", type=int, default=2, help="padding factor before the CTF (1 = none)")
    g.add_argument("--projector", choices=["point", "pixel"], default="point",
                   help="point-sampled or pixel-integrated (erf) Gaussian projections")
    g.add_argument("--center", choices=["first", "each", "none"], default=None,
                   help="first: translate all conformations so the first is centred (default); each: centre "
                        "each; none: coordinates as given (default with --from-star)")
    g.add_argument("--save-clean", action="store_true", help="also write the noise-free stack particles_clean.mrcs")
    g.add_argument("--montage", type=int, default=0, metavar="K", help="write montage.png of the first K particles")
    g.add_argument("--batch-size", type=int, default=256, help="particles rendered per chunk")
    g.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    from cryoconf.data import read_metadata
    from cryoconf.simulation import SimulationConfig, sample_truth, simulate_dataset, truth_from_metadata

    if len(args.snr) > 2:
        raise InputError(f"--snr takes one value or MIN MAX, got {len(args.snr)} values")
    device = parse_device(args.device)  # before any reading
    conformations = read_structure_input(args)
    config = SimulationConfig(
        n_particles=args.n_particles, box=args.box, apix_A=args.apix, seed=args.seed,
        weights=_weights(args, len(conformations)),
        defocus_A=tuple(args.defocus), astigmatism_A=tuple(args.astigmatism), bfactor_A2=args.bfactor,
        voltage_kV=args.voltage, cs_mm=args.cs, amplitude_contrast=args.amp_contrast,
        phase_shift_deg=args.phase_shift, shift_A=args.shift,
        snr=(args.snr[0], args.snr[-1]), snr_definition=args.snr_definition,
        snr_mask_radius_px=args.snr_mask_radius, pad_factor=args.pad, projector=args.projector,
        center=args.center or ("none" if args.from_star else "first"),
        batch_size=args.batch_size, save_clean=args.save_clean or args.montage > 0,
    )
    if args.from_star:
        metadata = read_metadata(args.from_star)
        boxes, apixes = np.unique(metadata.box), np.unique(metadata.apix_A)
        if len(boxes) != 1 or len(apixes) != 1:
            raise InputError(f"{args.from_star}: --from-star needs one box and pixel size, found boxes "
                             f"{boxes.tolist()} and pixel sizes {apixes.tolist()} Å")
        config.box, config.apix_A, config.n_particles = int(boxes[0]), float(apixes[0]), len(metadata)
        truth = truth_from_metadata(metadata, config.validate(), len(conformations))
    else:
        truth = sample_truth(config.validate(), len(conformations))
    inputs = {"structure": str(args.structure), "trajectory": args.trajectory, "frames": args.frames,
              "selection": args.selection, "mode": args.mode, "sigma": args.sigma, "from_star": args.from_star}
    result = simulate_dataset(conformations, truth, config, args.outdir, inputs=inputs,
                              progress=not args.no_progress, device=device)
    if args.montage > 0:
        write_montage(result, args.montage)
    print(f"wrote {result.star_path}, {result.stack_path} and {result.truth_path}")
    return 0


def write_montage(result, k: int) -> Path:
    import mrcfile

    from cryoconf.plots import particle_montage

    with mrcfile.mmap(result.stack_path, permissive=True) as noisy, mrcfile.mmap(result.clean_stack_path, permissive=True) as clean:
        k = min(k, noisy.data.shape[0])
        frames = np.load(result.truth_path)["frame_index"][:k]
        labels = [f"frame {f}, SNR {s:.3g}" for f, s in zip(frames, result.truth.snr[:k])]
        return particle_montage(np.array(noisy.data[:k]), result.outdir / "montage.png",
                                clean=np.array(clean.data[:k]), labels=labels)
