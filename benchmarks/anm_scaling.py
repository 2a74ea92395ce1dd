"""ANM scaling: wall time and peak memory of the first 20 non-rigid modes vs. structure size.

Prints one JSON object. Each measurement runs in a fresh subprocess so that the
peak resident set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``, which,
unlike tracemalloc, sees numpy/scipy/SuperLU C allocations) belongs to that
size alone; ``baseline_rss_MiB`` is the same process's peak before the ANM call
(interpreter, imports, input structure).

Structures:
- ``adk``: adenylate kinase Cα (214), frame 0 of ../shared/data/adk (or
  MDAnalysisTests' PSF + DCD2 when the shared data are absent);
- ``hsp90``: Hsp90 model 0 (1207 Cα), ../shared/data/hsp90/hsp90_models.pt;
- ``hsp90_nK``: the first K residues of Hsp90 model 0 (dense/sparse cross-over);
- ``hsp90_xC``: C copies of Hsp90 model 0 on a lattice whose spacing along each
  axis is chosen so that neighbouring copies come within ``CONTACT_A`` (< the
  15 Å cutoff) of each other: one connected network (12 copies = 14,484 Cα).

Usage: ``python benchmarks/anm_scaling.py`` (all cases; < 1 min on 2 cores), or
``--quick`` (skip the dense/sparse cross-over at larger sizes).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CRYOCONF_SHARED_DATA", REPO.parent / "shared" / "data"))
CUTOFF_A = 15.0
N_MODES = 20
#: closest approach (Å) of neighbouring copies in the lattice: inside the cutoff, no clash
CONTACT_A = 8.0
LATTICES = {1: (1, 1, 1), 2: (2, 1, 1), 3: (3, 1, 1), 4: (2, 2, 1), 12: (3, 2, 2)}


def adk_coords() -> np.ndarray:
    from cryoconf.structure import read_conformations

    psf, dcd = SHARED / "adk" / "adk4ake.psf", SHARED / "adk" / "dims0001_fit-core.dcd"
    if not psf.exists():
        from MDAnalysisTests.datafiles import DCD2, PSF  # the same trajectory, pip install MDAnalysisTests

        psf, dcd = PSF, DCD2
    return read_conformations(psf, dcd, frames="0").coords_A[0].astype(np.float64)


def hsp90_coords() -> np.ndarray:
    import torch

    models = torch.load(SHARED / "hsp90" / "hsp90_models.pt")
    return np.asarray(models[0], dtype=np.float64).T.copy()  # (3, 1207) → (1207, 3)


def _min_distance(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.spatial import cKDTree

    return float(cKDTree(b).query(a, k=1)[0].min())


def lattice_spacing(x: np.ndarray, contact_A: float = CONTACT_A) -> np.ndarray:
    """Per-axis translation at which a copy's closest approach to the original is ``contact_A``."""
    spacing = np.zeros(3)
    for axis in range(3):
        lo, hi = 0.0, float(np.ptp(x[:, axis])) + contact_A + 1.0
        e = np.eye(3)[axis]
        for _ in range(40):  # bisection: min distance grows with the shift
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if _min_distance(x, x + mid * e) < contact_A else (lo, mid)
        spacing[axis] = hi
    return spacing


def tiled(x: np.ndarray, copies: int) -> np.ndarray:
    nx, ny, nz = LATTICES[copies]
    x = x - x.mean(axis=0)
    s = lattice_spacing(x)
    shifts = np.array([(a, b, c) for a in range(nx) for b in range(ny) for c in range(nz)], dtype=float) * s
    return np.concatenate([x + t for t in shifts])


def structure(name: str) -> np.ndarray:
    if name == "adk":
        return adk_coords()
    if name == "hsp90":
        return hsp90_coords()
    if name.startswith("hsp90_n"):
        return hsp90_coords()[: int(name[len("hsp90_n"):])]
    if name.startswith("hsp90_x"):
        return tiled(hsp90_coords(), int(name[len("hsp90_x"):]))
    raise SystemExit(f"unknown case {name}")


def measure(name: str, method: str) -> dict:
    """Runs in the child process."""
    from cryoconf.dynamics.anm import compute_anm_modes, contact_components

    x = structure(name)
    n_comp, _ = contact_components(x, CUTOFF_A)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    modes = compute_anm_modes(x, n_modes=N_MODES, cutoff_A=CUTOFF_A, method=method)
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "case": name, "n_atoms": int(len(x)), "method": method, "method_used": modes.method,
        "n_modes": N_MODES, "cutoff_A": CUTOFF_A, "contact_components": n_comp,
        "wall_s": round(wall, 3), "peak_rss_MiB": round(peak / 1024, 1),
        "baseline_rss_MiB": round(base / 1024, 1),
        "lambda_first": float(modes.eigenvalues[0]), "lambda_last": float(modes.eigenvalues[-1]),
    }


def run_child(name: str, method: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", name, method], capture_output=True, text=True,
                         check=False, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    if out.returncode != 0:
        return {"case": name, "method": method, "error": out.stderr.strip().splitlines()[-1:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", nargs=2, metavar=("CASE", "METHOD"), help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="only the auto method on adk, hsp90, hsp90_x12")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(*args.child)))
        return
    from cryoconf import __version__
    from cryoconf.dynamics import anm

    scaling = [run_child(c, "auto") for c in ("adk", "hsp90", "hsp90_x12")]
    crossover = []
    if not args.quick:
        for case in ("adk", "hsp90_n400", "hsp90_n600", "hsp90"):
            for method in ("dense", "sparse"):
                crossover.append(run_child(case, method))
        for case in ("hsp90_x2", "hsp90_x3", "hsp90_x4"):
            crossover.append(run_child(case, "sparse"))
    print(json.dumps({
        "benchmark": "anm_scaling", "cryoconf": __version__, "n_modes": N_MODES, "cutoff_A": CUTOFF_A,
        "dense_max_atoms": anm.DENSE_MAX_ATOMS, "cpu_count": os.cpu_count(), "platform": platform.platform(),
        "peak_memory": "ru_maxrss of a fresh subprocess per case",
        "scaling": scaling, "dense_vs_sparse": crossover,
    }, indent=1))


if __name__ == "__main__":
    main()
