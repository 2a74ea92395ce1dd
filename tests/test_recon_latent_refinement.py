"""Per-particle MAP refinement of z with the decoder fixed (cryoconf.recon.latent_refinement)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _recon_helpers import simulate_toy, toy_structure, two_domain_chain
from cryoconf.dynamics.metrics import paired_rmsd
from cryoconf.errors import InputError
from cryoconf.recon import ReconConfig, ReconParticles
from cryoconf.recon.latent_refinement import latent_energy, refine_latents
from cryoconf.recon.model import ReconModel


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A residues model whose decoder moves the structure with z, and noise-free images of
    decode(z_true) in random poses and CTFs."""
    base = toy_structure(two_domain_chain(40))
    dataset, _ = simulate_toy(tmp_path_factory.mktemp("refine"), base.coords_A[None].astype(np.float32), base, n=6)
    particles = ReconParticles(dataset, 32, progress=False)
    torch.manual_seed(0)
    config = ReconConfig(model="residues", latent_dim=2, encoder="mlp", encoder_hidden=[16], decoder_hidden=[16],
                         image_loss="l2", scale="closed_form")
    model = ReconModel(config, base, 32, particles.apix_A).eval()
    last = model.decoder.net[-1]
    with torch.no_grad():  # the decoder is zero-initialised: give z an effect on the structure
        last.weight.normal_(0.0, 0.3)
    model.kl_weight = 1e-6  # (nearly) the maximum-likelihood z
    batch = particles.batch(np.arange(6))
    z_true = torch.tensor([[0.8, -0.5], [-0.6, 0.7], [0.3, 0.9], [-0.9, -0.2], [0.5, 0.5], [-0.4, -0.8]])
    with torch.no_grad():
        batch["images"] = model.render_base(batch, model.decode(z_true))
    return model, batch, z_true, particles


def test_refinement_recovers_the_latent_of_noise_free_images(setup):
    model, batch, z_true, _ = setup
    z0 = torch.zeros_like(z_true)
    with torch.no_grad():
        data = model.prepare(batch)[0]
        start = paired_rmsd(model.decode(z0).numpy(), model.decode(z_true).numpy())
    z, energy = refine_latents(model, batch, z0, steps=150, lr=0.05)
    with torch.no_grad():
        after = paired_rmsd(model.decode(z).numpy(), model.decode(z_true).numpy())
        e0 = latent_energy(model, batch, data, z0)
    assert start.min() > 0.5  # the decoder does move the structure
    assert (after < 0.1 * start).all(), (start, after)
    assert (energy < e0).all()
    torch.testing.assert_close(z, z_true, atol=0.05, rtol=0)
    assert model.decoder.net[-1].weight.requires_grad  # the decoder is left as it was


def test_refinement_is_per_particle_and_never_worse(setup):
    model, batch, z_true, particles = setup
    z0 = torch.zeros_like(z_true)
    whole, _ = refine_latents(model, batch, z0, steps=20, lr=0.05)
    part = particles.batch(np.arange(3))
    with torch.no_grad():
        part["images"] = model.render_base(part, model.decode(z_true[:3]))
    first, _ = refine_latents(model, part, z0[:3], steps=20, lr=0.05)
    torch.testing.assert_close(first, whole[:3], atol=1e-5, rtol=0)  # a particle's result ignores its batch
    with torch.no_grad():
        e0 = latent_energy(model, batch, model.prepare(batch)[0], z0)
    _, energy = refine_latents(model, batch, z0, steps=5, lr=50.0)  # absurd steps: the start is kept if best
    assert (energy <= e0).all()
    same, e_same = refine_latents(model, batch, z0, steps=0)
    assert torch.equal(same, z0) and torch.allclose(e_same, e0)
    with pytest.raises(InputError, match="lr > 0"):
        refine_latents(model, batch, z0, lr=0.0)
