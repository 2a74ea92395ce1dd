"""Writing particle stacks: a chunked, memory-mapped ``.mrcs`` writer.

:class:`MRCStackWriter` preallocates the whole stack with ``mrcfile.new_mmap``
and writes chunks into it, so stacks of 10⁶ particles never have to fit in
memory. It writes to ``<path>.tmp`` and renames on a clean close: a crash never
leaves a stack that looks complete. Header statistics are accumulated chunk
by chunk; the voxel size is set to ``apix_A``.
"""

from __future__ import annotations

import logging
import os

import mrcfile
import numpy as np

from cryoconf.errors import InputError

__all__ = ["MRCStackWriter", "write_mrcs"]

log = logging.getLogger(__name__)


class MRCStackWriter:
    """``with MRCStackWriter(path, n_images, box, apix_A) as w: w.write(start, images)``.

    ``images`` is (k, D, D) (or (D, D)) float32 ``[row=y, col=x]``; it lands at
    positions ``start … start+k−1`` (0-based).
    """

    def __init__(self, path, n_images: int, box: int, apix_A: float | None = None, overwrite: bool = True):
        self.path = os.fspath(path)
        self.n_images, self.box = int(n_images), int(box)
        if self.n_images < 1 or self.box < 1:
            raise InputError(f"{self.path}: a stack needs ≥ 1 image and box ≥ 1 (got {n_images}, {box})")
        if not overwrite and os.path.exists(self.path):
            raise InputError(f"{self.path}: exists; remove it or allow overwriting")
        self.apix_A = apix_A
        self._tmp = self.path + ".tmp"
        self._mrc = mrcfile.new_mmap(self._tmp, shape=(self.n_images, self.box, self.box), mrc_mode=2, overwrite=True)
        self._mrc.set_image_stack()
        if apix_A is not None:
            self._mrc.voxel_size = float(apix_A)
        self._written = np.zeros(self.n_images, dtype=bool)
        self._min, self._max, self._sum, self._sumsq = np.inf, -np.inf, 0.0, 0.0

    def write(self, start: int, images) -> None:
        images = np.asarray(images, dtype=np.float32)
        if images.ndim == 2:
            images = images[None]
        k = images.shape[0]
        if images.shape[1:] != (self.box, self.box):
            raise InputError(f"{self.path}: images of shape {images.shape[1:]} do not fit a {self.box}² stack")
        if start < 0 or start + k > self.n_images:
            raise InputError(f"{self.path}: writing images {start}…{start + k - 1} past the end of a {self.n_images}-image stack")
        if not np.isfinite(images).all():
            j = int(np.flatnonzero(~np.isfinite(images).reshape(k, -1).all(axis=1))[0])
            raise InputError(f"{self.path}: image {start + j} to write contains NaN or infinite pixels")
        self._mrc.data[start : start + k] = images
        self._written[start : start + k] = True
        if k:
            self._min = min(self._min, float(images.min()))
            self._max = max(self._max, float(images.max()))
            x = images.astype(np.float64)
            self._sum += float(x.sum())
            self._sumsq += float((x * x).sum())

    def close(self, commit: bool = True) -> None:
        if self._mrc is None:
            return
        if commit:
            if not self._written.all():
                log.warning("%s: %d of %d images were never written (left zero)", self.path,
                            int((~self._written).sum()), self.n_images)
            count = self.n_images * self.box * self.box
            mean = self._sum / count
            h = self._mrc.header
            h.dmin = self._min if np.isfinite(self._min) else 0.0
            h.dmax = self._max if np.isfinite(self._max) else 0.0
            h.dmean = mean
            h.rms = float(np.sqrt(max(self._sumsq / count - mean * mean, 0.0)))
        self._mrc.close()
        self._mrc = None
        if commit:
            os.replace(self._tmp, self.path)
        else:
            os.remove(self._tmp)

    def __enter__(self) -> "MRCStackWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(commit=exc_type is None)


def write_mrcs(path, images, apix_A: float | None = None, chunk: int = 1024) -> None:
    """Write an in-memory stack (n, D, D) to ``path`` as float32 ``.mrcs``."""
    images = np.asarray(images)
    if images.ndim == 2:
        images = images[None]
    with MRCStackWriter(path, images.shape[0], images.shape[-1], apix_A) as w:
        for s in range(0, images.shape[0], chunk):
            w.write(s, images[s : s + chunk])
