"""`cryoconf svi train` / `svi analyze` on a tiny simulated stack; bad input gives clear errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from _structure_helpers import write_synthetic_pdb

from cryoconf.cli.main import main
from cryoconf.data.mrcwriter import write_mrcs
from cryoconf.svi.config import SVIConfig
from cryoconf.svi.setup import SVIData, build_model


def _helix_pdb(path, n=30):
    residues = []
    for i in range(n):
        a = math.radians(100 * i)
        x, y, z = 2.3 * math.cos(a) + 0.4 * i, 2.3 * math.sin(a), 1.5 * i - 22
        residues.append(("ALA", "A", i + 1, [("N", "N", (x - 1.0, y + 0.5, z - 0.4)), ("CA", "C", (x, y, z)),
                                             ("C", "C", (x + 1.0, y + 0.5, z + 0.4)), ("O", "O", (x + 1.2, y + 1.6, z + 0.4))]))
    return write_synthetic_pdb(path, residues)


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("svi_cli")
    pdb = _helix_pdb(d / "helix.pdb")
    n, box, apix = 24, 16, 4.0
    dummy = SVIData(torch.randn(n, box, box), np.arange(n), apix)
    config = SVIConfig(structure=str(pdb), sigma_alpha_A=[4.0], defocus_mean_A=8000, defocus_std_A=300,
                       noise_sigma=1.0, signal_scale=1.0)
    model, _ = build_model(config, dummy)
    sim = model.simulate(n, torch.Generator().manual_seed(0), snr=2.6)
    write_mrcs(d / "particles.mrcs", sim["images"].numpy(), apix_A=apix)
    np.savez(d / "truth.npz", alpha=sim["alpha"].numpy(), angle_deg=np.degrees(sim["pose"].numpy()),
             defocus_A=sim["defocus_A"].numpy())
    return {"dir": d, "pdb": pdb, "sigma": model.priors.noise_sigma, "n": n}


def _train_args(ds, run, *extra):
    return ["svi", "train", str(ds["dir"] / "particles.mrcs"), "--structure", str(ds["pdb"]), "-o", str(run),
            "--apix", "4", "--stages", "8:3:pose+defocus,16:2", "--sigma-alpha", "4", "--sigma-noise",
            f"{ds['sigma']:.6g}", "--signal-scale", "1", "--defocus-mean", "8000", "--defocus-std", "300",
            "-b", "8", "--checkpoint-interval", "2", "--no-progress", *extra]


def test_train_resume_and_analyze(tiny_dataset, tmp_path, capsys):
    ds = tiny_dataset
    run = tmp_path / "run"
    assert main(_train_args(ds, run)) == 0
    for name in ("config.yaml", "run.log", "loss.csv", "loss.png", "checkpoint.5.pt"):
        assert (run / name).exists(), name
    # a second train into the same run needs --load latest
    assert main(_train_args(ds, run)) == 2
    assert "--load latest" in capsys.readouterr().err
    assert main(_train_args(ds, run, "--load", "latest", "--stages", "8:3:pose+defocus,16:4")) == 0
    assert (run / "checkpoint.7.pt").exists()
    out = tmp_path / "analysis"
    assert main(["svi", "analyze", str(run), "-o", str(out), "--apix", "4", "--truth", str(ds["dir"] / "truth.npz"),
                 "--samples", "5"]) == 0
    rows = (out / "posterior.csv").read_text().strip().splitlines()
    assert rows[0].startswith("index,alpha0_mean_A,alpha0_std_A,defocus_mean_A") and len(rows) == 1 + ds["n"]
    post = np.load(out / "posterior.npz")
    assert post["alpha"].shape == (ds["n"], 5, 1) and post["pose"].shape == (ds["n"], 5)
    report = json.loads((out / "residuals.json").read_text())
    assert 0 <= report["pose_residual_deg"] <= 180 and report["anm_residual"]["sigma_units"] >= 0
    assert (out / "predicted_vs_true.png").stat().st_size > 1000


def test_bad_inputs(tiny_dataset, tmp_path, capsys):
    ds = tiny_dataset
    args = _train_args(ds, tmp_path / "r1")
    args[args.index("--stages") + 1] = "8:3:shape"
    assert main(args) == 2
    assert "unknown encoder" in capsys.readouterr().err
    args = _train_args(ds, tmp_path / "r2")
    args[args.index("--structure") + 1] = str(tmp_path / "missing.pdb")
    assert main(args) == 2
    assert "missing.pdb" in capsys.readouterr().err
    # a stack with a NaN particle: the row is named
    import mrcfile

    bad = np.random.default_rng(0).normal(size=(4, 16, 16)).astype(np.float32)
    bad[2, 3, 3] = np.nan  # our writer refuses NaN, so write the broken stack with mrcfile directly
    with mrcfile.new(tmp_path / "bad.mrcs", overwrite=True) as m:
        m.set_data(bad)
        m.voxel_size = 4.0
    args = _train_args(ds, tmp_path / "r3")
    args[2] = str(tmp_path / "bad.mrcs")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "particle 3" in err and "NaN" in err and "bad.mrcs" in err
    # analyze a folder that is not an svi run
    assert main(["svi", "analyze", str(tmp_path), "-o", str(tmp_path / "o")]) == 2
    assert "checkpoint" in capsys.readouterr().err


def test_noise_and_signal_scale_are_estimated(tiny_dataset):
    """Without --sigma-noise / --signal-scale both are estimated from the particles themselves."""
    from cryoconf.svi.setup import load_svi_data

    ds = tiny_dataset
    data = load_svi_data(ds["dir"] / "particles.mrcs", apix=4.0)
    config = SVIConfig(structure=str(ds["pdb"]), sigma_alpha_A=[4.0], defocus_mean_A=8000, defocus_std_A=300,
                       mask_radius_frac=0.6)
    model, info = build_model(config, data)
    # the background ring still holds some CTF-spread signal, so the estimate is close but not exact
    assert info["noise_sigma"] == pytest.approx(ds["sigma"], rel=0.25)
    assert info["signal_scale"] == pytest.approx(1.0, rel=0.3)
