"""cryoDRGN ``pose.pkl`` / ``ctf.pkl`` ↔ :class:`ParticleMetadata`.

``pose.pkl``: a pickled tuple ``(rot (N,3,3), trans (N,2))`` with ``rot`` the pose
matrices A and ``trans`` = origin / D (origin in pixels, no sign flip), so
t (Å) = −trans·D·apix. A bare (N,3,3) array means rotations without shifts.

``ctf.pkl``: a pickled (N, 9) float32 array
``[D, Apix, DefocusU Å, DefocusV Å, DefocusAngle °, kV, Cs mm, amplitude contrast, phase shift °]``.
"""

from __future__ import annotations

import os
import pickle

import numpy as np

from cryoconf.data.metadata import ParticleMetadata, check_finite
from cryoconf.errors import InputError
from cryoconf.atomic_write import atomic_path

__all__ = ["read_cryodrgn_pkl", "write_cryodrgn_pkl", "read_pickle"]


def read_pickle(path) -> object:
    path = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            return pickle.load(fh)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except Exception as exc:
        raise InputError(f"{path}: not a readable pickle ({exc})") from None


def _read_ctf(path: str) -> np.ndarray:
    ctf = np.asarray(read_pickle(path))
    if ctf.ndim != 2 or ctf.shape[1] != 9 or ctf.dtype.kind not in "fiu":
        raise InputError(
            f"{path}: expected a cryoDRGN ctf.pkl, an (N, 9) array [D, Apix, DefocusU, DefocusV, "
            f"DefocusAngle, kV, Cs, w, phase shift]; got shape {ctf.shape} dtype {ctf.dtype}"
        )
    ctf = ctf.astype(np.float64)
    check_finite(ctf, "CTF row", path)
    return ctf


def _read_poses(path: str) -> tuple[np.ndarray, np.ndarray | None]:
    obj = read_pickle(path)
    if isinstance(obj, (tuple, list)) and len(obj) == 2:
        rot, trans = np.asarray(obj[0], dtype=np.float64), np.asarray(obj[1], dtype=np.float64)
    elif isinstance(obj, (tuple, list)) and len(obj) == 1:
        rot, trans = np.asarray(obj[0], dtype=np.float64), None
    else:
        rot, trans = np.asarray(obj, dtype=np.float64), None
    if rot.ndim != 3 or rot.shape[1:] != (3, 3):
        raise InputError(f"{path}: expected rotations of shape (N, 3, 3) in pose.pkl, got {rot.shape}")
    if trans is not None and trans.shape != (rot.shape[0], 2):
        raise InputError(f"{path}: translations have shape {trans.shape}, expected ({rot.shape[0]}, 2)")
    check_finite(rot, "rotation matrix", path)
    if trans is not None:
        check_finite(trans, "translation", path)
    return rot, trans


def read_cryodrgn_pkl(
    poses_path=None,
    ctf_path=None,
    *,
    box: int | None = None,
    apix: float | None = None,
    image_names=None,
    n: int | None = None,
) -> ParticleMetadata:
    """Metadata from cryoDRGN pkl files; ``box``/``apix`` are needed when no ctf.pkl states them."""
    if poses_path is None and ctf_path is None:
        raise InputError("cryoDRGN input needs a pose.pkl and/or a ctf.pkl")
    ctf = _read_ctf(os.fspath(ctf_path)) if ctf_path is not None else None
    rot = trans = None
    if poses_path is not None:
        rot, trans = _read_poses(os.fspath(poses_path))
    lengths = {p: len(a) for p, a in ((ctf_path, ctf), (poses_path, rot)) if a is not None}
    if image_names is not None:
        lengths["images"] = len(image_names)
    if n is not None:
        lengths["expected"] = n
    if len(set(lengths.values())) > 1:
        raise InputError(f"particle counts differ: {lengths}; the files do not describe the same particles")
    N = next(iter(lengths.values()))
    source = os.fspath(poses_path if poses_path is not None else ctf_path)

    if ctf is not None:
        box_arr = ctf[:, 0].astype(np.int64)
        apix_arr = ctf[:, 1] if apix is None else np.full(N, float(apix))
        if box is not None and (box_arr != int(box)).any():
            raise InputError(f"{ctf_path}: the ctf.pkl says box {box_arr[0]} but -D/--box is {box}; drop -D or fix it")
    else:
        if box is None or apix is None:
            raise InputError(
                f"{poses_path}: a pose.pkl alone does not state the box size and pixel size; "
                "give -D/--box and --apix (or a ctf.pkl)"
            )
        box_arr, apix_arr = np.full(N, int(box)), np.full(N, float(apix))

    shifts = None
    if rot is not None:
        shifts = np.zeros((N, 2)) if trans is None else -trans * box_arr[:, None] * apix_arr[:, None] + 0.0
    c = ctf if ctf is not None else np.zeros((N, 9))
    if ctf is None:
        c[:, 5], c[:, 6], c[:, 7] = 300.0, 2.7, 0.1
    meta = ParticleMetadata(
        image_names=np.full(N, "", dtype=object) if image_names is None else np.asarray(image_names, dtype=object),
        rotations=rot,
        shifts_A=shifts,
        defocus_u_A=c[:, 2],
        defocus_v_A=c[:, 3],
        defocus_angle_deg=c[:, 4],
        voltage_kV=c[:, 5],
        cs_mm=c[:, 6],
        amplitude_contrast=c[:, 7],
        phase_shift_deg=c[:, 8],
        bfactor_A2=np.zeros(N),
        ctf_scale=np.ones(N),
        apix_A=apix_arr,
        box=box_arr,
        optics_group=np.ones(N, dtype=np.int64),
        source=source,
        has_ctf=ctf is not None,
    )
    meta.validate()
    return meta


def _write_pickle(path, obj) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        pickle.dump(obj, fh, protocol=4)


def write_cryodrgn_pkl(metadata: ParticleMetadata, poses_path=None, ctf_path=None) -> None:
    """Write ``pose.pkl`` (rot float64 (N,3,3), trans = origin/D (N,2)) and/or ``ctf.pkl`` ((N,9) float32)."""
    meta = metadata
    if poses_path is not None:
        if meta.rotations is None:
            raise InputError(f"{meta.source}: has no 3D poses to write to {poses_path}")
        shifts = meta.shifts_A if meta.shifts_A is not None else np.zeros((len(meta), 2))
        trans = -shifts / meta.apix_A[:, None] / meta.box[:, None] + 0.0
        _write_pickle(poses_path, (meta.rotations.astype(np.float64), trans.astype(np.float64)))
    if ctf_path is not None:
        if not meta.has_ctf:
            raise InputError(f"{meta.source}: has no CTF parameters to write to {ctf_path}")
        ctf = np.stack(
            [
                meta.box.astype(np.float64),
                meta.apix_A,
                meta.defocus_u_A,
                meta.defocus_v_A,
                meta.defocus_angle_deg,
                meta.voltage_kV,
                meta.cs_mm,
                meta.amplitude_contrast,
                meta.phase_shift_deg,
            ],
            axis=1,
        ).astype(np.float32)
        _write_pickle(ctf_path, ctf)
