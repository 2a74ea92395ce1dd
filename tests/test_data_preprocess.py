"""Experimental-particle preprocessing: resampling, field of view, noise PSD, whitening, normalisation."""

from __future__ import annotations

import dataclasses
import numpy as np
import pytest
import torch

from cryoconf.data import load_particles, write_mrcs, write_star
from cryoconf.data.preprocess import (
    NoisePSD,
    estimate_batch_psd,
    estimate_dataset_psd,
    has_origin_shifts,
    plan_resampling,
    prepare_dataset_batch,
    prepare_particles,
    resample_particles,
)
from cryoconf.errors import InputError
from cryoconf.imaging.filters import (
    estimate_noise_psd,
    evaluate_psd,
    radial_frequency_inv_A,
)
from cryoconf.imaging.noise import coloured_noise


def _bandlimited(b: int, box: int, apix: float, kmax_inv_A: float, seed: int = 0) -> torch.Tensor:
    """Random real images whose spectrum vanishes beyond ``kmax_inv_A`` (and at every Nyquist row/column)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, box, box, generator=g, dtype=torch.float64)
    s = radial_frequency_inv_A(box, apix, dtype=torch.float64)
    return torch.fft.irfft2(torch.fft.rfft2(x) * (s < kmax_inv_A), s=(box, box)) + 0.3


def _blob(box: int, apix: float, centre_px: tuple[float, float], sigma_A: float = 6.0) -> torch.Tensor:
    c = torch.arange(box, dtype=torch.float64) * apix
    y, x = torch.meshgrid(c, c, indexing="ij")
    return torch.exp(-((x - centre_px[1] * apix) ** 2 + (y - centre_px[0] * apix) ** 2) / (2 * sigma_A**2))[None]


def _centroid(img: torch.Tensor) -> tuple[float, float]:
    w = img.clamp_min(0)
    i = torch.arange(img.shape[-1], dtype=img.dtype)
    return float((w.sum(1) * i).sum() / w.sum()), float((w.sum(0) * i).sum() / w.sum())


RED_PSD = (torch.tensor([0.0, 0.05, 0.1, 0.2, 0.5]), torch.tensor([20.0, 6.0, 2.0, 1.0, 0.7]))


def test_downsample_halves_box_preserves_integral_and_samples():
    x = _bandlimited(3, 128, 1.5, 0.9 / (2 * 3.0))
    y = prepare_particles(x, 1.5, 64, 3.0, normalize=None)
    assert y.shape == (3, 64, 64)
    # values are per Å², so the integral Σ·apix² is kept
    torch.testing.assert_close(y.sum((-2, -1)) * 3.0**2, x.sum((-2, -1)) * 1.5**2, rtol=1e-10, atol=1e-8)
    # a band-limited image is simply resampled: new pixel (i, j) sits where old pixel (2i, 2j) did
    torch.testing.assert_close(y, x[:, ::2, ::2], rtol=1e-9, atol=1e-9)


def test_plan_crops_for_non_integer_ratio_and_keeps_the_centre():
    plan = plan_resampling(256, 1.346, 128, 2.06)  # 256·1.346/2.06 = 167.3 px: crop first
    assert plan.crop_in < 256 and plan.box_resampled == round(plan.crop_in * 1.346 / 2.06)
    assert abs(plan.apix_A / 2.06 - 1) < 1e-4 and plan.fov_in_A >= 128 * 2.06 - 1e-6
    assert plan_resampling(256, 1.0, 128, 2.0).crop_in == 256  # exact: no crop
    # identity only when nothing is cropped, resampled or windowed
    same = plan_resampling(64, 3.0, 64, 3.0)
    assert same.identity and not plan.identity and not plan_resampling(72, 3.0, 64, 3.0).identity
    x = torch.randn(2, 64, 64, dtype=torch.float64)
    torch.testing.assert_close(resample_particles(x, 3.0, 64, 3.0, plan=same)[0], x, rtol=0, atol=0)
    # a sub-pixel shift keeps the particle centre on the new centre pixel (box 99 → 33: centre 49 → 16)
    plan = plan_resampling(100, 1.0, 33, 3.0)
    assert (plan.crop_in, plan.box_resampled) == (99, 33)
    for box, apix, tb, ta in [(100, 1.0, 33, 3.0), (256, 1.346, 128, 2.06), (64, 2.0, 96, 2.0), (90, 1.0, 41, 2.0)]:
        img = _blob(box, apix, (box // 2, box // 2))
        y, _ = resample_particles(img, apix, tb, ta)
        cy, cx = _centroid(y[0] - y[0, 0, 0])  # (a padded border holds the image mean)
        assert abs(cy - tb // 2) < 0.02 and abs(cx - tb // 2) < 0.02, (box, apix, tb, ta, cy, cx)


def _seven_smooth(m: int) -> bool:
    for p in (2, 3, 5, 7):
        while m % p == 0:
            m //= p
    return m == 1


def test_plan_prefers_fast_transform_sizes_with_a_margin_and_the_same_result():
    # 320 px at 1 Å → 128 px at 1.5 Å: every crop b = 3k is exact; the full-box choice (318 → 212 = 4·53)
    # costs 4× more than a crop with small prime factors that still keeps 16 px round the 192-Å target
    plan = plan_resampling(320, 1.0, 128, 1.5)
    assert plan.apix_A == pytest.approx(1.5, abs=1e-12)
    assert _seven_smooth(plan.crop_in) and _seven_smooth(plan.box_resampled)
    assert 192 + 32 <= plan.crop_in < 318
    # no pair of fast sizes at the best pixel size (1.06/1.5 = 53/75): the most accurate plan stays
    exact = plan_resampling(256, 1.06, 128, 1.5)
    assert exact.apix_A == pytest.approx(1.5, abs=1e-12) and exact.box_resampled % 53 == 0
    # a small box keeps all it has
    assert plan_resampling(200, 1.0, 128, 1.5).crop_in >= 192
    # the window holds the same (band-limited) particle, recentred, as with the whole box resampled
    box, apix = 320, 1.0
    img = torch.cat([_blob(box, apix, (box // 2 + 2.5, box // 2 - 3.0), sigma_A=5.0),
                     _blob(box, apix, (box // 2 - 4.0, box // 2 + 1.5), sigma_A=7.0)])
    centre_A = torch.tensor([[-3.0, 2.5], [1.5, -4.0]], dtype=torch.float64)  # (x, y) Å of each blob
    whole = dataclasses.replace(plan, crop_in=318, box_resampled=212)  # the former choice (largest crop)
    y_fast, _ = resample_particles(img, apix, 128, 1.5, center_A=centre_A)
    y_whole, _ = resample_particles(img, apix, 128, 1.5, center_A=centre_A, plan=whole)
    torch.testing.assert_close(y_fast, y_whole, rtol=0, atol=1e-9 * float(y_whole.abs().max()))
    for y in y_fast:
        cy, cx = _centroid(y)
        assert abs(cy - 64) < 0.02 and abs(cx - 64) < 0.02


def test_plan_errors_are_input_errors():
    with pytest.raises(InputError, match="rtol"):
        plan_resampling(64, 1.0, 64, 1.37, rtol=1e-9)
    with pytest.raises(InputError):
        plan_resampling(64, -1.0, 32, 2.0)
    with pytest.raises(InputError, match="different pixel sizes"):
        prepare_particles(torch.zeros(2, 16, 16), torch.tensor([1.0, 2.0]), 16, 1.0)
    with pytest.raises(InputError, match="background pixels"):
        prepare_particles(torch.randn(2, 16, 16), 1.0, 16, 1.0, noise_psd="estimate", mask_radius_A=20.0)


def test_psd_estimate_from_background_recovers_known_psd():
    box, apix = 96, 2.0
    g = torch.Generator().manual_seed(3)
    noise = coloured_noise((400, box, box), apix, RED_PSD, generator=g, dtype=torch.float64)
    # a strong "particle" inside the mask must not leak into the estimate
    images = noise + 50.0 * _blob(box, apix, (box // 2, box // 2), sigma_A=8.0)
    est = estimate_batch_psd(images, apix, mask_radius_A=0.35 * box * apix, prenormalize=False)
    f = torch.as_tensor(est.freq_inv_A)
    truth = evaluate_psd(RED_PSD, f).numpy()
    rel = np.abs(est.psd[2:] / truth[2:] - 1)  # the mask's transform blurs the lowest shells
    assert rel.max() < 0.12, rel
    assert np.median(rel) < 0.04


def test_whitening_coloured_noise_gives_flat_psd():
    box, apix = 64, 2.5
    g = torch.Generator().manual_seed(5)
    noise = coloured_noise((600, box, box), apix, RED_PSD, generator=g, dtype=torch.float64)
    white = prepare_particles(noise, apix, box, apix, noise_psd="estimate", mask_radius_A=0.3 * box * apix,
                              normalize=None, prenormalize=False)
    _, p = estimate_noise_psd(white, apix)
    p = p[1:].numpy()
    assert np.abs(p / p.mean() - 1).max() < 0.1, p
    assert abs(p.mean() - 1) < 0.1  # unit-variance white noise
    before = estimate_noise_psd(noise, apix)[1][1:].numpy()
    assert before.max() / before.min() > 10  # it really was coloured


def _write_dataset(tmp_path, images: np.ndarray, apix: float, origins_A: np.ndarray | None = None):
    n, box = images.shape[0], images.shape[-1]
    write_mrcs(tmp_path / "p.mrcs", images.astype(np.float32), apix)
    particles = {"rlnImageName": np.array([f"{i + 1}@p.mrcs" for i in range(n)], dtype=object),
                 "rlnOpticsGroup": np.ones(n, int), "rlnDefocusU": np.full(n, 1e4),
                 "rlnDefocusV": np.full(n, 1e4), "rlnDefocusAngle": np.zeros(n)}
    if origins_A is not None:
        particles.update(rlnOriginXAngst=origins_A[:, 0], rlnOriginYAngst=origins_A[:, 1])
    write_star(tmp_path / "p.star", [
        ("optics", {"rlnOpticsGroup": np.array([1]), "rlnImagePixelSize": np.array([apix]),
                    "rlnImageSize": np.array([box]), "rlnVoltage": np.array([300.0]),
                    "rlnSphericalAberration": np.array([2.7]), "rlnAmplitudeContrast": np.array([0.1])}),
        ("particles", particles),
    ], header="# version 30001")
    return load_particles(tmp_path / "p.star")


def test_recentring_moves_each_particle_from_its_origin_to_the_box_centre(tmp_path):
    box, apix, tbox, tapix = 64, 1.5, 32, 3.0
    # RELION: the particle centre sits at −origin (x = column, y = row) from the box centre
    centres_A = np.array([[4.5, -3.0], [-6.75, 2.25], [0.0, 0.0]])
    images = np.concatenate([_blob(box, apix, (box // 2 + cy / apix, box // 2 + cx / apix)).numpy()
                             for cx, cy in centres_A])
    ds = _write_dataset(tmp_path, images, apix, origins_A=-centres_A)
    assert has_origin_shifts(ds)
    kept = prepare_dataset_batch(ds, [0, 1, 2], tbox, tapix, normalize=None)["images"]
    moved = prepare_dataset_batch(ds, [0, 1, 2], tbox, tapix, recenter=True, normalize=None)["images"]
    for k, (cx, cy) in enumerate(centres_A):
        row, col = _centroid(kept[k])
        assert abs(row - (tbox // 2 + cy / tapix)) < 0.02 and abs(col - (tbox // 2 + cx / tapix)) < 0.02
        row, col = _centroid(moved[k])
        assert abs(row - tbox // 2) < 0.02 and abs(col - tbox // 2) < 0.02
    # the blob is moved, not blurred: its peak keeps its height
    torch.testing.assert_close(moved.amax((-2, -1)), kept[2].amax().expand(3), rtol=2e-3, atol=0)


def test_recentring_needs_origins(tmp_path):
    images = _blob(32, 2.0, (16, 16)).expand(2, -1, -1).numpy()
    ds = _write_dataset(tmp_path, images, 2.0)
    assert not has_origin_shifts(ds)
    with pytest.raises(InputError, match=r"p\.star: recentring needs particle origins"):
        prepare_dataset_batch(ds, [0, 1], 32, 2.0, recenter=True)
    (tmp_path / "zero").mkdir()
    assert not has_origin_shifts(_write_dataset(tmp_path / "zero", images, 2.0, origins_A=np.zeros((2, 2))))


def test_dataset_psd_streams_and_prepares(tmp_path):
    box, apix, tbox, tapix = 96, 1.5, 48, 3.0
    g = torch.Generator().manual_seed(11)
    # coloured noise defined at the target sampling (band-limited to the target Nyquist)
    psd_fn = lambda s: evaluate_psd(RED_PSD, s) * (s < 1 / (2 * tapix))
    noise = coloured_noise((300, box, box), apix, psd_fn, generator=g, dtype=torch.float64)
    ds = _write_dataset(tmp_path, noise.numpy(), apix)
    est = estimate_dataset_psd(ds, tbox, tapix, batch_size=64, max_particles=250, prenormalize=False,
                               mask_radius_A=0.3 * tbox * tapix)
    assert est.n_particles == 250 and est.box == tbox and abs(est.apix_A - tapix) < 1e-9
    # the per-pixel PSD scales with the pixel area: (1.5/3)² of the PSD the noise had at 1.5 Å/px
    truth = evaluate_psd(RED_PSD, torch.as_tensor(est.freq_inv_A)).numpy() * (apix / tapix) ** 2
    assert np.abs(est.psd[2:-1] / truth[2:-1] - 1).max() < 0.15
    # streaming equals one batch over the same particles
    one = estimate_dataset_psd(ds, tbox, tapix, batch_size=1000, max_particles=250, prenormalize=False,
                               mask_radius_A=0.3 * tbox * tapix)
    np.testing.assert_allclose(est.psd, one.psd, rtol=1e-5)
    est.save(tmp_path / "psd.npz")
    back = NoisePSD.load(tmp_path / "psd.npz")
    np.testing.assert_allclose(back.psd, est.psd)
    out = prepare_dataset_batch(ds, [5, 0, 7], tbox, tapix, noise_psd=back)
    assert out["images"].shape == (3, tbox, tbox) and out["indices"].tolist() == [5, 0, 7]
    torch.testing.assert_close(out["images"].mean((-2, -1)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(out["images"].std((-2, -1)), torch.ones(3), atol=1e-5, rtol=0)
    direct = prepare_particles(ds.batch([0])["images"], apix, tbox, tapix, noise_psd=back)
    torch.testing.assert_close(out["images"][1], direct[0], atol=1e-5, rtol=1e-5)
    with pytest.raises(InputError, match="estimate it with the same target"):
        prepare_particles(ds.batch([0])["images"], apix, 32, tapix, noise_psd=back)


def test_custom_normalize_and_lowpass_are_applied():
    x = torch.randn(2, 32, 32, dtype=torch.float64)
    y = prepare_particles(x, 2.0, 32, 2.0, normalize=lambda im: im * 0 + 7.0)
    assert torch.all(y == 7.0)
    z = prepare_particles(x, 2.0, 32, 2.0, lowpass_A=10.0, normalize=None)
    s = radial_frequency_inv_A(32, 2.0, dtype=torch.float64)
    assert torch.fft.rfft2(z)[:, s > 0.1 + 2 / 64 + 1e-6].abs().max() < 1e-9


class _TwoPixelSizes:
    """A minimal dataset: particles 0, 2 at 1.5 Å/px (box 64), 1, 3 at 3 Å/px (box 32) of the same field of view."""

    def __init__(self):
        self.big = _bandlimited(2, 64, 1.5, 0.9 / 6.0, seed=1)
        self.small = self.big[:, ::2, ::2].clone()
        self.indices = np.arange(4)
        self.stack = True
        self.metadata = type("M", (), {"apix_A": np.array([1.5, 3.0, 1.5, 3.0]), "box": np.array([64, 32, 64, 32])})

    def batch(self, positions):
        pos = np.asarray(positions)
        box = self.metadata.box[pos[0]]
        assert (self.metadata.box[pos] == box).all()  # one pixel size per batch
        src = self.big if box == 64 else self.small
        return {"images": src[pos // 2], "apix_A": torch.as_tensor(self.metadata.apix_A[pos])}


def test_prepare_dataset_batch_groups_by_pixel_size():
    ds = _TwoPixelSizes()
    out = prepare_dataset_batch(ds, [3, 0, 1, 2], 32, 3.0, normalize=None)
    x = out["images"]
    # particle k of each pixel size shows the same image: after preparation they agree
    torch.testing.assert_close(x[1], x[2], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(x[0], x[3], rtol=1e-9, atol=1e-9)
    assert out["indices"].tolist() == [3, 0, 1, 2]


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_prepare_dataset_batch_on_a_device_matches_the_default(device):
    ds = _TwoPixelSizes()
    psd = estimate_dataset_psd(ds, 32, 3.0, positions=[0, 1, 2, 3])
    ref = prepare_dataset_batch(ds, [3, 0, 1, 2], 32, 3.0, noise_psd=psd)
    out = prepare_dataset_batch(ds, [3, 0, 1, 2], 32, 3.0, noise_psd=psd, device=device)
    assert out["images"].device.type == device
    torch.testing.assert_close(out["images"].cpu(), ref["images"], rtol=1e-4, atol=1e-4)
    assert prepare_dataset_batch(ds, [], 32, 3.0, device=device)["images"].shape == (0, 32, 32)


def test_all_finite_is_exact_where_the_sum_overflows():
    from cryoconf.errors import all_finite

    x = torch.randn(3, 16, 16)
    assert all_finite(x) and all_finite(torch.arange(5)) and all_finite(torch.zeros(0))
    for bad in (float("nan"), float("inf"), -float("inf")):
        y = x.clone()
        y[2, 5, 7] = bad
        assert not all_finite(y)
    y = x.clone()
    y[0, 0, :2] = torch.tensor([float("inf"), -float("inf")])  # inf − inf: a NaN sum, still caught
    assert not all_finite(y)
    huge = torch.full((4, 4), 3e38)  # finite, but the float32 sum overflows to inf
    assert all_finite(huge) and all_finite(huge.to(torch.complex64))
    x[1, 3, 3] = float("nan")
    with pytest.raises(InputError, match="particle image 1 .*NaN"):
        prepare_particles(x, 1.0, 16, 1.0)
