"""RELION particle STAR files (3.0, 3.1, 5) ↔ :class:`ParticleMetadata`.

Reading
    * RELION 3.1/5: ``data_optics`` is joined to ``data_particles`` by
      ``rlnOpticsGroup`` (in whichever order the blocks come); a column present
      in the particle table wins over the optics table.
    * RELION 3.0: one table (``data_images``, ``data_`` …), origins
      ``rlnOriginX/Y`` in pixels.
    * Pixel size: ``rlnImagePixelSize``, else 10⁴·``rlnDetectorPixelSize``/
      ``rlnMagnification``; the ``apix`` argument overrides both.
    * Box: ``rlnImageSize``, else the header of the first particle's stack,
      else the ``box`` argument; otherwise an InputError.
    * Pose: A = Rotation.from_euler("ZYZ", [rot, tilt, psi], degrees).as_matrix().T,
      t = −(rlnOriginXAngst, rlnOriginYAngst) Å.
    * Defaults for absent optional columns: rlnDefocusV = rlnDefocusU,
      rlnDefocusAngle 0°, rlnAmplitudeContrast 0.1 (or ``amplitude_contrast``),
      rlnPhaseShift 0°, rlnCtfBfactor 0 Å², rlnCtfScalefactor 1, origins 0.
      rlnVoltage and rlnSphericalAberration are required unless ``voltage_kV`` /
      ``cs_mm`` are given.

Writing: RELION 3.1 (``# version 30001``, ``data_optics`` + ``data_particles``,
origins in Å).
"""

from __future__ import annotations

import logging
import os

import numpy as np
import pandas as pd
import torch

from cryoconf.data.metadata import ParticleMetadata
from cryoconf.data.stack import parse_image_name, read_mrc_header, resolve_stack_path
from cryoconf.data.star import StarTable, read_star, write_star
from cryoconf.errors import InputError
from cryoconf.imaging.rotations import matrix_to_relion_euler, relion_euler_to_matrix

__all__ = ["read_star_metadata", "write_relion31_star", "DEFAULT_AMPLITUDE_CONTRAST"]

log = logging.getLogger(__name__)

DEFAULT_AMPLITUDE_CONTRAST = 0.1

# columns that write_relion31_star recomputes (or that are RELION 3.0 legacy / optics-level)
_NOT_CARRIED = {
    "rlnImageName", "rlnOpticsGroup", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi",
    "rlnOriginX", "rlnOriginY", "rlnOriginXAngst", "rlnOriginYAngst",
    "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnPhaseShift", "rlnCtfBfactor", "rlnCtfScalefactor",
    "rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnMagnification",
    "rlnDetectorPixelSize", "rlnImagePixelSize", "rlnImageSize", "rlnImageDimensionality",
}


def _particle_table(tables: dict[str, StarTable], path: str) -> StarTable:
    if "particles" in tables:
        return tables["particles"]
    others = [t for name, t in tables.items() if name != "optics"]
    marked = [t for t in others if {"rlnImageName", "rlnDefocusU", "rlnAngleRot"} & set(t.columns)]
    chosen = marked if marked else others
    if len(chosen) != 1:
        raise InputError(
            f"{path}: cannot tell which table holds the particles (blocks: "
            f"{['data_' + n for n in tables]}); expected data_particles (RELION ≥3.1) or one table (RELION 3.0)"
        )
    return chosen[0]


def _extra_frame(table: StarTable) -> pd.DataFrame:
    data = {}
    for c in table.columns:
        s = table.strings(c)
        try:
            data[c] = s.astype(np.float64)
        except ValueError:
            data[c] = s
    return pd.DataFrame(data)


def _stack_box(name: str, datadir, base_dir, path: str) -> tuple[int | None, str]:
    try:
        _, stack = parse_image_name(name, path, 0)
        return read_mrc_header(resolve_stack_path(stack, datadir, base_dir, path))["nx"], ""
    except InputError as exc:
        return None, str(exc)


