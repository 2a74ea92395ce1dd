"""``cryoconf demo -o OUTDIR``: the main job on built-in example data.

Simulates a small ADK dataset from the closed→open DIMS trajectory that ships
in the PyPI package ``MDAnalysisTests`` (``pip install cryoconf[examples]``)
and writes the STAR file, the stacks, the ground truth and a montage of clean
and noisy particles. Later stages of the pipeline extend this demo.
"""

from __future__ import annotations


from cryoconf.cli.help_format import DefaultsHelpFormatter
from cryoconf.errors import InputError


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
    p.add_argument("-n", "--n-particles", type=int, default=512, help="particles to simulate")
    p.add_argument("--box", type=int, default=64, help="box size (px)")
    p.add_argument("--apix", type=float, default=2.0, help="pixel size (Å/px)")
    p.add_argument("--snr", type=float, default=0.1, help="signal-to-noise ratio (box definition)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.set_defaults(func=run)


def run(args) -> int:
    from cryoconf.cli.main import main

    psf, dcd = adk_example_files()
    print(f"ADK closed→open trajectory: {psf} + {dcd}")
    return main([
        "simulate", psf, dcd, "-o", args.outdir, "-n", str(args.n_particles), "--box", str(args.box),
        "--apix", str(args.apix), "--snr", str(args.snr), "--defocus", "8000", "20000",
        "--astigmatism", "0", "500", "--shift", "4", "--seed", str(args.seed), "--montage", "16",
    ])
