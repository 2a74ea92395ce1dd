"""Adaptive orientation refinement of the explicit-likelihood baseline (cryoconf.baseline.refinement)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cryoconf.baseline import BaselineConfig, TemplateSet, score_particles
from cryoconf.baseline.refinement import cell_children, grid_spacing_rad, log_subtract_exp
from cryoconf.errors import InputError
from cryoconf.imaging.ctf import CTFParams
from cryoconf.imaging.forward import render_images
from cryoconf.imaging.rotations import random_rotations

BOX, APIX = 32, 2.0


def _angle(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Rotation angle (rad) between pose matrices a and b (…, 3, 3)."""
    tr = torch.einsum("...ij,...ij->...", a, b)
    return torch.arccos(((tr - 1.0) / 2.0).clamp(-1.0, 1.0))


def test_grid_spacing_is_the_side_of_equal_cells():
    assert math.degrees(grid_spacing_rad(36864)) == pytest.approx(7.38, abs=0.01)
    for n in (72, 4608, 1000):
        assert n * grid_spacing_rad(n) ** 3 == pytest.approx(8 * math.pi**2)


def test_cell_children_are_the_octant_centres():
    g = torch.Generator().manual_seed(1)
    parents = random_rotations(3, generator=g, dtype=torch.float64)
    h = 0.2
    kids = cell_children(parents, h)
    assert kids.shape == (24, 3, 3)
    # each child is √3·h/4 from its parent, and the 8 children of a cell are distinct
    ang = _angle(kids.view(3, 8, 3, 3), parents[:, None])
    assert torch.allclose(ang, torch.full_like(ang, math.sqrt(3) * h / 4), atol=1e-9)
    for k in range(3):
        c = kids[8 * k:8 * k + 8]
        pair = _angle(c[:, None], c[None])
        assert float(pair[~torch.eye(8, dtype=torch.bool)].min()) > 0.99 * h / 2  # h/2 to first order
    # the children are symmetric about the parent: their mean is the parent (to second order)
    mean = kids.view(3, 8, 3, 3).mean(1)
    assert float(_angle(mean / torch.linalg.det(mean)[:, None, None] ** (1 / 3), parents).max()) < 1e-2
    # children of children halve again
    grand = cell_children(kids[:8], h / 2)
    ang2 = _angle(grand.view(8, 8, 3, 3), kids[:8, None])
    assert torch.allclose(ang2, torch.full_like(ang2, math.sqrt(3) * h / 8), atol=1e-9)


def test_log_subtract_exp():
    a = torch.tensor([3.0, 10.0, -2.0, 1.0, 1.0], dtype=torch.float64)
    b = torch.tensor([1.0, 9.9, -50.0, 1.0, 2.0], dtype=torch.float64)
    out = log_subtract_exp(a, b)
    ref = np.log(np.exp(a.numpy()[:3]) - np.exp(b.numpy()[:3]))
    assert np.allclose(out[:3].numpy(), ref, rtol=0, atol=1e-12)
    assert torch.isinf(out[3:]).all() and (out[3:] < 0).all()


def _ctf(n: int, defocus_A: float = 15000.0) -> CTFParams:
    return CTFParams.create(torch.full((n,), defocus_A), bfactor_A2=20.0)


@pytest.mark.parametrize("levels", [1, 3])
def test_refinement_keeps_the_total_weight(levels):
    """A template at the rotation centre looks the same at every orientation: the orientation
    integral is that one value whatever the cells, so refinement must not change it."""
    coords = torch.zeros(2, 3, 3)
    coords[1, 1] = 0.01  # a second template, almost the same
    tm = TemplateSet(coords, torch.tensor([10.0, 5.0, 5.0]), torch.full((3,), 3.0), np.array([0.0, 1.0]))
    g = torch.Generator().manual_seed(2)
    img = torch.randn(3, BOX, BOX, generator=g)
    base = {"n_orientations": 72, "shift_range_A": 2.0, "shift_step_A": 2.0, "defocus_offsets_A": (-300.0, 0.0)}
    coarse = score_particles(tm, img, APIX, BaselineConfig(**base), ctf=_ctf(3))
    refined = score_particles(tm, img, APIX, BaselineConfig(**base, refine_levels=levels, refine_cells=5), ctf=_ctf(3))
    assert np.allclose(refined.log_likelihood, coarse.log_likelihood, rtol=0, atol=2e-3)


