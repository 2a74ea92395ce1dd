"""cryoconf simulate end to end: outputs, round trips through the readers, determinism, bad input."""

from __future__ import annotations

import mrcfile
import numpy as np
import pytest
import yaml

from cryoconf.cli.main import main
from cryoconf.data import load_particles, read_metadata
from cryoconf.structure import Conformations, Structure, save_conformations


def toy_conformations(n_conf: int = 3, n_res: int = 40) -> Conformations:
    """A helical Cα chain that opens with the conformation index (θ = index·0.5)."""
    t = np.arange(n_res, dtype=np.float32)
    base = np.stack([5.0 * np.cos(t * 0.6), 5.0 * np.sin(t * 0.6), 1.5 * (t - n_res / 2)], axis=1)
    coords = np.stack([base + np.array([0.3 * m, 0, 0], dtype=np.float32) * (t[:, None] > n_res / 2)
                       for m in range(n_conf)]).astype(np.float32)
    topo = Structure(
        coords_A=coords[0],
        atom_names=np.array(["CA"] * n_res),
        residue_names=np.array(["ALA"] * n_res),
        residue_numbers=np.arange(1, n_res + 1),
        chain_ids=np.array(["A"] * n_res),
        amplitudes_e=np.full(n_res, 38.0, dtype=np.float32),
        sigmas_A=np.full(n_res, 1.4, dtype=np.float32),
        residue_index=np.arange(n_res),
        chain_breaks=np.eye(1, n_res, dtype=bool)[0],
    )
    return Conformations(topology=topo, coords_A=coords, theta=np.arange(n_conf) * 0.5,
                         labels=None, frame_indices=np.arange(n_conf))


@pytest.fixture
def ensemble_file(tmp_path):
    path = tmp_path / "toy.npz"
    save_conformations(path, toy_conformations())
    return path


def _simulate(ensemble_file, outdir, *extra):
    args = ["simulate", str(ensemble_file), "-o", str(outdir), "-n", "20", "--box", "32", "--apix", "2.0",
            "--astigmatism", "100", "400", "--shift", "3", "--batch-size", "8", "--no-progress", *extra]
    assert main(args) == 0


def test_simulate_writes_readable_dataset_and_round_trips(ensemble_file, tmp_path):
    out = tmp_path / "sim"
    _simulate(ensemble_file, out, "--save-clean", "--snr", "0.5", "--bfactor", "20")
    truth = np.load(out / "truth.npz")
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["simulation"]["n_particles"] == 20 and (out / "run.log").read_text()
    # poses, shifts and CTF survive write → read
    md = read_metadata(out / "particles.star")
    assert len(md) == 20
    np.testing.assert_allclose(md.rotations, truth["rotations"], atol=1e-5)
    np.testing.assert_allclose(md.shifts_A, truth["shifts_A"], atol=1e-5)
    np.testing.assert_allclose(md.defocus_u_A, truth["defocus_u_A"], rtol=1e-6)
    np.testing.assert_allclose(md.defocus_v_A, truth["defocus_v_A"], rtol=1e-6)
    np.testing.assert_allclose(md.defocus_angle_deg, truth["defocus_angle_deg"], atol=1e-4)
    np.testing.assert_allclose(md.apix_A, 2.0)
    assert set(truth["conformation"]) <= {0, 1, 2}
    np.testing.assert_allclose(truth["theta"], truth["conformation"] * 0.5)
    # images read through the dataset are exactly those written
    ds = load_particles(out / "particles.star")
    with mrcfile.open(out / "particles.mrcs") as m:
        raw = np.array(m.data)
        assert abs(m.voxel_size.x - 2.0) < 1e-6
    np.testing.assert_array_equal(ds.batch(np.arange(20))["images"].numpy(), raw)
    # the noise has the requested SNR (box definition), pooled over particles
    with mrcfile.open(out / "particles_clean.mrcs") as m:
        clean = np.array(m.data)
    assert np.isfinite(raw).all() and clean.std() > 0
    snr = clean.var(axis=(1, 2)).mean() / (raw - clean).var(axis=(1, 2)).mean()
    assert snr == pytest.approx(0.5, rel=0.15)


def test_from_star_rerenders_the_same_clean_particles(ensemble_file, tmp_path):
    first = tmp_path / "a"
    _simulate(ensemble_file, first, "--save-clean", "--snr", "inf", "--weights", "0,1,0")
    again = tmp_path / "b"
    assert main(["simulate", str(ensemble_file), "-o", str(again), "--from-star", str(first / "particles.star"),
                 "--snr", "inf", "--weights", "0,1,0", "--center", "first", "--no-progress"]) == 0
    with mrcfile.open(first / "particles_clean.mrcs") as a, mrcfile.open(again / "particles.mrcs") as b:
        np.testing.assert_allclose(np.array(b.data), np.array(a.data), atol=1e-5 * np.abs(a.data).max())
    # noise-free means the noisy stack equals the clean one
    with mrcfile.open(first / "particles.mrcs") as a, mrcfile.open(first / "particles_clean.mrcs") as b:
        np.testing.assert_array_equal(np.array(a.data), np.array(b.data))


def test_simulate_is_deterministic_given_seed(ensemble_file, tmp_path):
    _simulate(ensemble_file, tmp_path / "a", "--seed", "7")
    _simulate(ensemble_file, tmp_path / "b", "--seed", "7")
    with mrcfile.open(tmp_path / "a" / "particles.mrcs") as a, mrcfile.open(tmp_path / "b" / "particles.mrcs") as b:
        np.testing.assert_array_equal(np.array(a.data), np.array(b.data))


def test_weights_select_conformations(ensemble_file, tmp_path):
    _simulate(ensemble_file, tmp_path / "w", "--weights", "0,0,1", "--snr", "inf")
    assert set(np.load(tmp_path / "w" / "truth.npz")["conformation"]) == {2}


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--weights", "1,1"], "one weight per conformation"),
        (["--box", "31"], "--box"),
        (["--defocus", "20000", "10000"], "--defocus"),
        (["--snr", "0.1", "inf"], "--snr"),
        (["--weights", "1,1,1", "--frame-gaussian", "1,1"], "either --weights or --frame-gaussian"),
    ],
)
def test_bad_options_give_clear_errors(ensemble_file, tmp_path, capsys, extra, message):
    args = ["simulate", str(ensemble_file), "-o", str(tmp_path / "x"), "-n", "4", "--no-progress", *extra]
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_every_command_has_help(capsys):
    for command in ["simulate", "convert", "demo"]:
        with pytest.raises(SystemExit) as exc:
            main([command, "--help"])
        assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "(Å)" in text and "(kV)" in text and "default" in text
