"""recon end to end on tiny noise-free datasets simulated by the core: what training recovers,
exact resumption, and DDP gradients equal to one process's."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch

from _recon_helpers import rotate_about, simulate_toy, toy_structure, two_domain_chain
from cryoconf.dynamics.metrics import paired_rmsd
from cryoconf.recon import ReconConfig, ReconModel, ReconParticles, encode_particles, train_recon


@pytest.fixture(scope="module")
def chain():
    x0 = two_domain_chain(40)  # two helices; no Cα bond joins them (chains A and B)
    return x0, toy_structure(x0, ["A"] * 20 + ["B"] * 20)


@pytest.fixture(scope="module")
def shifted_domain(tmp_path_factory, chain):
    """Every particle shows the base with residues 20–39 moved 4 Å along x (RMSD 2.0 Å from the base)."""
    x0, top = chain
    x1 = x0.copy()
    x1[20:] += np.array([4.0, 0.0, 0.0])
    ds, _ = simulate_toy(tmp_path_factory.mktemp("shifted"), x1[None], top, n=256)
    return x1, ReconParticles(ds, progress=False)


@pytest.fixture(scope="module")
def rotated_domain(tmp_path_factory, chain):
    """Residues 26–39 turned 25° about z through their centroid, in every particle."""
    x0, top = chain
    x1 = x0.copy()
    x1[26:] = rotate_about(x0[26:], x0[26:].mean(0), np.array([0.0, 0.0, 1.0]), np.deg2rad(25.0))
    ds, _ = simulate_toy(tmp_path_factory.mktemp("rotated"), x1[None], top, n=256)
    return x1, ReconParticles(ds, progress=False)


def _decoded(model, particles, n=8):
    z = torch.from_numpy(encode_particles(model, particles, np.arange(n)))
    with torch.no_grad():
        return model.decode(z).numpy()


def test_residues_recovers_a_known_displacement(tmp_path, chain, shifted_domain):
    x0, top = chain
    x1, particles = shifted_domain
    assert paired_rmsd(x0[None], x1[None])[0] == pytest.approx(2.0, abs=1e-3)
    torch.manual_seed(0)
    cfg = ReconConfig(epochs=10, batch_size=32, lr_encoder=1e-3, lr_decoder=1e-3)
    res = train_recon(cfg, particles, top, tmp_path / "run", progress=False)
    pred = _decoded(res.model.eval(), particles)
    rmsd = paired_rmsd(pred, np.repeat(x1[None], len(pred), 0))
    assert rmsd.max() < 0.4, rmsd  # from 2.0 Å at the base
    # the displacement itself, residue by residue
    moved = np.linalg.norm(pred - x0, axis=-1)
    assert np.median(moved[:, 20:]) == pytest.approx(4.0, abs=0.5)
    assert np.median(moved[:, :20]) < 0.5
    for f in ("config.yaml", "run.log", "loss.csv", "loss.png", "checkpoint.10.pt", "z.10.npy"):
        assert (tmp_path / "run" / f).exists(), f


def test_segments_finds_the_moving_domain(tmp_path, chain, rotated_domain):
    x0, top = chain
    x1, particles = rotated_domain
    torch.manual_seed(0)
    # two segments start as residues 0–19 and 20–39; the truth splits at 26
    cfg = ReconConfig(model="segments", n_segments=2, epochs=10, batch_size=32, lr_encoder=1e-3, lr_decoder=1e-3,
                      lr_segmentation=1e-2, geometry_weight=0.0)
    res = train_recon(cfg, particles, top, tmp_path / "run", progress=False)
    model = res.model.eval()
    labels = model.decoder.segmentation.labels()
    moving = labels[26:][0]
    truth = np.r_[np.zeros(26, bool), np.ones(14, bool)]
    assert ((labels == moving) == truth).mean() >= 0.95, labels
    z = torch.from_numpy(encode_particles(model, particles, np.arange(16)))
    angles = model.segment_motions(z)["angle_deg"].numpy()
    assert np.all(np.abs(angles[:, moving] - 25.0) < 5.0), angles[:, moving]
    assert np.all(angles[:, 1 - moving] < 3.0)
    rmsd = paired_rmsd(model.decode(z).detach().numpy(), np.repeat(x1[None], 16, 0))
    assert rmsd.max() < 0.5


def test_backprojection_encoder_separates_two_conformations(tmp_path, chain):
    """Half the particles with residues 20–39 turned −30°, half +30°: z must tell them apart."""
    x0, top = chain
    c = x0[20:].mean(0)
    confs = np.stack([x0, x0])
    for k, deg in enumerate((-30.0, 30.0)):
        confs[k, 20:] = rotate_about(x0[20:], c, np.array([0.0, 0.0, 1.0]), np.deg2rad(deg))
    ds, truth = simulate_toy(tmp_path / "data", confs, top, n=256)
    particles = ReconParticles(ds, progress=False)
    torch.manual_seed(0)
    # Prins et al.'s geometry weight: noise-free images of a rigid rotation (median RMSD 1.77 Å at 0.01)
    cfg = ReconConfig(encoder="backproj", encoder_hidden=[256, 128], latent_dim=2, epochs=20, batch_size=32,
                      lr_encoder=1e-3, lr_decoder=1e-3, geometry_weight=0.05)
    res = train_recon(cfg, particles, top, tmp_path / "run", progress=False)
    model = res.model.eval()
    z = torch.from_numpy(encode_particles(model, particles))
    with torch.no_grad():
        pred = model.decode(z).numpy()
    conf = truth["conformation"]
    rmsd = paired_rmsd(pred, confs[conf])
    base_rmsd = paired_rmsd(np.repeat(x0[None], 2, 0), confs)
    assert base_rmsd.min() > 2.5
    assert np.median(rmsd) < 1.5, np.median(rmsd)


def _tiny_config(**kw):
    return ReconConfig(epochs=2, batch_size=16, encoder_channels=[4, 8, 8, 8], encoder_hidden=[16],
                       decoder_hidden=[32, 32], lr_encoder=1e-3, lr_decoder=1e-3, **kw)


@pytest.mark.parametrize("model", ["residues", "segments"])
def test_resume_equals_training_straight_through(tmp_path, chain, shifted_domain, model):
    _, top = chain
    _, particles = shifted_domain
    sub = ReconParticles.__new__(ReconParticles)  # the first 48 particles, sharing the cached stack
    sub.__dict__.update(particles.__dict__)
    from cryoconf.data.dataset import ParticleDataset

    sub.dataset = ParticleDataset(particles.dataset.metadata, particles.dataset.stack, np.arange(48))
    sub._images = particles._images[:48]
    cfg = dict(model=model, n_segments=2)
    straight = train_recon(_tiny_config(**cfg), sub, top, tmp_path / "straight", progress=False)
    first = _tiny_config(**cfg)
    first.epochs = 1
    train_recon(first, sub, top, tmp_path / "resumed", progress=False)
    resumed = train_recon(_tiny_config(**cfg), sub, top, tmp_path / "resumed", load="latest", progress=False)
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    np.testing.assert_array_equal(np.load(tmp_path / "straight" / "z.2.npy"), np.load(tmp_path / "resumed" / "z.2.npy"))
    # a changed setting other than the number of epochs is refused
    from cryoconf.errors import InputError

    with pytest.raises(InputError, match="latent_dim"):
        train_recon(_tiny_config(latent_dim=3, **cfg), sub, top, tmp_path / "resumed", load="latest",
                    progress=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, state, weights, batch, eps, out):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    model = ReconModel(*state)
    model.load_state_dict(weights)
    if state[0].model == "segments":
        model.decoder.sample_segmentation = False
    net = DistributedDataParallel(model)
    part = {k: (v.tensor_split(world)[rank] if torch.is_tensor(v) else v[torch.arange(len(v)).tensor_split(world)[rank]])
            for k, v in batch.items()}
    torch.manual_seed(0)
    out_terms = net(part, eps.tensor_split(world)[rank])
    out_terms["total"].backward()
    if rank == 0:
        torch.save({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, out)
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.parametrize("model_name", ["residues", "segments"])
def test_ddp_two_gloo_processes_give_the_same_gradients(tmp_path, chain, shifted_domain, model_name):
    import torch.multiprocessing as mp

    _, top = chain
    _, particles = shifted_domain
    cfg = _tiny_config(model=model_name, n_segments=2)
    torch.manual_seed(1)
    model = ReconModel(cfg, top, particles.box, particles.apix_A)
    with torch.no_grad():  # leave the zero initialisation, so that every parameter gets a gradient
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    batch = particles.batch(np.arange(16))
    eps = torch.randn(16, cfg.latent_dim)
    if model_name == "segments":
        model.decoder.sample_segmentation = False  # the sampled G would differ between processes' RNGs
    torch.manual_seed(0)
    single = model(batch, eps)
    single["total"].backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    out = tmp_path / "grads.pt"
    mp.spawn(_ddp_worker, args=(2, _free_port(), (cfg, top, particles.box, particles.apix_A), model.state_dict(),
                                batch, eps, out),
             nprocs=2, join=True)
    got = torch.load(out)
    assert got.keys() == expected.keys()
    for name, g in expected.items():
        torch.testing.assert_close(got[name], g, rtol=2e-4, atol=1e-7, msg=name)


def test_a_checkpoint_with_stale_pair_lists_still_loads(chain):
    """Older checkpoints stored other derived pair lists (e.g. none for all-pairs runs): the model keeps its own."""
    from cryoconf.recon.training import load_model_state

    _, top = chain
    model = ReconModel(_tiny_config(), top, 32, 2.0)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["geometry_pairs"] = torch.zeros(0, 2, dtype=torch.long)
    first = next(k for k in state if k.startswith("decoder") and state[k].is_floating_point())
    state[first] = state[first] + 1.0
    fresh = ReconModel(_tiny_config(), top, 32, 2.0)
    load_model_state(fresh, state)
    assert torch.equal(fresh.geometry_pairs, model.geometry_pairs) and fresh.geometry_pairs.shape[0] > 0
    assert torch.equal(fresh.state_dict()[first], state[first])  # the weights do load
    with pytest.raises(RuntimeError, match="size mismatch"):  # anything else that differs is still refused
        bad = dict(state)
        bad[first] = torch.zeros(1)
        load_model_state(fresh, bad)
