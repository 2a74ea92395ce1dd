"""Figures: written as PNG files without touching pyplot (a notebook keeps its backend and figures)."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest

from cryoconf.plots import new_figure, particle_montage, save_figure
from cryoconf.rundir import LossCurve


@pytest.fixture
def svg_backend():
    import matplotlib.pyplot as plt

    before = matplotlib.get_backend()
    plt.switch_backend("svg")
    yield plt
    plt.close("all")
    plt.switch_backend(before)


def test_figures_leave_the_callers_backend_and_figures_alone(svg_backend, tmp_path):
    plt = svg_backend
    mine = plt.figure()
    images = np.random.default_rng(0).normal(size=(3, 8, 8))
    montage = particle_montage(images, tmp_path / "sub" / "montage.png", clean=images)
    curve = LossCurve(tmp_path, ["train_loss"])
    curve.add(1, train_loss=2.0)
    curve.add(2, train_loss=1.0)
    curve.flush()
    loss = curve.plot(title="t")
    fig, axes = new_figure(1, 2, figsize=(4, 2), squeeze=False)
    axes[0, 1].plot([0, 1], [1, 0])
    vector = save_figure(fig, tmp_path / "plot.pdf")
    assert matplotlib.get_backend() == "svg"
    assert plt.get_fignums() == [mine.number]
    for path in (montage, loss):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert vector.read_bytes()[:5] == b"%PDF-"
    assert not list(tmp_path.rglob("*.tmp"))
