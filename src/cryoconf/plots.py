"""Figures that say more than numbers (matplotlib, headless).

Every figure of cryoconf is made with :func:`new_figure` and written with
:func:`save_figure`: matplotlib's object-oriented ``Figure``, never pyplot, so
plotting from cryoconf neither switches the caller's backend (a notebook keeps
its inline plots) nor leaves figures open; PNGs are written atomically.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cryoconf.atomic_write import atomic_path

__all__ = ["new_figure", "save_figure", "particle_montage"]


def new_figure(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float], **subplots_kw):
    """(figure, axes) like ``pyplot.subplots`` but outside pyplot: no backend, no global state.
    ``subplots_kw`` go to ``Figure.subplots`` (``squeeze``, ``sharex``, ``subplot_kw``, …)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **subplots_kw)


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Lay out ``fig`` and write it to ``path`` (format from the suffix, PNG by default;
    parent folders created; written to a temporary file, then renamed). Returns the path."""
    path = Path(path)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".").lower() or "png", dpi=dpi)
    return path


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
    k = len(noisy)
    columns = max(1, min(columns, k))
    blocks = int(np.ceil(k / columns))
    rows_per_block = 2 if clean is not None else 1
    fig, axes = new_figure(blocks * rows_per_block, columns,
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
    return save_figure(fig, path)
