"""Figures that say more than numbers (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def particle_montage(
    noisy: np.ndarray,
    path: str | Path,
    clean: np.ndarray | None = None,
    labels: list[str] | None = None,
    columns: int = 8,
) -> Path:
    """Save a PNG grid of particle images (k, D, D): a row of clean images above each row of noisy ones.

    Images are shown with y up (row 0 at the bottom), as in RELION and ChimeraX.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(noisy)
    columns = max(1, min(columns, k))
    blocks = int(np.ceil(k / columns))
    rows_per_block = 2 if clean is not None else 1
    fig, axes = plt.subplots(blocks * rows_per_block, columns,
                             figsize=(1.6 * columns, 1.7 * blocks * rows_per_block), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i in range(k):
        b, c = divmod(i, columns)
        stacks = [("clean", clean), ("noisy", noisy)] if clean is not None else [("", noisy)]
        for r, (kind, images) in enumerate(stacks):
            ax = axes[b * rows_per_block + r, c]
            ax.imshow(images[i], cmap="gray", origin="lower")
            title = f"{i + 1}" + (f" {kind}" if kind else "")
            if labels is not None:
                title += f"\n{labels[i]}"
            ax.set_title(title, fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
