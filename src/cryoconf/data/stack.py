"""Lazy, memory-mapped access to particle images in MRC stacks.

Images are addressed RELION-style as ``"k@path"`` (k 1-based). A stack path is
resolved (:func:`resolve_stack_path`) by trying, in order: the path itself if
absolute, ``datadir/path``, ``datadir/basename(path)``, ``path`` relative to the
metadata file's folder (``base_dir``), relative to the working directory, and
relative to each folder above ``base_dir`` (RELION and cryoSPARC write paths
relative to the project folder, which holds the job folder the metadata file is
in: ``Refine3D/job025/run_data.star`` names ``Extract/job012/...``). cryoSPARC's
leading ``>`` is stripped. ``.txt`` files list stacks (one path a line,
relative to the list).

Images come back as float32 numpy arrays (k, D, D) ``[row=y, col=x]`` exactly as
stored (``mrcfile`` ``data[i]``); only the headers are read up front.
"""

from __future__ import annotations

import os
import warnings
from collections import OrderedDict

import mrcfile
import mrcfile.utils
import numpy as np

from cryoconf.errors import InputError

__all__ = [
    "ImageStack",
    "parse_image_name",
    "resolve_stack_path",
    "read_mrc_header",
    "read_stack_list",
    "STACK_EXTENSIONS",
]

STACK_EXTENSIONS = (".mrcs", ".mrc", ".st", ".map")
_MAX_OPEN = 64  # memory maps kept open at once
_PROJECT_LEVELS = 4  # folders above the metadata file's searched for project-relative stack paths


def parse_image_name(name: str, source: str = "", row: int | None = None) -> tuple[int, str]:
    """``"k@path"`` → (k ≥ 1, path); the ``>`` prefix of cryoSPARC paths is dropped."""
    where = f"{source}: row {row + 1}: " if row is not None else (f"{source}: " if source else "")
    name = str(name).strip()
    k, sep, path = name.partition("@")
    if not sep or not path:
        raise InputError(f"{where}image name {name!r} is not of the form 'k@stack.mrcs' (k counts from 1)")
    try:
        k = int(k)
    except ValueError:
        raise InputError(f"{where}image name {name!r}: {k!r} is not an image number") from None
    if k < 1:
        raise InputError(f"{where}image name {name!r}: image numbers count from 1, got {k}")
    return k, path.lstrip(">")


def resolve_stack_path(path: str, datadir: str | None = None, base_dir: str | None = None, source: str = "") -> str:
    """Find the stack file ``path`` refers to; InputError listing every place tried."""
    path = str(path).lstrip(">")
    tried = []
    if os.path.isabs(path):
        tried.append(path)
    if datadir is not None:
        tried += [os.path.join(datadir, path), os.path.join(datadir, os.path.basename(path))]
    if base_dir:
        tried.append(os.path.join(base_dir, path))
    tried.append(path)
    if base_dir and not os.path.isabs(path):
        # the project folder of RELION/cryoSPARC is an ancestor of the job folder
        parent = os.path.dirname(os.path.abspath(base_dir))
        for _ in range(_PROJECT_LEVELS):
            tried.append(os.path.join(parent, path))
            parent = os.path.dirname(parent)
    tried = list(dict.fromkeys(tried))
    for cand in tried:
        if os.path.isfile(cand):
            return cand
    hint = "give --datadir (the folder holding the stacks)" if datadir is None else "check --datadir"
    raise InputError(
        f"{source + ': ' if source else ''}image stack {path!r} not found (datadir={datadir!r}); "
        f"tried {tried}; {hint}"
    )


