"""cryoconf demo: the simulated ADK dataset and the short SBI run (ensemble, config, train, infer, calibrate)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from cryoconf.cli.main import main


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    pytest.importorskip("MDAnalysisTests.datafiles", reason="the demo needs the ADK trajectory of MDAnalysisTests")
    out = tmp_path_factory.mktemp("demo") / "out"
    code = main(["demo", "-o", str(out), "-n", "16", "--box", "32", "--sbi-steps", "3", "--sbi-particles", "24",
                 "--sbi-calibration", "24", "--seed", "1", "--recon-epochs", "2"])
    assert code == 0
    return out


def test_demo_simulates_the_trajectory(demo_out):
    for name in ("particles.star", "particles.mrcs", "truth.npz", "montage.png"):
        assert (demo_out / name).exists(), name


def test_demo_sbi_outputs(demo_out):
    sbi = demo_out / "sbi"
    for name in ("ensemble.npz", "config.yaml", "summary.json", "run/checkpoint.3.pt", "run/loss.png",
                 "particles/particles.star", "particles/truth.npz", "posterior/posterior.npz",
                 "posterior/particles_sbi.star", "posterior/posterior_examples.png", "posterior/posterior_means.png",
                 "posterior/posterior_vs_truth.png", "calibration/calibration.json", "calibration/calibration.png"):
        assert (sbi / name).exists(), name

    # templates: one signed θ per template, evenly spaced around the reference θ = 0
    with np.load(sbi / "ensemble.npz") as z:
        theta = z["theta"]
        assert z["coordinates"].shape == (theta.size, 214, 3)
    assert 10 <= theta.size <= 20 and theta.min() < 0 < theta.max() and np.any(theta == 0)
    np.testing.assert_allclose(np.diff(theta), np.diff(theta)[0], rtol=1e-6)

    config = yaml.safe_load((sbi / "config.yaml").read_text())
    assert config["training"]["steps"] == 3 and config["embedding"]["name"] == "cnn"

    # posterior means of every particle lie in the prior range, i.e. the ensemble's θ range plus half a cell
    half = 0.5 * (theta[1] - theta[0])
    with np.load(sbi / "posterior" / "posterior.npz") as p:
        mean = p["cryoconfThetaMean"]
        assert mean.shape == (24,)
        assert np.all((mean >= theta.min() - half) & (mean <= theta.max() + half))
        assert np.all(p["cryoconfThetaStd"] > 0)
    with np.load(sbi / "particles" / "truth.npz") as t:
        assert set(np.round(t["theta"], 6)) <= set(np.round(theta, 6))

    summary = json.loads((sbi / "summary.json").read_text())
    assert summary["training_steps"] == 3 and summary["templates"] == theta.size
    assert np.isfinite(summary["validation_loss_final"])
    c = summary["calibration"]
    assert c["n_particles"] == 24 and 0 <= c["coverage_68"] <= c["coverage_95"] <= 1
    assert summary["particles"]["n"] == 24 and summary["particles"]["rmse_A"] >= 0


def test_no_sbi_skips_the_sbi_part(tmp_path):
    pytest.importorskip("MDAnalysisTests.datafiles", reason="the demo needs the ADK trajectory of MDAnalysisTests")
    assert main(["demo", "-o", str(tmp_path), "-n", "4", "--box", "32", "--no-sbi"]) == 0
    assert (tmp_path / "particles.star").exists() and not (tmp_path / "sbi").exists()


@pytest.mark.parametrize("extra, message", [
    (["--sbi-steps", "0"], "--sbi-steps"),
    (["--sbi-particles", "1"], "--sbi-particles"),
    (["--sbi-calibration", "0"], "--sbi-calibration"),
    (["--threads", "0"], "--threads"),
])
def test_bad_demo_options_give_clear_errors(tmp_path, capsys, extra, message):
    assert main(["demo", "-o", str(tmp_path / "x"), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_demo_recon_outputs(demo_out):
    recon = demo_out / "recon"
    for name in ("base_frame0.pdb", "run/checkpoint.2.pt", "run/z.2.npy", "run/loss.png", "analyze/pc1_traversal.pdb",
                 "analyze/latent_pca.png", "analyze/loss.png", "summary.json"):
        assert (recon / name).exists(), name
    text = (recon / "analyze" / "pc1_traversal.pdb").read_text()
    assert text.count("MODEL ") == 10 and text.count("\nATOM ") == 10 * 214
    summary = json.loads((recon / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["particles"] == 16
    assert 0.0 <= summary["pc1_vs_frame_index_abs_pearson_r"] <= 1.0
