"""3D density maps of Gaussian pseudo-atoms, MRC I/O, Fourier shell correlation and NMSE.

**Grid** (the 3D version of the image grid): a cubic map of ``box`` voxels of edge
``voxel_A`` is an array ``[z, y, x]``; voxel (k, i, j) sits at
``((j − box//2)·voxel_A, (i − box//2)·voxel_A, (k − box//2)·voxel_A)`` Å, so the
origin of the coordinates is voxel (box//2, box//2, box//2). Projecting such a
map along z (summing over k, times ``voxel_A``) gives the image of
:func:`cryoconf.imaging.projection.project_gaussians` with ``apix_A = voxel_A``.

**Gaussians** (the projector's conventions): a pseudo-atom of amplitude ``a``
(its integral, e.g. electrons) and standard deviation ``σ`` (Å) has density
``a/((2π)^{3/2}σ³)·exp(−r²/2σ²)`` per Å³, so ``map.sum()·voxel_A³ = Σ a`` for a
contained structure. ``method="point"`` samples the density at voxel centres;
``"voxel"`` averages it over each voxel (differences of erf, exact integral at
any σ). The density is separable, ``Σ_j a_j gz_j[k] gy_j[i] gx_j[j]``, and is
computed as matmuls over chunks of atoms sorted by z: a chunk touches only the
z-slab its atoms reach (±6σ), so the cost is O(N_atoms·L·box²) with L the slab
thickness, and memory is bounded by the chunk size, never N_atoms × box³.

**MRC files** written here carry the voxel size and the header origin
``(−box//2·voxel_A)`` on each axis, so that the map overlays the atomic model in
ChimeraX/Coot at the coordinates above.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import mrcfile
import numpy as np
import torch

from cryoconf.errors import InputError
from cryoconf.atomic_write import atomic_path

__all__ = [
    "density_map",
    "mean_density_map",
    "auto_box",
    "write_mrc",
    "read_mrc",
    "MapData",
    "FSCResult",
    "fsc",
    "fsc_resolution",
    "nmse",
]

_N_SIGMA = 6.0
_ELEMENT_BUDGET = 4_000_000  # floats in one chunk's (atoms × slab) matrix


def _per_atom(value, n: int, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(value, dtype=np.float64) if not isinstance(value, torch.Tensor) else value,
                        dtype=torch.float64)
    if t.ndim == 0:
        t = t.expand(n)
    if t.shape != (n,):
        raise InputError(f"{name} has shape {tuple(t.shape)}; expected a scalar or one value per pseudo-atom ({n},)")
    return t


def _profiles(grid: torch.Tensor, centre: torch.Tensor, sig: torch.Tensor, method: str) -> torch.Tensor:
    """Normalised 1D profiles (J, L) in voxel units: point samples or voxel means of a unit Gaussian."""
    if method == "point":
        z = (grid[None, :] - centre[:, None]) / sig[:, None]
        return torch.exp(-0.5 * z * z) / (math.sqrt(2.0 * math.pi) * sig[:, None])
    edges = torch.cat([grid - 0.5, grid[-1:] + 0.5])
    e = torch.erf((edges[None, :] - centre[:, None]) / (math.sqrt(2.0) * sig[:, None]))
    return 0.5 * (e[:, 1:] - e[:, :-1])


def density_map(coords_A, amplitudes, sigmas_A, box: int, voxel_A: float, *, method: str = "point",
                dtype: torch.dtype = torch.float64, element_budget: int = _ELEMENT_BUDGET) -> torch.Tensor:
    """Density (box, box, box) ``[z, y, x]`` in amplitude per Å³ of Gaussian pseudo-atoms.

    ``coords_A`` (N, 3) Å; ``amplitudes`` and ``sigmas_A`` scalars or (N,).
    ``method``: ``"point"`` (values at voxel centres) or ``"voxel"`` (voxel means).
    Returns a CPU tensor of ``dtype`` (computed in float64).
    """
    if method not in ("point", "voxel"):
        raise InputError(f"map method {method!r} is unknown; use 'point' or 'voxel'")
    box = int(box)
    if box < 1 or not voxel_A > 0:
        raise InputError(f"box ({box}) must be ≥ 1 and voxel_A ({voxel_A}) > 0")
    x = torch.as_tensor(np.asarray(coords_A, dtype=np.float64) if not isinstance(coords_A, torch.Tensor) else coords_A,
                        dtype=torch.float64).cpu()
    if x.ndim != 2 or x.shape[-1] != 3:
        raise InputError(f"coords_A has shape {tuple(x.shape)}; expected (N, 3) in Å (use mean_density_map for ensembles)")
    if not bool(torch.isfinite(x).all()):
        raise InputError("coords_A contains NaN or infinite coordinates")
    n = x.shape[0]
    amp = _per_atom(amplitudes, n, "amplitudes")
    sig = _per_atom(sigmas_A, n, "sigmas_A") / voxel_A
    if bool((sig <= 0).any()):
        raise InputError("sigmas_A must be > 0 (Gaussian widths in Å)")
    out = torch.zeros(box, box, box, dtype=torch.float64)
    if n == 0:
        return out.to(dtype)
    centre = x / voxel_A + box // 2  # (N, 3) in voxel-index units, (x, y, z)
    grid = torch.arange(box, dtype=torch.float64)
    order = torch.argsort(centre[:, 2])
    centre, amp, sig = centre[order], amp[order] / voxel_A ** 3, sig[order]
    chunk = max(1, element_budget // (box * box))
    for s in range(0, n, chunk):
        c, a, sg = centre[s:s + chunk], amp[s:s + chunk], sig[s:s + chunk]
        reach = _N_SIGMA * float(sg.max()) + 1.0
        z0 = max(0, int(math.floor(float(c[:, 2].min()) - reach)))
        z1 = min(box, int(math.ceil(float(c[:, 2].max()) + reach)) + 1)
        if z0 >= z1:
            continue
        gz = _profiles(grid[z0:z1], c[:, 2], sg, method) * a[:, None]  # (J, L)
        gy = _profiles(grid, c[:, 1], sg, method)  # (J, box)
        gx = _profiles(grid, c[:, 0], sg, method)  # (J, box)
        zy = (gz[:, :, None] * gy[:, None, :]).reshape(c.shape[0], -1)  # (J, L·box)
        out[z0:z1] += (zy.T @ gx).view(z1 - z0, box, box)
    return out.to(dtype)


def mean_density_map(coords_A, amplitudes, sigmas_A, box: int, voxel_A: float, **kwargs) -> torch.Tensor:
    """Mean map (box, box, box) of an ensemble ``coords_A`` (M, N, 3): the map of all M·N atoms at amplitude a/M."""
    x = np.asarray(coords_A, dtype=np.float64)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3 or x.shape[-1] != 3 or x.shape[0] == 0:
        raise InputError(f"coords_A has shape {x.shape}; expected (M, N, 3) with M ≥ 1")
    m, n = x.shape[:2]
    amp = np.broadcast_to(np.asarray(amplitudes, dtype=np.float64), (n,)) / m
    sig = np.broadcast_to(np.asarray(sigmas_A, dtype=np.float64), (n,))
    return density_map(x.reshape(-1, 3), np.tile(amp, m), np.tile(sig, m), box, voxel_A, **kwargs)


def auto_box(coords_A, sigmas_A, voxel_A: float, margin_sigma: float = 4.0) -> int:
    """Smallest even box (voxels) holding every atom of ``coords_A`` (…, N, 3) within ±``margin_sigma``·σ of the grid origin."""
    x = np.asarray(coords_A, dtype=np.float64).reshape(-1, 3)
    half = float(np.abs(x).max()) + margin_sigma * float(np.max(sigmas_A)) + voxel_A
    box = 2 * int(math.ceil(half / voxel_A))
    return max(box, 2)


# ----------------------------------------------------------------------------------------------- MRC


@dataclass
class MapData:
    """A map read from MRC: ``data`` [z, y, x] float32, isotropic ``voxel_A``, header ``origin_A`` (x, y, z) Å."""

    data: np.ndarray
    voxel_A: float
    origin_A: np.ndarray


def write_mrc(path, volume, voxel_A: float, origin_A=None) -> None:
    """Write a 3D map ``volume`` [z, y, x] to MRC (mode 2, float32), atomically (temp file + rename).

    ``origin_A`` (x, y, z) Å for the header; default ``−(n//2)·voxel_A`` per axis, the
    position of voxel 0 on this module's grid (see the module docstring).
    """
    vol = volume.detach().cpu().numpy() if isinstance(volume, torch.Tensor) else np.asarray(volume)
    vol = np.ascontiguousarray(vol, dtype=np.float32)
    if vol.ndim != 3:
        raise InputError(f"{path}: a map must be 3D [z, y, x]; got shape {vol.shape}")
    if not np.isfinite(vol).all():
        raise InputError(f"{path}: the map to write contains NaN or infinite voxels")
    if not voxel_A > 0:
        raise InputError(f"{path}: voxel size must be > 0 Å (got {voxel_A})")
    nz, ny, nx = vol.shape
    if origin_A is None:
        origin_A = (-(nx // 2) * voxel_A, -(ny // 2) * voxel_A, -(nz // 2) * voxel_A)
    with atomic_path(path) as tmp, mrcfile.new(tmp, overwrite=True) as mrc:
        mrc.set_data(vol)
        mrc.voxel_size = float(voxel_A)
        mrc.header.origin = tuple(float(o) for o in origin_A)


def read_mrc(path) -> MapData:
    """Read a 3D MRC map as [z, y, x] float32 (axes reordered when the header's MAPC/MAPR/MAPS say so)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"{path}: file not found; check the path")
    try:
        with mrcfile.open(path, permissive=True) as mrc:
            data = np.asarray(mrc.data, dtype=np.float32)
            vs = mrc.voxel_size
            voxel = np.array([float(vs.x), float(vs.y), float(vs.z)])
            origin = np.array([float(mrc.header.origin.x), float(mrc.header.origin.y), float(mrc.header.origin.z)])
            axes = (int(mrc.header.mapc), int(mrc.header.mapr), int(mrc.header.maps))
    except (ValueError, OSError) as exc:
        raise InputError(f"{path}: cannot be read as an MRC map ({exc})") from exc
    if data is None or data.ndim != 3:
        raise InputError(f"{path}: expected a 3D map, got data of shape {None if data is None else data.shape}")
    if sorted(axes) == [1, 2, 3] and axes != (1, 2, 3):
        # file order is [sec, row, col] = axes (maps, mapr, mapc); move to [z, y, x]
        file_axes = [axes[2], axes[1], axes[0]]  # the physical axis (1=x,2=y,3=z) of each array dimension
        data = np.transpose(data, [file_axes.index(a) for a in (3, 2, 1)])
    if not np.all(voxel > 0):
        raise InputError(f"{path}: the header has no voxel size ({voxel.tolist()} Å); set it (e.g. mrcfile or relion_image_handler --angpix)")
    if np.ptp(voxel) > 1e-4 * voxel.max():
        raise InputError(f"{path}: anisotropic voxels {voxel.tolist()} Å are not supported; resample the map to cubic voxels")
    return MapData(data=np.ascontiguousarray(data), voxel_A=float(voxel[0]), origin_A=origin)


# ------------------------------------------------------------------------------------------- FSC, NMSE


@dataclass
class FSCResult:
    """Fourier shell correlation of two cubic maps.

    Attributes:
        frequency_invA: (S,) shell frequencies r/(box·voxel_A), r = 0 … box//2, 1/Å.
        fsc: (S,) correlation per shell (float64).
        n_voxels: (S,) Fourier voxels per shell (full spectrum).
    """

    frequency_invA: np.ndarray
    fsc: np.ndarray
    n_voxels: np.ndarray

    def resolution_A(self, threshold: float) -> float | None:
        """Resolution (Å) at which the FSC first falls below ``threshold``; see :func:`fsc_resolution`."""
        return fsc_resolution(self.frequency_invA, self.fsc, threshold)


def _volume(x, name: str) -> np.ndarray:
    v = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    v = np.asarray(v, dtype=np.float64)
    if v.ndim != 3:
        raise InputError(f"{name} must be a 3D map; got shape {v.shape}")
    return v


def fsc(map_a, map_b, voxel_A: float = 1.0) -> FSCResult:
    """FSC between two cubic maps [z, y, x] of equal shape, in shells one Fourier voxel wide.

    Shell r holds the Fourier voxels with round(|k|) = r, |k| in Fourier-voxel units,
    r = 0 … box//2 (the corners beyond Nyquist are left out);
    ``FSC(r) = Re Σ F_a F_b* / √(Σ|F_a|² Σ|F_b|²)`` in float64 (0 where a shell has no power).
    """
    a, b = _volume(map_a, "map_a"), _volume(map_b, "map_b")
    if a.shape != b.shape:
        raise InputError(f"FSC needs maps of the same shape; got {a.shape} and {b.shape}")
    n = a.shape[0]
    if a.shape != (n, n, n):
        raise InputError(f"FSC needs cubic maps; got shape {a.shape}")
    fa, fb = np.fft.rfftn(a), np.fft.rfftn(b)
    kz = np.fft.fftfreq(n) * n
    kx = np.fft.rfftfreq(n) * n
    radius = np.sqrt(kz[:, None, None] ** 2 + kz[None, :, None] ** 2 + kx[None, None, :] ** 2)
    shell = np.rint(radius).astype(np.int64)
    # weights: columns present twice in the full (Hermitian) spectrum count twice
    w = np.full(kx.size, 2.0)
    w[0] = 1.0
    if n % 2 == 0:
        w[-1] = 1.0
    w = np.broadcast_to(w, shell.shape)
    n_shells = n // 2 + 1
    keep = shell < n_shells
    s, wk = shell[keep], w[keep]
    num = np.bincount(s, wk * np.real(fa * np.conj(fb))[keep], minlength=n_shells)
    pa = np.bincount(s, wk * (np.abs(fa) ** 2)[keep], minlength=n_shells)
    pb = np.bincount(s, wk * (np.abs(fb) ** 2)[keep], minlength=n_shells)
    count = np.bincount(s, wk, minlength=n_shells)
    den = np.sqrt(pa * pb)
    curve = np.divide(num, den, out=np.zeros(n_shells), where=den > 0)
    freq = np.arange(n_shells) / (n * voxel_A)
    return FSCResult(frequency_invA=freq, fsc=curve, n_voxels=count.astype(np.int64))


def fsc_resolution(frequency_invA, curve, threshold: float) -> float | None:
    """Resolution 1/f (Å) at the first crossing of ``threshold`` by the FSC curve.

    Searches from shell 1 (the DC shell 0 is skipped) for the first shell whose FSC is
    below ``threshold`` and interpolates the frequency linearly between it and the shell
    before. Returns ``None`` when the curve never falls below ``threshold`` (the maps
    agree to the Nyquist frequency: the resolution is limited by the sampling, better than
    ``1/frequency_invA[-1]``), and ``inf`` when the crossing is at frequency 0.
    """
    f = np.asarray(frequency_invA, dtype=np.float64)
    c = np.asarray(curve, dtype=np.float64)
    below = np.flatnonzero(c[1:] < threshold)
    if below.size == 0:
        return None
    k = int(below[0]) + 1
    c0, c1 = c[k - 1], c[k]
    t = 0.0 if c0 <= threshold else (c0 - threshold) / (c0 - c1)
    freq = f[k - 1] + t * (f[k] - f[k - 1])
    return math.inf if freq <= 0 else float(1.0 / freq)


def nmse(a, b, scale: bool = False) -> float:
    """Normalised mean squared error ‖a − b‖² / ‖b‖² of map ``a`` against the reference ``b``.

    With ``scale``, ``a`` is first multiplied by the least-squares scale ⟨a, b⟩/⟨a, a⟩.
    """
    x, y = _volume(a, "a"), _volume(b, "b")
    if x.shape != y.shape:
        raise InputError(f"NMSE needs maps of the same shape; got {x.shape} and {y.shape}")
    ref = float((y * y).sum())
    if ref <= 0:
        raise InputError("NMSE: the reference map is all zeros")
    if scale:
        aa = float((x * x).sum())
        x = x * (float((x * y).sum()) / aa if aa > 0 else 0.0)
    return float(((x - y) ** 2).sum() / ref)
