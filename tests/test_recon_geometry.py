"""Structural priors of ``cryoconf.recon.geometry``: pair lists and losses (analytic values, invariances, gradients)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cryoconf.imaging.rotations import quaternion_to_matrix
from cryoconf.recon import geometry as geo


def random_walk(n: int, seed: int, step: float = 3.8) -> np.ndarray:
    """(n, 3) Cα-like chain: a random walk with fixed ``step`` Å."""
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(n, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return np.cumsum(v * step, axis=0)


def random_rotation(seed: int, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(4, generator=g, dtype=dtype)
    return quaternion_to_matrix(q / q.norm())


def all_pairs(n: int) -> torch.Tensor:
    i, j = np.triu_indices(n, k=1)
    return torch.from_numpy(np.stack([i, j], 1).astype(np.int64))


def pair_list_reference(x: torch.Tensor, x0: torch.Tensor, pairs: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """The degradation loss computed directly from a pair list (no Gram matrix)."""
    d2 = geo.pair_distances_sq(x, pairs).clamp_min(eps)
    d02 = geo.pair_distances_sq(x0.reshape(1, -1, 3).to(x), pairs).clamp_min(eps)
    return torch.log(d2 / d02).square().mean()


@pytest.fixture(scope="module")
def chain40() -> torch.Tensor:
    return torch.from_numpy(random_walk(40, seed=1))


# ---------------------------------------------------------------------------------------------
# geometry_degradation_loss
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_degradation_zero_at_base(chain40, dtype):
    x0 = chain40.to(dtype)
    pairs = geo.geometry_pairs(x0.numpy())
    assert pairs.shape[0] == 40 * 39 // 2  # all pairs for a small protein
    assert float(geo.geometry_degradation_loss(x0[None].repeat(3, 1, 1), x0, pairs)) == 0.0
    assert float(geo.geometry_degradation_loss(x0[None], x0, pairs[1:])) == 0.0


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.float64, 1e-20)])
def test_degradation_rigid_invariance(chain40, dtype, tol):
    x0 = chain40.to(dtype)
    R = random_rotation(3, dtype)
    t = torch.tensor([12.0, -7.0, 30.0], dtype=dtype)
    moved = (x0 @ R.T + t)[None]
    deformed = x0.clone()
    deformed[20:] = deformed[20:] * 1.1
    pairs = geo.geometry_pairs(x0.numpy())
    for p in (pairs, pairs[:-5]):
        loss_rigid = float(geo.geometry_degradation_loss(moved, x0, p))
        loss_def = float(geo.geometry_degradation_loss(deformed[None], x0, p))
        assert loss_def > 1e-3
        assert loss_rigid < tol * max(1.0, loss_def)


def test_degradation_matches_reference_float32_far_from_origin(chain40):
    """float32 stays exact (to 1e-5) for a protein 500 Å from the origin: direct differences, no Gram matrix."""
    g = torch.Generator().manual_seed(5)
    x0 = chain40.float() + 500.0
    x = x0[None] + 1.5 * torch.randn(4, 40, 3, generator=g)
    pairs = all_pairs(40)
    ref = pair_list_reference(x.double(), x0.double(), pairs)
    got = geo.geometry_degradation_loss(x, x0, pairs)
    assert float(ref) > 0.01
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=0.0)
    # the order of the pairs does not matter
    perm = torch.randperm(pairs.shape[0], generator=g)
    torch.testing.assert_close(geo.geometry_degradation_loss(x, x0, pairs[perm]), got, rtol=1e-5, atol=0.0)


def test_sample_pairs_is_unbiased_estimate(chain40):
    g = torch.Generator().manual_seed(8)
    x0 = chain40
    x = x0[None] + 1.0 * torch.randn(2, 40, 3, generator=g, dtype=torch.float64)
    pairs = all_pairs(40)  # 780
    exact = float(geo.geometry_degradation_loss(x, x0, pairs))
    assert geo.sample_pairs(pairs, 0) is pairs and geo.sample_pairs(pairs, 780) is pairs
    draws = [float(geo.geometry_degradation_loss(x, x0, geo.sample_pairs(pairs, 50, generator=g)))
             for _ in range(400)]
    assert all(geo.sample_pairs(pairs, 50, generator=g).shape == (50, 2) for _ in range(3))
    mean, sem = np.mean(draws), np.std(draws) / np.sqrt(len(draws))
    assert np.std(draws) > 0.01 * exact  # the subsets really differ
    assert abs(mean - exact) < 4 * sem


@pytest.mark.parametrize("s", [0.7, 1.3, 2.0])
def test_degradation_uniform_scaling_analytic(chain40, s):
    x0 = chain40  # float64
    expected = math.log(s * s) ** 2
    pairs = all_pairs(40)
    for p in (pairs, pairs[::3]):
        loss = float(geo.geometry_degradation_loss((s * x0)[None], x0, p))
        assert loss == pytest.approx(expected, rel=1e-10)


def test_degradation_empty_pairs(chain40):
    assert float(geo.geometry_degradation_loss(chain40[None], chain40, torch.zeros(0, 2, dtype=torch.long))) == 0.0


# ---------------------------------------------------------------------------------------------
# geometry_pairs
# ---------------------------------------------------------------------------------------------

def test_geometry_pairs_all_pairs_when_small():
    x = random_walk(50, seed=2)
    p = geo.geometry_pairs(x, all_pairs_max=100)
    assert p.dtype == torch.long and p.shape == (50 * 49 // 2, 2)
    assert torch.equal(p, all_pairs(50))
    assert geo.geometry_pairs(x, all_pairs_max=50).shape[0] == 50 * 49 // 2  # N == all_pairs_max: still all


@pytest.mark.parametrize("cutoff", [15.0, 8.0])
def test_geometry_pairs_neighbour_list_matches_brute_force(cutoff):
    n, k = 300, 3
    x = random_walk(n, seed=4)
    x[200:] += np.array([500.0, 0.0, 0.0])  # the third segment is far from the rest
    breaks = np.zeros(n, dtype=bool)
    breaks[[100, 200]] = True  # segments 0-99, 100-199, 200-299
    seg = np.repeat([0, 1, 2], 100)
    p = geo.geometry_pairs(x, breaks, cutoff_A=cutoff, sequence_neighbours=k, all_pairs_max=100)
    got = {tuple(r) for r in p.numpy().tolist()}
    assert len(got) == p.shape[0]  # unique
    assert bool((p[:, 0] < p[:, 1]).all())
    assert p.shape[0] < n * (n - 1) // 2

    d = np.linalg.norm(x[:, None] - x[None], axis=-1)
    i, j = np.triu_indices(n, k=1)
    close = {(a, b) for a, b in zip(i.tolist(), j.tolist()) if d[a, b] <= cutoff}
    seq = {(a, a + s) for s in range(1, k + 1) for a in range(n - s) if seg[a] == seg[a + s]}
    assert got == close | seq
    # the sequence part does not cross a break: across the far break (199 | 200) there is no pair at all
    assert not any(a < 200 <= b for a, b in got)
    if cutoff < 3 * 3.8:  # then some sequence neighbours lie beyond the cutoff: the union is really tested
        assert len(seq - close) > 0


def test_geometry_pairs_sequence_neighbours_without_breaks():
    n = 150
    x = np.zeros((n, 3))
    x[:, 0] = np.arange(n) * 20.0  # every residue 20 Å from the next: nothing within the cutoff
    p = geo.geometry_pairs(x, None, cutoff_A=15.0, sequence_neighbours=2, all_pairs_max=100)
    expected = sorted([(a, a + 1) for a in range(n - 1)] + [(a, a + 2) for a in range(n - 2)])
    assert p.numpy().tolist() == [list(e) for e in expected]


# ---------------------------------------------------------------------------------------------
# bond pairs / bond loss
# ---------------------------------------------------------------------------------------------

def test_bond_pairs_respect_chain_breaks():
    breaks = np.array([False, False, False, True, False, False, True])
    assert geo.bond_pairs(7, breaks).numpy().tolist() == [[0, 1], [1, 2], [3, 4], [4, 5]]
    assert geo.bond_pairs(4).numpy().tolist() == [[0, 1], [1, 2], [2, 3]]
    # a True at position 0 is the start of the first segment anyway
    b0 = np.array([True, False, False])
    assert geo.bond_pairs(3, b0).numpy().tolist() == [[0, 1], [1, 2]]
    assert geo.bond_pairs(1).shape == (0, 2)
    assert geo.bond_pairs(0).shape == (0, 2)


def test_bond_loss_analytic():
    # consecutive distances 3.8, 4.8, 2.8 -> deviations 0, 1, -1
    x = torch.tensor([[0.0, 0, 0], [3.8, 0, 0], [3.8, 4.8, 0], [3.8, 4.8, 2.8]], dtype=torch.float64)
    pairs = geo.bond_pairs(4)
    assert float(geo.bond_loss(x[None], pairs)) == pytest.approx(2.0 / 3.0, rel=1e-12)
    # a batch: mean over pairs and batch; the second structure has deviations 0.2, 0.2, 0.2
    x2 = torch.tensor([[0.0, 0, 0], [4.0, 0, 0], [4.0, 4.0, 0], [4.0, 4.0, 4.0]], dtype=torch.float64)
    loss = float(geo.bond_loss(torch.stack([x, x2]), pairs))
    assert loss == pytest.approx((0 + 1 + 1 + 3 * 0.04) / 6, rel=1e-12)
    # a chain break removes the long "bond"
    breaks = np.array([False, False, True, False])
    assert float(geo.bond_loss(x[None], geo.bond_pairs(4, breaks))) == pytest.approx(0.5, rel=1e-12)


# ---------------------------------------------------------------------------------------------
# clash pairs / clash loss
# ---------------------------------------------------------------------------------------------

def test_clash_pairs_exclude_only_bonded_neighbours():
    breaks = np.array([False, False, True, False])
    p = geo.clash_pairs(np.zeros((4, 3)), breaks).numpy().tolist()
    # (0,1) and (2,3) are bonded; (1,2) crosses the break so it is a clash candidate
    assert p == [[0, 2], [0, 3], [1, 2], [1, 3]]


def test_clash_loss_zero_without_clashes():
    x = torch.zeros(1, 10, 3, dtype=torch.float64)
    x[0, :, 0] = torch.arange(10) * 3.8  # non-consecutive pairs at ≥ 7.6 Å
    x.requires_grad_(True)
    pairs = geo.clash_pairs(x.detach()[0].numpy())
    loss = geo.clash_loss(x, pairs)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.count_nonzero(x.grad) == 0
    assert geo.clash_loss(x, torch.zeros(0, 2, dtype=torch.long)).item() == 0.0


def test_clash_loss_analytic():
    # a straight chain 0-4 (3.8 Å steps) and a separate residue 5 (a new segment) 3 Å above residue 0
    base = torch.zeros(6, 3, dtype=torch.float64)
    base[:5, 0] = torch.arange(5) * 3.8
    base[5] = torch.tensor([0.0, 3.0, 0.0])
    breaks = np.array([False] * 5 + [True])
    pairs = geo.clash_pairs(base.numpy(), breaks)
    assert [4, 5] in pairs.numpy().tolist()  # across the break: a candidate
    assert float(geo.clash_loss(base[None], pairs)) == pytest.approx(1.0, rel=1e-12)  # (3 − 4)²
    second = base.clone()
    second[5] = torch.tensor([0.0, 3.5, 0.0])
    batch = torch.stack([base, second])
    # two clashing pairs over the batch: ((3−4)² + (3.5−4)²) / 2
    assert float(geo.clash_loss(batch, pairs)) == pytest.approx(0.625, rel=1e-12)


# ---------------------------------------------------------------------------------------------
# centering / continuity
# ---------------------------------------------------------------------------------------------

def test_centering_loss(chain40):
    x0 = chain40
    assert float(geo.centering_loss(x0[None], x0)) == pytest.approx(0.0, abs=1e-20)
    t1, t2 = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64), torch.tensor([0.5, 0.0, 0.0], dtype=torch.float64)
    assert float(geo.centering_loss((x0 + t1)[None], x0)) == pytest.approx(14.0, rel=1e-10)
    batch = torch.stack([x0 + t1, x0 + t2])
    assert float(geo.centering_loss(batch, x0)) == pytest.approx((14.0 + 0.25) / 2, rel=1e-10)
    # a rotation about the centroid does not change the loss
    c = x0.mean(0)
    rotated = (x0 - c) @ random_rotation(8).T + c
    assert float(geo.centering_loss(rotated[None], x0)) == pytest.approx(0.0, abs=1e-20)


def test_continuity_loss_analytic(chain40):
    x0 = chain40
    pairs = geo.bond_pairs(40)
    assert float(geo.continuity_loss(x0[None], x0, pairs)) == pytest.approx(0.0, abs=1e-20)
    # uniform scaling by s changes every consecutive distance by (s − 1)·3.8
    s = 1.25
    assert float(geo.continuity_loss((s * x0)[None], x0, pairs)) == pytest.approx(((s - 1) * 3.8) ** 2, rel=1e-10)


# ---------------------------------------------------------------------------------------------
# gradients (float64 gradcheck)
# ---------------------------------------------------------------------------------------------

def _perturbed(x0: torch.Tensor, seed: int, scale: float, batch: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (x0[None] + scale * torch.randn(batch, *x0.shape, generator=g, dtype=torch.float64)).requires_grad_(True)


def test_gradcheck_degradation():
    x0 = torch.from_numpy(random_walk(8, seed=11))
    x = _perturbed(x0, 12, 0.5)
    pairs = all_pairs(8)
    assert torch.autograd.gradcheck(lambda c: geo.geometry_degradation_loss(c, x0, pairs), (x,))
    assert torch.autograd.gradcheck(lambda c: geo.geometry_degradation_loss(c, x0, pairs[2:]), (x,))


def test_gradcheck_bond_and_continuity():
    x0 = torch.from_numpy(random_walk(8, seed=13))
    x = _perturbed(x0, 14, 0.5)
    breaks = np.zeros(8, dtype=bool)
    breaks[5] = True
    pairs = geo.bond_pairs(8, breaks)
    assert torch.autograd.gradcheck(lambda c: geo.bond_loss(c, pairs), (x,))
    assert torch.autograd.gradcheck(lambda c: geo.continuity_loss(c, x0, pairs), (x,))


def test_gradcheck_clash():
    g = torch.Generator().manual_seed(15)
    x = (4.0 * torch.rand(2, 8, 3, generator=g, dtype=torch.float64)).requires_grad_(True)  # a compact cloud
    pairs = geo.clash_pairs(x.detach()[0].numpy())
    d = geo.pair_distances_sq(x.detach(), pairs).sqrt()
    assert int((d < 4.0).sum()) >= 5  # some clash
    assert float((d - 4.0).abs().min()) > 0.01  # away from the boundary of the clash set
    assert torch.autograd.gradcheck(lambda c: geo.clash_loss(c, pairs), (x,))
