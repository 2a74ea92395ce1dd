"""``ParticleMetadata``: one row per particle, in file-level units.

This is the common representation every reader returns and every writer takes.
Units are in the field names; degrees appear only here (the I/O boundary) and
become radians in :meth:`ParticleMetadata.ctf_params`.

Pose convention (DESIGN.md): ``rotations`` are the pose matrices ``A`` and
``shifts_A`` is ``t = −origin`` in Å, i.e. the particle centre sits at ``t``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import numpy as np
import pandas as pd
import torch

from cryoconf.errors import InputError
from cryoconf.imaging.ctf import CTFParams

__all__ = ["ParticleMetadata", "CTF_FIELDS", "check_finite"]

# per-particle CTF fields, in file-level units
CTF_FIELDS = (
    "defocus_u_A",
    "defocus_v_A",
    "defocus_angle_deg",
    "voltage_kV",
    "cs_mm",
    "amplitude_contrast",
    "phase_shift_deg",
    "bfactor_A2",
    "ctf_scale",
)


def check_finite(values: np.ndarray, what: str, source: str, row_label=None) -> None:
    """Raise an InputError naming the first row whose ``values`` are NaN or infinite.

    ``row_label(i)`` turns a 0-based row index into words (default "row i+1").
    """
    values = np.asarray(values)
    if values.dtype.kind not in "fc":
        return
    flat = values.reshape(values.shape[0], -1) if values.ndim > 1 else values[:, None]
    bad = ~np.isfinite(flat).all(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        where = row_label(i) if row_label else f"row {i + 1}"
        raise InputError(
            f"{source}: {where}: {what} is {flat[i].tolist()} (NaN or infinite); "
            f"fix or remove that row ({int(bad.sum())} row(s) affected)"
        )


@dataclass
class ParticleMetadata:
    """Per-particle metadata (numpy arrays of length N) read from a STAR, .cs or pkl file.

    ``image_names``: "k@path" (k 1-based) or "" when unknown. ``rotations``
    (N,3,3) pose matrices A, or None without 3D poses. ``shifts_A`` (N,2)
    t = −(originX, originY) in Å, or None. CTF fields as in :data:`CTF_FIELDS`
    (defocus in Å, angles in degrees, voltage kV, Cs mm). ``has_ctf`` is False
    when the source had no CTF (the CTF arrays are then placeholders and
    :meth:`ctf_params` raises). ``apix_A`` (N,) Å/pixel, ``box`` (N,) pixels,
    ``optics_group`` (N,) int, ``source`` the file read, ``extra`` the original
    particle table (or None).
    """

    image_names: np.ndarray
    rotations: np.ndarray | None
    shifts_A: np.ndarray | None
    defocus_u_A: np.ndarray
    defocus_v_A: np.ndarray
    defocus_angle_deg: np.ndarray
    voltage_kV: np.ndarray
    cs_mm: np.ndarray
    amplitude_contrast: np.ndarray
    phase_shift_deg: np.ndarray
    bfactor_A2: np.ndarray
    ctf_scale: np.ndarray
    apix_A: np.ndarray
    box: np.ndarray
    optics_group: np.ndarray
    source: str = ""
    extra: pd.DataFrame | None = None
    has_ctf: bool = True
    base_dir: str | None = field(default=None)  # folder relative image paths are resolved against

    def __post_init__(self) -> None:
        n = len(self.image_names)
        self.image_names = np.asarray(self.image_names, dtype=object)
        for name in CTF_FIELDS + ("apix_A",):
            arr = np.asarray(getattr(self, name), dtype=np.float64)
            if arr.ndim == 0:
                arr = np.full(n, float(arr))
            setattr(self, name, arr)
        for name in ("box", "optics_group"):
            arr = np.asarray(getattr(self, name), dtype=np.int64)
            if arr.ndim == 0:
                arr = np.full(n, int(arr), dtype=np.int64)
            setattr(self, name, arr)
        if self.rotations is not None:
            self.rotations = np.asarray(self.rotations, dtype=np.float64).reshape(n, 3, 3)
        if self.shifts_A is not None:
            self.shifts_A = np.asarray(self.shifts_A, dtype=np.float64).reshape(n, 2)
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, np.ndarray) and v.shape[:1] != (n,):
                raise ValueError(f"ParticleMetadata.{f.name} has {v.shape[0]} rows, expected {n}")

    def __len__(self) -> int:
        return len(self.image_names)

    @property
    def has_poses(self) -> bool:
        return self.rotations is not None

    def subset(self, ind) -> "ParticleMetadata":
        """The rows ``ind`` (indices or boolean mask), in that order."""
        ind = np.asarray(ind)
        if ind.dtype == bool:
            ind = np.flatnonzero(ind)
        ind = ind.astype(np.int64)
        changes = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, np.ndarray):
                changes[f.name] = v[ind]
        if self.extra is not None:
            changes["extra"] = self.extra.iloc[ind].reset_index(drop=True)
        return replace(self, **changes)

    def ctf_params(self, ind=None, dtype: torch.dtype = torch.float32, device=None) -> CTFParams:
        """CTF parameters of rows ``ind`` (all when None) as tensors, angles in radians."""
        if not self.has_ctf:
            raise InputError(
                f"{self.source}: has no CTF parameters; give a file with defocus values (e.g. --ctf ctf.pkl)"
            )
        sel = slice(None) if ind is None else np.asarray(ind)

        def t(a):
            return torch.as_tensor(np.ascontiguousarray(a[sel]), dtype=torch.float64)

        params = CTFParams(
            defocus_u_A=t(self.defocus_u_A),
            defocus_v_A=t(self.defocus_v_A),
            defocus_angle_rad=torch.deg2rad(t(self.defocus_angle_deg)),
            voltage_kV=t(self.voltage_kV),
            cs_mm=t(self.cs_mm),
            amplitude_contrast=t(self.amplitude_contrast),
            phase_shift_rad=torch.deg2rad(t(self.phase_shift_deg)),
            bfactor_A2=t(self.bfactor_A2),
            scale=t(self.ctf_scale),
        )
        return params.to(device=device, dtype=dtype)

    def validate(self) -> None:
        """Raise an InputError naming the first row with a NaN/inf or impossible value."""
        src = self.source or "metadata"
        if self.rotations is not None:
            check_finite(self.rotations, "rotation matrix", src)
        if self.shifts_A is not None:
            check_finite(self.shifts_A, "shift (Å)", src)
        if self.has_ctf:
            for name in CTF_FIELDS:
                check_finite(getattr(self, name), name, src)
            for name in ("voltage_kV",):
                bad = np.flatnonzero(getattr(self, name) <= 0)
                if bad.size:
                    raise InputError(f"{src}: row {bad[0] + 1}: {name} must be > 0, got {getattr(self, name)[bad[0]]}")
        check_finite(self.apix_A, "pixel size (Å)", src)
        bad = np.flatnonzero(self.apix_A <= 0)
        if bad.size:
            raise InputError(
                f"{src}: row {bad[0] + 1}: pixel size {self.apix_A[bad[0]]} Å is not positive; give --apix"
            )
        bad = np.flatnonzero(self.box <= 0)
        if bad.size:
            raise InputError(f"{src}: row {bad[0] + 1}: box size {self.box[bad[0]]} is not positive; give -D/--box")
        if len(self) and np.unique(self.box).size > 1:
            boxes = {int(g): int(b) for g, b in zip(self.optics_group, self.box)}
            raise InputError(
                f"{src}: inconsistent box size across particles/optics groups (group: box = {boxes}); "
                "all particles of one dataset must have the same box: re-extract or split the file"
            )