def read_mrc_header(path: str) -> dict:
    """Header facts of an MRC stack: n, ny, nx, dtype, offset, apix_A (None if unset)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with mrcfile.open(path, mode="r", permissive=True, header_only=True) as mrc:
                header = mrc.header.copy()
                dtype = mrcfile.utils.data_dtype_from_header(header)
    except FileNotFoundError:
        raise InputError(f"{path}: no such image stack") from None
    except Exception as exc:  # mrcfile raises ValueError/OSError on garbage
        raise InputError(f"{path}: not a readable MRC stack ({exc})") from None
    nx, ny, nz = int(header.nx), int(header.ny), int(header.nz)
    if nx <= 0 or ny <= 0 or nz <= 0:
        raise InputError(f"{path}: MRC header has dimensions {nx}×{ny}×{nz}; the file is not a valid MRC stack")
    if dtype.kind == "c":
        raise InputError(f"{path}: complex-valued MRC (mode {int(header.mode)}) is not an image stack")
    offset = 1024 + max(int(header.nsymbt), 0)
    size = os.path.getsize(path)
    frame = nx * ny * dtype.itemsize
    if size < offset + nz * frame:
        complete = max(size - offset, 0) // frame
        raise InputError(
            f"{path}: header says {nz} images of {ny}×{nx} but the file holds only {complete} complete images "
            "(truncated copy?); copy the stack again"
        )
    vs = float(header.cella.x) / nx if nx else 0.0
    return dict(n=nz, ny=ny, nx=nx, dtype=dtype, offset=offset, apix_A=vs if vs > 0 else None)


def read_stack_list(path: str, datadir: str | None = None) -> list[str]:
    """Stack paths listed in a ``.txt`` file (one a line, relative to the list's folder)."""
    try:
        with open(path, encoding="utf-8") as fh:
            entries = [ln.strip() for ln in fh if ln.strip() and not ln.lstrip().startswith("#")]
    except OSError as exc:
        raise InputError(f"{path}: cannot read the stack list ({exc})") from None
    if not entries:
        raise InputError(f"{path}: the stack list is empty; list one .mrcs path per line")
    base = os.path.dirname(os.path.abspath(path))
    return [resolve_stack_path(e, datadir, base, source=f"{path} line {i + 1}") for i, e in enumerate(entries)]


class ImageStack:
    """Images ``names[i] = "k@path"`` read lazily from memory-mapped MRC stacks.

    ``stack[i]`` → (D, D) float32; ``stack[indices]`` or ``stack[a:b]`` →
    (k, D, D) float32, in the order asked. NaN/inf pixels raise InputError
    naming the image. Construction reads only the headers and checks that
    every ``k`` exists in its stack and that all images are D×D with one D.
    """

    def __init__(self, files: list[str], file_index: np.ndarray, image_index: np.ndarray, names=None, source: str = ""):
        self.files = list(files)
        self.file_index = np.asarray(file_index, dtype=np.int64)
        self.image_index = np.asarray(image_index, dtype=np.int64)
        self.source = source
        self.names = (
            np.asarray(names, dtype=object)
            if names is not None
            else np.array([f"{k + 1}@{self.files[f]}" for f, k in zip(self.file_index, self.image_index)], dtype=object)
        )
        self.headers = [read_mrc_header(f) for f in self.files]
        shapes = {(h["ny"], h["nx"]) for h in self.headers}
        for f, h in zip(self.files, self.headers):
            if h["ny"] != h["nx"]:
                raise InputError(f"{f}: images are {h['ny']}×{h['nx']}, not square; re-extract with a square box")
        if len(shapes) > 1:
            desc = {f: h["nx"] for f, h in zip(self.files, self.headers)}
            raise InputError(f"{source or 'image stacks'}: stacks have different box sizes {desc}; use one box size")
        counts = np.array([h["n"] for h in self.headers], dtype=np.int64)
        if len(self.file_index):
            over = self.image_index >= counts[self.file_index]
            if over.any():
                i = int(np.flatnonzero(over)[0])
                f = self.files[self.file_index[i]]
                raise InputError(
                    f"{source or 'metadata'}: row {i + 1}: image {self.names[i]!r} asks for image "
                    f"{self.image_index[i] + 1} but stack {f} holds only {counts[self.file_index[i]]} images; "
                    "the metadata does not belong to this stack (check --datadir)"
                )
        self.box = self.headers[0]["nx"] if self.headers else 0
        apix = [h["apix_A"] for h in self.headers]
        self.apix_A = apix[0] if apix and apix[0] is not None else None
        self._maps: OrderedDict[int, np.memmap] = OrderedDict()

    # --- construction -------------------------------------------------
    @classmethod
    def from_names(cls, image_names, datadir: str | None = None, base_dir: str | None = None, source: str = "") -> "ImageStack":
        """Stack for metadata rows named ``"k@path"`` (matched by name, not by position)."""
        names = np.asarray(image_names, dtype=object)
        if len(names) == 0:
            raise InputError(f"{source or 'metadata'}: no particles")
        uniq_names, inverse = np.unique(names.astype(str), return_inverse=True)
        if uniq_names[0] == "" or uniq_names[0] == "nan":
            i = int(np.flatnonzero(names.astype(str) == uniq_names[0])[0])
            raise InputError(
                f"{source or 'metadata'}: row {i + 1}: no image name (e.g. rlnImageName); "
                "images cannot be loaded from this file: give the stack and pose/CTF files instead"
            )
        paths_of, k_of = [], np.empty(len(uniq_names), dtype=np.int64)
        for u, nm in enumerate(uniq_names):
            try:
                k, p = parse_image_name(nm)
            except InputError:  # say which row
                parse_image_name(nm, source, int(np.flatnonzero(inverse == u)[0]))
                raise
            k_of[u] = k - 1
            paths_of.append(p)
        upaths, path_inv = np.unique(np.array(paths_of, dtype=object).astype(str), return_inverse=True)
        resolved = [resolve_stack_path(p, datadir, base_dir, source) for p in upaths]
        return cls(resolved, path_inv[inverse], k_of[inverse], names=names, source=source)

    @classmethod
    def from_file(cls, path: str, datadir: str | None = None) -> "ImageStack":
        """All images of a stack (``.mrcs``/``.mrc``) or of the stacks listed in a ``.txt``."""
        path = os.fspath(path)
        if path.lower().endswith(".txt"):
            files = read_stack_list(path, datadir)
        else:
            files = [resolve_stack_path(path, datadir, None)]
        fi, ii = [], []
        for j, f in enumerate(files):
            n = read_mrc_header(f)["n"]
            fi.append(np.full(n, j))
            ii.append(np.arange(n))
        return cls(files, np.concatenate(fi), np.concatenate(ii), source=path)

    # --- access ---------------------------------------------------------
    def __len__(self) -> int:
        return len(self.file_index)

    def _map(self, f: int) -> np.memmap:
        mm = self._maps.get(f)
        if mm is None:
            h = self.headers[f]
            mm = np.memmap(self.files[f], dtype=h["dtype"], mode="r", offset=h["offset"], shape=(h["n"], h["ny"], h["nx"]))
            self._maps[f] = mm
            if len(self._maps) > _MAX_OPEN:
                self._maps.popitem(last=False)
        else:
            self._maps.move_to_end(f)
        return mm

    def read(self, indices, check_finite: bool = True) -> np.ndarray:
        """Images ``indices`` (k,) → (k, D, D) float32, reading each stack once."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(self)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"image index out of range for {n} images")
        idx = np.where(idx < 0, idx + n, idx)
        out = np.empty((idx.size, self.box, self.box), dtype=np.float32)
        files = self.file_index[idx]
        for f in np.unique(files):
            pos = np.flatnonzero(files == f)
            k = self.image_index[idx[pos]]
            order = np.argsort(k, kind="stable")
            out[pos[order]] = self._map(int(f))[k[order]]
        if check_finite:
            bad = ~np.isfinite(out).reshape(len(out), -1).all(axis=1)
            if bad.any():
                j = int(np.flatnonzero(bad)[0])
                raise InputError(
                    f"image {self.names[idx[j]]!r} (particle {idx[j] + 1}) contains NaN or infinite pixels; "
                    "remove the particle (e.g. with --ind) or re-extract it"
                )
        return out

    def __getitem__(self, index) -> np.ndarray:
        if isinstance(index, (int, np.integer)):
            return self.read([index])[0]
        if isinstance(index, slice):
            index = np.arange(len(self))[index]
        return self.read(index)

    def __getstate__(self):  # DataLoader workers re-open their own memory maps
        state = self.__dict__.copy()
        state["_maps"] = OrderedDict()
        return state
