"""``cryoconf convert`` in-process: cryoDRGN pkl output equals the goldens; --star reads back identically."""

from __future__ import annotations

import argparse
import importlib.util
import pickle

import numpy as np
import pytest

from cryoconf.data import load_particles, read_metadata


def run_cli(argv: list[str]) -> int:
    if importlib.util.find_spec("cryoconf.cli.simulate") is not None:
        from cryoconf.cli.main import main

        return main(argv)
    # the simulate command is being written elsewhere: exercise convert through its own parser
    from cryoconf.cli import convert
    from cryoconf.errors import InputError

    parser = argparse.ArgumentParser(prog="cryoconf")
    convert.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except InputError:
        return 2


def test_convert_relion31_to_cryodrgn(shared_data, tmp_path):
    pose, ctf = tmp_path / "pose.pkl", tmp_path / "ctf.pkl"
    assert run_cli(["convert", str(shared_data / "io" / "relion31.star"), "--poses", str(pose), "--ctf", str(ctf)]) == 0
    g = np.load(shared_data / "io" / "goldens_cryodrgn.npz")
    with open(pose, "rb") as fh:
        rot, trans = pickle.load(fh)
    with open(ctf, "rb") as fh:
        c = pickle.load(fh)
    np.testing.assert_allclose(rot, g["relion31_pose_rot"], atol=1e-5)
    np.testing.assert_allclose(trans, g["relion31_pose_trans"], atol=1e-5)
    np.testing.assert_allclose(c, g["relion31_ctf"], rtol=1e-4)
    assert c.dtype == np.float32


def test_convert_pfcrt_with_box_and_apix(shared_data, tmp_path):
    pose, ctf = tmp_path / "pose.pkl", tmp_path / "ctf.pkl"
    src = str(shared_data / "io" / "FinalRefinement-OriginalParticles-PfCRT.star")
    assert run_cli(["convert", src, "--poses", str(pose), "--ctf", str(ctf)]) == 2  # no box: a clear error
    assert run_cli(["convert", src, "--poses", str(pose), "--ctf", str(ctf), "-D", "300", "--apix", "1.035"]) == 0
    g = np.load(shared_data / "io" / "goldens_cryodrgn.npz")
    with open(ctf, "rb") as fh:
        np.testing.assert_allclose(pickle.load(fh), g["PfCRT_ctf"], rtol=1e-4)


def test_convert_to_star_reads_back(shared_data, tmp_path):
    out = tmp_path / "sub" / "out.star"
    out.parent.mkdir()
    assert run_cli(["convert", str(shared_data / "io" / "relion31.star"), "--star", str(out)]) == 0
    a = load_particles(shared_data / "io" / "relion31.star")
    b = load_particles(out)  # image paths were rewritten relative to the new file
    np.testing.assert_allclose(b.metadata.rotations, a.metadata.rotations, atol=1e-6)
    np.testing.assert_allclose(b.metadata.shifts_A, a.metadata.shifts_A, atol=1e-6)
    for f in ("defocus_u_A", "defocus_v_A", "defocus_angle_deg", "voltage_kV", "cs_mm", "amplitude_contrast", "apix_A"):
        np.testing.assert_allclose(getattr(b.metadata, f), getattr(a.metadata, f), rtol=1e-6)
    assert np.array_equal(b.batch(np.arange(5))["images"].numpy(), a.batch(np.arange(5))["images"].numpy())
    assert out.read_text().startswith("# version 30001")


def test_convert_cs_to_star(shared_data, tmp_path):
    out = tmp_path / "p12.star"
    assert run_cli(["convert", str(shared_data / "io" / "cryosparc_P12_J24_001_particles.cs"), "--star", str(out)]) == 0
    a = read_metadata(shared_data / "io" / "cryosparc_P12_J24_001_particles.cs")
    b = read_metadata(out)
    np.testing.assert_allclose(b.rotations, a.rotations, atol=1e-6)
    np.testing.assert_allclose(b.shifts_A, a.shifts_A, atol=1e-6)


def test_convert_2d_cs_to_poses_fails_clearly(shared_data, tmp_path, capsys):
    rc = run_cli(["convert", str(shared_data / "io" / "cryosparc_J2_particles_exported.cs"), "--poses", str(tmp_path / "p.pkl")])
    assert rc == 2 and not (tmp_path / "p.pkl").exists()


def test_convert_help_mentions_units(capsys):
    with pytest.raises(SystemExit):
        run_cli(["convert", "--help"])
    text = capsys.readouterr().out
    assert "Å" in text and "pixels" in text and "default" in text
