"""Writers → readers round trips, the dataset API, and the streaming stack writer."""

from __future__ import annotations

import os
import pickle

import mrcfile
import numpy as np
import pytest
import torch

from cryoconf.data import (
    MRCStackWriter,
    ParticleDataset,
    ParticleMetadata,
    load_particles,
    read_cryodrgn_pkl,
    read_metadata,
    resolve_stack_path,
    write_cryodrgn_pkl,
    write_mrcs,
    write_relion31_star,
)
from cryoconf.errors import InputError
from cryoconf.imaging.rotations import random_rotations


def synthetic(n=12, box=16, seed=0, names=None) -> ParticleMetadata:
    rng = np.random.default_rng(seed)
    rot = random_rotations(n, torch.Generator().manual_seed(seed), dtype=torch.float64).numpy()
    return ParticleMetadata(
        image_names=names if names is not None else np.full(n, "", dtype=object),
        rotations=rot,
        shifts_A=rng.normal(0, 3, (n, 2)),
        defocus_u_A=rng.uniform(8000, 20000, n),
        defocus_v_A=rng.uniform(8000, 20000, n),
        defocus_angle_deg=rng.uniform(-180, 180, n),
        voltage_kV=np.where(np.arange(n) < n // 2, 300.0, 200.0),
        cs_mm=np.full(n, 2.7),
        amplitude_contrast=np.full(n, 0.07),
        phase_shift_deg=rng.uniform(0, 90, n),
        bfactor_A2=rng.uniform(0, 50, n),
        ctf_scale=np.ones(n),
        apix_A=np.full(n, 1.5),
        box=np.full(n, box),
        optics_group=np.where(np.arange(n) < n // 2, 1, 2),
        source="synthetic",
    )


def assert_same(a: ParticleMetadata, b: ParticleMetadata, tol=1e-5):
    np.testing.assert_allclose(a.rotations, b.rotations, atol=tol)
    np.testing.assert_allclose(a.shifts_A, b.shifts_A, atol=tol)
    for f in ("defocus_u_A", "defocus_v_A", "voltage_kV", "cs_mm", "amplitude_contrast", "phase_shift_deg",
              "bfactor_A2", "apix_A"):
        np.testing.assert_allclose(getattr(a, f), getattr(b, f), rtol=tol, err_msg=f)
    d = (a.defocus_angle_deg - b.defocus_angle_deg + 180) % 360 - 180
    assert np.abs(d).max() < tol
    assert np.array_equal(a.box, b.box)


def test_star_and_stack_round_trip(tmp_path):
    n, box = 12, 16
    rng = np.random.default_rng(1)
    images = rng.normal(size=(n, box, box)).astype(np.float32)
    with MRCStackWriter(tmp_path / "parts.mrcs", n, box, 1.5) as w:
        for s in range(0, n, 5):  # chunks, out of order is fine too
            w.write(s, images[s : s + 5])
    meta = synthetic(n, box, names=np.array([f"{i + 1}@parts.mrcs" for i in range(n)], dtype=object))
    write_relion31_star(tmp_path / "p.star", meta, extra_columns={"rlnClassNumber": np.arange(n) % 3 + 1})
    text = (tmp_path / "p.star").read_text()
    assert text.startswith("# version 30001") and "data_optics" in text and "_rlnOriginXAngst" in text
    ds = load_particles(tmp_path / "p.star")
    assert_same(meta, ds.metadata)
    assert np.array_equal(ds.metadata.optics_group, meta.optics_group)
    assert np.array_equal(ds.metadata.extra["rlnClassNumber"].to_numpy(), np.arange(n) % 3 + 1)
    b = ds.batch(np.arange(n))
    assert np.array_equal(b["images"].numpy(), images)
    assert b["rotations"].shape == (n, 3, 3) and b["shifts_A"].shape == (n, 2) and len(b["ctf"]) == n
    with mrcfile.open(tmp_path / "parts.mrcs") as mrc:
        assert mrc.voxel_size.x == pytest.approx(1.5) and mrc.header.dmax == pytest.approx(images.max())
    assert not (tmp_path / "parts.mrcs.tmp").exists()


def test_project_relative_stack_paths(tmp_path, monkeypatch):
    """RELION writes image names relative to the project folder, two levels above the job's
    STAR (``Refine3D/job025/run_data.star`` names ``Extract/job012/...``); they resolve from
    any working directory, and the first candidate that exists wins."""
    n, box = 4, 8
    images = np.random.default_rng(2).normal(size=(n, box, box)).astype(np.float32)
    project = tmp_path / "project"
    (project / "Extract" / "job012").mkdir(parents=True)
    (project / "Refine3D" / "job025").mkdir(parents=True)
    write_mrcs(project / "Extract" / "job012" / "parts.mrcs", images, 1.5)
    meta = synthetic(n, box, names=np.array([f"{i + 1}@Extract/job012/parts.mrcs" for i in range(n)], dtype=object))
    star = project / "Refine3D" / "job025" / "run_data.star"
    write_relion31_star(star, meta)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    ds = load_particles(star)
    assert np.array_equal(ds.batch(np.arange(n))["images"].numpy(), images)
    found = resolve_stack_path("Extract/job012/parts.mrcs", base_dir=str(star.parent))
    assert os.path.samefile(found, project / "Extract" / "job012" / "parts.mrcs")
    # a file next to the STAR comes first; a missing stack lists the project candidates
    with pytest.raises(InputError, match=r"Refine3D/job025/Extract/job012/nothere\.mrcs.*project/Extract"):
        resolve_stack_path("Extract/job012/nothere.mrcs", base_dir=str(star.parent))


def test_rewrite_real_star_keeps_columns(shared_data, tmp_path):
    m = read_metadata(shared_data / "io" / "relion31.6opticsgroups.star")
    write_relion31_star(tmp_path / "o.star", m)
    m2 = read_metadata(tmp_path / "o.star")
    assert_same(m, m2)
    assert list(m2.extra["rlnMicrographName"]) == list(m.extra["rlnMicrographName"])


def test_cryodrgn_pkl_round_trip(shared_data, tmp_path):
    m = read_metadata(shared_data / "io" / "relion31.6opticsgroups.star")
    write_cryodrgn_pkl(m, tmp_path / "pose.pkl", tmp_path / "ctf.pkl")
    with open(tmp_path / "ctf.pkl", "rb") as fh:
        ctf = pickle.load(fh)
    assert ctf.dtype == np.float32 and ctf.shape == (len(m), 9)
    back = read_cryodrgn_pkl(tmp_path / "pose.pkl", tmp_path / "ctf.pkl")
    assert_same(m, back, tol=1e-4)
    via = read_metadata(tmp_path / "pose.pkl", ctf=tmp_path / "ctf.pkl")
    np.testing.assert_allclose(via.shifts_A, m.shifts_A, atol=1e-4)


def test_stack_with_pkls_and_ind(tmp_path):
    n, box = 6, 8
    images = np.arange(n * box * box, dtype=np.float32).reshape(n, box, box)
    write_mrcs(tmp_path / "s.mrcs", images, apix_A=1.5)
    meta = synthetic(n, box)
    write_cryodrgn_pkl(meta, tmp_path / "pose.pkl", tmp_path / "ctf.pkl")
    np.save(tmp_path / "ind.npy", np.array([5, 1]))
    ds = load_particles(tmp_path / "s.mrcs", poses=tmp_path / "pose.pkl", ctf=tmp_path / "ctf.pkl", ind=tmp_path / "ind.npy")
    assert len(ds) == 2
    item = ds[0]
    assert item["index"] == 5 and np.array_equal(item["image"].numpy(), images[5])
    np.testing.assert_allclose(item["rotation"].numpy(), meta.rotations[5], atol=1e-6)
    loader = torch.utils.data.DataLoader(ds, batch_size=2)
    batch = next(iter(loader))
    assert batch["image"].shape == (2, box, box) and batch["ctf"]["defocus_u_A"].shape == (2,)


def test_images_only_txt_list(tmp_path):
    a = np.ones((3, 8, 8), np.float32)
    b = 2 * np.ones((2, 8, 8), np.float32)
    write_mrcs(tmp_path / "a.mrcs", a, 2.0)
    os.mkdir(tmp_path / "sub")
    write_mrcs(tmp_path / "sub" / "b.mrcs", b, 2.0)
    (tmp_path / "list.txt").write_text("a.mrcs\nsub/b.mrcs\n")
    ds = load_particles(tmp_path / "list.txt")
    assert len(ds) == 5 and ds.metadata.apix_A[0] == 2.0 and not ds.metadata.has_ctf
    assert np.array_equal(ds.batch([4, 0])["images"].numpy()[:, 0, 0], [2.0, 1.0])


def test_subset_and_ctf_params():
    m = synthetic(10)
    s = m.subset([3, 1])
    assert len(s) == 2 and np.allclose(s.defocus_u_A, m.defocus_u_A[[3, 1]])
    p = m.ctf_params([3], dtype=torch.float64)
    assert p.defocus_angle_rad.item() == pytest.approx(np.deg2rad(m.defocus_angle_deg[3]))
    dataset = ParticleDataset(m)
    assert dataset.batch([0, 1])["rotations"].shape == (2, 3, 3) and "images" not in dataset.batch([0])
