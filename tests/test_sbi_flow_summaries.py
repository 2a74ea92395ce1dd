"""cryoconf sbi: posterior summaries from the flow itself (CDF, quantiles, quadrature), no sampling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cryoconf.errors import InputError
from cryoconf.sbi.flow_summaries import summarize_flow
from cryoconf.sbi.posterior import BoundedFlow
from cryoconf.sbi.summaries import summarize_samples

LOW, HIGH = -0.25, 10.25
TEMPLATES = np.linspace(0.0, 10.0, 11)


def _flow(*, scale: float = 1.0, identity: bool = False, seed: int = 0) -> BoundedFlow:
    """A random one-parameter BoundedFlow (float64). ``scale`` multiplies the hyper-networks' last
    layer (strongly non-linear, often multimodal posteriors); ``identity`` zeroes it, which makes
    every spline the identity, so θ = a + (b − a)·Φ(y) is uniform on the prior range."""
    torch.manual_seed(seed)
    flow = BoundedFlow([LOW], [HIGH], context=12, transforms=4, hidden_features=(24, 24), bins=8).double()
    with torch.no_grad():
        for t in flow.flow.transform.transforms:
            if identity:
                t.hyper[-1].weight.zero_()
                t.hyper[-1].bias.zero_()
            else:
                t.hyper[-1].weight.mul_(scale)
                t.hyper[-1].bias.mul_(scale)
    return flow


def test_uniform_posterior_has_the_analytic_summaries():
    """Identity splines: θ ~ U(a, b), so mean (a+b)/2, std (b−a)/√12, Q(p) = a + (b−a)p and each
    template's cell holds its width / (b − a)."""
    flow = _flow(identity=True)
    context = torch.randn(5, 12, dtype=torch.float64)
    s = summarize_flow(flow, context, TEMPLATES, nodes=128)
    width = HIGH - LOW
    np.testing.assert_allclose(s.mean, 0.5 * (LOW + HIGH), atol=1e-9)
    np.testing.assert_allclose(s.std, width / math.sqrt(12), rtol=2e-3)  # point masses: 2nd-order error
    for label, level in (("Q2p5", 0.025), ("Q16", 0.16), ("Q50", 0.5), ("Q84", 0.84), ("Q97p5", 0.975)):
        np.testing.assert_allclose(s.quantiles[label], LOW + width * level, atol=1e-6)
    cells = np.diff(np.concatenate([[LOW], 0.5 * (TEMPLATES[1:] + TEMPLATES[:-1]), [HIGH]])) / width
    np.testing.assert_allclose(s.template_probs, np.broadcast_to(cells, (5, 11)), atol=1e-7)
    assert s.n_samples == 0 and "flow" in s.method


@pytest.mark.parametrize("scale", [1.0, 20.0])
def test_cdf_inverts_the_quantile_function_and_matches_zuko(scale):
    flow = _flow(scale=scale)
    context = torch.randn(7, 12, dtype=torch.float64)
    levels = torch.tensor([1e-6, 0.025, 0.3, 0.5, 0.77, 0.975, 1 - 1e-6], dtype=torch.float64)
    q = flow.quantile(levels, context)
    assert q.shape == (7, 7) and bool((q >= LOW).all()) and bool((q <= HIGH).all())
    assert bool((q[1:] >= q[:-1]).all())  # increasing in the level
    np.testing.assert_allclose(flow.cdf(q[1:-1], context).numpy(), levels[1:-1, None].expand(-1, 7).numpy(),
                               atol=1e-7)
    # against zuko's own transforms (the fast per-row paths must compute the same maps)
    dist = flow.flow(context)
    y = torch.special.ndtri(levels)[:, None, None].expand(-1, 7, 1)
    torch.testing.assert_close(q, flow.to_bounded(dist.transform.inv(y))[..., 0], rtol=0, atol=1e-9)
    theta = torch.linspace(LOW - 1, HIGH + 1, 31, dtype=torch.float64)[:, None].expand(-1, 7)
    z, _ = flow.to_unbounded(theta[..., None])
    ref = torch.special.ndtr(dist.transform(z)[..., 0])
    inside = (theta > LOW) & (theta < HIGH)
    torch.testing.assert_close(flow.cdf(theta, context)[inside], ref[inside], rtol=0, atol=1e-9)
    assert bool((flow.cdf(theta, context)[theta <= LOW] == 0).all())
    assert bool((flow.cdf(theta, context)[theta >= HIGH] == 1).all())


