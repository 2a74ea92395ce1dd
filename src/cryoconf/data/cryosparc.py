"""cryoSPARC particle files (``.cs``, a numpy structured array) → :class:`ParticleMetadata`.

Fields used: ``blob/path`` (a leading ``>`` is dropped), ``blob/idx`` (0-based),
``blob/shape`` (box), ``blob/psize_A`` (Å/pixel); ``alignments3D/pose``
(rotation vector, radians) and ``alignments3D/shift`` (pixels):
A = rotvec_to_matrix(pose)ᵀ, t = −shift·apix; ``ctf/df1_A``, ``ctf/df2_A``,
``ctf/df_angle_rad``, ``ctf/accel_kv``, ``ctf/cs_mm`` (required),
``ctf/amp_contrast`` (default 0.1), ``ctf/phase_shift_rad`` (0), ``ctf/bfactor`` (0),
``ctf/scale`` (1); ``ctf/exp_group_id`` becomes the optics group.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import torch

from cryoconf.data.metadata import ParticleMetadata, check_finite
from cryoconf.errors import InputError
from cryoconf.imaging.rotations import rotvec_to_matrix

__all__ = ["read_cs_metadata"]


def _load(path: str) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise InputError(f"{path}: no such cryoSPARC .cs file; check the path") from None
    except Exception as exc:
        raise InputError(f"{path}: not a cryoSPARC .cs file (numpy structured array): {exc}") from None
    if not isinstance(arr, np.ndarray) or arr.dtype.names is None or arr.ndim != 1:
        raise InputError(f"{path}: not a cryoSPARC .cs file (expected a 1-D numpy structured array)")
    if len(arr) == 0:
        raise InputError(f"{path}: the .cs file has no particles")
    return arr


def read_cs_metadata(
    path,
    *,
    box: int | None = None,
    apix: float | None = None,
    datadir: str | None = None,
    require_poses: bool = False,
    require_ctf: bool = True,
) -> ParticleMetadata:
    """Read a cryoSPARC ``.cs`` particle file (see the module docstring for fields)."""
    path = os.fspath(path)
    arr = _load(path)
    names_set = set(arr.dtype.names)
    n = len(arr)

    def field(name, required_for=None):
        if name not in names_set:
            if required_for:
                raise InputError(f"{path}: missing field {name!r} ({required_for})")
            return None
        v = np.asarray(arr[name], dtype=np.float64)
        check_finite(v, f"field {name!r}", path)
        return v

    # box
    if "blob/shape" in names_set:
        shape = np.asarray(arr["blob/shape"]).reshape(n, -1).astype(np.int64)
        if (shape[:, 0] != shape[:, -1]).any() or np.unique(shape[:, 0]).size > 1:
            raise InputError(
                f"{path}: blob/shape differs between particles or is not square ({np.unique(shape, axis=0).tolist()}); "
                "use one square box size"
            )
        box_arr = shape[:, 0]
        if box is not None and int(box) != int(box_arr[0]):
            raise InputError(f"{path}: blob/shape says box {int(box_arr[0])} but -D/--box is {box}; drop -D or fix it")
    elif box is not None:
        box_arr = np.full(n, int(box))
    else:
        raise InputError(f"{path}: no blob/shape field, so the box size is unknown; give -D/--box")

    # pixel size
    if apix is not None:
        apix_arr = np.full(n, float(apix))
    else:
        apix_arr = field("blob/psize_A", "the pixel size; or give --apix")

    # image names
    if "blob/path" in names_set and "blob/idx" in names_set:
        paths = np.char.decode(np.asarray(arr["blob/path"]).astype("S"), "utf-8") if arr["blob/path"].dtype.kind == "S" else np.asarray(arr["blob/path"]).astype(str)
        upaths, inv = np.unique(paths, return_inverse=True)
        upaths = np.array([p.lstrip(">") for p in upaths], dtype=object)
        idx = np.asarray(arr["blob/idx"]).astype(np.int64) + 1
        names = np.array([f"{k}@{p}" for k, p in zip(idx.tolist(), upaths[inv.reshape(-1)].tolist())], dtype=object)
    else:
        names = np.full(n, "", dtype=object)

    # pose
    rotations = shifts = None
    if "alignments3D/pose" in names_set:
        pose = field("alignments3D/pose")
        rotations = rotvec_to_matrix(torch.as_tensor(pose.reshape(n, 3))).transpose(-1, -2).numpy()
        sh = field("alignments3D/shift")
        shifts = np.zeros((n, 2)) if sh is None else -sh.reshape(n, 2) * apix_arr[:, None] + 0.0
    elif require_poses:
        has2d = any(f.startswith("alignments2D/") for f in names_set)
        raise InputError(
            f"{path}: 3D poses requested but the file has no alignments3D/pose"
            + (" (only alignments2D: 2D classification)" if has2d else "")
            + "; export the particles of a 3D refinement job"
        )

    # CTF
    has_ctf = "ctf/df1_A" in names_set
    if not has_ctf and require_ctf:
        raise InputError(f"{path}: missing field 'ctf/df1_A' (defocus); export particles with CTF estimates")

    def opt(name, default):
        v = field(name)
        return np.full(n, float(default)) if v is None else v

    if has_ctf:
        du = field("ctf/df1_A")
        dv = opt("ctf/df2_A", np.nan)
        dv = np.where(np.isnan(dv), du, dv)
        volt = field("ctf/accel_kv", "the voltage")
        cs = field("ctf/cs_mm", "the spherical aberration")
    else:
        du = dv = np.zeros(n)
        volt, cs = np.full(n, 300.0), np.full(n, 2.7)
    groups = np.asarray(arr["ctf/exp_group_id"]).astype(np.int64) + 1 if "ctf/exp_group_id" in names_set else np.ones(n, np.int64)
    scalar = {k: np.asarray(arr[k]) for k in arr.dtype.names if arr.dtype[k].shape == () and arr.dtype[k].kind in "iuf"}
    meta = ParticleMetadata(
        image_names=names,
        rotations=rotations,
        shifts_A=shifts,
        defocus_u_A=du,
        defocus_v_A=dv,
        defocus_angle_deg=np.rad2deg(opt("ctf/df_angle_rad", 0.0)),
        voltage_kV=volt,
        cs_mm=cs,
        amplitude_contrast=opt("ctf/amp_contrast", 0.1),
        phase_shift_deg=np.rad2deg(opt("ctf/phase_shift_rad", 0.0)),
        bfactor_A2=opt("ctf/bfactor", 0.0),
        ctf_scale=opt("ctf/scale", 1.0),
        apix_A=apix_arr,
        box=box_arr,
        optics_group=groups,
        source=path,
        extra=pd.DataFrame(scalar),
        has_ctf=has_ctf,
        base_dir=os.path.dirname(os.path.abspath(path)),
    )
    meta.validate()
    return meta
