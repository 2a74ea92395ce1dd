"""cryoconf baseline: the closed-form marginal, the SO(3)/shift grids, template posteriors, chunking, the CLI."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from cryoconf.baseline import (
    BaselineConfig,
    LikelihoodPriors,
    TemplateSet,
    log_marginal_likelihood,
    score_particles,
    shift_grid_A,
    so3_grid,
    so3_grid_quaternions,
)
from cryoconf.baseline.likelihood import student_t_log_cdf
from cryoconf.errors import InputError
from cryoconf.imaging.ctf import CTFParams
from cryoconf.imaging.forward import render_images


def _stats(x: np.ndarray, c: np.ndarray):
    t = [torch.tensor(v, dtype=torch.float64) for v in (x.sum(), (x * x).sum(), c.sum(), (c * c).sum(), (x * c).sum())]
    return t


def _brute_force(x: np.ndarray, c: np.ndarray, pri: LikelihoodPriors, positive: bool) -> float:
    """ln ∫∫∫ N(x; λc + μ, σ²) p(λ) p(μ) p(σ) dλ dμ dσ on a fine grid (trapezoid), directly over the pixels."""
    n = x.size
    a = np.stack([c, np.ones_like(c)], axis=1)
    beta, *_ = np.linalg.lstsq(a, x, rcond=None)
    rss = float(((x - a @ beta) ** 2).sum())
    cov = np.linalg.inv(a.T @ a) * rss / (n - 2)
    se = np.sqrt(np.diag(cov))
    lam = np.linspace(beta[0] - 12 * se[0], beta[0] + 12 * se[0], 161)
    if positive:  # the integrand has a kink at λ = 0: a finer grid
        lam = np.linspace(0.0, max(beta[0], 0) + 12 * se[0], 641)
    mu = np.linspace(beta[1] - 12 * se[1], beta[1] + 12 * se[1], 121)
    s0 = math.sqrt(rss / n)
    u = np.linspace(math.log(s0) - 2.0, math.log(s0) + 3.0, 301)  # u = ln σ: p(σ)dσ = du / L_σ
    # Q(λ, μ) evaluated from the pixels
    r = x[None, None, :] - lam[:, None, None] * c[None, None, :] - mu[None, :, None]
    q = (r * r).sum(-1)  # (Λ, M)
    # ∫ du (2π)^{−n/2} exp(−n u − Q e^{−2u}/2)
    lg = -0.5 * n * math.log(2 * math.pi) - n * u[None, None, :] - 0.5 * q[..., None] * np.exp(-2 * u)[None, None, :]
    m = lg.max()
    f = np.exp(lg - m)
    i = np.trapezoid(np.trapezoid(np.trapezoid(f, u, axis=2), mu, axis=1), lam, axis=0)
    log_const = -math.log(pri.lambda_width) - math.log(pri.mu_width) - math.log(math.log(pri.sigma_max / pri.sigma_min))
    return float(m + math.log(i) + log_const)


@pytest.mark.parametrize("contrast,weak", [("any", False), ("positive", False), ("positive", True)])
def test_closed_form_equals_brute_force_integral(contrast, weak):
    rng = np.random.default_rng(1)
    c = rng.normal(size=36)  # a 6×6 image
    x = (0.15 if weak else 1.3) * c + 0.4 + 0.8 * rng.normal(size=36)
    pri = LikelihoodPriors(contrast=contrast, lambda_width=3.0, mu_width=5.0, sigma_min=1e-2, sigma_max=1e2)
    closed = float(log_marginal_likelihood(*_stats(x, c), n=36, priors=pri))
    brute = _brute_force(x, c, pri, positive=contrast == "positive")
    # Student-t CDF by Wallace's approximation (|Δ ln F| < 1e-3 at ν = 34)
    assert closed == pytest.approx(brute, abs=2e-3 if contrast == "positive" else 2e-4)


def test_student_t_log_cdf_matches_scipy():
    t = torch.linspace(-30, 30, 601, dtype=torch.float64)
    for nu, core_tol in ((34, 2e-3), (1000, 2e-6), (4094, 2e-7)):
        ref = stats.t.logcdf(t.numpy(), nu)
        err = np.abs(student_t_log_cdf(t, nu).numpy() - ref)
        core = ref > math.log(1e-3)
        assert err[core].max() < core_tol
        assert np.all(err[~core] < 6e-3 * np.abs(ref[~core]))


def test_affine_change_of_data_shifts_by_the_jacobian():
    rng = np.random.default_rng(2)
    n = 64
    c = rng.normal(size=n)
    x = 0.7 * c + rng.normal(size=n)
    a, b = 3.7, -12.0
    pri = LikelihoodPriors()
    l0 = float(log_marginal_likelihood(*_stats(x, c), n=n, priors=pri))
    l1 = float(log_marginal_likelihood(*_stats(a * x + b, c), n=n, priors=pri))
    assert l1 == pytest.approx(l0 - (n - 2) * math.log(a), abs=1e-8)
    # with the λ and μ priors expressed in the new units too: the full Jacobian a^{−n}
    scaled = LikelihoodPriors(lambda_width=a, mu_width=a, sigma_min=pri.sigma_min * a, sigma_max=pri.sigma_max * a)
    l2 = float(log_marginal_likelihood(*_stats(a * x + b, c), n=n, priors=scaled))
    assert l2 == pytest.approx(l0 - n * math.log(a), abs=1e-8)
    # template scale: c → k·c changes ln p by −ln k only (the Occam factor D^{−1/2})
    l3 = float(log_marginal_likelihood(*_stats(x, 2.0 * c), n=n, priors=pri))
    assert l3 == pytest.approx(l0 - math.log(2.0), abs=1e-8)


@pytest.mark.parametrize("n,method", [(4608, "hopf"), (5000, "fibonacci")])
def test_so3_grid_is_near_uniform(n, method):
    q = so3_grid_quaternions(n, "auto")
    assert q.shape == (n, 4)
    assert np.allclose(np.linalg.norm(q, axis=1), 1.0) and np.all(q[:, 0] >= 0)
    # rotation angle ω: Haar density (1 − cos ω)/π on [0, π]
    omega = 2 * np.arccos(np.clip(q[:, 0], -1, 1))
    ks = stats.kstest(omega, lambda w: (w - np.sin(w)) / np.pi).statistic
    assert ks < 0.03
    # nearest-neighbour angles: close to the spacing of n equal cells, far more even than random rotations
    qt = torch.from_numpy(q)
    d = (qt @ qt.T).abs().clamp(max=1.0)
    d.fill_diagonal_(0)
    nn = 2 * torch.arccos(d.max(1).values)
    spacing = (8 * math.pi**2 / n) ** (1 / 3)
    lo = 0.9 if method == "hopf" else 0.65
    assert lo < float(nn.mean()) / spacing < 1.2
    assert float(nn.min()) / spacing > 0.5  # no near-duplicates (random: ~0.05)
    # the rotation matrices are proper
    r = so3_grid(576, dtype=torch.float64)
    assert torch.allclose(r @ r.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(576, 3, 3), atol=1e-12)
    assert torch.allclose(torch.linalg.det(r), torch.ones(576, dtype=torch.float64))


def test_hopf_grid_has_the_bioem_size_and_no_duplicates():
    q = torch.from_numpy(so3_grid_quaternions(36864))
    assert q.shape == (36864, 4)
    # the closest pair is far from identical (sampled pairs against all)
    d = (q[::97] @ q.T).abs()
    d[torch.arange(d.shape[0]), torch.arange(0, 36864, 97)] = 0
    assert float(2 * torch.arccos(d.max().clamp(max=1.0))) > 0.05
    with pytest.raises(InputError):
        so3_grid_quaternions(1000, "hopf")


def test_shift_grid():
    g = shift_grid_A(4.0, 2.0)
    assert g.shape == (25, 2) and float(g.abs().max()) == 4.0
    assert shift_grid_A(0.0, 1.0).shape == (1, 2)
    with pytest.raises(InputError):
        shift_grid_A(2.0, 0.0)


BOX, APIX = 32, 2.0


def _two_templates() -> TemplateSet:
    g = torch.Generator().manual_seed(0)
    n = 50
    a = torch.randn(n, 3, generator=g) * torch.tensor([13.0, 5.0, 5.0])  # rod along x
    b = torch.randn(n, 3, generator=g) * torch.tensor([5.0, 5.0, 13.0])  # rod along z
    return TemplateSet(torch.stack([a, b]), torch.full((n,), 10.0), torch.full((n,), 2.0), np.array([10.0, 20.0]))


def _particles(tm: TemplateSet, which: int, orient: torch.Tensor, shifts: torch.Tensor, defocus, snr=None, seed=3):
    ctf = CTFParams.create(torch.as_tensor(defocus, dtype=torch.float32), bfactor_A2=20.0)
    img = render_images(tm.coords_A[which], tm.amplitudes_e, tm.sigmas_A, orient, shifts, ctf, BOX, APIX)
    if snr is not None:
        g = torch.Generator().manual_seed(seed)
        std = img.std(dim=(1, 2), keepdim=True) / math.sqrt(snr)
        img = img + std * torch.randn(img.shape, generator=g)
    return img, ctf


@pytest.mark.parametrize("snr", [None, 0.3])
def test_posterior_picks_the_true_template(snr):
    tm = _two_templates()
    rots = so3_grid(576)
    pick = torch.tensor([7, 150, 333, 500])
    cfg = BaselineConfig(n_orientations=576, shift_range_A=2.0, shift_step_A=2.0, defocus_offsets_A=(-400.0, 0.0, 400.0))
    for which in (0, 1):
        img, ctf = _particles(tm, which, rots[pick], torch.tensor([[2.0, 0], [0, -2.0], [0, 0], [-2.0, 2.0]]),
                              [12000.0, 15000.0, 18000.0, 21000.0], snr=snr)
        # the stack's contrast sign and scale do not matter
        res = score_particles(tm, 5.0 - 3.0 * img, APIX, cfg, ctf=ctf)
        post = res.posterior
        assert np.all(post[:, which] > 0.95), post
        summ = res.theta_summary()
        assert np.all(summ["theta_map"] == tm.theta[which])
        if snr is None:  # noise-free: the best grid point is the true one
            assert np.array_equal(res.best_orientation[:, which], pick.numpy())
            assert np.allclose(res.best_defocus_A[:, which], [12000.0, 15000.0, 18000.0, 21000.0])


@pytest.mark.parametrize("method", ["dft", "fft"])
def test_shift_search_recovers_whole_and_sub_step_shifts(method):
    tm = _two_templates()
    rots = so3_grid(72)
    true = torch.tensor([[4.0, -2.0], [-6.0, 2.0], [1.0, 3.0], [-3.0, -1.0]])  # last two: half pixels
    img, ctf = _particles(tm, 0, rots[[3, 40, 11, 60]], true, [15000.0] * 4)
    step = 1.0 if method == "dft" else 2.0
    cfg = BaselineConfig(n_orientations=72, shift_range_A=6.0, shift_step_A=step, defocus_offsets_A=(0.0,),
                         shift_method=method)
    n_check = 4 if method == "dft" else 2  # the fft search takes whole pixels only
    res = score_particles(tm, img[:n_check], APIX, cfg, ctf=ctf[:n_check])
    assert np.allclose(res.best_shift_A[:, 0], true[:n_check].numpy(), atol=1e-4)
    assert np.array_equal(res.best_orientation[:, 0], [3, 40, 11, 60][:n_check])


def test_fft_and_dft_shift_searches_agree():
    tm = _two_templates()
    img, ctf = _particles(tm, 1, so3_grid(72)[[5, 9]], torch.tensor([[2.0, 0.0], [0.0, 4.0]]), [14000.0, 16000.0],
                          snr=0.5)
    out = []
    for method in ("dft", "fft"):
        cfg = BaselineConfig(n_orientations=72, shift_range_A=4.0, shift_step_A=2.0, defocus_offsets_A=(-300.0, 0.0),
                             shift_method=method)
        out.append(score_particles(tm, img, APIX, cfg, ctf=ctf).log_likelihood)
    assert np.allclose(out[0], out[1], rtol=0, atol=2e-3)


def test_chunking_does_not_change_results():
    tm = _two_templates()
    img, ctf = _particles(tm, 0, so3_grid(72)[[1, 2, 3, 4, 5]], torch.zeros(5, 2),
                          [11000.0, 13000.0, 15000.0, 17000.0, 19000.0], snr=0.5)
    base = {"n_orientations": 576, "shift_range_A": 2.0, "shift_step_A": 2.0, "defocus_offsets_A": (-300.0, 0.0, 300.0)}
    ref = score_particles(tm, img, APIX, BaselineConfig(**base), ctf=ctf)
    small = score_particles(tm, img, APIX, BaselineConfig(**base, particle_batch=2, max_block_elements=300_000,
                                                          cache_bytes=0), ctf=ctf)
    cached = score_particles(tm, img, APIX, BaselineConfig(**base, particle_batch=2), ctf=ctf)
    for other in (small, cached):
        assert np.allclose(other.log_likelihood, ref.log_likelihood, rtol=0, atol=1e-3)
        assert np.array_equal(other.best_orientation, ref.best_orientation)
    # float64 gives the same answer
    r64 = score_particles(TemplateSet(tm.coords_A.double(), tm.amplitudes_e.double(), tm.sigmas_A.double(), tm.theta),
                          img.double(), APIX, BaselineConfig(**base), ctf=ctf)
    assert np.allclose(r64.log_likelihood, ref.log_likelihood, rtol=0, atol=0.05)


def test_bad_input_is_reported():
    tm = _two_templates()
    img, ctf = _particles(tm, 0, so3_grid(72)[:2], torch.zeros(2, 2), [15000.0, 15000.0])
    cfg = BaselineConfig(n_orientations=72, shift_range_A=0.0, defocus_offsets_A=(0.0,))
    with pytest.raises(InputError, match="no CTF"):
        score_particles(tm, img, APIX, cfg)
    bad = img.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        score_particles(tm, bad, APIX, cfg, ctf=ctf)
    with pytest.raises(InputError):
        score_particles(tm, img, APIX, BaselineConfig(n_orientations=0), ctf=ctf)
    with pytest.raises(InputError, match="whole pixels"):
        score_particles(tm, img, APIX, BaselineConfig(n_orientations=72, shift_range_A=1.0, shift_step_A=1.0,
                                                      defocus_offsets_A=(0.0,), shift_method="fft"), ctf=ctf)


def test_cli_end_to_end(tmp_path):
    from cryoconf.cli.main import main
    from cryoconf.structure import Conformations, Structure, save_conformations

    tm = _two_templates()
    n = tm.coords_A.shape[1]
    topo = Structure(
        coords_A=tm.coords_A[0].numpy(), atom_names=np.array(["CA"] * n), residue_names=np.array(["ALA"] * n),
        residue_numbers=np.arange(1, n + 1), chain_ids=np.array(["A"] * n),
        amplitudes_e=np.full(n, 10.0, dtype=np.float32), sigmas_A=np.full(n, 2.0, dtype=np.float32),
        residue_index=np.arange(n), chain_breaks=np.zeros(n, dtype=bool),
    )
    # centred so that --center first leaves the frame unchanged
    coords = tm.coords_A.numpy() - tm.coords_A[0].numpy().mean(0)
    ens = tmp_path / "ens.npz"
    save_conformations(ens, Conformations(topology=topo, coords_A=coords, theta=tm.theta))
    sim = tmp_path / "sim"
    assert main(["simulate", str(ens), "-o", str(sim), "-n", "6", "--box", str(BOX), "--apix", str(APIX),
                 "--snr", "0.5", "--shift", "2", "--pad", "1", "--no-progress", "--seed", "4"]) == 0
    out = tmp_path / "out"
    assert main(["baseline", str(ens), str(sim / "particles.star"), "-o", str(out), "--orientations", "576",
                 "--shift-range", "2", "--shift-step", "1", "--defocus-offsets", "0", "--no-progress",
                 "--plot", "3"]) == 0
    res = np.load(out / "posterior.npz")
    truth = np.load(sim / "truth.npz")
    assert res["posterior"].shape == (6, 2)
    assert np.allclose(res["posterior"].sum(1), 1.0)
    assert np.mean(res["map_template"] == truth["conformation"]) >= 5 / 6
    assert np.allclose(res["theta_map"], tm.theta[res["map_template"]])
    assert (out / "posterior.csv").read_text().count("\n") == 7
    assert (out / "posteriors.png").exists()
    # a prior over the templates: all weight on template 1
    (tmp_path / "prior.txt").write_text("0, 1")
    assert main(["baseline", str(ens), str(sim / "particles.star"), "-o", str(tmp_path / "p"), "--orientations", "72",
                 "--shift-range", "0", "--defocus-offsets", "0", "--no-progress", "--plot", "0",
                 "--prior", str(tmp_path / "prior.txt")]) == 0
    assert np.allclose(np.load(tmp_path / "p" / "posterior.npz")["posterior"][:, 1], 1.0)
    # a coarse grid refined per particle: still the right templates, and proper rotations as poses
    assert main(["baseline", str(ens), str(sim / "particles.star"), "-o", str(tmp_path / "r"), "--orientations", "72",
                 "--refine-levels", "2", "--refine-cells", "4", "--shift-range", "2", "--shift-step", "1",
                 "--defocus-offsets", "0", "--no-progress", "--plot", "0"]) == 0
    ref = np.load(tmp_path / "r" / "posterior.npz")
    assert np.mean(ref["map_template"] == truth["conformation"]) >= 5 / 6
    rot = ref["map_rotation"]
    assert np.allclose(rot @ rot.transpose(0, 2, 1), np.eye(3), atol=1e-5)
    assert np.allclose(np.linalg.det(rot), 1.0, atol=1e-5)
    assert main(["baseline", str(ens), str(sim / "particles.star"), "-o", str(out), "--refine-levels", "-1"]) == 2
    # bad input: a clear error, exit code 2
    assert main(["baseline", str(ens), str(tmp_path / "missing.star"), "-o", str(out)]) == 2
    (tmp_path / "bad.txt").write_text("1 2 3")
    assert main(["baseline", str(ens), str(sim / "particles.star"), "-o", str(out), "--prior",
                 str(tmp_path / "bad.txt")]) == 2


@pytest.mark.parametrize("contrast", ["any", "positive"])
def test_fourier_machinery_equals_direct_rendering(contrast):
    """ln p(x | m) = ln mean over the grid of p(x | c) with c rendered pixel by pixel (render_images)."""
    tm = _two_templates()
    tm.coords_A = tm.coords_A * 0.5  # well inside the box: a periodic shift equals a real-space one
    img, ctf = _particles(tm, 1, so3_grid(72)[[4]], torch.tensor([[2.0, -2.0]]), [16000.0], snr=1.0)
    img = img.double()
    cfg = BaselineConfig(n_orientations=72, shift_range_A=2.0, shift_step_A=2.0, defocus_offsets_A=(-500.0, 500.0),
                         priors=LikelihoodPriors(contrast=contrast))
    tm64 = TemplateSet(tm.coords_A.double(), tm.amplitudes_e.double(), tm.sigmas_A.double(), tm.theta)
    res = score_particles(tm64, img, APIX, cfg, ctf=ctf)
    rots = so3_grid(72, dtype=torch.float64)
    shifts = shift_grid_A(2.0, 2.0, dtype=torch.float64)
    x = img[0].reshape(-1)
    for m in range(2):
        lls = []
        for off in (-500.0, 500.0):
            c6 = CTFParams.create(torch.full((72 * 9,), 16000.0 + off), bfactor_A2=20.0, dtype=torch.float64)
            c = render_images(tm64.coords_A[m], tm64.amplitudes_e, tm64.sigmas_A, rots.repeat_interleave(9, 0),
                              shifts.repeat(72, 1), c6, BOX, APIX).reshape(72 * 9, -1)
            lls.append(log_marginal_likelihood(x.sum(), (x * x).sum(), c.sum(1), (c * c).sum(1), c @ x, BOX * BOX,
                                               cfg.priors))
        direct = float(torch.logsumexp(torch.cat(lls), 0) - math.log(72 * 9 * 2))
        assert res.log_likelihood[0, m] == pytest.approx(direct, abs=1e-3)


def test_grid_marginal_and_template_posterior_match_direct_sums():
    """ln mean over a nuisance grid, the posterior over templates and its θ moments, against
    sums of the probabilities themselves (two σ values, two particles, three templates)."""
    from cryoconf.baseline import log_mean_likelihood, template_posterior, theta_moments

    rng = np.random.default_rng(0)
    ll = [rng.normal(size=(2, 3)) - 700.0 for _ in range(2)]  # exp() alone would underflow
    marginal = log_mean_likelihood(ll)
    np.testing.assert_allclose(np.exp(marginal + 700.0), (np.exp(ll[0] + 700.0) + np.exp(ll[1] + 700.0)) / 2,
                               rtol=1e-12)
    log_prior = np.log(np.array([0.5, 0.25, 0.25]))
    post = template_posterior(marginal, log_prior)
    direct = np.exp(marginal + 700.0) * np.exp(log_prior)
    np.testing.assert_allclose(post, direct / direct.sum(1, keepdims=True), rtol=1e-12)
    theta = np.array([0.0, 1.0, 3.0])
    mean, std = theta_moments(post, theta)
    np.testing.assert_allclose(mean, post @ theta, rtol=1e-12)
    np.testing.assert_allclose(std, np.sqrt((post * (theta[None] - mean[:, None]) ** 2).sum(1)), rtol=1e-10)
