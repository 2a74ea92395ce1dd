"""``cryoconf convert``: particle metadata between RELION, cryoSPARC and cryoDRGN formats."""

from __future__ import annotations

import logging
import os
from dataclasses import replace

import numpy as np

from cryoconf.data import read_metadata, write_cryodrgn_pkl, write_relion31_star
from cryoconf.data.indices import load_indices
from cryoconf.data.stack import parse_image_name, resolve_stack_path
from cryoconf.cli.help_format import DefaultsHelpFormatter
from cryoconf.errors import InputError

log = logging.getLogger(__name__)

DESCRIPTION = """\
Convert particle metadata. INPUT is a RELION .star (3.0, 3.1 or 5), a cryoSPARC
.cs, a cryoDRGN pose .pkl (with --input-ctf) or an image stack (.mrcs/.mrc/.txt,
with --input-poses/--input-ctf). Outputs: cryoDRGN --poses pose.pkl
(rotation matrices A and origin/D), --ctf ctf.pkl ((N,9): D, Å/px, defocus U/V Å,
astigmatism angle °, kV, Cs mm, amplitude contrast, phase shift °) and/or a
RELION 3.1 --star (origins in Å; image paths rewritten relative to the new file).
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "convert",
        help="convert particle metadata (RELION .star, cryoSPARC .cs, cryoDRGN .pkl)",
        description=DESCRIPTION,
        formatter_class=DefaultsHelpFormatter,
    )
    p.add_argument("input", metavar="INPUT", help="metadata file: .star, .cs, pose .pkl, or .mrcs/.mrc/.txt stack")
    p.add_argument("--poses", metavar="POSE.pkl", help="write cryoDRGN poses (requires 3D poses in INPUT)")
    p.add_argument("--ctf", metavar="CTF.pkl", help="write the cryoDRGN CTF table")
    p.add_argument("--star", metavar="OUT.star", help="write a RELION 3.1 particle STAR file")
    p.add_argument("-D", "--box", type=int, default=None,
                   help="box size in pixels, for files that do not state it (RELION 3.0 without its stack); default: from the file")
    p.add_argument("--apix", type=float, default=None,
                   help="pixel size in Å/pixel; overrides the file's value (default: from the file)")
    p.add_argument("--datadir", default=None,
                   help="folder holding the image stacks (tried as DATADIR/path, then DATADIR/basename); "
                   "default: paths relative to INPUT's folder")
    p.add_argument("--ind", default=None, metavar="IND", help="keep only these particles: .pkl/.npy/.txt of 0-based indices")
    p.add_argument("--input-poses", default=None, metavar="POSE.pkl", help="cryoDRGN pose.pkl to read with INPUT")
    p.add_argument("--input-ctf", default=None, metavar="CTF.pkl", help="cryoDRGN ctf.pkl to read with INPUT")
    p.add_argument("--voltage", type=float, default=None, help="voltage in kV when the file has none (no default)")
    p.add_argument("--cs", type=float, default=None, help="spherical aberration in mm when the file has none (no default)")
    p.add_argument("-w", "--amp-contrast", type=float, default=None,
                   help="amplitude contrast when the file has none (default 0.1)")
    p.set_defaults(func=run)


def _relocate_names(names, base_dir, datadir, new_dir) -> np.ndarray:
    """Rewrite "k@path" so path resolves from ``new_dir``; names whose stack is not found stay as they are."""
    cache: dict[str, str] = {}
    out = np.empty(len(names), dtype=object)
    for i, name in enumerate(names):
        name = str(name)
        if not name:
            out[i] = name
            continue
        k, path = parse_image_name(name)
        if path not in cache:
            try:
                found = resolve_stack_path(path, datadir, base_dir)
                cache[path] = os.path.relpath(os.path.abspath(found), new_dir)
            except InputError:
                cache[path] = path
        out[i] = f"{k:06d}@{cache[path]}"
    return out


def run(args) -> int:
    if not (args.poses or args.ctf or args.star):
        raise InputError("nothing to write: give --poses, --ctf and/or --star")
    meta = read_metadata(
        args.input,
        box=args.box,
        apix=args.apix,
        datadir=args.datadir,
        poses=args.input_poses,
        ctf=args.input_ctf,
        require_poses=bool(args.poses),
        require_ctf=bool(args.ctf),
        voltage_kV=args.voltage,
        cs_mm=args.cs,
        amplitude_contrast=args.amp_contrast,
    )
    if args.ind is not None:
        meta = meta.subset(load_indices(args.ind, len(meta)))
    if args.poses or args.ctf:
        write_cryodrgn_pkl(meta, poses_path=args.poses, ctf_path=args.ctf)
        for p in (args.poses, args.ctf):
            if p:
                log.info("wrote %s (%d particles)", p, len(meta))
    if args.star:
        new_dir = os.path.dirname(os.path.abspath(args.star))
        if meta.base_dir is not None:
            meta = replace(meta, image_names=_relocate_names(meta.image_names, meta.base_dir, args.datadir, new_dir))
        write_relion31_star(args.star, meta)
        log.info("wrote %s (%d particles)", args.star, len(meta))
    return 0