def _bent_templates(n_templates: int = 3) -> TemplateSet:
    """A rod along x bending by 1.5 Å more per template (small changes: the pose matters)."""
    g = torch.Generator().manual_seed(0)
    n = 60
    base = torch.randn(n, 3, generator=g) * torch.tensor([12.0, 4.0, 4.0])
    bend = torch.zeros(n, 3)
    bend[:, 1] = (base[:, 0] / 12.0) ** 2
    coords = torch.stack([base + 1.5 * m * bend for m in range(n_templates)])
    return TemplateSet(coords, torch.full((n,), 10.0), torch.full((n,), 1.5), np.arange(n_templates, dtype=float))


def _noisy_particles(tm: TemplateSet, noise: float, seed: int = 5):
    g = torch.Generator().manual_seed(seed)
    poses = random_rotations(6, generator=g)  # off every grid
    ctf = _ctf(6)
    img = render_images(tm.coords_A[1], tm.amplitudes_e, tm.sigmas_A, poses, torch.zeros(6, 2), ctf, BOX, APIX)
    return img + noise * img.std() * torch.randn(img.shape, generator=g), ctf, poses


GRID = {"shift_range_A": 0.0, "shift_step_A": 2.0, "defocus_offsets_A": (0.0,)}


def test_refinement_approaches_a_finer_grid():
    """576 orientations (29.6° apart) refined twice (7.4° cells near the likelihood) against the
    36,864-point grid (7.4° everywhere), at a noise where that grid is converged (it differs from
    294,912 orientations by 0.1 nats here)."""
    tm = _bent_templates()
    img, ctf, _ = _noisy_particles(tm, noise=4.0)
    fine = score_particles(tm, img, APIX, BaselineConfig(n_orientations=36864, **GRID), ctf=ctf)
    coarse = score_particles(tm, img, APIX, BaselineConfig(n_orientations=576, **GRID), ctf=ctf)
    refined = score_particles(tm, img, APIX, BaselineConfig(n_orientations=576, refine_levels=2, refine_cells=8, **GRID),
                              ctf=ctf)

    def rel(r):  # ln-likelihood differences between templates: what the posterior depends on
        return r.log_likelihood - r.log_likelihood[:, :1]

    err_coarse = np.abs(rel(coarse) - rel(fine)).max()
    err_refined = np.abs(rel(refined) - rel(fine)).max()
    assert err_coarse > 1.0
    assert err_refined < 0.25 * err_coarse, (err_refined, err_coarse)
    assert np.array_equal(refined.best_orientation, coarse.best_orientation)
    assert (refined.best_log_likelihood >= coarse.best_log_likelihood - 1e-3).all()


def test_refinement_finds_a_better_pose():
    tm = _bent_templates()
    img, ctf, poses = _noisy_particles(tm, noise=2.0)
    coarse = score_particles(tm, img, APIX, BaselineConfig(n_orientations=576, **GRID), ctf=ctf)
    refined = score_particles(tm, img, APIX, BaselineConfig(n_orientations=576, refine_levels=2, refine_cells=8, **GRID),
                              ctf=ctf)
    a_coarse = _angle(torch.from_numpy(coarse.best_rotation[:, 1]), poses.double())
    a_refined = _angle(torch.from_numpy(refined.best_rotation[:, 1]), poses.double())
    assert float(a_refined.mean()) < 0.5 * float(a_coarse.mean()), (a_refined, a_coarse)
    assert np.allclose(refined.map_rotation(), refined.best_rotation[np.arange(6), refined.map_template])


def test_refinement_settings_are_validated():
    with pytest.raises(InputError, match="refine-levels"):
        BaselineConfig(refine_levels=-1).validate()
    with pytest.raises(InputError, match="refine-cells"):
        BaselineConfig(refine_cells=0).validate()
