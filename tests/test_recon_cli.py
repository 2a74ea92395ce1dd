"""``cryoconf recon`` at the command line: train (and its alias), resume, analyze, the
--center options and the error messages, on a tiny two-conformation dataset simulated
by the core (64 particles of 32 px)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

from _recon_helpers import rotate_about, simulate_toy, toy_structure, two_domain_chain
from cryoconf.cli.main import main
from cryoconf.dynamics.maps import read_mrc
from cryoconf.recon import load_recon
from cryoconf.recon.analysis import pca, traversal
from cryoconf.recon.training import epoch_order
from cryoconf.structure.readers import read_structure
from cryoconf.structure.writers import write_pdb

N_PARTICLES, BOX, APIX, N_RES = 64, 32, 2.0, 40
TINY = ["--epochs", "2", "-b", "16", "--encoder-channels", "4", "8", "8", "8", "--decoder-hidden", "32", "32",
        "--no-progress"]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """particles.star (+ stack) of two conformations (residues 20–39 turned ∓30°), base.pdb, and an off-centre copy."""
    d = tmp_path_factory.mktemp("recon_cli_data")
    x0 = two_domain_chain(N_RES)
    top = toy_structure(x0)
    confs = np.stack([x0, x0])
    for k, deg in enumerate((-30.0, 30.0)):
        confs[k, 20:] = rotate_about(x0[20:], x0[20:].mean(0), np.array([0.0, 0.0, 1.0]), np.deg2rad(deg))
    simulate_toy(d, confs, top, n=N_PARTICLES, box=BOX, apix=APIX, seed=0)
    base = d / "base.pdb"
    write_pdb(base, x0[None], topology=top)
    offset = np.array([5.0, -3.0, 7.0])
    shifted = d / "shifted.pdb"
    write_pdb(shifted, (x0 + offset)[None], topology=top)
    return SimpleNamespace(dir=d, star=str(d / "particles.star"), base=str(base), x0=x0, top=top,
                           shifted=str(shifted), offset=offset)


def _train(toy, out, *extra, structure=None, alias=False, verbose=False):
    cmd = ["recon"] if alias else ["recon", "train"]
    return main([*(["-v"] if verbose else []), *cmd, toy.star, "--structure", structure or toy.base, "-o", str(out),
                 *extra])


@pytest.fixture(scope="module")
def residues_run(tmp_path_factory, toy):
    """A 2-epoch residues run through the alias ``cryoconf recon PARTICLES …`` (no ``train``)."""
    torch.manual_seed(0)
    run = tmp_path_factory.mktemp("recon_cli_residues") / "run"
    rc = _train(toy, run, *TINY, alias=True)
    return SimpleNamespace(run=run, rc=rc)


@pytest.fixture(scope="module")
def residues_analysis(residues_run):
    rc = main(["recon", "analyze", str(residues_run.run), "--ksample", "3", "--steps", "5", "--maps", "--structures"])
    return SimpleNamespace(rc=rc, out=residues_run.run / "analyze.2")


@pytest.fixture(scope="module")
def segments_run(tmp_path_factory, toy):
    torch.manual_seed(0)
    run = tmp_path_factory.mktemp("recon_cli_segments") / "run"
    rc_train = _train(toy, run, *TINY, "--model", "segments", "--segments", "2")
    rc_analyze = main(["recon", "analyze", str(run), "--ksample", "2", "--steps", "3"]) if rc_train == 0 else None
    return SimpleNamespace(run=run, rc_train=rc_train, rc_analyze=rc_analyze, out=run / "analyze.2")


# ---- PDB text helpers ------------------------------------------------------------------------

def _models(path) -> list[list[str]]:
    """ATOM records of every MODEL … ENDMDL block of a PDB file."""
    models, current = [], None
    for line in Path(path).read_text().splitlines():
        if line.startswith("MODEL"):
            current = []
        elif line.startswith("ENDMDL"):
            models.append(current)
            current = None
        elif line.startswith("ATOM") and current is not None:
            current.append(line)
    return models


def _xyz(atoms: list[str]) -> np.ndarray:
    return np.array([[float(a[30:38]), float(a[38:46]), float(a[46:54])] for a in atoms])


# ---- 1. the inputs -----------------------------------------------------------------------------

def test_base_pdb_reads_back_with_the_same_coordinates(toy):
    text = Path(toy.base).read_text()
    atoms = [line for line in text.splitlines() if line.startswith("ATOM")]
    assert len(atoms) == N_RES
    assert all(a[17:20] == "ALA" and a[12:16] == " CA " for a in atoms)
    s = read_structure(toy.base, mode="ca")
    assert s.n_atoms == N_RES and s.n_residues == N_RES
    assert list(s.residue_names) == ["ALA"] * N_RES
    np.testing.assert_allclose(s.coords_A, toy.x0, atol=6e-4)
    np.testing.assert_array_equal(s.residue_numbers, np.arange(1, N_RES + 1))
    assert (toy.dir / "particles.mrcs").is_file()  # the stack, used below as an input without poses


# ---- 2. train (alias) and resume --------------------------------------------------------------

def test_train_alias_writes_the_run_directory(toy, residues_run):
    assert residues_run.rc == 0
    run = residues_run.run
    for f in ("config.yaml", "checkpoint.1.pt", "checkpoint.2.pt", "z.1.npy", "z.2.npy", "loss.csv", "loss.png",
              "run.log"):
        assert (run / f).is_file(), f
    assert not (run / "checkpoint.3.pt").exists()
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    rec = cfg["recon"]
    assert rec["epochs"] == 2 and rec["batch_size"] == 16 and rec["model"] == "residues"
    assert rec["encoder_channels"] == [4, 8, 8, 8] and rec["decoder_hidden"] == [32, 32]
    assert cfg["inputs"]["particles"] == toy.star and cfg["inputs"]["structure"] == toy.base
    assert cfg["inputs"]["center"] == "none" and cfg["inputs"]["mode"] == "ca"
    assert cfg["image"]["n_particles"] == N_PARTICLES and cfg["image"]["box"] == BOX
    assert cfg["image"]["apix_A"] == pytest.approx(APIX)
    z1, z2 = np.load(run / "z.1.npy"), np.load(run / "z.2.npy")
    assert z1.shape == z2.shape == (N_PARTICLES, 8) and np.isfinite(z1).all() and np.isfinite(z2).all()
    # μ is recorded as each batch is trained: the encoder's and decoder's last layers start at zero, so the
    # first two batches of epoch 1 (16 particles each) still have μ = 0; from then on every particle's μ ≠ 0
    zero = np.flatnonzero(~np.abs(z1).any(1))
    np.testing.assert_array_equal(np.sort(zero), np.sort(epoch_order(N_PARTICLES, 0, 0)[:32].numpy()))
    assert np.abs(z2).any(1).all()
    # 64 particles in batches of 16: 4 steps per epoch
    with open(run / "loss.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == list(range(1, 9))
    assert all(np.isfinite(float(r["total"])) and np.isfinite(float(r["image"])) for r in rows)
    assert (run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    log = (run / "run.log").read_text()
    assert "epoch 2:" in log and "checkpoint" in log
    state = torch.load(run / "checkpoint.2.pt", map_location="cpu", weights_only=False)
    assert state["epoch"] == 2 and state["n_particles"] == N_PARTICLES
    assert state["config"]["decoder_hidden"] == [32, 32]


def test_resume_keeps_the_checkpoint_settings(toy, residues_run, tmp_path, capsys):
    assert residues_run.rc == 0
    run = tmp_path / "resumed"
    shutil.copytree(residues_run.run, run)
    # only --epochs: batch size, encoder and decoder come from the checkpoint
    rc = main(["recon", "train", toy.star, "--structure", toy.base, "-o", str(run), "--load", "latest",
               "--epochs", "3", "--no-progress"])
    assert rc == 0
    assert "trained to epoch 3" in capsys.readouterr().out
    assert (run / "checkpoint.3.pt").is_file() and np.load(run / "z.3.npy").shape == (N_PARTICLES, 8)
    assert "resumed from" in (run / "run.log").read_text()
    before = torch.load(run / "checkpoint.2.pt", map_location="cpu", weights_only=False)
    after = torch.load(run / "checkpoint.3.pt", map_location="cpu", weights_only=False)
    assert after["epoch"] == 3
    assert after["config"] == {**before["config"], "epochs": 3}
    rec = yaml.safe_load((run / "config.yaml").read_text())["recon"]
    assert rec["batch_size"] == 16 and rec["encoder_channels"] == [4, 8, 8, 8] and rec["epochs"] == 3
    # the loss curve continues without repeated or missing steps
    with open(run / "loss.csv", newline="") as fh:
        assert [int(r["step"]) for r in csv.DictReader(fh)] == list(range(1, 13))
    # the resumed model's parameters moved
    moved = [k for k, v in after["model_state"].items()
             if v.is_floating_point() and not torch.equal(v, before["model_state"][k])]
    assert any(k.startswith("decoder.") for k in moved) and any(k.startswith("encoder.") for k in moved)
    # a setting other than --epochs cannot change on resume
    rc = main(["recon", "train", toy.star, "--structure", toy.base, "-o", str(run), "--load", "latest",
               "--epochs", "4", "-b", "32", "--no-progress"])
    assert rc == 2
    assert "batch_size" in capsys.readouterr().err
    assert not (run / "checkpoint.4.pt").exists()


# ---- 3. analyze ----------------------------------------------------------------------------

def test_analyze_writes_traversals_clusters_maps_and_structures(residues_run, residues_analysis, capsys):
    assert residues_run.rc == 0 and residues_analysis.rc == 0
    out = residues_analysis.out
    model, state = load_recon(residues_run.run)
    assert state["epoch"] == 2
    z = np.load(residues_run.run / "z.2.npy")
    np.testing.assert_array_equal(np.load(out / "z.npy"), z)
    p = pca(z)
    for k in (0, 1):
        models = _models(out / f"pc{k + 1}_traversal.pdb")
        assert len(models) == 5 and all(len(m) == N_RES for m in models)
        text = (out / f"pc{k + 1}_traversal.pdb").read_text()
        assert text.count("\nMODEL ") + text.startswith("MODEL ") == 5
        with torch.no_grad():
            expected = model.decode(torch.as_tensor(traversal(p, k, 5), dtype=torch.float32)).numpy()
        np.testing.assert_allclose(np.stack([_xyz(m) for m in models]), expected, atol=1.5e-3)
        assert all(a[17:20] == "ALA" for a in models[0])
    # k-means
    centres = _models(out / "kmeans3" / "centres.pdb")
    assert len(centres) == 3 and all(len(m) == N_RES for m in centres)
    labels = np.load(out / "kmeans3" / "labels.npy")
    assert labels.shape == (N_PARTICLES,) and labels.min() >= 0 and labels.max() <= 2
    c = np.load(out / "kmeans3" / "centres.npy")
    assert c.shape == (3, 8)
    with torch.no_grad():
        np.testing.assert_allclose(np.stack([_xyz(m) for m in centres]),
                                   model.decode(torch.as_tensor(c, dtype=torch.float32)).numpy(), atol=1.5e-3)
    # every particle's structure = the decoder on z.2.npy
    structures = np.load(out / "structures.npy")
    assert structures.shape == (N_PARTICLES, N_RES, 3) and structures.dtype == np.float32
    with torch.no_grad():
        np.testing.assert_allclose(structures, model.decode(torch.from_numpy(z)).numpy(), rtol=0, atol=1e-5)
    # plots and summary
    for png in ("latent_pca.png", "loss.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG", png
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epoch"] == 2 and summary["n_particles"] == N_PARTICLES and summary["latent_dim"] == 8
    np.testing.assert_allclose(summary["explained_variance_ratio"], p["explained_variance_ratio"], rtol=1e-9)
    assert sum(summary["explained_variance_ratio"]) == pytest.approx(1.0)
    for name in ("pc1_traversal.pdb", "pc2_traversal.pdb", "latent_pca.png", "structures.npy", "kmeans3/centres.pdb",
                 "kmeans3/labels.npy", "pc1_end000.mrc", "kmeans3/centre002.mrc"):
        assert name in summary["files"], name
    assert all((out / f).is_file() for f in summary["files"])
    # maps: the ends of each traversal and every k-means centre
    maps = sorted(out.glob("pc*_end*.mrc")) + sorted((out / "kmeans3").glob("centre*.mrc"))
    assert [m.name for m in maps] == ["pc1_end000.mrc", "pc1_end001.mrc", "pc2_end000.mrc", "pc2_end001.mrc",
                                      "centre000.mrc", "centre001.mrc", "centre002.mrc"]
    for path in maps:
        m = read_mrc(path)
        assert m.data.shape == (BOX, BOX, BOX) and m.voxel_A == pytest.approx(APIX)
        assert np.isfinite(m.data).all() and m.data.max() > 0 and m.data.min() >= 0
        # the density sits where the structure is: its centre of mass near the origin's voxel (the chain is centred)
        zyx = np.indices(m.data.shape).reshape(3, -1).T
        com = (zyx * m.data.reshape(-1, 1)).sum(0) / m.data.sum()
        assert np.all(np.abs(com - BOX // 2) < 4.0), com


# ---- 4. model segments ---------------------------------------------------------------------

def test_segments_run_and_analysis(segments_run):
    assert segments_run.rc_train == 0 and segments_run.rc_analyze == 0
    out = segments_run.out
    model, state = load_recon(segments_run.run)
    assert model.config.model == "segments" and model.config.n_segments == 2
    labels = model.decoder.segmentation.labels()
    base_index = np.asarray(state["base"]["residue_index"])
    atoms = [line for line in (out / "segments.pdb").read_text().splitlines() if line.startswith("ATOM")]
    assert len(atoms) == N_RES
    bfac = np.array([float(a[60:66]) for a in atoms])
    np.testing.assert_array_equal(bfac, labels[base_index].astype(float))
    assert set(bfac.tolist()) == {0.0, 1.0}  # both segments hold residues
    # the PDB holds the base structure itself
    np.testing.assert_allclose(_xyz(atoms), state["base"]["coords_A"], atol=6e-4)
    motions = np.load(out / "segment_motions.npz")
    assert motions["angle_deg"].shape == (N_PARTICLES, 2)
    assert motions["axis"].shape == (N_PARTICLES, 2, 3)
    assert motions["translation_A"].shape == (N_PARTICLES, 2, 3)
    np.testing.assert_allclose(np.linalg.norm(motions["axis"], axis=-1), 1.0, atol=1e-4)
    assert np.all((motions["angle_deg"] >= 0) & (motions["angle_deg"] <= 180))
    np.testing.assert_array_equal(motions["residue_labels"], labels)
    z = np.load(segments_run.run / "z.2.npy")
    direct = model.segment_motions(torch.from_numpy(z))
    np.testing.assert_allclose(motions["angle_deg"], direct["angle_deg"].numpy(), atol=1e-4)
    np.testing.assert_allclose(motions["translation_A"], direct["translation_A"].numpy(), atol=1e-5)
    assert (out / "segments.png").read_bytes()[:4] == b"\x89PNG"
    assert len(_models(out / "pc1_traversal.pdb")) == 3 and len(_models(out / "kmeans2" / "centres.pdb")) == 2


# ---- 5. --center -------------------------------------------------------------------------------

@pytest.mark.parametrize("center", ["none", "centroid", "box"])
def test_center_moves_the_base_into_the_pose_frame(toy, tmp_path, center):
    run = tmp_path / "run"
    rc = _train(toy, run, "--epochs", "1", "-b", "64", "--encoder-channels", "4", "8", "8", "8",
                "--decoder-hidden", "16", "--no-progress", "--center", center, structure=toy.shifted,
                alias=True, verbose=True)  # `cryoconf -v recon PARTICLES …`: the alias after a global option
    assert rc == 0
    state = torch.load(run / "checkpoint.1.pt", map_location="cpu", weights_only=False)
    coords = np.asarray(state["base"]["coords_A"], dtype=np.float64)
    read = toy.x0 + toy.offset
    if center == "none":
        np.testing.assert_allclose(coords, read, atol=6e-4)
    elif center == "centroid":
        np.testing.assert_allclose(coords.mean(0), 0.0, atol=1e-4)
        np.testing.assert_allclose(coords, read - read.mean(0), atol=1e-3)
    else:  # the origin from the corner of the 32 px × 2 Å box to its centre
        np.testing.assert_allclose(coords, read - BOX * APIX / 2, atol=1e-3)
    # the model's reference structure is the same one
    np.testing.assert_allclose(state["model_state"]["coords0_A"].numpy(), coords, atol=1e-5)
    assert yaml.safe_load((run / "config.yaml").read_text())["inputs"]["center"] == center


# ---- 6. errors -------------------------------------------------------------------------------

@pytest.mark.parametrize("case, expected", [
    ("unknown_model", "--model must be one of residues, segments, rbf, got 'bogus'"),
    ("ranges_without_ranges", "--segment-groups ranges needs --segment-ranges"),
    ("bad_ranges", "--segment-ranges '0-10,x'"),
    ("load_latest_empty", "no checkpoint.N.pt in"),
    ("mrcs_without_poses", "3D poses requested but the file has none; give --poses"),
    ("missing_structure", "base_missing.pdb"),
    ("analyze_without_checkpoints", "no checkpoint.N.pt; train first"),
    ("analyze_zero_steps", "--steps must be ≥ 1, got 0"),
])
def test_errors_are_clear(toy, tmp_path, capsys, case, expected):
    run = tmp_path / "run"
    train = ["recon", "train", toy.star, "--structure", toy.base, "-o", str(run), "--no-progress"]
    argv = {
        "unknown_model": [*train, "--model", "bogus"],
        "ranges_without_ranges": [*train, "--model", "segments", "--segment-groups", "ranges"],
        "bad_ranges": [*train, "--model", "segments", "--segment-groups", "ranges", "--segment-ranges", "0-10,x"],
        "load_latest_empty": [*train, "--load", "latest"],
        "mrcs_without_poses": ["recon", str(toy.dir / "particles.mrcs"), "--structure", toy.base, "-o", str(run),
                               "--no-progress"],
        "missing_structure": ["recon", "train", toy.star, "--structure", str(toy.dir / "base_missing.pdb"),
                              "-o", str(run), "--no-progress"],
        "analyze_without_checkpoints": ["recon", "analyze", str(run)],
        "analyze_zero_steps": ["recon", "analyze", str(run), "--steps", "0"],
    }[case]
    if case in ("load_latest_empty", "analyze_without_checkpoints"):
        run.mkdir()
        (run / "z.1.npy").write_bytes(b"")  # something, but no checkpoint
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("cryoconf recon: error: "), err
    assert expected in err, err
    assert not list(run.glob("checkpoint.*.pt"))


def test_default_subcommand_is_train():
    from cryoconf.cli.recon import default_subcommand

    assert default_subcommand(["recon", "p.star", "-o", "r"]) == ["recon", "train", "p.star", "-o", "r"]
    assert default_subcommand(["-v", "recon", "p.star"]) == ["-v", "recon", "train", "p.star"]
    for argv in (["recon", "train", "p.star"], ["recon", "analyze", "r"], ["recon", "-h"], ["recon"],
                 ["simulate", "x"], ["-v", "recon", "--help"]):
        assert default_subcommand(argv) == argv


def test_analyze_refines_latents_from_the_recorded_particles(residues_run, tmp_path, capsys):
    """--refine-z re-reads the run's particles (from config.yaml) and replaces μ by each particle's MAP z,
    which explains its image at least as well (the energy never rises)."""
    from cryoconf.errors import InputError
    from cryoconf.recon.analysis import particles_of_run
    from cryoconf.recon.latent_refinement import latent_energy
    from cryoconf.recon.training import load_recon

    out = tmp_path / "refined"
    assert main(["recon", "analyze", str(residues_run.run), "-o", str(out), "--ksample", "0", "--steps", "3",
                 "--refine-z", "10", "--no-progress"]) == 0
    mu = np.load(residues_run.run / "z.2.npy")
    z = np.load(out / "z.npy")
    assert z.shape == mu.shape and not np.allclose(z, mu)
    model, _ = load_recon(residues_run.run)
    particles = particles_of_run(residues_run.run, model.box)
    b = particles.batch(np.arange(len(particles)))
    with torch.no_grad():
        data = model.prepare(b)[0]
        e_mu = latent_energy(model, b, data, torch.from_numpy(mu))
        e_z = latent_energy(model, b, data, torch.from_numpy(z))
    assert bool((e_z <= e_mu + 1e-6).all()) and float((e_mu - e_z).mean()) > 0
    with pytest.raises(InputError, match="particles"):
        particles_of_run(tmp_path, model.box)