def read_star_metadata(
    path,
    *,
    box: int | None = None,
    apix: float | None = None,
    datadir: str | None = None,
    voltage_kV: float | None = None,
    cs_mm: float | None = None,
    amplitude_contrast: float | None = None,
    require_poses: bool = False,
    require_ctf: bool = True,
) -> ParticleMetadata:
    """Read a RELION 3.0/3.1/5 particle STAR file (see the module docstring for rules and defaults)."""
    path = os.fspath(path)
    tables = read_star(path)
    part = _particle_table(tables, path)
    n = len(part)
    if n == 0:
        raise InputError(f"{path}: data_{part.block} has no particle rows (empty or truncated file)")
    base_dir = os.path.dirname(os.path.abspath(path))

    opt = tables.get("optics")
    oidx = None
    groups = part.ints("rlnOpticsGroup") if "rlnOpticsGroup" in part else np.ones(n, dtype=np.int64)
    if opt is not None:
        if len(opt) == 0:
            raise InputError(f"{path}: data_optics has no rows (truncated file?)")
        if "rlnOpticsGroup" not in opt:
            raise InputError(f"{path}: data_optics lacks the column _rlnOpticsGroup; add it (1, 2, …)")
        og = opt.ints("rlnOpticsGroup")
        pos = {int(g): i for i, g in enumerate(og)}
        oidx = np.empty(n, dtype=np.int64)
        for g in np.unique(groups):
            if int(g) not in pos:
                i = int(np.flatnonzero(groups == g)[0])
                raise InputError(
                    f"{path}: {part.where(i)}: optics group {int(g)} is not in data_optics "
                    f"(groups {sorted(pos)}); fix _rlnOpticsGroup"
                )
            oidx[groups == g] = pos[int(g)]

    def col(name: str):
        if name in part:
            return part.floats(name)
        if opt is not None and name in opt:
            return opt.floats(name)[oidx]
        return None

    def required(name: str, fallback, option: str):
        v = col(name)
        if v is not None:
            return v
        if fallback is not None:
            return np.full(n, float(fallback))
        fix = f"add it or give {option}" if option else "add it"
        raise InputError(f"{path}: missing column _{name} (in data_{part.block} or data_optics); {fix}")

    # --- pixel size and box ---
    apix_file = col("rlnImagePixelSize")
    if apix_file is None:
        det, mag = col("rlnDetectorPixelSize"), col("rlnMagnification")
        if det is not None and mag is not None:
            if (mag <= 0).any():
                i = int(np.flatnonzero(mag <= 0)[0])
                raise InputError(f"{path}: row {i + 1}: _rlnMagnification must be positive, got {mag[i]}")
            apix_file = 1e4 * det / mag
    if apix is not None:
        if apix_file is not None and not np.allclose(apix_file, apix, rtol=1e-3):
            log.warning("%s: pixel size %.4g Å in the file overridden by apix=%.4g Å", path, apix_file[0], apix)
        apix_arr = np.full(n, float(apix))
    elif apix_file is None:
        raise InputError(
            f"{path}: no pixel size: needs _rlnImagePixelSize (RELION ≥3.1 optics table) or "
            "_rlnDetectorPixelSize and _rlnMagnification (RELION 3.0); or give --apix"
        )
    else:
        apix_arr = apix_file

    names = part.strings("rlnImageName") if "rlnImageName" in part else np.full(n, "", dtype=object)
    box_file = col("rlnImageSize")
    if box_file is not None:
        box_arr = box_file.astype(np.int64)
        if box is not None and (box_arr != int(box)).any():
            raise InputError(
                f"{path}: the file says box {int(box_arr[0])} (_rlnImageSize) but -D/--box is {box}; drop -D or fix it"
            )
    else:
        stack_box, why = (None, "no _rlnImageName") if names[0] == "" else _stack_box(names[0], datadir, base_dir, path)
        if stack_box is not None and box is not None and stack_box != int(box):
            raise InputError(f"{path}: its stack holds {stack_box}-pixel images but -D/--box is {box}; fix -D")
        if stack_box is None and box is None:
            raise InputError(
                f"{path}: the box size is stated nowhere: no _rlnImageSize column and the stack header cannot "
                f"be read ({why}); give -D/--box (image size in pixels) or --datadir"
            )
        box_arr = np.full(n, int(stack_box if stack_box is not None else box), dtype=np.int64)

    # --- pose ---
    angle_cols = ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]
    present = [c for c in angle_cols if c in part]
    rotations = None
    if len(present) == 3:
        ang = [torch.as_tensor(part.floats(c), dtype=torch.float64) for c in angle_cols]
        rotations = relion_euler_to_matrix(*ang).numpy()
    elif require_poses:
        missing = [c for c in angle_cols if c not in part]
        raise InputError(
            f"{path}: 3D poses requested but the column(s) {['_' + c for c in missing]} are missing"
            + (" (only in-plane 2D alignments)" if present == ["rlnAnglePsi"] else "")
            + "; use a STAR file from a 3D refinement"
        )
    if "rlnOriginXAngst" in part or "rlnOriginYAngst" in part:
        origin = np.stack([required("rlnOriginXAngst", None, ""), required("rlnOriginYAngst", None, "")], axis=1)
    elif "rlnOriginX" in part or "rlnOriginY" in part:
        origin = np.stack([required("rlnOriginX", None, ""), required("rlnOriginY", None, "")], axis=1)
        origin = origin * apix_arr[:, None]
    else:
        origin = np.zeros((n, 2))
    shifts = -origin if rotations is not None or np.any(origin) else None
    if shifts is not None:
        shifts = shifts + 0.0  # no −0.0

    # --- CTF ---
    has_ctf = col("rlnDefocusU") is not None
    if not has_ctf and require_ctf:
        raise InputError(f"{path}: missing column _rlnDefocusU (the defocus, Å); this file has no CTF parameters")
    if has_ctf:
        du = col("rlnDefocusU")
        dv = col("rlnDefocusV")
        dv = du.copy() if dv is None else dv
        volt = required("rlnVoltage", voltage_kV, "--voltage (kV)")
        cs = required("rlnSphericalAberration", cs_mm, "--cs (mm)")
    else:
        du = dv = np.zeros(n)
        volt = np.full(n, 300.0 if voltage_kV is None else float(voltage_kV))
        cs = np.full(n, 2.7 if cs_mm is None else float(cs_mm))

    def optional(name, default):
        v = col(name)
        return np.full(n, float(default)) if v is None else v

    w_default = DEFAULT_AMPLITUDE_CONTRAST if amplitude_contrast is None else amplitude_contrast
    meta = ParticleMetadata(
        image_names=names,
        rotations=rotations,
        shifts_A=shifts,
        defocus_u_A=du,
        defocus_v_A=dv,
        defocus_angle_deg=optional("rlnDefocusAngle", 0.0),
        voltage_kV=volt,
        cs_mm=cs,
        amplitude_contrast=optional("rlnAmplitudeContrast", w_default),
        phase_shift_deg=optional("rlnPhaseShift", 0.0),
        bfactor_A2=optional("rlnCtfBfactor", 0.0),
        ctf_scale=optional("rlnCtfScalefactor", 1.0),
        apix_A=apix_arr,
        box=box_arr,
        optics_group=groups,
        source=path,
        extra=_extra_frame(part),
        has_ctf=has_ctf,
        base_dir=base_dir,
    )
    meta.validate()
    return meta


