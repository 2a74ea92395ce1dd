"""Residue groups and the Gaussian-mixture soft segmentation of ``cryoconf.recon.segmentation``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cryoconf.errors import InputError
from cryoconf.recon.segmentation import SegmentationGMM, residue_groups

# ---------------------------------------------------------------------------------------------
# residue_groups
# ---------------------------------------------------------------------------------------------

CHAINS = ["B", "B", "B", "A", "A", "C", "C", "C"]


def test_residue_groups_whole_and_chain():
    assert residue_groups(CHAINS, "whole").tolist() == [0] * 8
    # chains numbered in order of appearance, not alphabetically
    g = residue_groups(CHAINS, "chain")
    assert g.dtype == np.int64
    assert g.tolist() == [0, 0, 0, 1, 1, 2, 2, 2]
    assert residue_groups(np.array(["A"] * 4), "chain").tolist() == [0, 0, 0, 0]


def test_residue_groups_ranges():
    g = residue_groups(CHAINS, "ranges", [(0, 2), (2, 6), (6, 8)])
    assert g.tolist() == [0, 0, 1, 1, 1, 1, 2, 2]
    # the group number follows the order of the ranges, not their position
    assert residue_groups(CHAINS, "ranges", [(4, 8), (0, 4)]).tolist() == [1] * 4 + [0] * 4


@pytest.mark.parametrize("ranges,match", [
    ([(0, 5), (4, 8)], "overlaps"),
    ([(0, 3), (4, 8)], "uncovered"),
    ([(0, 4)], "uncovered"),
    ([(0, 9)], "must satisfy"),
    ([(3, 3), (0, 8)], "must satisfy"),
    ([], "at least one"),
    (None, "at least one"),
])
def test_residue_groups_bad_ranges(ranges, match):
    with pytest.raises(InputError, match=match):
        residue_groups(CHAINS, "ranges", ranges)


def test_residue_groups_bad_mode():
    with pytest.raises(InputError, match="whole, chain or ranges"):
        residue_groups(CHAINS, "domains")


# ---------------------------------------------------------------------------------------------
# SegmentationGMM
# ---------------------------------------------------------------------------------------------

GROUPS = np.array([0] * 12 + [1] * 9)  # 12 and 9 residues, 3 segments each: blocks of 4 and 3


def test_matrix_rows_sum_to_one_and_zero_outside_group():
    torch.manual_seed(0)
    seg = SegmentationGMM(GROUPS, n_segments=3, tau=1.0)
    assert seg.n_total == 6
    for sample in (False, True):
        G = seg.matrix(sample=sample)
        assert G.shape == (21, 6)
        torch.testing.assert_close(G.sum(-1), torch.ones(21), rtol=0, atol=1e-6)
        assert bool((G >= 0).all())
        assert torch.count_nonzero(G[:12, 3:]) == 0
        assert torch.count_nonzero(G[12:, :3]) == 0
    # with a low temperature the assignment is soft, and it hardens as τ grows
    hardness = []
    for tau in (1.0, 5.0, 20.0, 200.0):
        seg.tau = tau
        hardness.append(float(seg.matrix().detach().max(-1).values.min()))
    assert hardness[0] < 0.9
    assert hardness == sorted(hardness) and hardness[-1] > 1 - 1e-6


def test_matrix_hard_contiguous_blocks_at_init():
    seg = SegmentationGMM(GROUPS, n_segments=3, tau=200.0)
    G = seg.matrix()
    assert float(G.detach().max(-1).values.min()) > 1 - 1e-6  # (nearly) hard
    expected = [0] * 4 + [1] * 4 + [2] * 4 + [3] * 3 + [4] * 3 + [5] * 3
    assert G.argmax(-1).tolist() == expected
    assert seg.labels().tolist() == expected
    # the default temperature already gives the same blocks
    assert SegmentationGMM(GROUPS, n_segments=3).labels().tolist() == expected


def test_matrix_single_segment_is_one():
    G = SegmentationGMM(GROUPS, n_segments=1).matrix()
    expected = torch.zeros(21, 2)
    expected[:12, 0] = 1
    expected[12:, 1] = 1
    assert torch.equal(G, expected)


def test_sigma_at_init():
    seg = SegmentationGMM(GROUPS, n_segments=4)
    mu, sigma, alpha = seg.parameters_sample(sample=False)
    torch.testing.assert_close(mu[0], torch.tensor([0.125, 0.375, 0.625, 0.875]))
    torch.testing.assert_close(sigma, torch.full((2, 4), 0.125), rtol=1e-5, atol=1e-6)
    assert torch.equal(alpha, torch.zeros(2, 4))


def test_sample_deterministic_vs_random():
    torch.manual_seed(1)
    seg = SegmentationGMM(GROUPS, n_segments=3, tau=5.0)
    assert torch.equal(seg.matrix(sample=False), seg.matrix(sample=False))
    a, b = seg.matrix(sample=True), seg.matrix(sample=True)
    assert float((a - b).detach().abs().max()) > 1e-5
    # and the samples are close to the mean (posterior std 0.01 at init)
    assert float((a - seg.matrix(sample=False)).detach().abs().max()) < 0.2


def test_matrix_gradients_reach_parameters():
    seg = SegmentationGMM(GROUPS, n_segments=3, tau=5.0)
    w = torch.arange(21 * 6, dtype=torch.float32).reshape(21, 6)
    (seg.matrix(sample=True) * w).sum().backward()
    for name in ("nu_mu", "nu_sigma", "nu_alpha", "log_beta"):
        grad = getattr(seg, name).grad
        assert grad is not None and float(grad.abs().sum()) > 0, name


def test_kl_closed_form():
    s = 1.5
    seg = SegmentationGMM(np.zeros(5, dtype=np.int64), n_segments=1, prior_std=s)
    nu = [0.7, -0.2, 1.1]
    beta = [0.3, 0.5, 0.05]
    with torch.no_grad():
        seg.nu_mu.fill_(nu[0])
        seg.nu_sigma.fill_(nu[1])
        seg.nu_alpha.fill_(nu[2])
        seg.log_beta.copy_(torch.log(torch.tensor(beta)).reshape(3, 1, 1))
    expected = sum(math.log(s / b) + (b * b + m * m) / (2 * s * s) - 0.5 for m, b in zip(nu, beta))
    assert float(seg.kl().detach()) == pytest.approx(expected, rel=1e-5)
    # KL is zero exactly at the prior
    with torch.no_grad():
        for p in (seg.nu_mu, seg.nu_sigma, seg.nu_alpha):
            p.zero_()
        seg.log_beta.fill_(math.log(s))
    assert float(seg.kl().detach()) == pytest.approx(0.0, abs=1e-6)


def test_kl_nonnegative():
    g = torch.Generator().manual_seed(2)
    seg = SegmentationGMM(GROUPS, n_segments=3)
    assert float(seg.kl().detach()) > 0
    for _ in range(5):
        with torch.no_grad():
            for p in seg.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
        assert float(seg.kl().detach()) >= 0


def test_bad_n_segments():
    with pytest.raises(InputError):
        SegmentationGMM(GROUPS, n_segments=0)
