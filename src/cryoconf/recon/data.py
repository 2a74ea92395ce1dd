"""Particles for ``recon``: images (Fourier-cropped to the working box) with pose, shift and CTF.

:class:`ReconParticles` wraps a :class:`~cryoconf.data.dataset.ParticleDataset` that has
images, poses and CTF. It Fourier-crops every image to ``box`` (pixel size
``apix_A`` = original·D/box) and keeps the stack in memory (read in chunks with a
progress bar), or, with ``lazy``, reads each batch from disk.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from cryoconf.data.dataset import ParticleDataset
from cryoconf.errors import InputError
from cryoconf.imaging.filters import fourier_crop

__all__ = ["ReconParticles"]

_READ_CHUNK = 1024


class ReconParticles:
    """``len`` particles; :meth:`batch` gives images (B, box, box), rotations, shifts_A, ctf, indices."""

    def __init__(self, dataset: ParticleDataset, box: int | None = None, *, lazy: bool = False,
                 progress: bool = True) -> None:
        src = dataset.metadata.source or "particles"
        if dataset.stack is None:
            raise InputError(f"{src}: no particle images; recon needs the image stacks (check --datadir)")
        if dataset.rotations is None:
            raise InputError(f"{src}: no poses; recon needs known poses (RELION/cryoSPARC alignments or --poses)")
        if dataset.ctf is None:
            raise InputError(f"{src}: no CTF parameters; recon needs them (give --ctf or a file with defocus)")
        if len(dataset) == 0:
            raise InputError(f"{src}: no particles selected (check --ind)")
        apix = dataset.apix_A[torch.as_tensor(dataset.indices)]
        if float(apix.max() - apix.min()) > 1e-3 * float(apix.max()):
            raise InputError(f"{src}: particles with different pixel sizes ({float(apix.min()):.4g}–"
                             f"{float(apix.max()):.4g} Å); run recon on one optics group at a time (--ind)")
        self.dataset = dataset
        self.original_box = dataset.box
        self.box = int(box or self.original_box)
        if self.box > self.original_box:
            raise InputError(f"--downsample {self.box} is larger than the particle box {self.original_box}")
        self.original_apix_A = float(apix[0])
        self.apix_A = self.original_apix_A * self.original_box / self.box
        self.lazy = lazy
        self._images = None
        if not lazy:
            chunks = []
            n = len(dataset)
            for s in tqdm(range(0, n, _READ_CHUNK), desc="read particles", unit="chunk", disable=not progress):
                chunks.append(self._read(np.arange(s, min(s + _READ_CHUNK, n))))
            self._images = torch.cat(chunks)

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def indices(self) -> np.ndarray:
        """Row in the metadata of every particle position."""
        return np.asarray(self.dataset.indices)

    def _read(self, positions: np.ndarray) -> torch.Tensor:
        images = self.dataset.batch(positions)["images"].float()
        if not torch.isfinite(images).all():
            bad = int(self.dataset.indices[positions[int((~torch.isfinite(images)).flatten(1).any(1).nonzero()[0])]])
            raise InputError(f"{self.dataset.metadata.source}: particle row {bad} has NaN/inf pixels; remove it (--ind)")
        return fourier_crop(images, self.box) if self.box != self.original_box else images

    def batch(self, positions, device=None) -> dict:
        """Particles at ``positions`` (B,): images (B, box, box) float32 and pose/CTF, on ``device``."""
        pos = np.asarray(positions, dtype=np.int64).reshape(-1)
        j = torch.as_tensor(self.dataset.indices[pos])
        images = self._read(pos) if self.lazy else self._images[torch.as_tensor(pos)]
        ds = self.dataset
        out = {
            "images": images,
            "rotations": ds.rotations[j],
            "shifts_A": (ds.shifts_A[j] if ds.shifts_A is not None else torch.zeros(len(pos), 2)),
            "ctf": ds.ctf[j],
            "indices": j,
            "positions": torch.as_tensor(pos),
        }
        if device is not None:
            out = {k: v.to(device) for k, v in out.items()}
        return out
