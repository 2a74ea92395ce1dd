"""Sliding windows over a micrograph and maps assembled from per-window values.

cryoSBI scans micrographs with a window (e.g. 256 px, stride 16), evaluates
the posterior on every window and maps the posterior mean/width at the window
centres. A window whose top-left pixel is (r, c) covers rows r … r+window−1 and
has its centre at pixel (r + window//2, c + window//2) (the image-grid
convention: pixel box//2 is a box's centre). Windows start at 0, stride, … and
only whole windows are taken.

:func:`iter_windows` yields the windows in bounded chunks (58 081 windows of
256² px would be 15 GB at once); :func:`extract_windows` concatenates them.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from cryoconf.errors import InputError

__all__ = ["extract_windows", "iter_windows", "window_grid", "windows_to_grid", "windows_to_map"]


def _check(micrograph, window: int, stride: int) -> torch.Tensor:
    m = torch.as_tensor(micrograph)
    if m.ndim != 2:
        raise InputError(f"micrograph must be a 2D (H, W) array; got shape {tuple(m.shape)}")
    if not m.is_floating_point():
        m = m.to(torch.float32)
    if int(window) < 1 or int(stride) < 1:
        raise InputError(f"window ({window}) and stride ({stride}) must be ≥ 1 pixel")
    if window > m.shape[0] or window > m.shape[1]:
        raise InputError(f"window {window} px is larger than the micrograph {tuple(m.shape)}")
    return m


def window_grid(shape, window: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-left rows and columns of the whole windows: ``(rows (n_r,), cols (n_c,))``."""
    h, w = int(shape[0]), int(shape[1])
    if window > h or window > w:
        raise InputError(f"window {window} px is larger than the micrograph {(h, w)}")
    return np.arange(0, h - window + 1, stride), np.arange(0, w - window + 1, stride)


def iter_windows(micrograph, window: int, stride: int, batch_size: int = 1024
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(windows (k, window, window), centres (k, 2) (row, col))`` with k ≤ ``batch_size``, row-major."""
    m = _check(micrograph, window, stride)
    rows, cols = window_grid(m.shape, window, stride)
    nc = len(cols)
    per_row = max(1, batch_size // nc)
    col_step = min(nc, max(1, batch_size))
    half = window // 2
    for r0 in range(0, len(rows), per_row):
        rr = rows[r0:r0 + per_row]
        for c0 in range(0, nc, col_step):
            cc = cols[c0:c0 + col_step]
            sub = m[rr[0]:rr[-1] + window, cc[0]:cc[-1] + window]
            u = F.unfold(sub[None, None], kernel_size=window, stride=stride)  # (1, window², k)
            wins = u[0].T.reshape(-1, window, window)
            cr, ccn = np.meshgrid(rr + half, cc + half, indexing="ij")
            centres = torch.as_tensor(np.stack([cr.ravel(), ccn.ravel()], 1), dtype=torch.long)
            yield wins, centres


def extract_windows(micrograph, window: int, stride: int, batch_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """All whole windows ``(K, window, window)`` and their centres ``(K, 2)`` (row, col), row-major.

    K = n_rows·n_cols with n = (size − window)//stride + 1. Memory is
    K·window² values; for large scans iterate :func:`iter_windows` instead.
    """
    parts = list(iter_windows(micrograph, window, stride, batch_size))
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def _grid_index(centres) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    c = np.asarray(torch.as_tensor(centres).cpu()).astype(np.int64)
    if c.ndim != 2 or c.shape[1] != 2:
        raise InputError(f"centres must be (K, 2) (row, col); got shape {c.shape}")
    ur, ir = np.unique(c[:, 0], return_inverse=True)
    uc, ic = np.unique(c[:, 1], return_inverse=True)
    return ur, uc, ir.reshape(-1), ic.reshape(-1)


def windows_to_grid(values, centres, fill=np.nan) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-window values (K,) or (K, C) → grid (n_r, n_c[, C]) over the distinct centre rows/cols, and those rows, cols."""
    v = np.asarray(torch.as_tensor(values).detach().cpu(), dtype=np.float64)
    ur, uc, ir, ic = _grid_index(centres)
    if v.shape[0] != ir.shape[0]:
        raise InputError(f"{v.shape[0]} values for {ir.shape[0]} window centres")
    grid = np.full((len(ur), len(uc)) + v.shape[1:], fill, dtype=np.float64)
    grid[ir, ic] = v
    return grid, ur, uc


def windows_to_map(values, centres, shape, fill=np.nan) -> np.ndarray:
    """Per-window values (K,) or (K, C) → map (H, W[, C]): each pixel takes its nearest window centre's value.

    Nearest is per axis on the grid of centre rows/cols (ties → the earlier
    centre); pixels more than half a grid step beyond the outermost centres,
    and grid cells without a value, get ``fill``. With stride 1 the map holds
    each value exactly at its centre pixel.
    """
    grid, ur, uc = windows_to_grid(values, centres, fill)
    h, w = int(shape[0]), int(shape[1])

    def nearest(u: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        p = np.arange(n)
        j = np.clip(np.searchsorted(u, p), 0, len(u) - 1)
        jm = np.clip(j - 1, 0, len(u) - 1)
        j = np.where(np.abs(p - u[jm]) <= np.abs(u[j] - p), jm, j)
        step = np.diff(u).max() if len(u) > 1 else 1
        ok = (p >= u[0] - step / 2) & (p <= u[-1] + step / 2)
        return j, ok

    jr, okr = nearest(ur, h)
    jc, okc = nearest(uc, w)
    out = grid[jr[:, None], jc[None, :]]
    bad = ~(okr[:, None] & okc[None, :])
    out[bad] = fill
    return out
