"""cryoconf sbi: config validation, priors, embeddings, the bounded flow, NPE training and exact resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from cryoconf.errors import InputError
from cryoconf.sbi import (
    SBIConfig, SBIModel, SBISimulator, TemplatePrior, build_embedding, load_config, normalize_for_sbi,
    register_embedding, train_sbi,
)
from cryoconf.sbi.embeddings import ResNet18
from cryoconf.sbi.symmetry import group_images
from cryoconf.structure import Conformations, save_conformations
from cryoconf.structure.ensemble_io import load_conformations_npz

from _sbi_helpers import chain_topology, toy_config, write_toy_ensemble


@pytest.fixture(scope="module")
def toy_ensemble(tmp_path_factory):
    return write_toy_ensemble(tmp_path_factory.mktemp("toy") / "toy.npz")



# -- training on the two-template toy -------------------------------------------------------
@pytest.fixture(scope="module")
def trained(toy_ensemble, tmp_path_factory):
    run = tmp_path_factory.mktemp("run") / "toy_run"
    return toy_config(toy_ensemble), train_sbi(toy_config(toy_ensemble), run, progress=False)


def test_loss_decreases_and_posterior_finds_template(trained):
    config, res = trained
    losses = np.array([v for _, v in res.train_losses])
    assert losses[-40:].mean() < 0.5 * losses[:20].mean()
    assert res.validation_losses[-1][1] < res.validation_losses[0][1]
    # run directory
    for name in ("config.yaml", "run.log", "loss.csv", "loss.png", "validation.pt", "checkpoint.75.pt",
                 "checkpoint.150.pt"):
        assert (res.run_dir / name).exists(), name
    assert yaml.safe_load((res.run_dir / "config.yaml").read_text())["image"]["box"] == 32
    # noise-free images of each template: > 90 % of the posterior mass in its θ cell
    sim = SBISimulator.from_config(config)
    g = torch.Generator().manual_seed(123)
    params, images = sim.simulate(200, g)
    model = SBIModel.load(res.checkpoint)
    samples = model.sample(images, 200)  # (200, 200, 1)
    true_cell = params["theta"] > 0.5
    in_cell = (samples[..., 0] > 0.5) == true_cell[None]
    assert in_cell.float().mean() > 0.9
    assert samples.min() >= -0.5 and samples.max() <= 1.5


def test_log_prob_is_a_density_on_the_prior_range(trained):
    _, res = trained
    model = res.model.eval()
    images = torch.randn(3, 32, 32)
    grid = torch.linspace(-0.5, 1.5, 4001)[1:-1]
    with torch.no_grad():
        lp = model.log_prob(grid[:, None, None].expand(-1, 3, 1), images)  # (G, 3)
    integral = torch.trapezoid(lp.exp(), grid, dim=0)
    assert torch.allclose(integral, torch.ones(3), atol=0.03), integral


# -- the prior ------------------------------------------------------------------------------
def test_template_prior_equal_mass():
    even = TemplatePrior([0.0, 1.0, 2.0, 3.0])
    assert (even.low, even.high) == (-0.5, 3.5)
    uneven = TemplatePrior([3.0, 0.0, 1.0])  # any order; spacings 1 and 2
    assert np.allclose(uneven.cell_bounds(), [[2.0, 4.0], [-0.5, 0.5], [0.5, 2.0]])
    g = torch.Generator().manual_seed(0)
    theta, idx = uneven.sample(30000, g)
    counts = np.bincount(idx.numpy(), minlength=3) / 30000
    assert np.allclose(counts, 1 / 3, atol=0.015)
    assert torch.equal(uneven.nearest(theta), idx)
    assert theta.min() >= uneven.low and theta.max() <= uneven.high
    with pytest.raises(InputError, match="distinct"):
        TemplatePrior([0.0, 1.0, 1.0])
    with pytest.raises(InputError, match="at least 2"):
        TemplatePrior([0.0])


# -- bounded samples, also untrained with extreme inputs ----------------------------------------
def test_untrained_samples_stay_in_prior_range():
    torch.manual_seed(0)
    model = SBIModel(32, 2.0, ["theta", "log10_snr"], [-1.0, -3.0], [2.0, 0.0], [-0.5, 1.5],
                     {"name": "cnn", "params": {"channels": [4, 8], "hidden": 16, "out_features": 8}},
                     {"transforms": 1, "hidden_features": [16], "bins": 4})
    images = torch.cat([torch.randn(2, 32, 32) * 1e12, torch.full((1, 32, 32), 3e30), torch.zeros(1, 32, 32),
                        torch.randn(1, 32, 32) * 1e-30])
    s = model.sample(images, 500, batch_size=2)
    assert s.shape == (500, 5, 2)
    assert torch.isfinite(s).all()
    assert (s[..., 0] >= -1).all() and (s[..., 0] <= 2).all()
    assert (s[..., 1] >= -3).all() and (s[..., 1] <= 0).all()
    # extreme flow outputs map into the range too
    z = torch.tensor([[-1e4, 1e4], [-40.0, 40.0]])
    b = model.posterior.to_bounded(z)
    assert (b[:, 0] >= -1).all() and (b[:, 0] <= 2).all() and (b[:, 1] >= -3).all() and (b[:, 1] <= 0).all()
    with pytest.raises(InputError, match="NaN"):
        model.sample(torch.full((1, 32, 32), float("nan")), 2)
    with pytest.raises(InputError, match="box 32"):
        model.sample(torch.zeros(1, 16, 16), 2)


def test_normalize_for_sbi():
    x = torch.randn(4, 16, 16) * 7 + 3
    y = normalize_for_sbi(x)
    assert torch.allclose(y.mean(dim=(-2, -1)), torch.zeros(4), atol=1e-5)
    assert torch.allclose(y.pow(2).mean(dim=(-2, -1)), torch.ones(4), atol=1e-4)
    assert torch.equal(normalize_for_sbi(torch.ones(1, 8, 8)), torch.zeros(1, 8, 8))


# -- exact resume -------------------------------------------------------------------------------
def test_resume_is_exact(toy_ensemble, tmp_path):
    def cfg():
        return toy_config(toy_ensemble, batch_size=16, validation_size=16, validation_interval=2, checkpoint_interval=3)

    straight = train_sbi(cfg(), tmp_path / "a", steps=6, progress=False)
    first = train_sbi(cfg(), tmp_path / "b", steps=3, progress=False)
    resumed = train_sbi(cfg(), tmp_path / "b", steps=6, load="latest", progress=False)
    assert first.train_losses == straight.train_losses[:3]
    assert resumed.train_losses == straight.train_losses[3:]
    assert resumed.validation_losses == [v for v in straight.validation_losses if v[0] > 3]
    sa, sb = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    rows = [r.split(",") for r in (tmp_path / "b" / "loss.csv").read_text().splitlines()[1:]]
    assert [int(r[0]) for r in rows if r[1]] == [1, 2, 3, 4, 5, 6]  # rows after the checkpoint were not duplicated
    assert [int(r[0]) for r in rows if r[2]] == [2, 3, 4, 6]  # validation every 2 steps and at the end of each call
    # a time limit stops with a checkpoint, and --load latest continues exactly
    limited = train_sbi(cfg(), tmp_path / "t", steps=6, progress=False, time_limit_s=1e-9)
    assert limited.step == 1 and limited.train_losses == straight.train_losses[:1]
    assert limited.checkpoint.name == "checkpoint.1.pt" and limited.timings["steps"] == 1
    cont = train_sbi(cfg(), tmp_path / "t", steps=6, load="latest", progress=False)
    assert cont.train_losses == straight.train_losses[1:]
    sc = cont.model.state_dict()
    assert all(torch.equal(sa[k], sc[k]) for k in sa)
    with pytest.raises(InputError, match="time limit"):
        train_sbi(cfg(), tmp_path / "u", steps=6, progress=False, time_limit_s=0)
    with pytest.raises(InputError, match="already holds checkpoints"):
        train_sbi(cfg(), tmp_path / "b", steps=8, progress=False)
    changed = cfg()
    changed.training.lr = 0.01
    with pytest.raises(InputError, match="training.lr"):
        train_sbi(changed, tmp_path / "b", steps=8, load="latest", progress=False)


def test_cli_train_and_resume(toy_ensemble, tmp_path):
    from cryoconf.cli.main import main

    data = toy_config(toy_ensemble, batch_size=8, validation_size=8, checkpoint_interval=1).to_dict()
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["sbi", "train", str(path), "-o", str(tmp_path / "r"), "--steps", "1", "--no-progress"]) == 0
    assert main(["sbi", "train", str(path), "-o", str(tmp_path / "r"), "--steps", "2", "--load", "latest",
                 "--no-progress"]) == 0
    assert (tmp_path / "r" / "checkpoint.2.pt").exists()
    assert main(["sbi", "train", str(path), "-o", str(tmp_path / "r2"), "--load", "latest", "--no-progress"]) == 2
    assert main(["sbi", "train", str(path), "-o", str(tmp_path / "r3"), "--time-limit", "0", "--no-progress"]) == 2


def _torchrun(args, cwd, nproc: int = 2):
    """``cryoconf`` ARGS in ``nproc`` CPU processes (gloo) under torchrun; the finished process."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"] \
        if nproc > 1 else [sys.executable]
    return subprocess.run([*launch, "-m", "cryoconf", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_torchrun_two_processes_train_and_resume_exactly(toy_ensemble, tmp_path):
    """Multi-process training as on several GPUs (DDP; gloo on the CPU): a run stopped and resumed
    with --load latest ends with the same weights as one run straight through, the checkpoint
    holds one simulator stream per process, one process reports, and resuming with another
    number of processes is refused."""
    data = toy_config(toy_ensemble, steps=12, batch_size=16, validation_size=32, validation_interval=6,
                   checkpoint_interval=6).to_dict()
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
    straight = _torchrun(["sbi", "train", "c.yaml", "-o", "a", "--no-progress"], tmp_path)
    assert straight.returncode == 0, straight.stderr[-2000:]
    assert straight.stdout.count("trained to step 12") == 1
    assert "2 process(es)" in straight.stderr
    first = _torchrun(["sbi", "train", "c.yaml", "-o", "b", "--steps", "6", "--no-progress"], tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    again = _torchrun(["sbi", "train", "c.yaml", "-o", "b", "--load", "latest", "--no-progress"], tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    a = torch.load(tmp_path / "a" / "checkpoint.12.pt", map_location="cpu", weights_only=False)
    b = torch.load(tmp_path / "b" / "checkpoint.12.pt", map_location="cpu", weights_only=False)
    assert len(a["sim_generator_states"]) == 2
    assert not torch.equal(a["sim_generator_states"][0], a["sim_generator_states"][1])
    for k, v in a["model_state"].items():
        assert torch.equal(v, b["model_state"][k]), k
    one = _torchrun(["sbi", "train", "c.yaml", "-o", "b", "--load", "latest", "--steps", "18", "--no-progress"],
                    tmp_path, nproc=1)
    assert one.returncode == 2 and "written by 2 process(es), resumed with 1" in one.stderr


# -- config validation ----------------------------------------------------------------------------
@pytest.mark.parametrize("patch, match", [
    ({"priors": {"snr": [-1, 1]}}, r"priors\.snr.*> 0"),
    ({"priors": {"defocus_A": [20000, 5000]}}, r"priors\.defocus_A.*min ≤ max"),
    ({"priors": {"sigma": [1, 2]}}, r"'priors\.sigma' is unknown.*sigma_A"),
    ({"priors": {"amplitude_contrast": [0.1, 1.0]}}, r"amplitude_contrast.*< 1"),
    ({"image": {"box": 33, "apix_A": 2.0}}, r"image\.box.*even"),
    ({"image": {"box": 32, "apix_A": "x"}}, r"image\.apix_A.*Å/px"),
    ({"training": {"batch_size": 0}}, r"training\.batch_size.*≥ 1"),
    ({"training": {"optimizer": "sgd"}}, r"training\.optimizer.*adamw"),
    ({"embedding": {"name": "nope"}}, r"embedding\.name.*cnn"),
    ({"embedding": {"name": "cnn", "average_over": "C3"}}, r"embedding\.average_over.*none, C2, C4, D4"),
    ({"posterior": {"parameters": ["theta", "log10_snr"]}, "priors": {"snr": 0.1}}, r"log10_snr.*min < max"),
    ({"flow": {"hidden_features": "big"}}, r"flow\.hidden_features"),
    ({"extra": {}}, r"'extra' is unknown"),
    ({"image": {"box": 32, "apix_A": 2.0, "simulation_box": 64}}, r"image\.simulation_apix_A.*go together"),
    ({"image": {"box": 32, "apix_A": 2.0, "simulation_box": 48, "simulation_apix_A": 1.0}},
     r"image\.simulation_box.*field of view \(48 px × 1.0 Å/px = 48 Å\) is smaller"),
    ({"image": {"box": 32, "apix_A": 2.0, "simulation_box": 65, "simulation_apix_A": 1.0}}, r"simulation_box.*even"),
    ({"image": {"box": 32, "apix_A": 2.0, "simulation_box": 34, "simulation_apix_A": 1.9}},
     r"image\.simulation_apix_A.*cannot resample"),
])
def test_config_errors(toy_ensemble, patch, match):
    data = toy_config(toy_ensemble).to_dict()
    for section, values in patch.items():
        data.setdefault(section, {})
        data[section] = {**data[section], **values}
    with pytest.raises(InputError, match=match):
        SBIConfig.from_dict(data)


def test_config_file_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    p = tmp_path / "c.yaml"
    p.write_text("image: {box: 32, apix_A: 2}\n")
    with pytest.raises(InputError, match="'templates' is missing"):
        load_config(p)


def test_example_configs_are_valid():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs"
    for name in ("sbi_hsp90_box64.yaml", "sbi_hsp90_box128.yaml"):
        c = load_config(root / name)
        assert c.training.lr == 3e-4 and c.training.batch_size == 256 and c.training.clip_grad_norm == 5.0
    base, tuned = load_config(root / "sbi_hsp90_box64.yaml"), load_config(root / "sbi_hsp90_box64_from128.yaml")
    # the fine-tuning config renders the paper's particles and keeps the base model's architecture
    assert tuned.image.render_grid == (128, 1.5) and (tuned.image.box, tuned.image.apix_A) == (64, 3.0)
    assert tuned.image.snr_mask_radius_px == 64 and tuned.priors == base.priors
    assert (tuned.embedding, tuned.flow, tuned.posterior) == (base.embedding, base.flow, base.posterior)
    # the box-128 config: the paper's grid rendered directly, the same cnn folding 2×2 blocks
    fine = load_config(root / "sbi_hsp90_box128_s2d.yaml")
    assert (fine.image.box, fine.image.apix_A) == (128, 1.5) and fine.image.render_grid == (128, 1.5)
    assert fine.image.snr_mask_radius_px == 64 and fine.priors == tuned.priors
    assert fine.embedding.params == dict(tuned.embedding.params, space_to_depth=2)
    assert (fine.flow, fine.posterior) == (tuned.flow, tuned.posterior)
    # its second fine-tuning: the same model and priors, other particles (seed), a lower rate
    again = load_config(root / "sbi_hsp90_box128_s2d_ft.yaml")
    assert (again.image, again.priors, again.embedding, again.flow, again.posterior) == (
        fine.image, fine.priors, fine.embedding, fine.flow, fine.posterior)
    assert again.training.seed != fine.training.seed
    assert again.training.lr < fine.training.lr and again.training.lr_final < fine.training.lr_final
    # the distillation of that model's pooled posterior: the same model, priors and particles, plus a teacher
    distil = load_config(root / "sbi_hsp90_box128_distill.yaml")
    assert (distil.image, distil.priors, distil.embedding, distil.flow, distil.posterior) == (
        again.image, again.priors, again.embedding, again.flow, again.posterior)
    assert distil.training.seed == again.training.seed and distil.distillation.symmetrize
    assert distil.distillation.teacher == str(root.parent / "runs" / "hsp90_box128_s2d_ft" / "checkpoint.16000.pt")
    # the same model with its features averaged over C2, fine-tuned on particles of its own
    c2 = load_config(root / "sbi_hsp90_box128_c2.yaml")
    assert (c2.image, c2.priors, c2.flow, c2.posterior) == (again.image, again.priors, again.flow, again.posterior)
    assert (c2.embedding.name, c2.embedding.params, c2.embedding.average_over) == (
        again.embedding.name, again.embedding.params, "C2")
    assert c2.training.seed not in (fine.training.seed, again.training.seed)
    # its two GPU rounds: the same model and priors at 4× the batch, each on particles none before saw
    gpu1 = load_config(root / "sbi_hsp90_box128_c2_gpu.yaml")
    gpu2 = load_config(root / "sbi_hsp90_box128_c2_gpu2.yaml")
    seeds = {fine.training.seed, again.training.seed, c2.training.seed}
    for gpu in (gpu1, gpu2):
        assert (gpu.image, gpu.priors, gpu.embedding, gpu.flow, gpu.posterior) == (
            c2.image, c2.priors, c2.embedding, c2.flow, c2.posterior)
        assert gpu.training.batch_size == 4 * c2.training.batch_size and gpu.training.seed not in seeds
        seeds.add(gpu.training.seed)
    assert gpu2.training.lr < gpu1.training.lr and gpu2.training.lr_final == gpu1.training.lr_final


# -- embeddings ---------------------------------------------------------------------------------
def test_registry_and_custom_embedding(toy_ensemble):
    @register_embedding("test_linear")
    class Linear(torch.nn.Module):
        def __init__(self, box, out_features=8):
            super().__init__()
            self.out_features = out_features
            self.lin = torch.nn.Linear(box * box, out_features)

        def forward(self, images):
            return self.lin(images.flatten(1))

    net = build_embedding("test_linear", box=32, out_features=5)
    assert net(torch.zeros(2, 32, 32)).shape == (2, 5)
    data = toy_config(toy_ensemble).to_dict()
    data["embedding"] = {"name": "test_linear", "params": {"out_features": 6}}
    cfg = SBIConfig.from_dict(data)
    model = SBIModel.from_config(cfg, [0.0, 1.0], [(-0.5, 1.5)])
    assert model.embed(torch.randn(3, 32, 32)).shape == (3, 6)
    with pytest.raises(InputError, match="embedding.params.width"):
        build_embedding("test_linear", box=32, width=3)
    with pytest.raises(InputError, match="not registered"):
        build_embedding("missing")


def test_resnet18_shape_and_size():
    net = ResNet18(box=64, out_features=256, width=64)
    n = sum(p.numel() for p in net.parameters())
    assert 11.0e6 < n < 11.5e6, n  # torchvision's 11.69 M minus 2 input channels and the 1000-class head, + 256 outputs
    assert net(torch.randn(2, 64, 64)).shape == (2, 256)
    small = build_embedding("resnet18", box=32, width=8, out_features=16)
    assert small(torch.randn(3, 32, 32)).shape == (3, 16)


@pytest.mark.parametrize("embedding", [{"name": "cnn", "params": {"channels": [8, 16], "hidden": 32}},
                                       {"name": "resnet18", "params": {"width": 4}}])
def test_freeze_for_inference_is_the_same_function(embedding):
    torch.manual_seed(0)
    model = SBIModel(32, 2.0, ["theta"], [0.0], [1.0], [0.0, 1.0], embedding,
                     {"transforms": 2, "hidden_features": [16], "bins": 4})
    model.train()
    for _ in range(3):  # batch-norm running statistics away from their initial values
        model.embed(3 * torch.randn(16, 32, 32) + 1)
    images = torch.randn(5, 32, 32)
    model.eval()
    with torch.no_grad():
        reference = model.embed(images)
        assert not model.frozen_for_inference
        assert model.freeze_for_inference() is model and model.frozen_for_inference and not model.training
        frozen = model.embed(images)
        assert not torch.equal(frozen, reference)  # a different computation (folded batch norm) …
        torch.testing.assert_close(frozen, reference, rtol=1e-4, atol=1e-5)  # … of the same function
        torch.manual_seed(1)
        a = model.sample(images, 50)
        model.train()  # training drops the snapshot
        assert not model.frozen_for_inference
        model.eval()
        torch.manual_seed(1)
        torch.testing.assert_close(model.sample(images, 50), a, rtol=1e-4, atol=1e-4)
        model.freeze_for_inference()
        model.load_state_dict(model.state_dict())  # new weights drop it too
        assert not model.frozen_for_inference
        model.freeze_for_inference()
        model.to("cpu")  # so does moving or casting the weights (.to("cuda"), .double()): no stale CPU copy runs
        assert not model.frozen_for_inference
        assert torch.equal(model.embed(images), reference)


def test_cosine_learning_rate_schedule(toy_ensemble):
    tc = toy_config(toy_ensemble).training
    tc.steps, tc.lr = 100, 1e-3
    assert [tc.lr_at(s) for s in (0, 50, 99)] == [1e-3] * 3  # constant by default
    tc.lr_schedule, tc.lr_decay_start, tc.lr_final = "cosine", 40, 1e-4
    tc.validate()
    assert tc.lr_at(0) == tc.lr_at(40) == 1e-3
    assert tc.lr_at(70) == pytest.approx(5.5e-4)  # half-way down the half cosine
    assert tc.lr_at(100) == pytest.approx(1e-4) and tc.lr_at(500) == pytest.approx(1e-4)
    assert all(tc.lr_at(s) >= tc.lr_at(s + 1) for s in range(100))
    tc.lr_schedule = "linear"
    with pytest.raises(InputError, match="training.lr_schedule"):
        tc.validate()


def test_resume_with_an_added_decay_continues(toy_ensemble, tmp_path):
    """A run trained at a constant rate can be resumed with a decay added (the schedule is a function of the step)."""
    cfg = toy_config(toy_ensemble, batch_size=16, validation_size=16, validation_interval=2, checkpoint_interval=2)
    train_sbi(cfg, tmp_path / "r", steps=2, progress=False)
    decayed = toy_config(toy_ensemble, batch_size=16, validation_size=16, validation_interval=2, checkpoint_interval=2)
    decayed.training.lr_schedule, decayed.training.lr_decay_start = "cosine", 2
    resumed = train_sbi(decayed, tmp_path / "r", steps=4, load="latest", progress=False)
    assert [s for s, _ in resumed.train_losses] == [3, 4]
    assert "lr_schedule: cosine" in (tmp_path / "r" / "config.yaml").read_text()


# -- inference and calibration with the trained toy model ---------------------------------------
def _trained_model(trained):
    from cryoconf.rundir import resolve_checkpoint

    _, result = trained
    return SBIModel.load(resolve_checkpoint("latest", result.run_dir)), result.run_dir


def test_infer_recovers_templates_of_simulated_particles(trained, toy_ensemble, tmp_path):
    """Particles written by `cryoconf simulate` go through the full reading/resampling path, from
    the Python API a notebook uses (load_run, infer_dataset)."""
    from cryoconf.cli.main import main
    from cryoconf.data import read_metadata
    from cryoconf.sbi import infer_dataset, load_run

    _, run_dir = _trained_model(trained)
    model, ckpt = load_run(run_dir)
    assert ckpt.name == "checkpoint.150.pt" and model.frozen_for_inference and not model.training
    parts = tmp_path / "parts"
    assert main(["simulate", str(toy_ensemble), "-o", str(parts), "-n", "24", "--box", "32", "--apix", "2.0",
                 "--snr", "inf", "--defocus", "10000", "15000", "--no-progress"]) == 0
    result = infer_dataset(model, parts / "particles.star", tmp_path / "inf", whiten=False, n_samples=400,
                           progress=False)
    truth = np.load(parts / "truth.npz")["conformation"]
    assert (result.summary.template_index == truth).mean() >= 0.8
    lo, hi = model.bounds[0].tolist()
    assert np.all(result.summary.quantiles["Q2p5"] >= lo) and np.all(result.summary.quantiles["Q97p5"] <= hi)
    md = read_metadata(tmp_path / "inf" / "particles_sbi.star")
    np.testing.assert_allclose(md.extra["rlnDefocusU"].astype(float), read_metadata(parts / "particles.star").defocus_u_A)
    np.testing.assert_allclose(md.extra["cryoconfThetaMean"].astype(float), result.summary.mean[:, 0], rtol=1e-5)
    for name in ("posterior.npz", "posterior.csv", "posterior_examples.png", "posterior_means.png"):
        assert (tmp_path / "inf" / name).stat().st_size > 0


def test_infer_recentres_particles_on_their_origins(trained, toy_ensemble, tmp_path):
    """Particles moved off-centre, with the move written as their RELION origins, get the posterior of the centred
    particles: `sbi infer` recentres them by default (the toy model was trained on centred particles)."""
    import dataclasses

    from cryoconf.cli.main import main
    from cryoconf.data import load_particles, write_mrcs, write_relion31_star
    from cryoconf.imaging.shift import shift_images
    from cryoconf.sbi.inference import infer_dataset

    model, _ = _trained_model(trained)
    parts = tmp_path / "parts"
    assert main(["simulate", str(toy_ensemble), "-o", str(parts), "-n", "16", "--box", "32", "--apix", "2.0",
                 "--snr", "inf", "--shift", "0", "--defocus", "10000", "15000", "--no-progress", "--seed", "5"]) == 0
    centred = load_particles(parts / "particles.star")
    images = centred.batch(np.arange(16))["images"].double()
    move_A = torch.as_tensor(np.random.default_rng(0).uniform(4.0, 7.0, (16, 2)) * [[1, -1]])  # 2–3.5 px
    write_mrcs(tmp_path / "moved.mrcs", shift_images(images, move_A, 2.0).float().numpy(), 2.0)
    moved = dataclasses.replace(centred.metadata, shifts_A=move_A.numpy(), base_dir=str(tmp_path),
                                image_names=np.array([f"{k + 1}@moved.mrcs" for k in range(16)], dtype=object))
    write_relion31_star(tmp_path / "moved.star", moved)
    kwargs = dict(whiten=False, n_samples=200, progress=False)
    reference = infer_dataset(model, parts / "particles.star", tmp_path / "ref", **kwargs)
    recentred = infer_dataset(model, tmp_path / "moved.star", tmp_path / "rec", **kwargs)
    kept = infer_dataset(model, tmp_path / "moved.star", tmp_path / "kept", recenter=False, **kwargs)
    assert not reference.recentered and recentred.recentered and not kept.recentered
    np.testing.assert_allclose(recentred.summary.mean, reference.summary.mean, atol=0.01)  # up to the Nyquist terms
    assert np.abs(kept.summary.mean - reference.summary.mean).max() > 0.1


def test_infer_summaries_from_the_flow_match_sampled_ones(trained, toy_ensemble, tmp_path):
    """`sbi infer`'s default for one parameter (summaries from the flow) against 20,000 samples."""
    from cryoconf.cli.main import main
    from cryoconf.sbi.inference import infer_dataset

    model, _ = _trained_model(trained)
    parts = tmp_path / "parts"
    assert main(["simulate", str(toy_ensemble), "-o", str(parts), "-n", "12", "--box", "32", "--apix", "2.0",
                 "--snr", "1", "--defocus", "10000", "15000", "--no-progress", "--seed", "3"]) == 0
    star = parts / "particles.star"
    flow = infer_dataset(model, star, tmp_path / "flow", whiten=False, n_samples=200, progress=False)
    sampled = infer_dataset(model, star, tmp_path / "samples", whiten=False, n_samples=20_000, summaries="samples",
                            progress=False)
    assert "flow" in flow.summary.method and sampled.summary.method == "samples"
    np.testing.assert_allclose(flow.summary.mean, sampled.summary.mean, atol=0.02)
    np.testing.assert_allclose(flow.summary.std, sampled.summary.std, atol=0.02)
    for label in ("Q16", "Q50", "Q84"):
        np.testing.assert_allclose(flow.summary.quantiles[label], sampled.summary.quantiles[label], atol=0.03)
    np.testing.assert_allclose(flow.summary.template_probs, sampled.summary.template_probs, atol=0.02)
    assert str(np.load(tmp_path / "flow" / "posterior.npz")["summary_method"]).startswith("flow")
    with pytest.raises(InputError, match="summaries"):
        infer_dataset(model, star, tmp_path / "bad", summaries="exact", progress=False)


def test_cli_infer_with_whitening_and_calibrate(trained, toy_ensemble, tmp_path):
    import json

    from cryoconf.cli.main import main

    _, run_dir = _trained_model(trained)
    parts = tmp_path / "parts"
    assert main(["simulate", str(toy_ensemble), "-o", str(parts), "-n", "16", "--box", "64", "--apix", "1.0",
                 "--snr", "0.5", "--defocus", "10000", "15000", "--no-progress"]) == 0  # resampled to 32 px at 2 Å
    assert main(["sbi", "infer", str(run_dir), str(parts / "particles.star"), "-o", str(tmp_path / "inf"),
                 "--samples", "200", "--no-progress"]) == 0
    summary = np.load(tmp_path / "inf" / "posterior.npz")
    assert all(np.isfinite(summary[k]).all() for k in summary.files if summary[k].dtype.kind == "f")
    assert (tmp_path / "inf" / "noise_psd.npz").exists()
    assert main(["sbi", "calibrate", str(run_dir), "-o", str(tmp_path / "cal"), "-n", "64", "--samples", "100",
                 "--snr", "1e30", "--tolerance", "0.5"]) == 0
    metrics = json.loads((tmp_path / "cal" / "calibration.json").read_text())
    assert metrics["n_particles"] == 64 and 0 <= metrics["coverage_68"] <= 1
    assert metrics["fraction_within_tolerance"] > 0.6  # inside the true template's cell; the prior alone gives 0.5
    finer = tmp_path / "finer.yaml"
    finer.write_text(_finer_config(trained[0]).to_yaml())
    assert main(["sbi", "calibrate", str(run_dir), "-o", str(tmp_path / "cal_fine"), "-n", "64", "--samples", "100",
                 "--snr", "1e30", "--tolerance", "0.5", "--particles-config", str(finer)]) == 0
    metrics = json.loads((tmp_path / "cal_fine" / "calibration.json").read_text())
    assert (metrics["particles_box"], metrics["particles_apix_A"]) == (64, 1.0)
    assert metrics["fraction_within_tolerance"] > 0.6


def _finer_config(config, **image) -> SBIConfig:
    """``config`` with the particles at box 64 and 1 Å/px (the model's box 32 at 2 Å/px, finer)."""
    data = config.to_dict()
    data["image"].update({"box": 64, "apix_A": 1.0, **image})
    return SBIConfig.from_dict(data)


def test_particles_at_another_sampling_are_resampled_to_the_model_grid(trained, toy_ensemble, tmp_path):
    from cryoconf.sbi.evaluation import to_model_grid

    config, _ = trained
    model, _ = _trained_model(trained)
    coarse = SBISimulator.from_config(config)
    fine = SBISimulator.from_config(_finer_config(config))
    g = torch.Generator().manual_seed(11)
    params = coarse.sample_parameters(8, g)
    direct = coarse.render(params, g, noise=False)
    assert to_model_grid(model, coarse, direct) is direct  # already on the model's grid
    resampled = to_model_grid(model, fine, fine.render(params, g, noise=False))
    assert resampled.shape == direct.shape
    # the same particles rendered at 1 Å/px and Fourier-cropped equal the 2 Å/px rendering
    assert float((resampled - direct).norm() / direct.norm()) < 0.02
    other = tmp_path / "other.npz"
    confs = load_conformations_npz(toy_ensemble)
    save_conformations(other, Conformations(topology=confs.topology, coords_A=confs.coords_A, theta=np.array([0.0, 2.0])))
    data = config.to_dict()
    data["templates"]["path"] = str(other)
    with pytest.raises(InputError, match="not the model's"):
        to_model_grid(model, SBISimulator.from_config(SBIConfig.from_dict(data)), direct)


def test_training_particles_rendered_at_the_data_sampling(trained, toy_ensemble):
    """image.simulation_box/simulation_apix_A: the simulator renders at 1 Å/px (SNR and mask on
    that grid) and returns the model's 2 Å/px grid, exactly as evaluation resamples such particles."""
    from cryoconf.sbi.evaluation import to_model_grid

    config, _ = trained
    model, _ = _trained_model(trained)
    data = config.to_dict()
    assert "simulation_box" not in data["image"]  # unset: configs of older runs are unchanged
    data["image"].update({"simulation_box": 64, "simulation_apix_A": 1.0, "snr_definition": "mask",
                          "snr_mask_radius_px": None})
    data["priors"]["snr"] = [0.5, 2.0]
    at_data = SBIConfig.from_dict(data)
    assert at_data.image.render_grid == (64, 1.0) and at_data.image.snr_mask_radius_px == 32  # half the render box
    assert SBIConfig.from_dict(at_data.to_dict()) == at_data
    sim = SBISimulator.from_config(at_data)
    assert (sim.box, sim.apix_A, sim.render_box, sim.render_apix_A) == (32, 2.0, 64, 1.0)
    data["image"].update({"box": 64, "apix_A": 1.0})
    del data["image"]["simulation_box"], data["image"]["simulation_apix_A"]
    fine = SBISimulator.from_config(SBIConfig.from_dict(data))
    params = sim.sample_parameters(6, torch.Generator().manual_seed(5))
    images = sim.render(params, torch.Generator().manual_seed(6))
    reference = to_model_grid(model, fine, fine.render(params, torch.Generator().manual_seed(6)))
    assert images.shape == (6, 32, 32)
    torch.testing.assert_close(images, reference, rtol=0, atol=1e-6)
    # noise-free, the resampled particle is the 2 Å/px rendering of the same particle
    coarse = SBISimulator.from_config(config)
    direct = coarse.render(params, torch.Generator(), noise=False)
    resampled = sim.render(params, torch.Generator(), noise=False)
    assert float((resampled - direct).norm() / direct.norm()) < 0.02
    _, batch = sim.simulate(4, torch.Generator().manual_seed(0))
    assert batch.shape == (4, 32, 32) and bool(torch.isfinite(batch).all())


def test_average_over_in_the_config_and_from_init(trained, toy_ensemble, tmp_path):
    """embedding.average_over: validated, written only when set (older runs' configs unchanged), and a
    model averaging its features over C2 may start from the weights of one without."""
    plain = toy_config(toy_ensemble)
    assert plain.embedding.average_over is None and "average_over" not in plain.to_dict()["embedding"]
    data = plain.to_dict()
    data["embedding"]["average_over"] = "none"
    assert SBIConfig.from_dict(data).embedding.average_over is None
    data["embedding"]["average_over"] = "C2"
    averaged = SBIConfig.from_dict(data)
    assert averaged.to_dict()["embedding"]["average_over"] == "C2"
    assert SBIConfig.from_dict(averaged.to_dict()) == averaged
    _, result = trained
    tuned = train_sbi(averaged, tmp_path / "c2", init=result.run_dir, steps=0, progress=False)
    assert tuned.model.average_over == "C2"
    a, b = SBIModel.load(result.checkpoint).state_dict(), tuned.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert SBIModel.load(tmp_path / "c2" / "checkpoint.0.pt").average_over == "C2"
    x = torch.randn(2, 32, 32, generator=torch.Generator().manual_seed(1))
    tuned.model.eval()
    with torch.no_grad():   # the fine-tuned model's features are invariant to the rotation by 180°
        torch.testing.assert_close(tuned.model.embed(x), tuned.model.embed(group_images(x, "C2")[1]),
                                   rtol=1e-5, atol=1e-5)


def test_init_starts_a_run_from_another_runs_weights(trained, toy_ensemble, tmp_path):
    from cryoconf.cli.main import main

    config, result = trained
    tuned = train_sbi(toy_config(toy_ensemble), tmp_path / "tuned", init=result.run_dir, steps=0, progress=False)
    source = SBIModel.load(result.checkpoint)
    a, b = source.state_dict(), tuned.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # step 0: the source's weights
    assert tuned.step == 0 and (tmp_path / "tuned" / "checkpoint.0.pt").exists()
    assert "initial weights from" in (tmp_path / "tuned" / "run.log").read_text()
    # it then trains as a run of its own, and resumes with --load latest
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(toy_config(toy_ensemble, batch_size=8, validation_size=8).to_dict()))
    assert main(["sbi", "train", str(path), "-o", str(tmp_path / "t2"), "--init", str(result.checkpoint),
                 "--steps", "1", "--no-progress"]) == 0
    assert main(["sbi", "train", str(path), "-o", str(tmp_path / "t2"), "--load", "latest", "--steps", "2",
                 "--no-progress"]) == 0
    other = toy_config(toy_ensemble)
    other.flow.bins = 4
    with pytest.raises(InputError, match=r"--init .*differs.*flow"):
        train_sbi(other, tmp_path / "bad", init=result.run_dir, steps=0, progress=False)
    with pytest.raises(InputError, match="give one of them"):
        train_sbi(toy_config(toy_ensemble), tmp_path / "tuned", init=result.run_dir, load="latest", progress=False)
    with pytest.raises(InputError, match=r"--init .*missing\.pt: no such checkpoint file") as err:
        train_sbi(toy_config(toy_ensemble), tmp_path / "bad3", init=tmp_path / "missing.pt", progress=False)
    assert "latest" not in str(err.value) and "--load" not in str(err.value)  # --init cannot be 'latest'
    with pytest.raises(InputError, match=r"--init .*no checkpoint.N.pt in .*train that run first"):
        train_sbi(toy_config(toy_ensemble), tmp_path / "bad4", init=tmp_path, progress=False)
    with pytest.raises(InputError, match="--init latest"):
        train_sbi(toy_config(toy_ensemble), tmp_path / "bad2", init="latest", progress=False)


def test_space_to_depth_cnn_starts_as_the_coarse_model():
    """cnn with space_to_depth 2 on box 64, its weights adapted from a box-32 cnn: on an image of
    2×2 blocks of equal pixels it computes exactly what the coarse model computes on the blocks."""
    from cryoconf.sbi.embeddings import CompactCNN

    torch.manual_seed(0)
    params = {"channels": [8, 16], "hidden": 32, "out_features": 8}
    coarse = CompactCNN(box=32, **params)
    coarse.train()
    for _ in range(3):  # batch-norm running statistics away from their initial values
        coarse(3 * torch.randn(16, 32, 32) + 1)
    fine = CompactCNN(box=64, space_to_depth=2, **params)
    assert fine.features[0].weight.shape == (8, 4, 5, 5)
    fine.load_state_dict(fine.adapt_weights(coarse.state_dict(), dict(params, channels=(8, 16)), 32))
    coarse.eval(), fine.eval()
    u = normalize_for_sbi(torch.randn(5, 32, 32))
    blocks = u.repeat_interleave(2, -2).repeat_interleave(2, -1)  # (5, 64, 64)
    torch.testing.assert_close(normalize_for_sbi(blocks), blocks)  # normalising commutes with the blocks
    with torch.no_grad():
        torch.testing.assert_close(fine(blocks), coarse(u), rtol=1e-5, atol=1e-5)
        # a fine image is not made of blocks: the fine model sees its sub-pixels
        assert not torch.allclose(fine(torch.randn(5, 64, 64)), fine(blocks))
    # the sub-pixel channels of one coarse pixel: (y % 2)·2 + x % 2, all from the one coarse channel
    torch.testing.assert_close(fine.features[0].weight, coarse.features[0].weight.repeat(1, 4, 1, 1) / 4)
    with pytest.raises(InputError, match="channels differ"):
        fine.adapt_weights(coarse.state_dict(), dict(params, channels=[8, 32]), 32)
    with pytest.raises(InputError, match="needs weights from a box of 32 px"):
        fine.adapt_weights(coarse.state_dict(), params, 16)
    with pytest.raises(InputError, match="space_to_depth 3 must divide the box"):
        CompactCNN(box=64, space_to_depth=3)
    with pytest.raises(InputError, match="positive integer"):
        CompactCNN(box=64, space_to_depth=0)


def test_init_moves_a_cnn_to_a_finer_grid(trained, toy_ensemble, tmp_path):
    """--init from the box-32, 2 Å/px toy run into box 64 at 1 Å/px with space_to_depth 2: the flow and
    every embedding layer but the stem are the source's; the model trains and freezes."""
    result = trained[1]
    data = toy_config(toy_ensemble).to_dict()
    data["image"].update(box=64, apix_A=1.0)
    data["embedding"]["params"]["space_to_depth"] = 2
    fine_config = SBIConfig.from_dict(data)
    tuned = train_sbi(fine_config, tmp_path / "fine", init=result.run_dir, steps=0, progress=False)
    a, b = SBIModel.load(result.checkpoint).state_dict(), tuned.model.state_dict()
    assert set(a) == set(b)
    for key in a:
        if key == "embedding.features.0.weight":
            torch.testing.assert_close(b[key], a[key].repeat(1, 4, 1, 1) / 4)
        else:
            assert torch.equal(a[key], b[key]), key
    # noise-free particles rendered at 1 Å/px: the adapted model already tells the templates apart
    sim = SBISimulator.from_config(fine_config)
    params, images = sim.simulate(100, torch.Generator().manual_seed(5))
    samples = tuned.model.sample(images, 100)[..., 0]  # sample() runs in eval mode
    in_cell = ((samples > 0.5) == (params["theta"] > 0.5)[None]).float().mean()  # samples (S, B)
    assert float(in_cell) > 0.9, float(in_cell)
    res = train_sbi(fine_config, tmp_path / "fine", load="latest", steps=2, progress=False)
    assert res.step == 2 and bool(torch.isfinite(res.model.freeze_for_inference().embed(images[:3])).all())
    # another field of view, or an embedding that differs otherwise, is refused
    data["image"].update(box=64, apix_A=1.5)
    with pytest.raises(InputError, match="must keep its field of view"):
        train_sbi(SBIConfig.from_dict(data), tmp_path / "bad", init=result.run_dir, steps=0, progress=False)
    data["image"].update(box=64, apix_A=1.0)
    data["embedding"]["params"]["hidden"] = 48
    with pytest.raises(InputError, match=r"--init .*cannot be adapted: cnn: only space_to_depth .*hidden differ"):
        train_sbi(SBIConfig.from_dict(data), tmp_path / "bad", init=result.run_dir, steps=0, progress=False)


def test_scan_finds_planted_particles(trained, toy_ensemble, tmp_path):
    """Dumbbells (θ = 1) planted in a weakly noisy micrograph: the posterior mean map is ≈ 1 there."""
    import mrcfile

    from cryoconf.cli.main import main

    parts = tmp_path / "parts"
    assert main(["simulate", str(toy_ensemble), "-o", str(parts), "-n", "3", "--box", "32", "--apix", "2.0",
                 "--snr", "inf", "--weights", "0,1", "--defocus", "10000", "15000", "--no-progress"]) == 0
    with mrcfile.open(parts / "particles.mrcs") as m:
        particles = np.array(m.data)
    rng = np.random.default_rng(0)
    micrograph = rng.normal(0, 0.02 * particles.std(), size=(128, 160)).astype(np.float32)
    centres = [(32, 32), (64, 112), (96, 48)]
    for (r, c), img in zip(centres, particles):
        micrograph[r - 16:r + 16, c - 16:c + 16] += img
    path = tmp_path / "mic.mrc"
    with mrcfile.new(path) as m:
        m.set_data(micrograph)
        m.voxel_size = 2.0
    assert main(["sbi", "scan", str(trained[1].run_dir), str(path), "-o", str(tmp_path / "scan"), "--stride", "8",
                 "--samples", "200", "--no-progress"]) == 0
    mean = np.load(tmp_path / "scan" / "posterior_mean_map.npy")
    grid = np.load(tmp_path / "scan" / "scan_grid.npz")
    for r, c in centres:
        i, j = np.argmin(abs(grid["rows"] - r)), np.argmin(abs(grid["cols"] - c))
        assert abs(mean[i, j] - 1.0) < 0.35, (r, c, mean[i, j])
    assert (tmp_path / "scan" / "scan.png").stat().st_size > 0


def test_mmd_same_simulator_vs_misspecified(trained, tmp_path):
    import json

    from cryoconf.cli.main import main

    run = str(trained[1].run_dir)
    common = ["-n", "300", "--trials", "5", "--permutations", "100", "--plot", "pca"]
    assert main(["sbi", "mmd", run, "sim:1", "sim:2", "-o", str(tmp_path / "same"), *common]) == 0
    assert main(["sbi", "mmd", run, "sim:1", "sim-noctf:2", "-o", str(tmp_path / "noctf"), *common]) == 0
    same = json.loads((tmp_path / "same" / "mmd.json").read_text())
    noctf = json.loads((tmp_path / "noctf" / "mmd.json").read_text())
    assert same["p_value"] > 0.05
    assert noctf["p_value"] < 0.01 and noctf["mmd2_mean"] > same["mmd2_mean"]


def test_mmd_tells_another_structure_from_the_templates(trained, toy_ensemble, tmp_path):
    """cryoSBI's MMD check: particles of another structure, rendered with the run's imaging settings
    and priors, are told apart from the model's own in its embedding space; the same structure with
    another seed is not. The other structure is the ball's 40 atoms stretched into a rod (equal
    amplitudes) whose radius of gyration matches the dumbbell's, so size alone does not tell them apart."""
    import json

    from cryoconf.cli.main import main
    from cryoconf.sbi.latent import embed_simulated, simulator_for_structure
    from cryoconf.sbi.mmd import mmd_test
    from cryoconf.structure import read_conformations

    config, _ = trained
    model, run_dir = _trained_model(trained)  # as loaded: in training mode
    ball, dumbbell = read_conformations(toy_ensemble).coords_A.astype(np.float64)
    rod = ball / 9.0 * np.array([23.0, 5.0, 5.0])
    rg = lambda x: np.sqrt(((x - x.mean(0)) ** 2).sum(1).mean())
    assert abs(rg(rod) - rg(dumbbell)) < 0.05 * rg(dumbbell)

    def structure(coords):
        return Conformations(topology=chain_topology(coords), coords_A=coords[None])

    # simulator_for_structure on the run's own template file is the run's simulator
    own = simulator_for_structure(config, toy_ensemble)
    e = embed_simulated(model, own, 24, seed=5)
    assert torch.equal(e, embed_simulated(model, SBISimulator.from_config(config), 24, seed=5))
    # embeddings are taken in eval mode (batch-norm running statistics, not the batch's), mode restored
    assert model.training
    assert torch.equal(e, embed_simulated(model.eval(), own, 24, seed=5))
    model.train()

    n = 300
    dumbbell_sim, rod_sim = simulator_for_structure(config, structure(dumbbell)), simulator_for_structure(config, structure(rod))
    d1 = embed_simulated(model, dumbbell_sim, n, seed=1)
    d2 = embed_simulated(model, dumbbell_sim, n, seed=2)
    r2 = embed_simulated(model, rod_sim, n, seed=2)
    same = mmd_test(d1, d2, n_per_set=n, n_trials=1, n_permutations=200, seed=0)
    other = mmd_test(d1, r2, n_per_set=n, n_trials=1, n_permutations=200, seed=0)
    assert same.p_value > 0.05
    assert other.p_value < 0.01 and other.mmd2_mean > 10 * abs(same.mmd2_mean)

    # the CLI: the run's simulations vs the rod (a structure file) with the run's imaging settings
    save_conformations(tmp_path / "rod.npz", structure(rod))
    assert main(["sbi", "mmd", str(run_dir), "sim:1", f"sim:2:{tmp_path / 'rod.npz'}", "-o", str(tmp_path / "rod"),
                 "-n", "200", "--trials", "2", "--permutations", "200", "--plot", "none"]) == 0
    report = json.loads((tmp_path / "rod" / "mmd.json").read_text())
    assert report["p_value"] < 0.01 and report["b"].endswith("rod.npz")
    assert main(["sbi", "mmd", str(run_dir), "sim:1", "sim:2:/nonexistent.pdb", "-o", str(tmp_path / "x"),
                 "-n", "8"]) == 2


def test_cli_symmetrize_then_symmetrized_infer_and_calibrate(trained, toy_ensemble, tmp_path, capsys):
    """`sbi symmetrize` writes the fitted temperature; `--symmetrize` uses it and refuses a run without it."""
    import json
    import shutil

    from cryoconf.cli.main import main

    _, run_dir = _trained_model(trained)
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    parts = tmp_path / "parts"
    assert main(["simulate", str(toy_ensemble), "-o", str(parts), "-n", "12", "--box", "32", "--apix", "2.0",
                 "--snr", "inf", "--defocus", "10000", "15000", "--no-progress", "--seed", "5"]) == 0
    assert main(["sbi", "infer", str(run), str(parts / "particles.star"), "-o", str(tmp_path / "x"), "--symmetrize",
                 "--no-progress"]) == 2
    assert "cryoconf sbi symmetrize" in capsys.readouterr().err
    assert main(["sbi", "symmetrize", str(run), "-n", "64", "--no-progress"]) == 0
    record = json.loads((run / "symmetry.json").read_text())
    assert record["checkpoint"] == "checkpoint.150.pt" and 0.25 <= record["temperature"] <= 4.0
    assert record["nll_pooled"] <= record["nll_pooled_temperature_1"] + 1e-9
    assert main(["sbi", "infer", str(run), str(parts / "particles.star"), "-o", str(tmp_path / "inf"),
                 "--symmetrize", "--no-whiten", "--samples", "200", "--no-progress"]) == 0
    summary = np.load(tmp_path / "inf" / "posterior.npz")
    assert str(summary["summary_method"]).startswith("D4-pooled")
    truth = np.load(parts / "truth.npz")["conformation"]
    assert (summary["cryoconfTemplateIndex"] == truth).mean() >= 0.8
    assert main(["sbi", "calibrate", str(run), "-o", str(tmp_path / "cal"), "-n", "48", "--samples", "100",
                 "--snr", "1e30", "--tolerance", "0.5", "--symmetrize"]) == 0
    assert json.loads((tmp_path / "cal" / "calibration.json").read_text())["fraction_within_tolerance"] > 0.6
    assert main(["sbi", "infer", str(run), str(parts / "particles.star"), "-o", str(tmp_path / "y"), "--symmetrize",
                 "--load", str(run / "checkpoint.75.pt"), "--no-progress"]) == 2
    assert "fitted for checkpoint.150.pt" in capsys.readouterr().err
    # a subgroup: its own fit and file
    assert main(["sbi", "infer", str(run), str(parts / "particles.star"), "-o", str(tmp_path / "c2"), "--symmetrize",
                 "C2", "--no-progress"]) == 2
    assert "--group C2" in capsys.readouterr().err
    assert main(["sbi", "symmetrize", str(run), "--group", "C2", "-n", "64", "--no-progress"]) == 0
    record = json.loads((run / "symmetry_C2.json").read_text())
    assert record["group"] == "C2" and 0.25 <= record["temperature"] <= 4.0
    assert main(["sbi", "infer", str(run), str(parts / "particles.star"), "-o", str(tmp_path / "c2"),
                 "--symmetrize", "C2", "--no-whiten", "--no-progress"]) == 0
    summary = np.load(tmp_path / "c2" / "posterior.npz")
    assert str(summary["summary_method"]).startswith("C2-pooled")
    assert (summary["cryoconfTemplateIndex"] == truth).mean() >= 0.8
    # a distillation teacher pooled over the subgroup takes that group's fit
    from cryoconf.sbi.distillation import Teacher

    teacher = Teacher.load(run, symmetrize="C2")
    assert teacher.group == "C2" and teacher.model.pooled.group == "C2"
    assert teacher.temperature == record["temperature"] and "C2-pooled posterior" in teacher.label
    with pytest.raises(InputError, match="--group C4"):
        Teacher.load(run, symmetrize="C4")
    assert Teacher.load(run, symmetrize=False).model.pooled is None


# -- distillation from a teacher --------------------------------------------------------------
def test_distillation_config(toy_ensemble, tmp_path):
    plain = toy_config(toy_ensemble)
    assert not plain.distillation.enabled and "distillation" not in plain.to_dict()  # older runs resume unchanged
    data = toy_config(toy_ensemble).to_dict()
    data["distillation"] = {"teacher": "teachers/checkpoint.5.pt", "weight": 0.5, "samples": 8}
    path = tmp_path / "cfg" / "c.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(data))
    conf = load_config(path)
    assert conf.distillation.teacher == str((tmp_path / "cfg" / "teachers" / "checkpoint.5.pt").resolve())
    assert (conf.distillation.weight, conf.distillation.samples, conf.distillation.symmetrize) == (0.5, 8, True)
    assert SBIConfig.from_dict(conf.to_dict()).to_dict() == conf.to_dict()
    data["distillation"]["symmetrize"] = "C2"
    assert SBIConfig.from_dict(data).distillation.symmetrize == "C2"
    for patch, match in [({"weight": 1.5}, "distillation.weight"), ({"samples": 0}, "distillation.samples"),
                         ({"symmetrize": "yes"}, "distillation.symmetrize"), ({"symmetrize": "C3"}, "C2, C4, D4"),
                         ({"teacher": 3}, "distillation.teacher"),
                         ({"temperature": 1.0}, "'distillation.temperature' is unknown")]:
        bad = toy_config(toy_ensemble).to_dict()
        bad["distillation"] = {"teacher": "t.pt", **patch}
        with pytest.raises(InputError, match=match):
            SBIConfig.from_dict(bad)


def test_distillation_loss_mixes_the_true_theta_and_the_teacher_draws():
    from cryoconf.sbi.distillation import distillation_loss

    log_q = torch.tensor([[-1.0, -2.0], [-3.0, -5.0], [-5.0, -7.0]])   # row 0: at the true θ; rows 1, 2: draws
    assert float(distillation_loss(log_q, 0.0)) == pytest.approx(1.5)
    assert float(distillation_loss(log_q, 1.0)) == pytest.approx(5.0)
    assert float(distillation_loss(log_q, 0.25)) == pytest.approx(0.75 * 1.5 + 0.25 * 5.0)
    with pytest.raises(ValueError, match="1 \\+ M"):
        distillation_loss(log_q[:1], 0.5)


def _noisy_toy_images(config, n, snr=0.5, seed=11):
    simulator = SBISimulator.from_config(config)
    g = torch.Generator().manual_seed(seed)
    params = simulator.sample_parameters(n, g)
    params["snr"] = torch.full_like(params["snr"], snr)
    return params, simulator.render(params, g)


def test_pooled_teacher_draws_are_its_stratified_quantiles(trained, toy_ensemble):
    """Draw m of particle b sits at the pooled posterior's CDF level (m + u_b)/M."""
    from cryoconf.sbi.distillation import Teacher

    model, _ = _trained_model(trained)
    teacher = Teacher(model, temperature=1.3)
    _, images = _noisy_toy_images(toy_config(toy_ensemble), 6)
    m = 16
    draws = teacher.draw(images, m, torch.Generator().manual_seed(0))
    assert draws.shape == (m, 6, 1) and draws.dtype == torch.float32
    low, high = model.bounds[0]
    assert bool(((draws >= low) & (draws <= high)).all())
    grid = model.pooled.grid(model._check_images(images))           # the pool, computed independently
    levels = grid.z.cdf(grid._z(draws[..., 0].double())) * m         # (M, B): m + u_b
    u = levels - torch.arange(m, dtype=torch.float64)[:, None]
    assert float((u - u[:1]).abs().max()) < 2e-3 * m                  # float32 draws: CDF agrees to ~1e-4
    assert bool(((u[0] > -1e-3) & (u[0] < 1 + 1e-3)).all()) and float(u[0].std()) > 0.05  # one u per particle
    # the draws' mean lies between the lower and upper sums of the quantile function, as the mean does
    edges = grid.quantile(torch.arange(m + 1, dtype=torch.float64) / m)                  # (M + 1, B)
    lower, upper = edges[:-1].mean(0), edges[1:].mean(0)
    mean, _ = grid.z.moments(grid._theta)
    got = draws[..., 0].double().mean(0)
    assert bool(((got > lower - 1e-5) & (got < upper + 1e-5)).all())
    assert bool(((mean > lower - 1e-5) & (mean < upper + 1e-5)).all())
    plain = Teacher(SBIModel.load(trained[1].checkpoint), temperature=None).draw(images, 5)
    assert plain.shape == (5, 6, 1) and bool(((plain >= low) & (plain <= high)).all())


def test_training_with_a_pooled_teacher_resumes_exactly_and_learns_the_teacher(trained, toy_ensemble, tmp_path, capsys):
    import shutil

    from cryoconf.cli.main import main
    from cryoconf.sbi.distillation import Teacher

    _, run_dir = _trained_model(trained)
    teacher_run = tmp_path / "teacher"
    shutil.copytree(run_dir, teacher_run)

    def cfg(**training):
        c = toy_config(toy_ensemble, **{"batch_size": 16, "validation_size": 16, "validation_interval": 2,
                                     "checkpoint_interval": 3, **training})
        c.distillation.teacher, c.distillation.samples = str(teacher_run), 8
        return c

    with pytest.raises(InputError, match="cryoconf sbi symmetrize"):   # no symmetry.json yet
        train_sbi(cfg(), tmp_path / "x", steps=1, progress=False)
    assert main(["sbi", "symmetrize", str(teacher_run), "-n", "64", "--no-progress"]) == 0
    straight = train_sbi(cfg(), tmp_path / "a", steps=6, progress=False)
    first = train_sbi(cfg(), tmp_path / "b", steps=3, progress=False)
    resumed = train_sbi(cfg(), tmp_path / "b", steps=6, load="latest", progress=False)
    assert resumed.train_losses == straight.train_losses[3:]
    sa, sb = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert first.timings["teacher_ms_per_batch"] > 0 and "D4-pooled posterior" in (tmp_path / "a" / "run.log").read_text()
    # a fresh student trained on the teacher's draws alone comes to agree with the teacher
    teacher = Teacher.load(teacher_run, symmetrize=True)
    _, images = _noisy_toy_images(toy_config(toy_ensemble), 64, seed=12)
    draws = teacher.draw(images, 32, torch.Generator().manual_seed(1))

    def cross_entropy(model):
        model.eval()
        with torch.no_grad():
            return float(-model.log_prob(draws, images).mean())

    student = cfg(steps=80, lr=3e-3)
    student.distillation.weight = 1.0
    start = train_sbi(student, tmp_path / "s0", steps=0, progress=False).model   # the same initial weights
    result = train_sbi(student, tmp_path / "s", steps=80, progress=False)
    assert cross_entropy(result.model) < cross_entropy(start) - 0.3
    # a teacher of another grid is refused
    other = cfg()
    other.image.box = 24
    with pytest.raises(InputError, match="distillation.teacher .*box"):
        train_sbi(other, tmp_path / "c", steps=1, progress=False)
