"""``cryoconf baseline``: explicit-likelihood template matching (BioEM-style), the exact slow reference."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from cryoconf.cli.help_format import DefaultsHelpFormatter
from cryoconf.devices import parse_device
from cryoconf.errors import InputError

log = logging.getLogger(__name__)

DESCRIPTION = """\
Compare every particle of PARTICLES with every template of TEMPLATES by an
explicit likelihood, marginalised over a grid of orientations, shifts and
defoci, and report the posterior over the templates (their order parameter θ).

For each particle x (n pixels) and template c rendered at a grid point (pose,
shift, defocus, with the particle's CTF) the model is x = λ·c + μ + noise with
Gaussian noise of unknown σ. The contrast λ, offset μ (flat priors) and σ
(Jeffreys prior 1/σ) are integrated out in closed form:

  p(x | c) = Γ(n/2−1)·π^(1−n/2) / (2·Wλ·Wμ·ln(σmax/σmin))
             · (n·Σc² − (Σc)²)^(−1/2) · RSS^(−(n−2)/2)

with RSS the residual of the least-squares fit of x by λ·c + μ (with
--contrast positive, times the Student-t CDF of the fitted contrast). The grid
is averaged with log-sum-exp (uniform priors over orientations, shifts and
defoci); a uniform (or --prior) prior over the templates gives the posterior.
See docs/baseline.md.

Orientations: a near-uniform deterministic SO(3) grid; sizes 72·8^k (576,
4608, 36864 = BioEM in the cryoSBI comparison) use the Hopf-fibration/HEALPix
grid, other sizes a super-Fibonacci spiral. Cost grows linearly with
particles × templates × orientations × defoci × shifts. --refine-levels L
then refines each particle's --refine-cells best orientation cells L times
(8 children of half the spacing each time): an adaptive quadrature that
reaches a fine spacing where the likelihood is, rendered per particle.

Writes OUTDIR/posterior.npz (log_likelihood (P, M), posterior, log_evidence,
theta, theta_mean/std/map, map_template and the best pose of the MAP
template, refined ones included), posterior.csv (one row per particle), posteriors.png and config.json.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "baseline",
        help="explicit-likelihood template matching over a pose/shift/defocus grid (BioEM-style)",
        description=DESCRIPTION,
        formatter_class=DefaultsHelpFormatter,
    )
    p.add_argument("templates", metavar="TEMPLATES",
                   help="templates: an ensemble .npz (coords, θ), a multi-model PDB/mmCIF, or a topology with --trajectory")
    p.add_argument("particles", metavar="PARTICLES", help="particles: a RELION .star, a cryoSPARC .cs or an .mrcs stack")
    p.add_argument("-o", "--outdir", required=True, metavar="OUTDIR", help="output folder (created)")
    g = p.add_argument_group("templates")
    g.add_argument("--trajectory", default=None, help="MD trajectory (DCD/XTC/TRR…) for a topology TEMPLATES")
    g.add_argument("--frames", default=None, help="frames to use, e.g. 0:100:5 or 0,10,20 (default: all)")
    g.add_argument("--mode", choices=["ca", "ca+sc", "allatom"], default="ca",
                   help="pseudo-atoms read from PDB/mmCIF/trajectories")
    g.add_argument("--center", choices=["first", "each", "none"], default="first",
                   help="template centring, as in `cryoconf simulate`: first (one translation centring the first "
                        "template), each, none")
    g.add_argument("--prior", default=None, metavar="FILE",
                   help="prior weights over the templates (.npy or text, one per template; default: uniform)")
    g = p.add_argument_group("particles")
    g.add_argument("--datadir", default=None, help="folder of the image stacks named in the metadata")
    g.add_argument("--ind", default=None, help="subset of particles: a .pkl/.npy/.txt of row indices")
    g.add_argument("--apix", type=float, default=None, help="pixel size (Å/px) when PARTICLES is a bare .mrcs")
    g.add_argument("--ignore-poses", action="store_true",
                   help="never read shifts from the metadata (orientations are always marginalised; with "
                        "--shift-center metadata this is an error)")
    g = p.add_argument_group("grid (what is marginalised)")
    g.add_argument("--orientations", type=int, default=4608,
                   help="size of the SO(3) grid; 36864 as BioEM in the cryoSBI comparison")
    g.add_argument("--so3-grid", choices=["auto", "hopf", "fibonacci"], default="auto",
                   help="SO(3) grid design: auto = hopf for 72·8^k orientations, else fibonacci")
    g.add_argument("--refine-levels", type=int, default=0, metavar="L",
                   help="adaptive orientation refinement after the grid: L times, each particle's best cells are "
                        "replaced by 8 children of half the spacing (0: the grid alone; at high resolution the "
                        "grid is often too coarse for the likelihood, see docs/baseline.md)")
    g.add_argument("--refine-cells", type=int, default=16, metavar="K",
                   help="cells refined per particle and level (costs (1 + 8·L)·K extra orientations per particle)")
    g.add_argument("--shift-range", type=float, default=4.0, metavar="Å",
                   help="shifts in [−R, R]² Å around the centre (0: no shift search)")
    g.add_argument("--shift-step", type=float, default=2.0, metavar="Å", help="shift grid step (Å); sub-pixel allowed")
    g.add_argument("--shift-center", choices=["zero", "metadata"], default="zero",
                   help="centre of each particle's shift grid: the box centre or the metadata's shift")
    g.add_argument("--defocus-offsets", type=float, nargs="+", default=[-500.0, 0.0, 500.0], metavar="Å",
                   help="defocus values relative to each particle's CTF defocus (Å; U and V shifted together)")
    g.add_argument("--defocus-values", type=float, nargs="+", default=None, metavar="Å",
                   help="absolute defocus values (Å, underfocus positive) instead of --defocus-offsets; for "
                        "particles without CTF metadata")
    g.add_argument("--no-ctf", action="store_true", help="compare with plain projections (no CTF)")
    g = p.add_argument_group("likelihood")
    g.add_argument("--contrast", choices=["any", "positive"], default="any",
                   help="prior on the contrast λ: any sign, or positive (image and CTF-filtered template of the same "
                        "sign; not for inverted stacks)")
    g = p.add_argument_group("computation")
    g.add_argument("--shift-method", choices=["auto", "dft", "fft"], default="auto",
                   help="Σxc at every shift: dft (matmul, any shift) or fft (whole-pixel shifts, large grids)")
    g.add_argument("--projector", choices=["point", "pixel"], default="point",
                   help="Gaussian sampling of the projector, as in `cryoconf simulate`")
    g.add_argument("--batch-size", type=int, default=128, help="particles scored together (shares template rendering)")
    g.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    g.add_argument("--double", action="store_true", help="compute in float64 (default float32)")
    g.add_argument("--plot", type=int, default=6, metavar="K", help="posteriors of the first K particles in posteriors.png")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _read_prior(path: str, m: int) -> np.ndarray:
    if not os.path.exists(path):
        raise InputError(f"--prior {path}: not found; check the path")
    try:
        if path.endswith(".npy"):
            w = np.load(path)
        else:
            text = Path(path).read_text()
            w = np.loadtxt(path, delimiter="," if "," in text else None)
    except Exception as exc:  # noqa: BLE001 - any parse failure is the user's file
        raise InputError(f"--prior {path}: cannot read weights ({exc}); give one number per template") from None
    w = np.asarray(w, dtype=np.float64).reshape(-1)
    if w.size != m:
        raise InputError(f"--prior {path}: {w.size} weights for {m} templates; give one per template")
    if np.any(~np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise InputError(f"--prior {path}: weights must be finite, ≥ 0 and not all 0")
    with np.errstate(divide="ignore"):
        return np.log(w / w.sum())


def run(args) -> int:
    import torch

    from cryoconf.baseline import (
        BaselineConfig,
        LikelihoodPriors,
        TemplateSet,
        run_baseline,
        write_outputs,
    )
    from cryoconf.data import load_particles
    from cryoconf.structure import read_conformations

    if not os.path.exists(args.templates):
        raise InputError(f"TEMPLATES {args.templates}: not found; check the path")
    if not os.path.exists(args.particles):
        raise InputError(f"PARTICLES {args.particles}: not found; check the path")
    if args.ignore_poses and args.shift_center == "metadata":
        raise InputError("--ignore-poses and --shift-center metadata contradict each other; drop one")
    if args.plot < 0:
        raise InputError(f"--plot must be ≥ 0, got {args.plot}")
    device = parse_device(args.device)
    config = BaselineConfig(
        n_orientations=args.orientations, so3_method=args.so3_grid,
        shift_range_A=args.shift_range, shift_step_A=args.shift_step, shift_center=args.shift_center,
        defocus_offsets_A=None if args.defocus_values is not None else tuple(args.defocus_offsets),
        defocus_values_A=None if args.defocus_values is None else tuple(args.defocus_values),
        use_ctf=not args.no_ctf, priors=LikelihoodPriors(contrast=args.contrast), projector=args.projector,
        shift_method=args.shift_method, particle_batch=args.batch_size,
        refine_levels=args.refine_levels, refine_cells=args.refine_cells,
    ).validate()
    conf = read_conformations(args.templates, args.trajectory, frames=args.frames, mode=args.mode)
    dtype = torch.float64 if args.double else torch.float32
    templates = TemplateSet.from_conformations(conf, center=args.center)
    log_prior = None if args.prior is None else _read_prior(args.prior, len(templates))
    kw = {} if args.apix is None else {"apix": args.apix}
    dataset = load_particles(args.particles, datadir=args.datadir, ind=args.ind, **kw)
    if config.use_ctf and config.defocus_values_A is None and dataset.ctf is None:
        raise InputError(f"{args.particles}: the particles have no CTF parameters; give --defocus-values or --no-ctf")
    result = run_baseline(templates, dataset, config, log_prior=log_prior, device=device, dtype=dtype,
                          progress=not args.no_progress)
    inputs = {"templates": str(args.templates), "trajectory": args.trajectory, "frames": args.frames,
              "mode": args.mode, "center": args.center, "particles": str(args.particles), "datadir": args.datadir,
              "ind": args.ind, "prior": args.prior, "device": str(device), "dtype": str(dtype)}
    paths = write_outputs(result, Path(args.outdir), config, inputs=inputs, n_plot=args.plot)
    n = len(result.log_likelihood)
    log.info("scored %d particles × %d templates in %.1f s (%.3f s/particle); wrote %s", n, len(templates),
             result.seconds, result.seconds / max(n, 1), ", ".join(str(p) for p in paths.values()))
    return 0
