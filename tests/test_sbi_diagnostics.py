"""SBI diagnostics: posterior summaries, calibration (SBC, coverage), MMD, micrograph windows."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cryoconf.errors import InputError
from cryoconf.sbi.calibration import (
    calibrate,
    calibrate_samples,
    coverage,
    plot_calibration,
    sbc_ranks,
)
from cryoconf.sbi.mmd import (
    kernel_sum,
    median_bandwidth,
    mmd2_unbiased,
    mmd_permutation,
    mmd_test,
    plot_embeddings,
)
from cryoconf.sbi.summaries import (
    assign_templates,
    save_summaries,
    summarize_samples,
    summary_columns,
    template_probabilities,
)
from cryoconf.sbi.windows import (
    extract_windows,
    iter_windows,
    windows_to_grid,
    windows_to_map,
)

# ---------------------------------------------------------------- summaries


def test_summaries_match_numpy_and_normal_intervals():
    rng = np.random.default_rng(0)
    mu = np.array([-1.0, 0.0, 2.5, 4.0])
    sd = np.array([0.5, 1.0, 2.0, 0.1])
    s = rng.normal(mu, sd, size=(40_000, 4))
    summ = summarize_samples(torch.as_tensor(s, dtype=torch.float32), chunk=3)
    x = s.astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(summ.mean[:, 0], x.mean(0), rtol=0, atol=1e-10)
    np.testing.assert_allclose(summ.std[:, 0], x.std(0, ddof=1), rtol=1e-10)
    for label, q in [("Q2p5", 0.025), ("Q16", 0.16), ("Q50", 0.5), ("Q84", 0.84), ("Q97p5", 0.975)]:
        np.testing.assert_allclose(summ.quantiles[label][:, 0], np.quantile(x, q, axis=0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(summ.median[:, 0], np.median(x, 0), atol=1e-12)
    lo, hi = summ.interval(0.68)  # ≈ μ ± 0.994σ for a normal
    np.testing.assert_allclose(lo[:, 0], mu - 0.9945 * sd, atol=0.03 * sd.max())
    np.testing.assert_allclose(hi[:, 0], mu + 0.9945 * sd, atol=0.03 * sd.max())
    lo, hi = summ.interval(0.95)
    np.testing.assert_allclose(hi[:, 0] - lo[:, 0], 2 * 1.96 * sd, rtol=0.03)


def test_most_probable_template_and_probabilities():
    rng = np.random.default_rng(1)
    templates = np.linspace(-2.0, 2.0, 9)  # spacing 0.5: cells are ±0.25 around each template
    s = rng.normal([0.6, -1.9, 1.5], [0.1, 0.05, 0.3], size=(5000, 3))
    # a bimodal posterior: 70 % near −1, 30 % near 1.5; the mean (≈ −0.25) is not the most probable template
    s[:, 2] = np.where(rng.random(5000) < 0.7, rng.normal(-1.0, 0.1, 5000), s[:, 2])
    summ = summarize_samples(s, templates)
    assert summ.template_index.tolist() == [5, 0, 2]  # θ = 0.5, −2.0, −1.0
    np.testing.assert_allclose(summ.template_theta[:, 0], [0.5, -2.0, -1.0])
    assert abs(summ.mean[2, 0] + 0.25) < 0.05
    nearest = np.abs(s[..., None] - templates).argmin(-1)
    ref = np.stack([np.bincount(nearest[:, b], minlength=9) / 5000 for b in range(3)])
    np.testing.assert_allclose(summ.template_probs, ref)
    np.testing.assert_allclose(summ.template_probs.sum(1), 1.0)
    np.testing.assert_allclose(summ.template_prob, ref.max(1))
    # explicit cell edges; unsorted templates; a 2D θ
    edges = np.concatenate([[-np.inf], 0.5 * (templates[1:] + templates[:-1]), [np.inf]])
    np.testing.assert_array_equal(assign_templates(s, templates, edges=edges).numpy(), nearest)
    perm = rng.permutation(9)
    np.testing.assert_array_equal(assign_templates(s, templates[perm]).numpy(), np.argsort(perm)[nearest])
    # edges are in increasing θ (as TemplatePrior.edges) even when the templates are not
    np.testing.assert_array_equal(assign_templates(s, templates[perm], edges=edges).numpy(), np.argsort(perm)[nearest])
    t2 = rng.normal(size=(7, 2))
    s2 = rng.normal(size=(300, 4, 2))
    d = ((s2[:, :, None, :] - t2) ** 2).sum(-1).argmin(-1)
    np.testing.assert_array_equal(assign_templates(s2, t2, chunk=50).numpy(), d)
    np.testing.assert_allclose(template_probabilities(s2, t2).numpy()[2], np.bincount(d[:, 2], minlength=7) / 300)


def test_summary_columns_and_files(tmp_path):
    rng = np.random.default_rng(2)
    summ = summarize_samples(rng.normal(size=(200, 6)), np.linspace(-1, 1, 5))
    cols = summary_columns(summ)
    for name in ["cryoconfThetaMean", "cryoconfThetaStd", "cryoconfThetaQ16", "cryoconfThetaQ84",
                 "cryoconfThetaQ2p5", "cryoconfThetaQ97p5", "cryoconfThetaQ50", "cryoconfThetaWidth68",
                 "cryoconfTemplateIndex", "cryoconfTemplateTheta", "cryoconfTemplateProb"]:
        assert cols[name].shape == (6,), name
    np.testing.assert_allclose(save_summaries(tmp_path / "s.npz", summ, index=np.arange(6)).exists(), True)
    z = np.load(tmp_path / "s.npz")
    np.testing.assert_allclose(z["cryoconfThetaMean"], summ.mean[:, 0])
    assert z["template_probs"].shape == (6, 5)
    save_summaries(tmp_path / "s.csv", summ)
    rows = (tmp_path / "s.csv").read_text().splitlines()
    assert rows[0].split(",")[0] == "cryoconfThetaMean" and len(rows) == 7
    two = summarize_samples(rng.normal(size=(50, 3, 2)))
    assert "cryoconfTheta2Q84" in summary_columns(two)
    with pytest.raises(InputError):
        save_summaries(tmp_path / "s.txt", summ)
    with pytest.raises(InputError):
        summarize_samples(np.full((3, 2), np.nan))


# ---------------------------------------------------------------- calibration
# θ ~ N(0, 1), x ~ N(θ, 1): the posterior is N(x/2, 1/2).


def _gaussian_problem(b: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(b, generator=g, dtype=torch.float64)
    x = theta + torch.randn(b, generator=g, dtype=torch.float64)
    return theta, x


def _sampler(scale: float, seed: int):
    g = torch.Generator().manual_seed(seed)

    def sample(x, n):
        z = torch.randn(n, x.shape[0], generator=g, dtype=torch.float64)
        return (x / 2 + scale * math.sqrt(0.5) * z)[..., None]

    return sample


def _log_prob(scale: float):
    def lp(theta, x):
        var = 0.5 * scale**2
        return -0.5 * (theta[..., 0] - x / 2) ** 2 / var
    return lp


def test_sbc_uniform_for_exact_posterior_not_for_overconfident(tmp_path):
    theta, x = _gaussian_problem(3000, 0)
    good = calibrate(_sampler(1.0, 1), x, theta, n_samples=99, batch_size=700, log_prob_fn=_log_prob(1.0))
    assert good.ranks.shape == (3000, 1) and good.ranks.min() >= 0 and good.ranks.max() <= 99
    assert good.chi2_p[0] > 0.01 and good.ks_p[0] > 0.01
    bad = calibrate(_sampler(0.5, 1), x, theta, n_samples=99, batch_size=700, log_prob_fn=_log_prob(0.5))
    assert bad.chi2_p[0] < 1e-6 and bad.ks_p[0] < 1e-6
    # over-confident: the true θ lands in the extreme ranks (a U-shaped histogram)
    assert bad.counts[0, 0] + bad.counts[-1, 0] > 3 * (good.counts[0, 0] + good.counts[-1, 0])
    png = plot_calibration(bad, tmp_path / "cal.png", title="over-confident")
    assert png.stat().st_size > 1000
    assert "chi2" in bad.to_dict() and "ranks" not in bad.to_dict()


def test_expected_coverage_on_the_diagonal_for_exact_posterior():
    theta, x = _gaussian_problem(4000, 3)
    s_good = _sampler(1.0, 4)(x, 200)
    s_bad = _sampler(0.5, 4)(x, 200)
    good = calibrate_samples(s_good, theta, log_prob_samples=_log_prob(1.0)(s_good, x),
                             log_prob_truth=_log_prob(1.0)(theta[None, :, None], x)[0])
    assert np.abs(good.coverage_central[:, 0] - good.levels).max() < 0.03
    assert np.abs(good.coverage_hpd - good.levels).max() < 0.03
    bad = calibrate_samples(s_bad, theta, hpd=False)
    inner = (good.levels > 0.1) & (good.levels < 0.95)
    assert np.all(bad.coverage_central[inner, 0] < good.levels[inner] - 0.05)
    assert bad.coverage_hpd is None
    # coverage() agrees with the curve and with theory (over-confident 68% interval: P(|z| < 0.497) ≈ 0.38)
    assert abs(coverage(s_good, theta, 0.68) - 0.68) < 0.02
    assert abs(coverage(s_good, theta, 0.95) - 0.95) < 0.015
    assert abs(coverage(s_bad, theta, 0.68) - 0.381) < 0.03
    assert abs(good.coverage68[0] - coverage(s_good, theta, 0.68)) < 0.01
    # KDE-based HPD regions (no density given) on a subset
    kde = calibrate_samples(s_good[:100, :1000], theta[:1000])
    assert np.abs(kde.coverage_hpd - kde.levels).max() < 0.06


def test_sbc_ranks_ties_and_errors():
    s = torch.zeros(9, 2000)  # every sample equals θ: ties spread the rank uniformly over 0..9
    r = sbc_ranks(s, torch.zeros(2000), torch.Generator().manual_seed(0))
    counts = np.bincount(r.numpy().ravel(), minlength=10)
    assert counts.min() > 120 and counts.max() < 280
    with pytest.raises(InputError):
        calibrate_samples(torch.zeros(5, 3), torch.zeros(4))
    with pytest.raises(InputError, match="sample_fn"):
        calibrate(lambda im, n: torch.zeros(n + 1, len(im)), torch.zeros(4), torch.zeros(4), n_samples=3)


# ---------------------------------------------------------------- MMD


def _dense_mmd2(x: torch.Tensor, y: torch.Tensor, eps: float) -> float:
    k = lambda a, b: torch.exp(-torch.cdist(a, b) ** 2 / eps)
    m, n = len(x), len(y)
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    return float((kxx.sum() - kxx.diag().sum()) / (m * (m - 1)) + (kyy.sum() - kyy.diag().sum()) / (n * (n - 1))
                 - 2 * kxy.mean())


def test_chunked_kernel_sums_equal_dense():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(301, 7, generator=g, dtype=torch.float64)
    y = torch.randn(257, 7, generator=g, dtype=torch.float64) * 1.3 + 0.2
    eps = median_bandwidth(x, y, max_points=10_000)
    pool = torch.cat([x, y])
    d2 = torch.cdist(pool, pool) ** 2
    iu = torch.triu_indices(len(pool), len(pool), 1)
    assert eps == pytest.approx(float(d2[iu[0], iu[1]].median()), rel=1e-9)
    dense = torch.exp(-torch.cdist(x, y) ** 2 / eps).sum()
    assert kernel_sum(x, y, bandwidth=eps, max_block_bytes=5000) == pytest.approx(float(dense), rel=1e-12)
    kxx = torch.exp(-torch.cdist(x, x) ** 2 / eps)
    assert kernel_sum(x, bandwidth=eps, exclude_diagonal=True, max_block_bytes=5000) == pytest.approx(
        float(kxx.sum() - kxx.diag().sum()), rel=1e-12)
    ref = _dense_mmd2(x, y, eps)
    for budget in (3000, 10**5, 10**9):
        assert mmd2_unbiased(x, y, bandwidth=eps, max_block_bytes=budget) == pytest.approx(ref, rel=1e-9, abs=1e-12)
    obs, _, perm = mmd_permutation(x, y, bandwidth=eps, n_permutations=5, max_block_bytes=4000)
    assert obs == pytest.approx(ref, rel=1e-9, abs=1e-12)
    # a permuted statistic is the MMD² of that relabelling
    gp = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(pool), generator=gp)[: len(x)]
    mask = torch.zeros(len(pool), dtype=torch.bool)
    mask[idx] = True
    assert perm[0] == pytest.approx(_dense_mmd2(pool[mask], pool[~mask], eps), rel=1e-9, abs=1e-12)


def test_mmd_same_distribution_not_significant_shifted_significant():
    ga, gb = torch.Generator().manual_seed(10), torch.Generator().manual_seed(20)
    x = torch.randn(4000, 8, generator=ga)
    y = torch.randn(4000, 8, generator=gb)
    same = mmd_test(x, y, n_per_set=800, n_trials=8, n_permutations=200, seed=1)
    assert same.p_value > 0.05
    assert abs(same.mmd2_mean) < 3 * same.mmd2_std / math.sqrt(8) + 1e-3  # unbiased: ≈ 0
    assert same.mmd2_trials.shape == (8,) and same.n_per_set == (800, 800)
    shifted = mmd_test(x, y + 0.3, n_per_set=800, n_trials=4, n_permutations=200, seed=1)
    scaled = mmd_test(x, y * 1.5, n_per_set=800, n_trials=4, n_permutations=200, seed=1)
    for r in (shifted, scaled):
        assert r.p_value < 0.01 and r.mmd2_mean > 10 * abs(same.mmd2_mean)
    # seeded: the same call gives the same numbers
    again = mmd_test(x, y + 0.3, n_per_set=800, n_trials=4, n_permutations=200, seed=1)
    np.testing.assert_array_equal(again.mmd2_trials, shifted.mmd2_trials)
    assert again.p_value == shifted.p_value


def test_mmd_unbiased_near_zero_for_identical_distributions():
    g = torch.Generator().manual_seed(7)
    vals = [mmd2_unbiased(torch.randn(500, 4, generator=g), torch.randn(500, 4, generator=g), bandwidth=8.0)
            for _ in range(20)]
    assert abs(np.mean(vals)) < 3 * np.std(vals) / math.sqrt(20)
    with pytest.raises(InputError, match="features"):
        mmd2_unbiased(torch.zeros(5, 3), torch.zeros(5, 4))
    with pytest.raises(InputError, match="identical"):
        median_bandwidth(torch.ones(5, 3))


def test_embedding_plot_pca_and_missing_umap(tmp_path):
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(300, 16, generator=g), torch.randn(200, 16, generator=g) + 1
    assert plot_embeddings(a, b, tmp_path / "pca.png", method="pca").stat().st_size > 1000
    try:
        import umap  # noqa: F401
    except ImportError:
        with pytest.raises(InputError, match="pip install umap-learn"):
            plot_embeddings(a, b, tmp_path / "u.png", method="umap")
        out = plot_embeddings(a, b, tmp_path / "u.png", method="umap", fallback_pca=True, color_b=np.arange(200.0))
        assert out.exists()


# ---------------------------------------------------------------- windows


def test_windows_round_trip_and_centres():
    m = torch.arange(37 * 45, dtype=torch.float32).reshape(37, 45)
    w, c = extract_windows(m, 8, 3, batch_size=5)
    rows, cols = np.arange(0, 37 - 8 + 1, 3), np.arange(0, 45 - 8 + 1, 3)
    assert w.shape == (len(rows) * len(cols), 8, 8)
    np.testing.assert_array_equal(c[:, 0].numpy(), np.repeat(rows + 4, len(cols)))
    np.testing.assert_array_equal(c[:, 1].numpy(), np.tile(cols + 4, len(rows)))
    for k in range(len(c)):
        r0, c0 = int(c[k, 0]) - 4, int(c[k, 1]) - 4
        assert torch.equal(w[k], m[r0:r0 + 8, c0:c0 + 8])
    assert torch.equal(w[:, 4, 4], m[c[:, 0], c[:, 1]])  # pixel window//2 is the centre
    chunks = list(iter_windows(m, 8, 3, batch_size=5))
    assert max(len(p[0]) for p in chunks) <= 5
    # stride 1: the map of centre pixels is the micrograph (where windows have centres)
    w1, c1 = extract_windows(m, 5, 1)
    mp = windows_to_map(w1[:, 2, 2], c1, m.shape)
    np.testing.assert_array_equal(mp[2:35, 2:43], m[2:35, 2:43].numpy())
    assert np.isnan(mp[:2]).all() and np.isnan(mp[:, -2:]).all()
    # coarse stride: every pixel takes its nearest centre's value; grid and 2-channel values
    grid, ur, _ = windows_to_grid(c[:, 0] * 1000 + c[:, 1], c)
    assert grid.shape == (len(rows), len(cols)) and ur.tolist() == (rows + 4).tolist()
    mp = windows_to_map(np.stack([c[:, 0].numpy(), c[:, 1].numpy()], 1), c, m.shape)
    assert mp.shape == (37, 45, 2)
    r, q = 20, 11
    near_r = (rows + 4)[np.abs(rows + 4 - r).argmin()]
    near_c = (cols + 4)[np.abs(cols + 4 - q).argmin()]
    assert mp[r, q].tolist() == [near_r, near_c]
    with pytest.raises(InputError):
        extract_windows(m, 50, 1)
    with pytest.raises(InputError):
        windows_to_map(np.zeros(3), c, m.shape)
