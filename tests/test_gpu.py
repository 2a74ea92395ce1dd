"""The GPU paths give the CPU's answers (run where CUDA is available; skipped elsewhere).

Each test runs one computation on the CPU and on the GPU and compares the numbers:
rendering, SBI training and inference (library and ``--device cuda`` command line),
and the explicit-likelihood baseline. ``benchmarks/gpu_session.sh`` runs this module
and the GPU benchmarks in one call on a lent GPU machine.
``CRYOCONF_TEST_DEVICE=cpu`` runs the same tests with the CPU in the GPU's place:
a check of the tests themselves on a machine without one.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
import yaml

from _sbi_helpers import toy_config, write_toy_ensemble

CUDA = torch.device(os.environ.get("CRYOCONF_TEST_DEVICE", "cuda"))
pytestmark = pytest.mark.skipif(CUDA.type == "cuda" and not torch.cuda.is_available(),
                                reason="needs a CUDA device (torch.cuda.is_available() is False)")


def test_rendering_on_the_gpu_equals_the_cpu():
    """The GPU renders what the CPU renders: to rounding in float64, and in float32 as close to the
    float64 images as the CPU's float32 ones are (~1e-6 of the peak). An H100 once differed by 6e-4
    with the CTF: cuFFT and pocketfft read a CTF product that was not Hermitian on the Nyquist
    column differently (fixed by imaging.ctf.ctf_rfft; see test_imaging_ctf_shift)."""
    from cryoconf.imaging.ctf import CTFParams
    from cryoconf.imaging.forward import render_images
    from cryoconf.imaging.rotations import random_rotations

    g = torch.Generator().manual_seed(0)
    b, n, box, apix = 48, 300, 64, 1.5
    coords = torch.randn(b, n, 3, generator=g) * 12.0
    sig = 1.0 + 2.0 * torch.rand(b, 1, generator=g)
    rots = random_rotations(b, g)
    shifts = 3.0 * torch.randn(b, 2, generator=g)
    du, dv = 12000 + 6000 * torch.rand(b, generator=g), 11000 + 6000 * torch.rand(b, generator=g)
    ang = torch.rand(b, generator=g) * math.pi
    amps = torch.ones(n)

    def render(device, dtype, with_ctf=True):
        ctf = CTFParams.create(du.to(dtype), dv.to(dtype), ang.to(dtype), bfactor_A2=30.0).to(device=device)
        out = render_images(coords.to(device, dtype), amps.to(device, dtype), sig.to(device, dtype),
                            rots.to(device, dtype), shifts.to(device, dtype), ctf if with_ctf else None, box, apix,
                            pad_factor=2)
        assert out.device.type == torch.device(device).type and out.dtype == dtype
        return out.cpu().double()

    for with_ctf in (True, False):
        ref = render("cpu", torch.float64, with_ctf)
        scale = float(ref.abs().max())
        assert float((render(CUDA, torch.float64, with_ctf) - ref).abs().max()) < 1e-9 * scale
        assert float((render(CUDA, torch.float32, with_ctf) - ref).abs().max()) < 1e-5 * scale
        assert float((render("cpu", torch.float32, with_ctf) - ref).abs().max()) < 1e-5 * scale


def test_noisy_rendering_draws_its_noise_from_a_generator_on_the_device():
    """A generator on the GPU seeds the per-chunk noise (benchmarks/baseline_cost.py passes one)."""
    from cryoconf.imaging.forward import render_noisy_images
    from cryoconf.imaging.rotations import random_rotations

    g = torch.Generator().manual_seed(0)
    coords = (torch.randn(6, 200, 3, generator=g) * 10.0).to(CUDA)
    rots = random_rotations(6, g).to(CUDA)

    def noisy(seed):
        return render_noisy_images(coords, 1.0, 2.0, rots, None, None, 48, 1.5, 0.1, chunk_size=2,
                                   generator=torch.Generator(device=CUDA).manual_seed(seed))

    a, b, c = noisy(1), noisy(1), noisy(2)
    assert a.device.type == CUDA.type and bool(torch.isfinite(a).all())
    assert torch.equal(a, b)  # the same seed, the same noise
    assert float((a - c).abs().mean()) > 0.1 * float(a.std())  # another seed, other noise
    clean = render_noisy_images(coords, 1.0, 2.0, rots, None, None, 48, 1.5, float("inf"))  # no noise
    ratio = (a - clean).var(dim=(1, 2)) / clean.var(dim=(1, 2))
    assert torch.allclose(ratio, torch.full_like(ratio, 10.0), rtol=0.25)  # SNR 0.1 (box definition)


@pytest.fixture(scope="module")
def gpu_run(tmp_path_factory):
    """The toy model trained 150 steps on the GPU."""
    from cryoconf.sbi import train_sbi

    tmp = tmp_path_factory.mktemp("gpu")
    config = toy_config(write_toy_ensemble(tmp / "toy.npz"), snr=[0.5, 5.0])
    result = train_sbi(config, tmp / "run", device=CUDA.type, progress=False)
    return config, result


def test_training_on_the_gpu_learns_and_its_checkpoint_loads_anywhere(gpu_run):
    from cryoconf.sbi import SBISimulator, load_run

    config, result = gpu_run
    losses = np.array([v for _, v in result.train_losses])
    assert np.all(np.isfinite(losses)) and losses[-30:].mean() < 0.7 * losses[:10].mean()
    # held out, the trained model beats the untrained one's loss by far (the validation loss itself
    # fluctuates by ±0.05 between checks once learnt, and the GPU's order of additions differs)
    assert result.validation_losses[-1][1] < 0.6 * losses[:10].mean()
    cpu, _ = load_run(result.run_dir, device="cpu")
    gpu, _ = load_run(result.run_dir, device=CUDA.type)
    assert cpu.device.type == "cpu" and gpu.device.type == CUDA.type
    sim = SBISimulator.from_config(config)
    params, images = sim.simulate(64, torch.Generator().manual_seed(11))
    theta = params["theta"][:, None]
    lp_cpu = cpu.log_prob(theta, images)
    lp_gpu = gpu.log_prob(theta.to(CUDA), images.to(CUDA)).cpu()
    torch.testing.assert_close(lp_gpu, lp_cpu, rtol=1e-3, atol=2e-3)
    s_cpu = cpu.summarize(images, method="flow")
    s_gpu = gpu.summarize(images.to(CUDA), method="flow")
    np.testing.assert_allclose(s_gpu.mean, s_cpu.mean, atol=2e-3)
    np.testing.assert_allclose(s_gpu.std, s_cpu.std, atol=2e-3)
    samples = gpu.sample(images.to(CUDA), 500)
    assert samples.device.type == CUDA.type
    lo, hi = gpu.bounds[0].tolist()
    assert float(samples.min()) >= lo and float(samples.max()) <= hi


def test_command_line_infer_on_the_gpu_matches_the_cpu(gpu_run, tmp_path):
    from cryoconf.cli.main import main

    config, result = gpu_run
    parts = tmp_path / "parts"
    assert main(["simulate", config.templates.path, "-o", str(parts), "-n", "40", "--box", "48", "--apix", "1.5",
                 "--snr", "2", "--shift", "3", "--defocus", "10000", "15000", "--no-progress"]) == 0
    for name, dev in (("ref", "cpu"), ("dev", CUDA.type)):
        assert main(["sbi", "infer", str(result.run_dir), str(parts / "particles.star"), "-o", str(tmp_path / name),
                     "--device", dev, "--no-progress"]) == 0
    a, b = np.load(tmp_path / "ref" / "posterior.npz"), np.load(tmp_path / "dev" / "posterior.npz")
    for key in ("cryoconfThetaMean", "cryoconfThetaStd", "cryoconfThetaQ16", "cryoconfThetaQ84"):
        np.testing.assert_allclose(b[key], a[key], atol=5e-3, err_msg=key)
    assert np.array_equal(b["index"], a["index"])
    assert main(["sbi", "symmetrize", str(result.run_dir), "-n", "256", "--device", CUDA.type, "--no-progress"]) == 0
    assert main(["sbi", "infer", str(result.run_dir), str(parts / "particles.star"), "-o", str(tmp_path / "pooled"),
                 "--device", CUDA.type, "--symmetrize", "--no-progress"]) == 0
    pooled = np.load(tmp_path / "pooled" / "posterior.npz")
    assert np.all(np.isfinite(pooled["cryoconfThetaMean"]))


def test_training_resumes_on_the_gpu(gpu_run, tmp_path):
    """A run trained on the GPU resumes on the GPU with --load latest (checkpoints hold CPU streams)."""
    from cryoconf.cli.main import main

    config, result = gpu_run
    data = config.to_dict()
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
    out = tmp_path / "r"
    assert main(["sbi", "train", str(tmp_path / "c.yaml"), "-o", str(out), "--device", CUDA.type, "--steps", "20",
                 "--no-progress"]) == 0
    assert main(["sbi", "train", str(tmp_path / "c.yaml"), "-o", str(out), "--device", CUDA.type, "--steps", "40",
                 "--load", "latest", "--no-progress"]) == 0
    assert (out / "checkpoint.40.pt").exists()


def test_baseline_on_the_gpu_equals_the_cpu():
    from cryoconf.baseline import BaselineConfig, TemplateSet, score_particles, so3_grid
    from cryoconf.imaging.ctf import CTFParams
    from cryoconf.imaging.forward import render_images

    g = torch.Generator().manual_seed(0)
    n = 50
    a = torch.randn(n, 3, generator=g) * torch.tensor([13.0, 5.0, 5.0])
    b = torch.randn(n, 3, generator=g) * torch.tensor([5.0, 5.0, 13.0])
    tm = TemplateSet(torch.stack([a, b]), torch.full((n,), 10.0), torch.full((n,), 2.0), np.array([10.0, 20.0]))
    rots = so3_grid(576)
    defocus = torch.tensor([12000.0, 15000.0, 18000.0])
    ctf = CTFParams.create(defocus, bfactor_A2=20.0)
    img = render_images(tm.coords_A[1], tm.amplitudes_e, tm.sigmas_A, rots[[7, 150, 333]],
                        torch.tensor([[2.0, 0.0], [0.0, -2.0], [0.0, 0.0]]), ctf, 32, 2.5)
    img = img + 0.5 * img.std() * torch.randn(img.shape, generator=g)
    cfg = BaselineConfig(n_orientations=576, shift_range_A=2.0, shift_step_A=2.0,
                         defocus_offsets_A=(-400.0, 0.0, 400.0))
    ref = score_particles(tm, img, 2.5, cfg, ctf=ctf)
    gpu_tm = TemplateSet(tm.coords_A.to(CUDA), tm.amplitudes_e.to(CUDA), tm.sigmas_A.to(CUDA), tm.theta)
    out = score_particles(gpu_tm, img.to(CUDA), 2.5, cfg, ctf=ctf)
    np.testing.assert_allclose(out.log_likelihood, ref.log_likelihood, rtol=0, atol=5e-3)
    assert np.array_equal(out.best_orientation, ref.best_orientation)
    assert np.all(out.posterior[:, 1] > 0.95)
