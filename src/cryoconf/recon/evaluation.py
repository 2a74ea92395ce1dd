"""Accuracy of predicted structures against known ones (simulated data): what the recon benchmarks report.

:func:`structure_accuracy` compares per-particle predictions with the particles' true
structures (Cα, Kabsch-aligned): the EMD-RMSD between the two sets (Prins et al.,
appendix G: optimal one-to-one pairing), the mean per-particle RMSD, and the Pearson
correlation of a progress coordinate, RMSD to ``start`` − RMSD to ``end``.
:func:`constant_predictors` gives the same figures for predicting one structure for
every particle (the base, and the best single reference frame).
"""

from __future__ import annotations

import numpy as np

from cryoconf.dynamics.metrics import emd_rmsd, paired_rmsd, rmsd_matrix

__all__ = ["structure_accuracy", "progress_coordinate", "constant_predictors"]


def progress_coordinate(coords, start, end) -> np.ndarray:
    """RMSD(x, start) − RMSD(x, end) (n,) Å for structures ``coords`` (n, N, 3), aligned."""
    refs = np.stack([np.asarray(start), np.asarray(end)])
    d = rmsd_matrix(coords, refs)
    return d[:, 0] - d[:, 1]


def structure_accuracy(pred, truth, start=None, end=None) -> dict:
    """EMD-RMSD, mean and median per-particle RMSD (Å) and progress correlation of ``pred`` vs ``truth`` (n, N, 3)."""
    pred, truth = np.asarray(pred, np.float64), np.asarray(truth, np.float64)
    per = paired_rmsd(pred, truth)
    out = {"n": int(pred.shape[0]), "emd_rmsd_A": float(emd_rmsd(pred, truth).distance),
           "mean_rmsd_A": float(per.mean()), "median_rmsd_A": float(np.median(per))}
    if start is not None and end is not None:
        pp, pt = progress_coordinate(pred, start, end), progress_coordinate(truth, start, end)
        out["progress_pearson_r"] = float(np.corrcoef(pp, pt)[0, 1]) if pp.std() > 1e-9 else 0.0
    return out


def constant_predictors(truth, references, base_index: int = 0) -> dict:
    """Every particle predicted as ``references[base_index]``, and as the best single reference
    (the one with the lowest mean RMSD to the truth set): their EMD-RMSD (= mean RMSD here)."""
    truth = np.asarray(truth, np.float64)
    d = rmsd_matrix(truth, np.asarray(references, np.float64))  # (n, M)
    mean = d.mean(0)
    best = int(np.argmin(mean))
    return {"base": {"reference": int(base_index), "emd_rmsd_A": float(mean[base_index])},
            "best_single": {"reference": best, "emd_rmsd_A": float(mean[best])}}
