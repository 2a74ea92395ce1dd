"""``read_metadata``: one entry point for every supported metadata format.

Dispatch by extension: ``.star`` (RELION 3.0/3.1/5), ``.cs`` (cryoSPARC),
``.pkl`` (a cryoDRGN pose.pkl, with ``ctf=`` a ctf.pkl), ``.mrcs``/``.mrc``/``.txt``
(images only, optionally with cryoDRGN ``poses=``/``ctf=`` pkl files in image
order). With ``poses``/``ctf`` given for a ``.star``/``.cs``, those pkl files
replace the file's poses/CTF (same particle order).
"""

from __future__ import annotations

import os
from dataclasses import replace

import numpy as np

from cryoconf.data.cryodrgn import read_cryodrgn_pkl
from cryoconf.data.cryosparc import read_cs_metadata
from cryoconf.data.metadata import CTF_FIELDS, ParticleMetadata
from cryoconf.data.relion import read_star_metadata
from cryoconf.data.stack import STACK_EXTENSIONS, ImageStack
from cryoconf.errors import InputError

__all__ = ["read_metadata", "METADATA_EXTENSIONS"]

METADATA_EXTENSIONS = (".star", ".cs", ".pkl", ".txt") + STACK_EXTENSIONS


def _from_stack(path, *, box, apix, datadir, poses, ctf) -> ParticleMetadata:
    stack = ImageStack.from_file(path, datadir=datadir)
    if box is not None and int(box) != stack.box:
        raise InputError(f"{path}: the stack holds {stack.box}-pixel images but -D/--box is {box}; fix -D")
    base_dir = os.path.dirname(os.path.abspath(path))
    if poses is not None or ctf is not None:
        if ctf is None and apix is None and stack.apix_A is None:
            raise InputError(f"{path}: the pixel size is unknown (no ctf.pkl, no voxel size in the header); give --apix")
        meta = read_cryodrgn_pkl(
            poses, ctf, box=stack.box, apix=apix if (apix is not None or ctf is not None) else stack.apix_A,
            image_names=stack.names,
        )
        return replace(meta, base_dir=base_dir, source=os.fspath(path))
    a = apix if apix is not None else stack.apix_A
    if a is None:
        raise InputError(f"{path}: the stack header has no pixel size; give --apix (Å/pixel)")
    n = len(stack)
    z = np.zeros(n)
    return ParticleMetadata(
        image_names=stack.names, rotations=None, shifts_A=None,
        defocus_u_A=z, defocus_v_A=z, defocus_angle_deg=z, voltage_kV=np.full(n, 300.0), cs_mm=np.full(n, 2.7),
        amplitude_contrast=np.full(n, 0.1), phase_shift_deg=z, bfactor_A2=z, ctf_scale=np.ones(n),
        apix_A=np.full(n, float(a)), box=np.full(n, stack.box), optics_group=np.ones(n, dtype=np.int64),
        source=os.fspath(path), has_ctf=False, base_dir=base_dir,
    )


def read_metadata(
    path,
    *,
    box: int | None = None,
    apix: float | None = None,
    datadir: str | None = None,
    poses=None,
    ctf=None,
    require_poses: bool = False,
    require_ctf: bool = False,
    voltage_kV: float | None = None,
    cs_mm: float | None = None,
    amplitude_contrast: float | None = None,
) -> ParticleMetadata:
    """Per-particle metadata from any supported file (see the module docstring).

    ``box`` (pixels) and ``apix`` (Å) fill in what a file does not state
    (``apix`` overrides a file's pixel size); ``datadir`` is where stacks are
    looked for. ``require_poses``/``require_ctf`` turn absent 3D poses/CTF into
    an InputError. STAR/.cs files must contain a defocus unless ``ctf`` is given.
    """
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if not os.path.exists(path):
        raise InputError(f"{path}: no such file")
    if ext == ".pkl":
        meta = read_cryodrgn_pkl(path, ctf, box=box, apix=apix)
    elif ext in (".txt",) + STACK_EXTENSIONS:
        meta = _from_stack(path, box=box, apix=apix, datadir=datadir, poses=poses, ctf=ctf)
        poses = ctf = None
    elif ext in (".star", ".cs"):
        kw = dict(box=box, apix=apix, datadir=datadir, require_poses=require_poses and poses is None, require_ctf=ctf is None)
        if ext == ".star":
            meta = read_star_metadata(path, voltage_kV=voltage_kV, cs_mm=cs_mm, amplitude_contrast=amplitude_contrast, **kw)
        else:
            meta = read_cs_metadata(path, **kw)
        if poses is not None or ctf is not None:
            pk = read_cryodrgn_pkl(
                poses, ctf, box=int(meta.box[0]) if ctf is None else None,
                apix=float(meta.apix_A[0]) if ctf is None else apix, n=len(meta),
            )
            changes = {}
            if poses is not None:
                changes.update(rotations=pk.rotations, shifts_A=pk.shifts_A)
            if ctf is not None:
                if (pk.box != meta.box).any():
                    raise InputError(f"{ctf}: box {pk.box[0]} differs from {meta.box[0]} in {path}")
                changes.update({f: getattr(pk, f) for f in CTF_FIELDS}, apix_A=pk.apix_A, has_ctf=True)
            meta = replace(meta, **changes)
    else:
        raise InputError(
            f"{path}: unknown metadata file type {ext!r}; supported: .star (RELION), .cs (cryoSPARC), "
            ".pkl (cryoDRGN pose.pkl with a ctf.pkl), .mrcs/.mrc/.txt (image stacks)"
        )
    if require_poses and meta.rotations is None:
        raise InputError(f"{path}: 3D poses requested but the file has none; give --poses pose.pkl")
    if require_ctf and not meta.has_ctf:
        raise InputError(f"{path}: CTF parameters requested but the file has none; give --ctf ctf.pkl")
    return meta
