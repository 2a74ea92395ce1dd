"""Particle index subsets (cryoDRGN-style ``--ind``): arrays or ``.pkl``/``.npy`` files."""

from __future__ import annotations

import os

import numpy as np

from cryoconf.errors import InputError

__all__ = ["load_indices"]


def load_indices(ind, n: int) -> np.ndarray:
    """Indices (int64, 0-based) from an array, a list, or a ``.pkl``/``.npy``/``.txt`` file, checked against ``n``."""
    source = "indices"
    if isinstance(ind, (str, os.PathLike)):
        source = os.fspath(ind)
        ext = os.path.splitext(source)[1].lower()
        if not os.path.isfile(source):
            raise InputError(f"{source}: no such index file")
        try:
            if ext == ".pkl":
                from cryoconf.data.cryodrgn import read_pickle

                ind = read_pickle(source)
            elif ext == ".npy":
                ind = np.load(source, allow_pickle=False)
            elif ext == ".txt":
                ind = np.loadtxt(source, dtype=np.int64, ndmin=1)
            else:
                raise InputError(f"{source}: unknown index file type {ext!r}; use .pkl, .npy or .txt")
        except InputError:
            raise
        except Exception as exc:
            raise InputError(f"{source}: cannot read indices ({exc})") from None
    arr = np.asarray(ind)
    if arr.dtype == bool:
        if arr.shape != (n,):
            raise InputError(f"{source}: boolean mask of length {arr.size} for {n} particles")
        return np.flatnonzero(arr)
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
        if arr.size and arr.dtype.kind == "f" and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise InputError(f"{source}: expected a 1-D array of integer particle indices, got {arr.dtype} {arr.shape}")
    arr = arr.astype(np.int64)
    bad = np.flatnonzero((arr < 0) | (arr >= n))
    if bad.size:
        raise InputError(
            f"{source}: index {arr[bad[0]]} (entry {bad[0]}) is out of range for {n} particles "
            "(indices are 0-based); use an index file made for this particle set"
        )
    return arr
