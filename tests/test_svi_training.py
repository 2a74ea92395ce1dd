"""SVI training: noise-free recovery of α, stage changes keep the guide, staged freezing, exact resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _svi_helpers import toy_config, toy_data, toy_model

from cryoconf.errors import InputError
from cryoconf.rundir import list_checkpoints
from cryoconf.svi.outputs import sample_posterior, summarise_posterior
from cryoconf.svi.training import load_run, train_svi


def _params(module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_noise_free_toy_recovers_alpha(tmp_path):
    torch.set_num_threads(1)
    # pose nearly fixed (concentrated prior), defocus nearly fixed: the guide must find α alone.
    model = toy_model(pose_loc=[400.0, 0.0], n_components=1, sigma_alpha=6.0, defocus_std=10.0, noise_sigma=1.0)
    data, sim = toy_data(model, 256, noise_free=True)
    model.priors.noise_sigma = 0.2 * float(sim["clean"].std())  # a sharp likelihood for noise-free data
    # the (concentrated) pose is learnt too; the learning rate decays tenfold over the run
    config = toy_config(stages="16:500:all", n_components=1, batch_size=32, lr=3e-3, lrd=0.1 ** (1 / 500),
                        elbo="trace")
    result = train_svi(model, data, config, tmp_path / "run", progress=False)
    test, tsim = toy_data(model, 64, seed=5, noise_free=True)
    summ = summarise_posterior(sample_posterior(result.guide, test.images, n_samples=8))
    err = np.abs(summ["alpha_mean"][:, 0] - tsim["alpha"][:, 0].numpy()) / 6.0
    assert err.mean() < 0.1, f"mean |α̂ − α| = {err.mean():.3f} σ_α"


def test_stage_change_keeps_guide_and_freezes_untrained_encoders(tmp_path):
    torch.set_num_threads(1)
    model = toy_model()
    data, _ = toy_data(model, 48, snr=2.6)
    config = toy_config(stages="8:3:pose+defocus,16:3:all", checkpoint_interval=100)
    seen = {}

    def on_stage(si, step, trainer):
        seen[si] = {"step": step, "guide_id": id(trainer.guide), "params": _params(trainer.guide),
                    "optim_states": len(trainer.optim.get_state()), "crop": trainer.crop,
                    "data_crop": tuple(trainer.images_crop.shape)}

    result = train_svi(model, data, config, tmp_path / "run", progress=False, on_stage_start=on_stage)
    assert seen[0]["step"] == 0 and seen[1]["step"] == 3
    assert seen[0]["crop"] == 8 and seen[1]["crop"] == 16 and seen[1]["data_crop"] == (48, 16, 16)
    assert seen[0]["guide_id"] == seen[1]["guide_id"] == id(result.guide)
    # the checkpoint written at the end of stage 1 holds exactly the guide stage 2 starts from
    ckpt = torch.load(tmp_path / "run" / "checkpoint.3.pt", weights_only=False)
    for k, v in seen[1]["params"].items():
        assert torch.equal(ckpt["guide"][k], v), k
    assert seen[1]["optim_states"] > 0  # Adam moments carried over, not reset
    p0, p1, p2 = seen[0]["params"], seen[1]["params"], _params(result.guide)
    # stage 1 trained pose and defocus only: the ANM encoder did not move
    assert all(torch.equal(p0[k], p1[k]) for k in p0 if k.startswith("anm_net."))
    assert any(not torch.equal(p0[k], p1[k]) for k in p0 if k.startswith("pose_net."))
    # stage 2 trains everything, continuing from stage 1's values
    assert any(not torch.equal(p1[k], p2[k]) for k in p1 if k.startswith("anm_net."))


def test_resume_from_checkpoint_is_exact(tmp_path):
    torch.set_num_threads(1)
    model = toy_model()
    data, _ = toy_data(model, 40, snr=2.6)
    config = toy_config(stages="8:3,16:3", checkpoint_interval=2)
    straight = train_svi(model, data, config, tmp_path / "a", progress=False)
    # interrupted after 4 steps (inside stage 2), resumed with --load latest
    train_svi(model, data, config, tmp_path / "b", progress=False, max_steps=4)
    assert [s for s, _ in list_checkpoints(tmp_path / "b")][-1] == 4
    with pytest.raises(InputError, match="--load latest"):
        train_svi(model, data, config, tmp_path / "b", progress=False)
    resumed = train_svi(model, data, config, tmp_path / "b", load="latest", progress=False)
    assert resumed.step == straight.step == 6
    a, b = _params(straight.guide), _params(resumed.guide)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    rows = (tmp_path / "b" / "loss.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 6  # header + one row per step, no duplicates after the resume
    m2, g2, cfg2, _ = load_run(tmp_path / "b")
    assert cfg2.stages == config.stages and m2.physics.box == 16
    for k, v in g2.state_dict().items():
        assert torch.equal(v, b[k])


def test_trace_elbo_and_3d_pose_run(tmp_path):
    torch.set_num_threads(1)
    model = toy_model(pose="3d")
    data, _ = toy_data(model, 32, snr=2.6)
    result = train_svi(model, data, toy_config(stages="8:2", elbo="trace", pose="3d"), tmp_path / "r", progress=False)
    assert len(result.losses) == 2 and np.isfinite(result.losses).all()
    samples = sample_posterior(result.guide, data.images[:5], n_samples=4)
    assert samples["pose"].shape == (5, 4, 4)
    assert np.allclose(np.linalg.norm(samples["pose"], axis=-1), 1.0, atol=1e-5)


def test_anm_encoder_has_its_own_learning_rate():
    import pyro

    from cryoconf.svi.training import SVITrainer

    torch.set_num_threads(1)
    model = toy_model()
    data, _ = toy_data(model, 16, snr=2.6)
    trainer = SVITrainer(model, data, toy_config(lr=1e-3, lr_anm=3e-4, lrd_anm=0.5))
    trainer.set_crop(16)
    trainer.step(("pose", "anm", "defocus"))
    store = pyro.get_param_store()
    lrs = {store.param_name(p): o.param_groups[0]["lr"] for p, o in trainer.optim.optim_objs.items()}
    assert lrs["svi_guide$$$anm_net.head.bias"] == pytest.approx(3e-4 * 0.5)  # ClippedAdam applies lrd per step
    assert lrs["svi_guide$$$pose_net.head.bias"] == pytest.approx(1e-3)
    assert lrs["svi_guide$$$defocus_net.head.bias"] == pytest.approx(1e-3)
