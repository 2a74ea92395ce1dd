"""``ParticleDataset``: images with their pose and CTF, as torch tensors in internal units.

``dataset[i]`` → dict(image (D,D) float32, rotation (3,3), shift_A (2,),
index (row in the metadata), ctf {field: float, radians}, apix_A); keys whose
data the source lacks (images, poses, CTF) are absent, so the default
``DataLoader`` collate works. ``dataset.batch(positions)`` reads a whole batch
at once (one pass per stack) and returns images (B,D,D), rotations (B,3,3),
shifts_A (B,2), ctf (:class:`CTFParams`), indices (B,), apix_A (B,).
"""

from __future__ import annotations

from dataclasses import fields

import numpy as np
import torch
from torch.utils.data import Dataset

from cryoconf.data.indices import load_indices
from cryoconf.data.metadata import ParticleMetadata
from cryoconf.data.readers import read_metadata
from cryoconf.data.stack import ImageStack
from cryoconf.errors import InputError
from cryoconf.imaging.ctf import CTFParams

__all__ = ["ParticleDataset", "load_particles"]


class ParticleDataset(Dataset):
    """Particles ``metadata`` (rows ``ind``, all when None) with images from ``stack`` (optional)."""

    def __init__(self, metadata: ParticleMetadata, stack: ImageStack | None = None, ind=None):
        self.metadata = metadata
        self.stack = stack
        self.indices = np.arange(len(metadata)) if ind is None else load_indices(ind, len(metadata))
        src = metadata.source or "metadata"
        if stack is not None:
            if len(stack) != len(metadata):
                raise InputError(f"{src}: {len(metadata)} particles but the image stack has {len(stack)} images")
            if len(metadata) and stack.box != int(metadata.box[0]):
                raise InputError(
                    f"{src}: the metadata says box {int(metadata.box[0])} but the stack {stack.files[0]} holds "
                    f"{stack.box}×{stack.box} images; the metadata does not match these stacks (fix the box, "
                    "e.g. _rlnImageSize, or use the right stacks)"
                )
        self.rotations = None if metadata.rotations is None else torch.as_tensor(metadata.rotations, dtype=torch.float32)
        self.shifts_A = None if metadata.shifts_A is None else torch.as_tensor(metadata.shifts_A, dtype=torch.float32)
        self.ctf = metadata.ctf_params() if metadata.has_ctf else None
        self.apix_A = torch.as_tensor(metadata.apix_A, dtype=torch.float32)

    @property
    def box(self) -> int:
        return int(self.metadata.box[0]) if len(self.metadata) else (self.stack.box if self.stack else 0)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        j = int(self.indices[i])
        item: dict = {"index": j, "apix_A": float(self.apix_A[j])}
        if self.stack is not None:
            item["image"] = torch.from_numpy(self.stack.read([j])[0])
        if self.rotations is not None:
            item["rotation"] = self.rotations[j]
        if self.shifts_A is not None:
            item["shift_A"] = self.shifts_A[j]
        if self.ctf is not None:
            item["ctf"] = {f.name: float(getattr(self.ctf, f.name)[j]) for f in fields(CTFParams)}
        return item

    def batch(self, positions) -> dict:
        """Dataset positions (B,) → batched tensors (see the module docstring)."""
        pos = np.asarray(positions, dtype=np.int64).reshape(-1)
        j = self.indices[pos]
        jt = torch.as_tensor(j)
        out: dict = {"indices": jt, "apix_A": self.apix_A[jt]}
        if self.stack is not None:
            out["images"] = torch.from_numpy(self.stack.read(j))
        if self.rotations is not None:
            out["rotations"] = self.rotations[jt]
        if self.shifts_A is not None:
            out["shifts_A"] = self.shifts_A[jt]
        if self.ctf is not None:
            out["ctf"] = self.ctf[jt]
        return out


def load_particles(
    path,
    *,
    datadir: str | None = None,
    ind=None,
    poses=None,
    ctf=None,
    box: int | None = None,
    apix: float | None = None,
    load_images: bool = True,
    require_poses: bool = False,
    **kwargs,
) -> ParticleDataset:
    """Metadata from ``path`` (+ optional cryoDRGN ``poses``/``ctf`` pkl), images matched by name, subset ``ind``."""
    meta = read_metadata(path, box=box, apix=apix, datadir=datadir, poses=poses, ctf=ctf,
                         require_poses=require_poses, **kwargs)
    stack = None
    if load_images:
        stack = ImageStack.from_names(meta.image_names, datadir=datadir, base_dir=meta.base_dir, source=meta.source)
    return ParticleDataset(meta, stack, ind)
