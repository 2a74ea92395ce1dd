"""3D maps: Gaussian splatting vs the analytic density, grid convention, MRC round trip, FSC, NMSE."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cryoconf.dynamics.maps import (
    auto_box,
    density_map,
    fsc,
    fsc_resolution,
    mean_density_map,
    nmse,
    read_mrc,
    write_mrc,
)
from cryoconf.errors import InputError
from cryoconf.imaging.projection import project_gaussians


def _analytic(centre, amp, sigma, box, voxel):
    g = (np.arange(box) - box // 2) * voxel
    z, y, x = np.meshgrid(g, g, g, indexing="ij")
    r2 = (x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2
    return amp / ((2 * math.pi) ** 1.5 * sigma ** 3) * np.exp(-r2 / (2 * sigma ** 2))


@pytest.mark.parametrize("voxel,sigma", [(1.0, 1.5), (1.3, 2.0), (2.0, 2.0)])
def test_one_gaussian_integrates_to_amplitude_and_matches_analytic(voxel, sigma):
    centre = np.array([1.7, -2.3, 0.9])
    vol = density_map(centre[None], 42.0, sigma, 40, voxel).numpy()
    assert vol.shape == (40, 40, 40)
    assert vol.sum() * voxel ** 3 == pytest.approx(42.0, rel=1e-4)
    ref = _analytic(centre, 42.0, sigma, 40, voxel)
    np.testing.assert_allclose(vol, ref, atol=1e-9 * ref.max(), rtol=1e-9)
    # voxel-averaged sampling integrates exactly even for narrow Gaussians
    narrow = density_map(centre[None], 42.0, 0.3, 40, voxel, method="voxel").numpy()
    assert narrow.sum() * voxel ** 3 == pytest.approx(42.0, rel=1e-10)


def test_grid_convention_and_projection_consistency():
    # an atom at (x, y, z) = (3, -2, 5) Å peaks at voxel [z, y, x] = (N//2 + 5, N//2 − 2, N//2 + 3) with 1 Å voxels
    vol = density_map(np.array([[3.0, -2.0, 5.0]]), 1.0, 1.0, 33, 1.0).numpy()
    assert np.unravel_index(vol.argmax(), vol.shape) == (16 + 5, 16 - 2, 16 + 3)
    # summing along z (× voxel) gives the 2D projector's image
    rng = np.random.default_rng(0)
    x = rng.normal(scale=5.0, size=(50, 3))
    amps, sigs = rng.uniform(5, 10, 50), rng.uniform(1.2, 2.5, 50)
    vol = density_map(x, amps, sigs, 36, 1.25, element_budget=36 * 36 * 7)  # several atom chunks
    img = project_gaussians(torch.as_tensor(x), torch.as_tensor(amps), torch.as_tensor(sigs), 36, 1.25)[0]
    np.testing.assert_allclose((vol.sum(0) * 1.25).numpy(), img.double().numpy(), atol=1e-6 * float(img.max()))


def test_mean_map_is_average_of_maps():
    rng = np.random.default_rng(1)
    ens = rng.normal(scale=4.0, size=(3, 20, 3))
    mean = mean_density_map(ens, 2.0, 1.5, 24, 1.0)
    ref = sum(density_map(e, 2.0, 1.5, 24, 1.0) for e in ens) / 3
    torch.testing.assert_close(mean, ref, atol=1e-12, rtol=1e-10)
    assert auto_box(ens, 1.5, 1.0) % 2 == 0
    with pytest.raises(InputError, match="sigmas_A"):
        density_map(ens[0], 1.0, 0.0, 8, 1.0)


def test_mrc_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    vol = rng.normal(size=(16, 16, 16)).astype(np.float32)
    write_mrc(tmp_path / "m.mrc", vol, 1.7)
    m = read_mrc(tmp_path / "m.mrc")
    np.testing.assert_array_equal(m.data, vol)
    assert m.voxel_A == pytest.approx(1.7, rel=1e-6)
    np.testing.assert_allclose(m.origin_A, [-8 * 1.7] * 3, rtol=1e-6)
    with pytest.raises(InputError, match="not found"):
        read_mrc(tmp_path / "missing.mrc")


def _structured_map(box=48, seed=3):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-12, 12, size=(300, 3))
    return density_map(x, 10.0, 1.0, box, 1.0).numpy()


def test_fsc_self_one_and_drops_with_noise():
    vol = _structured_map()
    self_fsc = fsc(vol, vol, voxel_A=1.0)
    np.testing.assert_allclose(self_fsc.fsc, 1.0, atol=1e-12)
    assert self_fsc.frequency_invA[-1] == pytest.approx(0.5)
    assert self_fsc.resolution_A(0.143) is None  # never crosses: limited by Nyquist
    rng = np.random.default_rng(4)
    scale = vol.std()
    res = []
    for level in (0.3, 1.5, 3.0):
        noisy = vol + level * scale * rng.normal(size=vol.shape)
        curve = fsc(vol, noisy, voxel_A=1.0)
        assert curve.fsc[1] > 0.9
        assert (curve.fsc[1:] < 1.0).all()
        r = curve.resolution_A(0.143)
        assert r is not None and r > 2.0  # crosses before Nyquist (2 Å)
        res.append(r)
        assert curve.resolution_A(0.5) >= r
    assert res[0] < res[1] < res[2]  # more noise → worse (larger) resolution


def test_fsc_resolution_interpolation():
    f = np.array([0.0, 0.1, 0.2, 0.3])
    assert fsc_resolution(f, [1.0, 0.9, 0.3, 0.1], 0.5) == pytest.approx(1 / (0.1 + 0.1 * 0.4 / 0.6))
    assert fsc_resolution(f, [1.0, 0.9, 0.8, 0.7], 0.5) is None
    assert fsc_resolution(f, [0.2, 0.1, 0.0, 0.0], 0.5) == math.inf


def test_nmse():
    vol = _structured_map(24)
    assert nmse(vol, vol) == 0.0
    assert nmse(2 * vol, vol) == pytest.approx(1.0)
    assert nmse(2 * vol, vol, scale=True) == pytest.approx(0.0, abs=1e-20)
    with pytest.raises(InputError, match="shape"):
        nmse(vol, vol[:-1])