def _optics_groups(meta: ParticleMetadata) -> tuple[np.ndarray, np.ndarray]:
    """(new group per particle, index of one representative particle per group)."""
    key = np.stack(
        [meta.optics_group, meta.voltage_kV, meta.cs_mm, meta.amplitude_contrast, meta.apix_A, meta.box], axis=1
    ).astype(np.float64)
    uniq, first, inverse = np.unique(key, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    if len(uniq) == len(np.unique(meta.optics_group)):
        labels = uniq[:, 0].astype(np.int64)  # keep the original numbering
        if (labels >= 1).all():
            return labels[inverse], first
    return inverse.astype(np.int64) + 1, first


def write_relion31_star(
    path, metadata: ParticleMetadata, extra_columns: dict | None = None, keep_extra: bool = True
) -> None:
    """Write ``metadata`` as a RELION 3.1 particle STAR file (origins in Å).

    ``extra_columns`` {label: (N,) values} are appended to data_particles
    (labels with or without the leading ``_``). With ``keep_extra``, columns
    of the original particle table that this writer does not recompute (e.g.
    _rlnMicrographName, _rlnClassNumber) are carried over.
    """
    meta = metadata
    n = len(meta)
    if n == 0:
        raise InputError(f"{path}: refusing to write a STAR file with no particles")
    groups, first = _optics_groups(meta)
    gvals = groups[first]
    optics = {
        "rlnOpticsGroup": gvals,
        "rlnOpticsGroupName": np.array([f"opticsGroup{g}" for g in gvals], dtype=object),
    }
    if meta.has_ctf:
        optics["rlnAmplitudeContrast"] = meta.amplitude_contrast[first]
        optics["rlnSphericalAberration"] = meta.cs_mm[first]
        optics["rlnVoltage"] = meta.voltage_kV[first]
    optics["rlnImagePixelSize"] = meta.apix_A[first]
    optics["rlnImageSize"] = meta.box[first]
    optics["rlnImageDimensionality"] = np.full(len(first), 2)

    parts: dict = {}
    if any(str(s) for s in meta.image_names):
        parts["rlnImageName"] = meta.image_names
    parts["rlnOpticsGroup"] = groups
    if meta.rotations is not None:
        rot, tilt, psi = matrix_to_relion_euler(torch.as_tensor(meta.rotations, dtype=torch.float64))
        parts["rlnAngleRot"], parts["rlnAngleTilt"], parts["rlnAnglePsi"] = rot.numpy(), tilt.numpy(), psi.numpy()
    if meta.shifts_A is not None:
        parts["rlnOriginXAngst"] = -meta.shifts_A[:, 0] + 0.0
        parts["rlnOriginYAngst"] = -meta.shifts_A[:, 1] + 0.0
    if meta.has_ctf:
        parts["rlnDefocusU"] = meta.defocus_u_A
        parts["rlnDefocusV"] = meta.defocus_v_A
        parts["rlnDefocusAngle"] = meta.defocus_angle_deg
        parts["rlnPhaseShift"] = meta.phase_shift_deg
        parts["rlnCtfBfactor"] = meta.bfactor_A2
        parts["rlnCtfScalefactor"] = meta.ctf_scale
    if keep_extra and meta.extra is not None and len(meta.extra) == n:
        for c in meta.extra.columns:
            if str(c).startswith("rln") and c not in _NOT_CARRIED and c not in parts:
                parts[c] = meta.extra[c].to_numpy()
    for label, values in (extra_columns or {}).items():
        values = np.asarray(values)
        if values.shape[:1] != (n,) or values.ndim != 1:
            raise InputError(f"extra column {label!r} has shape {values.shape}, expected ({n},)")
        parts[label.lstrip("_")] = values
    write_star(path, [("optics", optics), ("particles", parts)], header="# version 30001")
