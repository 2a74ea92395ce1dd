"""The symmetry-pooled posterior (D4 and its subgroups C4, C2): the image transforms and their
physics, the tabulated density, the temperature fit, and the invariance of the pool."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from cryoconf.errors import InputError
from cryoconf.imaging.projection import project_gaussians
from cryoconf.sbi import SBIModel
from cryoconf.sbi.symmetry import (
    GROUPS,
    GridPosterior,
    dihedral_images,
    fit_temperature,
    group_images,
    load_symmetry,
    symmetry_file,
)


@pytest.mark.parametrize("n", [8, 9])
def test_dihedral_images_are_eight_centre_preserving_pixel_permutations(n):
    x = torch.randn(2, n, n, generator=torch.Generator().manual_seed(0))
    g = dihedral_images(x)
    assert g.shape == (8, 2, n, n)
    assert torch.equal(g[0], x)
    c = n // 2
    for k in range(8):
        assert torch.equal(g[k, :, c, c], x[:, c, c])                      # the centre pixel stays
        assert torch.equal(g[k].flatten(1).sort(1).values, x.flatten(1).sort(1).values)  # a permutation
    flat = g[:, 0].flatten(1)
    assert len({tuple(v.tolist()) for v in flat}) == 8                       # eight distinct elements
    # a group: transforming any element again stays inside the set
    again = dihedral_images(g[3])[:, 0].flatten(1)
    assert {tuple(v.tolist()) for v in again} == {tuple(v.tolist()) for v in flat}
    with pytest.raises(InputError, match="square"):
        dihedral_images(torch.zeros(1, 4, 6))


@pytest.mark.parametrize("n", [8, 9, 128])
def test_dihedral_images_by_index_arithmetic(n):
    """Element 2k: y[i, j] = x[j, (N − i) mod N] applied k times (the rotation by 90° about pixel
    N//2); 2k + 1: then the transpose. An independent reference, written with gathers."""
    x = torch.randn(3, n, n, generator=torch.Generator().manual_seed(n))
    i = torch.arange(n)
    expected, y = [], x
    for _ in range(4):
        expected += [y, y.transpose(-1, -2)]
        y = y[:, :, (2 * (n // 2) - i) % n].transpose(-1, -2)   # y'[i, j] = y[j, (2c − i) mod N], c = N//2
    assert torch.equal(dihedral_images(x), torch.stack(expected))
    assert torch.equal(dihedral_images(x.double()), torch.stack(expected).double())


@pytest.mark.parametrize("group", ["C2", "C4", "D4"])
def test_group_images_are_the_groups_elements_of_d4(group):
    x = torch.randn(3, 9, 9, generator=torch.Generator().manual_seed(1))
    g = group_images(x, group)
    assert torch.equal(g, dihedral_images(x)[list(GROUPS[group])])
    assert torch.equal(g[0], x)
    # closed under composition: transforming an element by the group stays in the set
    elements = {tuple(v.tolist()) for v in g[:, 0].flatten(1)}
    for k in range(g.shape[0]):
        assert {tuple(v.tolist()) for v in group_images(g[k], group)[:, 0].flatten(1)} == elements
    if group == "C2":  # the rotation by 180° about the centre pixel: (r, c) → (−r, −c) about N//2
        idx = (torch.arange(9) - 4)
        rows = (4 - idx) % 9
        assert torch.equal(g[1], x[:, rows][:, :, rows])
    with pytest.raises(InputError, match="C2, C4, D4"):
        group_images(x, "D2")


def test_each_transform_is_a_projection_of_the_same_structure_at_another_pose():
    """g·I_A = I_{G·A}: every image transform is the projection at a rotated pose (so the
    posterior under a uniform SO(3) pose prior is the same)."""
    rng = np.random.default_rng(1)
    coords = torch.as_tensor(rng.normal(scale=8.0, size=(30, 3)))
    amps = torch.as_tensor(rng.uniform(0.5, 1.5, size=30))
    box, apix = 40, 1.5
    a = torch.as_tensor(stats.special_ortho_group.rvs(3, random_state=2))
    image = project_gaussians(coords, amps, 2.0, box, apix, rotations=a[None])
    # the 2D map M of each transform, read from the image of pixel coordinates: g(I)(r) = I(M r)
    idx = torch.arange(box, dtype=torch.float64) - box // 2
    xs, ys = idx[None, :].expand(box, box), idx[:, None].expand(box, box)
    gx, gy = dihedral_images(xs[None])[:, 0], dihedral_images(ys[None])[:, 0]
    c = box // 2
    inner = (slice(1, None), slice(1, None))  # for even N the first row and column map onto themselves
    for k, g_image in enumerate(dihedral_images(image)[:, 0]):
        m = torch.stack([torch.stack([gx[k, c, c + 1], gx[k, c + 1, c]]),
                         torch.stack([gy[k, c, c + 1], gy[k, c + 1, c]])])  # columns: M e_x, M e_y
        assert torch.equal(gx[k][inner], (m[0, 0] * xs + m[0, 1] * ys)[inner])
        assert torch.equal(gy[k][inner], (m[1, 0] * xs + m[1, 1] * ys)[inner])
        g_inv = torch.eye(3, dtype=torch.float64)
        g_inv[:2, :2] = m
        g_inv[2, 2] = torch.linalg.det(m)
        g = g_inv.T                                                           # a proper rotation
        assert torch.allclose(g @ g.T, torch.eye(3, dtype=torch.float64)) and abs(float(torch.linalg.det(g)) - 1) < 1e-12
        other = project_gaussians(coords, amps, 2.0, box, apix, rotations=(g @ a)[None])[0]
        assert torch.allclose(g_image[inner], other[inner], atol=1e-6 * float(image.abs().max())), k
    assert len({tuple(np.round(dihedral_images(image)[k, 0].flatten().numpy(), 6)) for k in range(8)}) == 8


def _gaussian_grid(mu, sd, nodes_per_particle=400, seed=0):
    g = torch.Generator().manual_seed(seed)
    nodes = torch.sort(mu + sd * (torch.rand(nodes_per_particle, mu.numel(), generator=g, dtype=torch.float64)
                                  * 16 - 8), dim=0).values
    nodes[0], nodes[-1] = mu - 8 * sd, mu + 8 * sd
    return nodes, -0.5 * ((nodes - mu) / sd) ** 2 + 3.0  # unnormalised


def test_grid_posterior_of_a_gaussian_is_exact():
    mu = torch.tensor([0.0, 2.5, -1.0], dtype=torch.float64)
    sd = torch.tensor([1.0, 0.3, 2.0], dtype=torch.float64)
    g = GridPosterior(*_gaussian_grid(mu, sd))
    mean, std = g.moments()
    torch.testing.assert_close(mean, mu, atol=3e-3 * sd.max(), rtol=0)
    torch.testing.assert_close(std / sd, torch.ones(3, dtype=torch.float64), atol=5e-3, rtol=0)
    levels = torch.tensor([0.025, 0.16, 0.5, 0.84, 0.975], dtype=torch.float64)
    expected = mu[None] + sd[None] * torch.as_tensor(stats.norm.ppf(levels.numpy()))[:, None]
    torch.testing.assert_close((g.quantile(levels) - expected) / sd, torch.zeros(5, 3, dtype=torch.float64), atol=5e-3, rtol=0)
    # the CDF inverts the quantile function, and is 0 / 1 outside the nodes
    torch.testing.assert_close(g.cdf(g.quantile(levels)), levels[:, None].expand(-1, 3), atol=1e-9, rtol=0)
    assert torch.equal(g.cdf(torch.tensor([-1e3, 1e3])), torch.tensor([[0.0] * 3, [1.0] * 3], dtype=torch.float64))
    # normalisation: log Z of exp(3 − z²/2) is 3 + log(√(2π)·sd)
    torch.testing.assert_close(g.log_norm, 3 + torch.log(np.sqrt(2 * np.pi) * sd), atol=1e-3, rtol=0)
    x = g.sample(20_000, torch.Generator().manual_seed(1))
    for b in range(3):
        assert stats.kstest(((x[:, b] - mu[b]) / sd[b]).numpy(), "norm").pvalue > 1e-3
    with pytest.raises(InputError, match="non-finite"):
        GridPosterior(torch.linspace(0, 1, 5)[:, None], torch.tensor([0.0, float("nan"), 0, 0, 0])[:, None])


def test_temperature_fit_recovers_the_width_of_the_truth():
    """Pooled log densities N(μ, k²) for truths drawn from N(μ, 1): the likelihood is
    largest at τ = k², which narrows the pool to the truth's width."""
    g = torch.Generator().manual_seed(4)
    b, k = 4000, 1.3
    mu = torch.randn(b, generator=g, dtype=torch.float64) * 3
    truth = mu + torch.randn(b, generator=g, dtype=torch.float64)
    nodes = mu[None] + torch.linspace(-12, 12, 600, dtype=torch.float64)[:, None]
    pooled = -0.5 * ((nodes - mu) / k) ** 2
    at_truth = -0.5 * ((truth - mu) / k) ** 2
    tau, curve = fit_temperature(nodes, pooled, at_truth)
    sample_var = float(((truth - mu) ** 2).mean())
    assert tau == pytest.approx(k * k / sample_var, rel=0.01)
    assert curve[round(tau, 4)] == min(curve.values())


def _toy_model(seed=0):
    torch.manual_seed(seed)
    model = SBIModel(24, 2.0, ["theta"], [0.0], [4.0], [0.0, 1.0, 2.0, 3.0, 4.0],
                     {"name": "cnn", "params": {"channels": [4, 8], "hidden": 16, "out_features": 8}},
                     {"transforms": 2, "hidden_features": [16, 16], "bins": 6})
    for p in model.posterior.parameters():   # a flow whose posterior depends visibly on the image
        p.data.normal_(0, 0.5)
    return model.eval()


def test_pooled_posterior_is_invariant_and_a_density():
    model = _toy_model()
    x = torch.randn(3, 24, 24, generator=torch.Generator().manual_seed(5))
    plain = model.summarize(x)
    model.use_symmetry(1.3)
    pooled = [model.summarize(g) for g in dihedral_images(x)]
    for s in pooled[1:]:
        np.testing.assert_allclose(s.mean, pooled[0].mean, atol=1e-5)
        np.testing.assert_allclose(s.std, pooled[0].std, atol=1e-5)
        np.testing.assert_allclose(s.template_probs, pooled[0].template_probs, atol=1e-5)
    assert np.abs(pooled[0].mean - plain.mean).max() > 1e-3   # the pool is not the plain flow
    np.testing.assert_allclose(pooled[0].template_probs.sum(1), 1.0, atol=1e-9)
    theta = torch.linspace(1e-6, 4 - 1e-6, 200_001, dtype=torch.float64)  # this flow has mass close to a bound
    density = model.log_prob(theta[:, None, None].expand(-1, 3, 1).float(), x).exp().double()
    np.testing.assert_allclose(torch.trapezoid(density, theta, dim=0).numpy(), 1.0, atol=3e-3)
    s = model.sample(x, 4000)
    assert s.shape == (4000, 3, 1) and float(s.min()) >= 0.0 and float(s.max()) <= 4.0
    np.testing.assert_allclose(s[..., 0].double().mean(0).numpy(), pooled[0].mean[:, 0], atol=0.05)
    model.train()
    assert model.pooled is None   # training drops the pool


def test_pool_of_a_symmetric_image_is_the_flow_at_temperature_one():
    """For an image equal to all its transforms the eight posteriors coincide: the pool at
    τ = 1 is the flow itself (its exact summaries), which checks the tabulation."""
    model = _toy_model(1)
    i = torch.arange(24.0) - 12
    x = torch.exp(-(i[None, :] ** 2 + i[:, None] ** 2) / 40.0)[None] + 0.3 * torch.exp(-(i[None, :] ** 2 + i[:, None] ** 2) / 4.0)[None]
    assert all(torch.equal(g, x) for g in dihedral_images(x))
    plain = model.summarize(x)
    pooled = model.use_symmetry(1.0).summarize(x)
    np.testing.assert_allclose(pooled.mean, plain.mean, atol=2e-3)
    np.testing.assert_allclose(pooled.std, plain.std, atol=2e-3)
    for label in ("Q2p5", "Q50", "Q97p5"):  # 0.1 % of the prior range: this random flow has sharp features
        np.testing.assert_allclose(pooled.quantiles[label], plain.quantiles[label], atol=4e-3)
    np.testing.assert_allclose(pooled.template_probs, plain.template_probs, atol=3e-3)


@pytest.mark.parametrize("group", ["C2", "C4"])
def test_subgroup_pool_is_invariant_under_its_group_only(group):
    model = _toy_model(2)
    x = torch.randn(2, 24, 24, generator=torch.Generator().manual_seed(6))
    model.use_symmetry(1.2, group)
    views = group_images(x, group)
    pooled = [model.summarize(v) for v in views]
    for s in pooled[1:]:
        np.testing.assert_allclose(s.mean, pooled[0].mean, atol=1e-5)
        np.testing.assert_allclose(s.template_probs, pooled[0].template_probs, atol=1e-5)
    mirrored = model.summarize(x.transpose(-1, -2))   # a mirror is not in C2 or C4: a different pool
    assert np.abs(mirrored.mean - pooled[0].mean).max() > 1e-4
    assert str(pooled[0].method).startswith(f"{group}-pooled")
    d4 = model.use_symmetry(1.2).summarize(x)
    assert np.abs(d4.mean - pooled[0].mean).max() > 1e-4   # fewer views, another pool


def test_c2_pool_of_a_c2_symmetric_image_is_the_flow():
    """An image equal to its rotation by 180° (but not to its mirrors): the C2 pool at τ = 1 is the flow."""
    model = _toy_model(1)
    x = torch.randn(1, 24, 24, generator=torch.Generator().manual_seed(8))
    x = (x + group_images(x, "C2")[1]) / 2
    assert torch.equal(group_images(x, "C2")[1], x) and not torch.equal(x.transpose(-1, -2), x)
    plain = model.summarize(x)
    pooled = model.use_symmetry(1.0, "C2").summarize(x)
    np.testing.assert_allclose(pooled.mean, plain.mean, atol=2e-3)
    np.testing.assert_allclose(pooled.std, plain.std, atol=2e-3)
    np.testing.assert_allclose(pooled.template_probs, plain.template_probs, atol=3e-3)


def test_load_symmetry_checks_file_checkpoint_and_group(tmp_path):
    import json

    assert symmetry_file("D4") == "symmetry.json" and symmetry_file("C2") == "symmetry_C2.json"
    ckpt = tmp_path / "checkpoint.7.pt"
    with pytest.raises(InputError, match="--group C2"):
        load_symmetry(tmp_path, ckpt, "C2")
    (tmp_path / "symmetry.json").write_text(json.dumps({"checkpoint": ckpt.name, "temperature": 1.25,
                                                        "group": "D4 (rotations by 90° and mirrors)"}))
    assert load_symmetry(tmp_path, ckpt) == 1.25                         # a record written before subgroups
    (tmp_path / "symmetry_C4.json").write_text(json.dumps({"checkpoint": ckpt.name, "temperature": 1.1,
                                                           "group": "C2"}))
    with pytest.raises(InputError, match="group C2, not C4"):
        load_symmetry(tmp_path, ckpt, "C4")
    with pytest.raises(InputError, match="fitted for checkpoint.7.pt"):
        load_symmetry(tmp_path, tmp_path / "checkpoint.9.pt")


def test_symmetry_needs_one_parameter_and_a_positive_temperature():
    model = SBIModel(16, 2.0, ["theta", "snr"], [0.0, 0.0], [1.0, 1.0], [0.0, 1.0],
                     {"name": "cnn", "params": {"channels": [4], "hidden": 8, "out_features": 4}},
                     {"transforms": 1, "hidden_features": [8], "bins": 4})
    with pytest.raises(InputError, match="one-parameter"):
        model.use_symmetry(1.0)
    with pytest.raises(InputError, match="positive"):
        _toy_model().use_symmetry(0.0)
    with pytest.raises(InputError, match="unknown symmetry group"):
        _toy_model().use_symmetry(1.0, "C3")


def test_cli_groups_are_the_library_groups():
    from cryoconf.cli.sbi import SYMMETRY_GROUPS

    assert set(SYMMETRY_GROUPS) == set(GROUPS)


def _averaged_model(group, seed=0):
    model = _toy_model(seed)
    spec = model.spec
    averaged = SBIModel(spec["box"], spec["apix_A"], spec["parameter_names"], spec["low"], spec["high"],
                        spec["template_theta"], dict(spec["embedding"], average_over=group), spec["flow"])
    averaged.load_state_dict(model.state_dict())   # the same weights: averaging changes no parameter
    return model, averaged.eval()


@pytest.mark.parametrize("group", ["C2", "C4"])
def test_features_averaged_over_a_group_give_an_invariant_posterior(group):
    plain, model = _averaged_model(group)
    assert model.average_over == group and plain.average_over is None and "average_over" not in plain.spec["embedding"]
    x = torch.randn(3, 24, 24, generator=torch.Generator().manual_seed(9))
    views = group_images(x, group)
    with torch.no_grad():   # the Reynolds operator: the mean of the plain features over the views
        expected = torch.stack([plain.embed(v) for v in views]).mean(0)
        torch.testing.assert_close(model.embed(x), expected, rtol=1e-5, atol=1e-6)
        theta = torch.linspace(0.2, 3.8, 7)[:, None, None].expand(-1, 3, 1)
        lp = [model.log_prob(theta, v) for v in views]
        for other in lp[1:]:
            torch.testing.assert_close(other, lp[0], rtol=1e-5, atol=1e-5)
        assert (model.log_prob(theta, x.transpose(-1, -2)) - lp[0]).abs().max() > 1e-3   # a mirror is not in C2, C4
        assert (plain.log_prob(theta, x) - lp[0]).abs().max() > 1e-3                      # the plain flow is not
    s = [model.summarize(v) for v in views]
    np.testing.assert_allclose(s[1].mean, s[0].mean, atol=1e-5)


def test_averaged_features_round_trip_and_refuse_a_pool_that_adds_nothing(tmp_path):
    _, model = _averaged_model("C2")
    model.save(tmp_path / "m.pt")
    back = SBIModel.load(tmp_path / "m.pt").eval()
    assert back.average_over == "C2"
    x = torch.randn(2, 24, 24, generator=torch.Generator().manual_seed(10))
    with torch.no_grad():
        torch.testing.assert_close(back.embed(x), model.embed(x))
    with pytest.raises(InputError, match="already averages its features over C2.*pool over C4 or D4 instead"):
        model.use_symmetry(1.1, "C2")
    pooled = [model.use_symmetry(1.1, "C4").summarize(v) for v in group_images(x, "C4")]   # C4 ⊋ C2: a real pool
    np.testing.assert_allclose(pooled[1].mean, pooled[0].mean, atol=1e-5)
    _, d4 = _averaged_model("D4")
    with pytest.raises(InputError, match="already averages its features over D4.*without a pool"):
        d4.use_symmetry(1.1, "C4")
    with pytest.raises(InputError, match="unknown symmetry group"):
        _averaged_model("C3")