def test_flow_summaries_agree_with_many_samples():
    """Against 200,000 samples, to within their Monte-Carlo error. These random flows leave ~10⁻⁴ of
    their mass spread far from the mode, which only ~20 samples reach, so the samples' std itself
    scatters by ~0.01 Å; the accuracy of the flow's own figures is tested against a quantile grid."""
    flow = _flow(scale=8.0, seed=3)
    context = torch.randn(6, 12, dtype=torch.float64)
    torch.manual_seed(0)
    samples = flow.sample(200_000, context)
    ref = summarize_samples(samples, TEMPLATES)
    s = summarize_flow(flow, context, TEMPLATES)
    np.testing.assert_allclose(s.mean, ref.mean, atol=0.02)
    np.testing.assert_allclose(s.std, ref.std, atol=0.02)
    for label in s.quantiles:
        np.testing.assert_allclose(s.quantiles[label], ref.quantiles[label], atol=0.03)
    np.testing.assert_allclose(s.template_probs, ref.template_probs, atol=0.006)
    np.testing.assert_allclose(s.template_probs.sum(1), 1.0, atol=1e-12)
    assert np.all(s.template_theta[:, 0] == TEMPLATES[s.template_index])


@pytest.mark.parametrize("scale,seed", [(1.0, 0), (20.0, 1)])
def test_mean_and_std_against_a_fine_quantile_grid(scale, seed):
    """Mean and std of 128 weighted nodes against the midpoint rule on 400,000 quantiles, for a
    smooth and for a strongly multimodal posterior (where Q jumps between modes)."""
    flow = _flow(scale=scale, seed=seed)
    context = torch.randn(16, 12, dtype=torch.float64)
    p = (torch.arange(400_000, dtype=torch.float64) + 0.5) / 400_000
    q = flow.quantile(p, context)
    mean, std = q.mean(0), q.std(0, correction=0)
    s = summarize_flow(flow, context, nodes=128)
    np.testing.assert_allclose(s.mean[:, 0], mean.numpy(), atol=0.004 if scale == 1 else 0.015)
    np.testing.assert_allclose(s.std[:, 0], std.numpy(), atol=0.015 if scale == 1 else 0.04)


def test_explicit_cell_edges_and_unsorted_templates():
    flow = _flow(scale=5.0, seed=5)
    context = torch.randn(4, 12, dtype=torch.float64)
    order = np.random.default_rng(0).permutation(len(TEMPLATES))
    edges = np.concatenate([[LOW], 0.5 * (TEMPLATES[1:] + TEMPLATES[:-1]), [HIGH]])
    a = summarize_flow(flow, context, TEMPLATES)
    b = summarize_flow(flow, context, TEMPLATES[order], edges=edges)
    np.testing.assert_allclose(b.template_probs, a.template_probs[:, order], atol=1e-12)
    np.testing.assert_array_equal(order[b.template_index], a.template_index)
    with pytest.raises(InputError, match="increasing"):
        summarize_flow(flow, context, TEMPLATES, edges=edges[::-1])


def test_multi_parameter_posteriors_are_refused():
    flow = BoundedFlow([0.0, -3.0], [1.0, 0.0], context=4, transforms=2, hidden_features=(8,), bins=4)
    with pytest.raises(InputError, match="one-parameter"):
        summarize_flow(flow, torch.randn(2, 4))
    with pytest.raises(InputError, match="one-parameter"):
        flow.quantile([0.5], torch.randn(2, 4))
    with pytest.raises(InputError, match="inside"):
        _flow().quantile([0.0, 0.5], torch.randn(2, 12, dtype=torch.float64))
